//! Legacy PC devices: the 16550 serial console and the i8042 reset line.

mod i8042;
mod serial;

pub use i8042::I8042;
pub use serial::{Serial, SerialOutput, SerialSnapshot, SerialStateError};

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an eventfd that KVM turns into a guest interrupt (irqfd).
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
