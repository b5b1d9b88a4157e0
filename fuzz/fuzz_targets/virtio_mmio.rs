//! The virtio-mmio transport: any sequence of register and config-space reads and writes, of
//! any width and offset, against a device with 1-3 queues. Checks the transport's promises to
//! devices: activation only with FEATURES_OK and DRIVER_OK, negotiated features within the
//! offer, every ready queue valid, one activation per reset.
#![no_main]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use devices::virtio::mmio::{MmioTransport, MMIO_LEN, QUEUE_NOTIFY};
use devices::virtio::{
    features, ActivateContext, ActivateError, GuestMemory, Interrupt, VirtioDevice,
};
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use vireo_fuzz::*;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

const OFFERED: u64 = features::RING_EVENT_IDX | features::RING_INDIRECT_DESC | 0x7;

struct Dummy {
    sizes: Vec<u16>,
    mem: Arc<GuestMemory>,
    active: Arc<AtomicU32>,
    fail: bool,
    config: [u8; 16],
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| self.config.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(c) = offset
                .checked_add(i as u64)
                .and_then(|o| self.config.get_mut(usize::try_from(o).ok()?))
            {
                *c = *b;
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        assert_eq!(self.active.load(Ordering::SeqCst), 0, "activated twice");
        assert_eq!(
            ctx.features & !(OFFERED | features::VERSION_1),
            0,
            "features not offered"
        );
        assert_ne!(ctx.features & features::VERSION_1, 0, "no VERSION_1");
        assert_eq!(ctx.queues.len(), self.sizes.len());
        assert_eq!(ctx.queue_events.len(), self.sizes.len());
        for (q, &max) in ctx.queues.iter().zip(&self.sizes) {
            assert!(q.size() <= max && q.size().is_power_of_two());
            assert!(
                !q.ready() || q.is_valid(&*self.mem),
                "a ready queue that is not valid"
            );
            assert_eq!(
                q.event_idx_enabled(),
                ctx.features & features::RING_EVENT_IDX != 0
            );
        }
        if self.fail {
            return Err(ActivateError::BadQueue(0));
        }
        self.active.store(1, Ordering::SeqCst);
        Ok(())
    }
    fn reset(&mut self) {
        assert_eq!(
            self.active.swap(0, Ordering::SeqCst),
            1,
            "reset while not active"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let opts = input.u8();
    let nq = usize::from(opts % 3) + 1;
    let sizes: Vec<u16> = (0..nq).map(|_| 1u16 << (input.u8() % 10)).collect();
    let mem = Arc::new(
        vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)]).unwrap(),
    );
    let active = Arc::new(AtomicU32::new(0));
    let dev = Dummy {
        sizes,
        mem: mem.clone(),
        active: active.clone(),
        fail: opts & 0x80 != 0,
        config: [0; 16],
    };
    let events = (0..nq)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let Ok(mut t) = MmioTransport::new(Box::new(dev), mem, irq, events) else {
        return;
    };
    while !input.is_empty() {
        let op = input.u8();
        // Mostly aligned 32-bit register accesses, sometimes anything.
        let offset = if op & 0x40 != 0 {
            u64::from(input.u16()) % (MMIO_LEN + 0x10)
        } else {
            u64::from(input.u8() % 0x40) * 4
        };
        let len = match op & 0x30 {
            0x00 | 0x10 => 4,
            0x20 => 1 << (input.u8() % 4),
            _ => usize::from(input.u8() % 9),
        };
        if op & 1 != 0 {
            let mut v = [0u8; 8];
            // Small values matter most (status bits, selectors, sizes): keep them likely.
            let raw = if op & 2 != 0 {
                input.u64()
            } else {
                u64::from(input.u8())
            };
            v.copy_from_slice(&raw.to_le_bytes());
            t.write(offset, &v[..len]);
        } else {
            let mut v = [0u8; 8];
            t.read(offset, &mut v[..len]);
            if offset == QUEUE_NOTIFY {
                // Reads of QueueNotify are zero.
                assert_eq!(v[..len.min(4)], [0; 4][..len.min(4)]);
            }
        }
    }
    let _ = active.load(Ordering::SeqCst);
});
