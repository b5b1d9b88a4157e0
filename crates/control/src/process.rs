//! The VMM processes behind instances: starting `vireo-vmm`, recognising it again after a vireod
//! restart, waiting for it to end, asking it things over its control socket, and ending it.
//!
//! A VMM runs in its own process group with its output in files, so it outlives vireod: vireod can
//! be restarted (or crash) while guests keep running. A process is identified by PID *and* its
//! start time (field 22 of /proc/PID/stat), so a recycled PID is never taken for our VMM; signals
//! go through a pidfd, which cannot hit a different process.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vireo_vmm_api::smbios::{Smbios, SmbiosString, SystemUuid};
use vireo_vmm_api::{ExitSummary, Stop};

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
    /// The instance's network interfaces, in device order: each an attached TAP the VMM
    /// inherits (`--net tap-fd=N,tap=NAME,mac=MAC`; see docs/networking.md).
    pub nets: Vec<NetAttachment>,
    /// The machine identity the guest reads from SMBIOS (`--smbios`, booting VMMs only: a
    /// snapshot's or a migration's guest already has its tables in its memory).
    pub smbios: Option<Smbios>,
}

/// The SMBIOS identity of an EC2 instance, as EC2 gives it: a system UUID whose text starts
/// with `ec2`, the same text as the system serial number, the instance id as the chassis's
/// asset tag, "Amazon EC2" as maker and the instance type as product. cloud-init's EC2
/// datasource (ds-identify and `identify_aws` alike) takes the platform for AWS only when the
/// UUID starts with `ec2` and equals the serial number (case aside). The UUID is derived from
/// the instance id, so an instance keeps it across stops, starts and reboots.
pub fn ec2_smbios(instance_id: &str, instance_type: &str) -> Smbios {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("vireo smbios uuid {instance_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // The text's first three hex digits: "ec2".
    bytes[0] = 0xec;
    bytes[1] = 0x20 | (bytes[1] & 0x0f);
    let uuid = SystemUuid(bytes);
    // Instance ids and type names are short and plain; anything else is a bug caught here.
    let string = |s: &str| SmbiosString::new(s).ok();
    Smbios {
        uuid: Some(uuid),
        serial: string(&uuid.to_string()),
        asset_tag: string(instance_id),
        manufacturer: string("Amazon EC2"),
        product: string(instance_type),
        ..Smbios::default()
    }
}

/// One network interface of a VMM: the TAP's fd (opened by vireod inside the VPC's network
/// namespace), the TAP's name (the device's label in the VMM's metrics and configuration) and
/// the ENI's MAC.
#[derive(Debug, Clone)]
pub struct NetAttachment {
    pub fd: std::sync::Arc<OwnedFd>,
    pub tap: String,
    pub mac: String,
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
        // The snapshot's configuration names the TAPs by these fd numbers.
        inherit_taps(&mut cmd, &spec.nets);
    } else if let Some((addr, config)) = &spec.incoming {
        cmd.arg("--incoming").arg(addr).arg("--config").arg(config);
        // The configuration names these fds (`net[].tap_fd`): the VMM attaches them when the
        // source's machine arrives.
        inherit_taps(&mut cmd, &spec.nets);
    } else {
        boot_args(&mut cmd, spec)?;
        inherit_taps(&mut cmd, &spec.nets);
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
fn boot_args(cmd: &mut Command, spec: &VmmSpec) -> io::Result<()> {
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
    for (i, n) in spec.nets.iter().enumerate() {
        cmd.arg("--net").arg(format!(
            "tap-fd={},tap={},mac={}",
            tap_fd_number(i),
            n.tap,
            n.mac
        ));
    }
    if let Some(smbios) = &spec.smbios {
        cmd.arg("--smbios")
            .arg(smbios.to_flag().map_err(io::Error::other)?);
    }
    Ok(())
}

/// The fd number the VMM gets its `i`th TAP at. Fixed, not wherever vireod happened to open
/// it: the VM's configuration (kept in a hibernation snapshot, sent in a migration) records the
/// number, and the VMM that resumes it is given its TAPs at the same numbers.
pub fn tap_fd_number(i: usize) -> i32 {
    TAP_FD_BASE + i as i32
}

const TAP_FD_BASE: i32 = 100;

/// Lets the VMM inherit the TAP fds of `nets` at [`tap_fd_number`]s. They are close-on-exec
/// in vireod, so that no other child gets them; in the child, between fork and exec, each is
/// first copied above every target number (so that moving one cannot close another) and then
/// `dup2`ed to its number, which leaves the copy there without close-on-exec.
fn inherit_taps(cmd: &mut Command, nets: &[NetAttachment]) {
    if nets.is_empty() {
        return;
    }
    let fds: Vec<i32> = nets.iter().map(|n| n.fd.as_raw_fd()).collect();
    // At most 16 interfaces (a fixed array below: the child must not allocate).
    let above = tap_fd_number(fds.len());
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl and dup2,
    // which are async-signal-safe, on fds this process owns (the Arcs in `nets` keep them open
    // until spawn returns); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let mut tmp = [0i32; 16];
            if fds.len() > tmp.len() {
                return Err(io::Error::from_raw_os_error(libc::EMFILE));
            }
            for (t, &fd) in tmp.iter_mut().zip(&fds) {
                *t = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if *t < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, &t) in tmp[..fds.len()].iter().enumerate() {
                if libc::dup2(t, tap_fd_number(i)) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
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
    let summary = std::fs::read_to_string(VmmFiles::exit_summary(dir))
        .ok()
        .and_then(|text| ExitSummary::from_file_text(&text).ok());
    match summary.map(|s| s.stop) {
        Some(Stop::PowerOff | Stop::Host) => VmmExit::PowerOff,
        Some(Stop::Reboot) => VmmExit::Reboot,
        Some(Stop::Fault(why)) => VmmExit::GuestFault(why),
        // A migrated VMM's summary is removed before its instance is looked at again (the
        // destination runs the guest); read as before the summary was typed, it is no
        // power-off.
        Some(Stop::Migrated) => VmmExit::GuestFault(Stop::Migrated.to_string()),
        None => VmmExit::Vanished(
            last_log_line(dir).unwrap_or_else(|| "the VMM process exited without a summary".into()),
        ),
    }
}

/// How much of the end of a VMM's log [`last_log_line`] reads. A guest can make its VMM log
/// (a device it resets over and over), so the log is never read whole.
pub const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// The last non-empty line the VMM wrote to its log, read from the last [`LOG_TAIL_BYTES`] of
/// it (a longer line is cut to its end).
pub fn last_log_line(dir: &Path) -> Option<String> {
    let mut f = File::open(VmmFiles::log(dir)).ok()?;
    last_line_of(&mut f, LOG_TAIL_BYTES).ok()?
}

/// The last non-empty line among the last `limit` bytes of `f`, trimmed, decoded lossily
/// (whatever came before the tail, and whether it was UTF-8, does not matter).
fn last_line_of(f: &mut (impl Read + io::Seek), limit: u64) -> io::Result<Option<String>> {
    let len = f.seek(io::SeekFrom::End(0))?;
    f.seek(io::SeekFrom::Start(len.saturating_sub(limit)))?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string()))
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_exit_summary_says_how_the_vmm_ended() {
        let dir = tempfile::tempdir().unwrap();
        let write = |stop: Stop| {
            let summary = ExitSummary {
                exits_per_vcpu: Vec::new(),
                exits_total: Default::default(),
                stop,
            };
            std::fs::write(VmmFiles::exit_summary(dir.path()), summary.to_file_text()).unwrap();
        };
        write(Stop::PowerOff);
        assert_eq!(exit_of(dir.path()), VmmExit::PowerOff);
        write(Stop::Host);
        assert_eq!(exit_of(dir.path()), VmmExit::PowerOff);
        write(Stop::Reboot);
        assert_eq!(exit_of(dir.path()), VmmExit::Reboot);
        write(Stop::Fault("triple fault".into()));
        assert_eq!(
            exit_of(dir.path()),
            VmmExit::GuestFault("triple fault".into())
        );
        std::fs::write(VmmFiles::exit_summary(dir.path()), "{\"stop\": 1}").unwrap();
        std::fs::write(VmmFiles::log(dir.path()), "vireo-vmm: error: gone\n").unwrap();
        assert_eq!(
            exit_of(dir.path()),
            VmmExit::Vanished("vireo-vmm: error: gone".into())
        );
    }

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

    #[test]
    fn an_instance_vmm_boots_with_an_ec2_identity() {
        let id = "i-0123456789abcdef0";
        let smbios = ec2_smbios(id, "t3.micro");
        let uuid = smbios.uuid.unwrap().to_string();
        assert!(uuid.starts_with("ec2"), "{uuid}");
        // cloud-init: the UUID equals the serial number; the asset tag is the instance id.
        assert_eq!(smbios.serial.as_ref().unwrap().as_str(), uuid);
        assert_eq!(smbios.asset_tag.as_ref().unwrap().as_str(), id);
        assert_eq!(smbios.manufacturer.as_ref().unwrap().as_str(), "Amazon EC2");
        assert_eq!(smbios.product.as_ref().unwrap().as_str(), "t3.micro");
        // Stable for the instance, different for another.
        assert_eq!(ec2_smbios(id, "t3.micro"), smbios);
        let other = ec2_smbios("i-0123456789abcdef1", "t3.micro").uuid.unwrap();
        assert_ne!(other.to_string(), uuid);
        assert!(other.to_string().starts_with("ec2"));

        let spec = VmmSpec {
            bin: "/bin/vireo-vmm".into(),
            dir: "/d".into(),
            kernel: "/k".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 1024,
            root_disk: None,
            restore: None,
            netns: None,
            incoming: None,
            api_socket: None,
            nets: Vec::new(),
            smbios: Some(smbios.clone()),
        };
        let mut cmd = Command::new("vireo-vmm");
        boot_args(&mut cmd, &spec).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let i = args.iter().position(|a| a == "--smbios").expect("--smbios");
        // The flag the VMM gets reads back as the identity (vireo-vmm parses it so).
        assert_eq!(Smbios::parse_flag(&args[i + 1]).unwrap(), smbios);
        assert!(args[i + 1].contains(&format!("uuid={uuid}")));
        assert!(args[i + 1].contains("asset-tag=i-0123456789abcdef0"));
    }

    /// A reader that counts the bytes read from it.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl<R: io::Seek> io::Seek for Counting<R> {
        fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    #[test]
    fn the_last_log_line_is_read_from_the_tail_only() {
        // 4 MiB of what a guest made the VMM log, then the line that says why it ended.
        let mut log = b"WARN device failed to activate\n".repeat(128 * 1024);
        log.extend_from_slice(b"ERROR vcpu 0: the reason\n\n  \n");
        let mut f = Counting {
            inner: io::Cursor::new(log),
            read: 0,
        };
        assert_eq!(
            last_line_of(&mut f, LOG_TAIL_BYTES).unwrap().as_deref(),
            Some("ERROR vcpu 0: the reason")
        );
        assert!(f.read <= LOG_TAIL_BYTES, "read {} bytes", f.read);
        // A line longer than the tail comes back cut to its end.
        let mut long = io::Cursor::new(format!("{}end\n", "x".repeat(100)).into_bytes());
        assert_eq!(
            last_line_of(&mut long, 10).unwrap().as_deref(),
            Some("xxxxxxend")
        );
        assert_eq!(
            last_line_of(&mut io::Cursor::new(b"\n \n"), 10).unwrap(),
            None
        );
    }

    #[test]
    fn what_came_before_the_tail_does_not_hide_the_last_line() {
        let dir = std::env::temp_dir().join(format!("vireo-process-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Bytes that are not UTF-8 early in the log (a guest's console bytes, say) and a last
        // line well inside the tail.
        let mut log = vec![0xff; 1 << 20];
        log.extend_from_slice(b"\nthe VMM stopped: out of memory\n");
        std::fs::write(VmmFiles::log(&dir), &log).unwrap();
        let got = last_log_line(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.as_deref(), Some("the VMM stopped: out of memory"));
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
