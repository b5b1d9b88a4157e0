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
    fn first_stop_reason_wins() {
        let c = RunControl::new().unwrap();
        assert!(!c.should_stop());
        c.request_stop(StopReason::PowerOff);
        c.request_stop(StopReason::Reset);
        assert!(c.should_stop());
        assert_eq!(c.wait(), StopReason::PowerOff);
    }
}
