//! The raw image file behind a virtio-blk drive: positional I/O straight between the file and
//! guest memory (no bounce buffer), fdatasync for FLUSH, hole punching for DISCARD.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

use vm_memory::bitmap::{AtomicBitmap, Bitmap, BS};
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::GuestMemory;

/// Bytes in a virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// iovecs handed to one preadv/pwritev call at most (the kernel's IOV_MAX).
const IOV_MAX: usize = 1024;

/// A guest buffer: `len` bytes at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    read_only: bool,
    /// Whole sectors in the file; a partial last sector is not part of the disk.
    sectors: u64,
}

impl AsRawFd for DiskFile {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl DiskFile {
    /// Opens `path`, for reading only when `read_only` (the file is then never opened writable).
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        // Works for regular files and block devices alike.
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Self {
            file,
            read_only,
            sectors: size / SECTOR_SIZE,
        })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads the file at `offset` into the guest buffers `segs`, filling them all.
    pub fn read_to_guest(
        &self,
        mem: &GuestMemory,
        segs: &[Segment],
        offset: u64,
    ) -> io::Result<()> {
        self.transfer(mem, segs, offset, false)
    }

    /// Writes the guest buffers `segs` to the file at `offset`.
    pub fn write_from_guest(
        &self,
        mem: &GuestMemory,
        segs: &[Segment],
        offset: u64,
    ) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.transfer(mem, segs, offset, true)
    }

    /// Makes every completed write durable (fdatasync).
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset`; they read back as zeros.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Makes `len` bytes at `offset` read as zeros, deallocating them when `unmap` allows.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap {
            return self.discard(offset, len);
        }
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.discard(offset, len),
            r => r,
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        if len == 0 {
            return Ok(());
        }
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::fallocate64(self.file.as_raw_fd(), mode, off, len) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// preadv/pwritev between the file and guest memory. Every guest range is resolved through
    /// vm-memory, so an address outside guest RAM fails the transfer before any I/O.
    fn transfer(
        &self,
        mem: &GuestMemory,
        segs: &[Segment],
        offset: u64,
        write: bool,
    ) -> io::Result<()> {
        let mut slices = Vec::new();
        for s in segs {
            for slice in GuestMemoryBackend::get_slices(mem, s.addr, s.len as usize) {
                slices.push(slice.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?);
            }
        }
        // preadv writes guest memory behind vm-memory's back: mark it dirty (for live
        // migration) once the I/O is over, whichever way this function returns.
        let _dirty = (!write).then_some(MarkDirtyOnDrop(&slices));
        let mut iovs: Vec<libc::iovec> = slices
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| libc::iovec {
                // The guard only matters for Xen mappings; for mmap'ed RAM the pointer stays
                // valid as long as `mem`, which outlives this call.
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        let mut first = 0;
        let mut pos = offset;
        while first < iovs.len() {
            let end = iovs.len().min(first + IOV_MAX);
            let batch = &iovs[first..end];
            let off = i64::try_from(pos).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: every iovec points into guest RAM that `mem` keeps mapped for the length
            // vm-memory checked above; the kernel reads (pwritev) or writes (preadv) only there.
            let n = unsafe {
                if write {
                    libc::pwritev64(
                        self.file.as_raw_fd(),
                        batch.as_ptr(),
                        batch.len() as i32,
                        off,
                    )
                } else {
                    libc::preadv64(
                        self.file.as_raw_fd(),
                        batch.as_ptr(),
                        batch.len() as i32,
                        off,
                    )
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                // The file shrank under us, or a write made no progress.
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let mut n = n as usize;
            pos += n as u64;
            // Skip what was done, trimming a partly done iovec.
            while n > 0 && first < iovs.len() {
                let iov = &mut iovs[first];
                if n >= iov.iov_len {
                    n -= iov.iov_len;
                    first += 1;
                } else {
                    // SAFETY: `n < iov_len`, so the pointer stays inside the same buffer.
                    iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                    iov.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }
}

/// Marks guest memory written by the kernel (preadv) in vm-memory's dirty bitmap when dropped.
struct MarkDirtyOnDrop<'a, 'b>(&'a [VolatileSlice<'b, BS<'b, AtomicBitmap>>]);

impl Drop for MarkDirtyOnDrop<'_, '_> {
    fn drop(&mut self) {
        for s in self.0 {
            s.bitmap().mark_dirty(0, s.len());
        }
    }
}
