//! The files of instances and images in the data directory: an instance's boot configuration
//! (`boot.json`), its directory as first prepared, its hibernation snapshot, and the copies an
//! image is made of.

use std::path::{Path, PathBuf};

use crate::durable;
use crate::error::{ApiError, ApiResult};
use crate::model::Image;
use crate::storage;

/// Where a hibernated instance keeps its snapshot (memory, vCPU and device state), and the
/// marker written once the snapshot is complete: StartInstances resumes from it.
pub(super) const HIBERNATE_DIR: &str = "hibernate";
pub(super) const HIBERNATE_DONE: &str = "hibernate.ok";

/// The boot configuration an instance keeps in its directory (`boot.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct BootConfig {
    pub(super) kernel: PathBuf,
    /// The image's own initramfs and command line (without this instance's additions), for
    /// CreateImage.
    pub(super) image_initrd: Option<PathBuf>,
    pub(super) image_cmdline: String,
    pub(super) initrd: Option<PathBuf>,
    pub(super) cmdline: String,
    pub(super) root_disk: Option<PathBuf>,
    pub(super) root_format: Option<String>,
}

/// The files of an image CreateImage made, at their final paths.
pub(super) struct CapturedImage {
    pub(super) kernel: PathBuf,
    pub(super) initrd: Option<PathBuf>,
    pub(super) root_disk: PathBuf,
}

/// Copies an instance's boot files and flattened root disk into `staging`, then renames it to
/// `out`.
pub(super) fn capture_image(
    boot: &BootConfig,
    root: &Path,
    staging: &Path,
    out: &Path,
) -> ApiResult<CapturedImage> {
    durable::create_dir_all(staging)?;
    let root_out = staging.join("root.raw");
    storage::flatten(root, boot.root_format.as_deref(), &root_out)?;
    set_readonly(&root_out)?;
    copy_readonly(&boot.kernel, &staging.join("kernel"))?;
    if let Some(i) = &boot.image_initrd {
        copy_readonly(i, &staging.join("initrd"))?;
    }
    // On disk before the name, and the name before the database record.
    durable::sync_tree(staging)?;
    durable::rename(staging, out)?;
    Ok(CapturedImage {
        kernel: out.join("kernel"),
        initrd: boot.image_initrd.as_ref().map(|_| out.join("initrd")),
        root_disk: out.join("root.raw"),
    })
}

pub(super) fn read_boot(dir: &Path) -> ApiResult<BootConfig> {
    let text = std::fs::read_to_string(dir.join("boot.json"))?;
    serde_json::from_str(&text)
        .map_err(|e| ApiError::internal(format!("bad boot.json in {}: {e}", dir.display())))
}

/// Copies `src` (a kernel or initramfs) to `dst` and makes the copy read-only; returns `dst`.
pub(super) fn copy_readonly(src: &Path, dst: &Path) -> ApiResult<PathBuf> {
    std::fs::copy(src, dst)?;
    set_readonly(dst)?;
    Ok(dst.to_path_buf())
}

pub(super) fn set_readonly(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444))
}

/// Drops a hibernation snapshot (marker first, so a half-removed snapshot is never resumed).
pub(super) fn forget_hibernation(dir: &Path) {
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
pub(super) fn remove_instance_files(dir: &Path) {
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
pub(super) fn prepare_instance_dir(
    dir: &Path,
    image: &Image,
    user_data: &[u8],
    instance_id: &str,
) -> ApiResult<()> {
    durable::create_dir_all(dir)?;
    let (root_disk, root_format) = match &image.root_disk {
        Some(base) => {
            let (path, fmt) = storage::clone_for_instance(Path::new(base), dir)?;
            (Some(path), Some(fmt.to_string()))
        }
        None => (None, None),
    };
    let image_initrd = image.initrd.as_ref().map(PathBuf::from);
    let initrd = boot_module(dir, image_initrd.as_deref(), user_data)?;
    let mut cmdline = image.cmdline.clone();
    if !cmdline.is_empty() {
        cmdline.push(' ');
    }
    cmdline.push_str(&format!("vireo.instance_id={instance_id}"));
    let boot = BootConfig {
        kernel: image.kernel.clone(),
        image_initrd,
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
    // The instance boots from these files and is started from them again after a power loss.
    durable::sync_tree(dir)?;
    durable::sync_dir(dir.parent().expect("an instance directory has a parent"))?;
    Ok(())
}

/// The boot module that carries `user_data` to the guest, written in `dir`: the image's
/// initramfs with /etc/vireo/user-data appended (the guest's init runs it), or, for a kernel
/// without one, the user data itself as the module (the small test guest prints it). Written
/// beside and renamed into place, so that a failure leaves the previous module whole.
fn boot_module(
    dir: &Path,
    image_initrd: Option<&Path>,
    user_data: &[u8],
) -> ApiResult<Option<PathBuf>> {
    let (out, tmp) = match image_initrd {
        Some(initrd) if user_data.is_empty() => return Ok(Some(initrd.to_path_buf())),
        None if user_data.is_empty() => return Ok(None),
        Some(_) => (dir.join("initrd.img"), dir.join(".initrd.img.tmp")),
        None => (dir.join("user-data"), dir.join(".user-data.tmp")),
    };
    match image_initrd {
        Some(initrd) => crate::userdata::initrd_with_user_data(initrd, user_data, &tmp)?,
        None => std::fs::write(&tmp, user_data)?,
    }
    durable::sync_file(&tmp)?;
    durable::rename(&tmp, &out)?;
    Ok(Some(out))
}

/// ModifyInstanceAttribute userData of a stopped instance: its boot module is made again with
/// `user_data` (empty: none) and boot.json names it, for the next start. The old module is
/// removed once boot.json no longer names it.
pub(super) fn replace_user_data(dir: &Path, user_data: &[u8]) -> ApiResult<()> {
    let mut boot = read_boot(dir)?;
    let old = boot.initrd.clone();
    boot.initrd = boot_module(dir, boot.image_initrd.as_deref(), user_data)?;
    let tmp = dir.join(".boot.json.tmp");
    durable::write(
        &tmp,
        &serde_json::to_vec_pretty(&boot).expect("serializable"),
    )?;
    durable::rename(&tmp, &dir.join("boot.json"))?;
    if let Some(old) = old {
        if Some(&old) != boot.initrd.as_ref() && old.starts_with(dir) {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(())
}

/// The name of the directory an image's files are copied into before it is renamed to its
/// final name (`ami-…`), beside it in the images directory.
pub(super) fn staging_dir(images_dir: &Path, image_id: &str) -> PathBuf {
    images_dir.join(format!(".{image_id}.tmp"))
}

/// Removes the staging directories a vireod that was killed (or lost power) while copying an
/// image left behind: no image record names them, so nothing else would.
pub(super) fn remove_staging_dirs(images_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(images_dir) else {
        return; // no images yet
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".ami-") && name.ends_with(".tmp") {
            tracing::info!(
                "removing {}, left by an interrupted image copy",
                e.path().display()
            );
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!("cannot remove {}: {err}", e.path().display());
            }
        }
    }
}
