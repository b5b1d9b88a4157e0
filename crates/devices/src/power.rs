//! The ACPI power-management registers of a hardware-reduced ACPI platform.
//!
//! The FADT points the guest at three one-byte I/O registers inside this device: the sleep
//! control register (a write of SLP_TYP=5 with SLP_EN set is an S5 "soft off"), the sleep
//! status register, and the reset register. This is how an unmodified Linux guest's `poweroff`
//! and `reboot` reach the VMM without emulating a chipset.

use std::sync::Arc;

use crate::bus::BusDevice;

/// Offset of the sleep control register within the device.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register within the device.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register within the device.
pub const RESET_OFFSET: u64 = 2;
/// The value the guest writes to the reset register to reset the machine.
pub const RESET_VALUE: u8 = 0x01;
/// Size of the device's I/O range.
pub const LEN: u64 = 3;
/// The sleep type the DSDT's `_S5_` object names for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

/// What the guest asked of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reset,
}

/// Where a device reports the guest's power requests.
pub type PowerSink = Arc<dyn Fn(PowerAction) + Send + Sync>;

pub struct AcpiPowerDevice {
    sink: PowerSink,
}

impl AcpiPowerDevice {
    pub fn new(sink: PowerSink) -> Self {
        Self { sink }
    }
}

impl BusDevice for AcpiPowerDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status reads as "not waking"; the other registers are write-only.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            SLEEP_CONTROL_OFFSET => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if value & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE {
                    (self.sink)(PowerAction::PowerOff);
                }
            }
            RESET_OFFSET if *value == RESET_VALUE => (self.sink)(PowerAction::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn device() -> (AcpiPowerDevice, Arc<Mutex<Vec<PowerAction>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (
            AcpiPowerDevice::new(Arc::new(move |a| s.lock().unwrap().push(a))),
            seen,
        )
    }

    #[test]
    fn s5_with_slp_en_powers_off_and_reset_value_resets() {
        let (mut dev, seen) = device();
        dev.write(SLEEP_CONTROL_OFFSET, &[(5 << 2) | (1 << 5)]);
        dev.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![PowerAction::PowerOff, PowerAction::Reset]
        );
    }

    #[test]
    fn other_writes_do_nothing() {
        let (mut dev, seen) = device();
        dev.write(SLEEP_CONTROL_OFFSET, &[5 << 2]); // S5 without SLP_EN
        dev.write(SLEEP_CONTROL_OFFSET, &[(3 << 2) | (1 << 5)]); // S3
        dev.write(SLEEP_CONTROL_OFFSET, &[0x34, 0]); // wrong width
        dev.write(RESET_OFFSET, &[0xfe]);
        dev.write(SLEEP_STATUS_OFFSET, &[0xff]);
        dev.write(99, &[RESET_VALUE]);
        let mut b = [0xaa; 4];
        dev.read(1, &mut b);
        assert_eq!(b, [0; 4]);
        assert!(seen.lock().unwrap().is_empty());
    }
}
