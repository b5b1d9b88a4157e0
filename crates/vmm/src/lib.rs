//! The engine of `vireo-vmm`: builds a KVM virtual machine from a [`config::VmConfig`], boots
//! a Linux kernel (or any x86-64 ELF or bzImage) in it and runs it until the guest powers off,
//! resets or faults.

pub mod api;
pub mod arch;
pub mod checksum;
pub mod config;
pub mod handle;
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod migration;
pub mod seccomp;
pub mod snapshot;
pub mod vstate;

pub use config::VmConfig;
pub use machine::{run, Error, RunOptions, RunReport};
pub use vstate::control::{ExitCounts, GuestFault, StopReason};
