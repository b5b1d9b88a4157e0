//! Instances: RunInstances (launch and first boot), booting a VMM, DescribeInstances and the
//! per-instance queries (console output, user data).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::OwnedMutexGuard;
use vireo_ec2_api::ids::{self, IdKind};

use super::files::{
    forget_hibernation, prepare_instance_dir, read_boot, remove_instance_files, HIBERNATE_DIR,
    HIBERNATE_DONE,
};
use super::filters::{instance_matches, is_instance_filter, NetView};
use super::paging::{decode_token, encode_token};
use super::vmm;
use super::{blocking, now_iso, Service, CONSOLE_LIMIT, MAX_USER_DATA};
use crate::db::{self, Db};
use crate::error::{ApiError, ApiResult};
use crate::filter::Filter;
use crate::model::{
    Image, Instance, InstanceAttributes, InstanceState, MetadataOptions, StateReason, Tag,
};
use crate::process::{self, VmmFiles, VmmSpec};
use crate::types;

/// What RunInstances asks for.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub image_id: String,
    pub instance_type: String,
    pub min_count: u32,
    pub max_count: u32,
    pub user_data: Vec<u8>,
    pub tags: Vec<Tag>,
    pub client_token: Option<String>,
    /// The interfaces each instance gets (device 0 first); empty: one in the default subnet.
    pub interfaces: Vec<super::InterfaceSpec>,
    /// KeyName: a key pair that must exist; its public key goes with each instance.
    pub key_name: Option<String>,
    /// DisableApiTermination, DisableApiStop, InstanceInitiatedShutdownBehavior.
    pub attributes: InstanceAttributes,
    /// MetadataOptions.
    pub metadata_options: MetadataOptions,
}

impl RunRequest {
    /// What identifies "the same request" for ClientToken idempotency.
    pub(super) fn fingerprint(&self) -> String {
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
        for t in &self.tags {
            h.update(t.key.as_bytes());
            h.update([0]);
            h.update(t.value.as_bytes());
            h.update([0]);
        }
        if !self.interfaces.is_empty() {
            // Only when given, so a request without network parameters keeps its fingerprint.
            h.update(format!("{:?}", self.interfaces).as_bytes());
        }
        // Likewise the key pair and the attributes (tokens stored before they existed).
        if self.key_name.is_some() || self.attributes != InstanceAttributes::default() {
            h.update(format!("key {:?} {:?}", self.key_name, self.attributes).as_bytes());
        }
        if self.metadata_options != MetadataOptions::default() {
            h.update(format!("metadata {:?}", self.metadata_options).as_bytes());
        }
        hex::encode(h.finalize())
    }
}

impl Service {
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
        // The key pair is read once (after a replayed ClientToken has been answered): its
        // public key goes with the instances even if the pair is deleted later.
        let public_key = match &req.key_name {
            Some(name) => Some(
                self.db()
                    .key_pair_by_name(name)?
                    .ok_or_else(|| super::key_pairs::key_pair_not_found(name))?
                    .public_key,
            ),
            None => None,
        };
        let specs = if req.interfaces.is_empty() {
            vec![super::InterfaceSpec {
                delete_on_termination: true,
                ..Default::default()
            }]
        } else {
            req.interfaces.clone()
        };
        // Checked before capacity, with nothing made: subnets, groups, addresses.
        let address_room = {
            let net = self.net()?;
            self.plan_launch_network(&net, &specs, &[String::new()])?;
            self.launch_address_room(&net, &specs)?
        };
        if address_room < u64::from(req.min_count) {
            return Err(ApiError::new(
                "InsufficientFreeAddressesInSubnet",
                format!(
                    "There are not enough free addresses in the subnet to satisfy the requested number of instances ({} free, {} asked).",
                    address_room, req.min_count
                ),
            ));
        }
        let (free_v, free_m) = self.free_capacity()?;
        let fit = std::cmp::min(free_v / u64::from(ty.vcpus), free_m / ty.memory_mib)
            .min(u64::from(req.max_count))
            .min(address_room) as u32;
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
                dir,
                pid: None,
                host: 0,
                tags: req.tags.clone(),
                key_name: req.key_name.clone(),
                public_key: public_key.clone(),
                attributes: req.attributes,
                metadata_options: req.metadata_options,
            });
        }
        let vpcs = {
            let mut db = self.db();
            let net = db.net_state()?;
            let ids: Vec<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
            let network = self.plan_launch_network(&net, &specs, &ids)?;
            let tx = db.transaction()?;
            for i in &instances {
                Db::insert_instance(&tx, i)?;
            }
            Self::insert_launch_network(&tx, &network)?;
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
            network
                .interfaces
                .iter()
                .map(|e| e.vpc_id.clone())
                .collect::<Vec<_>>()
        };
        drop(_cap);
        self.network_changed(&vpcs);
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
    pub(super) async fn first_launch(&self, id: &str, image: &Image) -> ApiResult<()> {
        let guard = self.lock(id).await;
        let inst = self.instance(id)?;
        if inst.state != InstanceState::Pending {
            return Ok(()); // terminated before it got going
        }
        let dir = inst.dir.clone();
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
    pub(super) async fn boot(
        &self,
        id: &str,
        dir: &Path,
        guard: OwnedMutexGuard<()>,
    ) -> ApiResult<()> {
        let inst = self.instance(id)?;
        let boot = read_boot(dir)?;
        // The interfaces' TAPs exist in their VPC's namespace on this host before the VMM
        // starts with them; if they cannot be made, the launch fails and its interfaces go.
        let nets = match self.attach_network(id, inst.host).await {
            Ok(nets) => nets,
            Err(e) => {
                self.launch_failed(
                    id,
                    &format!("the network could not be set up: {}", e.message),
                )?;
                return Err(e);
            }
        };
        let spec = VmmSpec {
            nets,
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
            smbios: Some(process::ec2_smbios(id, &inst.instance_type)),
        };
        let pid = match blocking(move || process::spawn(&spec).map_err(ApiError::from)).await {
            Ok(pid) => pid,
            Err(e) => {
                self.launch_failed(id, &format!("the VMM could not be started: {}", e.message))?;
                return Err(e);
            }
        };
        self.db().set_process(id, Some(pid))?;
        self.spawn_monitor(id.to_string(), pid);
        drop(guard);

        // Ready when the VMM's API answers (it has built the VM and started its vCPUs).
        let sock = VmmFiles::api_socket(dir);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if !process::is_alive(pid) {
                return Ok(()); // the monitor reports what happened
            }
            // Not answering yet is the normal case here: no error is logged for it.
            if vmm::ready(&sock).await {
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
        if now.state == InstanceState::Pending && now.pid == Some(pid) {
            // Durable: after a power loss, an instance that has booted is stopped, not
            // terminated (which would remove its disk).
            crate::durable::write(&dir.join(".booted"), b"")?;
            // Resumed from hibernation: the snapshot is spent (its memory file stays mapped by
            // the VMM until it exits, so removing it now is safe).
            forget_hibernation(dir);
            self.set_state(id, InstanceState::Running, None)?;
        }
        Ok(())
    }

    /// A launch or start that failed before the VMM ran: a new instance ends terminated, one that
    /// had run before returns to stopped (EC2 does the same).
    pub(super) fn launch_failed(&self, id: &str, why: &str) -> ApiResult<()> {
        let inst = self.instance(id)?;
        let dir = inst.dir.clone();
        self.db().set_process(id, None)?;
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

    pub fn console_output(&self, id: &str) -> ApiResult<(Vec<u8>, String)> {
        let inst = self.instance(id)?;
        let path = VmmFiles::console(&inst.dir);
        let bytes = process::tail(&path, CONSOLE_LIMIT)?;
        let stamp = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(crate::time::iso8601)
            .unwrap_or_else(|_| now_iso());
        Ok((bytes, stamp))
    }

    pub(super) fn host_netns(&self, host: u32) -> Option<String> {
        self.inner
            .cfg
            .hosts
            .iter()
            .find(|h| h.index == host)
            .and_then(|h| h.netns.clone())
    }

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
        let net = self.net()?;
        let dns_domain = self.dns_domain();
        let view = NetView {
            net: &net,
            dns_domain: &dns_domain,
        };
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
            .filter(|i| filters.iter().all(|f| instance_matches(i, f, &view)))
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
