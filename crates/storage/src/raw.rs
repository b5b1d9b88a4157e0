//! A raw image file (or block device): positional vectored I/O straight between the file and
//! the caller's buffers (guest memory, no bounce buffer), fdatasync for flush, hole punching
//! for discard. With direct I/O (O_DIRECT) the host's page cache is bypassed: data moves once,
//! between the device and guest memory, and is not cached twice (by the guest and the host).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use smallvec::SmallVec;

use crate::uring::{Job, Outcome, Ring};
use crate::{check_range, read_only_error, BlockBackend, Buffer, Format, Transfer};

/// iovecs handed to one preadv/pwritev call at most (the kernel's IOV_MAX).
const IOV_MAX: usize = 1024;

/// The alignment direct I/O is given on a regular file: file systems ask for their block size
/// or the device's logical block size, at most a page.
const FILE_DIRECT_ALIGN: u64 = 4096;

#[derive(Debug)]
pub struct RawDisk {
    /// The file, buffered.
    file: File,
    /// With direct I/O: the same file opened with O_DIRECT, used for every transfer whose
    /// offset, lengths and buffer addresses are multiples of `align`; the others (and any the
    /// kernel refuses) go through `file`. The kernel keeps both views coherent: a direct read
    /// first writes back cached pages of its range, a direct write drops them.
    direct: Option<(File, u64)>,
    read_only: bool,
    size: u64,
    /// Batches of transfers go through this io_uring, in flight together.
    ring: Ring,
}

impl RawDisk {
    /// Opens `path`, for reading only when `read_only` (the file is then never opened
    /// writable), with direct I/O when `direct`.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> io::Result<Self> {
        let mut options = OpenOptions::new();
        options.read(true).write(!read_only);
        let mut file = options.open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        // Works for regular files and block devices alike.
        let size = file.seek(SeekFrom::End(0))?;
        let direct = if direct {
            let align = if meta.file_type().is_block_device() {
                logical_block_size(&file)?
            } else {
                FILE_DIRECT_ALIGN
            };
            // Reopened through the open file, not the path, so both are the same file even if
            // the path is replaced meanwhile.
            let again = Path::new("/proc/self/fd").join(file.as_raw_fd().to_string());
            let direct_file = options
                .custom_flags(libc::O_DIRECT)
                .open(&again)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EINVAL) => io::Error::other(
                        "its file system does not support direct I/O (O_DIRECT); leave 'direct' off",
                    ),
                    _ => e,
                })?;
            Some((direct_file, align))
        } else {
            None
        };
        Ok(Self {
            file,
            direct,
            read_only,
            size,
            ring: Ring::default(),
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

    /// Moves `bufs` to or from the file at `offset`: directly when direct I/O is on and the
    /// request is aligned for it, through the page cache otherwise.
    fn transfer(&self, bufs: &[Buffer<'_>], offset: u64, write: bool) -> io::Result<()> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        check_range(self.size, offset, total)?;
        if let Some(direct) = self.direct_for(bufs, offset) {
            match self.transfer_on(direct, bufs, offset, write) {
                // Repeating what may have been done is harmless: the same bytes, to the same
                // places.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                r => return r,
            }
        }
        self.transfer_on(&self.file, bufs, offset, write)
    }

    /// The direct-I/O file, when there is one and the transfer is aligned for it.
    fn direct_for(&self, bufs: &[Buffer<'_>], offset: u64) -> Option<&File> {
        let (direct, align) = self.direct.as_ref()?;
        let aligned = |n: u64| n.is_multiple_of(*align);
        let fits = aligned(offset)
            && bufs.iter().all(|b| {
                aligned(b.len() as u64) && aligned(b.ptr_guard().as_ptr() as usize as u64)
            });
        fits.then_some(direct)
    }

    /// preadv/pwritev between `file` and `bufs`, looping over short transfers.
    fn transfer_on(
        &self,
        file: &File,
        bufs: &[Buffer<'_>],
        offset: u64,
        write: bool,
    ) -> io::Result<()> {
        let mut iovs = iovecs(bufs);
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
                    libc::pwritev64(file.as_raw_fd(), batch.as_ptr(), batch.len() as i32, off)
                } else {
                    libc::preadv64(file.as_raw_fd(), batch.as_ptr(), batch.len() as i32, off)
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

/// The iovecs of `bufs`, empty ones left out (inline for the usual one or two buffers: no
/// allocation per transfer).
fn iovecs(bufs: &[Buffer<'_>]) -> SmallVec<[libc::iovec; 4]> {
    bufs.iter()
        .filter(|s| !s.is_empty())
        .map(|s| libc::iovec {
            // The guard only matters for Xen mappings; for mmap'ed memory the pointer stays
            // valid as long as the slice's lifetime, which outlives the I/O.
            iov_base: s.ptr_guard_mut().as_ptr().cast(),
            iov_len: s.len(),
        })
        .collect()
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

    /// Two transfers or more go through the io_uring, in flight together. One the ring did
    /// not complete in full (a short transfer, direct I/O refused, no io_uring here) is done
    /// again by [`RawDisk::transfer`]: the same bytes to the same places.
    fn transfer_batch(&self, ops: &[Transfer<'_, '_>]) -> Vec<io::Result<()>> {
        let mut results: Vec<Option<io::Result<()>>> = ops.iter().map(|_| None).collect();
        let mut jobs = Vec::new();
        let mut job_of = Vec::new(); // (op index, bytes asked, direct)
        if ops.len() > 1 {
            for (i, op) in ops.iter().enumerate() {
                let total: u64 = op.bufs.iter().map(|b| b.len() as u64).sum();
                if op.write && self.read_only {
                    results[i] = Some(Err(read_only_error()));
                    continue;
                }
                if let Err(e) = check_range(self.size, op.offset, total) {
                    results[i] = Some(Err(e));
                    continue;
                }
                // A Vec: the ring reads the iovecs where they are while the batch runs.
                let iovecs = iovecs(op.bufs).into_vec();
                if iovecs.is_empty() || iovecs.len() > IOV_MAX {
                    continue;
                }
                let direct = self.direct_for(op.bufs, op.offset);
                jobs.push(Job {
                    fd: direct.unwrap_or(&self.file).as_raw_fd(),
                    iovecs,
                    offset: op.offset,
                    write: op.write,
                });
                job_of.push((i, total, direct.is_some()));
            }
        }
        if !jobs.is_empty() {
            if let Some(outcomes) = self.ring.run(&jobs) {
                for (o, (i, total, direct)) in outcomes.into_iter().zip(job_of) {
                    results[i] = match o {
                        Outcome::Moved(n) if n as u64 == total => Some(Ok(())),
                        // Direct I/O refused, or an interruption: done again below.
                        Outcome::Failed(e)
                            if !(matches!(e, libc::EINTR | libc::EAGAIN)
                                || direct && e == libc::EINVAL) =>
                        {
                            Some(Err(io::Error::from_raw_os_error(e)))
                        }
                        _ => None,
                    };
                }
            }
        }
        ops.iter()
            .zip(results)
            .map(|(op, r)| r.unwrap_or_else(|| self.transfer(op.bufs, op.offset, op.write)))
            .collect()
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

/// A block device's logical block size: what its direct I/O must be aligned to.
fn logical_block_size(file: &File) -> io::Result<u64> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int to the pointer, which points at `size`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    match u64::try_from(size) {
        Ok(n) if n.is_power_of_two() => Ok(n),
        _ => Err(io::Error::other(format!(
            "the device reports a logical block size of {size}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    const LEN: usize = 1 << 20;

    /// A file for direct I/O: in the build directory, since /tmp may be a tmpfs, whose
    /// "direct" I/O goes through the page cache it is made of.
    fn image() -> (tempfile::TempDir, std::path::PathBuf) {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(base).unwrap();
        let p = dir.path().join("disk.raw");
        let bytes: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, bytes).unwrap();
        (dir, p)
    }

    /// A zeroed buffer whose address is a multiple of 4096, as guest pages are.
    struct Aligned(*mut u8, std::alloc::Layout);

    impl Aligned {
        fn new(len: usize) -> Self {
            let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
            // SAFETY: the layout has a non-zero size.
            Self(unsafe { std::alloc::alloc_zeroed(layout) }, layout)
        }
        fn buf(&self) -> Buffer<'_> {
            // SAFETY: the allocation is valid for its length while `self` lives.
            unsafe { Buffer::new(self.0, self.1.size()) }
        }
    }

    impl Drop for Aligned {
        fn drop(&mut self) {
            // SAFETY: allocated with this layout in `new`.
            unsafe { std::alloc::dealloc(self.0, self.1) }
        }
    }

    /// How many of the pages of `file` in [offset, offset + len) are in the page cache.
    fn cached_pages(file: &File, offset: usize, len: usize) -> usize {
        // SAFETY: a fresh shared read-only mapping of the file; unmapped below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let mut vec = vec![0u8; len / 4096];
        // SAFETY: the range lies inside the mapping; `vec` has one byte per page.
        let r = unsafe { libc::mincore(at.cast::<u8>().add(offset).cast(), len, vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: mapped above with this length.
        unsafe { libc::munmap(at, LEN) };
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn direct_io_bypasses_the_page_cache_and_still_takes_unaligned_requests() {
        let (_dir, path) = image();
        let disk = RawDisk::open(&path, false, true).unwrap();
        let (direct, align) = disk.direct.as_ref().expect("direct I/O was asked for");
        // SAFETY: F_GETFL on an fd we own.
        let flags = unsafe { libc::fcntl(direct.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_DIRECT, 0);
        assert_eq!(*align, FILE_DIRECT_ALIGN);
        let plain = File::open(&path).unwrap();
        // SAFETY: advice on an fd we own: drop the file's cached pages, written back above.
        unsafe { libc::posix_fadvise(plain.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };

        // An aligned write and read move nothing through the page cache.
        let src = Aligned::new(64 << 10);
        src.buf().write_slice(&[0xab; 64 << 10], 0).unwrap();
        disk.write(&[src.buf()], 256 << 10).unwrap();
        let dst = Aligned::new(64 << 10);
        disk.read(&[dst.buf()], 256 << 10).unwrap();
        let mut got = vec![0u8; 64 << 10];
        dst.buf().read_slice(&mut got, 0).unwrap();
        assert!(got.iter().all(|&b| b == 0xab));
        assert_eq!(cached_pages(&plain, 256 << 10, 64 << 10), 0);

        // Unaligned requests go through the page cache and see the direct writes.
        let mut odd = vec![0x5au8; 100];
        disk.write(&[odd.as_mut_slice().into()], (256 << 10) + 10)
            .unwrap();
        let mut back = vec![0u8; 120];
        disk.read(&[back.as_mut_slice().into()], 256 << 10).unwrap();
        assert_eq!(&back[..10], &[0xab; 10]);
        assert_eq!(&back[10..110], &[0x5a; 100]);
        assert_eq!(&back[110..], &[0xab; 10]);
        // And a direct read after them sees them too.
        disk.read(&[dst.buf()], 256 << 10).unwrap();
        dst.buf().read_slice(&mut got, 0).unwrap();
        assert_eq!(&got[..120], &back[..]);
        disk.flush().unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[(256 << 10)..(256 << 10) + 120], &back[..]);
        assert_eq!(on_disk[LEN - 1], ((LEN - 1) % 251) as u8);
    }

    #[test]
    fn buffered_io_goes_through_the_page_cache() {
        // The check above can fail: without direct I/O the same write is cached.
        let (_dir, path) = image();
        let disk = RawDisk::open(&path, false, false).unwrap();
        assert!(disk.direct.is_none());
        let plain = File::open(&path).unwrap();
        // SAFETY: as above.
        unsafe { libc::posix_fadvise(plain.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let src = Aligned::new(64 << 10);
        disk.write(&[src.buf()], 256 << 10).unwrap();
        assert_eq!(cached_pages(&plain, 256 << 10, 64 << 10), 16);
    }
}
