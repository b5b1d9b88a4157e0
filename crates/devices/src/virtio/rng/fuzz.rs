//! Entry point for the fuzzer (fuzz/fuzz_targets/virtio_rng.rs): the device's real queue
//! processing, without the I/O thread around it.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::RngHandler;
use crate::virtio::{GuestMemory, Interrupt};

/// Serves `queue` once, as a queue notification does; returns the queue as the device left it
/// and the error that made the device give up on it, if any.
pub fn process_queue(
    mem: Arc<GuestMemory>,
    queue: Queue,
) -> (Queue, Result<(), virtio_queue::Error>) {
    let mut h = RngHandler {
        mem,
        interrupt: Arc::new(Interrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        )),
        queue,
        event: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    };
    let r = h.process_queue();
    (h.queue, r)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;

    use super::*;

    /// Found by fuzz/fuzz_targets/virtio_rng.rs: an available index more than a queue ahead
    /// (or a queue that is not ready) made the device spin forever on the I/O thread.
    #[test]
    fn bogus_avail_index_fails_instead_of_spinning() {
        for ready in [true, false] {
            let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
            let vq = MockSplitQueue::new(&*mem, 16);
            let mut q: Queue = vq.create_queue().unwrap();
            q.set_ready(ready);
            vq.avail().idx().store(100);
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(process_queue(mem, q).1);
            });
            let r = rx.recv_timeout(Duration::from_secs(10)).expect("no hang");
            assert!(r.is_err(), "ready={ready}: {r:?}");
        }
    }
}
