//! The host side of virtio-vsock: Unix sockets.
//!
//! The VMM listens on `uds_path`; a host process that connects there says `CONNECT <port>\n`
//! to reach the guest's port. A guest that connects to the host's port P reaches whoever
//! listens on `<uds_path>_<P>`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// `sun_path` holds 108 bytes with the terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// The longest suffix `_<port>` a guest-initiated connection adds to `uds_path`.
const PORT_SUFFIX_MAX: usize = 11;
/// The longest `CONNECT` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0}: path too long for a Unix socket (at most {max} bytes)", max = SUN_PATH_MAX - PORT_SUFFIX_MAX)]
    TooLong(String),
    #[error("{0}: a process is already listening there")]
    InUse(String),
    #[error("{0}: exists and is not a socket")]
    NotSocket(String),
    #[error("{0}: {1}")]
    Io(String, io::Error),
}

/// The listening socket at `uds_path`; its file is removed when this is dropped.
pub struct HostListener {
    pub listener: UnixListener,
    path: PathBuf,
    ino: (u64, u64),
}

impl HostListener {
    /// Listens on `path`, replacing a stale socket file left by an earlier run.
    pub fn bind(path: &Path) -> Result<Self, ListenError> {
        let shown = path.display().to_string();
        if path.as_os_str().len() > SUN_PATH_MAX - PORT_SUFFIX_MAX {
            return Err(ListenError::TooLong(shown));
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(ListenError::InUse(shown)),
                Err(_) => {
                    std::fs::remove_file(path).map_err(|e| ListenError::Io(shown.clone(), e))?
                }
            },
            Ok(_) => return Err(ListenError::NotSocket(shown)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ListenError::Io(shown, e)),
        }
        let listener = UnixListener::bind(path).map_err(|e| ListenError::Io(shown.clone(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ListenError::Io(shown.clone(), e))?;
        let m = std::fs::symlink_metadata(path).map_err(|e| ListenError::Io(shown, e))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            ino: (m.dev(), m.ino()),
        })
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        // Only our own socket: another process may have taken the path since.
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The socket a guest connection to host port `port` goes to.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = uds_path.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects to `path` without blocking: a listener whose backlog is full counts as refusing.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > SUN_PATH_MAX || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data for which all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes; `fd` is open.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// What a host process's first line asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectLine {
    /// More bytes are needed.
    Incomplete,
    /// `CONNECT <port>`; `consumed` bytes (the line with its newline) are used up.
    Connect {
        port: u32,
        consumed: usize,
    },
    Invalid,
}

/// Parses the `CONNECT <port>\n` line at the start of `buf` (`\r\n` is accepted too).
pub fn parse_connect_line(buf: &[u8]) -> ConnectLine {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CONNECT_LINE {
            ConnectLine::Invalid
        } else {
            ConnectLine::Incomplete
        };
    };
    if nl >= MAX_CONNECT_LINE {
        return ConnectLine::Invalid;
    }
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let port = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u32>().ok());
    match port {
        Some(port) => ConnectLine::Connect {
            port,
            consumed: nl + 1,
        },
        None => ConnectLine::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(
            parse_connect_line(b"CONNECT 5000\n"),
            ConnectLine::Connect {
                port: 5000,
                consumed: 13
            }
        );
        assert_eq!(
            parse_connect_line(b"CONNECT 52\r\nextra"),
            ConnectLine::Connect {
                port: 52,
                consumed: 12
            }
        );
        assert_eq!(parse_connect_line(b"CONNECT 50"), ConnectLine::Incomplete);
        assert_eq!(parse_connect_line(b""), ConnectLine::Incomplete);
        for bad in [
            &b"CONNECT\n"[..],
            b"CONNECT \n",
            b"CONNECT -1\n",
            b"CONNECT +1\n",
            b"CONNECT 4294967296\n",
            b"connect 5\n",
            b"CONNECT 5 6\n",
            b"\xff\xfe\n",
            &[b'x'; MAX_CONNECT_LINE],
        ] {
            assert_eq!(parse_connect_line(bad), ConnectLine::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn bind_replaces_stale_and_refuses_live() {
        let dir = std::env::temp_dir().join(format!("vireo-vsock-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);

        let first = HostListener::bind(&path).unwrap();
        assert!(matches!(
            HostListener::bind(&path),
            Err(ListenError::InUse(_))
        ));
        drop(first);
        assert!(!path.exists(), "the socket file is removed on drop");
        // A stale socket file (nobody listening, as a crashed VMM leaves) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let second = HostListener::bind(&path).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(second);
        assert!(!path.exists(), "the socket file is removed on drop");

        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            HostListener::bind(&path),
            Err(ListenError::NotSocket(_))
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            HostListener::bind(&dir.join("missing/v.sock")),
            Err(ListenError::Io(..))
        ));
        assert!(matches!(
            HostListener::bind(&dir.join("x".repeat(120))),
            Err(ListenError::TooLong(_))
        ));

        // Guest-side connections: refused where nobody listens, connected where someone does.
        assert!(connect_nonblocking(&port_path(&path, 6000)).is_err());
        let l = UnixListener::bind(port_path(&path, 6000)).unwrap();
        assert!(connect_nonblocking(&port_path(&path, 6000)).is_ok());
        assert!(l.accept().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
