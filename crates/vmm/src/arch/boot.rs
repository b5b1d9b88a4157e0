//! Loading a kernel, initrd and command line, and writing the boot structures the chosen entry
//! protocol hands the kernel (PVH start info, or the Linux zero page and an identity map).

use std::fs::File;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{self, load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemoryMmap;

use super::layout::*;
use super::regs::EntryMode;

const E820_RAM: u32 = 1;
/// The bzImage's 64-bit entry point is this far into its protected-mode code.
const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0} is not a kernel: neither an x86-64 ELF (vmlinux) nor a bzImage")]
    NotAKernel(String),
    #[error("cannot load kernel {path}: {reason}")]
    KernelLoad { path: String, reason: String },
    #[error(
        "initrd of {size} bytes does not fit in guest memory above the kernel \
         (free: {free} bytes); give the VM more memory"
    )]
    InitrdTooLarge { size: u64, free: u64 },
    #[error("cannot read initrd {path}: {reason}")]
    InitrdRead { path: String, reason: String },
    #[error("kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("invalid kernel command line: {0:?}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write boot parameters to guest memory: {0}")]
    BootParams(String),
    #[error("cannot write boot page tables to guest memory: {0}")]
    PageTables(#[from] vm_memory::GuestMemoryError),
}

/// What was loaded and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub mode: EntryMode,
    pub entry: GuestAddress,
    /// First byte above everything the kernel occupies, its decompression space included.
    pub end: u64,
    pub setup_header: Option<setup_header>,
}

/// Loads an ELF vmlinux (entered through PVH when it has the PVH note, else in 64-bit mode) or
/// a bzImage (entered through the 64-bit Linux boot protocol).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &mut File,
    path: &str,
) -> Result<LoadedKernel, BootError> {
    let himem = Some(GuestAddress(HIMEM_START));
    let load_err = |e: loader::Error| BootError::KernelLoad {
        path: path.to_string(),
        reason: e.to_string(),
    };
    match elf_machine(image) {
        Some(EM_X86_64) => {
            let r = Elf::load(mem, None, image, himem).map_err(load_err)?;
            let (mode, entry) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (EntryMode::Pvh, addr),
                _ => (EntryMode::Long64, r.kernel_load),
            };
            Ok(LoadedKernel {
                mode,
                entry,
                end: r.kernel_end,
                setup_header: None,
            })
        }
        Some(_) => Err(BootError::NotAKernel(path.to_string())),
        None => match BzImage::load(mem, None, image, himem) {
            Ok(r) => {
                let init_size = r.setup_header.map_or(0, |h| u64::from(h.init_size));
                Ok(LoadedKernel {
                    mode: EntryMode::Long64,
                    entry: GuestAddress(r.kernel_load.0 + BZIMAGE_ENTRY_64_OFFSET),
                    end: r.kernel_end.max(r.kernel_load.0 + init_size),
                    setup_header: r.setup_header,
                })
            }
            Err(loader::Error::Bzimage(
                loader::bzimage::Error::InvalidBzImage | loader::bzimage::Error::ReadBzImageHeader,
            )) => Err(BootError::NotAKernel(path.to_string())),
            Err(e) => Err(load_err(e)),
        },
    }
}

const EM_X86_64: u16 = 62;

/// The ELF machine of `image`, or None when it is not an ELF file.
fn elf_machine(image: &mut File) -> Option<u16> {
    use std::io::{Read, Seek, SeekFrom};
    let mut ident = [0u8; 20];
    image.seek(SeekFrom::Start(0)).ok()?;
    let ok = image.read_exact(&mut ident).is_ok();
    image.seek(SeekFrom::Start(0)).ok()?;
    (ok && ident[..4] == *b"\x7fELF").then(|| u16::from_le_bytes([ident[18], ident[19]]))
}

/// Places the initrd at the top of low RAM (below 4 GiB, as every boot protocol accepts),
/// above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    image: &mut File,
    path: &str,
) -> Result<(GuestAddress, u64), BootError> {
    let read_err = |reason: String| BootError::InitrdRead {
        path: path.to_string(),
        reason,
    };
    let size = image.metadata().map_err(|e| read_err(e.to_string()))?.len();
    let mut top = low_ram_end(mem_size);
    if let Some(h) = kernel.setup_header {
        if h.initrd_addr_max != 0 {
            top = top.min(u64::from(h.initrd_addr_max) + 1);
        }
    }
    let floor = kernel.end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let free = top.saturating_sub(floor);
    if size > free {
        return Err(BootError::InitrdTooLarge { size, free });
    }
    let addr = (top - size) & !(PAGE_SIZE - 1);
    mem.read_exact_volatile_from(GuestAddress(addr), image, size as usize)
        .map_err(|e| read_err(e.to_string()))?;
    Ok((GuestAddress(addr), size))
}

pub fn load_command_line(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    if !cmdline.trim().is_empty() {
        c.insert_str(cmdline).map_err(BootError::Cmdline)?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &c)
        .map_err(|e| BootError::BootParams(e.to_string()))
}

/// Real-mode code at the reset vector that does what firmware does there on a warm reset:
/// reset the machine. Linux on a hardware-reduced ACPI platform without EFI reboots by
/// jumping here (its BOOT_EFI reboot falls back to the BIOS), so without it `reboot` hangs.
///
/// ```text
/// mov al, RESET_VALUE ; mov dx, ACPI reset register ; out dx, al ; hlt ; jmp hlt
/// ```
pub fn write_reset_vector(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let port = (ACPI_PM_PORT + devices::power::RESET_OFFSET) as u16;
    let [lo, hi] = port.to_le_bytes();
    let code = [
        0xb0,
        devices::power::RESET_VALUE,
        0xba,
        lo,
        hi,
        0xee,
        0xf4,
        0xeb,
        0xfd,
    ];
    mem.write_slice(&code, GuestAddress(RESET_VECTOR))?;
    Ok(())
}

/// Everything the boot structures describe.
pub struct BootLayout {
    pub mem_size: u64,
    pub cmdline_len: usize,
    pub initrd: Option<(GuestAddress, u64)>,
    pub rsdp: GuestAddress,
}

pub fn write_boot_structures(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    layout: &BootLayout,
) -> Result<(), BootError> {
    match kernel.mode {
        EntryMode::Pvh => write_pvh_start_info(mem, layout),
        EntryMode::Long64 => {
            write_zero_page(mem, kernel.setup_header, layout)?;
            write_identity_map(mem)
        }
    }
}

fn write_pvh_start_info(mem: &GuestMemoryMmap, layout: &BootLayout) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = usable_ram(layout.mem_size)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: layout.rsdp.0,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        nr_modules: u32::from(layout.initrd.is_some()),
        modlist_paddr: if layout.initrd.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some((addr, size)) = layout.initrd {
        let module = hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| BootError::BootParams(e.to_string()))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    layout: &BootLayout,
) -> Result<(), BootError> {
    const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
    const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
    const KERNEL_LOADER_OTHER: u8 = 0xff;
    const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;

    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = layout.cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some((addr, size)) = layout.initrd {
        // The initrd is placed below 4 GiB, so the 32-bit fields hold it.
        params.hdr.ramdisk_image = addr.0 as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = layout.rsdp.0;
    let ram = usable_ram(layout.mem_size);
    for (slot, (addr, size)) in params.e820_table.iter_mut().zip(&ram) {
        slot.addr = *addr;
        slot.size = *size;
        slot.r#type = E820_RAM;
    }
    params.e820_entries = ram.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::BootParams(e.to_string()))
}

/// Identity-maps the first 4 GiB with 2 MiB pages for 64-bit entry.
fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_2M: u64 = 0x80;
    mem.write_obj(PDPT_START | PRESENT_RW, GuestAddress(PML4_START))?;
    for i in 0..PD_COUNT {
        let pd = PD_START + i * PAGE_SIZE;
        mem.write_obj(pd | PRESENT_RW, GuestAddress(PDPT_START + i * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|j| (((i * 512 + j) << 21) | PAGE_2M | PRESENT_RW).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(size: u64) -> GuestMemoryMmap {
        let ranges: Vec<_> = ram_regions(size)
            .into_iter()
            .map(|(a, s)| (a, s as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    fn temp_file(bytes: &[u8]) -> (tempfile_path::TempPath, File) {
        let p = tempfile_path::TempPath::new();
        std::fs::File::create(&p.0)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let f = File::open(&p.0).unwrap();
        (p, f)
    }

    /// A file removed when dropped (kept local: no test-only dependency needed).
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                Self(
                    std::env::temp_dir()
                        .join(format!("vireo-boot-test-{}-{n}", std::process::id())),
                )
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn text_file_is_not_a_kernel() {
        let m = mem(64 * MIB);
        let (_p, mut f) = temp_file(b"#!/bin/sh\necho this is not a kernel\n");
        let err = load_kernel(&m, &mut f, "script.sh").unwrap_err();
        assert!(matches!(err, BootError::NotAKernel(_)), "{err}");
        let (_p, mut empty) = temp_file(b"");
        assert!(load_kernel(&m, &mut empty, "empty").is_err());
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram_and_must_fit() {
        let m = mem(64 * MIB);
        let kernel = LoadedKernel {
            mode: EntryMode::Pvh,
            entry: GuestAddress(0x100_0000),
            end: 60 * MIB,
            setup_header: None,
        };
        let (_p, mut f) = temp_file(&[7u8; 10000]);
        let (addr, size) = load_initrd(&m, 64 * MIB, &kernel, &mut f, "i").unwrap();
        assert_eq!(size, 10000);
        assert_eq!(addr.0 % PAGE_SIZE, 0);
        assert!(addr.0 + size <= 64 * MIB && addr.0 >= 60 * MIB);
        let big = vec![0u8; 5 << 20];
        let (_p, mut f) = temp_file(&big);
        assert!(matches!(
            load_initrd(&m, 64 * MIB, &kernel, &mut f, "i"),
            Err(BootError::InitrdTooLarge { .. })
        ));
    }

    #[test]
    fn cmdline_limits() {
        let m = mem(8 * MIB);
        load_command_line(&m, "console=ttyS0 panic=-1").unwrap();
        let mut buf = [0u8; 23];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0 panic=-1\0");
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            load_command_line(&m, &long),
            Err(BootError::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn reset_vector_writes_the_acpi_reset_register() {
        let m = mem(8 * MIB);
        write_reset_vector(&m).unwrap();
        let mut code = [0u8; 9];
        m.read_slice(&mut code, GuestAddress(RESET_VECTOR)).unwrap();
        assert_eq!(code, [0xb0, 0x01, 0xba, 0x02, 0x06, 0xee, 0xf4, 0xeb, 0xfd]);
    }

    #[test]
    fn identity_map_covers_four_gib() {
        let m = mem(8 * MIB);
        write_identity_map(&m).unwrap();
        let last: u64 = m
            .read_obj(GuestAddress(PD_START + 3 * PAGE_SIZE + 511 * 8))
            .unwrap();
        assert_eq!(last & !0xfff, 4 * GIB - 2 * MIB);
    }
}
