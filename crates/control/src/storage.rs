//! Disks of images and instances, on vireo-storage: an image's root disk is a raw file that never
//! changes; an instance's is a qcow2 overlay backed by it (copy-on-write, so launching costs no
//! copy); CreateImage flattens an instance's disk into a new raw image.

use std::path::{Path, PathBuf};

pub use vireo_storage::Format;

use crate::error::{ApiError, ApiResult};

fn storage_error(e: vireo_storage::Error) -> ApiError {
    ApiError::internal(e.to_string())
}

pub fn detect_format(path: &Path) -> ApiResult<Format> {
    vireo_storage::detect_format(path).map_err(|e| ApiError::invalid_value(e.to_string()))
}

/// Copies a raw disk image to `dst` (sparse: zero blocks stay holes).
pub fn copy_raw(src: &Path, dst: &Path) -> ApiResult<()> {
    vireo_storage::flatten_format(src, Format::Raw, dst).map_err(storage_error)
}

/// The root disk of a new instance: a qcow2 overlay on the image's raw `base`, in `dir`.
pub fn clone_for_instance(base: &Path, dir: &Path) -> ApiResult<(PathBuf, &'static str)> {
    let out = dir.join("root.qcow2");
    vireo_storage::create_overlay(base, &out).map_err(storage_error)?;
    Ok((out, Format::Qcow2.as_str()))
}

/// Writes the whole disk `image` (of `format`, its backing chain included) to the raw file `out`.
pub fn flatten(image: &Path, format: Option<&str>, out: &Path) -> ApiResult<()> {
    let format = match format {
        Some(f) => f.parse::<Format>().map_err(storage_error)?,
        None => Format::Raw,
    };
    vireo_storage::flatten_format(image, format, out).map_err(storage_error)
}
