//! The image behind a virtio-blk drive: guest buffers resolved through vm-memory, then handed
//! to a `vireo_storage` backend (a raw file, or a qcow2 overlay and its backing chain).

use std::io;
use std::path::Path;
use std::sync::Arc;

use smallvec::SmallVec;
use vireo_storage::{BlockBackend, Buffer, Format, Transfer};
use vm_memory::bitmap::{AtomicBitmap, Bitmap, BS};
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::GuestMemory;

/// Bytes in a virtio-blk sector.
pub const SECTOR_SIZE: u64 = vireo_storage::SECTOR_SIZE;

/// A guest buffer: `len` bytes at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A read of the image into guest buffers, or a write of them to it.
#[derive(Debug, Clone, Copy)]
pub struct DataTransfer<'r> {
    pub segs: &'r [Segment],
    /// Byte offset in the image.
    pub offset: u64,
    pub write: bool,
}

/// An open disk image.
#[derive(Debug, Clone)]
pub struct DiskFile {
    backend: Arc<dyn BlockBackend>,
    /// Whole sectors in the image; a partial last sector is not part of the disk.
    sectors: u64,
}

impl DiskFile {
    /// Opens a raw image file (or block device), for reading only when `read_only` (the file is
    /// then never opened writable).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, vireo_storage::Error> {
        Self::open_image(path, Format::Raw, read_only, false)
    }

    /// Opens an image of the given format, with direct I/O (no host page cache) when `direct`.
    pub fn open_image(
        path: &Path,
        format: Format,
        read_only: bool,
        direct: bool,
    ) -> Result<Self, vireo_storage::Error> {
        Ok(Self::from_backend(vireo_storage::open(
            path, format, read_only, direct,
        )?))
    }

    pub fn from_backend(backend: Arc<dyn BlockBackend>) -> Self {
        Self {
            sectors: backend.size() / SECTOR_SIZE,
            backend,
        }
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.backend.read_only()
    }

    pub fn format(&self) -> Format {
        self.backend.format()
    }

    /// Reads the image at `offset` into the guest buffers `segs`, filling them all.
    pub fn read_to_guest(
        &self,
        mem: &GuestMemory,
        segs: &[Segment],
        offset: u64,
    ) -> io::Result<()> {
        let guest = slices(mem, segs)?;
        let _dirty = MarkDirtyOnDrop(&guest);
        self.backend.read(&plain(&guest), offset)
    }

    /// Writes the guest buffers `segs` to the image at `offset`.
    pub fn write_from_guest(
        &self,
        mem: &GuestMemory,
        segs: &[Segment],
        offset: u64,
    ) -> io::Result<()> {
        if self.read_only() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.backend.write(&plain(&slices(mem, segs)?), offset)
    }

    /// Carries out `ops` (reads into the guest, writes from it), possibly all in flight at
    /// once, and returns each one's result in order.
    pub fn transfer_batch(
        &self,
        mem: &GuestMemory,
        ops: &[DataTransfer<'_>],
    ) -> Vec<io::Result<()>> {
        let mut results: Vec<Option<io::Result<()>>> = Vec::with_capacity(ops.len());
        let mut guest = Vec::with_capacity(ops.len());
        for op in ops {
            match slices(mem, op.segs) {
                // A read-only backend refuses the writes itself.
                Ok(s) => {
                    results.push(None);
                    guest.push((s, op));
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let bufs: Vec<SmallVec<[Buffer<'_>; 4]>> = guest.iter().map(|(s, _)| plain(s)).collect();
        let transfers: Vec<Transfer<'_, '_>> = guest
            .iter()
            .zip(&bufs)
            .map(|((_, op), b)| Transfer {
                bufs: b,
                offset: op.offset,
                write: op.write,
            })
            .collect();
        let mut done = self.backend.transfer_batch(&transfers).into_iter();
        // Reads wrote guest memory behind vm-memory's back.
        for (s, op) in &guest {
            if !op.write {
                drop(MarkDirtyOnDrop(s));
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    done.next()
                        .unwrap_or_else(|| Err(io::Error::other("the backend lost a transfer")))
                })
            })
            .collect()
    }

    /// Makes every completed write durable (fdatasync; for qcow2 the image's metadata too).
    pub fn flush(&self) -> io::Result<()> {
        self.backend.flush()
    }

    /// Deallocates `len` bytes at `offset`; they read back as zeros.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.backend.discard(offset, len)
    }

    /// Makes `len` bytes at `offset` read as zeros, deallocating them when `unmap` allows.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.backend.write_zeroes(offset, len, unmap)
    }
}

/// Guest RAM behind guest buffers, with its dirty bitmap.
type GuestSlice<'m> = VolatileSlice<'m, BS<'m, AtomicBitmap>>;

/// The host memory behind guest buffers. Every guest range is resolved through vm-memory, so
/// an address outside guest RAM fails the request before any I/O.
fn slices<'m>(mem: &'m GuestMemory, segs: &[Segment]) -> io::Result<SmallVec<[GuestSlice<'m>; 4]>> {
    let mut out = SmallVec::new();
    for s in segs {
        for slice in GuestMemoryBackend::get_slices(mem, s.addr, s.len as usize) {
            out.push(slice.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?);
        }
    }
    Ok(out)
}

/// The same memory as the storage backends take it (no bitmap: marking dirty pages is this
/// module's job, see [`MarkDirtyOnDrop`]).
fn plain<'m>(slices: &[GuestSlice<'m>]) -> SmallVec<[Buffer<'m>; 4]> {
    slices
        .iter()
        // SAFETY: each slice was resolved by vm-memory inside guest RAM, which `mem` keeps
        // mapped for 'm; the new slice covers exactly the same bytes.
        .map(|s| unsafe { VolatileSlice::new(s.ptr_guard_mut().as_ptr(), s.len()) })
        .collect()
}

/// Marks guest memory written behind vm-memory's back (a backend reading into it) in the
/// dirty bitmap when dropped, so live migration sends it again.
struct MarkDirtyOnDrop<'a, 'b>(&'a [GuestSlice<'b>]);

impl Drop for MarkDirtyOnDrop<'_, '_> {
    fn drop(&mut self) {
        for s in self.0 {
            s.bitmap().mark_dirty(0, s.len());
        }
    }
}
