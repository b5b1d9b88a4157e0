//! virtio-rng: fills the guest's buffers from the host's getrandom(2).

use std::io::Write;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberId};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, ActivateContext, ActivateError, EventLoopHandle, GuestMemory, Interrupt,
    InterruptKind, VirtioDevice,
};

#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;

const QUEUE_SIZES: &[u16] = &[256];
/// Bytes served per request at most: a guest cannot make the VMM allocate or block on more.
const MAX_REQUEST: usize = 64 * 1024;

pub struct Rng {
    io: EventLoopHandle,
    handler: Option<SubscriberId>,
}

impl Rng {
    pub fn new(io: EventLoopHandle) -> Self {
        Self { io, handler: None }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        super::features::RING_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let (Some(queue), Some(event)) = (ctx.queues.pop(), ctx.queue_events.pop()) else {
            return Err(ActivateError::BadQueue(0));
        };
        let handler = RngHandler {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queue,
            event,
        };
        self.handler = Some(self.io.add(Arc::new(Mutex::new(handler)))?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(id) = self.handler.take() {
            self.io.remove(id);
        }
    }
}

struct RngHandler {
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    queue: Queue,
    event: EventFd,
}

impl RngHandler {
    fn process_queue(&mut self) -> Result<(), virtio_queue::Error> {
        let mem = &*self.mem;
        let mut buf = vec![0u8; MAX_REQUEST];
        loop {
            self.queue.disable_notification(mem)?;
            while let Some(chain) = self.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let written = match chain.writer(mem) {
                    Ok(mut w) => {
                        let n = w.available_bytes().min(MAX_REQUEST);
                        let filled = getrandom(&mut buf[..n]);
                        w.write_all(&buf[..filled]).map(|_| filled).unwrap_or(0)
                    }
                    // A chain with bad descriptors gets nothing written.
                    Err(_) => 0,
                };
                self.queue.add_used(mem, head, written as u32)?;
            }
            if !self.queue.enable_notification(mem)? {
                break;
            }
            // pop_descriptor_chain() is None for a bogus avail index (over a queue
            // ahead) or a queue not ready too: fail then, do not spin.
            self.queue.iter(mem)?;
        }
        if self.queue.needs_notification(mem)? {
            self.interrupt.trigger(InterruptKind::UsedBuffer);
        }
        Ok(())
    }
}

/// Fills `buf` from the host's CRNG without ever blocking the I/O thread (the semantics of
/// /dev/urandom: GRND_INSECURE, or GRND_NONBLOCK on kernels before 5.6 that lack it); returns
/// how many bytes it got.
fn getrandom(buf: &mut [u8]) -> usize {
    let mut flags = libc::GRND_INSECURE;
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is valid for writes of its length.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), flags) };
        if n < 0
            && flags == libc::GRND_INSECURE
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
        {
            flags = libc::GRND_NONBLOCK;
            continue;
        }
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    done
}

impl MutEventSubscriber for RngHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.event, EventSet::IN)) {
            tracing::error!("virtio-rng: cannot watch its queue: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
        if let Err(e) = self.process_queue() {
            // The guest can break its queue and notify it as often as it likes: limited.
            crate::rate_limited!(warn, "virtio-rng: bad queue: {e}");
        }
    }
}
