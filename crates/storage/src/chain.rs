//! Opening a qcow2 image and its backing chain, one layer at a time, under Vireo's rules
//! rather than the headers' say-so.
//!
//! imago can follow a qcow2 header's references by itself; it is not allowed to here
//! (`DenyImplicitOpenGate` everywhere), because a header can name any host file as its backing
//! file or external data file, and without a backing format imago would probe the backing file
//! — a raw file whose first bytes a guest wrote could then pass for a qcow2 image with a
//! backing file of the guest's choosing (/etc/shadow, say). So:
//!
//! - an external data file is refused (Vireo never makes such images);
//! - a backing file must come with its format (raw or qcow2) in the header;
//! - a relative backing name is resolved against the directory of the image that names it;
//! - a chain that comes back to a file it already holds, or is longer than [`MAX_CHAIN`]
//!   images, is refused;
//! - sizes above [`crate::MAX_DISK_SIZE`] are refused.

use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};

use crate::{Error, Format, Result, MAX_DISK_SIZE};

/// Images in one backing chain at most, the top one included. Vireo's own chains have two
/// (overlay, base); the limit is there so that a crafted chain cannot exhaust file descriptors
/// or the stack.
pub const MAX_CHAIN: usize = 8;

pub(crate) type Access = FormatAccess<ImagoFile>;

/// Opens the qcow2 image at `path` and its whole backing chain (every backing layer read-only).
pub(crate) fn open_qcow2(path: &Path, writable: bool) -> Result<Access> {
    let mut seen = Vec::new();
    let access = open_layer(path, Format::Qcow2, writable, &mut seen)?;
    check_size(path, access.size())?;
    Ok(access)
}

fn check_size(path: &Path, size: u64) -> Result<()> {
    if size > MAX_DISK_SIZE {
        return Err(Error::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "its virtual size ({size} bytes) is more than the {} TiB Vireo accepts",
                MAX_DISK_SIZE >> 40
            ),
        });
    }
    Ok(())
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Opens one layer and, for qcow2, the layers under it. `seen` holds the canonical paths of
/// the layers above.
fn open_layer(
    path: &Path,
    format: Format,
    writable: bool,
    seen: &mut Vec<PathBuf>,
) -> Result<Access> {
    let open_err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(path).map_err(open_err)?;
    if seen.contains(&canonical) {
        let top = seen.first().cloned().unwrap_or_else(|| canonical.clone());
        return Err(Error::BackingLoop {
            path: top,
            again: canonical,
        });
    }
    if seen.len() >= MAX_CHAIN {
        return Err(Error::ChainTooLong {
            path: seen.first().cloned().unwrap_or(canonical),
        });
    }
    if std::fs::metadata(&canonical).map_err(open_err)?.is_dir() {
        return Err(invalid(path, "it is a directory"));
    }
    seen.push(canonical);

    let file = ImagoFile::open(
        StorageOpenOptions::new()
            .filename(path)
            .write(writable)
            .direct(false),
    )
    .map_err(open_err)?;

    if format == Format::Qcow2 {
        check_qcow2_header(path)?;
    }
    match format {
        Format::Raw => {
            let raw = Raw::builder(file)
                .write(writable)
                .open(DenyImplicitOpenGate::default())
                .map_err(|e| invalid(path, e.to_string()))?;
            Ok(FormatAccess::new(raw))
        }
        Format::Qcow2 => {
            let mut qcow2: Qcow2<ImagoFile> =
                Qcow2::open_image(file, writable).map_err(|e| invalid(path, e.to_string()))?;
            check_size(
                path,
                imago::format::drivers::FormatDriverInstance::size(&qcow2),
            )?;
            if qcow2.requires_external_data_file() {
                return Err(invalid(
                    path,
                    "it needs an external data file, which Vireo does not support",
                ));
            }
            qcow2.set_data_file(None);
            let backing = match qcow2.implicit_backing_file() {
                None => None,
                Some(name) => {
                    let fmt = match qcow2.implicit_backing_format().map(String::as_str) {
                        Some("raw") | Some("file") => Format::Raw,
                        Some("qcow2") => Format::Qcow2,
                        Some(other) => {
                            return Err(invalid(
                                path,
                                format!("its backing file {name:?} has format {other:?}; Vireo reads raw and qcow2"),
                            ))
                        }
                        None => {
                            return Err(invalid(
                                path,
                                format!(
                                    "its backing file {name:?} has no format in the header; \
                                     Vireo does not guess it (recreate the image with the backing format set)"
                                ),
                            ))
                        }
                    };
                    let backing_path = resolve(path, name);
                    Some(open_layer(&backing_path, fmt, false, seen)?)
                }
            };
            qcow2.set_backing(backing);
            // Nothing is left to open implicitly; the gate makes sure of it.
            qcow2
                .open_implicit_dependencies_gated(DenyImplicitOpenGate::default())
                .map_err(|e| invalid(path, e.to_string()))?;
            Ok(FormatAccess::new(qcow2))
        }
    }
}

/// What imago does not check itself. An encrypted image would read as ciphertext. A refcount
/// table whose first refblock is missing, not cluster-aligned or outside the file sends imago's
/// cluster allocator into unbounded recursion (a stack overflow that aborts the VMM) at the first
/// write; every real image has that refblock, as it counts the header's own cluster.
fn check_qcow2_header(path: &Path) -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let io_err = |what, source| Error::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| io_err("cannot open", e))?;
    let file_len = file.metadata().map_err(|e| io_err("cannot stat", e))?.len();
    let mut header = [0u8; 60];
    (&file)
        .read_exact(&mut header)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => invalid(path, "Not a qcow2 file: it is too short"),
            _ => io_err("cannot read its header", e),
        })?;
    let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
    let be64 = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().unwrap());
    if header[..4] != *b"QFI\xfb" {
        return Err(invalid(path, "Not a qcow2 file (no qcow2 magic)"));
    }
    let crypt_method = be32(32);
    if crypt_method != 0 {
        return Err(invalid(
            path,
            format!("it is encrypted (method {crypt_method}), which Vireo does not support"),
        ));
    }
    // imago checks the cluster size (512 B to 2 MiB) itself; only a valid one matters here.
    let cluster_bits = be32(20);
    if !(9..=21).contains(&cluster_bits) {
        return Ok(());
    }
    let cluster_mask = (1u64 << cluster_bits) - 1;
    let bad_refcounts = |why: &str| invalid(path, format!("its refcount table is damaged: {why}"));
    let rt_offset = be64(48);
    let rt_len = u64::from(be32(56)) << cluster_bits;
    if rt_offset == 0
        || rt_len == 0
        || rt_offset & cluster_mask != 0
        || rt_offset.saturating_add(rt_len) > file_len
    {
        return Err(bad_refcounts(
            "the table lies outside the file or is unaligned",
        ));
    }
    let mut entry = [0u8; 8];
    file.read_exact_at(&mut entry, rt_offset)
        .map_err(|e| io_err("cannot read its refcount table", e))?;
    let refblock0 = u64::from_be_bytes(entry);
    if refblock0 == 0 || refblock0 & cluster_mask != 0 || refblock0 >= file_len {
        return Err(bad_refcounts(
            "its first refcount block is missing, unaligned or outside the file",
        ));
    }
    Ok(())
}

/// A backing file name as qemu reads it: absolute, or relative to the naming image's directory.
fn resolve(image: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        return name.to_path_buf();
    }
    match image.parent() {
        Some(dir) => dir.join(name),
        None => name.to_path_buf(),
    }
}
