//! An instance's lifecycle: Start, Stop (and hibernate), Reboot and TerminateInstances, and
//! ModifyInstanceAttribute(InstanceType).

use std::path::Path;
use std::time::Duration;

use super::attributes::Protected;
use super::files::{forget_hibernation, remove_instance_files, HIBERNATE_DIR, HIBERNATE_DONE};
use super::state::{Operation, Step};
use super::{vmm, Service};
use crate::durable;
use crate::error::{ApiError, ApiResult};
use crate::model::{InstanceState, StateReason};
use crate::process::{self, ProcessId, VmmFiles};
use crate::types;

/// A state change as Start/Stop/TerminateInstances report it.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub instance_id: String,
    pub previous: InstanceState,
    pub current: InstanceState,
}

impl Service {
    pub(super) fn check_ids_exist(&self, ids: &[String]) -> ApiResult<()> {
        let db = self.db();
        for id in ids {
            if db.instance(id)?.is_none() {
                return Err(ApiError::instance_not_found(id));
            }
        }
        Ok(())
    }

    /// Asks the guest to shut down (Ctrl-Alt-Del through the VMM), waits up to the shutdown
    /// timeout, then kills the VMM. The monitor settles the state when the process is gone.
    pub(super) async fn shutdown_and_wait(&self, id: &str, pid: ProcessId, force: bool) {
        let dir = match self.instance(id) {
            Ok(i) => i.dir,
            Err(_) => return,
        };
        if !force && vmm::shutdown(&VmmFiles::api_socket(&dir)).await.is_ok() {
            let wait =
                tokio::time::timeout(self.inner.cfg.shutdown_timeout, process::wait_exit(pid))
                    .await;
            if wait.is_ok() {
                return;
            }
            tracing::info!(
                "{id}: the guest did not shut down in {:?}; forcing",
                self.inner.cfg.shutdown_timeout
            );
        }
        if let Err(e) = process::kill(pid) {
            tracing::warn!("{id}: cannot kill VMM {}: {e}", pid.pid);
        }
    }

    /// StopInstances with Hibernate: the VM is paused and snapshotted (memory, vCPUs, devices)
    /// into the instance directory, then its VMM ends; StartInstances resumes from the snapshot.
    /// If the snapshot cannot be made, the guest is resumed and stopped the ordinary way.
    pub(super) async fn hibernate(&self, id: &str, dir: &Path, pid: ProcessId) {
        match hibernation_snapshot(dir).await {
            Ok(()) => {
                let limit = tokio::time::timeout(Duration::from_secs(30), process::wait_exit(pid));
                if limit.await.is_err() {
                    let _ = process::kill(pid);
                }
            }
            Err(e) => {
                tracing::warn!("{id}: hibernation failed ({e}); stopping it instead");
                forget_hibernation(dir);
                self.shutdown_and_wait(id, pid, false).await;
            }
        }
    }

    pub async fn stop_instances(
        &self,
        ids: &[String],
        force: bool,
        hibernate: bool,
    ) -> ApiResult<Vec<StateChange>> {
        self.check_ids_exist(ids)?;
        self.check_protection(ids, Protected::Stop)?;
        let mut changes = Vec::new();
        for id in ids {
            let _g = self.lock(id).await;
            let inst = self.instance(id)?;
            let op = if hibernate {
                Operation::Hibernate
            } else {
                Operation::Stop
            };
            let current = match op.check(id, inst.state)? {
                Step::To(next) => {
                    let reason = if hibernate {
                        StateReason::user_hibernate()
                    } else {
                        StateReason::user_stop()
                    };
                    self.set_state(id, next, Some(&reason))?;
                    if let Some(pid) = inst.pid {
                        let svc = self.clone();
                        let id = id.clone();
                        let dir = inst.dir.clone();
                        tokio::spawn(async move {
                            if hibernate {
                                svc.hibernate(&id, &dir, pid).await
                            } else {
                                svc.shutdown_and_wait(&id, pid, force).await
                            }
                        });
                    }
                    next
                }
                Step::Stays => {
                    // Force on an instance already stopping: its VMM is killed now.
                    if force && inst.state == InstanceState::Stopping {
                        if let Some(pid) = inst.pid {
                            let _ = process::kill(pid);
                        }
                    }
                    inst.state
                }
            };
            changes.push(StateChange {
                instance_id: id.clone(),
                previous: inst.state,
                current,
            });
        }
        Ok(changes)
    }

    pub async fn start_instances(&self, ids: &[String]) -> ApiResult<Vec<StateChange>> {
        self.check_ids_exist(ids)?;
        // Check every instance first so that an error starts nothing.
        for id in ids {
            Operation::Start.check(id, self.instance(id)?.state)?;
        }
        let cap = self.inner.capacity_lock.lock().await;
        let (free_v, free_m) = self.free_capacity()?;
        let (mut need_v, mut need_m) = (0u64, 0u64);
        for id in ids {
            let inst = self.instance(id)?;
            if let Some(Step::To(_)) = Operation::Start.step(inst.state) {
                need_v += u64::from(inst.vcpus);
                need_m += inst.memory_mib;
            }
        }
        if need_v > free_v || need_m > free_m {
            return Err(ApiError::capacity(format!(
                "Insufficient capacity to start: {need_v} vCPUs and {need_m} MiB needed, {free_v} vCPUs and {free_m} MiB free"
            )));
        }
        let mut changes = Vec::new();
        let mut to_boot = Vec::new();
        for id in ids {
            let g = self.lock(id).await;
            let inst = self.instance(id)?;
            // Checked above; an instance that changed since (it is locked only now) is left
            // as it is.
            if let Some(Step::To(next)) = Operation::Start.step(inst.state) {
                self.set_state(id, next, None)?;
                to_boot.push((id.clone(), inst.dir.clone()));
                changes.push(StateChange {
                    instance_id: id.clone(),
                    previous: inst.state,
                    current: next,
                });
            } else {
                changes.push(StateChange {
                    instance_id: id.clone(),
                    previous: inst.state,
                    current: inst.state,
                });
            }
            drop(g);
        }
        drop(cap);
        for (id, dir) in to_boot {
            let svc = self.clone();
            tokio::spawn(async move {
                let g = svc.lock(&id).await;
                if svc.instance(&id).map(|i| i.state) != Ok(InstanceState::Pending) {
                    return;
                }
                if let Err(e) = svc.boot(&id, &dir, g).await {
                    tracing::warn!("{id}: start failed: {e}");
                }
            });
        }
        Ok(changes)
    }

    pub async fn reboot_instances(&self, ids: &[String]) -> ApiResult<()> {
        self.check_ids_exist(ids)?;
        for id in ids {
            Operation::Reboot.check(id, self.instance(id)?.state)?;
        }
        for id in ids {
            let g = self.lock(id).await;
            let inst = self.instance(id)?;
            // A pending instance is booting already: nothing to do.
            let Some(Step::To(next)) = Operation::Reboot.step(inst.state) else {
                continue;
            };
            // A hard reset: the VMM is replaced by a fresh one on the same disk, under the lock,
            // so the old VMM's monitor sees a newer process and leaves the state alone.
            if let Some(pid) = inst.pid {
                process::kill(pid)?;
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), process::wait_exit(pid)).await;
            }
            self.set_state(id, next, None)?;
            let dir = inst.dir.clone();
            let svc = self.clone();
            let id = id.clone();
            // The boot task holds the instance's lock until the new VMM is recorded, so any
            // later operation on this instance sees it; the reboot itself answers at once.
            tokio::spawn(async move {
                if let Err(e) = svc.boot(&id, &dir, g).await {
                    tracing::warn!("{id}: reboot failed: {e}");
                }
            });
        }
        Ok(())
    }

    pub async fn terminate_instances(&self, ids: &[String]) -> ApiResult<Vec<StateChange>> {
        self.check_ids_exist(ids)?;
        self.check_protection(ids, Protected::Termination)?;
        let mut changes = Vec::new();
        for id in ids {
            let _g = self.lock(id).await;
            let inst = self.instance(id)?;
            let current = match Operation::Terminate.check(id, inst.state)? {
                Step::Stays => inst.state,
                // Shutting down needs a VMM to shut down.
                Step::To(next) => match inst.pid.filter(|_| next == InstanceState::ShuttingDown) {
                    Some(pid) => {
                        self.set_state(id, next, Some(&StateReason::user_stop()))?;
                        let svc = self.clone();
                        let id = id.clone();
                        let force = inst.state != InstanceState::Running;
                        tokio::spawn(async move { svc.shutdown_and_wait(&id, pid, force).await });
                        next
                    }
                    None => {
                        // Stopped, or pending without a VMM yet (the launch task sees the state
                        // and stops): terminated at once.
                        self.set_state(
                            id,
                            InstanceState::Terminated,
                            Some(&StateReason::user_stop()),
                        )?;
                        remove_instance_files(&inst.dir);
                        InstanceState::Terminated
                    }
                },
            };
            changes.push(StateChange {
                instance_id: id.clone(),
                previous: inst.state,
                current,
            });
        }
        self.collect_images();
        Ok(changes)
    }

    /// ModifyInstanceAttribute(InstanceType): only while stopped, as on EC2.
    pub async fn modify_instance_type(&self, id: &str, type_name: &str) -> ApiResult<()> {
        let ty = types::lookup(type_name).ok_or_else(|| {
            ApiError::invalid_value(format!("Invalid value '{type_name}' for InstanceType."))
        })?;
        let _g = self.lock(id).await;
        let inst = self.instance(id)?;
        Operation::ModifyType.check(id, inst.state)?;
        if inst.dir.join(HIBERNATE_DONE).exists() {
            return Err(ApiError::new(
                "UnsupportedOperation",
                format!("instance {id} is hibernated: its memory snapshot fixes its size; start it first"),
            ));
        }
        self.db()
            .set_instance_type(id, ty.name, ty.vcpus, ty.memory_mib)?;
        Ok(())
    }
}

/// Pauses the VM, snapshots it into the instance directory, marks the snapshot complete and
/// ends the VMM. A snapshot that fails resumes the guest; the error says which step failed.
async fn hibernation_snapshot(dir: &Path) -> Result<(), String> {
    let sock = VmmFiles::api_socket(dir);
    let (snap, done) = (dir.join(HIBERNATE_DIR), dir.join(HIBERNATE_DONE));
    let snap_dir = snap.clone();
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || forget_hibernation(&d))
        .await
        .map_err(|e| e.to_string())?;
    vmm::pause(&sock).await.map_err(|e| e.to_string())?;
    if let Err(e) = vmm::snapshot(&sock, &snap_dir).await {
        let _ = vmm::resume(&sock).await;
        return Err(e.to_string());
    }
    // The snapshot is on disk before the marker that says it is complete.
    tokio::task::spawn_blocking(move || {
        durable::sync_tree(&snap)?;
        durable::write(&done, b"")
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    vmm::stop(&sock).await.map_err(|e| e.to_string())
}
