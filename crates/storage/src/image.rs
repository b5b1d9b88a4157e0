//! Whole-image operations: format detection, opening a backend, creating an overlay,
//! flattening a chain into a raw file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, Storage, StorageOpenOptions};
use tempfile::NamedTempFile;

use crate::qcow2::Qcow2Disk;
use crate::raw::RawDisk;
use crate::{BlockBackend, Error, Format, Result, MAX_DISK_SIZE, SECTOR_SIZE};

/// The first four bytes of every qcow2 image.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Bytes read and written at a time by [`flatten`].
const FLATTEN_CHUNK: usize = 1 << 20;
/// The granule in which [`flatten`] finds zeros to leave as holes (a file-system block).
const ZERO_GRANULE: usize = 4096;

/// The format of the image at `path`, from its first bytes: qcow2 if it starts with the qcow2
/// magic, raw otherwise.
///
/// A convenience for people only. A guest can write a qcow2 header at the start of a raw disk,
/// and an image opened as qcow2 reads whatever backing file its header names: software that
/// knows the format of its images (vireod does) must pass it explicitly.
pub fn detect_format(path: &Path) -> Result<Format> {
    let mut f = File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    what: "cannot read its first bytes",
                    source,
                })
            }
        }
    }
    Ok(if got == magic.len() && magic == QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Opens the image at `path` as `format` for a virtio-blk drive (qcow2: with its backing
/// chain, which is only ever read). `direct` bypasses the host's page cache (raw images only:
/// a qcow2 image's metadata is read and written in pieces no device alignment fits).
pub fn open(
    path: &Path,
    format: Format,
    read_only: bool,
    direct: bool,
) -> Result<Arc<dyn BlockBackend>> {
    Ok(match format {
        Format::Raw => {
            Arc::new(
                RawDisk::open(path, read_only, direct).map_err(|source| Error::Open {
                    path: path.to_path_buf(),
                    source,
                })?,
            )
        }
        Format::Qcow2 if direct => {
            return Err(Error::Invalid {
                path: path.to_path_buf(),
                reason: "direct I/O is for raw images, and this one is qcow2".to_string(),
            })
        }
        Format::Qcow2 => Arc::new(Qcow2Disk::open(path, read_only)?),
    })
}

/// Creates `overlay`, a qcow2 (version 3) image whose backing file is `base` (format raw,
/// named by its absolute path) and whose virtual size is `base`'s size: a copy-on-write clone
/// of `base`. Reads of what the overlay has not written come from `base`, writes go to the
/// overlay, and `base` is never opened for writing.
///
/// `base` is taken as raw whatever its first bytes are (a disk image captured from a guest may
/// begin with anything). The overlay is written to a temporary file beside it, made durable,
/// then renamed into place, so `overlay` either does not exist or is complete; an existing
/// `overlay` is never replaced.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let size = base_size(base)?;
    let canonical = std::fs::canonicalize(base).map_err(|source| Error::Open {
        path: base.to_path_buf(),
        source,
    })?;
    let Some(backing_name) = canonical.to_str() else {
        return Err(Error::Invalid {
            path: base.to_path_buf(),
            reason: "its path is not UTF-8, which a qcow2 header cannot name".to_string(),
        });
    };
    if overlay.exists() {
        return Err(exists(overlay));
    }
    let tmp = temp_beside(overlay)?;
    let io_err = |what, source| Error::Io {
        path: overlay.to_path_buf(),
        what,
        source,
    };
    let file = ImagoFile::open(
        StorageOpenOptions::new()
            .filename(tmp.path())
            .write(true)
            .direct(false),
    )
    .map_err(|e| io_err("cannot open the temporary file", e))?;
    Qcow2::<ImagoFile>::create_builder(file)
        .size(size)
        .backing(backing_name.to_string(), Format::Raw.as_str().to_string())
        .create()
        .map_err(|e| io_err("cannot write the qcow2 image", e))?;
    persist(tmp, overlay)
}

/// Writes the disk that `image` holds (read through its whole backing chain when it is qcow2)
/// to `out_raw` as a raw file, leaving all-zero 4 KiB blocks as holes. The format of `image` is
/// detected ([`detect_format`]); see [`flatten_format`] to give it. Atomic like
/// [`create_overlay`]: `out_raw` appears complete or not at all, and an existing one is never
/// replaced.
pub fn flatten(image: &Path, out_raw: &Path) -> Result<()> {
    flatten_format(image, detect_format(image)?, out_raw)
}

/// [`flatten`] of an image whose format the caller knows.
pub fn flatten_format(image: &Path, format: Format, out_raw: &Path) -> Result<()> {
    let disk = open(image, format, true, false)?;
    if out_raw.exists() {
        return Err(exists(out_raw));
    }
    let size = disk.size();
    let tmp = temp_beside(out_raw)?;
    let write_err = |source| Error::Io {
        path: out_raw.to_path_buf(),
        what: "cannot write",
        source,
    };
    tmp.as_file().set_len(size).map_err(write_err)?;
    let mut buf = vec![0u8; FLATTEN_CHUNK];
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(FLATTEN_CHUNK as u64) as usize;
        let chunk = &mut buf[..n];
        disk.read(&[chunk.into()], offset)
            .map_err(|source| Error::Io {
                path: image.to_path_buf(),
                what: "cannot read",
                source,
            })?;
        // Write each run of blocks that are not all zeros; the rest stays a hole.
        let mut pos = 0;
        while pos < n {
            let is_zero = |p: usize| chunk[p..(p + ZERO_GRANULE).min(n)].iter().all(|&b| b == 0);
            if is_zero(pos) {
                pos += ZERO_GRANULE;
                continue;
            }
            let start = pos;
            while pos < n && !is_zero(pos) {
                pos += ZERO_GRANULE;
            }
            let end = pos.min(n);
            tmp.as_file()
                .write_all_at(&chunk[start..end], offset + start as u64)
                .map_err(write_err)?;
        }
        offset += n as u64;
    }
    persist(tmp, out_raw)
}

/// The size of a base image, which must be whole sectors and not absurd.
fn base_size(base: &Path) -> Result<u64> {
    let open_err = |source| Error::Open {
        path: base.to_path_buf(),
        source,
    };
    let mut f = File::open(base).map_err(open_err)?;
    if f.metadata().map_err(open_err)?.is_dir() {
        return Err(Error::Invalid {
            path: base.to_path_buf(),
            reason: "it is a directory".to_string(),
        });
    }
    let size = f.seek(SeekFrom::End(0)).map_err(|source| Error::Io {
        path: base.to_path_buf(),
        what: "cannot find its size",
        source,
    })?;
    let invalid = |reason: String| Error::Invalid {
        path: base.to_path_buf(),
        reason,
    };
    if size == 0 || size % SECTOR_SIZE != 0 {
        return Err(invalid(format!(
            "its size ({size} bytes) is not a positive whole number of {SECTOR_SIZE}-byte sectors"
        )));
    }
    if size > MAX_DISK_SIZE {
        return Err(invalid(format!(
            "its size ({size} bytes) is more than the {} TiB Vireo accepts",
            MAX_DISK_SIZE >> 40
        )));
    }
    Ok(size)
}

fn exists(path: &Path) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        what: "will not replace it",
        source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temporary file in `target`'s directory (so that the final rename stays on one file
/// system); it is removed if dropped before [`persist`].
fn temp_beside(target: &Path) -> Result<NamedTempFile> {
    let name = target
        .file_name()
        .map(|n| format!(".{}.", n.to_string_lossy()))
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&name)
        .suffix(".tmp")
        .tempfile_in(parent_dir(target))
        .map_err(|source| Error::Io {
            path: target.to_path_buf(),
            what: "cannot create a temporary file beside it",
            source,
        })
}

/// Makes `tmp` durable and renames it to `target` (never over an existing file), then makes
/// the rename durable.
fn persist(tmp: NamedTempFile, target: &Path) -> Result<()> {
    let io_err = |what, source| Error::Io {
        path: target.to_path_buf(),
        what,
        source,
    };
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err("cannot sync", e))?;
    tmp.persist_noclobber(target)
        .map_err(|e| io_err("cannot rename the temporary file to it", e.error))?;
    File::open(parent_dir(target))
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync its directory", e))
}
