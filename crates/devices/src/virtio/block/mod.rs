//! virtio-blk (virtio 1.2, 5.2) on a raw image file or a qcow2 image (`vireo_storage`): one or
//! more request queues (VIRTIO_BLK_F_MQ) served on the I/O thread, with read, write, flush
//! (durable), GET_ID (the drive's serial), discard and write-zeroes, read-only drives, ops/s and
//! bytes/s rate limiting, and optional busy polling of the queues (`poll_us`).

#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
pub mod io;
pub mod request;

use std::mem::offset_of;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberId};
use vireo_storage::Format;
use virtio_bindings::virtio_blk::*;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use self::io::{DataTransfer, DiskFile, SECTOR_SIZE};
use self::request::{
    Request, RequestType, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SEG_MAX, SIZE_MAX,
};
use super::{
    device_type, features, ActivateContext, ActivateError, EventLoopHandle, GuestMemory, Interrupt,
    InterruptKind, Poller, VirtioDevice,
};
use crate::metrics::{Counter, LatencyHistogram};
use crate::rate_limiter::{BucketConfig, LimiterHandle, RateLimiter};

const QUEUE_SIZE: u16 = 256;
/// Most request queues a drive offers (`queues`).
pub const MAX_QUEUES: u16 = 16;
/// Longest polling window a drive takes (`poll_us`): 10 ms.
pub const MAX_POLL_US: u32 = 10_000;
/// Bytes of the config space this device fills (up to and including write_zeroes_may_unmap).
const CONFIG_LEN: usize = offset_of!(virtio_blk_config, unused1);

/// How a drive's reads and writes reach its file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// One request after the other, each a preadv/pwritev on the I/O thread.
    #[default]
    Sync,
    /// The reads and writes found together in a queue go to the file as one io_uring batch,
    /// in flight at once: a disk that serves several requests at a time (NVMe, most file
    /// systems on one) gets the guest's queue depth. Raw images only.
    IoUring,
    /// No I/O at all: reads and writes complete at once without touching the file (which only
    /// gives the drive its size) or the guest's buffers. For benchmarks: what the guest's I/O
    /// path and the VMM cost without the disk ([`vireo_storage::NullDisk`]).
    Null,
}

/// A drive as the VMM configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    pub path: PathBuf,
    /// The image's format; `None` detects it from the file's first bytes, which only people
    /// should rely on (a guest can write a qcow2 header into a raw disk).
    pub format: Option<Format>,
    pub read_only: bool,
    /// I/O bypasses the host's page cache (O_DIRECT; raw images only).
    pub direct: bool,
    /// Returned by GET_ID; at most 20 bytes.
    pub serial: Option<String>,
    pub ops_limit: Option<BucketConfig>,
    pub bytes_limit: Option<BucketConfig>,
    /// Request queues offered to the guest, 1 to [`MAX_QUEUES`] (Linux uses at most one per
    /// vCPU, plus its `virtio_blk.poll_queues`).
    pub queues: u16,
    /// After a request the I/O thread keeps looking at the drive's queues for this long, with
    /// the guest's notifications off, before it waits for a notification again (0: never
    /// polls). Up to [`MAX_POLL_US`].
    pub poll_us: u32,
    pub io_engine: IoEngine,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("drive: {0}")]
    Image(#[from] vireo_storage::Error),
    #[error("drive {path}: serial {serial:?} is longer than 20 bytes")]
    Serial { path: String, serial: String },
    #[error("drive {path}: queues={queues} is out of range (1 to {MAX_QUEUES})")]
    Queues { path: String, queues: u16 },
    #[error("drive {path}: poll_us={poll_us} is out of range (0 to {MAX_POLL_US})")]
    Poll { path: String, poll_us: u32 },
    #[error("drive {path}: io_engine=io_uring is for raw images, not qcow2")]
    Engine { path: String },
}

pub struct Block {
    io: EventLoopHandle,
    disk: Arc<DiskFile>,
    opts: BlockOptions,
    config: [u8; CONFIG_LEN],
    queue_sizes: Vec<u16>,
    handler: Option<SubscriberId>,
    limits: LimiterHandle,
    stats: Arc<Stats>,
}

/// A drive whose file is open, ready to become a [`Block`] device.
#[derive(Debug)]
pub struct Drive {
    disk: DiskFile,
    opts: BlockOptions,
}

impl Drive {
    /// Checks the options and opens the file (read-only for a read-only drive).
    pub fn open(opts: BlockOptions) -> Result<Self, BlockError> {
        let path = opts.path.display().to_string();
        if let Some(s) = &opts.serial {
            if s.len() > VIRTIO_BLK_ID_BYTES as usize {
                return Err(BlockError::Serial {
                    path,
                    serial: s.clone(),
                });
            }
        }
        if !(1..=MAX_QUEUES).contains(&opts.queues) {
            let queues = opts.queues;
            return Err(BlockError::Queues { path, queues });
        }
        if opts.poll_us > MAX_POLL_US {
            let poll_us = opts.poll_us;
            return Err(BlockError::Poll { path, poll_us });
        }
        let format = match opts.format {
            Some(f) => f,
            None => vireo_storage::detect_format(&opts.path)?,
        };
        if opts.io_engine == IoEngine::IoUring && format != Format::Raw {
            return Err(BlockError::Engine { path });
        }
        let image = vireo_storage::open(&opts.path, format, opts.read_only, opts.direct)?;
        let disk = DiskFile::from_backend(match opts.io_engine {
            IoEngine::Null => Arc::new(vireo_storage::NullDisk::standing_in_for(&*image)),
            IoEngine::Sync | IoEngine::IoUring => image,
        });
        Ok(Self { disk, opts })
    }
}

impl Block {
    pub fn new(io: EventLoopHandle, drive: Drive) -> Self {
        Self {
            io,
            config: config_space(drive.disk.sectors(), drive.opts.queues),
            queue_sizes: vec![QUEUE_SIZE; usize::from(drive.opts.queues)],
            limits: LimiterHandle::new(drive.opts.ops_limit, drive.opts.bytes_limit),
            disk: Arc::new(drive.disk),
            opts: drive.opts,
            handler: None,
            stats: Arc::default(),
        }
    }

    /// The drive's counters; they survive the guest resetting the device.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The drive's rate limits, changeable while it runs.
    pub fn limits(&self) -> LimiterHandle {
        self.limits.clone()
    }
}

fn config_space(sectors: u64, queues: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(
        offset_of!(virtio_blk_config, capacity),
        &sectors.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, size_max),
        &SIZE_MAX.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, seg_max),
        &SEG_MAX.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, blk_size),
        &(SECTOR_SIZE as u32).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, num_queues),
        &queues.to_le_bytes(),
    );
    for (off, v) in [
        (
            offset_of!(virtio_blk_config, max_discard_sectors),
            MAX_DISCARD_SECTORS,
        ),
        (
            offset_of!(virtio_blk_config, max_discard_seg),
            MAX_DISCARD_SEG,
        ),
        (offset_of!(virtio_blk_config, discard_sector_alignment), 1),
        (
            offset_of!(virtio_blk_config, max_write_zeroes_sectors),
            MAX_DISCARD_SECTORS,
        ),
        (
            offset_of!(virtio_blk_config, max_write_zeroes_seg),
            MAX_DISCARD_SEG,
        ),
    ] {
        put(off, &v.to_le_bytes());
    }
    put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
    c
}

fn bit(b: u32) -> u64 {
    1u64 << b
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = features::RING_EVENT_IDX
            | bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
        if self.queue_sizes.len() > 1 {
            f |= bit(VIRTIO_BLK_F_MQ);
        }
        if self.disk.read_only() {
            f |= bit(VIRTIO_BLK_F_RO);
        } else {
            f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_space(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        // The driver may use fewer queues than offered (Linux: one per vCPU plus its poll
        // queues): the device serves those it made ready.
        let limiter = self
            .limits
            .limiter()
            .map_err(|e| ActivateError::Handler(format!("rate limiter: {e}")))?;
        let queues: Vec<RequestQueue> = ctx
            .queues
            .into_iter()
            .zip(ctx.queue_events)
            .filter(|(queue, _)| queue.ready())
            .map(|(queue, event)| RequestQueue { queue, event })
            .collect();
        if queues.is_empty() {
            return Err(ActivateError::BadQueue(0));
        }
        let poll = Duration::from_micros(u64::from(self.opts.poll_us));
        let mut handler = BlockHandler::new(
            ctx.mem,
            ctx.interrupt,
            queues,
            self.disk.clone(),
            self.opts.serial.clone().unwrap_or_default().into_bytes(),
            limiter,
            self.stats.clone(),
        );
        handler.batching = self.opts.io_engine == IoEngine::IoUring;
        self.handler = Some(if poll.is_zero() {
            self.io.add(Arc::new(Mutex::new(handler)))?
        } else {
            handler.poll_window = poll;
            // The first poll serves what is already queued and turns notifications on: a
            // machine restored from a snapshot taken while the drive polled has them off.
            handler.polling_until = Some(Instant::now());
            self.io.add_polled(Arc::new(Mutex::new(handler)))?
        });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(id) = self.handler.take() {
            self.io.remove(id);
        }
    }
}

/// A request queue and the eventfd KVM signals when the driver notifies it.
struct RequestQueue {
    queue: Queue,
    event: EventFd,
}

struct BlockHandler {
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    queues: Vec<RequestQueue>,
    disk: Arc<DiskFile>,
    serial: Vec<u8>,
    limiter: RateLimiter,
    /// A queue is unusable (its rings point outside guest memory): stop serving the drive.
    broken: bool,
    stats: Arc<Stats>,
    /// How long to go on polling after the last request (zero: the drive does not poll).
    poll_window: Duration,
    /// While the drive polls: when it stops unless another request comes. The guest's
    /// notifications are off until then.
    polling_until: Option<Instant>,
    /// Reads and writes found together go to the disk as one batch (io_engine=io_uring).
    batching: bool,
}

/// What the drive did, for `GET /metrics` (atomics: the I/O thread counts, the API thread
/// reads). Operations are counted when they complete, failed ones too; bytes only when they
/// moved.
#[derive(Debug, Default)]
pub struct Stats {
    pub reads: Counter,
    pub writes: Counter,
    pub flushes: Counter,
    /// Discard and write-zeroes requests.
    pub discards: Counter,
    /// GET_ID and request types the device does not know.
    pub other: Counter,
    pub read_bytes: Counter,
    pub written_bytes: Counter,
    /// Requests answered with an error status, and malformed ones (not answered at all when
    /// their status byte was unusable).
    pub errors: Counter,
    /// Time from taking a request off the queue (after any rate-limit wait) to writing its
    /// status: what the backing file costs.
    pub latency: LatencyHistogram,
    /// What it costs the guest to use the drive, in the events that leave guest mode: its
    /// queue notifications (each one a VM exit) and our interrupts (each one an injection,
    /// and with virtio-mmio two register accesses that exit to the VMM).
    pub notifications: Counter,
    pub interrupts: Counter,
    pub requests: Counter,
    /// With io_engine=io_uring: groups of two or more reads and writes handed to the disk
    /// together, and the requests in them.
    pub batches: Counter,
    pub batched: Counter,
}

impl Stats {
    /// Requests between two debug log lines.
    const LOG_EVERY: u64 = 1 << 14;

    fn completed(&self, n: u64) {
        let before = self.requests.get() / Self::LOG_EVERY;
        self.requests.add(n);
        let after = self.requests.get();
        if after / Self::LOG_EVERY != before {
            tracing::debug!(
                "virtio-blk: {after} requests, {} notifications, {} interrupts",
                self.notifications.get(),
                self.interrupts.get()
            );
        }
    }

    fn executed(&self, req: &Request, status: u8, len: u32, took: Duration) {
        let op = match req.kind {
            RequestType::In => &self.reads,
            RequestType::Out => &self.writes,
            RequestType::Flush => &self.flushes,
            RequestType::Discard | RequestType::WriteZeroes => &self.discards,
            RequestType::GetId | RequestType::Unsupported(_) => &self.other,
        };
        op.inc();
        if status != VIRTIO_BLK_S_OK as u8 {
            self.errors.inc();
        } else {
            match req.kind {
                RequestType::In => self.read_bytes.add(u64::from(len)),
                RequestType::Out => self.written_bytes.add(req.cost().map_or(0, |c| c.bytes)),
                _ => {}
            }
        }
        self.latency.observe(took);
    }
}

/// Puts a request in the used ring, its status byte (when it has one) written first.
fn complete(
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    status: Option<(GuestAddress, u8)>,
    len: u32,
) -> Result<(), virtio_queue::Error> {
    // The status address was checked to be in guest memory while parsing.
    let written = match status {
        Some((addr, s)) if mem.write_obj(s, addr).is_ok() => len + 1,
        _ => 0,
    };
    queue.add_used(mem, head, written)
}

/// Reads and writes popped from a queue, to be carried out together.
#[derive(Default)]
struct Batch {
    requests: Vec<(u16, Request, Instant)>,
}

impl Batch {
    /// Requests in one batch at most.
    const MAX: usize = 64;

    /// Carries out the batched requests and puts them in the used ring; returns how many.
    fn complete(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        disk: &DiskFile,
        stats: &Stats,
    ) -> Result<u64, virtio_queue::Error> {
        if self.requests.is_empty() {
            return Ok(0);
        }
        let ops: Vec<DataTransfer<'_>> = self
            .requests
            .iter()
            .filter_map(|(_, req, _)| req.transfer(disk).and_then(Result::ok))
            .collect();
        // Every batched request was checked to be a transfer, against the same disk.
        debug_assert_eq!(ops.len(), self.requests.len());
        let results = disk.transfer_batch(mem, &ops);
        drop(ops);
        let n = self.requests.len() as u64;
        if n > 1 {
            stats.batches.inc();
            stats.batched.add(n);
        }
        for ((head, req, start), r) in self.requests.drain(..).zip(results) {
            let (status, len) = req.transferred(r);
            stats.executed(&req, status, len, start.elapsed());
            complete(queue, mem, head, Some((req.status, status)), len)?;
        }
        Ok(n)
    }
}

/// What serving a queue did.
#[derive(Debug, Default, Clone, Copy)]
struct Served {
    /// Requests put in the used ring.
    used: u64,
    /// The rate limiter holds the rest back until its timer fires.
    throttled: bool,
}

impl BlockHandler {
    fn new(
        mem: Arc<GuestMemory>,
        interrupt: Arc<Interrupt>,
        queues: Vec<RequestQueue>,
        disk: Arc<DiskFile>,
        serial: Vec<u8>,
        limiter: RateLimiter,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            mem,
            interrupt,
            queues,
            disk,
            serial,
            limiter,
            broken: false,
            stats,
            poll_window: Duration::ZERO,
            polling_until: None,
            batching: false,
        }
    }

    /// Serves every available request of queue `qi` the rate limiter lets through. Unless
    /// `keep_polling`, it ends with the guest's notifications on (and serves what raced in
    /// while turning them on); with it they stay off, since the I/O thread looks again soon.
    fn serve_queue(
        &mut self,
        qi: usize,
        keep_polling: bool,
    ) -> Result<Served, virtio_queue::Error> {
        let Self {
            mem,
            queues,
            disk,
            serial,
            limiter,
            stats,
            batching,
            ..
        } = self;
        let mem = &**mem;
        let queue = &mut queues[qi].queue;
        let mut served = Served::default();
        // With batching, reads and writes wait here to go to the disk together (one system
        // call, all in flight at once); any other request first completes them, so it runs
        // after every request before it, as when each ran alone.
        let mut batch = Batch::default();
        'outer: loop {
            queue.disable_notification(mem)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let (status, len) = match Request::parse(chain, mem) {
                    Ok(req) => {
                        if let Some(cost) = req.cost() {
                            if !limiter.consume(cost) {
                                // Keep the request for when the limiter's timer fires.
                                queue.go_to_previous_position();
                                served.throttled = true;
                                break 'outer;
                            }
                        }
                        if *batching && matches!(req.transfer(disk), Some(Ok(_))) {
                            batch.requests.push((head, req, Instant::now()));
                            if batch.requests.len() == Batch::MAX {
                                served.used += batch.complete(queue, mem, disk, stats)?;
                            }
                            continue;
                        }
                        served.used += batch.complete(queue, mem, disk, stats)?;
                        let start = Instant::now();
                        let (status, len) = req.execute(mem, disk, serial);
                        stats.executed(&req, status, len, start.elapsed());
                        (Some((req.status, status)), len)
                    }
                    Err(r) => {
                        tracing::debug!("virtio-blk: bad request: {}", r.error);
                        stats.errors.inc();
                        (r.status.map(|a| (a, VIRTIO_BLK_S_IOERR as u8)), 0)
                    }
                };
                complete(queue, mem, head, status, len)?;
                served.used += 1;
            }
            served.used += batch.complete(queue, mem, disk, stats)?;
            // pop_descriptor_chain() is None for a bogus avail index (over a queue ahead) or
            // a queue not ready too: fail then, do not spin.
            if keep_polling {
                queue.iter(mem)?;
                break;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
            queue.iter(mem)?;
        }
        served.used += batch.complete(queue, mem, disk, stats)?;
        Ok(served)
    }

    /// Serves queue `qi`, or every queue, and interrupts the guest if a queue it served asks
    /// for that (one interrupt line for all).
    fn serve(
        &mut self,
        which: Option<usize>,
        keep_polling: bool,
    ) -> Result<Served, virtio_queue::Error> {
        let range = match which {
            Some(qi) => qi..qi + 1,
            None => 0..self.queues.len(),
        };
        let mut total = Served::default();
        let mut notify = false;
        for qi in range {
            let served = self.serve_queue(qi, keep_polling)?;
            if served.used > 0 && self.queues[qi].queue.needs_notification(&*self.mem)? {
                notify = true;
            }
            total.used += served.used;
            if served.throttled {
                total.throttled = true;
                break;
            }
        }
        if total.throttled {
            tracing::trace!("virtio-blk: throttled");
        }
        if notify {
            self.interrupt.trigger(InterruptKind::UsedBuffer);
            self.stats.interrupts.inc();
        }
        self.stats.completed(total.used);
        Ok(total)
    }

    /// Serves the notified queue (or all of them). A polling drive starts, or goes on,
    /// polling.
    fn run(&mut self, which: Option<usize>) {
        if self.broken || self.limiter.is_blocked() {
            return;
        }
        let polls = !self.poll_window.is_zero();
        match self.serve(which, polls) {
            Ok(served) if polls && !served.throttled => {
                self.polling_until = Some(Instant::now() + self.poll_window)
            }
            Ok(_) => {}
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: virtio_queue::Error) {
        // Guest-triggered, again after every reset: limited.
        crate::rate_limited!(
            warn,
            "virtio-blk: the guest broke its queue ({e}); it is no longer served"
        );
        self.broken = true;
        self.polling_until = None;
    }
}

impl Poller for BlockHandler {
    fn poll(&mut self, now: Instant) -> bool {
        let Some(until) = self.polling_until else {
            return false;
        };
        if self.broken || self.limiter.is_blocked() {
            // Notifications stay off: the limiter's timer serves the queue next (run()).
            self.polling_until = None;
            return false;
        }
        let go_on = now < until;
        match self.serve(None, go_on) {
            Err(e) => {
                self.fail(e);
                false
            }
            Ok(served) if served.throttled => {
                self.polling_until = None;
                false
            }
            Ok(served) if served.used > 0 => {
                self.polling_until = Some(now + self.poll_window);
                true
            }
            Ok(_) if go_on => true,
            Ok(_) => {
                // The window passed with nothing to do: notifications are on again.
                self.polling_until = None;
                false
            }
        }
    }
}

impl MutEventSubscriber for BlockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for q in &self.queues {
            if let Err(e) = ops.add(Events::new(&q.event, EventSet::IN)) {
                tracing::error!("virtio-blk: cannot watch its queue: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::new(&self.limiter, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot watch its rate limiter: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.limiter.as_raw_fd() {
            self.limiter.on_timer();
            self.run(None);
            return;
        }
        let Some(qi) = self
            .queues
            .iter()
            .position(|q| q.event.as_raw_fd() == events.fd())
        else {
            return;
        };
        // The eventfd counts the notifications since the last read.
        if let Ok(n) = self.queues[qi].event.read() {
            self.stats.notifications.add(n);
        }
        self.run(Some(qi));
    }
}

#[cfg(test)]
mod tests;
