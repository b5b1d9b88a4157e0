//! virtio-blk requests: parsing a descriptor chain the guest wrote (and cannot be trusted) into
//! a checked [`Request`], and carrying it out on a [`DiskFile`].
//!
//! A request is a device-readable part (a 16-byte header `{type, reserved, sector}`, then data
//! for OUT, or discard/write-zeroes segments) followed by a device-writable part (data for IN and
//! GET_ID) whose last byte is the status. Readable descriptors must all come before writable
//! ones (virtio 1.2, 2.7.4.2); the framing inside each part is free (ANY_LAYOUT).

use std::ops::Deref;

use smallvec::SmallVec;
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::io::{DataTransfer, DiskFile, Segment, SECTOR_SIZE};
use super::GuestMemory;
use crate::rate_limiter::Cost;

const OK: u8 = VIRTIO_BLK_S_OK as u8;

/// Descriptors in one request at most (a chain is bounded by the queue size anyway; indirect
/// tables could be larger).
pub const MAX_DESCRIPTORS: usize = 256;
/// Data bytes in one IN/OUT request at most: what the device advertises as seg_max × size_max.
pub const SEG_MAX: u32 = 126;
pub const SIZE_MAX: u32 = 128 * 1024;
pub const MAX_DATA: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Discard / write-zeroes limits advertised in the config space.
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX / SECTOR_SIZE as u32;
pub const MAX_DISCARD_SEG: u32 = 1;
/// Size of the request header and of one discard / write-zeroes segment.
const HEADER_LEN: u64 = 16;
const DWZ_SEG_LEN: u64 = 16;

/// A request's buffers on one side. Linux sends a 4 KiB read or write as three descriptors
/// (header, data, status), so the lists are short and stay inline: parsing a request does not
/// touch the heap, which on a busy drive costs the I/O thread more than the parsing itself.
pub type Segments = SmallVec<[Segment; 4]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            t => Self::Unsupported(t),
        }
    }
}

/// Why a chain is not a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the chain is empty, loops, is too long or has a bad indirect table")]
    BadChain,
    #[error("the last descriptor is not a writable status byte inside guest memory")]
    NoStatus,
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the header is missing, short or not readable")]
    BadHeader,
}

/// A parse error together with where the status goes, when the chain has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub error: ParseError,
    pub status: Option<GuestAddress>,
}

/// A request whose framing was checked; the sector range is checked when it is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    /// Device-readable bytes after the header.
    pub readable: Segments,
    /// Device-writable bytes before the status byte.
    pub writable: Segments,
    pub status: GuestAddress,
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Drops the first `n` bytes of `segs`.
fn skip(segs: &[Segment], mut n: u64) -> Segments {
    let mut out = Segments::new();
    for s in segs {
        let len = u64::from(s.len);
        if n >= len {
            n -= len;
            continue;
        }
        out.push(Segment {
            addr: GuestAddress(s.addr.0.wrapping_add(n)),
            len: (len - n) as u32,
        });
        n = 0;
    }
    out
}

/// Reads `buf.len()` bytes from the front of `segs`.
fn gather(mem: &GuestMemory, segs: &[Segment], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(s.len as usize);
        if mem.read_slice(&mut buf[done..done + n], s.addr).is_err() {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// Writes `data` to the front of `segs`; returns the bytes written.
fn scatter(mem: &GuestMemory, segs: &[Segment], data: &[u8]) -> Option<u32> {
    let mut done = 0;
    for s in segs {
        if done == data.len() {
            break;
        }
        let n = (data.len() - done).min(s.len as usize);
        mem.write_slice(&data[done..done + n], s.addr).ok()?;
        done += n;
    }
    Some(done as u32)
}

impl Request {
    /// Checks the framing of `chain`.
    pub fn parse<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<Self, Rejected>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let reject = |error, status| Rejected { error, status };
        let mut descs: SmallVec<[Descriptor; 4]> = SmallVec::new();
        for d in chain {
            if descs.len() == MAX_DESCRIPTORS {
                return Err(reject(ParseError::BadChain, None));
            }
            descs.push(d);
        }
        // The iterator stops silently on a loop, a bad next index or a bad indirect table:
        // a last descriptor that still points on means the chain was cut short.
        let Some(last) = descs.last() else {
            return Err(reject(ParseError::BadChain, None));
        };
        if last.has_next() {
            return Err(reject(ParseError::BadChain, None));
        }
        if !last.is_write_only() || last.len() == 0 {
            return Err(reject(ParseError::NoStatus, None));
        }
        let status = last
            .addr()
            .checked_add(u64::from(last.len()) - 1)
            .filter(|a| GuestMemoryBackend::address_in_range(mem, *a))
            .ok_or(reject(ParseError::NoStatus, None))?;
        let status_found = Some(status);

        let mut readable = Segments::new();
        let mut writable = Segments::new();
        let mut seen_writable = false;
        for (i, d) in descs.iter().enumerate() {
            let mut len = d.len();
            if i == descs.len() - 1 {
                len -= 1; // the status byte
            }
            let seg = Segment {
                addr: d.addr(),
                len,
            };
            if d.is_write_only() {
                seen_writable = true;
                if len > 0 {
                    writable.push(seg);
                }
            } else if seen_writable {
                return Err(reject(ParseError::ReadableAfterWritable, status_found));
            } else if len > 0 {
                readable.push(seg);
            }
        }
        let mut header = [0u8; HEADER_LEN as usize];
        if !gather(mem, &readable, &mut header) {
            return Err(reject(ParseError::BadHeader, status_found));
        }
        let kind = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
        Ok(Self {
            kind: kind.into(),
            sector,
            readable: skip(&readable, HEADER_LEN),
            writable,
            status,
        })
    }

    /// What the request costs the rate limiter; GET_ID and unsupported requests are free.
    pub fn cost(&self) -> Option<Cost> {
        match self.kind {
            RequestType::In => Some(Cost {
                ops: 1,
                bytes: total(&self.writable),
            }),
            RequestType::Out => Some(Cost {
                ops: 1,
                bytes: total(&self.readable),
            }),
            RequestType::Flush | RequestType::Discard | RequestType::WriteZeroes => {
                Some(Cost { ops: 1, bytes: 0 })
            }
            RequestType::GetId | RequestType::Unsupported(_) => None,
        }
    }

    /// Runs the request; returns the status and the bytes written to device-writable buffers
    /// before the status byte.
    pub fn execute(&self, mem: &GuestMemory, disk: &DiskFile, serial: &[u8]) -> (u8, u32) {
        const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
        const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
        let io = |r: std::io::Result<()>| self.status_of(r);
        match self.kind {
            RequestType::In | RequestType::Out => match self.transfer(disk) {
                Some(Ok(t)) => {
                    let r = match t.write {
                        true => disk.write_from_guest(mem, t.segs, t.offset),
                        false => disk.read_to_guest(mem, t.segs, t.offset),
                    };
                    self.transferred(r)
                }
                Some(Err(status)) => (status, 0),
                None => (IOERR, 0),
            },
            RequestType::Flush => (io(disk.flush()), 0),
            RequestType::GetId => {
                let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
                let n = serial.len().min(id.len());
                id[..n].copy_from_slice(&serial[..n]);
                let room = total(&self.writable).min(id.len() as u64) as usize;
                match scatter(mem, &self.writable, &id[..room]) {
                    Some(n) => (OK, n),
                    None => (IOERR, 0),
                }
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                if disk.read_only() {
                    return (IOERR, 0);
                }
                (self.discard_or_zero(mem, disk), 0)
            }
            RequestType::Unsupported(_) => (UNSUPP, 0),
        }
    }

    /// The data an IN or OUT request moves, once its buffers and sector range are checked,
    /// or the status it fails with; `None` for other requests.
    pub fn transfer(&self, disk: &DiskFile) -> Option<Result<DataTransfer<'_>, u8>> {
        const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
        let (segs, other, write) = match self.kind {
            RequestType::In => (&self.writable, &self.readable, false),
            RequestType::Out => (&self.readable, &self.writable, true),
            _ => return None,
        };
        if !other.is_empty() || (write && disk.read_only()) {
            return Some(Err(IOERR));
        }
        Some(
            self.data_offset(disk, total(segs))
                .map(|offset| DataTransfer {
                    segs,
                    offset,
                    write,
                })
                .ok_or(IOERR),
        )
    }

    /// The status and the bytes written to device-writable buffers of an IN or OUT request
    /// whose transfer ended with `result`.
    pub fn transferred(&self, result: std::io::Result<()>) -> (u8, u32) {
        match (self.status_of(result), self.kind) {
            (OK, RequestType::In) => (OK, total(&self.writable) as u32),
            (status, _) => (status, 0),
        }
    }

    fn status_of(&self, r: std::io::Result<()>) -> u8 {
        match r {
            Ok(()) => OK,
            Err(e) => {
                tracing::debug!("virtio-blk: {:?} at sector {}: {e}", self.kind, self.sector);
                VIRTIO_BLK_S_IOERR as u8
            }
        }
    }

    /// The byte offset of an IN/OUT request, when `len` bytes at its sector are on the disk.
    fn data_offset(&self, disk: &DiskFile, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) || len > MAX_DATA {
            return None;
        }
        let end = self.sector.checked_add(len / SECTOR_SIZE)?;
        (end <= disk.sectors()).then(|| self.sector * SECTOR_SIZE)
    }

    fn discard_or_zero(&self, mem: &GuestMemory, disk: &DiskFile) -> u8 {
        let len = total(&self.readable);
        let segs = len / DWZ_SEG_LEN;
        if len == 0 || !len.is_multiple_of(DWZ_SEG_LEN) || segs > u64::from(MAX_DISCARD_SEG) {
            return VIRTIO_BLK_S_UNSUPP as u8;
        }
        let mut raw = [0u8; DWZ_SEG_LEN as usize * MAX_DISCARD_SEG as usize];
        let raw = &mut raw[..len as usize];
        if !gather(mem, &self.readable, raw) {
            return VIRTIO_BLK_S_IOERR as u8;
        }
        for seg in raw.chunks_exact(DWZ_SEG_LEN as usize) {
            let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap());
            let num = u32::from_le_bytes(seg[8..12].try_into().unwrap());
            let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap());
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            // Reserved flag bits, or unmap on a discard: not something this device does.
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
                || (unmap && self.kind == RequestType::Discard)
            {
                return VIRTIO_BLK_S_UNSUPP as u8;
            }
            if num > MAX_DISCARD_SECTORS {
                return VIRTIO_BLK_S_IOERR as u8;
            }
            match sector.checked_add(u64::from(num)) {
                Some(end) if end <= disk.sectors() => {}
                _ => return VIRTIO_BLK_S_IOERR as u8,
            }
            let (off, n) = (sector * SECTOR_SIZE, u64::from(num) * SECTOR_SIZE);
            let r = if self.kind == RequestType::Discard {
                disk.discard(off, n)
            } else {
                disk.write_zeroes(off, n, unmap)
            };
            if let Err(e) = r {
                tracing::debug!("virtio-blk: {:?} of sector {sector}: {e}", self.kind);
                return VIRTIO_BLK_S_IOERR as u8;
            }
        }
        VIRTIO_BLK_S_OK as u8
    }
}
