//! What every virtio fuzz target shares: guest memory, and split virtqueues whose descriptor
//! table, available ring and buffers are made from the fuzzer's bytes.
//!
//! Queue `i` lives at `i * QUEUE_STRIDE` (descriptor table, then available ring at +0x1000,
//! used ring at +0x2000); buffers normally point into the data area from [`DATA_BASE`], which
//! holds the input's tail, so the fuzzer controls both the framing and the contents of every
//! request. Some descriptors and rings take raw addresses and lengths instead, to reach the
//! edges of guest memory and beyond.

use std::num::Wrapping;
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use devices::virtio::GuestMemory;

pub const MEM_SIZE: u64 = 1 << 20;
pub const QUEUE_STRIDE: u64 = 0x1_0000;
/// Where the input's tail goes and where buffers point (queues 0-3 sit below).
pub const DATA_BASE: u64 = 0x4_0000;

const AVAIL_OFF: u64 = 0x1000;
const USED_OFF: u64 = 0x2000;

/// The fuzzer's bytes, read front to back; zeros once exhausted.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let src = self.bytes(2);
        b[..src.len()].copy_from_slice(src);
        u16::from_le_bytes(b)
    }

    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let src = self.bytes(4);
        b[..src.len()].copy_from_slice(src);
        u32::from_le_bytes(b)
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub fn guest_memory() -> Arc<GuestMemory> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap())
}

/// Copies the rest of the input into the data area.
pub fn fill_data(mem: &GuestMemory, input: &mut Input) {
    let tail = input.rest();
    let n = tail.len().min((MEM_SIZE - DATA_BASE) as usize);
    mem.write_slice(&tail[..n], GuestAddress(DATA_BASE))
        .unwrap();
}

/// What a queue was made of, for checks after the device ran.
#[derive(Debug, Clone)]
pub struct QueueLayout {
    pub size: u16,
    pub used_ring: u64,
    /// The rings are where they belong, and no device-writable buffer anywhere can overlap
    /// them or any descriptor table, so what is read back afterwards is the device's doing.
    pub checkable: bool,
    /// For each head index: the device-writable bytes of its chain (None: not computed).
    pub writable: Vec<Option<u64>>,
}

/// Makes queue `index` (of at most `max_size` entries) from the input, as a driver would
/// program it through the transport. Returns None when the transport would refuse to start
/// the device with it (ready but not valid).
pub fn build_queue(
    input: &mut Input,
    mem: &GuestMemory,
    index: u64,
    max_size: u16,
) -> Option<(Queue, QueueLayout)> {
    let base = index * QUEUE_STRIDE;
    let mut q = Queue::new(max_size).ok()?;
    let cfg = input.u8();
    let size = (1u16 << (cfg & 0x7)).min(max_size).max(1);
    q.set_size(size);
    q.set_event_idx(cfg & 0x08 != 0);
    let raw_rings = cfg & 0x30 == 0x30;
    let (desc, avail, used) = if raw_rings {
        (input.u64(), input.u64(), input.u64())
    } else {
        (base, base + AVAIL_OFF, base + USED_OFF)
    };
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    // The transport hands devices queues that are not ready too.
    q.set_ready(cfg & 0xc0 != 0xc0);
    if q.ready() && !q.is_valid(mem) {
        return None;
    }

    let mut checkable = !raw_rings;
    // Descriptors.
    let ndesc = u16::from(input.u8()).min(size);
    for i in 0..ndesc {
        let flags_sel = input.u8();
        let mut flags = 0u16;
        if flags_sel & 1 != 0 {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        if flags_sel & 2 != 0 {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        if flags_sel & 0x1c == 0x1c {
            flags |= VRING_DESC_F_INDIRECT as u16;
        }
        let raw = flags_sel & 0xe0 == 0xe0;
        let (addr, len, next) = if raw {
            (input.u64(), input.u32(), input.u16())
        } else {
            let addr = DATA_BASE + u64::from(input.u16()) * 8;
            (addr, u32::from(input.u16()), u16::from(input.u8()) % size)
        };
        // An indirect table's descriptors can point anywhere, rings included.
        if flags & VRING_DESC_F_WRITE as u16 != 0 && addr < DATA_BASE
            || flags & VRING_DESC_F_INDIRECT as u16 != 0
        {
            checkable = false;
        }
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&d, GuestAddress(desc.wrapping_add(16 * u64::from(i))));
    }
    // Available ring: flags, idx, ring, used_event.
    let avail_flags = u16::from(input.u8() & 1);
    let sel = input.u8();
    let idx = if sel & 0x80 != 0 {
        input.u16()
    } else {
        u16::from(sel) % (size + 1)
    };
    let mut ring = Vec::with_capacity(4 + 2 * usize::from(size) + 2);
    ring.extend_from_slice(&avail_flags.to_le_bytes());
    ring.extend_from_slice(&idx.to_le_bytes());
    for _ in 0..size {
        ring.extend_from_slice(&u16::from(input.u8()).to_le_bytes());
    }
    ring.extend_from_slice(&u16::from(input.u8()).to_le_bytes());
    let _ = mem.write_slice(&ring, GuestAddress(avail));

    let writable = (0..size)
        .map(|h| writable_bytes(mem, desc, size, h))
        .collect();
    Some((
        q,
        QueueLayout {
            size,
            used_ring: used,
            checkable,
            writable,
        },
    ))
}

/// The device-writable bytes of the chain at `head`, or None when it uses an indirect table
/// (the device could overwrite the table while using the chain) or is malformed.
fn writable_bytes(mem: &GuestMemory, desc: u64, size: u16, head: u16) -> Option<u64> {
    let mut total = 0u64;
    let mut i = head;
    for _ in 0..size {
        let d: [u8; 16] = mem
            .read_obj(GuestAddress(desc.checked_add(16 * u64::from(i))?))
            .ok()?;
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
        let next = u16::from_le_bytes(d[14..16].try_into().unwrap());
        if flags & VRING_DESC_F_INDIRECT as u16 != 0 {
            return None;
        }
        if flags & VRING_DESC_F_WRITE as u16 != 0 {
            total += u64::from(len);
        }
        if flags & VRING_DESC_F_NEXT as u16 == 0 {
            return Some(total);
        }
        if next >= size {
            return None;
        }
        i = next;
    }
    None
}

/// [`check_used`] for all the queues of a device, when none of them could have written over
/// another's rings (rings at raw addresses, writable buffers below the data area).
pub fn check_all_used(mem: &GuestMemory, queues: &[(&QueueLayout, &Queue)]) {
    if queues.iter().all(|(l, _)| l.checkable) {
        for (l, q) in queues {
            check_used(mem, l, q);
        }
    }
}

/// Checks what the device put in the used ring: the index is the queue's, every entry names a
/// head of the ring and claims no more bytes than that chain could take.
pub fn check_used(mem: &GuestMemory, layout: &QueueLayout, queue: &Queue) {
    if !layout.checkable || !queue.ready() {
        return;
    }
    let ring = GuestAddress(layout.used_ring);
    let idx: u16 = mem.read_obj(GuestAddress(layout.used_ring + 2)).unwrap();
    assert_eq!(idx, queue.next_used(), "used idx in memory vs the queue's");
    let n = Wrapping(idx).0.min(layout.size);
    for slot in 0..n {
        let at = GuestAddress(ring.0 + 4 + 8 * u64::from(slot));
        let id: u32 = mem.read_obj(at).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at.0 + 4)).unwrap();
        assert!(id < u32::from(layout.size), "used id {id} out of the ring");
        if let Some(cap) = layout.writable[id as usize] {
            assert!(
                u64::from(len) <= cap,
                "used len {len} > writable {cap} for head {id}"
            );
        }
    }
}
