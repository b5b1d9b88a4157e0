//! virtio-balloon: the host asks the guest to give memory back (inflate) or take it again
//! (deflate), and reads the guest's memory statistics.
//!
//! Inflated pages are released to the host with `MADV_DONTNEED`; a later guest access faults
//! in a fresh zero page, so deflate needs no host work. Every page frame number the guest sends
//! is checked against guest RAM before the host touches anything.

use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberId};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{
    device_type, features, ActivateContext, ActivateError, EventLoopHandle, GuestMemory, Interrupt,
    InterruptKind, VirtioDevice,
};

#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;

const QUEUE_SIZE: u16 = 256;
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const STATS: usize = 2;
const PAGE_SHIFT: u64 = 12;
const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Linux sends at most 256 PFNs per request; more in one chain is not a balloon driver.
const MAX_PFNS_PER_REQUEST: usize = 1024;
const MAX_STATS: usize = 32;

pub const F_MUST_TELL_HOST: u64 = 1 << 0;
pub const F_STATS_VQ: u64 = 1 << 1;
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;

/// The guest's memory statistics (virtio 1.2, 5.5.6.3), in bytes where they are sizes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BalloonStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
}

impl BalloonStats {
    fn set(&mut self, tag: u16, val: u64) {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            _ => return,
        };
        *slot = Some(val);
    }
}

/// What the balloon looks like from the host.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BalloonStatus {
    /// Pages the host asked the guest to give back.
    pub target_pages: u32,
    /// Pages the guest says it has given back.
    pub actual_pages: u32,
    /// Pages released to the host through inflate requests, and taken back by deflates.
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    /// PFNs refused because they were outside guest RAM.
    pub invalid_pfns: u64,
    pub stats: Option<BalloonStats>,
}

#[derive(Default)]
struct Shared {
    status: BalloonStatus,
    interrupt: Option<Arc<Interrupt>>,
}

/// Changes the balloon's target and reads its state from any thread.
#[derive(Clone)]
pub struct BalloonControl(Arc<Mutex<Shared>>);

impl BalloonControl {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how many MiB the guest should give back; tells a running guest at once.
    pub fn set_target_mib(&self, mib: u32) {
        let mut s = self.lock();
        s.status.target_pages = mib.saturating_mul((1 << 20) / PAGE_SIZE as u32);
        if let Some(i) = &s.interrupt {
            i.trigger(InterruptKind::ConfigChange);
        }
    }

    pub fn status(&self) -> BalloonStatus {
        self.lock().status
    }
}

pub struct Balloon {
    io: EventLoopHandle,
    handler: Option<SubscriberId>,
    shared: BalloonControl,
    stats_interval: Option<Duration>,
    deflate_on_oom: bool,
}

impl Balloon {
    /// A balloon asking for `target_mib` at start; statistics are requested every
    /// `stats_interval_s` seconds (0: no statistics queue).
    pub fn new(
        io: EventLoopHandle,
        target_mib: u32,
        deflate_on_oom: bool,
        stats_interval_s: u32,
    ) -> Self {
        let shared = BalloonControl(Arc::new(Mutex::new(Shared::default())));
        shared.set_target_mib(target_mib);
        Self {
            io,
            handler: None,
            shared,
            stats_interval: (stats_interval_s > 0)
                .then(|| Duration::from_secs(stats_interval_s.into())),
            deflate_on_oom,
        }
    }

    pub fn control(&self) -> BalloonControl {
        self.shared.clone()
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        if self.stats_interval.is_some() {
            &[QUEUE_SIZE; 3]
        } else {
            &[QUEUE_SIZE; 2]
        }
    }

    fn features(&self) -> u64 {
        let mut f = features::RING_EVENT_IDX;
        if self.stats_interval.is_some() {
            f |= F_STATS_VQ;
        }
        if self.deflate_on_oom {
            f |= F_DEFLATE_ON_OOM;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let s = self.shared.status();
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&s.target_pages.to_le_bytes());
        config[4..].copy_from_slice(&s.actual_pages.to_le_bytes());
        super::read_config_space(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (offset 4, 4 bytes) is the driver's to write.
        if let (4, [a, b, c, d]) = (offset, data) {
            self.shared.lock().status.actual_pages = u32::from_le_bytes([*a, *b, *c, *d]);
        }
    }

    fn restore_config(&mut self, config: &[u8]) {
        if let [t0, t1, t2, t3, a0, a1, a2, a3, ..] = *config {
            let mut s = self.shared.lock();
            s.status.target_pages = u32::from_le_bytes([t0, t1, t2, t3]);
            s.status.actual_pages = u32::from_le_bytes([a0, a1, a2, a3]);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let stats_negotiated = ctx.features & F_STATS_VQ != 0 && self.stats_interval.is_some();
        let mut queues = ctx.queues.into_iter();
        let mut events = ctx.queue_events.into_iter();
        let mut next = |i| match (queues.next(), events.next()) {
            (Some(q), Some(e)) => Ok((q, e)),
            _ => Err(ActivateError::BadQueue(i)),
        };
        let inflate = next(INFLATE)?;
        let deflate = next(DEFLATE)?;
        let stats = if stats_negotiated {
            let timer = TimerFd::new().map_err(|e| ActivateError::Handler(e.to_string()))?;
            Some((next(STATS)?, timer))
        } else {
            None
        };
        self.shared.lock().interrupt = Some(ctx.interrupt.clone());
        let handler = BalloonHandler {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            inflate,
            deflate,
            stats,
            stats_head: None,
            stats_interval: self.stats_interval.unwrap_or(Duration::from_secs(1)),
            shared: self.shared.clone(),
        };
        self.handler = Some(self.io.add(Arc::new(Mutex::new(handler)))?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(id) = self.handler.take() {
            self.io.remove(id);
        }
        let mut s = self.shared.lock();
        s.interrupt = None;
        s.status.actual_pages = 0;
    }
}

struct BalloonHandler {
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    inflate: (Queue, EventFd),
    deflate: (Queue, EventFd),
    stats: Option<((Queue, EventFd), TimerFd)>,
    /// The statistics buffer the guest filled, held until the next request for statistics.
    stats_head: Option<u16>,
    stats_interval: Duration,
    shared: BalloonControl,
}

/// Reads the PFNs of one request, at most MAX_PFNS_PER_REQUEST.
fn read_pfns(reader: &mut impl Read) -> Vec<u32> {
    let mut pfns = Vec::new();
    let mut b = [0u8; 4];
    while pfns.len() < MAX_PFNS_PER_REQUEST && reader.read_exact(&mut b).is_ok() {
        pfns.push(u32::from_le_bytes(b));
    }
    pfns
}

/// Gives one guest page back to the host. False if the PFN is not guest RAM.
fn release_page(mem: &GuestMemory, pfn: u32) -> bool {
    let gpa = GuestAddress(u64::from(pfn) << PAGE_SHIFT);
    // The whole page must be inside one region: check its last byte too.
    let (Ok(host), Ok(_)) = (
        mem.get_host_address(gpa),
        mem.get_host_address(GuestAddress(gpa.0 + PAGE_SIZE - 1)),
    ) else {
        return false;
    };
    // SAFETY: `host` is the start of a page of guest RAM mapped by `mem` (both ends checked
    // above); MADV_DONTNEED only drops its contents, which the guest has given up.
    unsafe { libc::madvise(host.cast(), PAGE_SIZE as usize, libc::MADV_DONTNEED) };
    true
}

impl BalloonHandler {
    fn process_pfn_queue(&mut self, which: usize) -> Result<(), virtio_queue::Error> {
        let mem = &*self.mem;
        let (queue, _) = if which == INFLATE {
            &mut self.inflate
        } else {
            &mut self.deflate
        };
        let (mut done, mut invalid) = (0u64, 0u64);
        // With EVENT_IDX the driver kicks only when its index passes the avail_event the
        // device publishes (enable_notification), so every pass ends by publishing it.
        loop {
            queue.disable_notification(mem)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                if let Ok(mut reader) = chain.reader(mem) {
                    for pfn in read_pfns(&mut reader) {
                        // Deflated pages need no host work: the guest's next touch faults
                        // them in.
                        if which == DEFLATE || release_page(mem, pfn) {
                            done += 1;
                        } else {
                            invalid += 1;
                        }
                    }
                }
                queue.add_used(mem, head, 0)?;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
            // A bogus avail index or a queue not ready: fail, do not spin.
            queue.iter(mem)?;
        }
        let notify = queue.needs_notification(mem)?;
        tracing::debug!(
            "virtio-balloon: {} {done} pages ({invalid} invalid), notify={notify}",
            if which == INFLATE {
                "inflated"
            } else {
                "deflated"
            }
        );
        {
            let mut s = self.shared.lock();
            if which == INFLATE {
                s.status.inflated_pages += done;
            } else {
                s.status.deflated_pages += done;
            }
            s.status.invalid_pfns += invalid;
        }
        if notify {
            self.interrupt.trigger(InterruptKind::UsedBuffer);
        }
        Ok(())
    }

    /// The guest handed over its statistics: record them and keep the buffer until the next
    /// request.
    fn process_stats_queue(&mut self) -> Result<(), virtio_queue::Error> {
        let mem = &*self.mem;
        let Some(((queue, _), timer)) = &mut self.stats else {
            return Ok(());
        };
        loop {
            queue.disable_notification(mem)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let mut stats = BalloonStats::default();
                if let Ok(mut reader) = chain.reader(mem) {
                    let mut entry = [0u8; 10];
                    for _ in 0..MAX_STATS {
                        if reader.read_exact(&mut entry).is_err() {
                            break;
                        }
                        let tag = u16::from_le_bytes([entry[0], entry[1]]);
                        let val = u64::from_le_bytes(entry[2..].try_into().expect("8 bytes"));
                        stats.set(tag, val);
                    }
                }
                self.shared.lock().status.stats = Some(stats);
                // A second buffer while one is held: give the older one back at once.
                if let Some(old) = self.stats_head.replace(head) {
                    queue.add_used(mem, old, 0)?;
                }
            }
            if !queue.enable_notification(mem)? {
                break;
            }
            queue.iter(mem)?;
        }
        if let Err(e) = timer.reset(self.stats_interval, None) {
            tracing::warn!("virtio-balloon: statistics timer: {e}");
        }
        Ok(())
    }

    /// Time for fresh statistics: return the held buffer so the guest refills it.
    fn request_stats(&mut self) -> Result<(), virtio_queue::Error> {
        let mem = &*self.mem;
        let Some(((queue, _), timer)) = &mut self.stats else {
            return Ok(());
        };
        let _ = timer.wait();
        if let Some(head) = self.stats_head.take() {
            queue.add_used(mem, head, 0)?;
            if queue.needs_notification(mem)? {
                self.interrupt.trigger(InterruptKind::UsedBuffer);
            }
        }
        Ok(())
    }
}

const EV_INFLATE: u32 = 0;
const EV_DEFLATE: u32 = 1;
const EV_STATS: u32 = 2;
const EV_STATS_TIMER: u32 = 3;

impl MutEventSubscriber for BalloonHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let mut watch = |fd: &dyn std::os::fd::AsRawFd, data| {
            if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), data, EventSet::IN)) {
                tracing::error!("virtio-balloon: cannot watch a queue: {e:?}");
            }
        };
        watch(&self.inflate.1, EV_INFLATE);
        watch(&self.deflate.1, EV_DEFLATE);
        if let Some(((_, evt), timer)) = &self.stats {
            watch(evt, EV_STATS);
            watch(timer, EV_STATS_TIMER);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let result = match events.data() {
            EV_INFLATE => {
                let _ = self.inflate.1.read();
                self.process_pfn_queue(INFLATE)
            }
            EV_DEFLATE => {
                let _ = self.deflate.1.read();
                self.process_pfn_queue(DEFLATE)
            }
            EV_STATS => {
                if let Some(((_, evt), _)) = &self.stats {
                    let _ = evt.read();
                }
                self.process_stats_queue()
            }
            EV_STATS_TIMER => self.request_stats(),
            _ => Ok(()),
        };
        if let Err(e) = result {
            // The guest can break its queues and notify them as often as it likes: limited.
            crate::rate_limited!(warn, "virtio-balloon: bad queue: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfns_outside_guest_ram_are_refused() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(release_page(&mem, 0));
        assert!(release_page(&mem, 255));
        assert!(!release_page(&mem, 256));
        assert!(!release_page(&mem, u32::MAX));
    }

    #[test]
    fn pfn_requests_are_bounded() {
        let bytes = vec![1u8; 4 * (MAX_PFNS_PER_REQUEST + 10) + 3];
        let pfns = read_pfns(&mut &bytes[..]);
        assert_eq!(pfns.len(), MAX_PFNS_PER_REQUEST);
        assert_eq!(pfns[0], 0x0101_0101);
    }

    #[test]
    fn config_space_and_target() {
        let io = super::super::EventLoop::new().unwrap();
        let b = Balloon::new(io.handle(), 64, true, 1);
        let mut c = [0u8; 8];
        b.read_config(0, &mut c);
        assert_eq!(u32::from_le_bytes(c[..4].try_into().unwrap()), 64 * 256);
        b.control().set_target_mib(0);
        let mut t = [0u8; 4];
        b.read_config(0, &mut t);
        assert_eq!(t, [0; 4]);
        let mut beyond = [0xffu8; 4];
        b.read_config(100, &mut beyond);
        assert_eq!(beyond, [0; 4]);
        assert_ne!(b.features() & F_STATS_VQ, 0);
        assert_eq!(b.queue_max_sizes().len(), 3);
    }

    #[test]
    fn stats_entries_fill_known_tags() {
        let mut s = BalloonStats::default();
        s.set(4, 1234);
        s.set(99, 1);
        assert_eq!(s.free_memory, Some(1234));
        assert_eq!(s.total_memory, None);
    }
}
