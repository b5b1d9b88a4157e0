//! KVM state of a running machine: the VM and its vCPUs, and how their run is stopped.

pub mod control;
pub mod pod;
pub mod vcpu;
pub mod vm;
