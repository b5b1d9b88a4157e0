//! Guest RAM: anonymous memory, allocated lazily, placed at 2 MiB-aligned host addresses.
//!
//! KVM maps guest memory with 2 MiB (nested/extended) page-table entries only where the host
//! address and the guest address agree modulo 2 MiB and the host backs them with a huge page.
//! A plain mmap is only 4 KiB-aligned (Linux before 6.7 does not align large anonymous
//! mappings), which leaves every 4 KiB of guest memory its own second-level fault and mapping:
//! on a nested host, where each such fault is expensive, that alone slows a guest's boot.

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestRegionMmap};

/// Guest memory with a dirty bitmap per region (see `devices::virtio::GuestMemory`).
pub type GuestMemoryMmap = devices::virtio::GuestMemory;

const HUGE_PAGE: usize = 2 << 20;
pub const PAGE_SIZE: usize = 4096;

/// Where a region's contents come from.
#[derive(Clone, Copy)]
pub enum Backing<'a> {
    /// Zero-filled anonymous memory.
    Anonymous,
    /// A private copy-on-write mapping of a file, starting at the given offset for the first
    /// region and continuing in order for the next ones: the guest reads the file's pages,
    /// its writes stay in this process.
    File(BorrowedFd<'a>),
}

/// Guest memory and the host mappings behind it, unmapped when this is dropped.
/// What is behind guest memory, for finding the pages worth reading (see [`Backed::runs`]).
#[derive(Clone)]
pub enum Backed {
    Anonymous,
    /// A snapshot's memory file, mapped privately from offset 0, regions end to end.
    File(Arc<std::fs::File>),
}

impl Backed {
    /// The runs (offset, length) of the region of `len` bytes at host address `host` and
    /// offset `file_off` in the backing that may hold something other than zeros: pages the
    /// process was ever given (pagemap), and for a file also the file's data extents (pages
    /// not yet read from it are not in the page tables). None when that cannot be known.
    pub fn runs(&self, host: *const u8, len: usize, file_off: u64) -> Option<Vec<(usize, usize)>> {
        let touched = touched_runs(host, len).ok()?;
        match self {
            Backed::Anonymous => Some(touched),
            Backed::File(f) => {
                let data = data_extents(f, file_off, len).ok()?;
                Some(union_runs(&touched, &data))
            }
        }
    }
}

/// The data extents of `f` within [off, off + len), as runs relative to `off`, page-aligned.
fn data_extents(f: &std::fs::File, off: u64, len: usize) -> std::io::Result<Vec<(usize, usize)>> {
    let fd = f.as_raw_fd();
    let end = off + len as u64;
    let mut runs = Vec::new();
    let mut pos = off;
    while pos < end {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let page = PAGE_SIZE as u64;
        let start = (data / page) * page;
        let stop = (hole as u64).min(end).next_multiple_of(page).min(end);
        runs.push(((start - off) as usize, (stop - start) as usize));
        pos = stop.max(start + page);
    }
    Ok(runs)
}

/// The union of two sorted lists of runs, sorted and merged.
fn union_runs(a: &[(usize, usize)], b: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut all: Vec<(usize, usize)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(all.len());
    for (s, l) in all {
        match out.last_mut() {
            Some((ps, pl)) if s <= *ps + *pl => *pl = (*pl).max(s + l - *ps),
            _ => out.push((s, l)),
        }
    }
    out
}

pub struct GuestRam {
    mem: Arc<GuestMemoryMmap>,
    backed: Backed,
    mappings: Vec<(*mut libc::c_void, usize)>,
}

// SAFETY: the raw pointers only name mappings this struct owns; they are used for nothing but
// munmap in Drop.
unsafe impl Send for GuestRam {}

impl GuestRam {
    /// Maps `regions` (guest address, size; both multiples of 2 MiB or of 4 KiB at the end).
    /// With `huge_pages`, asks for transparent huge pages behind them: a guest's first touch
    /// then costs one (nested) fault per 2 MiB instead of per 4 KiB. Advice only: a host
    /// without THP keeps 4 KiB pages.
    pub fn new(regions: &[(GuestAddress, u64)], huge_pages: bool) -> std::io::Result<Self> {
        Self::with_backing(regions, huge_pages, Backing::Anonymous)
    }

    /// Like [`GuestRam::new`], with the contents taken from `backing`. A file is mapped, not
    /// read: the cost does not depend on the memory's size, pages are read on first touch.
    pub fn with_backing(
        regions: &[(GuestAddress, u64)],
        huge_pages: bool,
        backing: Backing<'_>,
    ) -> std::io::Result<Self> {
        let mut ram = GuestRam {
            mem: Arc::new(GuestMemoryMmap::new()),
            backed: match backing {
                Backing::Anonymous => Backed::Anonymous,
                Backing::File(fd) => {
                    Backed::File(Arc::new(std::fs::File::from(fd.try_clone_to_owned()?)))
                }
            },
            mappings: Vec::new(),
        };
        let mut guest_regions = Vec::new();
        let mut file_offset: u64 = 0;
        for &(gpa, size) in regions {
            let size =
                usize::try_from(size).map_err(|_| std::io::Error::other("region too large"))?;
            let host = ram.map_aligned(size, gpa.0 as usize % HUGE_PAGE, backing, file_offset)?;
            file_offset += size as u64;
            if huge_pages {
                // SAFETY: [host, host + size) is the mapping just made; MADV_HUGEPAGE changes
                // how it is backed, not its contents.
                if unsafe { libc::madvise(host, size, libc::MADV_HUGEPAGE) } != 0 {
                    tracing::debug!(
                        "madvise(MADV_HUGEPAGE) failed: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
            let bitmap = AtomicBitmap::new(size, NonZeroUsize::new(PAGE_SIZE).unwrap());
            let flags = match backing {
                Backing::Anonymous => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                Backing::File(_) => libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            };
            // SAFETY: `host` is a fresh read/write private mapping of `size` bytes, owned by
            // `ram` and unmapped only after every user of the memory is gone.
            let region = unsafe {
                MmapRegionBuilder::new_with_bitmap(size, bitmap)
                    .with_raw_mmap_pointer(host.cast())
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(flags)
                    .build()
            }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            guest_regions.push(
                GuestRegionMmap::new(region, gpa)
                    .ok_or_else(|| std::io::Error::other("guest region wraps around"))?,
            );
        }
        ram.mem = Arc::new(
            GuestMemoryMmap::from_regions(guest_regions)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        );
        Ok(ram)
    }

    /// Reserves `size + 2 MiB` of address space and maps `size` bytes inside it at an address
    /// congruent to `phase` modulo 2 MiB.
    fn map_aligned(
        &mut self,
        size: usize,
        phase: usize,
        backing: Backing<'_>,
        file_offset: u64,
    ) -> std::io::Result<*mut libc::c_void> {
        let reserve = size
            .checked_add(HUGE_PAGE)
            .ok_or_else(|| std::io::Error::other("region too large"))?;
        // SAFETY: a new PROT_NONE reservation at an address of the kernel's choosing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        self.mappings.push((base, reserve));
        let start = base as usize;
        let aligned = (start - phase).next_multiple_of(HUGE_PAGE) + phase;
        let aligned = if aligned < start {
            aligned + HUGE_PAGE
        } else {
            aligned
        };
        let (flags, fd, offset) = match backing {
            Backing::Anonymous => (libc::MAP_ANONYMOUS, -1, 0),
            Backing::File(fd) => (
                0,
                fd.as_raw_fd(),
                libc::off_t::try_from(file_offset)
                    .map_err(|_| std::io::Error::other("file offset too large"))?,
            ),
        };
        // SAFETY: [aligned, aligned + size) lies inside the reservation just made (aligned is
        // less than 2 MiB past its start), so MAP_FIXED replaces only memory we own. A file
        // mapping is MAP_PRIVATE: the file is never written through it.
        let host = unsafe {
            libc::mmap(
                aligned as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED | flags,
                fd,
                offset,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(host)
    }

    pub fn memory(&self) -> &Arc<GuestMemoryMmap> {
        &self.mem
    }

    pub fn backed(&self) -> &Backed {
        &self.backed
    }
}

/// The runs of pages (offset, length in bytes) of the `len` bytes mapped at `host` that the
/// kernel has ever given a page (present in RAM or swapped out), from /proc/self/pagemap.
/// For anonymous memory every other page was never touched and reads as zero, so a snapshot
/// or a migration can skip it without reading it (which would fault it in).
pub fn touched_runs(host: *const u8, len: usize) -> std::io::Result<Vec<(usize, usize)>> {
    use std::os::unix::fs::FileExt;
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let f = std::fs::File::open("/proc/self/pagemap")?;
    let first = host as usize / PAGE_SIZE;
    let pages = len / PAGE_SIZE;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut buf = vec![0u8; 8 * 8192];
    let mut page = 0;
    while page < pages {
        let n = (pages - page).min(8192);
        f.read_exact_at(&mut buf[..n * 8], ((first + page) * 8) as u64)?;
        for (i, e) in buf[..n * 8].chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(e);
            if u64::from_le_bytes(b) & (PRESENT | SWAPPED) != 0 {
                let off = (page + i) * PAGE_SIZE;
                match runs.last_mut() {
                    Some((start, l)) if *start + *l == off => *l += PAGE_SIZE,
                    _ => runs.push((off, PAGE_SIZE)),
                }
            }
        }
        page += n;
    }
    Ok(runs)
}

/// Whether a page holds only zero bytes.
pub fn is_zero_page(page: &[u8]) -> bool {
    // Compare word by word: this runs over every page of a snapshot.
    let (pre, words, post) =
        // SAFETY: every bit pattern is a valid u64.
        unsafe { page.align_to::<u64>() };
    pre.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        if Arc::strong_count(&self.mem) > 1 {
            // Someone still holds the memory (a thread that was not joined): leaking the
            // mappings is safe, unmapping them would not be.
            tracing::debug!("guest memory still in use at exit; not unmapping it");
            return;
        }
        for &(addr, len) in &self.mappings {
            // SAFETY: each (addr, len) is a reservation made in map_aligned, mapped once.
            unsafe { libc::munmap(addr, len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_merged() {
        assert_eq!(
            union_runs(&[(0, 4096), (16384, 4096)], &[(4096, 8192), (40960, 4096)]),
            vec![(0, 12288), (16384, 4096), (40960, 4096)]
        );
        assert_eq!(union_runs(&[(0, 8192)], &[(4096, 4096)]), vec![(0, 8192)]);
    }

    #[test]
    fn only_touched_pages_and_file_data_are_runs() {
        let ram = GuestRam::new(&[(GuestAddress(0), 8 << 20)], false).unwrap();
        let mem = ram.memory();
        vm_memory::Bytes::write_obj(&**mem, 1u64, GuestAddress(0x10_0000)).unwrap();
        let host =
            vm_memory::GuestMemoryBackend::get_host_address(&**mem, GuestAddress(0)).unwrap();
        let runs = Backed::Anonymous.runs(host, 8 << 20, 0).unwrap();
        assert_eq!(runs, vec![(0x10_0000, 4096)]);

        let path = std::env::temp_dir().join(format!("vireo-runs-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 4096], 0x20_0000).unwrap();
        f.sync_all().unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let runs = data_extents(&f, 0, 8 << 20).unwrap();
        assert!(
            runs.iter()
                .any(|&(s, l)| s <= 0x20_0000 && s + l >= 0x20_1000),
            "{runs:?}"
        );
        assert!(runs.iter().all(|&(s, _)| s % 4096 == 0));
        let file = Backed::File(Arc::new(f)).runs(host, 8 << 20, 0).unwrap();
        assert!(file.iter().any(|&(s, _)| s == 0x10_0000), "{file:?}");
    }
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn regions_are_2mib_aligned_like_their_guest_addresses_and_usable() {
        let ram = GuestRam::new(
            &[
                (GuestAddress(0), 64 << 20),
                (GuestAddress(4 << 30), 6 << 20),
            ],
            true,
        )
        .unwrap();
        let mem = ram.memory();
        for gpa in [0u64, 4 << 30] {
            let host = mem.get_host_address(GuestAddress(gpa)).unwrap() as usize;
            assert_eq!(host % HUGE_PAGE, 0, "region at {gpa:#x}");
        }
        mem.write_obj(0x1234_5678u32, GuestAddress((4 << 30) + (6 << 20) - 4))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((4 << 30) + (6 << 20) - 4))
                .unwrap(),
            0x1234_5678
        );
        assert!(mem.read_obj::<u32>(GuestAddress(64 << 20)).is_err());
    }
}
