//! virtio-vsock (device type 19) with host-side Unix sockets, all in user space.
//!
//! The hybrid design Firecracker users know: the VMM listens on `uds_path`. A host process
//! connects there and writes `CONNECT <port>\n` to reach the guest's vsock port; once the guest
//! accepts it reads `OK <host port>\n` and the socket carries the connection's bytes. A guest
//! that connects to CID 2 port P reaches whoever listens on `<uds_path>_<P>`; if nobody does,
//! the guest's connect fails (RST).
//!
//! Queues: rx (0) carries packets to the guest, tx (1) packets from it, event (2) carries one
//! event, a transport reset, sent when the device starts again after a snapshot restore or a
//! migration: its connections' host sockets stayed with the old process, and the reset makes
//! the driver drop its connected sockets at once (they fail with ECONNRESET) instead of when
//! they are next used.

pub mod muxer;
pub mod packet;
pub mod unix;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberId};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{
    device_type, ActivateContext, ActivateError, EventLoopHandle, GuestMemory, Interrupt,
    InterruptKind, VirtioDevice,
};
use muxer::Muxer;
use unix::{HostListener, ListenError};

const QUEUE_SIZES: &[u16] = &[256, 256, 256];
/// Queue indexes: rx 0, tx 1, event 2.
const EVQ: usize = 2;
/// How often deadlines are checked while there are any.
const TICK: Duration = Duration::from_millis(250);

/// The lowest CID a guest may have: 0-2 are the hypervisor, local and host addresses.
pub const MIN_GUEST_CID: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock guest CID {0} is reserved: use a CID from 3 to 4294967294")]
    BadCid(u64),
    #[error("vsock socket {0}")]
    Listen(#[from] ListenError),
}

/// The device's host end, set up before the VM is built so that a bad CID or socket path
/// fails early.
pub struct VsockHost {
    guest_cid: u64,
    uds_path: PathBuf,
    host: HostListener,
}

impl VsockHost {
    /// Checks the CID and listens on `uds_path` (a stale socket file there is replaced).
    pub fn bind(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::BadCid(guest_cid));
        }
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            host: HostListener::bind(uds_path)?,
        })
    }
}

pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    host: HostListener,
    io: EventLoopHandle,
    handler: Option<SubscriberId>,
}

impl Vsock {
    pub fn new(host: VsockHost, io: EventLoopHandle) -> Self {
        Self {
            guest_cid: host.guest_cid,
            uds_path: host.uds_path,
            host: host.host,
            io,
            handler: None,
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        super::features::RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_space(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != QUEUE_SIZES.len() || ctx.queue_events.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::BadQueue(ctx.queues.len().min(EVQ)));
        }
        let listener = self
            .host
            .listener
            .try_clone()
            .map_err(|e| ActivateError::Handler(format!("vsock listener: {e}")))?;
        let timer = TimerFd::new()
            .and_then(|t| set_nonblocking(t.as_raw_fd()).map(|_| t))
            .map_err(|e| ActivateError::Handler(format!("vsock timer: {e}")))?;
        let mut queues = ctx.queues.into_iter();
        let mut events = ctx.queue_events.into_iter();
        let (Some(rxq), Some(txq), Some(evq)) = (queues.next(), queues.next(), queues.next())
        else {
            return Err(ActivateError::BadQueue(0));
        };
        let (Some(rx_evt), Some(tx_evt), Some(ev_evt)) =
            (events.next(), events.next(), events.next())
        else {
            return Err(ActivateError::BadQueue(0));
        };
        let handler = VsockHandler {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            rxq,
            txq,
            evq,
            reset_pending: ctx.restored,
            rx_evt,
            tx_evt,
            ev_evt,
            timer,
            timer_armed: false,
            muxer: Muxer::new(self.guest_cid, self.uds_path.clone(), listener),
            watched: HashMap::new(),
            broken: false,
        };
        self.handler = Some(self.io.add(Arc::new(Mutex::new(handler)))?);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the handler closes every connection's host socket.
        if let Some(id) = self.handler.take() {
            self.io.remove(id);
        }
    }
}

fn set_nonblocking(fd: RawFd) -> vmm_sys_util::errno::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(vmm_sys_util::errno::Error::last());
    }
    Ok(())
}

/// Event tokens; host sockets carry `TOKEN_SOCKET`.
const TOKEN_RXQ: u32 = 0;
const TOKEN_TXQ: u32 = 1;
const TOKEN_EVQ: u32 = 2;
const TOKEN_TIMER: u32 = 3;
const TOKEN_SOCKET: u32 = 4;

struct VsockHandler {
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    rxq: Queue,
    txq: Queue,
    evq: Queue,
    /// A transport reset waits for an event buffer from the driver.
    reset_pending: bool,
    rx_evt: EventFd,
    tx_evt: EventFd,
    ev_evt: EventFd,
    timer: TimerFd,
    timer_armed: bool,
    muxer: Muxer,
    /// Host sockets registered with the event loop, and for what.
    watched: HashMap<RawFd, EventSet>,
    /// The guest broke a queue's invariants: stop serving until it resets the device.
    broken: bool,
}

/// Posts VIRTIO_VSOCK_EVENT_TRANSPORT_RESET in the next event buffer of `evq`. Returns whether
/// there was a buffer to take it. A chain without a writable descriptor of at least 4 bytes is
/// returned unused (length 0) and the next one tried.
pub(crate) fn post_transport_reset(
    mem: &GuestMemory,
    evq: &mut Queue,
) -> Result<bool, virtio_queue::Error> {
    while let Some(chain) = evq.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let target = chain.writable().find(|d| d.len() >= 4).map(|d| d.addr());
        let written = match target {
            Some(addr) => mem
                .write_obj(packet::EVENT_TRANSPORT_RESET.to_le(), addr)
                .map(|_| 4)
                .unwrap_or(0),
            None => 0,
        };
        evq.add_used(mem, head, written)?;
        if written == 4 {
            return Ok(true);
        }
    }
    // None for a bogus avail index or a queue not ready too: fail then.
    evq.iter(mem)?;
    Ok(false)
}

impl VsockHandler {
    /// Sends the pending transport reset when the driver has given an event buffer.
    fn post_reset(&mut self) {
        if !self.reset_pending || self.broken {
            return;
        }
        let mem = &*self.mem;
        let r = post_transport_reset(mem, &mut self.evq).and_then(|posted| {
            if posted {
                self.reset_pending = false;
                if self.evq.needs_notification(mem)? {
                    self.interrupt.trigger(InterruptKind::UsedBuffer);
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            // Guest-triggered, again after every reset: limited.
            crate::rate_limited!(
                warn,
                "virtio-vsock: bad event queue, device stopped until reset: {e}"
            );
            self.broken = true;
        }
    }

    fn run_queues(&mut self, tx: bool) {
        let mem = &*self.mem;
        let mut result = Ok(());
        if tx {
            result = self.muxer.process_tx(mem, &mut self.txq).and_then(|used| {
                if used && self.txq.needs_notification(mem)? {
                    self.interrupt.trigger(InterruptKind::UsedBuffer);
                }
                Ok(())
            });
        }
        let result = result.and_then(|()| {
            let used = self.muxer.process_rx(mem, &mut self.rxq)?;
            if used && self.rxq.needs_notification(mem)? {
                self.interrupt.trigger(InterruptKind::UsedBuffer);
            }
            Ok(())
        });
        if let Err(e) = result {
            // Guest-triggered, again after every reset: limited.
            crate::rate_limited!(
                warn,
                "virtio-vsock: bad queue, device stopped until reset: {e}"
            );
            self.broken = true;
        }
    }

    /// Brings the event loop's watch list in line with what the muxer needs, closes the host
    /// sockets it is done with, and arms the timer while there are deadlines.
    fn sync(&mut self, ops: &mut EventOps) {
        let wanted: HashMap<RawFd, EventSet> = if self.broken {
            HashMap::new()
        } else {
            self.muxer.interests().into_iter().collect()
        };
        self.watched.retain(|&fd, set| {
            if wanted.contains_key(&fd) {
                return true;
            }
            if let Err(e) = ops.remove(Events::with_data_raw(fd, TOKEN_SOCKET, *set)) {
                tracing::warn!("virtio-vsock: cannot stop watching a socket: {e:?}");
            }
            false
        });
        for (fd, set) in wanted {
            let ev = Events::with_data_raw(fd, TOKEN_SOCKET, set);
            let r = match self.watched.get(&fd) {
                Some(&old) if old == set => Ok(()),
                Some(_) => ops.modify(ev),
                None => ops.add(ev),
            };
            match r {
                Ok(()) => {
                    self.watched.insert(fd, set);
                }
                Err(e) => tracing::warn!("virtio-vsock: cannot watch a socket: {e:?}"),
            }
        }
        // Only now, with nothing watching them, may their descriptors be closed and reused.
        drop(self.muxer.take_closed());

        let want_timer = !self.broken && self.muxer.has_deadlines();
        if want_timer != self.timer_armed {
            let r = if want_timer {
                self.timer.reset(TICK, Some(TICK))
            } else {
                self.timer.clear()
            };
            match r {
                Ok(()) => self.timer_armed = want_timer,
                Err(e) => tracing::warn!("virtio-vsock: timer: {e}"),
            }
        }
    }
}

impl MutEventSubscriber for VsockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, token) in [
            (self.rx_evt.as_raw_fd(), TOKEN_RXQ),
            (self.tx_evt.as_raw_fd(), TOKEN_TXQ),
            (self.ev_evt.as_raw_fd(), TOKEN_EVQ),
            (self.timer.as_raw_fd(), TOKEN_TIMER),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                tracing::error!("virtio-vsock: cannot watch its queues: {e:?}");
            }
        }
        self.post_reset();
        // The driver may have queued packets before DRIVER_OK.
        self.run_queues(true);
        self.sync(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut tx = false;
        match events.data() {
            TOKEN_RXQ => {
                let _ = self.rx_evt.read();
            }
            TOKEN_TXQ => {
                let _ = self.tx_evt.read();
                tx = true;
            }
            TOKEN_EVQ => {
                let _ = self.ev_evt.read();
                self.post_reset();
            }
            TOKEN_TIMER => {
                let _ = self.timer.wait();
                self.muxer.on_tick(Instant::now());
            }
            _ => self.muxer.on_event(events.fd(), events.event_set()),
        }
        if !self.broken {
            self.run_queues(tx);
        }
        self.sync(ops);
    }
}

#[cfg(test)]
mod tests;
