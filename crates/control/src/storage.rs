//! Disk images for instances and images: cloning an image's root disk for a new instance and
//! capturing an instance's disk as a new image.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

pub fn detect_format(path: &Path) -> io::Result<Format> {
    let mut magic = [0u8; 4];
    let mut f = File::open(path)?;
    match f.read_exact(&mut magic) {
        Ok(()) if &magic == b"QFI\xfb" => Ok(Format::Qcow2),
        _ => Ok(Format::Raw),
    }
}

/// Copies `src` to `dst`, leaving holes where `src` has zeroes (disk images are mostly empty).
pub fn copy_sparse(src: &Path, dst: &Path) -> io::Result<()> {
    let mut inp = File::open(src)?;
    let len = inp.metadata()?.len();
    let mut out = File::create(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = inp.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(n as i64))?;
        } else {
            out.write_all(&buf[..n])?;
        }
        off += n as u64;
    }
    out.set_len(len)?;
    out.sync_all()
}

/// The root disk of a new instance, cloned from an image's `base`; returns its path and format.
pub fn clone_for_instance(base: &Path, dir: &Path) -> ApiResult<(PathBuf, &'static str)> {
    let out = dir.join("root.raw");
    copy_sparse(base, &out)?;
    Ok((out, "raw"))
}

/// Writes the whole content of `image` as a sparse raw file `out`.
pub fn flatten(image: &Path, format: Option<&str>, out: &Path) -> ApiResult<()> {
    match format {
        None | Some("raw") => Ok(copy_sparse(image, out)?),
        Some(f) => Err(ApiError::internal(format!("cannot capture a {f} disk"))),
    }
}
