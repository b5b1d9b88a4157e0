//! Guest RAM: anonymous memory, allocated lazily, placed at 2 MiB-aligned host addresses.
//!
//! KVM maps guest memory with 2 MiB (nested/extended) page-table entries only where the host
//! address and the guest address agree modulo 2 MiB and the host backs them with a huge page.
//! A plain mmap is only 4 KiB-aligned (Linux before 6.7 does not align large anonymous
//! mappings), which leaves every 4 KiB of guest memory its own second-level fault and mapping:
//! on a nested host, where each such fault is expensive, that alone slows a guest's boot.

use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

const HUGE_PAGE: usize = 2 << 20;

/// Guest memory and the host mappings behind it, unmapped when this is dropped.
pub struct GuestRam {
    mem: Arc<GuestMemoryMmap>,
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
        let mut ram = GuestRam {
            mem: Arc::new(GuestMemoryMmap::new()),
            mappings: Vec::new(),
        };
        let mut guest_regions = Vec::new();
        for &(gpa, size) in regions {
            let size =
                usize::try_from(size).map_err(|_| std::io::Error::other("region too large"))?;
            let host = ram.map_aligned(size, gpa.0 as usize % HUGE_PAGE)?;
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
            // SAFETY: `host` is a fresh read/write private anonymous mapping of `size` bytes,
            // owned by `ram` and unmapped only after every user of the memory is gone.
            let region = unsafe {
                MmapRegionBuilder::new(size)
                    .with_raw_mmap_pointer(host.cast())
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
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
    fn map_aligned(&mut self, size: usize, phase: usize) -> std::io::Result<*mut libc::c_void> {
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
        // SAFETY: [aligned, aligned + size) lies inside the reservation just made (aligned is
        // less than 2 MiB past its start), so MAP_FIXED replaces only memory we own.
        let host = unsafe {
            libc::mmap(
                aligned as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
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
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        if Arc::strong_count(&self.mem) > 1 {
            // Someone still holds the memory (a thread that was not joined): leaking the
            // mappings is safe, unmapping them would not be.
            tracing::warn!("guest memory still in use at exit; not unmapping it");
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
