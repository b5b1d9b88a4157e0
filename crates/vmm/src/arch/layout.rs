//! The guest-physical memory map every Vireo VM has.
//!
//! ```text
//! 0x0000_0500  GDT, then IDT (0x540)
//! 0x0000_6000  PVH hvm_start_info, module list, memory map
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  initial stack (grows down)
//! 0x0000_9000  PML4, PDPT (0xa000), four page directories (0xb000..0xf000): 0-4 GiB identity map
//! 0x0002_0000  kernel command line
//! 0x000e_0000  ACPI tables, RSDP first (inside the area Linux scans for it)
//! 0x000f_0000  SMBIOS: 64-bit entry point, 32-bit one (0xf0020), structure table (0xf0040)
//! 0x000f_fff0  reset vector: a stub that resets the machine through the ACPI reset register
//! 0x0010_0000  kernel (bzImage protected-mode code; ELF kernels load where their headers say)
//! ...          initrd at the top of low RAM
//! 0xc000_0000  32-bit device hole up to 4 GiB: IOAPIC, LAPIC, KVM's TSS
//! 0x1_0000_0000 RAM beyond 3 GiB continues here
//! ```

use vm_memory::GuestAddress;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x540;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x6080;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Page directories of 2 MiB pages set up for 64-bit entry: enough for the first 4 GiB, where
/// the kernel, initrd, boot structures and local APIC live.
pub const PD_COUNT: u64 = 4;
pub const CMDLINE_START: u64 = 0x20000;
/// Linux/x86's COMMAND_LINE_SIZE, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0xf_0000;
/// SMBIOS entry points and tables: the start of the 64 KiB Linux scans for them on a machine
/// without EFI (`dmi_scan_machine`), up to the reset vector.
pub const SMBIOS_START: u64 = 0xf_0000;
pub const SMBIOS_END: u64 = RESET_VECTOR;
/// Where a CPU starts after reset (F000:FFF0): guests that reboot "through the BIOS" jump here.
pub const RESET_VECTOR: u64 = 0xf_fff0;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_HOLE_START: u64 = 3 * GIB;
pub const HIGH_RAM_START: u64 = 4 * GIB;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

/// The smallest guest the boot structures above fit in.
pub const MIN_MEMORY: u64 = 4 * MIB;

/// virtio-mmio devices: one 4 KiB slot each from the start of the 32-bit hole, interrupts on
/// IOAPIC pins 16 and up (above the ISA IRQs).
pub const VIRTIO_MMIO_BASE: u64 = MMIO_HOLE_START;
pub const VIRTIO_MMIO_SLOT: u64 = 0x1000;
pub const VIRTIO_GSI_BASE: u32 = 16;
/// KVM's IOAPIC has 24 pins.
pub const MAX_VIRTIO_DEVICES: usize = 8;

/// I/O port of COM1 and its IRQ line.
pub const SERIAL_PORT: u64 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
/// I/O ports of the i8042 keyboard controller (data, command/status) and the keyboard's IRQ.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
pub const KEYBOARD_IRQ: u32 = 1;
/// I/O port of the ACPI power-management registers (sleep control, sleep status, reset).
pub const ACPI_PM_PORT: u64 = 0x600;

/// The host-mapped RAM regions of a guest of `size` bytes: below the 32-bit hole, then above
/// 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low)];
    if size > low {
        regions.push((GuestAddress(HIGH_RAM_START), size - low));
    }
    regions
}

/// The end of RAM below the 32-bit hole.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

/// The RAM the guest may use, as (start, length): the regions minus what the boot area keeps
/// (the EBDA and the legacy video/BIOS area below 1 MiB).
pub fn usable_ram(size: u64) -> Vec<(u64, u64)> {
    let mut out = vec![(0, EBDA_START)];
    let low_end = low_ram_end(size);
    if low_end > HIMEM_START {
        out.push((HIMEM_START, low_end - HIMEM_START));
    }
    if size > low_end {
        out.push((HIGH_RAM_START, size - low_end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_above_three_gib_moves_past_the_hole() {
        assert_eq!(ram_regions(512 * MIB), vec![(GuestAddress(0), 512 * MIB)]);
        assert_eq!(
            ram_regions(16 * GIB),
            vec![
                (GuestAddress(0), 3 * GIB),
                (GuestAddress(4 * GIB), 13 * GIB)
            ]
        );
        assert_eq!(
            usable_ram(5 * GIB),
            vec![
                (0, EBDA_START),
                (HIMEM_START, 3 * GIB - HIMEM_START),
                (4 * GIB, 2 * GIB)
            ]
        );
        let total: u64 = ram_regions(16 * GIB).iter().map(|r| r.1).sum();
        assert_eq!(total, 16 * GIB);
    }
}
