//! The compute service: images, instances and their lifecycle, capacity and tags. Every instance
//! is a real `vireo-vmm` process; this module decides what runs and keeps SQLite true to it.
//!
//! Concurrency: operations on one instance are serialized by a per-instance async lock
//! ([`locks`]), held while the instance's state and its VMM process change together; database
//! access is short and under its own mutex. Capacity is checked and claimed under one lock so two
//! launches cannot both take the last vCPU.
//!
//! One module per resource ([`instances`], [`lifecycle`], [`images`], [`tags`], [`migration`],
//! [`instance_types`], [`key_pairs`]; VPC networking: [`vpcs`], [`subnets`], [`security_groups`],
//! [`sg_modify`] (rules changed in place), [`network_interfaces`], [`internet_gateways`],
//! [`route_tables`], [`addresses`], with
//! [`network`], the seam to the data plane, and [`netquery`], their Describe calls) and the
//! parts they share: [`capacity`], [`files`], [`filters`],
//! [`locks`], [`monitor`] (VMM exits and restarts), [`attributes`] (protections and shutdown
//! behaviour), [`metadata`] (metadata options and what the metadata service shows), [`paging`], [`state`] (EC2's instance
//! state machine: which operation may start from which state), and [`vmm`], the only place
//! vireod calls a VMM's control API.

mod addresses;
mod attributes;
mod capacity;
pub mod dataplane;
mod files;
mod filters;
mod images;
mod instance_types;
mod instances;
mod internet_gateways;
mod key_pairs;
mod lifecycle;
mod locks;
mod metadata;
mod migration;
mod monitor;
mod netquery;
pub mod network;
mod network_interfaces;
mod paging;
mod route_tables;
mod security_groups;
mod sg_modify;
pub mod state;
mod subnets;
mod tags;
pub mod vmm;
mod vpcs;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::model::{Instance, InstanceState, StateReason};

pub use addresses::{AddressRef, AddressTarget, AssociateRequest};
pub use attributes::AttributeChange;
pub use capacity::Capacity;
pub use images::RegisterRequest;
pub use instance_types::instance_types;
pub use instances::{by_reservation, RunRequest};
pub use key_pairs::KeyPairRef;
pub use lifecycle::StateChange;
pub use metadata::{public_dns_name, MetadataChange};
pub use migration::Migration;
pub use netquery::DescribeQuery;
pub use network::{NetworkPlane, NoNetworkPlane, VpcNetwork};
pub use network_interfaces::InterfaceSpec;
pub use route_tables::route_state;
pub use security_groups::{GroupRef, GroupSelector, PermissionSpec, RuleChange};
pub use sg_modify::{DescriptionChange, RuleUpdate};
pub use subnets::{available_ips, CreateSubnetRequest};
pub use tags::TagToDelete;
pub use vpcs::VpcAttribute;

/// EC2's limit on user data (before base64).
pub const MAX_USER_DATA: usize = 16 * 1024;
/// EC2's console output: the most recent 64 KiB.
pub const CONSOLE_LIMIT: u64 = 64 * 1024;
/// Longest kernel command line an image may carry: the x86 boot protocol's 2048 bytes less room
/// for what vireod and the VMM append.
pub const MAX_IMAGE_CMDLINE: usize = 1800;

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub vmm_bin: PathBuf,
    pub capacity: Capacity,
    /// How long a graceful stop may take before the VMM is killed.
    pub shutdown_timeout: Duration,
    pub region: String,
    /// Host 0 (this namespace) and the migration hosts (`--migration-hosts`).
    pub hosts: Vec<crate::hosts::Host>,
    /// The only directories RegisterImage reads files from, canonical (see [`crate::import`]).
    pub import_dirs: Vec<PathBuf>,
    /// The public addresses instances and Elastic IPs get (`--public-cidr`); none without it.
    pub public_cidr: Option<crate::cidr::Ipv4Cidr>,
}

impl Config {
    /// Where RegisterImage reads files from when `vireod serve` is given no `--import-dir`.
    pub fn default_import_dir(data_dir: &Path) -> PathBuf {
        data_dir.join("import")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }
    pub fn instances_dir(&self) -> PathBuf {
        self.data_dir.join("instances")
    }
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("state.db")
    }
    pub fn availability_zone(&self) -> String {
        format!("{}a", self.region)
    }
}

/// The compute service. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    owner_id: String,
    db: Mutex<Db>,
    locks: locks::Locks,
    /// Held while capacity is checked and claimed.
    capacity_lock: tokio::sync::Mutex<()>,
    /// The VPC data plane, told every committed network change ([`network`]).
    plane: network::Plane,
}

fn now_iso() -> String {
    crate::time::now_iso8601()
}

impl Service {
    /// Opens the service's state (created by `vireod init`), with no data plane.
    pub fn open(cfg: Config) -> anyhow::Result<Service> {
        Self::open_with_plane(cfg, std::sync::Arc::new(NoNetworkPlane))
    }

    /// Opens the service's state with `plane` as the VPC data plane.
    pub fn open_with_plane(cfg: Config, plane: network::Plane) -> anyhow::Result<Service> {
        let mut db = Db::open(&cfg.db_path())?;
        let owner_id = db.setting("owner_id")?.ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not a vireod data directory (run `vireod init --data-dir {}` first)",
                cfg.data_dir.display(),
                cfg.data_dir.display()
            )
        })?;
        // Made here (and their entries flushed) so that every later rename into them only
        // needs its own directory flushed.
        crate::durable::create_dir_all(&cfg.images_dir())?;
        crate::durable::create_dir_all(&cfg.instances_dir())?;
        files::remove_staging_dirs(&cfg.images_dir());
        // Data directories made before VPCs existed get their default VPC now.
        db.ensure_default_vpc(&cfg.availability_zone())?;
        let svc = Service {
            inner: Arc::new(Inner {
                cfg,
                owner_id,
                db: Mutex::new(db),
                locks: locks::Locks::default(),
                capacity_lock: tokio::sync::Mutex::new(()),
                plane,
            }),
        };
        svc.release_terminated_networks()
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Ok(svc)
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    pub fn owner_id(&self) -> &str {
        &self.inner.owner_id
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions), so a
        // poisoned lock is still usable.
        self.inner.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The secret of an access key, for request authentication.
    pub fn secret_for(&self, access_key_id: &str) -> Option<String> {
        self.db()
            .access_keys()
            .ok()?
            .into_iter()
            .find(|(id, _)| id == access_key_id)
            .map(|(_, s)| s)
    }

    async fn lock(&self, instance_id: &str) -> OwnedMutexGuard<()> {
        self.inner.locks.lock(instance_id).await
    }

    fn instance(&self, id: &str) -> ApiResult<Instance> {
        self.db()
            .instance(id)?
            .ok_or_else(|| ApiError::instance_not_found(id))
    }

    fn set_state(
        &self,
        id: &str,
        st: InstanceState,
        reason: Option<&StateReason>,
    ) -> ApiResult<()> {
        self.db().set_state(id, st, reason)?;
        // A terminated instance's interfaces and addresses go with it; any state change tells
        // the data plane (whether the interface's instance runs, and where).
        let mut vpcs = self.vpcs_of_instance(id)?;
        if st == InstanceState::Terminated {
            vpcs.extend(self.release_instance_network(id)?);
        }
        self.network_changed(&vpcs);
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a host task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config(data_dir: &Path) -> Config {
        Config {
            data_dir: data_dir.to_path_buf(),
            vmm_bin: PathBuf::new(),
            capacity: Capacity {
                vcpus: 0,
                memory_mib: 0,
            },
            shutdown_timeout: Duration::ZERO,
            region: "vireo-test-1".into(),
            hosts: Vec::new(),
            import_dirs: Vec::new(),
            public_cidr: None,
        }
    }

    /// A vireod killed while it copied an image's files leaves its staging directory behind;
    /// opening the data directory again removes it, and only it.
    #[test]
    fn open_removes_leftover_staging_dirs_only() {
        let data = tempfile::tempdir().unwrap();
        let cfg = test_config(data.path());
        Db::open(&cfg.db_path())
            .unwrap()
            .set_setting("owner_id", "123456789012")
            .unwrap();
        let images = cfg.images_dir();
        let staging = images.join(".ami-0123456789abcdef0.tmp");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("kernel"), b"half a kernel").unwrap();
        let real = images.join("ami-0fedcba9876543210");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("kernel"), b"a kernel").unwrap();
        Service::open(cfg).unwrap();
        assert!(!staging.exists(), "the staging directory is removed");
        assert_eq!(std::fs::read(real.join("kernel")).unwrap(), b"a kernel");
    }
}
