//! The I/O-thread side of virtio-net: moves frames between the TAP and the guest's queues.
//!
//! Receive: the TAP is watched edge-triggered. On an edge the handler reads frames until the
//! TAP is empty, the guest has no buffers left or the rx limiter blocks; a frame it read but
//! could not place stays pending, and the TAP is not read again until the guest adds buffers
//! (queue notification) or the limiter's timer fires. Nothing spins: every wait is an fd.
//!
//! Transmit: each chain is a header and a frame. The header is copied out and checked; the
//! frame goes from guest memory to the TAP in one `writev`, uncopied (see [`TxParts`]). A
//! blocked tx limiter puts the chain back until its timer fires.
//!
//! Everything in the queues is the guest's and may be hostile: chains without the space they
//! need, oversize frames, headers asking for offloads that were not negotiated. Such a frame is
//! dropped and counted and its chain returned; a queue whose rings cannot be accessed stops the
//! device (until the driver resets it).

use std::io::{ErrorKind, Write};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_net as vn;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, Permissions};
use vmm_sys_util::eventfd::EventFd;

use super::{bit, tap_offload_flags, Backend, NetCounters, HDR_LEN, MAX_FRAME_LEN};
use crate::rate_limiter::{Cost, RateLimiter};
use crate::virtio::{ActivateContext, ActivateError, GuestMemory, Interrupt, InterruptKind};

const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
const TAP: u32 = 2;
const RX_LIMITER: u32 = 3;
const TX_LIMITER: u32 = 4;

/// The largest header + frame either way.
const MAX_PACKET: usize = HDR_LEN + MAX_FRAME_LEN;
const ETH_HLEN: usize = 14;

const NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const DATA_VALID: u8 = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;
const GSO_ECN: u8 = vn::VIRTIO_NET_HDR_GSO_ECN as u8;

/// The most parts a frame is sent in (the kernel's UIO_MAXIOV): its header and up to this
/// many less one pieces of guest memory.
const MAX_TX_PARTS: usize = 1024;

/// One transmit chain, gathered for a `writev`: its virtio-net header copied out (it is checked
/// before it is sent, and the guest could rewrite its own copy after the check), then the rest
/// of the frame as addresses in guest memory, so a 64 KiB TSO frame is not copied on its way
/// to the TAP.
struct TxParts {
    hdr: [u8; HDR_LEN],
    /// `parts[0]` stands for `hdr`; it is pointed at it only when the frame is sent.
    parts: Vec<libc::iovec>,
    /// Header and frame, in bytes.
    len: usize,
}

impl Default for TxParts {
    fn default() -> Self {
        Self {
            hdr: [0; HDR_LEN],
            parts: Vec::with_capacity(64),
            len: 0,
        }
    }
}

// SAFETY: `parts` holds plain addresses in guest memory, read only by `send` right after the
// `gather` that wrote them, on the thread that owns the handler. Addresses left from a chain
// that was dropped or held by the limiter are never read: the next `gather` clears them.
unsafe impl Send for TxParts {}

impl TxParts {
    /// Walks `chain` once (the guest may rewrite its descriptors at any time, so what is
    /// checked is what is used): every buffer device-readable and inside guest memory, header
    /// and frame of a size a frame can have. On success the chain is ready to `send`.
    fn gather(
        &mut self,
        mem: &GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<(), &'static str> {
        self.parts.clear();
        self.parts.push(libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        });
        self.len = 0;
        for desc in chain {
            if desc.is_write_only() {
                return Err("a chain with a device-writable buffer");
            }
            let len = desc.len() as usize;
            self.len = match self.len.checked_add(len) {
                Some(total) if total <= MAX_PACKET => total,
                _ => return Err("a frame too long"),
            };
            let slices = mem
                .get_slices(desc.addr(), len, Permissions::Read)
                .map_err(|_| "a chain outside guest memory")?;
            let mut at = self.len - len;
            for slice in slices {
                let mut slice = slice.map_err(|_| "a chain outside guest memory")?;
                if at < HDR_LEN {
                    let n = slice.copy_to(&mut self.hdr[at..]);
                    at += n;
                    slice = slice
                        .offset(n)
                        .map_err(|_| "a chain outside guest memory")?;
                }
                if slice.is_empty() {
                    continue;
                }
                if self.parts.len() == MAX_TX_PARTS {
                    return Err("a frame in too many pieces");
                }
                self.parts.push(libc::iovec {
                    iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
                    iov_len: slice.len(),
                });
                at += slice.len();
            }
        }
        if self.len < HDR_LEN + ETH_HLEN {
            return Err("a frame too short");
        }
        Ok(())
    }

    /// Sends the gathered frame, the checked copy of its header first.
    ///
    /// # Safety
    /// The guest memory `gather` read must still be mapped.
    unsafe fn send(&mut self, backend: &dyn Backend) -> std::io::Result<usize> {
        self.parts[0] = libc::iovec {
            iov_base: self.hdr.as_mut_ptr().cast(),
            iov_len: HDR_LEN,
        };
        // SAFETY: `parts[0]` is `hdr`, the others point into guest memory, which the caller
        // keeps mapped.
        let sent = unsafe { backend.write_frame_gathered(&self.parts) };
        self.parts.clear();
        sent
    }
}

/// What happened to one received frame.
enum Delivery {
    Done,
    /// The guest has no buffers (or not enough yet): keep the frame, wait for a notification.
    NoBuffers,
    /// The guest's buffers cannot take it; they were returned empty.
    Dropped,
}

pub(super) struct NetHandler {
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    rx_event: EventFd,
    tx_event: EventFd,
    backend: Arc<dyn Backend>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    counters: Arc<NetCounters>,
    features: u64,
    mrg_rxbuf: bool,
    /// The frame read from the TAP and not yet delivered (header included), `rx_len` bytes.
    rx_frame: Vec<u8>,
    rx_len: usize,
    /// The rx limiter has been charged for the pending frame.
    rx_charged: bool,
    /// The TAP may have frames: set by an edge, cleared when a read finds it empty.
    tap_readable: bool,
    tx_parts: TxParts,
    /// A queue's rings were unusable: the device does nothing more until reset.
    broken: bool,
}

impl NetHandler {
    pub(super) fn new(
        mut ctx: ActivateContext,
        backend: Arc<dyn Backend>,
        rx_limiter: RateLimiter,
        tx_limiter: RateLimiter,
        counters: Arc<NetCounters>,
    ) -> Result<Self, ActivateError> {
        if ctx.queues.len() != 2 || ctx.queue_events.len() != 2 {
            return Err(ActivateError::BadQueue(ctx.queues.len().min(1)));
        }
        for (i, q) in ctx.queues.iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::BadQueue(i));
            }
        }
        let tx_event = ctx.queue_events.pop().expect("two events");
        let rx_event = ctx.queue_events.pop().expect("two events");
        let tx = ctx.queues.pop().expect("two queues");
        let rx = ctx.queues.pop().expect("two queues");
        backend
            .set_offload(tap_offload_flags(ctx.features))
            .map_err(|e| ActivateError::Handler(format!("TUNSETOFFLOAD: {e}")))?;
        Ok(Self {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            rx,
            tx,
            rx_event,
            tx_event,
            backend,
            rx_limiter,
            tx_limiter,
            counters,
            features: ctx.features,
            mrg_rxbuf: ctx.features & bit(vn::VIRTIO_NET_F_MRG_RXBUF) != 0,
            // One byte more than the largest packet, to tell an oversize one.
            rx_frame: vec![0; MAX_PACKET + 1],
            rx_len: 0,
            rx_charged: false,
            tap_readable: true,
            tx_parts: TxParts::default(),
            broken: false,
        })
    }

    fn has(&self, b: u32) -> bool {
        self.features & bit(b) != 0
    }

    fn stop(&mut self, what: &str, e: virtio_queue::Error) {
        // Guest-triggered, again after every reset: limited.
        crate::rate_limited!(
            warn,
            "virtio-net: {what} queue unusable, device stopped until reset: {e}"
        );
        self.broken = true;
    }

    /// Moves frames from the TAP to the guest until one side has nothing more.
    pub(super) fn process_rx(&mut self) {
        if self.broken {
            return;
        }
        let mut delivered = false;
        let old_used = self.rx.next_used();
        let result = loop {
            if self.rx_len == 0 {
                if !self.tap_readable {
                    break Ok(());
                }
                match self.backend.read_frame(&mut self.rx_frame) {
                    Ok(n) if !(HDR_LEN + ETH_HLEN..=MAX_PACKET).contains(&n) => {
                        tracing::debug!("virtio-net: dropped a {n}-byte frame from the TAP");
                        NetCounters::add(&self.counters.rx_dropped, 1);
                        continue;
                    }
                    Ok(n) => self.rx_len = n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.tap_readable = false;
                        break Ok(());
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // The next edge retries.
                        tracing::warn!("virtio-net: reading the TAP: {e}");
                        self.tap_readable = false;
                        break Ok(());
                    }
                }
            }
            if !self.rx_charged {
                let cost = Cost {
                    ops: 1,
                    bytes: (self.rx_len - HDR_LEN) as u64,
                };
                if !self.rx_limiter.consume(cost) {
                    break Ok(());
                }
                self.rx_charged = true;
            }
            match self.deliver() {
                Ok(Delivery::Done) => {
                    NetCounters::add(&self.counters.rx_packets, 1);
                    NetCounters::add(&self.counters.rx_bytes, (self.rx_len - HDR_LEN) as u64);
                    delivered = true;
                }
                Ok(Delivery::Dropped) => {
                    NetCounters::add(&self.counters.rx_dropped, 1);
                    delivered = true;
                }
                Ok(Delivery::NoBuffers) => break Ok(()),
                Err(e) => break Err(e),
            }
            self.rx_len = 0;
            self.rx_charged = false;
        };
        if let Err(e) = result {
            self.stop("rx", e);
            return;
        }
        if delivered {
            match self.rx_needs_notification(old_used) {
                Ok(true) => self.interrupt.trigger(InterruptKind::UsedBuffer),
                Ok(false) => {}
                Err(e) => self.stop("rx", e),
            }
        }
    }

    /// Whether the driver wants an interrupt for the used entries from `old` on: with
    /// EVENT_IDX, when its `used_event` lies in [old, next_used) (as Linux's
    /// vring_need_event); without, always. (The rx queue publishes its entries itself, see
    /// [`Self::publish_used`], so the queue's own bookkeeping of what was added does not apply.)
    fn rx_needs_notification(&self, old: u16) -> Result<bool, virtio_queue::Error> {
        if !self.rx.event_idx_enabled() {
            return Ok(true);
        }
        fence(Ordering::SeqCst);
        let at = self.rx.avail_ring() + 4 + 2 * u64::from(self.rx.size());
        let used_event = self
            .mem
            .load::<u16>(GuestAddress(at), Ordering::Relaxed)
            .map(u16::from_le)
            .map_err(virtio_queue::Error::GuestMemory)?;
        let new = self.rx.next_used();
        Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old))
    }

    /// Puts `entries` (head, length) in the rx used ring and only then moves the ring's index
    /// past all of them: the driver must never see the first buffer of a frame, whose header
    /// says how many buffers the frame spans, before the others are there.
    fn publish_used(
        queue: &mut Queue,
        mem: &GuestMemory,
        entries: &[(u16, u32)],
    ) -> Result<(), virtio_queue::Error> {
        let size = queue.size();
        let ring = GuestAddress(queue.used_ring());
        let base = queue.next_used();
        for (i, &(head, len)) in entries.iter().enumerate() {
            if head >= size {
                return Err(virtio_queue::Error::InvalidDescriptorIndex);
            }
            let slot = u64::from(base.wrapping_add(i as u16) % size);
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            let at = ring
                .checked_add(4 + 8 * slot)
                .ok_or(virtio_queue::Error::AddressOverflow)?;
            mem.write_slice(&elem, at)
                .map_err(virtio_queue::Error::GuestMemory)?;
        }
        let new = base.wrapping_add(entries.len() as u16);
        let idx_at = ring
            .checked_add(2)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        mem.store(new.to_le(), idx_at, Ordering::Release)
            .map_err(virtio_queue::Error::GuestMemory)?;
        queue.set_next_used(new);
        Ok(())
    }

    /// Places the pending frame in the guest's rx buffers: one chain, or with mergeable buffers
    /// as many as it takes. Nothing is marked used until the whole frame has room.
    fn deliver(&mut self) -> Result<Delivery, virtio_queue::Error> {
        let guest_csum = self.has(vn::VIRTIO_NET_F_GUEST_CSUM);
        let mem = &*self.mem;
        let len = self.rx_len;
        let frame = &mut self.rx_frame[..len];
        if !guest_csum {
            frame[0] &= !DATA_VALID;
        }
        let start = self.rx.next_avail();
        let ring_size = usize::from(self.rx.size());
        let mut chains = Vec::new();
        let mut room = 0usize;
        let mut unusable = false;
        while room < len {
            if chains.len() >= ring_size {
                // Every buffer of the ring together cannot hold it.
                unusable = true;
                break;
            }
            let Some(chain) = self.rx.pop_descriptor_chain(mem) else {
                if self.rx.enable_notification(mem)? {
                    // pop_descriptor_chain() is None for a bogus avail index (over a queue
                    // ahead) or a queue not ready too: fail then, do not spin.
                    self.rx.iter(mem)?;
                    continue;
                }
                self.rx.set_next_avail(start);
                return Ok(Delivery::NoBuffers);
            };
            let head = chain.head_index();
            match chain.writer(mem) {
                Ok(w)
                    if w.available_bytes() > 0
                        && (!chains.is_empty() || w.available_bytes() >= HDR_LEN) =>
                {
                    room = room.saturating_add(w.available_bytes());
                    chains.push((head, Some(w)));
                }
                _ => {
                    chains.push((head, None));
                    unusable = true;
                    break;
                }
            }
            if !self.mrg_rxbuf {
                break;
            }
        }
        if unusable || room < len {
            tracing::debug!(
                "virtio-net: a {len}-byte frame does not fit the guest's rx buffers; dropped"
            );
            let entries: Vec<(u16, u32)> = chains.iter().map(|(h, _)| (*h, 0)).collect();
            Self::publish_used(&mut self.rx, mem, &entries)?;
            return Ok(Delivery::Dropped);
        }
        let count = chains.len() as u16;
        frame[10..12].copy_from_slice(&count.to_le_bytes());
        let mut off = 0;
        let mut entries = Vec::with_capacity(chains.len());
        for (head, w) in chains {
            let Some(mut w) = w else { continue };
            let n = w.available_bytes().min(len - off);
            // The writer's slices were checked against guest memory when it was made.
            let written = match w.write_all(&frame[off..off + n]) {
                Ok(()) => n,
                Err(_) => w.bytes_written(),
            };
            entries.push((head, written as u32));
            off += n;
        }
        Self::publish_used(&mut self.rx, mem, &entries)?;
        Ok(Delivery::Done)
    }

    /// Whether a transmit header asks only for what was negotiated.
    fn tx_header_ok(&self, hdr: &[u8]) -> bool {
        let (flags, gso) = (hdr[0], hdr[1]);
        if flags & !NEEDS_CSUM != 0 {
            return false;
        }
        if flags & NEEDS_CSUM != 0 && !self.has(vn::VIRTIO_NET_F_CSUM) {
            return false;
        }
        let ecn = gso & GSO_ECN != 0;
        if ecn && !self.has(vn::VIRTIO_NET_F_HOST_ECN) {
            return false;
        }
        let gso_size = u16::from_le_bytes([hdr[4], hdr[5]]);
        match u32::from(gso & !GSO_ECN) {
            vn::VIRTIO_NET_HDR_GSO_NONE => !ecn,
            t @ (vn::VIRTIO_NET_HDR_GSO_TCPV4 | vn::VIRTIO_NET_HDR_GSO_TCPV6) => {
                let feature = if t == vn::VIRTIO_NET_HDR_GSO_TCPV4 {
                    vn::VIRTIO_NET_F_HOST_TSO4
                } else {
                    vn::VIRTIO_NET_F_HOST_TSO6
                };
                self.has(feature) && flags & NEEDS_CSUM != 0 && gso_size > 0
            }
            _ => false,
        }
    }

    /// Sends the guest's frames to the TAP until the queue is empty or the tx limiter blocks.
    pub(super) fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        let mut used = false;
        let result = self.tx_loop(&mut used);
        if let Err(e) = result {
            self.stop("tx", e);
            return;
        }
        if used {
            match self.tx.needs_notification(&*self.mem) {
                Ok(true) => self.interrupt.trigger(InterruptKind::UsedBuffer),
                Ok(false) => {}
                Err(e) => self.stop("tx", e),
            }
        }
    }

    fn tx_loop(&mut self, used: &mut bool) -> Result<(), virtio_queue::Error> {
        let mem = self.mem.clone();
        let mem = &*mem;
        loop {
            self.tx.disable_notification(mem)?;
            while let Some(chain) = self.tx.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                if let Err(what) = self.tx_parts.gather(mem, chain) {
                    self.tx_drop(what);
                    self.tx.add_used(mem, head, 0)?;
                    *used = true;
                    continue;
                }
                let len = self.tx_parts.len;
                let cost = Cost {
                    ops: 1,
                    bytes: (len - HDR_LEN) as u64,
                };
                if !self.tx_limiter.consume(cost) {
                    // The chain waits for the limiter's timer; notifications stay off until
                    // then, nothing can be sent anyway.
                    self.tx.go_to_previous_position();
                    return Ok(());
                }
                if !self.tx_header_ok(&self.tx_parts.hdr) {
                    self.tx_drop("a header with offloads that were not negotiated");
                } else {
                    // SAFETY: the parts point into guest memory, which `mem` keeps mapped for
                    // the whole call (a guest may rewrite the bytes meanwhile: that changes
                    // only what it sends; the header checked above is the copy that is sent).
                    match unsafe { self.tx_parts.send(&*self.backend) } {
                        Ok(_) => {
                            NetCounters::add(&self.counters.tx_packets, 1);
                            NetCounters::add(&self.counters.tx_bytes, (len - HDR_LEN) as u64);
                        }
                        Err(e) => {
                            tracing::debug!("virtio-net: the TAP refused a frame: {e}");
                            NetCounters::add(&self.counters.tx_dropped, 1);
                        }
                    }
                }
                self.tx.add_used(mem, head, 0)?;
                *used = true;
            }
            if !self.tx.enable_notification(mem)? {
                return Ok(());
            }
            // pop_descriptor_chain() is None for a bogus avail index (over a queue
            // ahead) or a queue not ready too: fail then, do not spin.
            self.tx.iter(mem)?;
        }
    }

    /// The TAP's fd became readable.
    pub(super) fn tap_edge(&mut self) {
        self.tap_readable = true;
        self.process_rx();
    }

    /// The guest added rx buffers.
    pub(super) fn rx_notified(&mut self) {
        self.process_rx();
    }

    pub(super) fn rx_limiter_fired(&mut self) {
        self.rx_limiter.on_timer();
        self.process_rx();
    }

    pub(super) fn tx_limiter_fired(&mut self) {
        self.tx_limiter.on_timer();
        self.process_tx();
    }

    #[cfg(test)]
    pub(super) fn rx_limiter_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.rx_limiter)
    }

    #[cfg(test)]
    pub(super) fn tx_limiter_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.tx_limiter)
    }

    fn tx_drop(&self, what: &str) {
        tracing::debug!("virtio-net: dropped {what} from the guest");
        NetCounters::add(&self.counters.tx_dropped, 1);
    }
}

impl MutEventSubscriber for NetHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let watches = [
            Events::with_data(&self.rx_event, RX_QUEUE, EventSet::IN),
            Events::with_data(&self.tx_event, TX_QUEUE, EventSet::IN),
            Events::with_data_raw(
                self.backend.as_raw_fd(),
                TAP,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ),
            Events::with_data(&self.rx_limiter, RX_LIMITER, EventSet::IN),
            Events::with_data(&self.tx_limiter, TX_LIMITER, EventSet::IN),
        ];
        for w in watches {
            if let Err(e) = ops.add(w) {
                tracing::error!("virtio-net: cannot watch an fd: {e:?}");
            }
        }
        // Frames may have queued on the TAP before the edge-triggered watch began.
        self.process_rx();
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            RX_QUEUE => {
                let _ = self.rx_event.read();
                self.rx_notified();
            }
            TX_QUEUE => {
                let _ = self.tx_event.read();
                self.process_tx();
            }
            TAP => self.tap_edge(),
            RX_LIMITER => self.rx_limiter_fired(),
            TX_LIMITER => self.tx_limiter_fired(),
            _ => {}
        }
    }
}
