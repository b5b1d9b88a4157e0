//! virtio-blk (virtio 1.2, 5.2) on a raw image file or a qcow2 image (`vireo_storage`): one
//! request queue served on the I/O thread, with read, write, flush (durable), GET_ID (the
//! drive's serial), discard and write-zeroes, read-only drives, and ops/s and bytes/s rate
//! limiting.

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
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use self::io::{DiskFile, SECTOR_SIZE};
use self::request::{
    Request, RequestType, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SEG_MAX, SIZE_MAX,
};
use super::{
    device_type, features, ActivateContext, ActivateError, EventLoopHandle, GuestMemory, Interrupt,
    InterruptKind, VirtioDevice,
};
use crate::metrics::{Counter, LatencyHistogram};
use crate::rate_limiter::{BucketConfig, LimiterHandle, RateLimiter};

const QUEUE_SIZES: &[u16] = &[256];
/// Bytes of the config space this device fills (up to and including write_zeroes_may_unmap).
const CONFIG_LEN: usize = offset_of!(virtio_blk_config, unused1);

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
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("drive: {0}")]
    Image(#[from] vireo_storage::Error),
    #[error("drive {path}: serial {serial:?} is longer than 20 bytes")]
    Serial { path: String, serial: String },
}

pub struct Block {
    io: EventLoopHandle,
    disk: Arc<DiskFile>,
    opts: BlockOptions,
    config: [u8; CONFIG_LEN],
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
        let format = match opts.format {
            Some(f) => f,
            None => vireo_storage::detect_format(&opts.path)?,
        };
        let disk = DiskFile::open_image(&opts.path, format, opts.read_only, opts.direct)?;
        Ok(Self { disk, opts })
    }
}

impl Block {
    pub fn new(io: EventLoopHandle, drive: Drive) -> Self {
        Self {
            io,
            config: config_space(drive.disk.sectors()),
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

fn config_space(sectors: u64) -> [u8; CONFIG_LEN] {
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
        &1u16.to_le_bytes(),
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
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut f = features::RING_EVENT_IDX
            | bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
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

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let (Some(queue), Some(event)) = (ctx.queues.pop(), ctx.queue_events.pop()) else {
            return Err(ActivateError::BadQueue(0));
        };
        let limiter = self
            .limits
            .limiter()
            .map_err(|e| ActivateError::Handler(format!("rate limiter: {e}")))?;
        let handler = BlockHandler {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queue,
            event,
            disk: self.disk.clone(),
            serial: self.opts.serial.clone().unwrap_or_default().into_bytes(),
            limiter,
            broken: false,
            stats: self.stats.clone(),
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

struct BlockHandler {
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    queue: Queue,
    event: EventFd,
    disk: Arc<DiskFile>,
    serial: Vec<u8>,
    limiter: RateLimiter,
    /// The queue itself is unusable (its rings point outside guest memory): stop serving it.
    broken: bool,
    stats: Arc<Stats>,
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

impl BlockHandler {
    /// Serves every available request the rate limiter lets through.
    fn process_queue(&mut self) -> Result<(), virtio_queue::Error> {
        let mem = &*self.mem;
        let mut used = 0u64;
        let mut throttled = false;
        'outer: loop {
            self.queue.disable_notification(mem)?;
            while let Some(chain) = self.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let (status, len) = match Request::parse(chain, mem) {
                    Ok(req) => {
                        if let Some(cost) = req.cost() {
                            if !self.limiter.consume(cost) {
                                // Keep the request for when the limiter's timer fires.
                                self.queue.go_to_previous_position();
                                throttled = true;
                                break 'outer;
                            }
                        }
                        let start = Instant::now();
                        let (status, len) = req.execute(mem, &self.disk, &self.serial);
                        self.stats.executed(&req, status, len, start.elapsed());
                        (Some((req.status, status)), len)
                    }
                    Err(r) => {
                        tracing::debug!("virtio-blk: bad request: {}", r.error);
                        self.stats.errors.inc();
                        (r.status.map(|a| (a, VIRTIO_BLK_S_IOERR as u8)), 0)
                    }
                };
                // The status address was checked to be in guest memory while parsing.
                let written = match status {
                    Some((addr, s)) if mem.write_obj(s, addr).is_ok() => len + 1,
                    _ => 0,
                };
                self.queue.add_used(mem, head, written)?;
                used += 1;
            }
            if !self.queue.enable_notification(mem)? {
                break;
            }
            // pop_descriptor_chain() is None for a bogus avail index (over a queue
            // ahead) or a queue not ready too: fail then, do not spin.
            self.queue.iter(mem)?;
        }
        if throttled {
            tracing::trace!("virtio-blk: throttled");
        }
        if used > 0 && self.queue.needs_notification(mem)? {
            self.interrupt.trigger(InterruptKind::UsedBuffer);
            self.stats.interrupts.inc();
        }
        self.stats.completed(used);
        Ok(())
    }

    fn run(&mut self) {
        if self.broken || self.limiter.is_blocked() {
            return;
        }
        if let Err(e) = self.process_queue() {
            tracing::warn!("virtio-blk: the guest broke its queue ({e}); it is no longer served");
            self.broken = true;
        }
    }
}

impl MutEventSubscriber for BlockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.event, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot watch its queue: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.limiter, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot watch its rate limiter: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.limiter.as_raw_fd() {
            self.limiter.on_timer();
        } else if let Ok(n) = self.event.read() {
            // The eventfd counts the notifications since the last read.
            self.stats.notifications.add(n);
        }
        self.run();
    }
}

#[cfg(test)]
mod tests;
