//! The i8042 keyboard controller with a PS/2 keyboard behind it.
//!
//! It exists for two things: the controller's CPU-reset line (guests reboot through it when
//! ACPI reset is unavailable) and Ctrl-Alt-Del, which is how the host asks a guest to shut
//! down (`PUT /vm/shutdown`). vm-superio's `I8042Device` models only the reset line, so this
//! is a model of its own: enough of the controller and the keyboard that Linux's i8042 and
//! atkbd drivers find a keyboard, and no mouse (the ACPI tables declare no AUX device).
//!
//! Everything written to ports 0x60 and 0x64 comes from the guest and may be any byte in any
//! order: every byte has a defined effect, answers go through a bounded queue, and nothing
//! the guest writes can make the model grow or fail.

use std::collections::VecDeque;

use vm_superio::Trigger;

use super::EventFdTrigger;
use crate::bus::BusDevice;
use crate::power::{PowerAction, PowerSink};

const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register (read at 0x64).
const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
/// The last write went to the command port.
const STATUS_CMD: u8 = 0x08;
/// The keyboard is not inhibited by a key lock.
const STATUS_UNLOCKED: u8 = 0x10;
/// The byte in the output buffer comes from the AUX port.
const STATUS_AUX_OBF: u8 = 0x20;

// Controller configuration byte ("command byte").
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;
/// What a PC BIOS leaves behind: keyboard interrupt on, self-test passed, set-1 translation on.
const CTR_RESET: u8 = CTR_KBD_INT | CTR_SYS | CTR_TRANSLATE;

/// Output port bit 0: low resets the CPU. Bit 1 is the A20 gate.
const OUTPORT_RESET_HIGH: u8 = 0x01;
const OUTPORT_INITIAL: u8 = 0x03;

// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_ECHO: u8 = 0xee;

/// Bytes waiting to be read. A real keyboard buffers 16; this is enough for a few Ctrl-Alt-Del
/// sequences (11 bytes each in set 2) and bounds what a guest that never reads can pile up.
const QUEUE_MAX: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Controller,
    Keyboard,
    Aux,
}

/// The keyboard's own state.
#[derive(Debug)]
struct Keyboard {
    /// Key presses are reported (enabled by 0xF4, reset and defaults; disabled by 0xF5).
    scanning: bool,
    /// Scan code set 1, 2 or 3.
    set: u8,
    /// A command (0xED LEDs, 0xF0 scan code set, 0xF3 typematic rate) waiting for its argument.
    awaiting_arg: Option<u8>,
    /// The last byte sent, for 0xFE (resend).
    last_sent: u8,
}

impl Keyboard {
    fn new() -> Self {
        Self {
            scanning: true,
            set: 2,
            awaiting_arg: None,
            last_sent: KBD_ACK,
        }
    }
}

/// Occupies ports 0x60..=0x64 (offsets 0 and 4 are the data and command/status ports; 0x61 is
/// KVM's in-kernel PC speaker port and never reaches it).
pub struct I8042 {
    reset: PowerSink,
    irq: EventFdTrigger,
    ctr: u8,
    outport: u8,
    sys_flag: bool,
    last_write_was_command: bool,
    /// The byte in the output buffer, if any.
    out: Option<(u8, Source)>,
    /// What a read of the data port returns when the buffer is empty: the last byte again.
    last_read: u8,
    queue: VecDeque<(u8, Source)>,
    /// A controller command waiting for its data byte at port 0x60.
    awaiting_data: Option<u8>,
    kbd: Keyboard,
}

impl I8042 {
    pub const BASE: u64 = 0x60;
    pub const LEN: u64 = 5;

    /// `reset` receives the CPU-reset requests; `irq` is IRQ 1.
    pub fn new(reset: PowerSink, irq: EventFdTrigger) -> Self {
        Self {
            reset,
            irq,
            ctr: CTR_RESET,
            outport: OUTPORT_INITIAL,
            sys_flag: true,
            last_write_was_command: false,
            out: None,
            last_read: 0,
            queue: VecDeque::with_capacity(QUEUE_MAX),
            awaiting_data: None,
            kbd: Keyboard::new(),
        }
    }

    /// Presses and releases Ctrl-Alt-Del: queues the scan codes and raises IRQ 1. False when
    /// the key presses were lost, as on real hardware: the guest has turned the keyboard's
    /// scanning off, or has not read what was sent before.
    pub fn press_ctrl_alt_del(&mut self) -> bool {
        if !self.kbd.scanning {
            return false;
        }
        let codes: &[u8] = match self.scan_code_set() {
            // Left Ctrl, Left Alt, Delete (E0-prefixed), then the releases in reverse order.
            1 => &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d],
            2 => &[
                0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
            ],
            _ => &[0x11, 0x19, 0x64, 0xf0, 0x64, 0xf0, 0x19, 0xf0, 0x11],
        };
        if self.queue.len() + codes.len() > QUEUE_MAX {
            return false;
        }
        for &c in codes {
            self.queue.push_back((c, Source::Keyboard));
        }
        self.kbd.last_sent = codes[codes.len() - 1];
        self.refill();
        true
    }

    /// The scan codes the guest sees: set 1 when the controller translates (the keyboard's
    /// set 2 output becomes set 1), else the keyboard's own set.
    fn scan_code_set(&self) -> u8 {
        if self.ctr & CTR_TRANSLATE != 0 {
            1
        } else {
            self.kbd.set
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if self.sys_flag {
            s |= STATUS_SYS;
        }
        if self.last_write_was_command {
            s |= STATUS_CMD;
        }
        match self.out {
            Some((_, Source::Aux)) => s |= STATUS_OBF | STATUS_AUX_OBF,
            Some(_) => s |= STATUS_OBF,
            None => {}
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        if let Some((b, _)) = self.out.take() {
            self.last_read = b;
            self.refill();
        }
        self.last_read
    }

    /// Moves the next byte into an empty output buffer and interrupts the guest if it asked
    /// for keyboard interrupts. Keyboard bytes wait while the keyboard port is disabled.
    fn refill(&mut self) {
        if self.out.is_some() {
            return;
        }
        let Some(&(byte, src)) = self.queue.front() else {
            return;
        };
        if src == Source::Keyboard && self.ctr & CTR_KBD_DISABLED != 0 {
            return;
        }
        self.queue.pop_front();
        self.out = Some((byte, src));
        // The AUX port has no interrupt line here (no mouse is declared).
        if src != Source::Aux && self.ctr & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.trigger() {
                tracing::debug!("i8042 interrupt: {e}");
            }
        }
    }

    /// A controller answer: ahead of keyboard bytes not yet delivered, as the controller
    /// answers before it takes more from the keyboard.
    fn controller_reply(&mut self, byte: u8) {
        if self.queue.len() >= QUEUE_MAX {
            self.queue.pop_back();
        }
        self.queue.push_front((byte, Source::Controller));
        self.refill();
    }

    /// Bytes from the keyboard (or put there by command 0xD2/0xD3); dropped when the queue is
    /// full, like a keyboard whose buffer overflowed.
    fn push(&mut self, byte: u8, src: Source) {
        if self.queue.len() < QUEUE_MAX {
            self.queue.push_back((byte, src));
            if src == Source::Keyboard {
                self.kbd.last_sent = byte;
            }
        }
        self.refill();
    }

    fn pulse_reset(&self) {
        (self.reset)(PowerAction::Reset);
    }

    fn write_command(&mut self, cmd: u8) {
        // A new command abandons one still waiting for its data byte.
        self.awaiting_data = None;
        match cmd {
            0x20 => self.controller_reply(self.ctr),
            // The rest of the controller's RAM holds nothing.
            0x21..=0x3f => self.controller_reply(0),
            0x60..=0x7f | 0xd1..=0xd4 => self.awaiting_data = Some(cmd),
            0xa7 => self.ctr |= CTR_AUX_DISABLED,
            0xa8 => self.ctr &= !CTR_AUX_DISABLED,
            // AUX interface test: there is no AUX device, report its clock line stuck low.
            0xa9 => self.controller_reply(0x01),
            0xaa => {
                self.sys_flag = true;
                self.controller_reply(0x55);
            }
            // Keyboard interface test: passed.
            0xab => self.controller_reply(0x00),
            0xad => self.ctr |= CTR_KBD_DISABLED,
            0xae => {
                self.ctr &= !CTR_KBD_DISABLED;
                self.refill();
            }
            0xd0 => self.controller_reply(self.outport),
            // Pulse output lines: a clear bit 0 pulses the CPU reset line (0xFE is the usual).
            0xf0..=0xff if cmd & 1 == 0 => self.pulse_reset(),
            // Any guest can write commands in a loop: limited even at debug level.
            _ => crate::rate_limited!(debug, "i8042: command {cmd:#04x} ignored"),
        }
    }

    fn write_data(&mut self, byte: u8) {
        match self.awaiting_data.take() {
            Some(0x60) => {
                self.ctr = byte;
                self.sys_flag = byte & CTR_SYS != 0;
                self.refill();
            }
            Some(0x61..=0x7f) => {}
            Some(0xd1) => {
                self.outport = byte;
                if byte & OUTPORT_RESET_HIGH == 0 {
                    self.pulse_reset();
                }
            }
            Some(0xd2) => self.push(byte, Source::Keyboard),
            Some(0xd3) => self.push(byte, Source::Aux),
            // 0xD4: a byte for the AUX device, which does not exist.
            Some(_) => {}
            None => self.keyboard_write(byte),
        }
    }

    /// A byte for the keyboard: a command or the argument of the previous one.
    fn keyboard_write(&mut self, byte: u8) {
        if let Some(cmd) = self.kbd.awaiting_arg.take() {
            match cmd {
                0xf0 => match byte {
                    0 => {
                        self.push(KBD_ACK, Source::Keyboard);
                        // With translation on, the set number is translated too.
                        let set = if self.ctr & CTR_TRANSLATE != 0 {
                            [0x43, 0x41, 0x3f][usize::from(self.kbd.set - 1)]
                        } else {
                            self.kbd.set
                        };
                        self.push(set, Source::Keyboard);
                    }
                    1..=3 => {
                        self.kbd.set = byte;
                        self.push(KBD_ACK, Source::Keyboard);
                    }
                    _ => self.push(KBD_RESEND, Source::Keyboard),
                },
                // 0xED (LEDs) and 0xF3 (typematic rate): accepted; there is nothing to light
                // and the model never repeats keys.
                _ => self.push(KBD_ACK, Source::Keyboard),
            }
            return;
        }
        // A keyboard that receives a command drops what it had not sent yet.
        self.queue.retain(|&(_, s)| s != Source::Keyboard);
        match byte {
            0xed | 0xf0 | 0xf3 => {
                self.kbd.awaiting_arg = Some(byte);
                self.push(KBD_ACK, Source::Keyboard);
            }
            0xee => self.push(KBD_ECHO, Source::Keyboard),
            0xf2 => {
                // An MF2 keyboard: AB 83, which translation turns into AB 41.
                let id2 = if self.ctr & CTR_TRANSLATE != 0 {
                    0x41
                } else {
                    0x83
                };
                for b in [KBD_ACK, 0xab, id2] {
                    self.push(b, Source::Keyboard);
                }
            }
            0xf4 => {
                self.kbd.scanning = true;
                self.push(KBD_ACK, Source::Keyboard);
            }
            0xf5 => {
                self.kbd.scanning = false;
                self.kbd.set = 2;
                self.push(KBD_ACK, Source::Keyboard);
            }
            0xf6 => {
                self.kbd.scanning = true;
                self.kbd.set = 2;
                self.push(KBD_ACK, Source::Keyboard);
            }
            // Set-3 key types: accepted; the model reports make and break codes for its keys
            // whatever they say.
            0xf7..=0xfd => self.push(KBD_ACK, Source::Keyboard),
            0xfe => {
                let last = self.kbd.last_sent;
                self.push(last, Source::Keyboard);
            }
            0xff => {
                self.kbd = Keyboard::new();
                self.push(KBD_ACK, Source::Keyboard);
                self.push(KBD_BAT_OK, Source::Keyboard);
            }
            _ => self.push(KBD_RESEND, Source::Keyboard),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (DATA, [byte]) => *byte = self.read_data(),
            (COMMAND, [byte]) => *byte = self.status(),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (DATA, [byte]) => {
                self.last_write_was_command = false;
                self.write_data(*byte);
            }
            (COMMAND, [byte]) => {
                self.last_write_was_command = true;
                self.write_command(*byte);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    struct Rig {
        dev: I8042,
        irq: EventFd,
        resets: Arc<Mutex<usize>>,
    }

    fn rig() -> Rig {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let resets = Arc::new(Mutex::new(0));
        let r = resets.clone();
        let sink: PowerSink = Arc::new(move |a| {
            assert_eq!(a, PowerAction::Reset);
            *r.lock().unwrap() += 1;
        });
        let dev = I8042::new(sink, EventFdTrigger::new(irq.try_clone().unwrap()));
        Rig { dev, irq, resets }
    }

    impl Rig {
        fn inb(&mut self, port: u64) -> u8 {
            let mut b = [0u8];
            self.dev.read(port, &mut b);
            b[0]
        }
        fn outb(&mut self, port: u64, v: u8) {
            self.dev.write(port, &[v]);
        }
        /// Interrupts raised since the last call.
        fn irqs(&self) -> u64 {
            self.irq.read().unwrap_or(0)
        }
        /// Everything in the output buffer, as the guest's polling loop reads it.
        fn drain(&mut self) -> Vec<u8> {
            let mut v = Vec::new();
            while self.inb(COMMAND) & STATUS_OBF != 0 {
                v.push(self.inb(DATA));
                assert!(v.len() <= 2 * QUEUE_MAX, "output never runs dry");
            }
            v
        }
        fn kbd_command(&mut self, bytes: &[u8]) -> Vec<u8> {
            for &b in bytes {
                self.outb(DATA, b);
            }
            self.drain()
        }
        fn resets(&self) -> usize {
            *self.resets.lock().unwrap()
        }
    }

    #[test]
    fn cpu_reset_command_resets() {
        let mut r = rig();
        r.outb(COMMAND, 0xfe);
        r.dev.write(COMMAND, &[0xfe, 0]); // a wrong width is ignored
        assert_eq!(r.resets(), 1);
        // Output port write with bit 0 clear resets too; Linux's A20 write (0xDF) does not.
        r.outb(COMMAND, 0xd1);
        r.outb(DATA, 0xdf);
        assert_eq!(r.resets(), 1);
        r.outb(COMMAND, 0xd0);
        assert_eq!(r.drain(), [0xdf]);
        r.outb(COMMAND, 0xd1);
        r.outb(DATA, 0xde);
        assert_eq!(r.resets(), 2);
        // Odd pulse commands leave the reset line alone.
        r.outb(COMMAND, 0xff);
        assert_eq!(r.resets(), 2);
    }

    #[test]
    fn controller_commands_answer_like_linux_expects() {
        let mut r = rig();
        assert_eq!(r.inb(COMMAND) & STATUS_OBF, 0, "nothing to read at start");
        assert_ne!(r.inb(COMMAND), 0xff, "a controller is present");
        r.outb(COMMAND, 0xaa);
        assert_eq!(r.drain(), [0x55], "self-test passes");
        r.outb(COMMAND, 0xab);
        assert_eq!(r.drain(), [0x00], "keyboard interface test passes");
        r.outb(COMMAND, 0xa9);
        assert_ne!(r.drain(), [0x00], "there is no AUX port");
        r.outb(COMMAND, 0x20);
        assert_eq!(r.drain(), [CTR_RESET]);
        // Write the command byte and read it back; the last write went to the data port.
        r.outb(COMMAND, 0x60);
        assert_ne!(r.inb(COMMAND) & STATUS_CMD, 0);
        r.outb(DATA, 0x65);
        assert_eq!(r.inb(COMMAND) & STATUS_CMD, 0);
        r.outb(COMMAND, 0x20);
        assert_eq!(r.drain(), [0x65]);
        // Disable and enable the keyboard port: the command byte follows.
        r.outb(COMMAND, 0xae);
        r.outb(COMMAND, 0x20);
        assert_eq!(r.drain(), [0x65 & !CTR_KBD_DISABLED]);
        r.outb(COMMAND, 0xad);
        r.outb(COMMAND, 0x20);
        assert_eq!(r.drain(), [0x65 | CTR_KBD_DISABLED]);
        // Loopback of a byte "from the keyboard" and one "from the AUX port".
        r.outb(COMMAND, 0xae);
        r.outb(COMMAND, 0xd2);
        r.outb(DATA, 0x5a);
        assert_eq!(r.inb(COMMAND) & (STATUS_OBF | STATUS_AUX_OBF), STATUS_OBF);
        assert_eq!(r.drain(), [0x5a]);
        r.outb(COMMAND, 0xd3);
        r.outb(DATA, 0xa5);
        assert_eq!(
            r.inb(COMMAND) & (STATUS_OBF | STATUS_AUX_OBF),
            STATUS_OBF | STATUS_AUX_OBF
        );
        assert_eq!(r.drain(), [0xa5]);
        // An empty buffer reads the last byte again.
        assert_eq!(r.inb(DATA), 0xa5);
        assert_eq!(r.resets(), 0);
    }

    #[test]
    fn keyboard_probe_sequence_of_atkbd() {
        let mut r = rig();
        assert_eq!(r.kbd_command(&[0xff]), [KBD_ACK, KBD_BAT_OK], "reset");
        assert_eq!(
            r.kbd_command(&[0xf2]),
            [KBD_ACK, 0xab, 0x41],
            "ID, translated"
        );
        assert_eq!(r.kbd_command(&[0xf5]), [KBD_ACK], "deactivate");
        assert_eq!(r.kbd_command(&[0xf3, 0x20]), [KBD_ACK, KBD_ACK], "rate");
        assert_eq!(r.kbd_command(&[0xed, 0x07]), [KBD_ACK, KBD_ACK], "LEDs");
        assert_eq!(r.kbd_command(&[0xf4]), [KBD_ACK], "activate");
        assert_eq!(r.kbd_command(&[0xee]), [KBD_ECHO], "echo");
        assert_eq!(
            r.kbd_command(&[0xf0, 0]),
            [KBD_ACK, KBD_ACK, 0x41],
            "set 2, translated"
        );
        // Without translation: raw ID and set numbers.
        r.outb(COMMAND, 0x60);
        r.outb(DATA, CTR_KBD_INT | CTR_SYS);
        assert_eq!(r.kbd_command(&[0xf2]), [KBD_ACK, 0xab, 0x83]);
        assert_eq!(r.kbd_command(&[0xf0, 3]), [KBD_ACK, KBD_ACK]);
        assert_eq!(r.kbd_command(&[0xf0, 0]), [KBD_ACK, KBD_ACK, 3]);
        assert_eq!(r.kbd_command(&[0xf0, 9]), [KBD_ACK, KBD_RESEND], "no set 9");
        assert_eq!(r.kbd_command(&[0xfe]), [KBD_RESEND], "resend the last byte");
        assert_eq!(r.kbd_command(&[0x12]), [KBD_RESEND], "unknown command");
    }

    #[test]
    fn replies_raise_irq1_one_byte_at_a_time_when_enabled() {
        let mut r = rig();
        r.irqs();
        r.outb(DATA, 0xff);
        assert_eq!(r.irqs(), 1, "ACK is in the buffer");
        assert_eq!(r.inb(DATA), KBD_ACK);
        assert_eq!(r.irqs(), 1, "BAT result is next");
        assert_eq!(r.inb(DATA), KBD_BAT_OK);
        assert_eq!(r.irqs(), 0);
        // Interrupts off in the command byte: bytes still arrive, without IRQ 1.
        r.outb(COMMAND, 0x60);
        r.outb(DATA, CTR_SYS | CTR_TRANSLATE);
        r.irqs();
        assert_eq!(r.kbd_command(&[0xf4]), [KBD_ACK]);
        assert_eq!(r.irqs(), 0);
    }

    #[test]
    fn ctrl_alt_del_is_queued_and_interrupts() {
        let mut r = rig();
        r.irqs();
        assert!(r.dev.press_ctrl_alt_del());
        assert_eq!(r.irqs(), 1);
        assert_eq!(
            r.drain(),
            [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d],
            "set 1 through translation"
        );
        // Set 2 untranslated, then set 3.
        r.outb(COMMAND, 0x60);
        r.outb(DATA, CTR_KBD_INT | CTR_SYS);
        assert!(r.dev.press_ctrl_alt_del());
        assert_eq!(
            r.drain(),
            [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]
        );
        r.kbd_command(&[0xf0, 3]);
        assert!(r.dev.press_ctrl_alt_del());
        assert_eq!(
            r.drain(),
            [0x11, 0x19, 0x64, 0xf0, 0x64, 0xf0, 0x19, 0xf0, 0x11]
        );
    }

    #[test]
    fn key_presses_wait_for_a_disabled_port_and_are_lost_without_scanning() {
        let mut r = rig();
        r.outb(COMMAND, 0xad);
        assert!(r.dev.press_ctrl_alt_del());
        assert_eq!(r.inb(COMMAND) & STATUS_OBF, 0, "held while the port is off");
        r.irqs();
        r.outb(COMMAND, 0xae);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.drain().len(), 8);
        r.kbd_command(&[0xf5]);
        assert!(!r.dev.press_ctrl_alt_del(), "scanning is off");
        assert_eq!(r.drain(), []);
        // A guest that never reads fills the queue; presses are then refused, not half-sent.
        r.kbd_command(&[0xf4]);
        let mut n = 0;
        while r.dev.press_ctrl_alt_del() {
            n += 1;
            assert!(n < 100);
        }
        assert_eq!(n, QUEUE_MAX / 8);
        assert_eq!(r.drain().len(), QUEUE_MAX / 8 * 8);
    }

    #[test]
    fn keyboard_command_drops_unsent_scan_codes() {
        let mut r = rig();
        assert!(r.dev.press_ctrl_alt_del());
        assert_eq!(r.kbd_command(&[0xf4]), [0x1d, KBD_ACK]);
    }

    #[test]
    fn hostile_byte_sequences_keep_the_model_bounded() {
        // Every (command port, data port) pair of bytes, then a pseudo-random stream of writes
        // and reads: no panic, the queue stays bounded, the buffer always drains.
        let mut r = rig();
        for cmd in 0..=255u8 {
            for data in [0x00, 0x55, 0xaa, 0xfe, 0xff] {
                r.outb(COMMAND, cmd);
                r.outb(DATA, data);
                assert!(r.dev.queue.len() <= QUEUE_MAX);
                r.drain();
            }
        }
        let mut x: u32 = 0x1234_5678;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = (x >> 8) as u8;
            match x % 5 {
                0 => r.outb(COMMAND, v),
                1 | 2 => r.outb(DATA, v),
                3 => {
                    r.inb(DATA);
                }
                _ => {
                    r.dev.press_ctrl_alt_del();
                }
            }
            assert!(r.dev.queue.len() <= QUEUE_MAX);
        }
        // Odd widths and offsets are ignored.
        r.dev.write(1, &[0xfe]);
        r.dev.write(COMMAND, &[0xfe, 0xfe]);
        let mut two = [0u8; 2];
        r.dev.read(DATA, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        r.drain();
        assert!(r.drain().is_empty());
        // It still works as a keyboard after all that.
        r.outb(COMMAND, 0x60);
        r.outb(DATA, CTR_RESET);
        r.outb(COMMAND, 0xae);
        r.drain();
        assert_eq!(r.kbd_command(&[0xff]), [KBD_ACK, KBD_BAT_OK]);
    }
}
