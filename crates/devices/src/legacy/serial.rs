//! The COM1 16550 UART, built on vm-superio, as a bus device.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use vm_superio::serial::NoEvents;
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

impl Serial {
    pub fn new(irq: EventFdTrigger, out: SerialOutput) -> Self {
        Self {
            uart: Uart::new(irq, out),
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
                tracing::debug!("serial write failed: {e:?}");
            }
        }
    }
}
