//! The CPUID each vCPU sees: KVM's supported set, with topology filled in per vCPU and the KVM
//! paravirtual leaves narrowed to the features Vireo offers.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_AMD_ADDR_SIZES: u32 = 0x8000_0008;

const ECX_TSC_DEADLINE: u32 = 1 << 24;
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
}
