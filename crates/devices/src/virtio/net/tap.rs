//! An existing host TAP interface, opened through /dev/net/tun with the virtio-net header.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{Backend, HDR_LEN};

/// Why a TAP could not be opened; the message names the interface.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid TAP name {0:?}: 1 to 15 characters, no '/', ':' or white space")]
    BadName(String),
    #[error("TAP {0}: no such interface (create it first, e.g. `ip tuntap add dev {0} mode tap`)")]
    Missing(String),
    #[error("TAP {0}: busy (another process has it open)")]
    Busy(String),
    #[error("TAP {0}: permission denied (needs CAP_NET_ADMIN or to be the TAP's owner)")]
    Permission(String),
    #[error("TAP {0}: not a TAP interface (a TUN, or not made by tun/tap)")]
    NotTap(String),
    #[error("tap-fd={0}: not an open file descriptor")]
    BadFd(RawFd),
    #[error("tap-fd={0}: not a TAP attached with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR")]
    FdNotTap(RawFd),
    #[error("TAP {name}: {what}: {err}")]
    Io {
        name: String,
        what: &'static str,
        err: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing TAP `name`: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a 12-byte
    /// virtio-net header, non-blocking, no offloads until the guest accepts some.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
        {
            return Err(TapError::BadName(name.to_string()));
        }
        let cname = CString::new(name).map_err(|_| TapError::BadName(name.to_string()))?;
        // TUNSETIFF would create a missing interface: the TAP must exist in this network
        // namespace already.
        // SAFETY: `cname` is a valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(TapError::Missing(name.to_string()));
        }
        let io = |what, err| TapError::Io {
            name: name.to_string(),
            what,
            err,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EPERM) => TapError::Permission(name.to_string()),
                _ => io("cannot open /dev/net/tun", e),
            })?;

        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `ifr` is; the fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy(name.to_string()),
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name.to_string()),
                Some(libc::EINVAL) => TapError::NotTap(name.to_string()),
                _ => io("TUNSETIFF", e),
            });
        }
        let hdr_len = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(io("TUNSETVNETHDRSZ", std::io::Error::last_os_error()));
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        tap.set_offload(0).map_err(|e| io("TUNSETOFFLOAD", e))?;
        Ok(tap)
    }

    /// Takes over a TAP fd its owner already attached (TUNSETIFF with IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR), e.g. vireod, which opens the TAP inside a VPC's network namespace that
    /// the VMM does not live in. Sets what [`Tap::open`] sets: non-blocking, the 12-byte
    /// virtio-net header, no offloads. The name comes from the kernel (TUNGETIFF).
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one ifreq, which `ifr` is; the fd is ours.
        if unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut ifr) } < 0 {
            return Err(TapError::FdNotTap(raw));
        }
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags });
        let want = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if flags & want != want {
            return Err(TapError::FdNotTap(raw));
        }
        let name: String = ifr
            .ifr_name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8 as char)
            .collect();
        let io = |what, err| TapError::Io {
            name: name.clone(),
            what,
            err,
        };
        // SAFETY: F_GETFL/F_SETFL on an fd we own; no memory is passed.
        let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(io("O_NONBLOCK", std::io::Error::last_os_error()));
        }
        // SAFETY: F_SETFD on an fd we own: it is not to leak into anything the VMM runs.
        if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(io("FD_CLOEXEC", std::io::Error::last_os_error()));
        }
        let hdr_len = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        if unsafe { libc::ioctl(raw, libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(io("TUNSETVNETHDRSZ", std::io::Error::last_os_error()));
        }
        let tap = Tap {
            file: File::from(fd),
            name: name.clone(),
        };
        tap.set_offload(0).map_err(|e| io("TUNSETOFFLOAD", e))?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Backend for Tap {
    fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }

    unsafe fn write_frame_gathered(&self, parts: &[libc::iovec]) -> std::io::Result<usize> {
        // SAFETY: this function's own contract (the parts stay mapped and readable) is the
        // one `writev` asks for; the fd is ours.
        unsafe { writev(self.file.as_raw_fd(), parts) }
    }

    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is ours.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One `writev` of `parts` to `fd`: a TAP takes it as one frame, a datagram socket as one
/// datagram.
///
/// # Safety
/// Each of `parts` must point to memory that stays mapped and readable for its length until
/// the call returns.
pub(super) unsafe fn writev(fd: RawFd, parts: &[libc::iovec]) -> std::io::Result<usize> {
    let count = libc::c_int::try_from(parts.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `parts` is a valid array of `count` iovecs whose memory the caller vouches for;
    // the kernel only reads it.
    let n = unsafe { libc::writev(fd, parts.as_ptr(), count) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}
