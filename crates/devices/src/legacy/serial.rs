//! The COM1 16550 UART, built on vm-superio, as a bus device.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial as Uart;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// Where the console's bytes go.
pub enum SerialOutput {
    /// A file descriptor (stdout or a file), written without user-space buffering so that the
    /// console is current even when the VMM is killed.
    Fd(OwnedFd),
    /// Bytes are dropped.
    Sink,
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SerialOutput::Fd(fd) => {
                // SAFETY: `fd` is an open descriptor owned by self and `buf` is valid for reads
                // of `buf.len()` bytes.
                let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }
            SerialOutput::Sink => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct Serial {
    uart: Uart<EventFdTrigger, NoEvents, SerialOutput>,
}

/// The UART's registers and receive FIFO, for a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// A saved UART state that vm-superio refuses (a receive FIFO longer than the UART's).
#[derive(Debug, thiserror::Error)]
#[error("serial state: {source:?}")]
pub struct SerialStateError {
    #[source]
    pub source: vm_superio::serial::Error<io::Error>,
}

impl Serial {
    pub fn new(irq: EventFdTrigger, out: SerialOutput) -> Self {
        Self {
            uart: Uart::new(irq, out),
        }
    }

    /// A UART in the state a snapshot saved. The state is hostile input: vm-superio refuses a
    /// receive FIFO longer than the UART's.
    pub fn from_snapshot(
        irq: EventFdTrigger,
        out: SerialOutput,
        s: &SerialSnapshot,
    ) -> Result<Self, SerialStateError> {
        let state = SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        Uart::from_state(&state, irq, NoEvents, out)
            .map(|uart| Self { uart })
            .map_err(|source| SerialStateError { source })
    }

    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Queues console input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        let n = bytes.len().min(room);
        if n == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [byte]) => *byte = self.uart.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            // A console that cannot be written (a closed pipe) must not stop the guest.
            if let Err(e) = self.uart.write(off, *byte) {
                // Once per byte the guest writes while the console file cannot take it.
                crate::rate_limited!(debug, "serial write failed: {e:?}");
            }
        }
    }
}
