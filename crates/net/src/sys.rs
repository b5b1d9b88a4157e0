//! The system half's primitives: running `ip`, `nft`, `bridge` and dnsmasq with their failure
//! in one line, doing work inside a network namespace from a dedicated thread, and opening a
//! TAP there.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why the data plane could not be changed or read. Every message is one line and names what
/// failed (the command and its stderr, the file, the namespace).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected output from `{command}`: {detail}")]
    Output { command: String, detail: String },
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {netns}: {what}: {source}")]
    Netns {
        netns: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("TAP {name} does not exist in network namespace {netns} (apply() makes it)")]
    TapMissing { netns: String, name: String },
    #[error("TAP {name} in network namespace {netns}: {what}: {source}")]
    Tap {
        netns: String,
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("dnsmasq of {netns}: {detail}")]
    Dnsmasq { netns: String, detail: String },
}

fn one_line(s: &[u8]) -> String {
    String::from_utf8_lossy(s)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `program args…` (with `input` on its stdin if given) and returns its stdout.
pub(crate) fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, NetError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn = |source| NetError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn)?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut stderr = one_line(&out.stderr);
        if stderr.is_empty() {
            stderr = format!("{}", out.status);
        }
        Err(NetError::Command { command, stderr })
    }
}

/// `ip [-n NETNS] args…`.
pub(crate) fn ip(netns: Option<&str>, args: &[&str]) -> Result<String, NetError> {
    match netns {
        Some(ns) => {
            let mut a = vec!["-n", ns];
            a.extend_from_slice(args);
            run("ip", &a, None)
        }
        None => run("ip", args, None),
    }
}

/// `ip netns exec NETNS program args…`.
pub(crate) fn exec_in(
    netns: &str,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, NetError> {
    let mut a = vec!["netns", "exec", netns, program];
    a.extend_from_slice(args);
    run("ip", &a, input)
}

/// Runs `program args…` inside network namespace `netns` without `ip netns exec`: the child
/// is spawned from a thread that has joined the namespace (a child inherits its parent
/// thread's network namespace), which saves the `ip` process and its mount namespace. For
/// tools that only talk netlink (`nft`); `ip netns exec` stays for those that read /sys or
/// /etc/netns.
pub(crate) fn run_in(
    netns: &str,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, NetError> {
    in_netns(netns, || run(program, args, input))?
}

/// Whether every link of `names` exists in network namespace `netns` (asked from a thread in
/// the namespace, without a process).
pub(crate) fn links_exist(netns: &str, names: &[&str]) -> bool {
    in_netns(netns, || {
        names.iter().all(|n| {
            CString::new(*n).is_ok_and(|c| {
                // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
                unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
            })
        })
    })
    .unwrap_or(false)
}

/// The path of a named network namespace (`ip netns add` makes it).
pub fn netns_path(netns: &str) -> PathBuf {
    Path::new("/run/netns").join(netns)
}

/// Whether the named network namespace exists.
pub fn netns_exists(netns: &str) -> bool {
    netns_path(netns).exists()
}

/// Runs `f` on a thread that has joined network namespace `netns` (only that thread changes
/// namespace; sockets and TAPs it makes stay in `netns` after it ends).
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
    let path = netns_path(netns);
    let file = File::open(&path).map_err(|source| NetError::Netns {
        netns: netns.to_string(),
        what: "cannot open",
        source,
    })?;
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            // SAFETY: setns on an fd we own; it changes only this thread's network namespace,
            // and the thread ends when `f` returns.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetError::Netns {
                    netns: netns.to_string(),
                    what: "setns",
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        });
        match worker.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Writes `value` to the sysctl `key` (a path under /proc/sys, e.g. `net/ipv4/ip_forward`) in
/// network namespace `netns`.
pub(crate) fn sysctl(netns: &str, settings: &[(String, &str)]) -> Result<(), NetError> {
    in_netns(netns, || {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key);
            std::fs::write(&path, value).map_err(|source| NetError::File {
                what: "cannot write sysctl",
                path,
                source,
            })?;
        }
        Ok(())
    })?
}

/// Opens TAP `name`, which must already exist in network namespace `netns` ([`crate::apply`]
/// makes each interface's TAP, persistent), as the VMM uses it: IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR (crates/devices' `Tap::open` flags). The fd is blocking and close-on-exec;
/// the VMM sets O_NONBLOCK, the virtio-net header size and offloads itself. Pass it to
/// vireo-vmm as `--net tap-fd=N,mac=…` (clear FD_CLOEXEC in the child).
pub fn open_tap(netns: &str, name: &str) -> Result<OwnedFd, NetError> {
    let tap_err = |what, source| NetError::Tap {
        netns: netns.to_string(),
        name: name.to_string(),
        what,
        source,
    };
    let cname = CString::new(name).map_err(|_| {
        tap_err(
            "invalid name",
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })?;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(tap_err(
            "invalid name",
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        ));
    }
    in_netns(netns, || {
        // TUNSETIFF would make a missing TAP (unconfigured, and gone with the fd): refuse.
        // SAFETY: `cname` is a valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(NetError::TapMissing {
                netns: netns.to_string(),
                name: name.to_string(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| tap_err("cannot open /dev/net/tun", e))?;
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `ifr` is; the fd is ours.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(tap_err("TUNSETIFF", std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from(file))
    })?
}
