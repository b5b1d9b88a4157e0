//! The boot GDT and the segment registers derived from it.

use kvm_bindings::kvm_segment;

/// Flat 32-bit code (PVH entry).
pub const CODE32_SELECTOR: u16 = 0x08;
/// Flat 64-bit code: __BOOT_CS of the Linux 64-bit boot protocol.
pub const CODE64_SELECTOR: u16 = 0x10;
/// Flat data: __BOOT_DS.
pub const DATA_SELECTOR: u16 = 0x18;
pub const TSS_SELECTOR: u16 = 0x20;

/// The table, indexed by selector / 8.
pub fn boot_gdt() -> [u64; 5] {
    [
        0,
        gdt_entry(0xc09b, 0, 0xfffff), // code32: present, DPL0, exec/read, 32-bit, 4 KiB gran
        gdt_entry(0xa09b, 0, 0xfffff), // code64: as above with L set
        gdt_entry(0xc093, 0, 0xfffff), // data: read/write
        gdt_entry(0x808b, 0, 0xfffff), // busy 32-bit TSS
    ]
}

/// Packs access/flags (`flags` = G D/B L AVL in bits 15..12, access byte in 7..0), base and
/// limit into a descriptor.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The hidden part of a segment register as if the descriptor `entry` had been loaded with
/// `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_is_flat_long_mode_code() {
        let gdt = boot_gdt();
        let cs = segment_from_gdt(gdt[(CODE64_SELECTOR / 8) as usize], CODE64_SELECTOR);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.type_),
            (0, 0xffff_ffff, 1, 0, 0xb)
        );
        let cs32 = segment_from_gdt(gdt[(CODE32_SELECTOR / 8) as usize], CODE32_SELECTOR);
        assert_eq!((cs32.l, cs32.db, cs32.present, cs32.s), (0, 1, 1, 1));
        let tss = segment_from_gdt(gdt[(TSS_SELECTOR / 8) as usize], TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
    }
}
