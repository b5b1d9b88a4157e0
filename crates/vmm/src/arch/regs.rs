//! Initial CPU state for each way Vireo enters a guest.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

use super::gdt::{
    boot_gdt, segment_from_gdt, CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR, TSS_SELECTOR,
};
use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh,
    /// Linux 64-bit boot protocol (and bare 64-bit ELF kernels): long mode on the boot
    /// identity map, RSI = zero page.
    Long64,
}

pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
}

pub fn setup_regs(vcpu: &VcpuFd, mode: EntryMode, entry: u64) -> Result<(), kvm_ioctls::Error> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
        EntryMode::Long64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    vcpu.set_regs(&regs)
}

pub fn setup_sregs(vcpu: &VcpuFd, mode: EntryMode) -> Result<(), kvm_ioctls::Error> {
    let mut sregs = vcpu.get_sregs()?;
    fill_sregs(&mut sregs, mode);
    vcpu.set_sregs(&sregs)
}

fn fill_sregs(sregs: &mut kvm_sregs, mode: EntryMode) {
    let gdt = boot_gdt();
    let seg = |sel: u16| segment_from_gdt(gdt[usize::from(sel / 8)], sel);
    let data = seg(DATA_SELECTOR);
    sregs.cs = seg(match mode {
        EntryMode::Pvh => CODE32_SELECTOR,
        EntryMode::Long64 => CODE64_SELECTOR,
    });
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = seg(TSS_SELECTOR);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Long64 => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
}

/// Wires the local APIC's LINT0 to ExtINT and LINT1 to NMI, as firmware does on a PC.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_MODE_EXTINT: u32 = 0x7;
    const DELIVERY_MODE_NMI: u32 = 0x4;

    let mut lapic = vcpu.get_lapic()?;
    let regs = &mut lapic.regs;
    let set_mode = |regs: &mut [std::os::raw::c_char; 1024], reg: usize, mode: u32| {
        let mut bytes = [0u8; 4];
        for (b, r) in bytes.iter_mut().zip(&regs[reg..reg + 4]) {
            *b = *r as u8;
        }
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (r, b) in regs[reg..reg + 4].iter_mut().zip(v.to_le_bytes()) {
            *r = b as std::os::raw::c_char;
        }
    };
    set_mode(regs, APIC_LVT0, DELIVERY_MODE_EXTINT);
    set_mode(regs, APIC_LVT1, DELIVERY_MODE_NMI);
    vcpu.set_lapic(&lapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_sregs_enable_paging_on_the_boot_tables() {
        let mut s = kvm_sregs::default();
        fill_sregs(&mut s, EntryMode::Long64);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.cs.selector, CODE64_SELECTOR);
        assert_eq!(s.cs.l, 1);
        let mut p = kvm_sregs::default();
        fill_sregs(&mut p, EntryMode::Pvh);
        assert_eq!((p.cr0 & CR0_PG, p.efer, p.cs.db), (0, 0, 1));
    }
}
