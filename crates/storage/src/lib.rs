//! Disk images for Vireo's virtio-blk drives.
//!
//! - Raw image files (or block devices), and qcow2 images whose backing chain ends in a raw
//!   file: the copy-on-write root disks of the control plane are qcow2 overlays
//!   ([`create_overlay`]) of a raw base image that never changes.
//! - [`flatten`] turns an image (with its backing chain) into one sparse raw file: how an
//!   instance's disk becomes a new image.
//! - [`open`] gives a [`BlockBackend`], what the virtio-blk device reads and writes through.
//!
//! The qcow2 format is implemented by the `imago` crate in its native synchronous mode. Vireo
//! opens every layer of a backing chain itself instead of letting imago follow the headers: an
//! image file is hostile input, so a chain that loops, is deeper than [`MAX_CHAIN`], names a
//! backing file without saying its format (which would mean probing a file that may hold what a
//! guest wrote) or needs an external data file is refused before any I/O.

mod chain;
mod image;
mod null;
mod qcow2;
mod raw;
mod uring;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use vm_memory::VolatileSlice;

pub use chain::MAX_CHAIN;
pub use image::{create_overlay, detect_format, flatten, flatten_format, open};
pub use null::NullDisk;

/// The largest virtual disk accepted from an image header or a base file: 64 TiB. Bigger ones
/// are far more likely a corrupt or hostile header than a real disk.
pub const MAX_DISK_SIZE: u64 = 64 << 40;

/// Bytes in a virtio-blk sector; disk sizes are whole sectors.
pub const SECTOR_SIZE: u64 = 512;

/// The format of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            _ => Err(Error::UnknownFormat(s.to_string())),
        }
    }
}

/// Why an image could not be opened, created or flattened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown image format {0:?}: use raw or qcow2")]
    UnknownFormat(String),
    #[error("cannot open {}: {}", path.display(), describe(source))]
    Open { path: PathBuf, source: io::Error },
    #[error("{} is not a usable image: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: its backing chain comes back to {}", path.display(), again.display())]
    BackingLoop { path: PathBuf, again: PathBuf },
    #[error("{}: its backing chain is longer than {MAX_CHAIN} images", path.display())]
    ChainTooLong { path: PathBuf },
    #[error("{}: {what}: {}", path.display(), describe(source))]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

/// A short reason for an I/O error, without Rust's "(os error N)" suffix where a plain word
/// says it.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Guest memory (or any memory) that a request reads into or writes from.
pub type Buffer<'a> = VolatileSlice<'a, ()>;

/// One read or write of a batch handed to [`BlockBackend::transfer_batch`].
#[derive(Debug)]
pub struct Transfer<'a, 'b> {
    pub bufs: &'a [Buffer<'b>],
    pub offset: u64,
    pub write: bool,
}

/// What virtio-blk does its I/O through: an open image, addressed in bytes.
///
/// Every method takes `&self`, so one backend can serve requests from several threads. Offsets
/// and lengths are checked against [`BlockBackend::size`] here too (a request past the end is an
/// error, never a write past the end), although the device checks them first.
pub trait BlockBackend: Send + Sync + fmt::Debug {
    /// The virtual disk's size in bytes.
    fn size(&self) -> u64;

    /// Whether writes, discards and write-zeroes are refused.
    fn read_only(&self) -> bool;

    /// The image's format.
    fn format(&self) -> Format;

    /// Fills `bufs`, in order, from the disk at `offset`.
    fn read(&self, bufs: &[Buffer<'_>], offset: u64) -> io::Result<()>;

    /// Writes `bufs`, in order, to the disk at `offset`.
    fn write(&self, bufs: &[Buffer<'_>], offset: u64) -> io::Result<()>;

    /// Carries out every transfer of `ops` and returns each one's result, in the same order.
    /// They may run at once (several in flight), so no two should touch the same bytes when
    /// one of them writes. The default runs them one after the other.
    fn transfer_batch(&self, ops: &[Transfer<'_, '_>]) -> Vec<io::Result<()>> {
        ops.iter()
            .map(|op| match op.write {
                true => self.write(op.bufs, op.offset),
                false => self.read(op.bufs, op.offset),
            })
            .collect()
    }

    /// Makes every completed write durable: it survives a host crash once this returns.
    fn flush(&self) -> io::Result<()>;

    /// Tells the image that `len` bytes at `offset` are no longer needed. They read back as
    /// zeros afterwards (never as older data, such as a qcow2 backing file's).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes `len` bytes at `offset` read as zeros; `unmap` allows deallocating them.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

/// Checks that `len` bytes at `offset` lie on a disk of `size` bytes.
fn check_range(size: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{len} bytes at {offset} lie past the end of the disk ({size} bytes)"),
        )),
    }
}

fn read_only_error() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

#[cfg(test)]
mod tests;
