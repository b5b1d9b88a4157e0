//! Device models of the Vireo VMM.
//!
//! Every device here sits behind [`bus::BusDevice`]: the VMM routes a guest's port I/O or MMIO
//! access to it by address and the device never sees anything but an offset into its own range.
//! Everything a guest writes is hostile input: devices accept any offset, size and value without
//! panicking.

pub mod bus;
pub mod legacy;
pub mod log_limit;
pub mod metrics;
pub mod power;
pub mod rate_limiter;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use power::{AcpiPowerDevice, PowerAction, PowerSink};
