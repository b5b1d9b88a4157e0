//! What happens when a VMM ends (the instance's state follows from what it was doing, how
//! the VMM ended and, for a guest's own poweroff, its shutdown behaviour), and after a vireod restart (adopting the VMMs that kept running).

use super::files::remove_instance_files;
use super::{vmm, Service};
use crate::error::ApiResult;
use crate::model::{InstanceState, ShutdownBehavior, StateReason};
use crate::process::{self, ProcessId, VmmExit, VmmFiles};

impl Service {
    pub(super) fn spawn_monitor(&self, id: String, pid: ProcessId) {
        let svc = self.clone();
        tokio::spawn(async move {
            if let Err(e) = process::wait_exit(pid).await {
                tracing::warn!("{id}: cannot watch VMM {}: {e}", pid.pid);
                return;
            }
            if let Err(e) = svc.on_vmm_exit(&id, pid).await {
                tracing::warn!("{id}: after its VMM exited: {e}");
            }
        });
    }

    /// A VMM has ended: the instance's state follows from what it was doing and how the VMM ended.
    pub(super) async fn on_vmm_exit(&self, id: &str, pid: ProcessId) -> ApiResult<()> {
        let guard = self.lock(id).await;
        let inst = self.instance(id)?;
        if inst.pid != Some(pid) {
            return Ok(()); // a newer VMM has taken over (reboot)
        }
        let dir = inst.dir.clone();
        let exit = process::exit_of(&dir);
        tracing::info!(
            "{id}: VMM {} ended ({exit:?}) while {}",
            pid.pid,
            inst.state
        );
        self.db().set_process(id, None)?;
        match inst.state {
            InstanceState::Stopping => {
                let reason = inst
                    .state_reason
                    .clone()
                    .unwrap_or_else(StateReason::user_stop);
                self.set_state(id, InstanceState::Stopped, Some(&reason))?;
            }
            InstanceState::ShuttingDown => {
                let reason = inst
                    .state_reason
                    .clone()
                    .unwrap_or_else(StateReason::user_stop);
                self.set_state(id, InstanceState::Terminated, Some(&reason))?;
                remove_instance_files(&dir);
                drop(guard);
                self.collect_images();
            }
            InstanceState::Pending | InstanceState::Running => match exit {
                // InstanceInitiatedShutdownBehavior=terminate: the guest's own poweroff ends
                // the instance (termination protection does not stop it, as on EC2).
                VmmExit::PowerOff
                    if inst.attributes.shutdown_behavior == ShutdownBehavior::Terminate =>
                {
                    self.set_state(
                        id,
                        InstanceState::Terminated,
                        Some(&StateReason::guest_shutdown()),
                    )?;
                    remove_instance_files(&dir);
                    drop(guard);
                    self.collect_images();
                }
                VmmExit::PowerOff => {
                    self.set_state(
                        id,
                        InstanceState::Stopped,
                        Some(&StateReason::guest_shutdown()),
                    )?;
                }
                VmmExit::Reboot => {
                    // The guest rebooted itself: a fresh VMM, same disk, still running.
                    self.set_state(id, InstanceState::Pending, None)?;
                    let svc = self.clone();
                    let id = id.to_string();
                    tokio::spawn(async move {
                        let g = svc.lock(&id).await;
                        if let Err(e) = svc.boot(&id, &dir, g).await {
                            tracing::warn!("{id}: reboot failed: {e}");
                        }
                    });
                }
                VmmExit::GuestFault(why) if inst.state == InstanceState::Running => {
                    self.set_state(
                        id,
                        InstanceState::Stopped,
                        Some(&StateReason::internal(&format!("the guest failed: {why}"))),
                    )?;
                }
                VmmExit::Vanished(why) if inst.state == InstanceState::Running => {
                    self.set_state(
                        id,
                        InstanceState::Stopped,
                        Some(&StateReason::internal(&format!(
                            "the VMM process ended unexpectedly: {why}"
                        ))),
                    )?;
                }
                VmmExit::GuestFault(why) | VmmExit::Vanished(why) => {
                    self.launch_failed(id, &format!("the instance failed to boot: {why}"))?;
                }
            },
            InstanceState::Stopped | InstanceState::Terminated => {}
        }
        Ok(())
    }

    /// After a vireod restart: adopt the VMMs that kept running, and settle the instances whose VMM
    /// ended while vireod was away.
    pub async fn recover(&self) -> ApiResult<()> {
        let all = self.db().instances()?;
        for inst in all.into_iter().filter(|i| i.state.has_vmm()) {
            let id = inst.instance_id.clone();
            match inst.pid {
                Some(pid) if process::is_alive(pid) => {
                    tracing::info!("{id}: adopting VMM {}", pid.pid);
                    self.spawn_monitor(id.clone(), pid);
                    match inst.state {
                        InstanceState::Stopping | InstanceState::ShuttingDown => {
                            let svc = self.clone();
                            tokio::spawn(
                                async move { svc.shutdown_and_wait(&id, pid, false).await },
                            );
                        }
                        InstanceState::Pending => {
                            let svc = self.clone();
                            let dir = inst.dir.clone();
                            tokio::spawn(async move {
                                if vmm::ready(&VmmFiles::api_socket(&dir)).await {
                                    let _g = svc.lock(&id).await;
                                    if let Ok(i) = svc.instance(&id) {
                                        if i.state == InstanceState::Pending {
                                            let _ =
                                                crate::durable::write(&dir.join(".booted"), b"");
                                            let _ =
                                                svc.set_state(&id, InstanceState::Running, None);
                                        }
                                    }
                                }
                            });
                        }
                        _ => {}
                    }
                }
                Some(pid) => {
                    // It ended while we were away: settle it as if we had watched it end.
                    self.on_vmm_exit(&id, pid).await?;
                }
                None => {
                    // No process was ever recorded: a launch interrupted by the restart.
                    let _g = self.lock(&id).await;
                    match inst.state {
                        InstanceState::Pending => self.launch_failed(
                            &id,
                            "vireod restarted before the instance's VMM started",
                        )?,
                        InstanceState::ShuttingDown => {
                            self.set_state(
                                &id,
                                InstanceState::Terminated,
                                inst.state_reason.as_ref(),
                            )?;
                            remove_instance_files(&inst.dir);
                        }
                        _ => self.set_state(
                            &id,
                            InstanceState::Stopped,
                            Some(&StateReason::internal(
                                "the VMM process was gone when vireod started",
                            )),
                        )?,
                    }
                }
            }
        }
        self.collect_images();
        Ok(())
    }
}
