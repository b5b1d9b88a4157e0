//! The KVM VM: capability checks, in-kernel interrupt controllers and PIT, guest memory slots.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use serde::{Deserialize, Serialize};

use super::pod::pod_bytes;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemoryMmap;

use crate::arch::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm-intel/kvm-amd, or enable nested virtualization)")]
    NoKvm,
    #[error("no permission to open /dev/kvm: run as root or join the group that owns /dev/kvm")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("this host's KVM lacks {0:?}, which vireo-vmm needs")]
    MissingCap(Cap),
    #[error("KVM refused to create a VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM set-up failed ({what}): {error}")]
    Setup {
        what: &'static str,
        error: kvm_ioctls::Error,
    },
}

pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
}

/// The VM-wide KVM state a snapshot keeps: interrupt controllers, PIT, kvmclock.
#[derive(Default, Serialize, Deserialize)]
pub struct VmState {
    #[serde(with = "pod_bytes")]
    pub pic_master: kvm_irqchip,
    #[serde(with = "pod_bytes")]
    pub pic_slave: kvm_irqchip,
    #[serde(with = "pod_bytes")]
    pub ioapic: kvm_irqchip,
    #[serde(with = "pod_bytes")]
    pub pit: kvm_pit_state2,
    #[serde(with = "pod_bytes")]
    pub clock: kvm_clock_data,
}

/// kvmclock and the other KVM paravirtual MSRs (system time, wall clock, async PF, steal
/// time, PV EOI, poll control): saved even where KVM's index list leaves one out.
const KVM_PV_MSRS: &[u32] = &[
    0x11,
    0x12,
    0x4b56_4d00,
    0x4b56_4d01,
    0x4b56_4d02,
    0x4b56_4d03,
    0x4b56_4d04,
    0x4b56_4d05,
];

const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
    Cap::PitState2,
    Cap::Irqfd,
    Cap::ImmediateExit,
    Cap::ExtCpuid,
];

impl Vm {
    pub fn open_kvm() -> Result<Kvm, VmError> {
        Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT => VmError::NoKvm,
            libc::EACCES | libc::EPERM => VmError::KvmPermission,
            _ => VmError::KvmOpen(e),
        })
    }

    /// Creates the VM with its in-kernel IOAPIC/PIC/LAPICs and PIT.
    pub fn new(kvm: Kvm) -> Result<Self, VmError> {
        for cap in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(VmError::MissingCap(*cap));
            }
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let setup = |what| move |error| VmError::Setup { what, error };
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(setup("TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(setup("identity map address"))?;
        fd.create_irq_chip().map_err(setup("irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(setup("PIT"))?;
        Ok(Self { kvm, fd })
    }

    /// Hands every region of `mem` to KVM as a memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        self.set_memory_slots(mem, 0)
    }

    /// Turns KVM's dirty-page logging of every memory slot on or off (live migration).
    pub fn set_dirty_logging(&self, mem: &GuestMemoryMmap, on: bool) -> Result<(), VmError> {
        self.set_memory_slots(mem, if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 })
    }

    /// The pages of slot `slot` (`size` bytes) the vCPUs wrote since the last call, one bit per
    /// 4 KiB page; reading clears the log.
    pub fn dirty_log(&self, slot: u32, size: usize) -> Result<Vec<u64>, VmError> {
        self.fd
            .get_dirty_log(slot, size)
            .map_err(|error| VmError::Setup {
                what: "dirty log",
                error,
            })
    }

    /// The MSRs a snapshot saves: every one KVM lists, and the paravirtual ones.
    pub fn msrs_to_save(&self) -> Result<Vec<u32>, VmError> {
        let list = self
            .kvm
            .get_msr_index_list()
            .map_err(|error| VmError::Setup {
                what: "MSR index list",
                error,
            })?;
        let mut msrs: Vec<u32> = list.as_slice().to_vec();
        msrs.extend_from_slice(KVM_PV_MSRS);
        msrs.sort_unstable();
        msrs.dedup();
        Ok(msrs)
    }

    pub fn save_state(&self) -> Result<VmState, VmError> {
        let setup = |what| move |error| VmError::Setup { what, error };
        let chip = |id| -> Result<kvm_irqchip, VmError> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd.get_irqchip(&mut c).map_err(setup("get irqchip"))?;
            Ok(c)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(setup("get PIT"))?,
            clock: self.fd.get_clock().map_err(setup("get clock"))?,
        })
    }

    /// Loads `state`. The chip IDs come from the snapshot, so each is checked: a state that
    /// names the wrong chip would otherwise overwrite another one.
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        let setup = |what| move |error| VmError::Setup { what, error };
        for (chip, id) in [
            (&state.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&state.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&state.ioapic, KVM_IRQCHIP_IOAPIC),
        ] {
            if chip.chip_id != id {
                return Err(VmError::Setup {
                    what: "set irqchip",
                    error: kvm_ioctls::Error::new(libc::EINVAL),
                });
            }
            self.fd.set_irqchip(chip).map_err(setup("set irqchip"))?;
        }
        self.fd.set_pit2(&state.pit).map_err(setup("set PIT"))?;
        // Only the time itself: the flags KVM_GET_CLOCK reports (TSC_STABLE, ...) are not
        // accepted by KVM_SET_CLOCK.
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(setup("set clock"))?;
        Ok(())
    }

    fn set_memory_slots(&self, mem: &GuestMemoryMmap, flags: u32) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::Setup {
                    what: "memory slot",
                    error: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the caller keeps
            // alive for as long as the VM runs; slots do not overlap because the regions of a
            // GuestMemoryMmap do not.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(|error| VmError::Setup {
                what: "memory slot",
                error,
            })?;
        }
        Ok(())
    }
}
