//! x86-64 machine set-up: the guest-physical memory map, boot protocols, CPU state and
//! firmware tables. Nothing here runs a vCPU; it only writes guest memory and builds the
//! structures KVM is given.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod msr;
pub mod regs;
pub mod smbios;
