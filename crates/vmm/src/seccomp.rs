//! System-call filters (seccomp-BPF) for a running VMM.
//!
//! Once the machine is built (files, TAPs, sockets, KVM objects and guest memory exist), a
//! VMM thread only needs a fixed set of system calls. Everything the guest controls reaches
//! host code through the vCPU threads (port I/O, MMIO) and the I/O thread (virtqueues), so a
//! bug there must not become a way to run programs, trace or attach to other processes, enter
//! namespaces, load kernel modules or BPF programs. Two filters do that:
//!
//! - the process filter, installed on every thread at once (TSYNC) before the vCPUs first
//!   run, and inherited by threads made later (API connections, console input): what the
//!   VMM as a whole does while it runs, snapshots and migrations included. New threads only
//!   (`clone` with `CLONE_THREAD`; `clone3`, whose flags a filter cannot read, fails with
//!   ENOSYS so that the C library falls back to `clone`), sockets only of the families the
//!   VMM uses, `prctl` only to name a thread or to let a vCPU thread add its filter.
//! - the vCPU filter, added by each vCPU thread before its first KVM_RUN: no file or socket
//!   is opened, created, renamed or removed there, and no thread is made.
//!
//! A forbidden call raises SIGSYS; the handler writes one line naming the call and ends the
//! process with status [`EXIT_SECCOMP`] (a compromised or broken VMM is not left running).
//! [`SeccompMode::Log`] lets every call through and has the kernel log the ones the filters
//! would refuse (for finding a missing call); [`SeccompMode::Off`] installs nothing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Exit status of a VMM that made a system call its filter forbids (128 + SIGSYS, what a
/// shell reports for a process killed by that signal).
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

/// Whether and how the filters are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// No filter (the library's default: a process embedding the VMM decides).
    #[default]
    Off,
    /// Filters installed; a forbidden call ends the VMM.
    Enforce,
    /// Filters installed; forbidden calls are allowed and logged by the kernel.
    Log,
}

impl FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(SeccompMode::Enforce),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err(format!("invalid --seccomp {s:?}: use on, log or off")),
        }
    }
}

/// A filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused to compile or the kernel to load a filter.
    #[error("cannot install the seccomp filter: {0}")]
    Filter(#[source] seccompiler::Error),
    /// The handler that reports a forbidden call cannot be installed.
    #[error("cannot install the seccomp filter: cannot handle SIGSYS: {0}")]
    Sigsys(#[source] std::io::Error),
}

/// System calls of every VMM thread, vCPU threads included: reads and writes on open
/// descriptors, device activation by the guest (eventfds, timerfds; KVM and TAP ioctls have
/// their own rule), memory, futexes, time, signals, and leaving.
const THREAD_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getrandom,
    libc::SYS_epoll_ctl,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
];

/// What the VMM's other threads (main, I/O, API) add to [`THREAD_SYSCALLS`] while it runs,
/// snapshots and migrations included (besides the calls with argument rules below).
const PROCESS_ONLY_SYSCALLS: &[libc::c_long] = &[
    // Disks, TAPs and snapshot files.
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_openat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    // Threads (clone has its own rule), signals, limits.
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_clone3,
    libc::SYS_prlimit64,
    libc::SYS_sysinfo,
    // A vCPU thread adds its own filter (filters only ever narrow what a thread may do).
    libc::SYS_seccomp,
    // Event loops.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // Sockets (socket has its own rule): the API, vsock's host side, migration streams.
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
];

/// Calls that no VMM thread makes, whatever happens: none may be in either list.
#[cfg(test)]
const NEVER: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_reboot,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_symlink,
    libc::SYS_link,
    libc::SYS_kill,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_personality,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_io_uring_setup,
];

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a rule with conditions")
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, mismatch: SeccompAction) -> BpfProgram {
    SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .and_then(BpfProgram::try_from)
        .expect("the filter's rules are valid")
}

/// What a call outside a list gets.
fn refusal(mode: SeccompMode) -> SeccompAction {
    match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    }
}

/// `ioctl` with any request but the two that push input into a terminal (TIOCSTI) or act
/// on the virtual console (TIOCLINUX): stdin and stdout may be the user's terminal.
fn ioctl_rules() -> Vec<SeccompRule> {
    vec![rule(
        [libc::TIOCSTI, libc::TIOCLINUX]
            .iter()
            .map(|&req| cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, req))
            .collect(),
    )]
}

/// Rules that let a call through when its first (int) argument is one of `values`.
fn first_arg_one_of(values: &[libc::c_int]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|&v| {
            rule(vec![cond(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                v as u64,
            )])
        })
        .collect()
}

/// The process filter. io_uring's calls are in it only for a machine with an
/// `io_engine=io_uring` drive: the operations a ring carries out (opening files among them)
/// pass no filter.
fn process_filter(mode: SeccompMode, io_uring: bool) -> BpfProgram {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = THREAD_SYSCALLS
        .iter()
        .chain(PROCESS_ONLY_SYSCALLS)
        .map(|&nr| (nr, vec![]))
        .collect();
    if io_uring {
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ] {
            rules.insert(nr, vec![]);
        }
    }
    rules.insert(libc::SYS_ioctl, ioctl_rules());
    let flags = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flags),
            flags,
        )])],
    );
    rules.insert(
        libc::SYS_socket,
        first_arg_one_of(&[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6]),
    );
    rules.insert(
        libc::SYS_prctl,
        first_arg_one_of(&[
            libc::PR_SET_NAME,
            libc::PR_GET_NAME,
            libc::PR_SET_NO_NEW_PRIVS,
        ]),
    );
    compile(rules, refusal(mode))
}

/// Makes `clone3` fail with ENOSYS (and lets everything else through): stacked on the
/// process filter, which allows it, the stricter action wins.
fn clone3_filter() -> BpfProgram {
    let rules = BTreeMap::from([(libc::SYS_clone3, vec![])]);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
    .expect("the filter's rules are valid")
}

fn vcpu_filter(mode: SeccompMode) -> BpfProgram {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        THREAD_SYSCALLS.iter().map(|&nr| (nr, vec![])).collect();
    rules.insert(libc::SYS_ioctl, ioctl_rules());
    compile(rules, refusal(mode))
}

thread_local! {
    /// What the SIGSYS handler calls this thread. Constant-initialized: the handler reads it
    /// without allocating.
    static ROLE: Cell<&'static str> = const { Cell::new("VMM") };
}

/// Has every thread allocate from glibc's main arena. Call it first in `main`, before any
/// other thread starts (an arena given to a thread stays its own).
///
/// Why: glibc gives each new thread an arena of its own, and a thread arena gives freed memory
/// back by shrinking its heap; the first such shrink in the process reads
/// `/proc/sys/vm/overcommit_memory` (glibc's `check_may_shrink_heap`). When that first
/// shrink happened on a vCPU thread, whose filter opens nothing, the VMM stopped with "a vCPU
/// thread made system call 257" (openat): once in 42 lab runs of the balloon test, after the
/// guest had inflated its balloon. The main arena shrinks with `brk`, which opens nothing; with
/// one arena glibc also never counts the host's CPUs (`/sys/devices/system/cpu/online`) to
/// size its arena limit. Threads still allocate small blocks lock-free from their own caches
/// (tcache); the arena's lock is only taken to refill them, and fewer arenas use less memory.
pub fn prepare_allocator() {
    // SAFETY: mallopt only sets a tuning value of the C library's allocator.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        tracing::warn!("cannot limit the C library's allocator to one arena");
    }
}

/// Installs the process filter on every thread of the process (and the SIGSYS handler);
/// `io_uring`: a drive of the machine uses io_uring.
pub fn install_process_filter(mode: SeccompMode, io_uring: bool) -> Result<(), SeccompError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    install_sigsys_handler()?;
    seccompiler::apply_filter_all_threads(&clone3_filter()).map_err(SeccompError::Filter)?;
    seccompiler::apply_filter_all_threads(&process_filter(mode, io_uring))
        .map_err(SeccompError::Filter)
}

/// Adds the vCPU filter to the calling thread.
pub fn install_vcpu_filter(mode: SeccompMode) -> Result<(), SeccompError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    ROLE.with(|r| r.set("vCPU"));
    seccompiler::apply_filter(&vcpu_filter(mode)).map_err(SeccompError::Filter)
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; the handler only calls async-signal-safe
    // functions (write, _exit) and reads a constant-initialized thread-local.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = sigsys_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Sigsys(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Writes `vireo-vmm: seccomp: a <role> thread made system call <nr>, which its filter
/// forbids; stopping` to stderr and ends the process.
extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers. For SIGSYS from
    // seccomp, its union holds {void *call_addr; int syscall; unsigned arch}, the syscall
    // number 8 bytes into the union, which starts 16 bytes into siginfo_t on x86-64.
    let nr = unsafe { (info as *const u8).add(24).cast::<i32>().read_unaligned() };
    let mut line = [0u8; 160];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(line.len() - len);
        line[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(b"vireo-vmm: seccomp: a ");
    put(ROLE.with(|r| r.get()).as_bytes());
    put(b" thread made system call ");
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let mut v = nr.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[i..]);
    put(b", which its filter forbids; stopping\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `line[..len]` is initialized.
    unsafe {
        libc::write(2, line.as_ptr().cast(), len);
        libc::_exit(EXIT_SECCOMP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_leave_out_every_dangerous_call_and_the_vcpu_list_is_narrower() {
        for nr in NEVER {
            assert!(
                !PROCESS_ONLY_SYSCALLS.contains(nr),
                "{nr} in the process list"
            );
            assert!(!THREAD_SYSCALLS.contains(nr), "{nr} in the vCPU list");
        }
        for nr in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_unlink,
        ] {
            assert!(
                !THREAD_SYSCALLS.contains(&nr),
                "{nr} allowed on vCPU threads"
            );
        }
        // What the SIGSYS handler itself needs.
        for nr in [libc::SYS_write, libc::SYS_exit_group] {
            assert!(THREAD_SYSCALLS.contains(&nr));
        }
        assert_eq!("on".parse(), Ok(SeccompMode::Enforce));
        assert_eq!("off".parse(), Ok(SeccompMode::Off));
        assert!("yes".parse::<SeccompMode>().is_err());
    }

    /// Runs `f` in a forked child with stderr going to a pipe; returns the child's wait
    /// status and what it wrote. The child calls only what is safe after fork in a
    /// multi-threaded process (the filters are compiled before the fork).
    fn in_child(f: impl FnOnce()) -> (libc::c_int, String) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills `fds` with two new descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only runs `f` (async-signal-safe calls) and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: dup2 onto stderr in the child.
            unsafe { libc::dup2(fds[1], 2) };
            f();
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closing the parent's copy of the write end, then reaping the child.
        unsafe { libc::close(fds[1]) };
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reading into `buf` from the pipe's read end.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe {
            libc::close(fds[0]);
            libc::waitpid(pid, &mut status, 0);
        }
        (status, String::from_utf8_lossy(&out).into_owned())
    }

    /// What [`a_vcpu_thread_gives_heap_memory_back_under_its_filter`] runs in a fresh process:
    /// there, no heap has shrunk yet, as in a VMM whose vCPU thread is the first to.
    #[test]
    #[ignore = "run in a process of its own by a_vcpu_thread_gives_heap_memory_back_under_its_filter"]
    fn vcpu_heap_shrink_in_a_fresh_process() {
        prepare_allocator();
        install_sigsys_handler().unwrap();
        let vcpu = vcpu_filter(SeccompMode::Enforce);
        std::thread::spawn(move || {
            // The thread's first allocations come before its filter, as on a vCPU thread.
            let before = std::hint::black_box(vec![1u8; 64]);
            ROLE.with(|r| r.set("vCPU"));
            seccompiler::apply_filter(&vcpu).unwrap();
            // 10 MiB in blocks below the mmap threshold (heap memory), then freed: the free
            // space at the heap's top passes the trim threshold and the heap shrinks.
            let blocks: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 100 * 1024]).collect();
            std::hint::black_box(&blocks);
            drop(blocks);
            drop(before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_vcpu_thread_gives_heap_memory_back_under_its_filter() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::vcpu_heap_shrink_in_a_fresh_process",
                "--ignored",
                "--test-threads=1",
                "--nocapture",
            ])
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    #[test]
    fn a_forbidden_call_stops_the_process_with_one_line_and_allowed_ones_work() {
        let process = process_filter(SeccompMode::Enforce, false);
        let vcpu = vcpu_filter(SeccompMode::Enforce);
        let clone3 = clone3_filter();
        // Under the process filter: getpid works, clone3 says ENOSYS, a new process (clone
        // without CLONE_THREAD) is refused.
        let (status, out) = in_child(|| {
            install_sigsys_handler().unwrap();
            seccompiler::apply_filter(&clone3).unwrap();
            seccompiler::apply_filter(&process).unwrap();
            // SAFETY: plain system calls; clone3 with a null argument fails before it could
            // create anything.
            unsafe {
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    libc::_exit(10);
                }
                let r = libc::syscall(libc::SYS_clone3, 0usize, 0usize);
                if r != -1 || *libc::__errno_location() != libc::ENOSYS {
                    libc::_exit(11);
                }
                libc::syscall(libc::SYS_clone, libc::SIGCHLD as usize, 0usize);
            }
        });
        assert!(libc::WIFEXITED(status), "{status:#x} {out}");
        assert_eq!(libc::WEXITSTATUS(status), EXIT_SECCOMP, "{out}");
        assert_eq!(
            out,
            format!(
                "vireo-vmm: seccomp: a VMM thread made system call {}, which its filter forbids; stopping\n",
                libc::SYS_clone
            )
        );
        // Nor is a terminal's input pushed into (TIOCSTI on an unopened descriptor number).
        let (status, out) = in_child(|| {
            install_sigsys_handler().unwrap();
            seccompiler::apply_filter(&process).unwrap();
            // SAFETY: a plain system call; the filter stops it first.
            unsafe { libc::syscall(libc::SYS_ioctl, 1000, libc::TIOCSTI, 0usize) };
        });
        assert_eq!(libc::WEXITSTATUS(status), EXIT_SECCOMP, "{out}");
        assert!(out.contains("system call 16,"), "{out}");
        // A vCPU thread cannot open a file.
        let (status, out) = in_child(|| {
            install_sigsys_handler().unwrap();
            ROLE.with(|r| r.set("vCPU"));
            seccompiler::apply_filter(&vcpu).unwrap();
            // SAFETY: a plain system call with a valid path.
            unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/".as_ptr(), 0) };
        });
        assert_eq!(libc::WEXITSTATUS(status), EXIT_SECCOMP, "{out}");
        assert!(out.contains("a vCPU thread made system call 257,"), "{out}");
        // In log mode the same call goes through (the kernel only logs it).
        let logging = process_filter(SeccompMode::Log, false);
        let (status, out) = in_child(|| {
            install_sigsys_handler().unwrap();
            seccompiler::apply_filter(&logging).unwrap();
            // SAFETY: chdir("/") is in neither list and changes nothing the parent sees.
            if unsafe { libc::syscall(libc::SYS_chdir, c"/".as_ptr()) } != 0 {
                // SAFETY: leaving the child.
                unsafe { libc::_exit(12) };
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x} {out}"
        );
        assert_eq!(out, "");
        // Without the handler the kernel's default action for SIGSYS ends the process.
        let (status, _) = in_child(|| {
            seccompiler::apply_filter(&process).unwrap();
            // SAFETY: execve of a path that exists; the filter stops it first.
            unsafe {
                libc::syscall(
                    libc::SYS_execve,
                    c"/bin/true".as_ptr(),
                    std::ptr::null::<usize>(),
                    std::ptr::null::<usize>(),
                )
            };
        });
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
    }
}
