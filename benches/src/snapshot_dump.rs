//! vireo-snapshot-dump: prints what a vireo-vmm snapshot's `state` file says about the things
//! that decide whether a guest runs on: each vCPU's MP state, pending events, local APIC
//! (timer mode, TSC deadline against the TSC, IRR/ISR), the IOAPIC's redirection entries
//! (remote IRR, mask), the PICs, the PIT, the KVM clock, the serial UART's registers and the
//! virtio transports' interrupt and queue state. `make stress-migrate` runs it on the snapshot
//! of each machine whose guest stopped (docs/snapshots.md).
//!
//! usage: vireo-snapshot-dump STATE-FILE [MEMORY-FILE]
//!
//! The state file's header checksums are checked. With the snapshot's memory file, each
//! vCPU's instruction pointer and CR2 are also translated through the guest's page tables
//! (each level's entry, its flags and any bits the guest's physical-address width reserves)
//! and the code bytes at the instruction pointer are printed: what a vCPU that faults again
//! and again is trying to reach.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

use vmm::snapshot::{self, MachineState, HEADER_LEN};
use vmm::vstate::vcpu::VcpuState;

/// A local APIC register (`offset` as in the APIC's MMIO page) from KVM's 1 KiB image.
fn apic_reg(v: &VcpuState, offset: usize) -> u32 {
    let b = &v.lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

/// The vectors set in the 256-bit APIC register array at `base` (ISR, TMR, IRR).
fn apic_vectors(v: &VcpuState, base: usize) -> Vec<u32> {
    (0..8)
        .flat_map(|i| {
            let word = apic_reg(v, base + i * 0x10);
            (0..32)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| i as u32 * 32 + b)
        })
        .collect()
}

fn msr(v: &VcpuState, index: u32) -> Option<u64> {
    v.msrs.iter().find(|m| m.index == index).map(|m| m.data)
}

fn hex(o: Option<u64>) -> String {
    o.map_or("(not saved)".into(), |x| format!("{x:#x}"))
}

fn dump_vcpu(v: &VcpuState, tsc_khz: u32) {
    let mp = match v.mp_state.mp_state {
        0 => "RUNNABLE",
        1 => "UNINITIALIZED",
        2 => "INIT_RECEIVED",
        3 => "HALTED",
        4 => "SIPI_RECEIVED",
        _ => "other",
    };
    println!("vCPU {}: mp_state {} ({mp})", v.id, v.mp_state.mp_state);
    println!(
        "  rip {:#x} rflags {:#x} (IF {}) cr8/TPR {:#x}",
        v.regs.rip,
        v.regs.rflags,
        (v.regs.rflags >> 9) & 1,
        v.sregs.cr8
    );
    let e = &v.events;
    println!(
        "  events: interrupt injected {} nr {} shadow {}; nmi injected {} pending {} masked {}; exception injected {} pending {} nr {}",
        e.interrupt.injected,
        e.interrupt.nr,
        e.interrupt.shadow,
        e.nmi.injected,
        e.nmi.pending,
        e.nmi.masked,
        e.exception.injected,
        e.exception.pending,
        e.exception.nr
    );
    println!(
        "  exception error code {:#x} (has one: {}); CR2 {:#x} CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x}",
        e.exception.error_code,
        e.exception.has_error_code,
        v.sregs.cr2,
        v.sregs.cr0,
        v.sregs.cr3,
        v.sregs.cr4,
        v.sregs.efer
    );
    let lvtt = apic_reg(v, 0x320);
    let mode = match (lvtt >> 17) & 3 {
        0 => "one-shot",
        1 => "periodic",
        2 => "TSC-deadline",
        _ => "reserved",
    };
    println!(
        "  LAPIC: id {:#x} SVR {:#x} TPR {:#x} PPR {:#x} ESR {:#x} LINT0 {:#x} LINT1 {:#x}",
        apic_reg(v, 0x20) >> 24,
        apic_reg(v, 0xf0),
        apic_reg(v, 0x80),
        apic_reg(v, 0xa0),
        apic_reg(v, 0x280),
        apic_reg(v, 0x350),
        apic_reg(v, 0x360)
    );
    println!(
        "  LAPIC timer: LVTT {lvtt:#x} ({mode}, vector {:#x}, {}masked{}) TMICT {:#x} TMCCT {:#x} TDCR {:#x}",
        lvtt & 0xff,
        if lvtt & (1 << 16) != 0 { "" } else { "not " },
        if lvtt & (1 << 12) != 0 { ", delivery pending" } else { "" },
        apic_reg(v, 0x380),
        apic_reg(v, 0x390),
        apic_reg(v, 0x3e0)
    );
    println!(
        "  LAPIC IRR {:x?} ISR {:x?} TMR {:x?}",
        apic_vectors(v, 0x200),
        apic_vectors(v, 0x100),
        apic_vectors(v, 0x180)
    );
    let (tsc, deadline) = (msr(v, 0x10), msr(v, 0x6e0));
    let ahead = match (tsc, deadline) {
        (Some(t), Some(d)) if d != 0 => {
            let diff = d as i128 - t as i128;
            let ms = if tsc_khz != 0 {
                format!(" = {:.3} ms", diff as f64 / f64::from(tsc_khz))
            } else {
                String::new()
            };
            format!(" (deadline - TSC = {diff} cycles{ms})")
        }
        (Some(_), Some(_)) => " (no deadline armed)".into(),
        _ => String::new(),
    };
    println!(
        "  MSRs: TSC {} TSC_DEADLINE {}{ahead} TSC_ADJUST {} APIC_BASE {} kvmclock {} PV_EOI {} MISC_ENABLE {}",
        hex(tsc),
        hex(deadline),
        hex(msr(v, 0x3b)),
        hex(msr(v, 0x1b)),
        hex(msr(v, 0x4b56_4d01)),
        hex(msr(v, 0x4b56_4d04)),
        hex(msr(v, 0x1a0))
    );
}

/// Guest memory as the snapshot's memory file holds it: its regions laid end to end.
struct Memory<'a> {
    file: &'a File,
    regions: &'a [(u64, u64)],
}

impl Memory<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Option<()> {
        let mut off = 0;
        for &(start, len) in self.regions {
            if gpa >= start && gpa + buf.len() as u64 <= start + len {
                return self.file.read_exact_at(buf, off + gpa - start).ok();
            }
            off += len;
        }
        None
    }

    fn u64_at(&self, gpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Some(u64::from_le_bytes(b))
    }
}

/// The guest's physical-address width (CPUID 0x8000_0008 EAX[7:0]; 36 without the leaf).
fn maxphyaddr(v: &VcpuState) -> u32 {
    v.cpuid
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| e.eax & 0xff)
}

/// Walks the guest's 4-level page tables for `va` and prints each entry.
fn walk(mem: &Memory<'_>, v: &VcpuState, what: &str, va: u64) {
    println!("  {what} {va:#x}:");
    if v.sregs.cr4 & (1 << 12) != 0 {
        println!("    5-level paging (CR4.LA57): not walked");
        return;
    }
    let addr_mask = 0x000f_ffff_ffff_f000u64;
    let reserved = addr_mask & !((1u64 << maxphyaddr(v)) - 1);
    let nx_reserved = v.sregs.efer & (1 << 11) == 0;
    let mut table = v.sregs.cr3 & addr_mask;
    for (level, shift) in [("PML4E", 39), ("PDPTE", 30), ("PDE", 21), ("PTE", 12)] {
        let index = (va >> shift) & 0x1ff;
        let Some(e) = mem.u64_at(table + index * 8) else {
            println!("    {level} at {:#x}: outside guest RAM", table + index * 8);
            return;
        };
        let mut flags = Vec::new();
        for (bit, name) in [
            (0, "P"),
            (1, "RW"),
            (2, "US"),
            (5, "A"),
            (6, "D"),
            (7, "PS"),
        ] {
            if e & (1 << bit) != 0 {
                flags.push(name);
            }
        }
        if e & (1 << 63) != 0 {
            flags.push(if nx_reserved {
                "NX(reserved: EFER.NXE=0)"
            } else {
                "NX"
            });
        }
        let rsvd = e & reserved;
        println!(
            "    {level} [{index}] at {:#x}: {e:#018x} {}{}",
            table + index * 8,
            flags.join(" "),
            if rsvd != 0 {
                format!(" RESERVED BITS {rsvd:#x} (MAXPHYADDR {})", maxphyaddr(v))
            } else {
                String::new()
            }
        );
        if e & 1 == 0 {
            return;
        }
        let frame = e & addr_mask;
        if (shift == 30 || shift == 21) && e & (1 << 7) != 0 {
            let page = frame & !((1u64 << shift) - 1);
            let gpa = page + (va & ((1u64 << shift) - 1));
            println!("    -> guest physical {gpa:#x}");
            code(mem, what, gpa);
            return;
        }
        table = frame;
    }
    let gpa = table + (va & 0xfff);
    println!("    -> guest physical {gpa:#x}");
    code(mem, what, gpa);
}

fn code(mem: &Memory<'_>, what: &str, gpa: u64) {
    if what != "rip" {
        return;
    }
    let mut b = [0u8; 16];
    match mem.read(gpa, &mut b) {
        Some(()) => println!("    code bytes: {b:02x?}"),
        None => println!("    code bytes: outside guest RAM"),
    }
}

fn dump(s: &MachineState, memory: Option<&File>) {
    println!(
        "machine: {} vCPUs, {} MiB, TSC {} kHz, {} device(s)",
        s.config.vcpus,
        s.config.memory_mib,
        s.host.tsc_khz,
        s.transports.len()
    );
    for v in &s.vcpus {
        dump_vcpu(v, s.host.tsc_khz);
        // A paging guest's CR3 names its top page table, which lies in its RAM. In the lab a
        // Debian guest has been seen stuck (under vireo-vmm and QEMU alike) with a CR3 4 GiB
        // above its RAM: the emulated host's doing (docs/snapshots.md).
        let pgd = v.sregs.cr3 & 0x000f_ffff_ffff_f000;
        if v.sregs.cr0 & (1 << 31) != 0
            && !s
                .regions
                .iter()
                .any(|&(start, len)| pgd >= start && pgd < start + len)
        {
            println!("  CR3 {pgd:#x} IS OUTSIDE GUEST RAM: the guest cannot reach its page tables");
        }
        if let Some(file) = memory {
            let mem = Memory {
                file,
                regions: &s.regions,
            };
            walk(&mem, v, "rip", v.regs.rip);
            walk(&mem, v, "cr2", v.sregs.cr2);
        }
    }
    // SAFETY: `chip` is a union of plain integer structures, valid for any bytes; the chip IDs
    // name the member KVM_GET_IRQCHIP filled in.
    let ioapic = unsafe { s.vm.ioapic.chip.ioapic };
    println!(
        "IOAPIC: id {:#x} irr {:#x} (pins with a pending edge or level)",
        ioapic.id, ioapic.irr
    );
    for (pin, e) in ioapic.redirtbl.iter().enumerate() {
        // SAFETY: as above: `bits` is the whole 64-bit entry.
        let bits = unsafe { e.bits };
        if bits & (1 << 16) != 0 && bits & 0xff == 0 {
            continue; // masked and never programmed
        }
        println!(
            "  pin {pin:2}: vector {:#04x} {} {} remote-IRR {} delivery-status {} {} dest {:#x}",
            bits & 0xff,
            if bits & (1 << 15) != 0 {
                "level"
            } else {
                "edge"
            },
            if bits & (1 << 13) != 0 {
                "active-low"
            } else {
                "active-high"
            },
            (bits >> 14) & 1,
            (bits >> 12) & 1,
            if bits & (1 << 16) != 0 {
                "MASKED"
            } else {
                "unmasked"
            },
            bits >> 56
        );
    }
    for (name, chip) in [("master", &s.vm.pic_master), ("slave", &s.vm.pic_slave)] {
        // SAFETY: as above.
        let p = unsafe { chip.chip.pic };
        println!(
            "PIC {name}: irr {:#04x} imr {:#04x} isr {:#04x} base {:#04x} elcr {:#04x} auto-eoi {}",
            p.irr, p.imr, p.isr, p.irq_base, p.elcr, p.auto_eoi
        );
    }
    let ch0 = &s.vm.pit.channels[0];
    println!(
        "PIT channel 0: mode {} count {} gate {} flags {:#x}",
        ch0.mode, ch0.count, ch0.gate, s.vm.pit.flags
    );
    println!(
        "KVM clock: {} ns (flags {:#x})",
        s.vm.clock.clock, s.vm.clock.flags
    );
    let u = &s.serial;
    let iir = u.interrupt_identification;
    println!(
        "serial: IER {:#04x} (RDA {}, THRE {}) IIR {iir:#04x} ({}) LSR {:#04x} LCR {:#04x} MCR {:#04x} (OUT2 {}) rx FIFO {} bytes",
        u.interrupt_enable,
        u.interrupt_enable & 1,
        (u.interrupt_enable >> 1) & 1,
        if iir & 1 != 0 {
            "no interrupt pending".to_string()
        } else {
            format!(
                "pending:{}{}",
                if iir & 2 != 0 { " THR-empty" } else { "" },
                if iir & 4 != 0 { " received-data" } else { "" }
            )
        },
        u.line_status,
        u.line_control,
        u.modem_control,
        (u.modem_control >> 3) & 1,
        u.in_buffer.len()
    );
    for (slot, t) in s.transports.iter().enumerate() {
        println!(
            "virtio slot {slot}: type {} status {:#x} interrupt status {:#x} features {:#x}",
            t.device_type, t.status, t.interrupt_status, t.driver_features
        );
        for (i, q) in t.queues.iter().enumerate() {
            println!(
                "  queue {i}: size {} ready {} event_idx {} used ring {:#x}",
                q.size, q.ready, q.event_idx, q.used_ring
            );
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (path, memory) = match args.as_slice() {
        [_, path] => (path, None),
        [_, path, memory] => (path, Some(memory)),
        _ => {
            eprintln!("usage: vireo-snapshot-dump STATE-FILE [MEMORY-FILE]");
            return ExitCode::from(2);
        }
    };
    let memory = match memory.map(File::open).transpose() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("vireo-snapshot-dump: the memory file: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vireo-snapshot-dump: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if bytes.len() < HEADER_LEN || &bytes[..8] != snapshot::MAGIC {
        eprintln!("vireo-snapshot-dump: {path}: not a vireo snapshot state file");
        return ExitCode::FAILURE;
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len) as usize;
    let Some(encoded) = bytes.get(HEADER_LEN..HEADER_LEN + len) else {
        eprintln!("vireo-snapshot-dump: {path}: shorter than its header says");
        return ExitCode::FAILURE;
    };
    let expected = snapshot::header(
        len as u64,
        vmm::checksum::of(encoded),
        u64_at(&bytes, 32),
        u64_at(&bytes, 40),
    );
    if expected[..] != bytes[..HEADER_LEN] {
        eprintln!("vireo-snapshot-dump: {path}: checksum mismatch (the file is damaged)");
        return ExitCode::FAILURE;
    }
    match snapshot::decode_state(encoded) {
        Ok(s) => {
            dump(&s, memory.as_ref());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vireo-snapshot-dump: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
