//! Every call vireod makes to a VMM's control API (the HTTP server on the instance's socket),
//! each a small named function: what is asked, and what an answer means. Nothing else in vireod
//! speaks to a VMM, so the transport can change here alone.
//!
//! Each call goes through `vireo_vmm_api`'s async client (the contract's types, one
//! connection per call, bounded by the client's timeout): no blocking thread per call.

use std::path::Path;
use std::time::Duration;

use vireo_vmm_api::{self as wire, Client};

pub use vireo_vmm_api::MigrateRequest;

/// Why a call to a VMM did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The socket could not be reached, the exchange broke off or took too long, or the
    /// answer was not the endpoint's.
    #[error("{path}: {source}")]
    Io {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The VMM answered with a status that is not success.
    #[error("{path}: {status} {}", body.trim())]
    Status {
        path: &'static str,
        status: u16,
        body: String,
    },
}

impl VmmError {
    fn of(path: &'static str, e: wire::Error) -> Self {
        use std::io::{Error, ErrorKind};
        let source = match e {
            wire::Error::Status { status, body, .. } => {
                return VmmError::Status { path, status, body }
            }
            wire::Error::Connect { source, .. } => source,
            e @ wire::Error::Timeout(_) => Error::new(ErrorKind::TimedOut, e),
            e => Error::other(e),
        };
        VmmError::Io { path, source }
    }
}

/// What the source VMM reports about a migration that succeeded. An answer that cannot be read
/// leaves every field absent (the migration still happened).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// How long the guest stood still.
    pub downtime_ms: Option<u64>,
    /// From the start of the migration to the end.
    pub total_ms: Option<u64>,
    /// Pre-copy rounds.
    pub rounds: Option<u64>,
}

impl From<&wire::MigrationProgress> for MigrationReport {
    fn from(p: &wire::MigrationProgress) -> Self {
        Self {
            downtime_ms: Some(p.downtime_ms),
            total_ms: Some(p.total_ms),
            rounds: Some(u64::from(p.rounds)),
        }
    }
}

/// The VM configuration a migration destination is started with (`--config`): the devices it
/// may open, and nothing else the incoming stream names. The contract's type, which the VMM
/// reads as its VM configuration.
pub use vireo_vmm_api::config::{DestinationConfig, DestinationDrive, DestinationNet, DriveFormat};

/// The client of the VMM listening on `sock`, with the client's default timeout.
fn client(sock: &Path) -> Client {
    Client::new(sock)
}

/// `GET /vm`: whether the VMM answers (it has built the VM and started its vCPUs). Not
/// answering yet is the normal case while a VMM starts, so there is no error to report.
pub async fn ready(sock: &Path) -> bool {
    client(sock).vm().await.is_ok()
}

/// `PUT /vm/pause`: stops the vCPUs.
pub async fn pause(sock: &Path) -> Result<(), VmmError> {
    client(sock)
        .pause()
        .await
        .map_err(|e| VmmError::of("/vm/pause", e))
}

/// `PUT /vm/resume`: runs the vCPUs again.
pub async fn resume(sock: &Path) -> Result<(), VmmError> {
    client(sock)
        .resume()
        .await
        .map_err(|e| VmmError::of("/vm/resume", e))
}

/// `PUT /vm/shutdown`: asks the guest to shut down (Ctrl-Alt-Del); the VMM exits when it has.
pub async fn shutdown(sock: &Path) -> Result<(), VmmError> {
    client(sock)
        .shutdown()
        .await
        .map_err(|e| VmmError::of("/vm/shutdown", e))
}

/// `PUT /vm/stop`: ends the VMM at once (the guest is not asked).
pub async fn stop(sock: &Path) -> Result<(), VmmError> {
    client(sock)
        .stop()
        .await
        .map_err(|e| VmmError::of("/vm/stop", e))
}

/// `PUT /vm/snapshot`: writes the paused VM's memory, vCPU and device state into `dir`.
pub async fn snapshot(sock: &Path, dir: &Path) -> Result<(), VmmError> {
    let req = wire::SnapshotRequest {
        path: dir.to_path_buf(),
    };
    client(sock)
        .snapshot(&req)
        .await
        .map(drop)
        .map_err(|e| VmmError::of("/vm/snapshot", e))
}

/// `PUT /vm/migrate`: answers when the migration is over. Success (200) means the destination
/// runs the guest and this VMM exits; anything else leaves the guest running here.
pub async fn migrate(sock: &Path, req: &MigrateRequest) -> Result<MigrationReport, VmmError> {
    match client(sock).migrate(req).await {
        Ok(progress) => Ok(MigrationReport::from(&progress)),
        // The VMM said the migration succeeded; only its report is unreadable.
        Err(wire::Error::Decode { .. }) => Ok(MigrationReport::default()),
        Err(e) => Err(VmmError::of("/vm/migrate", e)),
    }
}

/// `GET /metrics`: the VMM's Prometheus text (untrusted: see [`crate::metrics`]), waited for
/// at most `timeout`.
pub async fn metrics(sock: &Path, timeout: Duration) -> Result<String, VmmError> {
    client(sock)
        .with_timeout(timeout)
        .metrics()
        .await
        .map_err(|e| VmmError::of("/metrics", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_what_the_vmm_reads() {
        let req = MigrateRequest {
            destination: "10.0.0.2:20000".into(),
            downtime_ms: Some(50),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"destination":"10.0.0.2:20000","downtime_ms":50}"#
        );
        let cfg = DestinationConfig {
            kernel: "/d/k".into(),
            drives: vec![DestinationDrive {
                path: "/d/root.qcow2".into(),
                format: DriveFormat::Qcow2,
            }],
            net: Vec::new(),
        };
        assert_eq!(
            cfg.to_json(),
            r#"{"kernel":"/d/k","drives":[{"path":"/d/root.qcow2","format":"qcow2"}]}"#
        );
        let snap = wire::SnapshotRequest {
            path: "/d/hibernate".into(),
        };
        assert_eq!(
            serde_json::to_string(&snap).unwrap(),
            r#"{"path":"/d/hibernate"}"#
        );
    }

    #[test]
    fn a_migration_report_takes_what_it_knows() {
        let p = wire::MigrationProgress {
            downtime_ms: 12,
            total_ms: 340,
            rounds: 3,
            bytes_sent: 1,
            state: wire::MigrationState::Completed,
            ..Default::default()
        };
        assert_eq!(
            MigrationReport::from(&p),
            MigrationReport {
                downtime_ms: Some(12),
                total_ms: Some(340),
                rounds: Some(3)
            }
        );
    }

    #[tokio::test]
    async fn an_absent_vmm_is_an_io_error_and_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vmm.sock");
        assert!(!ready(&sock).await);
        let e = pause(&sock).await.unwrap_err();
        assert!(
            matches!(
                e,
                VmmError::Io {
                    path: "/vm/pause",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("/vm/pause: "), "{e}");
    }
}
