//! The handle on a running machine through which it is controlled: pause, resume, stop, a
//! graceful shutdown, the balloon, device rate limits, snapshots, migration and metrics.
//!
//! The engine builds a [`MachineHandle`] once the vCPUs run and hands it to whatever serves
//! the machine's control interface ([`ControlServer`]: the HTTP API of `crate::api`, given by
//! the binary). The engine itself knows nothing of HTTP: every operation here takes and
//! returns typed values (the contract's types, `vireo_vmm_api`) and refuses with a
//! [`ControlError`], which the server turns into its own answer.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::rate_limiter::LimiterHandle;
use vireo_vmm_api as wire;

use crate::config::{RateLimiterConfig, TokenBucketConfig};
use crate::machine::DeviceControls;
use crate::migration::{self, MigrationError, SharedProgress};
use crate::snapshot::{MachineAccess, SnapshotError};
use crate::vstate::control::{ExitCounters, RunControl, StopReason};

/// Interrupts KVM_RUN on every vCPU thread.
pub type Kicker = Arc<dyn Fn() + Send + Sync>;

/// Serves a running machine's control interface. The engine calls [`ControlServer::serve`]
/// once the vCPUs run, and joins the thread it returns after the machine has stopped (the
/// thread must end soon after [`MachineHandle::should_stop`] turns true).
pub trait ControlServer: Send + Sync + std::fmt::Debug {
    /// Starts serving `machine`; an error stops the machine.
    fn serve(&self, machine: MachineHandle) -> Result<JoinHandle<()>, ServeError>;
}

/// A control server's socket that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket cannot be bound or set up.
    #[error("cannot serve the API on {}: {source}", socket.display())]
    Start {
        socket: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket failed while the server waited on it (for a snapshot to load).
    #[error("the API on {}: {source}", socket.display())]
    Failed {
        socket: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why an operation was refused or failed; nothing was changed unless the variant says so.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the VM has stopped")]
    Stopped,
    #[error("the VM is paused: resume it first")]
    Paused,
    #[error("this VM has no balloon")]
    NoBalloon,
    #[error("this VM has no keyboard")]
    NoKeyboard,
    /// No drive or net device of that index.
    #[error("no such device")]
    NoDevice,
    #[error("target_mib {mib} is more than the VM's {memory_mib} MiB")]
    BalloonTooLarge { mib: u64, memory_mib: u64 },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Another migration is under way.
    #[error(transparent)]
    MigrationBusy(MigrationError),
    /// The migration failed; the guest runs on here.
    #[error("migration failed: {0}")]
    Migration(MigrationError),
}

/// A running machine, as its control interface sees it. Cloning shares the machine.
#[derive(Clone)]
pub struct MachineHandle {
    inner: Arc<Inner>,
}

struct Inner {
    control: Arc<RunControl>,
    kick_vcpus: Kicker,
    nr_vcpus: usize,
    memory_mib: u64,
    devices: DeviceControls,
    exit_counters: Vec<Arc<ExitCounters>>,
    /// Snapshots and migration.
    machine: Arc<MachineAccess>,
    migration: SharedProgress,
    migrating: AtomicBool,
    /// Set when a migration succeeded: the machine stops once the answer is out
    /// ([`MachineHandle::finish_migration`]), and its I/O thread stays frozen until then
    /// (its devices must not act for a guest that now runs elsewhere).
    migrated: Mutex<Option<devices::virtio::IoFreeze>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MachineHandle {
    pub(crate) fn new(
        nr_vcpus: usize,
        devices: DeviceControls,
        exit_counters: Vec<Arc<ExitCounters>>,
        machine: Arc<MachineAccess>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                control: machine.control.clone(),
                kick_vcpus: machine.kick_vcpus.clone(),
                nr_vcpus,
                memory_mib: machine.config.memory_mib,
                devices,
                exit_counters,
                machine,
                migration: Arc::new(Mutex::new(migration::Progress {
                    state: "none".into(),
                    ..Default::default()
                })),
                migrating: AtomicBool::new(false),
                migrated: Mutex::new(None),
            }),
        }
    }

    /// The machine is stopping (or stopped): a server ends.
    pub fn should_stop(&self) -> bool {
        self.inner.control.should_stop()
    }

    /// `GET /vm`.
    pub fn info(&self) -> wire::VmInfo {
        wire::VmInfo {
            memory_mib: Some(self.inner.memory_mib),
            state: if self.inner.control.pause_requested() {
                wire::VmState::Paused
            } else {
                wire::VmState::Running
            },
            vcpus: Some(self.inner.nr_vcpus as u64),
        }
    }

    /// Stops every vCPU (devices keep running).
    pub fn pause(&self) -> Result<(), ControlError> {
        let kick = self.inner.kick_vcpus.clone();
        if self.inner.control.pause(self.inner.nr_vcpus, || kick()) {
            Ok(())
        } else {
            Err(ControlError::Stopped)
        }
    }

    pub fn resume(&self) {
        self.inner.control.resume();
    }

    /// Ends the machine now.
    pub fn stop(&self) {
        self.inner.control.request_stop(StopReason::Host);
    }

    /// Asks the guest to shut down: Ctrl-Alt-Del on its keyboard. What the guest does with it
    /// is up to the guest (the VMM exits when it powers off); a paused guest could not act on
    /// it, so that is refused rather than left to wait unseen.
    pub fn shutdown(&self) -> Result<(), ControlError> {
        if self.inner.control.should_stop() {
            return Err(ControlError::Stopped);
        }
        if self.inner.control.pause_requested() {
            return Err(ControlError::Paused);
        }
        let Some(kbd) = &self.inner.devices.keyboard else {
            return Err(ControlError::NoKeyboard);
        };
        if !lock(kbd).press_ctrl_alt_del() {
            // The guest turned its keyboard off or is not reading it: it will not see this
            // press, which is what a stop with a deadline is for.
            tracing::warn!("ctrl-alt-del not delivered: the guest's keyboard is not listening");
        }
        Ok(())
    }

    /// The balloon's target, size and the guest's statistics.
    pub fn balloon(&self) -> Result<wire::BalloonInfo, ControlError> {
        let b = self.balloon_device()?;
        let s = b.status();
        Ok(wire::BalloonInfo {
            actual_mib: (u64::from(s.actual_pages) * 4096) >> 20,
            deflated_pages: s.deflated_pages,
            inflated_pages: s.inflated_pages,
            invalid_pfns: s.invalid_pfns,
            stats: s.stats.map(|st| wire::BalloonStats {
                available_memory: st.available_memory,
                disk_caches: st.disk_caches,
                free_memory: st.free_memory,
                major_faults: st.major_faults,
                minor_faults: st.minor_faults,
                swap_in: st.swap_in,
                swap_out: st.swap_out,
                total_memory: st.total_memory,
            }),
            target_mib: (u64::from(s.target_pages) * 4096) >> 20,
        })
    }

    /// Asks the guest to give back `mib` MiB (at most the VM's memory).
    pub fn set_balloon_target(&self, mib: u64) -> Result<(), ControlError> {
        let b = self.balloon_device()?;
        if mib > self.inner.memory_mib {
            return Err(ControlError::BalloonTooLarge {
                mib,
                memory_mib: self.inner.memory_mib,
            });
        }
        b.set_target_mib(mib as u32);
        Ok(())
    }

    /// Drive `index`'s limits.
    pub fn drive_limits(&self, index: usize) -> Result<wire::DriveLimits, ControlError> {
        let h = self.drive(index)?;
        Ok(wire::DriveLimits {
            rate_limiter: Some(limits_of(h)),
        })
    }

    /// Changes drive `index`'s limits (a field left out stays as it is). The buckets must
    /// have been checked already (the API's parse refuses empty ones).
    pub fn set_drive_limits(
        &self,
        index: usize,
        limits: &wire::DriveLimits,
    ) -> Result<(), ControlError> {
        let h = self.drive(index)?;
        if let Some(l) = &limits.rate_limiter {
            apply(h, l);
        }
        Ok(())
    }

    /// Net device `index`'s limits.
    pub fn net_limits(&self, index: usize) -> Result<wire::NetLimits, ControlError> {
        let (rx, tx) = self.net_device(index)?;
        Ok(wire::NetLimits {
            rx_rate_limiter: Some(limits_of(rx)),
            tx_rate_limiter: Some(limits_of(tx)),
        })
    }

    /// Changes net device `index`'s limits, both directions together.
    pub fn set_net_limits(
        &self,
        index: usize,
        limits: &wire::NetLimits,
    ) -> Result<(), ControlError> {
        let (rx, tx) = self.net_device(index)?;
        if let Some(l) = &limits.rx_rate_limiter {
            apply(rx, l);
        }
        if let Some(l) = &limits.tx_rate_limiter {
            apply(tx, l);
        }
        Ok(())
    }

    /// Writes a snapshot of the paused machine to `dir`.
    pub fn snapshot(&self, dir: &Path) -> Result<wire::SnapshotStats, ControlError> {
        if self.inner.control.should_stop() {
            return Err(ControlError::Stopped);
        }
        let s = self.inner.machine.snapshot(dir)?;
        Ok(wire::SnapshotStats {
            memory_bytes: s.memory_bytes,
            memory_data_bytes: s.memory_data_bytes,
            millis: s.millis,
        })
    }

    /// Live-migrates the machine to `destination`; returns when the migration is over. On
    /// success the destination runs the guest and this machine stops once
    /// [`MachineHandle::finish_migration`] is called (after the answer is out).
    pub fn migrate(
        &self,
        destination: &str,
        downtime_ms: u64,
    ) -> Result<wire::MigrationProgress, ControlError> {
        if self.inner.control.should_stop() {
            return Err(ControlError::Stopped);
        }
        if self.inner.migrating.swap(true, Ordering::SeqCst) {
            return Err(ControlError::MigrationBusy(MigrationError::Busy));
        }
        let r = migration::migrate(
            &self.inner.machine,
            destination,
            downtime_ms,
            &self.inner.migration,
        );
        self.inner.migrating.store(false, Ordering::SeqCst);
        match r {
            Ok(frozen) => {
                *lock(&self.inner.migrated) = Some(frozen);
                Ok(self.migration())
            }
            Err(e) => Err(ControlError::Migration(e)),
        }
    }

    /// After a successful migration's answer: stops the machine (its guest runs elsewhere)
    /// and lets its I/O thread go. Returns whether there was one to finish.
    pub fn finish_migration(&self) -> bool {
        let frozen = lock(&self.inner.migrated).take();
        match frozen {
            Some(frozen) => {
                self.inner.control.request_stop(StopReason::Migrated);
                drop(frozen);
                true
            }
            None => false,
        }
    }

    /// Where a migration stands.
    pub fn migration(&self) -> wire::MigrationProgress {
        let p = lock(&self.inner.migration).clone();
        wire::MigrationProgress {
            bytes_sent: p.bytes_sent,
            destination: p.destination,
            dirty_pages: p.dirty_pages,
            downtime_ms: p.downtime_ms,
            downtime_source_ms: p.downtime_source_ms,
            error: p.error,
            pages_sent: p.pages_sent,
            rounds: p.rounds,
            state: match p.state.as_str() {
                "active" => wire::MigrationState::Active,
                "completed" => wire::MigrationState::Completed,
                "failed" => wire::MigrationState::Failed,
                _ => wire::MigrationState::None,
            },
            total_ms: p.total_ms,
        }
    }

    /// The machine's metrics as Prometheus text (`crate::metrics`).
    pub fn metrics(&self) -> String {
        crate::metrics::render(self)
    }

    fn balloon_device(&self) -> Result<&devices::virtio::balloon::BalloonControl, ControlError> {
        self.inner
            .devices
            .balloon
            .as_ref()
            .ok_or(ControlError::NoBalloon)
    }

    /// Drive `index`'s rate limiter.
    fn drive(&self, index: usize) -> Result<&LimiterHandle, ControlError> {
        self.inner
            .devices
            .drives
            .get(index)
            .ok_or(ControlError::NoDevice)
    }

    /// Net device `index`'s (rx, tx) rate limiters.
    fn net_device(&self, index: usize) -> Result<&(LimiterHandle, LimiterHandle), ControlError> {
        self.inner
            .devices
            .net
            .get(index)
            .ok_or(ControlError::NoDevice)
    }

    pub(crate) fn exit_counters(&self) -> &[Arc<ExitCounters>] {
        &self.inner.exit_counters
    }

    pub(crate) fn memory_mib(&self) -> u64 {
        self.inner.memory_mib
    }

    pub(crate) fn devices(&self) -> &DeviceControls {
        &self.inner.devices
    }

    pub(crate) fn machine(&self) -> &MachineAccess {
        &self.inner.machine
    }
}

fn limits_of(h: &LimiterHandle) -> wire::RateLimiter {
    let (ops, bytes) = h.limits();
    let cfg = RateLimiterConfig::from_buckets(ops, bytes);
    let bucket = |b: TokenBucketConfig| wire::TokenBucket {
        one_time_burst: b.one_time_burst,
        refill_time_ms: b.refill_time_ms,
        size: b.size,
    };
    wire::RateLimiter {
        bytes: cfg.bytes.map(bucket),
        ops: cfg.ops.map(bucket),
    }
}

fn apply(h: &LimiterHandle, l: &wire::RateLimiter) {
    let bucket = |b: wire::TokenBucket| TokenBucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time_ms: b.refill_time_ms,
    };
    let cfg = RateLimiterConfig {
        ops: l.ops.map(bucket),
        bytes: l.bytes.map(bucket),
    };
    let (ops, bytes) = cfg.buckets();
    h.set(ops, bytes);
}
