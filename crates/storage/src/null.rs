//! A backend that moves no data, standing in for an open image: the same size, format and
//! read-only state, but reads leave the buffers as they are and writes go nowhere. It measures
//! what a guest's I/O costs without the disk's share (the guest's own path, the virtqueue and
//! the VMM), as QEMU's null-co driver or fio's null engine do. A benchmark tool, not storage:
//! nothing written to it can be read back.

use std::io;

use crate::{check_range, read_only_error, BlockBackend, Buffer, Format};

#[derive(Debug)]
pub struct NullDisk {
    size: u64,
    read_only: bool,
    format: Format,
}

impl NullDisk {
    /// A null disk in the place of `image`, which it never touches.
    pub fn standing_in_for(image: &dyn BlockBackend) -> Self {
        Self {
            size: image.size(),
            read_only: image.read_only(),
            format: image.format(),
        }
    }

    /// The checks a real disk makes (range, read-only), with nothing moved after them.
    fn check(&self, offset: u64, len: u64, write: bool) -> io::Result<()> {
        if write && self.read_only {
            return Err(read_only_error());
        }
        check_range(self.size, offset, len)
    }
}

fn total(bufs: &[Buffer<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

impl BlockBackend for NullDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn format(&self) -> Format {
        self.format
    }

    fn read(&self, bufs: &[Buffer<'_>], offset: u64) -> io::Result<()> {
        self.check(offset, total(bufs), false)
    }

    fn write(&self, bufs: &[Buffer<'_>], offset: u64) -> io::Result<()> {
        self.check(offset, total(bufs), true)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.check(offset, len, true)
    }
}
