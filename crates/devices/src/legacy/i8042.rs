//! The i8042 keyboard controller, present only for its CPU-reset command (0xFE to port 0x64),
//! which guests use to reboot when ACPI reset is unavailable.

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::power::{PowerAction, PowerSink};

struct ResetLine(PowerSink);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)(PowerAction::Reset);
        Ok(())
    }
}

/// Occupies ports 0x60..=0x64 (offsets 0 and 4 are the data and command ports).
pub struct I8042(I8042Device<ResetLine>);

impl I8042 {
    pub const BASE: u64 = 0x60;
    pub const LEN: u64 = 5;

    pub fn new(sink: PowerSink) -> Self {
        Self(I8042Device::new(ResetLine(sink)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [byte]) => *byte = self.0.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            let _ = self.0.write(off, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn cpu_reset_command_resets() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut dev = I8042::new(Arc::new(move |a| s.lock().unwrap().push(a)));
        dev.write(4, &[0xfe]);
        dev.write(4, &[0xfe, 0]); // wrong width is ignored
        assert_eq!(*seen.lock().unwrap(), vec![PowerAction::Reset]);
    }
}
