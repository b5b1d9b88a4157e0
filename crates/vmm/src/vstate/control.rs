//! How a machine's run ends: the first stop request wins, every vCPU thread sees it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// Something the guest did that ends its run as a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestFault {
    #[error("guest triple-faulted on vCPU {vcpu} (KVM_EXIT_SHUTDOWN)")]
    TripleFault { vcpu: u8 },
    #[error(
        "KVM could not emulate a guest instruction on vCPU {vcpu} (rip {rip:#x}); this host's \
         KVM is PVM (kvm_pvm), which runs only PVM-enabled guest kernels: boot stock kernels \
         in the lab (lab/lab) or on a host with VT-x/AMD-V"
    )]
    PvmEmulationFailure { vcpu: u8, rip: u64 },
    #[error("KVM could not emulate a guest instruction on vCPU {vcpu} (rip {rip:#x})")]
    EmulationFailure { vcpu: u8, rip: u64 },
    #[error("KVM internal error {suberror} on vCPU {vcpu}")]
    InternalError { vcpu: u8, suberror: u32 },
    #[error("KVM could not enter the guest on vCPU {vcpu} (hardware reason {reason:#x})")]
    EntryFailure { vcpu: u8, reason: u64 },
    #[error("guest reported a crash on vCPU {vcpu}")]
    Crash { vcpu: u8 },
    #[error("unexpected VM exit on vCPU {vcpu}: {exit}")]
    UnexpectedExit { vcpu: u8, exit: String },
    #[error("KVM_RUN failed on vCPU {vcpu}: {error}")]
    RunFailed { vcpu: u8, error: String },
}

/// Why the machine stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (ACPI reset register, i8042, or a KVM system event).
    Reset,
    /// The host asked the VMM to stop.
    Host,
    /// The guest now runs on a migration's destination.
    Migrated,
    Fault(GuestFault),
}

pub struct RunControl {
    stop: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    stopped: EventFd,
    pause: Mutex<PauseState>,
    pause_changed: Condvar,
}

#[derive(Default)]
struct PauseState {
    requested: bool,
    /// vCPU threads currently parked outside KVM_RUN.
    parked: usize,
}

impl RunControl {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            reason: Mutex::new(None),
            stopped: EventFd::new(libc::EFD_CLOEXEC)?,
            pause: Mutex::new(PauseState::default()),
            pause_changed: Condvar::new(),
        })
    }

    fn pause_state(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.pause.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pause_requested(&self) -> bool {
        self.pause_state().requested
    }

    /// Called by a vCPU thread that saw a pause request: waits outside KVM_RUN until resumed
    /// or stopped.
    pub fn park(&self) {
        let mut s = self.pause_state();
        s.parked += 1;
        self.pause_changed.notify_all();
        while s.requested && !self.should_stop() {
            s = self
                .pause_changed
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.parked -= 1;
        self.pause_changed.notify_all();
    }

    /// Asks every vCPU to park and waits until `nr_vcpus` have, calling `kick` (which must
    /// interrupt KVM_RUN on every vCPU thread) until they do. False if the machine stopped.
    pub fn pause(&self, nr_vcpus: usize, kick: impl Fn()) -> bool {
        let mut s = self.pause_state();
        s.requested = true;
        while s.parked < nr_vcpus {
            if self.should_stop() {
                return false;
            }
            drop(s);
            kick();
            s = self.pause_state();
            s = self
                .pause_changed
                .wait_timeout(s, Duration::from_millis(2))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Asks the vCPUs to park without waiting for them (before they start).
    pub fn request_pause(&self) {
        self.pause_state().requested = true;
    }

    pub fn resume(&self) {
        self.pause_state().requested = false;
        self.pause_changed.notify_all();
    }

    /// Records `reason` unless another stop came first, and wakes [`RunControl::wait`].
    pub fn request_stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.pause_changed.notify_all();
        // An eventfd write only fails when the counter would overflow, which cannot happen
        // with one write per stop request.
        let _ = self.stopped.write(1);
    }

    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Blocks until a stop is requested, then returns the first reason.
    pub fn wait(&self) -> StopReason {
        while !self.should_stop() {
            let _ = self.stopped.read();
        }
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(StopReason::Host)
    }
}

/// VM exits of one vCPU, by reason.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    pub hlt: AtomicU64,
    pub interrupted: AtomicU64,
    pub other: AtomicU64,
    /// The largest CPU time and run-queue wait (ns) seen for the thread: what the metrics
    /// report once the thread is gone, and a floor that keeps them monotonic.
    pub cpu_ns: AtomicU64,
    pub wait_ns: AtomicU64,
    /// The vCPU thread's /proc schedstat file while the thread runs (opened by the thread as
    /// it starts, so it is that thread's; dropped as it ends): the API thread reads the times
    /// through it, and the thread reads its last ones as it ends, when its system-call filter
    /// no longer lets it open a file.
    schedstat: std::sync::Mutex<Option<std::fs::File>>,
}

/// A copy of [`ExitCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ExitCounts {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub hlt: u64,
    pub interrupted: u64,
    pub other: u64,
}

impl ExitCounters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Called by the vCPU thread when it starts.
    pub fn thread_started(&self) {
        *self.schedstat() = std::fs::File::open("/proc/thread-self/schedstat").ok();
    }

    fn schedstat(&self) -> std::sync::MutexGuard<'_, Option<std::fs::File>> {
        self.schedstat.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the vCPU thread as it ends: records its final times and closes the file
    /// (after the thread, it would only say that the thread is gone).
    pub fn thread_ending(&self) {
        if let Some(f) = self.schedstat().take() {
            self.record(read_schedstat(&f));
        }
    }

    fn record(&self, times: Option<(u64, u64)>) {
        if let Some((cpu, wait)) = times {
            self.cpu_ns.fetch_max(cpu, Ordering::Relaxed);
            self.wait_ns.fetch_max(wait, Ordering::Relaxed);
        }
    }

    /// The vCPU thread's (CPU time, run-queue wait) in nanoseconds so far: read now while the
    /// thread runs, its last values after.
    pub fn thread_times(&self) -> (u64, u64) {
        if let Some(f) = self.schedstat().as_ref() {
            self.record(read_schedstat(f));
        }
        (
            self.cpu_ns.load(Ordering::Relaxed),
            self.wait_ns.load(Ordering::Relaxed),
        )
    }

    pub fn snapshot(&self) -> ExitCounts {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExitCounts {
            io_in: g(&self.io_in),
            io_out: g(&self.io_out),
            mmio_read: g(&self.mmio_read),
            mmio_write: g(&self.mmio_write),
            hlt: g(&self.hlt),
            interrupted: g(&self.interrupted),
            other: g(&self.other),
        }
    }
}

/// A thread of this process's schedstat: nanoseconds on a CPU (user and system time, what
/// CLOCK_THREAD_CPUTIME_ID counts) and nanoseconds runnable but waiting on a run queue.
fn read_schedstat(f: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 96];
    let n = f.read_at(&mut buf, 0).ok()?;
    parse_schedstat(std::str::from_utf8(&buf[..n]).ok()?)
}

fn parse_schedstat(s: &str) -> Option<(u64, u64)> {
    let mut f = s.split_ascii_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

impl std::ops::Add for ExitCounts {
    type Output = ExitCounts;
    fn add(self, o: ExitCounts) -> ExitCounts {
        ExitCounts {
            io_in: self.io_in + o.io_in,
            io_out: self.io_out + o.io_out,
            mmio_read: self.mmio_read + o.mmio_read,
            mmio_write: self.mmio_write + o.mmio_write,
            hlt: self.hlt + o.hlt,
            interrupted: self.interrupted + o.interrupted,
            other: self.other + o.other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_parses_run_and_wait_times() {
        assert_eq!(
            parse_schedstat("217382558 25118392 272\n"),
            Some((217382558, 25118392))
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("12 x 3"), None);
    }

    #[test]
    fn thread_times_follow_the_thread_and_stay_after_it_ends() {
        let c = std::sync::Arc::new(ExitCounters::default());
        assert_eq!(c.thread_times(), (0, 0), "no thread yet");
        let c2 = c.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            c2.thread_started();
            // Burn 20 ms of CPU (however long that takes on a busy host), as the thread
            // itself measures it.
            let own = std::fs::File::open("/proc/thread-self/schedstat").unwrap();
            let mut x = 0u64;
            while read_schedstat(&own).unwrap().0 < 20_000_000 {
                for _ in 0..100_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            tx.send(()).unwrap();
            done_rx.recv().unwrap();
            c2.thread_ending();
        });
        rx.recv().unwrap();
        let (cpu, _) = c.thread_times();
        assert!(cpu >= 20_000_000, "the thread ran {cpu} ns");
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(
            c.schedstat().is_none(),
            "the file is closed with the thread"
        );
        let (after, _) = c.thread_times();
        assert!(after >= cpu, "monotonic after the thread ended");
    }

    #[test]
    fn first_stop_reason_wins() {
        let c = RunControl::new().unwrap();
        assert!(!c.should_stop());
        c.request_stop(StopReason::PowerOff);
        c.request_stop(StopReason::Reset);
        assert!(c.should_stop());
        assert_eq!(c.wait(), StopReason::PowerOff);
    }
}
