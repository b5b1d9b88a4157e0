//! A qcow2 image (and its backing chain) as a [`BlockBackend`], through imago.

use std::io;
use std::path::Path;
use std::sync::RwLock;

use imago::io_buffers::{IoVector, IoVectorMut};

use crate::chain::{open_qcow2, Access};
use crate::{check_range, read_only_error, BlockBackend, Buffer, Format, Result};

#[derive(Debug)]
pub struct Qcow2Disk {
    /// Reads, writes and write-zeroes share the image (imago serialises what must be inside);
    /// a discard takes it alone, because deallocating clusters invalidates mappings that
    /// concurrent requests may hold.
    access: RwLock<Access>,
    read_only: bool,
    size: u64,
}

impl Qcow2Disk {
    pub fn open(path: &Path, read_only: bool) -> Result<Self> {
        let access = open_qcow2(path, !read_only)?;
        Ok(Self {
            size: access.size(),
            access: RwLock::new(access),
            read_only,
        })
    }

    fn shared(&self) -> std::sync::RwLockReadGuard<'_, Access> {
        // A panic elsewhere cannot leave imago's state half-changed under this lock: imago
        // keeps its own locks inside. Serve on.
        self.access.read().unwrap_or_else(|e| e.into_inner())
    }

    fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, Access> {
        self.access.write().unwrap_or_else(|e| e.into_inner())
    }

    fn writable(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_range(self.size, offset, len)
    }
}

fn total(bufs: &[Buffer<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

impl BlockBackend for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn read(&self, bufs: &[Buffer<'_>], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, total(bufs))?;
        // The guard keeps the memory mapped while imago uses the vector.
        let (iov, _guard) = IoVectorMut::from_volatile_slice(bufs);
        self.shared().readv(iov, offset)
    }

    fn write(&self, bufs: &[Buffer<'_>], offset: u64) -> io::Result<()> {
        self.writable(offset, total(bufs))?;
        let (iov, _guard) = IoVector::from_volatile_slice(bufs);
        self.shared().writev(iov, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        let access = self.shared();
        // flush() writes imago's cached metadata (L2 tables, refcounts) to the file; sync()
        // then makes the file durable.
        access.flush()?;
        access.sync()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // discard_to_zero: the range reads as zeros afterwards, not as the backing file's data,
        // and whole clusters are freed (partial ones are written with zeros).
        self.exclusive().discard_to_zero(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap {
            return self.discard(offset, len);
        }
        self.writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.shared().write_zeroes(offset, len)
    }
}
