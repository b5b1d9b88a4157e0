//! The virtio-mmio transport (virtio 1.2, 4.2; version 2 register layout only).
//!
//! Everything here is driven by guest writes and is treated as hostile: any offset, width or
//! value is accepted without panicking, queue set-up is honoured only in the states the
//! specification allows, and a device that cannot start is marked DEVICE_NEEDS_RESET rather
//! than left half-running.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{features, status, ActivateContext, GuestMemory, Interrupt, VirtioDevice};
use crate::bus::BusDevice;

/// Size of one device's register window.
pub const MMIO_LEN: u64 = 0x200;
/// Offset of QueueNotify, where KVM's ioeventfds listen.
pub const QUEUE_NOTIFY: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4f52_4956; // "VIRO"
const CONFIG_SPACE: u64 = 0x100;

/// One queue's registers as the driver programmed them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueRegs {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub event_idx: bool,
}

/// What a snapshot keeps of a transport and its device: the registers, the interrupt status
/// and the device's configuration space. Ring positions are not kept: they are in guest
/// memory (the used ring's index), which the snapshot has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransportState {
    pub device_type: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueRegs>,
    /// The first bytes of the device's configuration space (a MAC, a balloon's sizes).
    pub config: Vec<u8>,
}

/// Bytes of configuration space a snapshot keeps; every device's fits.
const SAVED_CONFIG_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("device type {found} where the snapshot has {expected}")]
    DeviceType { expected: u32, found: u32 },
    #[error("device type {dev}: {found} queues where the snapshot has {expected}")]
    QueueCount {
        dev: u32,
        expected: usize,
        found: usize,
    },
    #[error("device type {dev}: queue {queue}: {what}")]
    Queue {
        dev: u32,
        queue: usize,
        what: String,
    },
    #[error("device type {dev} failed to start again")]
    Activate { dev: u32 },
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    active: bool,
}

impl MmioTransport {
    /// `queue_events[i]` must be the eventfd registered with KVM for notifications of queue i.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemory>,
        interrupt: Arc<Interrupt>,
        queue_events: Vec<EventFd>,
    ) -> Result<Self, virtio_queue::Error> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_events,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The transport's state, for a snapshot. Call it with the vCPUs parked and the I/O
    /// thread frozen, so that nothing changes meanwhile.
    pub fn save_state(&self) -> TransportState {
        let mut config = vec![0u8; SAVED_CONFIG_LEN];
        self.device.read_config(0, &mut config);
        TransportState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: self
                .queues
                .iter()
                .map(|q| QueueRegs {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    event_idx: q.event_idx_enabled(),
                })
                .collect(),
            config,
        }
    }

    /// Brings a freshly built transport (same device type, guest memory already restored) to
    /// `state`. A device the driver had started is started again with its queues resuming at
    /// the used ring's index: requests it had taken but not completed are taken again (the
    /// ones a snapshot can catch in flight are idempotent: reads, writes of the same data,
    /// buffers offered for the device to fill). `state` comes from a file or a network peer:
    /// every queue is validated against guest memory before the device sees it.
    pub fn restore_state(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        let dev = self.device.device_type();
        if state.device_type != dev {
            return Err(RestoreError::DeviceType {
                expected: state.device_type,
                found: dev,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(RestoreError::QueueCount {
                dev,
                expected: state.queues.len(),
                found: self.queues.len(),
            });
        }
        self.device.restore_config(&state.config);
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features & self.offered_features();
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.config_generation = state.config_generation;
        let mem = &*self.mem;
        for (i, (q, r)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            let bad = |what: String| RestoreError::Queue {
                dev,
                queue: i,
                what,
            };
            q.reset();
            if r.size != q.max_size() || r.ready {
                // The driver may have picked a smaller size; set_size refuses bad ones.
                q.try_set_size(r.size)
                    .map_err(|e| bad(format!("size {}: {e}", r.size)))?;
            }
            q.try_set_desc_table_address(vm_memory::GuestAddress(r.desc_table))
                .map_err(|e| bad(format!("descriptor table: {e}")))?;
            q.try_set_avail_ring_address(vm_memory::GuestAddress(r.avail_ring))
                .map_err(|e| bad(format!("available ring: {e}")))?;
            q.try_set_used_ring_address(vm_memory::GuestAddress(r.used_ring))
                .map_err(|e| bad(format!("used ring: {e}")))?;
            q.set_event_idx(r.event_idx);
            q.set_ready(r.ready);
            if r.ready {
                if !q.is_valid(mem) {
                    return Err(bad("rings outside guest memory".into()));
                }
                let used = q
                    .used_idx(mem, Ordering::Acquire)
                    .map_err(|e| bad(format!("used index: {e}")))?;
                q.set_next_avail(used.0);
                q.set_next_used(used.0);
            }
        }
        self.interrupt.ack(u32::MAX);
        self.interrupt.restore(state.interrupt_status);
        if self.status & status::DRIVER_OK != 0
            && self.status & status::FEATURES_OK != 0
            && self.status & status::DEVICE_NEEDS_RESET == 0
        {
            self.activate(true);
            if !self.active {
                return Err(RestoreError::Activate { dev });
            }
            // Work the driver announced just before the snapshot may not have been seen:
            // a notification per queue makes the device look (an empty queue costs nothing).
            for e in &self.queue_events {
                let _ = e.write(1);
            }
        }
        if state.interrupt_status != 0 {
            // The interrupt may have been raised and not yet taken: raise it again (a
            // driver that finds nothing new ignores it).
            let _ = self.interrupt.eventfd().write(1);
        }
        Ok(())
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | features::VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only after FEATURES_OK and before DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added, one stage at a time; anything else is a driver bug.
        if value & self.status != self.status {
            return;
        }
        let new = value & !self.status;
        if new & status::FEATURES_OK != 0 {
            let offered = self.offered_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & features::VERSION_1 != 0;
            if !ok {
                // FEATURES_OK stays clear: the driver reads it back and gives up.
                self.status = value & !status::FEATURES_OK;
                return;
            }
            let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
        }
        self.status = value;
        if new & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 {
            self.activate(false);
        }
    }

    /// Starts the device on the queues the driver set up; `restored` when they come from a
    /// snapshot or a migration rather than the driver.
    fn activate(&mut self, restored: bool) {
        let mem = &*self.mem;
        let bad = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(mem));
        let events: Result<Vec<EventFd>, _> =
            self.queue_events.iter().map(EventFd::try_clone).collect();
        // The device gets its own copy of each queue; the transport keeps the registers.
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect();
        let result = match (bad, events, queues) {
            (Some(i), _, _) => Err(super::ActivateError::BadQueue(i)),
            (None, Err(e), _) => Err(super::ActivateError::Handler(e.to_string())),
            (None, _, Err(e)) => Err(super::ActivateError::Handler(e.to_string())),
            (None, Ok(queue_events), Ok(queues)) => self.device.activate(ActivateContext {
                mem: self.mem.clone(),
                interrupt: self.interrupt.clone(),
                features: self.driver_features,
                queues,
                queue_events,
                restored,
            }),
        };
        match result {
            Ok(()) => self.active = true,
            Err(e) => {
                // The guest can reset and restart the device as often as it likes.
                crate::rate_limited!(
                    warn,
                    "virtio device type {} failed to start: {e}",
                    self.device.device_type()
                );
                self.status |= status::DEVICE_NEEDS_RESET;
                self.interrupt.trigger(super::InterruptKind::ConfigChange);
            }
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let config_ok = self.queue_config_allowed();
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 if self.status & status::FEATURES_OK == 0 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 if config_ok => {
                if let Some(q) = self.selected_queue() {
                    // Sizes that are zero, too large or not a power of two are refused by
                    // the queue; it keeps its previous size and fails validation later.
                    let _ = q.try_set_size(v.min(u32::from(u16::MAX)) as u16);
                }
            }
            0x44 if config_ok => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 if config_ok => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            0x84 if config_ok => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            0x90 if config_ok => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 if config_ok => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 if config_ok => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 if config_ok => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            // QueueNotify is normally served by an ioeventfd; a notification that still
            // reaches here (no ioeventfd support) is forwarded to the same eventfd.
            QUEUE_NOTIFY => {
                if let Some(e) = self.queue_events.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                let v = self.read_register(offset);
                data.copy_from_slice(&v.to_le_bytes());
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_register(offset, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_limit::{tests::capture_logs, BURST};
    use crate::virtio::ActivateError;
    use vm_memory::GuestAddress;

    /// A device that can never start (as a net device whose TAP is gone).
    struct Unstartable;

    impl VirtioDevice for Unstartable {
        fn device_type(&self) -> u32 {
            super::super::device_type::NET
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn activate(&mut self, _ctx: ActivateContext) -> Result<(), ActivateError> {
            Err(ActivateError::Handler("the TAP is gone".into()))
        }
        fn reset(&mut self) {}
    }

    fn write(t: &mut MmioTransport, offset: u64, v: u32) {
        BusDevice::write(t, offset, &v.to_le_bytes());
    }

    #[test]
    fn a_guest_restarting_a_broken_device_cannot_flood_the_log() {
        let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
        let interrupt = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
        let mut t = MmioTransport::new(
            Box::new(Unstartable),
            mem,
            interrupt,
            vec![EventFd::new(0).unwrap()],
        )
        .unwrap();
        const ROUNDS: usize = 1000;
        let log = capture_logs(|| {
            for _ in 0..ROUNDS {
                // Reset, then the driver's start-up sequence up to DRIVER_OK.
                write(&mut t, 0x70, 0);
                write(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
                write(&mut t, 0x24, 1);
                write(&mut t, 0x20, 1); // VERSION_1, the high word's bit 0
                let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
                write(&mut t, 0x70, s);
                write(&mut t, 0x70, s | status::DRIVER_OK);
                assert!(!t.active);
                assert_ne!(t.status & status::DEVICE_NEEDS_RESET, 0);
            }
        });
        let lines = log
            .lines()
            .filter(|l| l.contains("failed to start"))
            .count();
        assert!(lines >= 1, "the failure is still logged: {log}");
        assert!(
            lines <= BURST as usize,
            "{lines} lines for {ROUNDS} restarts"
        );
    }
}
