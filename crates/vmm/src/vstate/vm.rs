//! The KVM VM: capability checks, in-kernel interrupt controllers and PIT, guest memory slots.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
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
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::Setup {
                    what: "memory slot",
                    error: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
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
