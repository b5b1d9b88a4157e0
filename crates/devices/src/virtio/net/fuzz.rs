//! Entry point for the fuzzer (fuzz/fuzz_targets/virtio_net.rs): the device's real rx and tx
//! processing, without the I/O thread around it.

use std::sync::Arc;

use virtio_queue::Queue;

use super::handler::NetHandler;
use super::Backend;
use crate::rate_limiter::RateLimiter;
use crate::virtio::{ActivateContext, ActivateError};

/// The device's queue handler, as activation makes it (no rate limits).
pub struct Handler(NetHandler);

impl Handler {
    pub fn new(ctx: ActivateContext, backend: Arc<dyn Backend>) -> Result<Self, ActivateError> {
        let limiter = || RateLimiter::new(None, None).expect("rate limiter");
        NetHandler::new(ctx, backend, limiter(), limiter(), Arc::default()).map(Self)
    }

    /// The guest notified the tx queue.
    pub fn process_tx(&mut self) {
        self.0.process_tx();
    }

    /// The guest notified the rx queue.
    pub fn rx_notified(&mut self) {
        self.0.rx_notified();
    }

    /// The backend became readable.
    pub fn tap_edge(&mut self) {
        self.0.tap_edge();
    }

    pub fn rx(&self) -> &Queue {
        &self.0.rx
    }

    pub fn tx(&self) -> &Queue {
        &self.0.tx
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::{mpsc, Mutex};
    use std::time::Duration;

    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::{features, GuestMemory, Interrupt};

    struct OneFrame(EventFd, Mutex<Option<Vec<u8>>>);

    impl AsRawFd for OneFrame {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    impl Backend for OneFrame {
        fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
            let f = self.1.lock().unwrap().take();
            let f = f.ok_or_else(|| Error::from(ErrorKind::WouldBlock))?;
            buf[..f.len()].copy_from_slice(&f);
            Ok(f.len())
        }
        fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
            Ok(frame.len())
        }
        fn set_offload(&self, _flags: u32) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Found by fuzz/fuzz_targets/virtio_net.rs: an available index more than a queue ahead
    /// made the device spin forever on the I/O thread, on either queue.
    #[test]
    fn bogus_avail_index_stops_the_device_instead_of_spinning() {
        for bad_rx in [true, false] {
            let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
            let rxq = MockSplitQueue::create(&*mem, GuestAddress(0), 16);
            let txq = MockSplitQueue::create(&*mem, GuestAddress(0x4000), 16);
            let queues: Vec<Queue> = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
            let bad = if bad_rx { &rxq } else { &txq };
            bad.avail().idx().store(100);
            let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let ctx = ActivateContext {
                mem: mem.clone(),
                interrupt: Arc::new(Interrupt::new(evt())),
                features: features::VERSION_1,
                queues,
                queue_events: vec![evt(), evt()],
                restored: false,
            };
            let tap = OneFrame(evt(), Mutex::new(Some(vec![0; 60])));
            let mut h = Handler::new(ctx, Arc::new(tap)).unwrap();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                h.tap_edge();
                h.process_tx();
                let _ = tx.send(h.tx().next_avail());
            });
            rx.recv_timeout(Duration::from_secs(10)).expect("no hang");
        }
    }
}
