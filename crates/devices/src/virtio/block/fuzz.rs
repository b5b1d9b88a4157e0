//! Entry point for the fuzzer (fuzz/fuzz_targets/virtio_block.rs): the device's real queue
//! processing, without the I/O thread around it.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::io::DiskFile;
use super::BlockHandler;
use crate::rate_limiter::RateLimiter;
use crate::virtio::{GuestMemory, Interrupt};

/// Serves `queue` once, as a queue notification does; returns the queue as the device left it
/// and whether the device stopped serving it.
pub fn process_queue(
    mem: Arc<GuestMemory>,
    queue: Queue,
    disk: Arc<DiskFile>,
    serial: &[u8],
) -> (Queue, bool) {
    let queues = vec![super::RequestQueue {
        queue,
        event: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    }];
    let mut h = BlockHandler::new(
        mem,
        Arc::new(Interrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        )),
        queues,
        disk,
        serial.to_vec(),
        RateLimiter::new(None, None).expect("rate limiter"),
        Default::default(),
    );
    h.run(None);
    let broken = h.broken;
    (h.queues.swap_remove(0).queue, broken)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;

    use super::*;

    /// Found by fuzz/fuzz_targets/virtio_block.rs: an available index more than a queue ahead
    /// (or a queue that is not ready) made the device spin forever on the I/O thread.
    #[test]
    fn bogus_avail_index_breaks_the_device_instead_of_spinning() {
        let dir = std::env::temp_dir().join(format!("vireo-blk-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(4096))
            .unwrap();
        let disk = Arc::new(DiskFile::open(&path, false).unwrap());
        for ready in [true, false] {
            let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
            let vq = MockSplitQueue::new(&*mem, 16);
            let mut q: Queue = vq.create_queue().unwrap();
            q.set_ready(ready);
            vq.avail().idx().store(100);
            let (tx, rx) = mpsc::channel();
            let disk = disk.clone();
            std::thread::spawn(move || {
                let _ = tx.send(process_queue(mem, q, disk, b"").1);
            });
            let broken = rx.recv_timeout(Duration::from_secs(10)).expect("no hang");
            assert!(broken, "ready={ready}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
