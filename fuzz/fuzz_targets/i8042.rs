//! The i8042 keyboard controller: any sequence of guest port I/O (data and command ports, other
//! offsets and widths) mixed with host Ctrl-Alt-Del presses. Checks that the output buffer
//! always runs dry within the model's queue bound, so that no byte sequence makes it grow or
//! leaves a guest's polling loop reading forever.
#![no_main]

use std::sync::Arc;

use devices::legacy::{EventFdTrigger, I8042};
use devices::{BusDevice, PowerSink};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

/// More than the model's 32-byte queue plus the output buffer.
const MAX_PENDING: usize = 40;

fn drain(dev: &mut I8042) {
    let mut n = 0;
    loop {
        let mut status = [0u8];
        dev.read(4, &mut status);
        if status[0] & 1 == 0 {
            return;
        }
        dev.read(0, &mut [0u8]);
        n += 1;
        assert!(n <= MAX_PENDING, "the output buffer never runs dry");
    }
}

fuzz_target!(|data: &[u8]| {
    let sink: PowerSink = Arc::new(|_| {});
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut dev = I8042::new(sink, EventFdTrigger::new(irq));
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let v = bytes.next().unwrap_or(0);
        match op % 8 {
            0 | 1 => dev.write(0, &[v]),
            2 => dev.write(4, &[v]),
            3 => dev.read(0, &mut [0u8]),
            4 => dev.read(4, &mut [0u8]),
            5 => {
                dev.press_ctrl_alt_del();
            }
            6 => dev.write(u64::from(v % 8), &[v, v][..usize::from(op >> 7) + 1]),
            _ => {
                let mut buf = [0u8; 2];
                dev.read(u64::from(v % 8), &mut buf[..usize::from(op >> 7) + 1]);
            }
        }
    }
    drain(&mut dev);
});
