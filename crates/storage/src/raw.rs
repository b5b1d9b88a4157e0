//! A raw image file (or block device): positional vectored I/O straight between the file and
//! the caller's buffers (guest memory, no bounce buffer), fdatasync for flush, hole punching
//! for discard.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{check_range, read_only_error, BlockBackend, Buffer, Format};

/// iovecs handed to one preadv/pwritev call at most (the kernel's IOV_MAX).
const IOV_MAX: usize = 1024;

#[derive(Debug)]
pub struct RawDisk {
    file: File,
    read_only: bool,
    size: u64,
}

impl RawDisk {
    /// Opens `path`, for reading only when `read_only` (the file is then never opened writable).
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        if file.metadata()?.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        // Works for regular files and block devices alike.
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Self {
            file,
            read_only,
            size,
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_range(self.size, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // Both fit: they end within the file, whose size is an off_t.
        let (off, len) = (offset as i64, len as i64);
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::fallocate64(self.file.as_raw_fd(), mode, off, len) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// preadv/pwritev between the file and `bufs`, looping over short transfers.
    fn transfer(&self, bufs: &[Buffer<'_>], offset: u64, write: bool) -> io::Result<()> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        check_range(self.size, offset, total)?;
        let mut iovs: Vec<libc::iovec> = bufs
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| libc::iovec {
                // The guard only matters for Xen mappings; for mmap'ed memory the pointer stays
                // valid as long as the slice's lifetime, which outlives this call.
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        let mut first = 0;
        let mut pos = offset;
        while first < iovs.len() {
            let end = iovs.len().min(first + IOV_MAX);
            let batch = &iovs[first..end];
            // In range: `pos` stays below offset + total, checked against the size above.
            let off = pos as i64;
            // SAFETY: every iovec points into memory that a VolatileSlice borrowed for at least
            // this call covers, for its length; the kernel reads (pwritev) or writes (preadv)
            // only there.
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

impl BlockBackend for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn format(&self) -> Format {
        Format::Raw
    }

    fn read(&self, bufs: &[Buffer<'_>], offset: u64) -> io::Result<()> {
        self.transfer(bufs, offset, false)
    }

    fn write(&self, bufs: &[Buffer<'_>], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        self.transfer(bufs, offset, true)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
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
}
