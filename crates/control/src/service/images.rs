//! Images: RegisterImage (the files are copied into the data directory, read-only),
//! DescribeImages, DeregisterImage (files collected once unused) and CreateImage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vireo_ec2_api::ids::{self, IdKind};

use super::files::{capture_image, copy_readonly, read_boot, set_readonly, staging_dir};
use super::filters::tag_filter;
use super::state::Operation;
use super::vmm::{self, VmmError};
use super::{blocking, now_iso, Service, MAX_IMAGE_CMDLINE};
use crate::db::{self, Db};
use crate::durable;
use crate::error::{ApiError, ApiResult};
use crate::filter::{Filter, FilterMatch};
use crate::model::{Image, InstanceState, Tag};
use crate::process::VmmFiles;
use crate::storage;

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
    pub tags: Vec<Tag>,
}

impl Service {
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
        let staging = staging_dir(&self.inner.cfg.images_dir(), &image_id);
        let result = (|| -> ApiResult<Image> {
            durable::create_dir_all(&staging)?;
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
            // The files are on disk before the image's name is, and the name before the
            // database says the image is available.
            durable::sync_tree(&staging)?;
            durable::rename(&staging, &dir)?;
            let inside = |p: PathBuf| dir.join(p.file_name().expect("staged file has a name"));
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

    pub(super) fn save_image(&self, img: &Image) -> ApiResult<()> {
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
    pub(super) fn collect_images(&self) {
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
        tags: Vec<Tag>,
    ) -> ApiResult<String> {
        validate_image_name(name)?;
        let inst = self.instance(instance_id)?;
        Operation::CreateImage.check(instance_id, inst.state)?;
        let dir = inst.dir.clone();
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
            match vmm::pause(&VmmFiles::api_socket(&dir)).await {
                Ok(()) => {}
                Err(VmmError::Status { body, .. }) => {
                    return Err(ApiError::internal(format!(
                        "cannot pause the instance: {body}"
                    )))
                }
                Err(VmmError::Io { source, .. }) => return Err(ApiError::from(source)),
            }
            true
        } else {
            false
        };
        let image_id = ids::new_id(IdKind::Image);
        let img_dir = self.inner.cfg.images_dir().join(&image_id);
        let staging = staging_dir(&self.inner.cfg.images_dir(), &image_id);
        let (st, out, b) = (staging.clone(), img_dir.clone(), boot.clone());
        let captured = blocking(move || capture_image(&b, &root, &st, &out)).await;
        if paused {
            if let Err(e) = vmm::resume(&VmmFiles::api_socket(&dir)).await {
                tracing::warn!("cannot resume {instance_id} after CreateImage: {e}");
            }
        }
        drop(guard);
        if reboot {
            if let Err(e) = self.start_instances(&[instance_id.to_string()]).await {
                tracing::warn!("cannot start {instance_id} again after CreateImage: {e}");
            }
        }
        let files = match captured {
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
            kernel: files.kernel,
            initrd: files.initrd,
            root_disk: Some(files.root_disk),
            cmdline: boot.image_cmdline.clone(),
            creation_date: now_iso(),
            source_instance_id: Some(instance_id.to_string()),
            tags,
        };
        self.save_image(&img)?;
        Ok(image_id)
    }

    pub(super) async fn wait_for_state(
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
}

pub(super) fn validate_image_name(name: &str) -> ApiResult<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_follow_ec2_rules() {
        assert!(validate_image_name("debian-12 (vireo)").is_ok());
        assert!(validate_image_name("ab").is_err());
        assert!(validate_image_name("bad|name").is_err());
    }
}
