//! The VMM processes behind instances: starting `vireo-vmm`, recognising it again after a vireod
//! restart, waiting for it to end, asking it things over its control socket, and ending it.
//!
//! A VMM runs in its own process group with its output in files, so it outlives vireod: vireod can
//! be restarted (or crash) while guests keep running. A process is identified by PID *and* its
//! start time (field 22 of /proc/PID/stat), so a recycled PID is never taken for our VMM; signals
//! go through a pidfd, which cannot hit a different process.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Everything one VMM start needs.
#[derive(Debug, Clone)]
pub struct VmmSpec {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The root disk and its format (`raw` or `qcow2`), always given explicitly: a guest can
    /// write anything into a raw disk, including a qcow2 header.
    pub root_disk: Option<(PathBuf, &'static str)>,
    /// Resume from this snapshot (a hibernated instance) instead of booting: the VM's
    /// configuration, disks included, comes from the snapshot.
    pub restore: Option<PathBuf>,
    /// Run the VMM in this network namespace (a migration host), through `ip netns exec`,
    /// which enters it and then executes the VMM in the same process.
    pub netns: Option<String>,
    /// Wait for a live migration on this address instead of booting (the destination of
    /// `vireo migrate`), allowing the devices of the VM configuration file given.
    pub incoming: Option<(String, PathBuf)>,
    /// The API socket, when not the instance's usual one (a migration destination's, until it
    /// takes over).
    pub api_socket: Option<PathBuf>,
}

/// The files of one instance's VMM, all inside the instance directory.
pub struct VmmFiles;

impl VmmFiles {
    pub fn console(dir: &Path) -> PathBuf {
        dir.join("console.log")
    }
    pub fn api_socket(dir: &Path) -> PathBuf {
        dir.join("vmm.sock")
    }
    pub fn exit_summary(dir: &Path) -> PathBuf {
        dir.join("exit.json")
    }
    pub fn log(dir: &Path) -> PathBuf {
        dir.join("vmm.log")
    }
}

/// A running VMM process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

/// How a VMM ended, from the summary it writes when it exits by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmExit {
    /// The guest powered off (or the VMM was told to stop).
    PowerOff,
    /// The guest rebooted: the VMM exits and its owner starts it again.
    Reboot,
    /// The guest failed (triple fault, emulation failure).
    GuestFault(String),
    /// No summary: the VMM was killed or crashed; the last line of its log says why, if it can.
    Vanished(String),
}

/// Starts a VMM for `spec`. Stale files of a previous run (socket, exit summary) are removed
/// first; the console log is appended to, so reboots keep their history.
pub fn spawn(spec: &VmmSpec) -> io::Result<ProcessId> {
    let dir = &spec.dir;
    // Every VMM gets a socket of its own name, and `vmm.sock` links to the current one: a VMM
    // removes its socket when it exits, which must never be its successor's (after a live
    // migration the old VMM exits while the new one serves).
    let own_socket = spec
        .api_socket
        .clone()
        .unwrap_or_else(|| unique_socket(dir));
    // A migration destination starts while the source still runs: it must not remove the
    // source's exit summary.
    let stale: Vec<PathBuf> = if spec.incoming.is_some() {
        vec![own_socket.clone()]
    } else {
        vec![own_socket.clone(), VmmFiles::exit_summary(dir)]
    };
    for stale in stale {
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(VmmFiles::log(dir))?;
    let mut cmd = match &spec.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&spec.bin);
            c
        }
        None => Command::new(&spec.bin),
    };
    if let Some(snapshot) = &spec.restore {
        cmd.arg("--restore").arg(snapshot).arg("--resume");
    } else if let Some((addr, config)) = &spec.incoming {
        cmd.arg("--incoming").arg(addr).arg("--config").arg(config);
    } else {
        boot_args(&mut cmd, spec);
    }
    cmd.arg("--serial")
        .arg(format!("file:{}", VmmFiles::console(dir).display()))
        .arg("--api-sock")
        .arg(&own_socket)
        .arg("--summary-json")
        .arg(VmmFiles::exit_summary(dir));
    // Its own process group: a Ctrl-C at vireod's terminal must not reach the guests.
    cmd.process_group(0)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    // Dropping `child` neither waits nor kills; the exit is collected through the pidfd.
    drop(child);
    let start_time = start_time(pid)
        .ok_or_else(|| io::Error::other("the VMM process ended before it could be recorded"))?;
    if spec.incoming.is_none() {
        publish_socket(dir, &own_socket)?;
    }
    Ok(ProcessId { pid, start_time })
}

/// A fresh socket path in `dir` for a new VMM.
pub fn unique_socket(dir: &Path) -> PathBuf {
    dir.join(format!("vmm-{:08x}.sock", rand::random::<u32>()))
}

/// Points `vmm.sock` at `socket` (atomically, by renaming a new symlink over it) and removes the
/// sockets of earlier VMMs, which have exited.
pub fn publish_socket(dir: &Path, socket: &Path) -> io::Result<()> {
    let link = VmmFiles::api_socket(dir);
    let tmp = dir.join("vmm.sock.new");
    let _ = std::fs::remove_file(&tmp);
    let name = socket
        .file_name()
        .ok_or_else(|| io::Error::other("socket path has no name"))?;
    std::os::unix::fs::symlink(name, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("vmm-") && n.ends_with(".sock") && *n != *name.to_string_lossy() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// The arguments that describe a VM booted from its kernel.
fn boot_args(cmd: &mut Command, spec: &VmmSpec) {
    cmd.arg("--kernel")
        .arg(&spec.kernel)
        .arg("--cmdline")
        .arg(&spec.cmdline)
        .arg("--vcpus")
        .arg(spec.vcpus.to_string())
        .arg("--memory")
        .arg(spec.memory_mib.to_string());
    if let Some(initrd) = &spec.initrd {
        cmd.arg("--initrd").arg(initrd);
    }
    if let Some((disk, format)) = &spec.root_disk {
        cmd.arg("--drive")
            .arg(format!("path={},format={format}", disk.display()));
    }
}

/// The start time of process `pid` (clock ticks after boot), or None if there is no such live
/// process (zombies count as gone).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after it start past
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); field 22 (starttime) is rest[19].
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `id` is still our live VMM process.
pub fn is_alive(id: ProcessId) -> bool {
    start_time(id.pid) == Some(id.start_time)
}

/// A pidfd for `id`, checked to still be that process (no PID reuse race: the check happens
/// after the pidfd pins the process).
fn pidfd(id: ProcessId) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, id.pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !is_alive(id) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(fd)
}

/// Sends SIGKILL to `id` if it is still our process. Ok(false): it was already gone.
pub fn kill(id: ProcessId) -> io::Result<bool> {
    let fd = match pidfd(id) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
        Err(e) => return Err(e),
    };
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo (null), no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(true)
}

/// Waits until `id` has ended. Works for VMMs this vireod started and for adopted ones (a pidfd
/// becomes readable when its process exits); our own children are reaped so no zombie remains.
pub async fn wait_exit(id: ProcessId) -> io::Result<()> {
    let fd = match pidfd(id) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            reap(id.pid);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    // SAFETY: the AsyncFd owns `fd` (an OwnedFd), which stays open and is the same descriptor
    // until the AsyncFd is dropped.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)?;
    let _ = afd.readable().await?;
    reap(id.pid);
    Ok(())
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid with a valid pointer to a local; ECHILD (not our child) is fine.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// How the VMM in `dir` ended, read from its exit summary (written by `--summary-json`).
pub fn exit_of(dir: &Path) -> VmmExit {
    let summary = std::fs::read_to_string(VmmFiles::exit_summary(dir)).ok();
    let stop = summary
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("stop").and_then(|s| s.as_str()).map(str::to_string));
    match stop.as_deref() {
        Some("poweroff") | Some("host") => VmmExit::PowerOff,
        Some("reboot") => VmmExit::Reboot,
        Some(other) => {
            VmmExit::GuestFault(other.strip_prefix("fault: ").unwrap_or(other).to_string())
        }
        None => VmmExit::Vanished(
            last_log_line(dir).unwrap_or_else(|| "the VMM process exited without a summary".into()),
        ),
    }
}

/// The last non-empty line the VMM wrote to its log.
pub fn last_log_line(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(VmmFiles::log(dir)).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// One HTTP request to the VMM's control API; returns (status, body). Blocking, with timeouts:
/// call it from a blocking context.
pub fn api_call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // Read exactly one response (head, then Content-Length bytes): the VMM may keep the
    // connection open, so reading to EOF would wait for its idle timeout.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other(
                "the VMM closed its API connection mid-response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => continue,
            _ => {
                return Err(io::Error::other(
                    "the VMM's API answered with something that is not HTTP",
                ))
            }
        };
        let status = resp.code.unwrap_or(0);
        let body_len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        if body_len > 16 << 20 {
            return Err(io::Error::other("the VMM's API answer is too large"));
        }
        while buf.len() < head_len + body_len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::other(
                    "the VMM closed its API connection mid-response",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_len..head_len + body_len]).into_owned();
        return Ok((status, body));
    }
}

/// The last `limit` bytes of a file (EC2's console output is the most recent 64 KiB).
pub fn tail(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Seek;
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len > limit {
        f.seek(io::SeekFrom::Start(len - limit))?;
    }
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_identifies_this_process_and_not_a_dead_one() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own start time");
        assert!(is_alive(ProcessId {
            pid: me,
            start_time: t
        }));
        assert!(!is_alive(ProcessId {
            pid: me,
            start_time: t + 1
        }));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(start_time(pid), None);
    }

    #[tokio::test]
    // The child is reaped by wait_exit (waitpid on its PID), which is what this tests.
    #[allow(clippy::zombie_processes)]
    async fn wait_and_kill_through_pidfds() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        let id = ProcessId {
            pid,
            start_time: start_time(pid).unwrap(),
        };
        let waiter = tokio::spawn(wait_exit(id));
        assert!(kill(id).unwrap());
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("exit seen")
            .unwrap()
            .unwrap();
        assert!(!is_alive(id));
        assert!(!kill(id).unwrap(), "a second kill finds it gone");
        // wait_exit reaped it already; this only satisfies the type's contract.
        let _ = child.wait();
    }
}
