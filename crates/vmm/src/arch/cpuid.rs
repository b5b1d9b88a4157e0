//! The CPUID each vCPU sees: KVM's supported set, with topology filled in per vCPU, the KVM
//! paravirtual leaves narrowed to the features Vireo offers, and the XSAVE leaf (0xD) made to
//! agree with the features shown and with the 4 KiB state that snapshots carry.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_FEATURES: u32 = 0x7;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_AMD_ADDR_SIZES: u32 = 0x8000_0008;

const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_AVX: u32 = 1 << 28;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// KVM paravirtual features (leaf 0x4000_0001 EAX) a guest may use on Vireo.
pub mod kvm_feature {
    /// kvmclock, the paravirtual clock source (old and new MSRs).
    pub const CLOCKSOURCE: u32 = 1 << 0;
    /// Port 0x80 delays are unnecessary.
    pub const NOP_IO_DELAY: u32 = 1 << 1;
    pub const CLOCKSOURCE2: u32 = 1 << 3;
    /// Steal time: how long the host kept a runnable vCPU off a physical CPU.
    pub const STEAL_TIME: u32 = 1 << 5;
    /// Paravirtual end-of-interrupt: most EOIs without a VM exit.
    pub const PV_EOI: u32 = 1 << 6;
    /// Paravirtual spinlocks: a waiting vCPU halts and is kicked instead of spinning.
    pub const PV_UNHALT: u32 = 1 << 7;
    pub const PV_TLB_FLUSH: u32 = 1 << 9;
    pub const PV_SEND_IPI: u32 = 1 << 11;
    pub const PV_SCHED_YIELD: u32 = 1 << 13;
    /// kvmclock is stable across vCPUs.
    pub const CLOCKSOURCE_STABLE: u32 = 1 << 24;

    pub const OFFERED: u32 = CLOCKSOURCE
        | NOP_IO_DELAY
        | CLOCKSOURCE2
        | STEAL_TIME
        | PV_EOI
        | PV_UNHALT
        | PV_TLB_FLUSH
        | PV_SEND_IPI
        | PV_SCHED_YIELD
        | CLOCKSOURCE_STABLE;
}

/// Host facts that shape the CPUID, read once from KVM.
#[derive(Debug, Clone, Copy)]
pub struct CpuidOptions {
    pub nr_vcpus: u8,
    /// KVM emulates the TSC-deadline LAPIC timer (KVM_CAP_TSC_DEADLINE_TIMER).
    pub tsc_deadline: bool,
}

/// The CPUID of vCPU `vcpu_id`, derived from KVM's supported entries.
pub fn vcpu_cpuid(supported: &CpuId, vcpu_id: u8, opts: CpuidOptions) -> CpuId {
    let mut cpuid = supported.clone();
    let n = u32::from(opts.nr_vcpus.max(1));
    let apic_id = u32::from(vcpu_id);
    // Bits needed to number the vCPUs of the (single) package.
    let core_bits = 32 - (n - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        fix_entry(e, apic_id, n, core_bits, opts.tsc_deadline);
    }
    fix_xsave(cpuid.as_mut_slice());
    cpuid
}

fn fix_entry(e: &mut kvm_cpuid_entry2, apic_id: u32, n: u32, core_bits: u32, tsc_deadline: bool) {
    match e.function {
        LEAF_FEATURES => {
            // EBX: initial APIC ID, logical processors per package, CLFLUSH line size (8 * 8).
            e.ebx = (apic_id << 24) | (n.min(255) << 16) | (8 << 8);
            e.ecx |= ECX_HYPERVISOR;
            if tsc_deadline {
                e.ecx |= ECX_TSC_DEADLINE;
            }
            if n > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
            // One thread per core, so only a cache shared by the package (the last level)
            // counts every vCPU.
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { n - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((n - 1) & 0x3f) << 26);
        }
        LEAF_EXT_TOPOLOGY => {
            // Sub-leaf 0: the SMT level (one thread per core); 1: the core level.
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = core_bits;
                    e.ebx = n;
                    e.ecx = (2 << 8) | 1;
                }
                i => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = i & 0xff;
                }
            }
        }
        LEAF_KVM_SIGNATURE => {
            e.eax = LEAF_KVM_FEATURES;
            e.ebx = u32::from_le_bytes(*b"KVMK");
            e.ecx = u32::from_le_bytes(*b"VMKV");
            e.edx = u32::from_le_bytes(*b"M\0\0\0");
        }
        LEAF_KVM_FEATURES => {
            e.eax &= kvm_feature::OFFERED;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_AMD_ADDR_SIZES => {
            // ECX[7:0]: cores per package - 1; ECX[15:12]: APIC ID bits for the core number.
            e.ecx = (e.ecx & !0xf0ff) | ((n - 1) & 0xff) | ((core_bits & 0xf) << 12);
        }
        _ => {}
    }
}

/// XSAVE state components: bits of XCR0 (and of CPUID 0xD.0 EAX:EDX).
pub mod xfeature {
    pub const X87: u64 = 1 << 0;
    pub const SSE: u64 = 1 << 1;
    /// The upper halves of the YMM registers (AVX).
    pub const YMM: u64 = 1 << 2;
    pub const MPX: u64 = (1 << 3) | (1 << 4);
    /// Opmask, ZMM_Hi256 and Hi16_ZMM: enabled together or not at all.
    pub const AVX512: u64 = (1 << 5) | (1 << 6) | (1 << 7);
    pub const PKRU: u64 = 1 << 9;
    /// TILECFG and TILEDATA.
    pub const AMX: u64 = (1 << 17) | (1 << 18);
}

/// Bytes of the XSAVE legacy region (x87 and SSE) and the XSAVE header: the size of an area
/// that holds x87 and SSE state only, and where the first extended component may start.
pub const XSAVE_BASE_BYTES: u32 = 512 + 64;

/// The size of `kvm_xsave`, the area KVM_GET_XSAVE and KVM_SET_XSAVE move: snapshots and
/// migrations carry a vCPU's XSAVE state in it, so the guest is shown no component beyond it.
pub const KVM_XSAVE_BYTES: u32 = 4096;

/// The groups of XSAVE components XCR0 enables together, each with the CPUID feature bit
/// (function, index, register 0..=3 for EAX..EDX, bit mask) whose absence hides it. Linux
/// masks its XSAVE features by the same bits (`xsave_cpuid_features`).
const XSAVE_GROUPS: [(u64, (u32, u32, usize, u32)); 5] = [
    (xfeature::YMM, (LEAF_FEATURES, 0, 2, ECX_AVX)),
    (xfeature::MPX, (LEAF_EXT_FEATURES, 0, 1, 1 << 14)),
    (xfeature::AVX512, (LEAF_EXT_FEATURES, 0, 1, 1 << 16)),
    (xfeature::PKRU, (LEAF_EXT_FEATURES, 0, 2, 1 << 3)),
    (xfeature::AMX, (LEAF_EXT_FEATURES, 0, 3, 1 << 24)),
];

/// The components a guest kernel enables in XCR0 when it finds them: what Linux supports for
/// user state (MPX left out, as Linux has since 5.6).
const BOOT_XCR0_COMPONENTS: u64 = xfeature::X87
    | xfeature::SSE
    | xfeature::YMM
    | xfeature::AVX512
    | xfeature::PKRU
    | xfeature::AMX;

/// 0xD.1 EAX: XSAVEC (compacted format) and XSAVES (compacted, with supervisor state).
const EAX_XSAVEC: u32 = 1 << 1;
const EAX_XSAVES: u32 = 1 << 3;

fn reg(e: &kvm_cpuid_entry2, r: usize) -> u32 {
    [e.eax, e.ebx, e.ecx, e.edx][r]
}

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

/// (size, offset in the standard format, 64-byte aligned when compacted) of extended XSAVE
/// component `i` (2..=62), from its CPUID 0xD sub-leaf; None where the sub-leaf is absent or
/// gives no size.
fn component(entries: &[kvm_cpuid_entry2], i: u32) -> Option<(u32, u32, bool)> {
    find(entries, LEAF_XSAVE, i)
        .filter(|e| e.eax != 0)
        .map(|e| (e.eax, e.ebx, e.ecx & 2 != 0))
}

fn extended(mask: u64) -> impl Iterator<Item = u32> {
    (2..63).filter(move |i| mask & (1 << i) != 0)
}

/// The size of an XSAVE area in the standard format holding the components of `mask`: what
/// CPUID 0xD.0 EBX reports while XCR0 is `mask`, and what Linux computes from the sub-leaves
/// and checks it against ("XSAVE consistency problem: size ... != kernel_size ...").
pub fn xsave_size(entries: &[kvm_cpuid_entry2], mask: u64) -> u32 {
    extended(mask)
        .filter_map(|i| component(entries, i))
        .map(|(size, offset, _)| offset + size)
        .fold(XSAVE_BASE_BYTES, u32::max)
}

/// The size of an XSAVE area in the compacted format (XSAVEC/XSAVES) holding `mask`: what
/// CPUID 0xD.1 EBX reports for XCR0 | IA32_XSS = `mask`.
pub fn xsave_size_compacted(entries: &[kvm_cpuid_entry2], mask: u64) -> u32 {
    extended(mask).filter_map(|i| component(entries, i)).fold(
        XSAVE_BASE_BYTES,
        |end, (size, _, align)| {
            let start = if align { end.next_multiple_of(64) } else { end };
            start + size
        },
    )
}

/// The XCR0 a guest kernel sets on a vCPU with this CPUID: every component it knows of that
/// the CPUID offers. None where the CPUID offers no XSAVE.
///
/// KVM takes a vCPU's XCR0 from the guest's XSETBV, which exits to it on every real CPU; it
/// then sizes CPUID 0xD.0 EBX for it and loads it on each entry. QEMU's TCG before 8.2 (the
/// lab's emulated host) ignores the SVM XSETBV intercept, so there KVM never sees the guest's
/// XCR0: it keeps reporting 576 bytes (x87 and SSE only) and keeps loading XCR0 = x87, Linux
/// finds "size 832 != kernel_size 576" and turns XSAVE off. Setting this XCR0 before the guest
/// runs (KVM_SET_XCRS) makes KVM agree with the guest from the start; on real CPUs the
/// guest's own XSETBV replaces it as usual.
pub fn boot_xcr0(entries: &[kvm_cpuid_entry2]) -> Option<u64> {
    let l1 = find(entries, LEAF_FEATURES, 0)?;
    let d0 = find(entries, LEAF_XSAVE, 0)?;
    if l1.ecx & ECX_XSAVE == 0 {
        return None;
    }
    let mask = u64::from(d0.eax) | (u64::from(d0.edx) << 32);
    Some(mask & BOOT_XCR0_COMPONENTS)
}

/// Makes leaf 0xD agree with the rest of the CPUID, as a guest kernel checks it:
/// - no XSAVE in leaf 1 ECX: leaf 0xD is all zeros;
/// - 0xD.0 EAX:EDX (the XCR0 components) lists a group only where its feature bit (AVX,
///   AVX512F, MPX, PKU, AMX-TILE) is shown, each extended component only with a sub-leaf that
///   gives its size, and no more than fits [`KVM_XSAVE_BYTES`] (highest components dropped);
/// - sub-leaves of components not listed are zeros;
/// - 0xD.0 EBX and ECX are the size for all listed components and 0xD.1 EBX, where XSAVEC or
///   XSAVES is shown, the compacted size for them and the supervisor components of 0xD.1
///   ECX:EDX, as KVM_GET_SUPPORTED_CPUID gives them.
///
/// KVM rewrites both EBX sizes for the vCPU's XCR0 whenever that changes (KVM_SET_CPUID2,
/// KVM_SET_XCRS, the guest's XSETBV); the guest reads those.
pub fn fix_xsave(entries: &mut [kvm_cpuid_entry2]) {
    let xsave = find(entries, LEAF_FEATURES, 0).is_some_and(|e| e.ecx & ECX_XSAVE != 0);
    let Some(d0) = find(entries, LEAF_XSAVE, 0).copied() else {
        return;
    };
    if !xsave {
        for e in entries.iter_mut().filter(|e| e.function == LEAF_XSAVE) {
            (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
        }
        return;
    }
    let mut mask = u64::from(d0.eax) | (u64::from(d0.edx) << 32);
    for (group, (function, index, r, bit)) in XSAVE_GROUPS {
        let shown = find(entries, function, index).is_some_and(|e| reg(e, r) & bit != 0);
        if !shown || mask & group != group {
            mask &= !group;
        }
    }
    for i in extended(mask) {
        if component(entries, i).is_none() {
            mask &= !(1 << i);
        }
    }
    while xsave_size(entries, mask) > KVM_XSAVE_BYTES {
        let top = 63 - mask.leading_zeros();
        let group = XSAVE_GROUPS
            .iter()
            .map(|g| g.0)
            .find(|g| g & (1 << top) != 0)
            .unwrap_or(1 << top);
        mask &= !group;
    }
    let xss =
        find(entries, LEAF_XSAVE, 1).map_or(0, |e| u64::from(e.ecx) | (u64::from(e.edx) << 32));
    let all = xsave_size(entries, mask);
    let compacted = xsave_size_compacted(entries, mask | xss);
    for e in entries.iter_mut().filter(|e| e.function == LEAF_XSAVE) {
        match e.index {
            0 => {
                e.eax = mask as u32;
                e.edx = (mask >> 32) as u32;
                e.ebx = all;
                e.ecx = all;
            }
            1 if e.eax & (EAX_XSAVEC | EAX_XSAVES) != 0 => e.ebx = compacted,
            1 => {}
            i if i < 63 && (mask | xss) & (1 << i) == 0 => {
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> CpuId {
        let leaf = |function, index, eax| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ..Default::default()
        };
        CpuId::from_entries(&[
            leaf(LEAF_FEATURES, 0, 0),
            leaf(LEAF_EXT_TOPOLOGY, 0, 0),
            leaf(LEAF_EXT_TOPOLOGY, 1, 0),
            leaf(LEAF_KVM_SIGNATURE, 0, 0),
            leaf(LEAF_KVM_FEATURES, 0, 0xffff_ffff),
        ])
        .unwrap()
    }

    #[test]
    fn topology_and_pv_features() {
        let opts = CpuidOptions {
            nr_vcpus: 6,
            tsc_deadline: true,
        };
        let c = vcpu_cpuid(&supported(), 5, opts);
        let get = |f, i| {
            *c.as_slice()
                .iter()
                .find(|e| e.function == f && e.index == i)
                .unwrap()
        };
        let l1 = get(LEAF_FEATURES, 0);
        assert_eq!(l1.ebx >> 24, 5);
        assert_eq!((l1.ebx >> 16) & 0xff, 6);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        let core = get(LEAF_EXT_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (3, 6, 5));
        let kvm = get(LEAF_KVM_FEATURES, 0);
        assert_eq!(kvm.eax, kvm_feature::OFFERED);
        assert_ne!(kvm.eax & kvm_feature::PV_UNHALT, 0);
        assert_eq!(get(LEAF_KVM_SIGNATURE, 0).ebx.to_le_bytes(), *b"KVMK");
    }

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn get(c: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *find(c, function, index).unwrap()
    }

    /// The XSAVE sizes KVM reports in 0xD.0 EBX and 0xD.1 EBX for a vCPU whose XCR0 (as KVM
    /// knows it) is `xcr0` (`kvm_update_cpuid_runtime`, `xstate_required_size`).
    fn kvm_runtime_sizes(c: &[kvm_cpuid_entry2], xcr0: u64) -> (u32, u32) {
        let (mut standard, mut compacted) = (576u32, 576u32);
        for i in (2..63).filter(|i| xcr0 & (1 << i) != 0) {
            let s = get(c, 0xd, i);
            standard = standard.max(s.ebx + s.eax);
            let start = if s.ecx & 2 != 0 {
                compacted.next_multiple_of(64)
            } else {
                compacted
            };
            compacted = start + s.eax;
        }
        (standard, compacted)
    }

    /// What Linux 6.1 does with leaf 0xD at boot (arch/x86/kernel/fpu/xstate.c), written out
    /// on its own: the XCR0 it sets, or its "XSAVE consistency problem". It reads 0xD EBX
    /// after its XSETBV, when the vCPU reports it for the XCR0 KVM holds: `kvm_xcr0`, the
    /// guest's own where its XSETBV reaches KVM, whatever the VMM set where it does not.
    fn linux_xstate_init(c: &[kvm_cpuid_entry2], kvm_xcr0: Option<u64>) -> Result<u64, String> {
        let l1 = get(c, 1, 0);
        if l1.ecx & (1 << 26) == 0 {
            return Ok(0);
        }
        let l7 = find(c, 7, 0).copied().unwrap_or_default();
        let d0 = get(c, 0xd, 0);
        let d1 = find(c, 0xd, 1).copied().unwrap_or_default();
        let mut max = u64::from(d0.eax) | (u64::from(d0.edx) << 32);
        // xsave_cpuid_features: a component whose feature bit is clear is dropped.
        let has = [
            (2, l1.ecx & (1 << 28)),
            (3, l7.ebx & (1 << 14)),
            (4, l7.ebx & (1 << 14)),
            (5, l7.ebx & (1 << 16)),
            (6, l7.ebx & (1 << 16)),
            (7, l7.ebx & (1 << 16)),
            (9, l7.ecx & (1 << 3)),
            (17, l7.edx & (1 << 24)),
            (18, l7.edx & (1 << 24)),
        ];
        for (bit, shown) in has {
            if shown == 0 {
                max &= !(1u64 << bit);
            }
        }
        // XFEATURE_MASK_USER_SUPPORTED (no MPX since 5.6); XSETBV(max) follows.
        max &= 0x3 | 0x4 | 0xe0 | 0x200 | 0x6_0000;
        let compacted = d1.eax & (1 << 3) != 0;
        let mut size = 576u32;
        for i in (2..63).filter(|i| max & (1 << i) != 0) {
            let s = get(c, 0xd, i);
            if s.eax == 0 {
                return Err(format!("component {i} has no size"));
            }
            size = if compacted {
                let start = if s.ecx & 2 != 0 {
                    size.next_multiple_of(64)
                } else {
                    size
                };
                start + s.eax
            } else {
                size.max(s.ebx + s.eax)
            };
        }
        let (standard, packed) = kvm_runtime_sizes(c, kvm_xcr0.unwrap_or(max));
        let kernel_size = if compacted { packed } else { standard };
        if size != kernel_size {
            return Err(format!("size {size} != kernel_size {kernel_size}"));
        }
        Ok(max)
    }

    /// The lab's host (QEMU 7.2 TCG, `-cpu EPYC`): XSAVE with AVX, XSAVEOPT, no XSAVEC.
    fn lab_host() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(1, 0, [0x800f12, 0, ECX_XSAVE | ECX_AVX | 1, 0]),
            entry(7, 0, [0, 1 << 3, 0, 0]),
            entry(0xd, 0, [7, 832, 832, 0]),
            entry(0xd, 1, [5, 0, 0, 0]),
            entry(0xd, 2, [256, 576, 0, 0]),
        ]
    }

    #[test]
    fn lab_host_xsave_leaf_passes_linux_check_with_avx() {
        let supported = CpuId::from_entries(&lab_host()).unwrap();
        let opts = CpuidOptions {
            nr_vcpus: 2,
            tsc_deadline: false,
        };
        let c = vcpu_cpuid(&supported, 1, opts);
        let c = c.as_slice();
        let d0 = get(c, 0xd, 0);
        assert_eq!((d0.eax, d0.ebx, d0.ecx, d0.edx), (7, 832, 832, 0));
        assert_eq!(get(c, 0xd, 2).eax, 256);
        // The lab: the guest's XSETBV never reaches KVM, which holds XCR0 = x87 from reset.
        assert_eq!(
            linux_xstate_init(c, Some(xfeature::X87)),
            Err("size 832 != kernel_size 576".to_string())
        );
        // With the XCR0 the VMM sets before the guest runs, KVM and the guest agree.
        let xcr0 = boot_xcr0(c).unwrap();
        assert_eq!(xcr0, xfeature::X87 | xfeature::SSE | xfeature::YMM);
        assert_eq!(linux_xstate_init(c, Some(xcr0)), Ok(xcr0));
        // And where XSETBV reaches KVM (real CPUs), the guest's own XCR0 is the same one.
        assert_eq!(linux_xstate_init(c, None), Ok(xcr0));
        assert_eq!(xsave_size(c, xcr0), 832);
    }

    #[test]
    fn xsave_leaf_follows_the_features_shown() {
        // AVX hidden in leaf 1 but YMM still listed in 0xD: Linux enables x87 and SSE only,
        // and CPUID's sizes (counting YMM) disagree with it.
        let mut c = lab_host();
        c[0].ecx &= !ECX_AVX;
        assert_eq!(boot_xcr0(&c), Some(7), "before: YMM would be set in XCR0");
        assert_eq!(
            linux_xstate_init(&c, boot_xcr0(&c)),
            Err("size 576 != kernel_size 832".to_string())
        );
        fix_xsave(&mut c);
        let d0 = get(&c, 0xd, 0);
        assert_eq!((d0.eax, d0.ebx, d0.ecx), (3, 576, 576));
        assert_eq!(
            get(&c, 0xd, 2).eax,
            0,
            "the hidden component's sub-leaf is cleared"
        );
        assert_eq!(boot_xcr0(&c), Some(3));
        assert_eq!(linux_xstate_init(&c, boot_xcr0(&c)), Ok(3));

        // No XSAVE at all: leaf 0xD says nothing, and XCR0 is left alone.
        let mut c = lab_host();
        c[0].ecx &= !ECX_XSAVE;
        fix_xsave(&mut c);
        assert!(c
            .iter()
            .filter(|e| e.function == LEAF_XSAVE)
            .all(|e| (e.eax, e.ebx, e.ecx, e.edx) == (0, 0, 0, 0)));
        assert_eq!(boot_xcr0(&c), None);
    }

    #[test]
    fn xsave_leaf_fits_the_snapshot_area_and_sizes_the_compacted_format() {
        // A Sapphire Rapids host: AVX-512, PKRU, MPX and AMX, XSAVEC and XSAVES.
        let mut c = vec![
            entry(1, 0, [0x806f8, 0, ECX_XSAVE | ECX_AVX, 0]),
            entry(7, 0, [0, (1 << 14) | (1 << 16), 1 << 3, 1 << 24]),
            entry(0xd, 0, [0x602ff, 11008, 11008, 0]),
            entry(0xd, 1, [0xf, 10752, 0, 0]),
            entry(0xd, 2, [256, 576, 0, 0]),
            entry(0xd, 3, [64, 960, 0, 0]),
            entry(0xd, 4, [64, 1024, 0, 0]),
            entry(0xd, 5, [64, 1088, 0, 0]),
            entry(0xd, 6, [512, 1152, 0, 0]),
            entry(0xd, 7, [1024, 1664, 0, 0]),
            entry(0xd, 9, [8, 2688, 0, 0]),
            entry(0xd, 17, [64, 2752, 2, 0]),
            entry(0xd, 18, [8192, 2816, 6, 0]),
        ];
        fix_xsave(&mut c);
        let d0 = get(&c, 0xd, 0);
        // AMX (8 KiB of tile data) does not fit KVM_GET_XSAVE's 4 KiB and is dropped.
        assert_eq!(d0.eax, 0x2ff);
        assert_eq!(get(&c, 0xd, 18).eax, 0);
        assert!(d0.ecx <= KVM_XSAVE_BYTES);
        assert_eq!((d0.ebx, d0.ecx), (2696, 2696));
        // Compacted, all listed components: 576 + 256 + 64 + 64 + 64 + 512 + 1024 + 8.
        assert_eq!(get(&c, 0xd, 1).ebx, 2568);
        assert_eq!(xsave_size_compacted(&c, 0x2e7), 2440);
        let xcr0 = boot_xcr0(&c).unwrap();
        assert_eq!(
            xcr0, 0x2e7,
            "MPX offered but not enabled by the guest kernel"
        );
        assert_eq!(linux_xstate_init(&c, Some(xcr0)), Ok(xcr0));
        assert_eq!(linux_xstate_init(&c, None), Ok(xcr0));
        // KVM's rule for XCR0 groups: AVX-512 whole, with YMM and SSE.
        assert_eq!(xcr0 & xfeature::AVX512, xfeature::AVX512);
    }
}
