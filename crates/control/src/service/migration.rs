//! MigrateInstance: live migration of a running instance's VM to a new VMM on another
//! migration host.

use std::time::Duration;

use super::files::read_boot;
use super::state::Operation;
use super::vmm::{
    self, DestinationConfig, DestinationDrive, DestinationNet, DriveFormat, MigrateRequest,
    MigrationReport, VmmError,
};
use super::{blocking, Service};
use crate::error::{ApiError, ApiResult};
use crate::process::{self, VmmFiles, VmmSpec};

/// A live migration that succeeded: the hosts it went from and to, and what the source VMM
/// reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub from: u32,
    pub to: u32,
    pub report: MigrationReport,
}

impl Service {
    /// Live-migrates a running instance's VM to a new VMM process on another migration host
    /// (`target`, or by default host 1 from host 0 and host 0 from the others). The instance
    /// keeps its id, state, disk and console; if anything fails, it goes on running where it
    /// was.
    pub async fn migrate_instance(
        &self,
        id: &str,
        target: Option<u32>,
        downtime_ms: u64,
    ) -> ApiResult<Migration> {
        let hosts = self.inner.cfg.hosts.clone();
        if hosts.len() < 2 {
            return Err(ApiError::new(
                "UnsupportedOperation",
                "this vireod has no other host to migrate to: start it with --migration-hosts N",
            ));
        }
        let _g = self.lock(id).await;
        let inst = self.instance(id)?;
        Operation::Migrate.check(id, inst.state)?;
        let Some(src_pid) = inst.pid else {
            return Err(ApiError::internal(format!(
                "instance {id} has no VMM process"
            )));
        };
        let from = inst.host;
        let to = target.unwrap_or(if from == 0 { 1 } else { 0 });
        let Some(dest) = hosts.iter().find(|h| h.index == to) else {
            return Err(ApiError::invalid_value(format!(
                "no migration host {to}: this vireod has hosts 0 to {}",
                hosts.len() - 1
            )));
        };
        if to == from {
            return Err(ApiError::invalid_value(format!(
                "instance {id} already runs on host {to}"
            )));
        }
        // Host 0 is reached from host N at the root side of N's link.
        let listen_ip = if to == 0 {
            hosts
                .iter()
                .find(|h| h.index == from)
                .map(|h| h.peer)
                .expect("source host exists")
        } else {
            dest.addr
        };
        let port: u16 = 20000 + rand::random::<u16>() % 40000;
        let dir = inst.dir.clone();
        let boot = read_boot(&dir)?;
        // The destination may open the instance's disk (and nothing else the stream names).
        // The destination's TAPs: made in the destination host's VPC namespaces (the interfaces
        // have a TAP on both hosts until the move ends, their traffic routed to the source until
        // the switch-over) and handed to the destination VMM.
        let moved: Vec<(String, String)> = self
            .net()?
            .interfaces_of(id)
            .iter()
            .map(|e| (e.vpc_id.clone(), e.eni_id.clone()))
            .collect();
        for (vpc, eni) in &moved {
            self.inner.plane.begin_move(vpc, eni, from, to);
        }
        let nets = match self.attach_network(id, to).await {
            Ok(nets) => nets,
            Err(e) => {
                self.end_moves(&moved);
                return Err(ApiError::new(
                    "MigrationFailed",
                    format!(
                        "the network could not be set up on host {to}: {}; instance {id} keeps running on host {from}",
                        e.message
                    ),
                ));
            }
        };
        let incoming = DestinationConfig {
            net: nets
                .iter()
                .enumerate()
                .map(|(i, n)| DestinationNet {
                    tap: n.tap.clone(),
                    tap_fd: Some(process::tap_fd_number(i)),
                })
                .collect(),
            kernel: boot.kernel.clone(),
            drives: boot
                .root_disk
                .iter()
                .map(|root| DestinationDrive {
                    path: root.clone(),
                    // As the instance's own VMM was started (service/instances.rs).
                    format: match boot.root_format.as_deref() {
                        Some("qcow2") => DriveFormat::Qcow2,
                        _ => DriveFormat::Raw,
                    },
                })
                .collect(),
        };
        let cfg_path = dir.join("incoming.json");
        std::fs::write(&cfg_path, incoming.to_json())?;
        let incoming_sock = process::unique_socket(&dir);
        let spec = VmmSpec {
            bin: self.inner.cfg.vmm_bin.clone(),
            dir: dir.clone(),
            kernel: boot.kernel.clone(),
            initrd: None,
            cmdline: String::new(),
            vcpus: inst.vcpus,
            memory_mib: inst.memory_mib,
            root_disk: None,
            restore: None,
            netns: dest.netns.clone(),
            incoming: Some((format!("{listen_ip}:{port}"), cfg_path.clone())),
            api_socket: Some(incoming_sock.clone()),
            nets,
            smbios: None,
        };
        let dest_sock = incoming_sock.clone();
        let dst_pid = match blocking(move || process::spawn(&spec).map_err(ApiError::from)).await {
            Ok(pid) => pid,
            Err(e) => {
                self.end_moves(&moved);
                return Err(e);
            }
        };
        let abort = |why: String| {
            let _ = process::kill(dst_pid);
            self.end_moves(&moved);
            let _ = std::fs::remove_file(&cfg_path);
            let _ = std::fs::remove_file(&incoming_sock);
            ApiError::new(
                "MigrationFailed",
                format!("{why}; instance {id} keeps running on host {from}"),
            )
        };
        // Ready when its listener is up (seen in its own namespace's socket table).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !crate::hosts::listening(dst_pid.pid, port) {
            if !process::is_alive(dst_pid) || tokio::time::Instant::now() > deadline {
                return Err(abort(format!(
                    "the destination VMM did not listen on {listen_ip}:{port}: {}",
                    process::last_log_line(&dir).unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let req = MigrateRequest {
            destination: format!("{listen_ip}:{port}"),
            downtime_ms: Some(downtime_ms),
        };
        let report = match vmm::migrate(&VmmFiles::api_socket(&dir), &req).await {
            Ok(report) => report,
            Err(VmmError::Status { status, body, .. }) => {
                return Err(abort(format!(
                    "the migration failed ({status}): {}",
                    body.trim()
                )))
            }
            Err(VmmError::Io { source, .. }) => {
                let e = ApiError::from(source);
                return Err(abort(format!("the migration failed: {}", e.message)));
            }
        };
        // The destination runs the guest: its interfaces' traffic goes there now, on every
        // host (one route each; the data plane was made ready when the move began), before
        // anything else. The apply after `end_moves` below computes the same routes.
        let plane = self.inner.plane.clone();
        let switched = moved.clone();
        let _ = blocking(move || {
            for (vpc, eni) in &switched {
                if let Err(e) = plane.switch_move(vpc, eni) {
                    tracing::warn!("{vpc}: switch-over of {eni}: {e}");
                }
            }
            Ok(())
        })
        .await;
        // The source exits once the destination runs the guest; the destination takes over
        // the instance's socket name, and the source's exit summary is not the instance's.
        let _ = tokio::time::timeout(Duration::from_secs(10), process::wait_exit(src_pid)).await;
        if process::is_alive(src_pid) {
            let _ = process::kill(src_pid);
        }
        let _ = std::fs::remove_file(VmmFiles::exit_summary(&dir));
        process::publish_socket(&dir, &dest_sock)?;
        let _ = std::fs::remove_file(dir.join("incoming.json"));
        {
            let db = self.db();
            db.set_process(id, Some(dst_pid))?;
            db.set_host(id, to)?;
        }
        // The interfaces moved host with it: the data plane removes the source host's TAPs
        // (their routes moved at the switch-over); the answer waits for that, so that the
        // data plane is what the database says by the time the caller hears it moved.
        self.end_moves(&moved);
        let plane = self.inner.plane.clone();
        let vpcs: Vec<String> = moved.iter().map(|(v, _)| v.clone()).collect();
        let _ = blocking(move || {
            for vpc in &vpcs {
                if let Err(e) = plane.flush(vpc) {
                    tracing::warn!("{vpc}: after the migration: {e}");
                }
            }
            Ok(())
        })
        .await;
        self.spawn_monitor(id.to_string(), dst_pid);
        Ok(Migration { from, to, report })
    }

    /// A move of `moved` (VPC, interface) is over, done or given up: each interface is where
    /// the database says again, and the data plane follows (the other host's TAPs go).
    fn end_moves(&self, moved: &[(String, String)]) {
        for (_, eni) in moved {
            self.inner.plane.end_move(eni);
        }
        let vpcs: Vec<&str> = moved.iter().map(|(v, _)| v.as_str()).collect();
        self.network_changed(&vpcs);
    }
}
