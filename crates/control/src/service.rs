//! The compute service: images, instances and their lifecycle, capacity and tags. Every instance
//! is a real `vireo-vmm` process; this module decides what runs and keeps SQLite true to it.
//!
//! Concurrency: operations on one instance are serialized by a per-instance async lock, held while
//! the instance's state and its VMM process change together; database access is short and under
//! its own mutex. Capacity is checked and claimed under one lock so two launches cannot both take
//! the last vCPU.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::OwnedMutexGuard;

use crate::db::{self, Db};
use crate::error::{ApiError, ApiResult};
use crate::filter::{Filter, FilterMatch};
use crate::model::{Image, Instance, InstanceState, StateReason};
use crate::process::{self, ProcessId, VmmExit, VmmFiles, VmmSpec};
use crate::storage;
use crate::types::{self, InstanceType};
use vireo_ec2_api::ids::{self, IdKind};

/// EC2's limit on user data (before base64).
pub const MAX_USER_DATA: usize = 16 * 1024;
/// EC2's console output: the most recent 64 KiB.
pub const CONSOLE_LIMIT: u64 = 64 * 1024;
/// Longest kernel command line an image may carry: the x86 boot protocol's 2048 bytes less room
/// for what vireod and the VMM append.
pub const MAX_IMAGE_CMDLINE: usize = 1800;

/// Where a hibernated instance keeps its snapshot (memory, vCPU and device state), and the
/// marker written once the snapshot is complete: StartInstances resumes from it.
const HIBERNATE_DIR: &str = "hibernate";
const HIBERNATE_DONE: &str = "hibernate.ok";

/// How many vCPUs and MiB of guest memory this host lends out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub vcpus: u64,
    pub memory_mib: u64,
}

impl Capacity {
    /// The host's CPUs and memory (less a reserve for the host itself) times the overcommit ratios.
    pub fn of_host(cpu_ratio: f64, mem_ratio: f64, reserve_mib: u64) -> Capacity {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let mem_mib = host_memory_mib().saturating_sub(reserve_mib) as f64;
        Capacity {
            vcpus: (cpus * cpu_ratio).floor() as u64,
            memory_mib: (mem_mib * mem_ratio).floor() as u64,
        }
    }
}

fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

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

/// What RunInstances asks for.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub image_id: String,
    pub instance_type: String,
    pub min_count: u32,
    pub max_count: u32,
    pub user_data: Vec<u8>,
    pub tags: Vec<(String, String)>,
    pub client_token: Option<String>,
}

impl RunRequest {
    /// What identifies "the same request" for ClientToken idempotency.
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.image_id.as_bytes(),
            self.instance_type.as_bytes(),
            &self.min_count.to_le_bytes(),
            &self.max_count.to_le_bytes(),
            &self.user_data,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        for (k, v) in &self.tags {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }
}

/// What RegisterImage asks for.
#[derive(Debug, Clone, Default)]
pub struct RegisterRequest {
    pub name: String,
    pub description: String,
    pub architecture: String,
    pub boot_mode: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub root_disk: Option<PathBuf>,
    pub cmdline: String,
    pub tags: Vec<(String, String)>,
}

/// A state change as Start/Stop/TerminateInstances report it.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub instance_id: String,
    pub previous: InstanceState,
    pub current: InstanceState,
}

/// The boot configuration an instance keeps in its directory (`boot.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct BootConfig {
    kernel: PathBuf,
    /// The image's own initramfs and command line (without this instance's additions), for
    /// CreateImage.
    image_initrd: Option<PathBuf>,
    image_cmdline: String,
    initrd: Option<PathBuf>,
    cmdline: String,
    root_disk: Option<PathBuf>,
    root_format: Option<String>,
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
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while capacity is checked and claimed.
    capacity_lock: tokio::sync::Mutex<()>,
}

fn now_iso() -> String {
    crate::time::now_iso8601()
}

impl Service {
    /// Opens the service's state (created by `vireod init`).
    pub fn open(cfg: Config) -> anyhow::Result<Service> {
        let db = Db::open(&cfg.db_path())?;
        let owner_id = db.setting("owner_id")?.ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not a vireod data directory (run `vireod init --data-dir {}` first)",
                cfg.data_dir.display(),
                cfg.data_dir.display()
            )
        })?;
        Ok(Service {
            inner: Arc::new(Inner {
                cfg,
                owner_id,
                db: Mutex::new(db),
                locks: Mutex::new(HashMap::new()),
                capacity_lock: tokio::sync::Mutex::new(()),
            }),
        })
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
        let m = {
            let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks
                .entry(instance_id.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        m.lock_owned().await
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
        Ok(())
    }

    // --- capacity ------------------------------------------------------------------------------

    fn free_capacity(&self) -> ApiResult<(u64, u64)> {
        let (v, m) = self.db().used_capacity()?;
        let c = self.inner.cfg.capacity;
        Ok((c.vcpus.saturating_sub(v), c.memory_mib.saturating_sub(m)))
    }

    /// Host capacity: (total, used) as (vcpus, MiB).
    pub fn capacity(&self) -> ApiResult<(Capacity, Capacity)> {
        let (v, m) = self.db().used_capacity()?;
        Ok((
            self.inner.cfg.capacity,
            Capacity {
                vcpus: v,
                memory_mib: m,
            },
        ))
    }

    // --- images --------------------------------------------------------------------------------

    /// Registers an image: its files are copied into the data directory (read-only), so the image
    /// never changes whatever happens to the originals.
    pub fn register_image(&self, req: RegisterRequest) -> ApiResult<String> {
        validate_image_name(&req.name)?;
        if req.architecture != "x86_64" {
            return Err(ApiError::invalid_value(format!(
                "Architecture '{}' is not supported by this host: use x86_64",
                req.architecture
            )));
        }
        if req.boot_mode != "legacy-bios" {
            return Err(ApiError::new(
                "UnsupportedOperation",
                format!(
                    "BootMode '{}' is not supported: vireo boots the image's kernel directly (legacy-bios)",
                    req.boot_mode
                ),
            ));
        }
        if req.cmdline.len() > MAX_IMAGE_CMDLINE || req.cmdline.contains('\0') {
            return Err(ApiError::invalid_value(format!(
                "the kernel command line must be at most {MAX_IMAGE_CMDLINE} bytes without NUL"
            )));
        }
        let check_file = |what: &str, p: &Path| -> ApiResult<()> {
            match std::fs::metadata(p) {
                Ok(m) if m.is_file() => Ok(()),
                Ok(_) => Err(ApiError::invalid_value(format!(
                    "the {what} {} is not a regular file",
                    p.display()
                ))),
                Err(e) => Err(ApiError::invalid_value(format!(
                    "cannot read the {what} {}: {e}",
                    p.display()
                ))),
            }
        };
        check_file("kernel", &req.kernel)?;
        if let Some(p) = &req.initrd {
            check_file("initrd", p)?;
        }
        if let Some(p) = &req.root_disk {
            check_file("root disk", p)?;
            if storage::detect_format(p)? != storage::Format::Raw {
                return Err(ApiError::invalid_value(format!(
                    "the root disk {} must be a raw image",
                    p.display()
                )));
            }
        }
        let image_id = ids::new_id(IdKind::Image);
        let dir = self.inner.cfg.images_dir().join(&image_id);
        let staging = self.inner.cfg.images_dir().join(format!(".{image_id}.tmp"));
        let result = (|| -> ApiResult<Image> {
            std::fs::create_dir_all(&staging)?;
            let kernel = copy_readonly(&req.kernel, &staging.join("kernel"))?;
            let initrd = match &req.initrd {
                Some(p) => Some(copy_readonly(p, &staging.join("initrd"))?),
                None => None,
            };
            let root = match &req.root_disk {
                Some(p) => {
                    let dst = staging.join("root.raw");
                    storage::copy_raw(p, &dst)?;
                    set_readonly(&dst)?;
                    Some(dst)
                }
                None => None,
            };
            std::fs::rename(&staging, &dir)?;
            let inside = |p: PathBuf| {
                dir.join(p.file_name().expect("staged file has a name"))
                    .to_string_lossy()
                    .into_owned()
            };
            Ok(Image {
                image_id: image_id.clone(),
                name: req.name.clone(),
                description: req.description.clone(),
                owner_id: self.inner.owner_id.clone(),
                state: "available".into(),
                architecture: req.architecture.clone(),
                boot_mode: req.boot_mode.clone(),
                kernel: inside(kernel),
                initrd: initrd.map(inside),
                root_disk: root.map(inside),
                cmdline: req.cmdline.clone(),
                creation_date: now_iso(),
                source_instance_id: None,
                tags: req.tags.clone(),
            })
        })();
        let img = match result {
            Ok(img) => img,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        self.save_image(&img)?;
        Ok(image_id)
    }

    fn save_image(&self, img: &Image) -> ApiResult<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        Db::insert_image(&tx, img)?;
        tx.commit().map_err(db::DbError::from)?;
        Ok(())
    }

    pub fn describe_images(
        &self,
        ids: &[String],
        owners: &[String],
        filters: &[Filter],
    ) -> ApiResult<Vec<Image>> {
        for f in filters {
            match f.name.as_str() {
                "name" | "image-id" | "state" | "architecture" | "owner-id" | "description"
                | "tag-key" | "tag-value" | "boot-mode" => {}
                n if n.starts_with("tag:") => {}
                n => {
                    return Err(ApiError::invalid_value(format!(
                        "The filter '{n}' is invalid"
                    )))
                }
            }
        }
        let images = self.db().images()?;
        for id in ids {
            if !images.iter().any(|i| &i.image_id == id) {
                return Err(ApiError::image_not_found(id));
            }
        }
        Ok(images
            .into_iter()
            .filter(|i| ids.is_empty() || ids.contains(&i.image_id))
            .filter(|i| {
                owners.is_empty()
                    || owners
                        .iter()
                        .any(|o| o == "self" || *o == i.owner_id || o == "vireo")
            })
            .filter(|i| {
                filters.iter().all(|f| match f.name.as_str() {
                    "name" => f.matches_any([i.name.as_str()]),
                    "image-id" => f.matches_any([i.image_id.as_str()]),
                    "state" => f.matches_any([i.state.as_str()]),
                    "architecture" => f.matches_any([i.architecture.as_str()]),
                    "owner-id" => f.matches_any([i.owner_id.as_str()]),
                    "description" => f.matches_any([i.description.as_str()]),
                    "boot-mode" => f.matches_any([i.boot_mode.as_str()]),
                    n => tag_filter(n, f, &i.tags),
                })
            })
            .collect())
    }

    pub fn deregister_image(&self, image_id: &str) -> ApiResult<()> {
        if !self.db().deregister_image(image_id)? {
            return Err(ApiError::image_not_found(image_id));
        }
        self.collect_images();
        Ok(())
    }

    /// Deletes the files of deregistered images once no instance uses them.
    fn collect_images(&self) {
        let unused = match self.db().unused_deregistered_images() {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("image clean-up skipped: {e}");
                return;
            }
        };
        for id in unused {
            let dir = self.inner.cfg.images_dir().join(&id);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", dir.display());
                    continue;
                }
            }
            let _ = self.db().forget_image(&id);
        }
    }

    /// CreateImage: captures the instance's root disk as a new image. A running instance is shut
    /// down cleanly first and started again afterwards (EC2's default), unless `no_reboot`, in
    /// which case its vCPUs are paused while the disk is copied (crash-consistent).
    pub async fn create_image(
        &self,
        instance_id: &str,
        name: &str,
        description: &str,
        no_reboot: bool,
        tags: Vec<(String, String)>,
    ) -> ApiResult<String> {
        validate_image_name(name)?;
        let inst = self.instance(instance_id)?;
        if !matches!(inst.state, InstanceState::Running | InstanceState::Stopped) {
            return Err(ApiError::incorrect_state(
                instance_id,
                inst.state.name(),
                "imaged",
            ));
        }
        let dir = PathBuf::from(&inst.dir);
        let boot = read_boot(&dir)?;
        let Some(root) = boot.root_disk.clone() else {
            return Err(ApiError::new(
                "UnsupportedOperation",
                format!("instance {instance_id} has no root disk to capture"),
            ));
        };
        let reboot = inst.state == InstanceState::Running && !no_reboot;
        if reboot {
            self.stop_instances(&[instance_id.to_string()], false, false)
                .await?;
            let limit = self.inner.cfg.shutdown_timeout + Duration::from_secs(30);
            self.wait_for_state(instance_id, InstanceState::Stopped, limit)
                .await?;
        }
        let guard = self.lock(instance_id).await;
        let paused = if self.instance(instance_id)?.state == InstanceState::Running {
            let sock = VmmFiles::api_socket(&dir);
            let (code, body) = blocking(move || {
                process::api_call(&sock, "PUT", "/vm/pause", None).map_err(ApiError::from)
            })
            .await?;
            if code / 100 != 2 {
                return Err(ApiError::internal(format!(
                    "cannot pause the instance: {body}"
                )));
            }
            true
        } else {
            false
        };
        let image_id = ids::new_id(IdKind::Image);
        let img_dir = self.inner.cfg.images_dir().join(&image_id);
        let staging = self.inner.cfg.images_dir().join(format!(".{image_id}.tmp"));
        let (st, out, b) = (staging.clone(), img_dir.clone(), boot.clone());
        let captured = blocking(move || capture_image(&b, &root, &st, &out)).await;
        if paused {
            let sock = VmmFiles::api_socket(&dir);
            if let Err(e) = blocking(move || {
                process::api_call(&sock, "PUT", "/vm/resume", None).map_err(ApiError::from)
            })
            .await
            {
                tracing::warn!("cannot resume {instance_id} after CreateImage: {e}");
            }
        }
        drop(guard);
        if reboot {
            if let Err(e) = self.start_instances(&[instance_id.to_string()]).await {
                tracing::warn!("cannot start {instance_id} again after CreateImage: {e}");
            }
        }
        let (kernel, initrd, root_disk) = match captured {
            Ok(files) => files,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let img = Image {
            image_id: image_id.clone(),
            name: name.to_string(),
            description: description.to_string(),
            owner_id: self.inner.owner_id.clone(),
            state: "available".into(),
            architecture: "x86_64".into(),
            boot_mode: "legacy-bios".into(),
            kernel,
            initrd,
            root_disk: Some(root_disk),
            cmdline: boot.image_cmdline.clone(),
            creation_date: now_iso(),
            source_instance_id: Some(instance_id.to_string()),
            tags,
        };
        self.save_image(&img)?;
        Ok(image_id)
    }

    async fn wait_for_state(
        &self,
        id: &str,
        want: InstanceState,
        limit: Duration,
    ) -> ApiResult<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let st = self.instance(id)?.state;
            if st == want {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::internal(format!(
                    "instance {id} did not become {want} in time (it is {st})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // --- instances: launch ---------------------------------------------------------------------

    /// RunInstances: launches between MinCount and MaxCount instances (as many as fit), or none.
    pub async fn run_instances(&self, req: RunRequest) -> ApiResult<Vec<Instance>> {
        let ty = types::lookup(&req.instance_type).ok_or_else(|| {
            ApiError::invalid_value(format!(
                "Invalid value '{}' for InstanceType.",
                req.instance_type
            ))
        })?;
        if req.min_count < 1 || req.max_count < req.min_count {
            return Err(ApiError::invalid_value(format!(
                "MinCount ({}) must be at least 1 and at most MaxCount ({})",
                req.min_count, req.max_count
            )));
        }
        if req.user_data.len() > MAX_USER_DATA {
            return Err(ApiError::invalid_value(format!(
                "User data is limited to {MAX_USER_DATA} bytes; this request has {}",
                req.user_data.len()
            )));
        }
        let image = self
            .db()
            .image(&req.image_id)?
            .ok_or_else(|| ApiError::image_not_found(&req.image_id))?;
        if image.state != "available" {
            return Err(ApiError::new(
                "InvalidAMIID.Unavailable",
                format!(
                    "Image {} is not available (it is {})",
                    image.image_id, image.state
                ),
            ));
        }
        let fingerprint = req.fingerprint();
        let _cap = self.inner.capacity_lock.lock().await;
        if let Some(token) = &req.client_token {
            // Bound first: a guard living through the `if let` would deadlock the next db().
            let known = self.db().client_token(&self.inner.owner_id, token)?;
            if let Some((hash, reservation)) = known {
                if hash != fingerprint {
                    return Err(ApiError::new(
                        "IdempotentParameterMismatch",
                        format!("Client token {token} was already used with different parameters"),
                    ));
                }
                let all = self.db().instances()?;
                return Ok(all
                    .into_iter()
                    .filter(|i| i.reservation_id == reservation)
                    .collect());
            }
        }
        let (free_v, free_m) = self.free_capacity()?;
        let fit = std::cmp::min(free_v / u64::from(ty.vcpus), free_m / ty.memory_mib)
            .min(u64::from(req.max_count)) as u32;
        if fit < req.min_count {
            return Err(ApiError::capacity(format!(
                "Insufficient capacity: {} x {} needs {} vCPUs and {} MiB; this host has {free_v} vCPUs and {free_m} MiB free",
                req.min_count,
                ty.name,
                u64::from(req.min_count) * u64::from(ty.vcpus),
                u64::from(req.min_count) * ty.memory_mib
            )));
        }
        let reservation_id = ids::new_id(IdKind::Reservation);
        let launch_time = now_iso();
        let mut instances = Vec::new();
        for n in 0..fit {
            let id = ids::new_id(IdKind::Instance);
            let dir = self.inner.cfg.instances_dir().join(&id);
            instances.push(Instance {
                seq: 0,
                instance_id: id,
                reservation_id: reservation_id.clone(),
                owner_id: self.inner.owner_id.clone(),
                image_id: image.image_id.clone(),
                instance_type: ty.name.to_string(),
                vcpus: ty.vcpus,
                memory_mib: ty.memory_mib,
                state: InstanceState::Pending,
                state_reason: None,
                launch_time: launch_time.clone(),
                launch_index: n,
                client_token: req.client_token.clone(),
                user_data: req.user_data.clone(),
                dir: dir.to_string_lossy().into_owned(),
                pid: None,
                pid_start: None,
                host: 0,
                tags: req.tags.clone(),
            });
        }
        {
            let mut db = self.db();
            let tx = db.transaction()?;
            for i in &instances {
                Db::insert_instance(&tx, i)?;
            }
            if let Some(token) = &req.client_token {
                Db::insert_client_token(
                    &tx,
                    &self.inner.owner_id,
                    token,
                    &fingerprint,
                    &reservation_id,
                )?;
            }
            tx.commit().map_err(db::DbError::from)?;
        }
        drop(_cap);
        for i in &instances {
            let svc = self.clone();
            let id = i.instance_id.clone();
            let image = image.clone();
            tokio::spawn(async move {
                if let Err(e) = svc.first_launch(&id, &image).await {
                    tracing::warn!("launch of {id} failed: {e}");
                }
            });
        }
        let db = self.db();
        instances
            .iter()
            .map(|i| {
                db.instance(&i.instance_id)?
                    .ok_or_else(|| db::DbError::Corrupt("launched instance vanished".into()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::from)
    }

    /// Prepares a new instance's directory (root disk clone, user data, boot config) and boots it.
    async fn first_launch(&self, id: &str, image: &Image) -> ApiResult<()> {
        let guard = self.lock(id).await;
        let inst = self.instance(id)?;
        if inst.state != InstanceState::Pending {
            return Ok(()); // terminated before it got going
        }
        let dir = PathBuf::from(&inst.dir);
        let image = image.clone();
        let user_data = inst.user_data.clone();
        let d2 = dir.clone();
        let instance_id = id.to_string();
        let prepared =
            blocking(move || prepare_instance_dir(&d2, &image, &user_data, &instance_id)).await;
        if let Err(e) = prepared {
            let _ = std::fs::remove_dir_all(&dir);
            self.set_state(
                id,
                InstanceState::Terminated,
                Some(&StateReason::internal(&format!(
                    "could not prepare the instance: {}",
                    e.message
                ))),
            )?;
            return Err(e);
        }
        self.boot(id, &dir, guard).await
    }

    /// Starts the VMM of an instance that is `pending` (the lock is held by the caller and passed
    /// in), records it, and waits for its control API to answer before calling it running.
    async fn boot(&self, id: &str, dir: &Path, guard: OwnedMutexGuard<()>) -> ApiResult<()> {
        let inst = self.instance(id)?;
        let boot = read_boot(dir)?;
        let spec = VmmSpec {
            bin: self.inner.cfg.vmm_bin.clone(),
            dir: dir.to_path_buf(),
            kernel: boot.kernel.clone(),
            initrd: boot.initrd.clone(),
            cmdline: boot.cmdline.clone(),
            vcpus: inst.vcpus,
            memory_mib: inst.memory_mib,
            netns: self.host_netns(inst.host),
            incoming: None,
            api_socket: None,
            restore: dir
                .join(HIBERNATE_DONE)
                .exists()
                .then(|| dir.join(HIBERNATE_DIR)),
            root_disk: boot.root_disk.clone().map(|p| {
                let f = match boot.root_format.as_deref() {
                    Some("qcow2") => "qcow2",
                    _ => "raw",
                };
                (p, f)
            }),
        };
        let pid = match blocking(move || process::spawn(&spec).map_err(ApiError::from)).await {
            Ok(pid) => pid,
            Err(e) => {
                self.launch_failed(id, &format!("the VMM could not be started: {}", e.message))?;
                return Err(e);
            }
        };
        self.db()
            .set_process(id, Some(pid.pid), Some(pid.start_time))?;
        self.spawn_monitor(id.to_string(), pid);
        drop(guard);

        // Ready when the VMM's API answers (it has built the VM and started its vCPUs).
        let sock = VmmFiles::api_socket(dir);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if !process::is_alive(pid) {
                return Ok(()); // the monitor reports what happened
            }
            let s = sock.clone();
            // Not answering yet is the normal case here: no error is logged for it.
            let answer =
                tokio::task::spawn_blocking(move || process::api_call(&s, "GET", "/vm", None))
                    .await;
            if let Ok(Ok((200, _))) = answer {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!("{id}: the VMM did not answer on its socket in 30 s; stopping it");
                let _ = process::kill(pid);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _g = self.lock(id).await;
        let now = self.instance(id)?;
        if now.state == InstanceState::Pending && now.pid == Some(pid.pid) {
            std::fs::write(dir.join(".booted"), b"")?;
            // Resumed from hibernation: the snapshot is spent (its memory file stays mapped by
            // the VMM until it exits, so removing it now is safe).
            forget_hibernation(dir);
            self.set_state(id, InstanceState::Running, None)?;
        }
        Ok(())
    }

    /// A launch or start that failed before the VMM ran: a new instance ends terminated, one that
    /// had run before returns to stopped (EC2 does the same).
    fn launch_failed(&self, id: &str, why: &str) -> ApiResult<()> {
        let inst = self.instance(id)?;
        let dir = PathBuf::from(&inst.dir);
        self.db().set_process(id, None, None)?;
        // A snapshot that could not be resumed is not tried again: the next start boots afresh
        // from the disk, as after a power loss.
        forget_hibernation(&dir);
        if dir.join(".booted").exists() {
            self.set_state(
                id,
                InstanceState::Stopped,
                Some(&StateReason::internal(why)),
            )
        } else {
            self.set_state(
                id,
                InstanceState::Terminated,
                Some(&StateReason::internal(why)),
            )?;
            remove_instance_files(&dir);
            Ok(())
        }
    }

    fn spawn_monitor(&self, id: String, pid: ProcessId) {
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
    async fn on_vmm_exit(&self, id: &str, pid: ProcessId) -> ApiResult<()> {
        let guard = self.lock(id).await;
        let inst = self.instance(id)?;
        if inst.pid != Some(pid.pid) || inst.pid_start != Some(pid.start_time) {
            return Ok(()); // a newer VMM has taken over (reboot)
        }
        let dir = PathBuf::from(&inst.dir);
        let exit = process::exit_of(&dir);
        tracing::info!(
            "{id}: VMM {} ended ({exit:?}) while {}",
            pid.pid,
            inst.state
        );
        self.db().set_process(id, None, None)?;
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
            match inst.pid.zip(inst.pid_start) {
                Some((pid, start_time)) if process::is_alive(ProcessId { pid, start_time }) => {
                    let pid = ProcessId { pid, start_time };
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
                            let dir = PathBuf::from(&inst.dir);
                            tokio::spawn(async move {
                                let sock = VmmFiles::api_socket(&dir);
                                if let Ok(Ok((200, _))) = tokio::task::spawn_blocking(move || {
                                    process::api_call(&sock, "GET", "/vm", None)
                                })
                                .await
                                {
                                    let _g = svc.lock(&id).await;
                                    if let Ok(i) = svc.instance(&id) {
                                        if i.state == InstanceState::Pending {
                                            let _ = std::fs::write(dir.join(".booted"), b"");
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
                Some((pid, start_time)) => {
                    // It ended while we were away: settle it as if we had watched it end.
                    self.on_vmm_exit(&id, ProcessId { pid, start_time }).await?;
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
                            remove_instance_files(Path::new(&inst.dir));
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

    // --- instances: lifecycle ------------------------------------------------------------------

    fn check_ids_exist(&self, ids: &[String]) -> ApiResult<()> {
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
    async fn shutdown_and_wait(&self, id: &str, pid: ProcessId, force: bool) {
        let dir = match self.instance(id) {
            Ok(i) => PathBuf::from(i.dir),
            Err(_) => return,
        };
        if !force {
            let sock = VmmFiles::api_socket(&dir);
            let asked = tokio::task::spawn_blocking(move || {
                process::api_call(&sock, "PUT", "/vm/shutdown", None)
            })
            .await;
            if let Ok(Ok((code, _))) = asked {
                if code / 100 == 2 {
                    let wait = tokio::time::timeout(
                        self.inner.cfg.shutdown_timeout,
                        process::wait_exit(pid),
                    )
                    .await;
                    if wait.is_ok() {
                        return;
                    }
                    tracing::info!(
                        "{id}: the guest did not shut down in {:?}; forcing",
                        self.inner.cfg.shutdown_timeout
                    );
                }
            }
        }
        if let Err(e) = process::kill(pid) {
            tracing::warn!("{id}: cannot kill VMM {}: {e}", pid.pid);
        }
    }

    /// StopInstances with Hibernate: the VM is paused and snapshotted (memory, vCPUs, devices)
    /// into the instance directory, then its VMM ends; StartInstances resumes from the snapshot.
    /// If the snapshot cannot be made, the guest is resumed and stopped the ordinary way.
    async fn hibernate(&self, id: &str, dir: &Path, pid: ProcessId) {
        let (sock, snap, done) = (
            VmmFiles::api_socket(dir),
            dir.join(HIBERNATE_DIR),
            dir.join(HIBERNATE_DONE),
        );
        let made = tokio::task::spawn_blocking(move || -> Result<(), String> {
            forget_hibernation(snap.parent().expect("in the instance directory"));
            let call = |method: &str, path: &str, body: Option<&str>| match process::api_call(
                &sock, method, path, body,
            ) {
                Ok((code, _)) if code / 100 == 2 => Ok(()),
                Ok((code, body)) => Err(format!("{path}: {code} {}", body.trim())),
                Err(e) => Err(format!("{path}: {e}")),
            };
            call("PUT", "/vm/pause", None)?;
            let body = serde_json::json!({ "path": snap }).to_string();
            if let Err(e) = call("PUT", "/vm/snapshot", Some(&body)) {
                let _ = call("PUT", "/vm/resume", None);
                return Err(e);
            }
            std::fs::write(&done, b"").map_err(|e| e.to_string())?;
            call("PUT", "/vm/stop", None)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match made {
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
        let mut changes = Vec::new();
        for id in ids {
            let _g = self.lock(id).await;
            let inst = self.instance(id)?;
            let current = match inst.state {
                InstanceState::Running => {
                    let reason = if hibernate {
                        StateReason::user_hibernate()
                    } else {
                        StateReason::user_stop()
                    };
                    self.set_state(id, InstanceState::Stopping, Some(&reason))?;
                    if let Some((pid, start_time)) = inst.pid.zip(inst.pid_start) {
                        let svc = self.clone();
                        let id = id.clone();
                        let pid = ProcessId { pid, start_time };
                        let dir = PathBuf::from(&inst.dir);
                        tokio::spawn(async move {
                            if hibernate {
                                svc.hibernate(&id, &dir, pid).await
                            } else {
                                svc.shutdown_and_wait(&id, pid, force).await
                            }
                        });
                    }
                    InstanceState::Stopping
                }
                InstanceState::Stopping if force => {
                    if let Some((pid, start_time)) = inst.pid.zip(inst.pid_start) {
                        let _ = process::kill(ProcessId { pid, start_time });
                    }
                    InstanceState::Stopping
                }
                InstanceState::Stopping | InstanceState::Stopped => inst.state,
                other => return Err(ApiError::incorrect_state(id, other.name(), "stopped")),
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
            let inst = self.instance(id)?;
            if !matches!(
                inst.state,
                InstanceState::Stopped | InstanceState::Pending | InstanceState::Running
            ) {
                return Err(ApiError::incorrect_state(id, inst.state.name(), "started"));
            }
        }
        let cap = self.inner.capacity_lock.lock().await;
        let (free_v, free_m) = self.free_capacity()?;
        let (mut need_v, mut need_m) = (0u64, 0u64);
        for id in ids {
            let inst = self.instance(id)?;
            if inst.state == InstanceState::Stopped {
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
            if inst.state == InstanceState::Stopped {
                self.set_state(id, InstanceState::Pending, None)?;
                to_boot.push((id.clone(), PathBuf::from(&inst.dir)));
                changes.push(StateChange {
                    instance_id: id.clone(),
                    previous: inst.state,
                    current: InstanceState::Pending,
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
            let inst = self.instance(id)?;
            if !matches!(inst.state, InstanceState::Running | InstanceState::Pending) {
                return Err(ApiError::incorrect_state(id, inst.state.name(), "rebooted"));
            }
        }
        for id in ids {
            let g = self.lock(id).await;
            let inst = self.instance(id)?;
            if inst.state != InstanceState::Running {
                continue;
            }
            // A hard reset: the VMM is replaced by a fresh one on the same disk, under the lock,
            // so the old VMM's monitor sees a newer process and leaves the state alone.
            if let Some((pid, start_time)) = inst.pid.zip(inst.pid_start) {
                let pid = ProcessId { pid, start_time };
                process::kill(pid)?;
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), process::wait_exit(pid)).await;
            }
            self.set_state(id, InstanceState::Pending, None)?;
            let dir = PathBuf::from(&inst.dir);
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
        let mut changes = Vec::new();
        for id in ids {
            let _g = self.lock(id).await;
            let inst = self.instance(id)?;
            let current = match inst.state {
                InstanceState::Terminated | InstanceState::ShuttingDown => inst.state,
                InstanceState::Stopped => {
                    self.set_state(
                        id,
                        InstanceState::Terminated,
                        Some(&StateReason::user_stop()),
                    )?;
                    remove_instance_files(Path::new(&inst.dir));
                    InstanceState::Terminated
                }
                InstanceState::Pending | InstanceState::Running | InstanceState::Stopping => {
                    match inst.pid.zip(inst.pid_start) {
                        Some((pid, start_time)) => {
                            self.set_state(
                                id,
                                InstanceState::ShuttingDown,
                                Some(&StateReason::user_stop()),
                            )?;
                            let svc = self.clone();
                            let id = id.clone();
                            let force = inst.state != InstanceState::Running;
                            tokio::spawn(async move {
                                svc.shutdown_and_wait(&id, ProcessId { pid, start_time }, force)
                                    .await
                            });
                            InstanceState::ShuttingDown
                        }
                        None => {
                            // Pending without a VMM yet: the launch task sees the state and stops.
                            self.set_state(
                                id,
                                InstanceState::Terminated,
                                Some(&StateReason::user_stop()),
                            )?;
                            remove_instance_files(Path::new(&inst.dir));
                            InstanceState::Terminated
                        }
                    }
                }
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
        if inst.state != InstanceState::Stopped {
            return Err(ApiError::incorrect_state(id, inst.state.name(), "modified"));
        }
        if Path::new(&inst.dir).join(HIBERNATE_DONE).exists() {
            return Err(ApiError::new(
                "UnsupportedOperation",
                format!("instance {id} is hibernated: its memory snapshot fixes its size; start it first"),
            ));
        }
        self.db()
            .set_instance_type(id, ty.name, ty.vcpus, ty.memory_mib)?;
        Ok(())
    }

    pub fn console_output(&self, id: &str) -> ApiResult<(Vec<u8>, String)> {
        let inst = self.instance(id)?;
        let path = VmmFiles::console(Path::new(&inst.dir));
        let bytes = process::tail(&path, CONSOLE_LIMIT)?;
        let stamp = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(crate::time::iso8601)
            .unwrap_or_else(|_| now_iso());
        Ok((bytes, stamp))
    }

    fn host_netns(&self, host: u32) -> Option<String> {
        self.inner
            .cfg
            .hosts
            .iter()
            .find(|h| h.index == host)
            .and_then(|h| h.netns.clone())
    }

    /// Live-migrates a running instance's VM to a new VMM process on another migration host
    /// (`target`, or by default host 1 from host 0 and host 0 from the others). The instance
    /// keeps its id, state, disk and console; if anything fails, it goes on running where it
    /// was. Returns (from, to, the source VMM's migration report).
    pub async fn migrate_instance(
        &self,
        id: &str,
        target: Option<u32>,
        downtime_ms: u64,
    ) -> ApiResult<(u32, u32, serde_json::Value)> {
        let hosts = self.inner.cfg.hosts.clone();
        if hosts.len() < 2 {
            return Err(ApiError::new(
                "UnsupportedOperation",
                "this vireod has no other host to migrate to: start it with --migration-hosts N",
            ));
        }
        let _g = self.lock(id).await;
        let inst = self.instance(id)?;
        if inst.state != InstanceState::Running {
            return Err(ApiError::incorrect_state(id, inst.state.name(), "migrated"));
        }
        let Some(src_pid) = inst
            .pid
            .zip(inst.pid_start)
            .map(|(pid, start_time)| ProcessId { pid, start_time })
        else {
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
        let dir = PathBuf::from(&inst.dir);
        let boot = read_boot(&dir)?;
        // The destination may open the instance's disk (and nothing else the stream names).
        let mut drives = Vec::new();
        if let Some(root) = &boot.root_disk {
            drives.push(serde_json::json!({"path": root, "format": boot.root_format.as_deref().unwrap_or("raw")}));
        }
        let cfg_path = dir.join("incoming.json");
        std::fs::write(
            &cfg_path,
            serde_json::json!({"kernel": boot.kernel, "drives": drives}).to_string(),
        )?;
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
        };
        let dest_sock = incoming_sock.clone();
        let dst_pid = blocking(move || process::spawn(&spec).map_err(ApiError::from)).await?;
        let abort = |why: String| {
            let _ = process::kill(dst_pid);
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
        let sock = VmmFiles::api_socket(&dir);
        let body = serde_json::json!({"destination": format!("{listen_ip}:{port}"), "downtime_ms": downtime_ms}).to_string();
        let answer = blocking(move || {
            process::api_call(&sock, "PUT", "/vm/migrate", Some(&body)).map_err(ApiError::from)
        })
        .await;
        let report = match answer {
            Ok((200, body)) => serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
            Ok((code, body)) => {
                return Err(abort(format!(
                    "the migration failed ({code}): {}",
                    body.trim()
                )))
            }
            Err(e) => return Err(abort(format!("the migration failed: {}", e.message))),
        };
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
            db.set_process(id, Some(dst_pid.pid), Some(dst_pid.start_time))?;
            db.set_host(id, to)?;
        }
        self.spawn_monitor(id.to_string(), dst_pid);
        Ok((from, to, report))
    }

    // --- queries -------------------------------------------------------------------------------

    /// DescribeInstances: instances matching `ids` and `filters`, in launch order, one page at a
    /// time (`max_results`, `next_token`).
    pub fn describe_instances(
        &self,
        ids: &[String],
        filters: &[Filter],
        max_results: Option<u32>,
        next_token: Option<&str>,
    ) -> ApiResult<(Vec<Instance>, Option<String>)> {
        for f in filters {
            if !is_instance_filter(&f.name) {
                return Err(ApiError::invalid_value(format!(
                    "The filter '{}' is invalid",
                    f.name
                )));
            }
        }
        let after = match next_token {
            Some(t) => Some(decode_token(t)?),
            None => None,
        };
        let all = self.db().instances()?;
        if !ids.is_empty() {
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !all.iter().any(|i| &i.instance_id == *id))
                .collect();
            if !missing.is_empty() {
                let list: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                return Err(ApiError::new(
                    "InvalidInstanceID.NotFound",
                    format!("The instance IDs '{}' do not exist", list.join(", ")),
                ));
            }
        }
        let mut matching = all
            .into_iter()
            .filter(|i| ids.is_empty() || ids.contains(&i.instance_id))
            .filter(|i| filters.iter().all(|f| instance_matches(i, f)))
            .filter(|i| after.is_none_or(|a| i.seq > a));
        let limit = max_results.map(|m| m as usize).unwrap_or(usize::MAX);
        let page: Vec<Instance> = matching.by_ref().take(limit).collect();
        let next = if matching.next().is_some() {
            page.last().map(|i| encode_token(i.seq))
        } else {
            None
        };
        Ok((page, next))
    }

    pub fn user_data(&self, id: &str) -> ApiResult<Vec<u8>> {
        Ok(self.instance(id)?.user_data)
    }

    /// Instances that exist (for the ID checks of tag operations).
    pub fn resource_exists(&self, id: &str) -> ApiResult<bool> {
        let db = self.db();
        if id.starts_with("i-") {
            Ok(db.instance(id)?.is_some())
        } else if id.starts_with("ami-") {
            Ok(db.image(id)?.is_some())
        } else {
            Ok(false)
        }
    }

    /// Every id names an existing instance or image (tag operations change all or nothing).
    fn require_resources(&self, resources: &[String]) -> ApiResult<()> {
        for r in resources {
            if !self.resource_exists(r)? {
                return Err(not_found_for(r));
            }
        }
        Ok(())
    }

    pub fn create_tags(&self, resources: &[String], tags: &[(String, String)]) -> ApiResult<()> {
        self.require_resources(resources)?;
        let mut db = self.db();
        let tx = db.transaction()?;
        for r in resources {
            for (k, v) in tags {
                db::put_tag(&tx, r, k, v)?;
            }
        }
        tx.commit().map_err(db::DbError::from)?;
        Ok(())
    }

    pub fn delete_tags(
        &self,
        resources: &[String],
        tags: &[(String, Option<String>)],
    ) -> ApiResult<()> {
        self.require_resources(resources)?;
        let mut db = self.db();
        let tx = db.transaction()?;
        for r in resources {
            if tags.is_empty() {
                tx.execute("DELETE FROM tags WHERE resource_id = ?1", [r])
                    .map_err(db::DbError::from)?;
            }
            for (k, v) in tags {
                db::delete_tag(&tx, r, k, v.as_deref())?;
            }
        }
        tx.commit().map_err(db::DbError::from)?;
        Ok(())
    }

    /// DescribeTags: (resource id, resource type, key, value).
    pub fn describe_tags(
        &self,
        filters: &[Filter],
    ) -> ApiResult<Vec<(String, &'static str, String, String)>> {
        for f in filters {
            if !matches!(
                f.name.as_str(),
                "resource-id" | "resource-type" | "key" | "value"
            ) {
                return Err(ApiError::invalid_value(format!(
                    "The filter '{}' is invalid",
                    f.name
                )));
            }
        }
        let rows = self.db().all_tags()?;
        Ok(rows
            .into_iter()
            .map(|(r, k, v)| {
                let ty = if r.starts_with("i-") {
                    "instance"
                } else {
                    "image"
                };
                (r, ty, k, v)
            })
            .filter(|(r, ty, k, v)| {
                filters.iter().all(|f| match f.name.as_str() {
                    "resource-id" => f.matches_any([r.as_str()]),
                    "resource-type" => f.matches_any([*ty]),
                    "key" => f.matches_any([k.as_str()]),
                    _ => f.matches_any([v.as_str()]),
                })
            })
            .collect())
    }
}

fn not_found_for(id: &str) -> ApiError {
    if id.starts_with("ami-") {
        ApiError::image_not_found(id)
    } else if id.starts_with("i-") {
        ApiError::instance_not_found(id)
    } else {
        ApiError::new("InvalidID", format!("The ID '{id}' is not valid"))
    }
}

fn is_instance_filter(name: &str) -> bool {
    matches!(
        name,
        "instance-state-name"
            | "instance-state-code"
            | "instance-type"
            | "image-id"
            | "instance-id"
            | "reservation-id"
            | "tag-key"
            | "tag-value"
            | "launch-index"
            | "availability-zone"
    ) || name.starts_with("tag:")
}

fn instance_matches(i: &Instance, f: &Filter) -> bool {
    match f.name.as_str() {
        "instance-state-name" => f.matches_any([i.state.name()]),
        "instance-state-code" => f.matches_any([i.state.code().to_string().as_str()]),
        "instance-type" => f.matches_any([i.instance_type.as_str()]),
        "image-id" => f.matches_any([i.image_id.as_str()]),
        "instance-id" => f.matches_any([i.instance_id.as_str()]),
        "reservation-id" => f.matches_any([i.reservation_id.as_str()]),
        "launch-index" => f.matches_any([i.launch_index.to_string().as_str()]),
        "availability-zone" => true,
        n => tag_filter(n, f, &i.tags),
    }
}

fn tag_filter(name: &str, f: &Filter, tags: &[(String, String)]) -> bool {
    if let Some(key) = name.strip_prefix("tag:") {
        tags.iter()
            .any(|(k, v)| k == key && f.matches_any([v.as_str()]))
    } else if name == "tag-key" {
        f.matches_any(tags.iter().map(|(k, _)| k.as_str()))
    } else if name == "tag-value" {
        f.matches_any(tags.iter().map(|(_, v)| v.as_str()))
    } else {
        false
    }
}

fn encode_token(seq: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("vireo-page:{seq}"))
}

fn decode_token(t: &str) -> ApiResult<i64> {
    use base64::Engine;
    let bad = || ApiError::invalid_value(format!("Invalid NextToken '{t}'"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    s.strip_prefix("vireo-page:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)
}

fn validate_image_name(name: &str) -> ApiResult<()> {
    // EC2: 3-128 characters, letters, digits and ()[] ./-'@_
    let ok = (3..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_value(format!(
            "Invalid image name '{name}': use 3 to 128 letters, digits, spaces or ()[]./-'@_"
        )))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a host task failed: {e}")))?
}

/// Copies an instance's boot files and flattened root disk into `staging`, then renames it to
/// `out`; returns the final paths of (kernel, initrd, root disk).
fn capture_image(
    boot: &BootConfig,
    root: &Path,
    staging: &Path,
    out: &Path,
) -> ApiResult<(String, Option<String>, String)> {
    std::fs::create_dir_all(staging)?;
    let root_out = staging.join("root.raw");
    storage::flatten(root, boot.root_format.as_deref(), &root_out)?;
    set_readonly(&root_out)?;
    copy_readonly(&boot.kernel, &staging.join("kernel"))?;
    if let Some(i) = &boot.image_initrd {
        copy_readonly(i, &staging.join("initrd"))?;
    }
    std::fs::rename(staging, out)?;
    let p = |n: &str| out.join(n).to_string_lossy().into_owned();
    Ok((
        p("kernel"),
        boot.image_initrd.as_ref().map(|_| p("initrd")),
        p("root.raw"),
    ))
}

fn read_boot(dir: &Path) -> ApiResult<BootConfig> {
    let text = std::fs::read_to_string(dir.join("boot.json"))?;
    serde_json::from_str(&text)
        .map_err(|e| ApiError::internal(format!("bad boot.json in {}: {e}", dir.display())))
}

/// Copies `src` (a kernel or initramfs) to `dst` and makes the copy read-only; returns `dst`.
fn copy_readonly(src: &Path, dst: &Path) -> ApiResult<PathBuf> {
    std::fs::copy(src, dst)?;
    set_readonly(dst)?;
    Ok(dst.to_path_buf())
}

fn set_readonly(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444))
}

/// Drops a hibernation snapshot (marker first, so a half-removed snapshot is never resumed).
fn forget_hibernation(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(HIBERNATE_DONE));
    match std::fs::remove_dir_all(dir.join(HIBERNATE_DIR)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("cannot remove the snapshot in {}: {e}", dir.display())
        }
        _ => {}
    }
}

/// Removes what a terminated instance leaves behind, except its console log (GetConsoleOutput
/// keeps working for terminated instances, as on EC2).
fn remove_instance_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name() != "console.log" {
            let p = e.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(err) = r {
                tracing::warn!("cannot remove {}: {err}", p.display());
            }
        }
    }
}

/// A new instance's directory: its root disk (a copy-on-write overlay of the image's), its user
/// data and its boot configuration.
fn prepare_instance_dir(
    dir: &Path,
    image: &Image,
    user_data: &[u8],
    instance_id: &str,
) -> ApiResult<()> {
    std::fs::create_dir_all(dir)?;
    let (root_disk, root_format) = match &image.root_disk {
        Some(base) => {
            let (path, fmt) = storage::clone_for_instance(Path::new(base), dir)?;
            (Some(path), Some(fmt.to_string()))
        }
        None => (None, None),
    };
    // User data reaches the guest through its boot module: appended to the image's initramfs as
    // /etc/vireo/user-data (the guest's init runs it), or, for a kernel without one, as the module
    // itself (the small test guest prints it).
    let initrd = match (&image.initrd, user_data.is_empty()) {
        (Some(initrd), true) => Some(PathBuf::from(initrd)),
        (Some(initrd), false) => {
            let out = dir.join("initrd.img");
            crate::userdata::initrd_with_user_data(Path::new(initrd), user_data, &out)?;
            Some(out)
        }
        (None, false) => {
            let out = dir.join("user-data");
            std::fs::write(&out, user_data)?;
            Some(out)
        }
        (None, true) => None,
    };
    let mut cmdline = image.cmdline.clone();
    if !cmdline.is_empty() {
        cmdline.push(' ');
    }
    cmdline.push_str(&format!("vireo.instance_id={instance_id}"));
    let boot = BootConfig {
        kernel: PathBuf::from(&image.kernel),
        image_initrd: image.initrd.as_ref().map(PathBuf::from),
        image_cmdline: image.cmdline.clone(),
        initrd,
        cmdline,
        root_disk,
        root_format,
    };
    std::fs::write(
        dir.join("boot.json"),
        serde_json::to_vec_pretty(&boot).expect("serializable"),
    )?;
    Ok(())
}

/// The instance type of `name` (for the API layer's DescribeInstanceTypes).
pub fn instance_types(names: &[String]) -> ApiResult<Vec<&'static InstanceType>> {
    if names.is_empty() {
        return Ok(types::CATALOG.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            types::lookup(n).ok_or_else(|| {
                ApiError::invalid_value(format!(
                    "The following supplied instance types do not exist: [{n}]"
                ))
            })
        })
        .collect()
}

/// Group instances by reservation, keeping launch order (DescribeInstances' reservationSet).
pub fn by_reservation(list: Vec<Instance>) -> Vec<(String, String, Vec<Instance>)> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, (String, Vec<Instance>)> = BTreeMap::new();
    for i in list {
        if !groups.contains_key(&i.reservation_id) {
            order.push(i.reservation_id.clone());
        }
        groups
            .entry(i.reservation_id.clone())
            .or_insert_with(|| (i.owner_id.clone(), Vec::new()))
            .1
            .push(i);
    }
    order
        .into_iter()
        .map(|r| {
            let (owner, list) = groups.remove(&r).expect("grouped");
            (r, owner, list)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode_token(&encode_token(42)).unwrap(), 42);
        assert_eq!(
            decode_token("garbage!").unwrap_err().code,
            "InvalidParameterValue"
        );
        assert!(decode_token(&encode_token(1)[1..]).is_err());
    }

    #[test]
    fn image_names_follow_ec2_rules() {
        assert!(validate_image_name("debian-12 (vireo)").is_ok());
        assert!(validate_image_name("ab").is_err());
        assert!(validate_image_name("bad|name").is_err());
    }

    #[test]
    fn fingerprint_distinguishes_requests() {
        let a = RunRequest {
            image_id: "ami-1".into(),
            instance_type: "t3.micro".into(),
            min_count: 1,
            max_count: 1,
            ..Default::default()
        };
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.user_data = b"x".to_vec();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
