//! The virtio-vsock packet header (virtio 1.2, 5.10.6) and its validation.
//!
//! Every packet on the rx and tx queues starts with a 44-byte little-endian header; a RW
//! packet's payload follows it in the same descriptor chain.

use std::io::Read;

/// The host's CID, where every packet from the guest must go.
pub const HOST_CID: u64 = 2;
pub const HDR_LEN: usize = 44;
/// Largest payload accepted from the guest or sent to it (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;

pub const TYPE_STREAM: u16 = 1;

pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// The event queue's only event (virtio 1.2, 5.10.6.7).
pub const EVENT_TRANSPORT_RESET: u32 = 0;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn decode(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST that answers this packet (addresses swapped).
    pub fn reply_rst(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Default::default()
        }
    }
}

/// Why a packet from the guest was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The chain has fewer readable bytes than a header.
    Short,
    /// `len` is over [`MAX_PAYLOAD`] or over what the chain holds.
    BadLen,
    /// The chain's descriptors could not be read (outside guest memory, ...).
    Unreadable,
}

/// A tx packet: its header and, for RW, its payload (in the caller's buffer).
#[derive(Debug)]
pub struct TxPacket {
    pub hdr: Header,
    pub payload_len: usize,
}

/// Reads one packet from a tx chain's reader into `payload` (which must hold [`MAX_PAYLOAD`]).
/// Only the header and at most `len` payload bytes are read; the payload must be whole.
pub fn read_tx_packet(
    reader: &mut impl Read,
    available: usize,
    payload: &mut [u8],
) -> Result<TxPacket, (Malformed, Option<Header>)> {
    if available < HDR_LEN {
        return Err((Malformed::Short, None));
    }
    let mut raw = [0u8; HDR_LEN];
    reader
        .read_exact(&mut raw)
        .map_err(|_| (Malformed::Unreadable, None))?;
    let hdr = Header::decode(&raw);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD || len > payload.len() || len > available - HDR_LEN {
        return Err((Malformed::BadLen, Some(hdr)));
    }
    reader
        .read_exact(&mut payload[..len])
        .map_err(|_| (Malformed::Unreadable, Some(hdr)))?;
    Ok(TxPacket {
        hdr,
        payload_len: len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 6000,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 262144,
            fwd_cnt: 77,
        }
    }

    #[test]
    fn header_round_trip_and_layout() {
        let h = sample();
        let b = h.encode();
        assert_eq!(Header::decode(&b), h);
        // Field offsets per the virtio spec, little endian.
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[16..20], &1234u32.to_le_bytes());
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[36..40], &262144u32.to_le_bytes());
        assert_eq!(&b[40..44], &77u32.to_le_bytes());
    }

    #[test]
    fn tx_packet_parsing() {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        let mut bytes = sample().encode().to_vec();
        bytes.extend_from_slice(b"hello");
        let p = read_tx_packet(&mut &bytes[..], bytes.len(), &mut buf).unwrap();
        assert_eq!((p.hdr, p.payload_len), (sample(), 5));
        assert_eq!(&buf[..5], b"hello");

        // Too short for a header.
        assert_eq!(
            read_tx_packet(&mut &bytes[..10], 10, &mut buf)
                .unwrap_err()
                .0,
            Malformed::Short
        );
        // len larger than the chain.
        let r = read_tx_packet(&mut &bytes[..47], 47, &mut buf).unwrap_err();
        assert_eq!(r, (Malformed::BadLen, Some(sample())));
        // len over the maximum, even though the chain claims to hold it.
        let mut h = sample();
        h.len = (MAX_PAYLOAD + 1) as u32;
        let big = h.encode();
        let r = read_tx_packet(&mut &big[..], usize::MAX, &mut buf).unwrap_err();
        assert_eq!(r.0, Malformed::BadLen);
        h.len = u32::MAX;
        let r = read_tx_packet(&mut &h.encode()[..], usize::MAX, &mut buf).unwrap_err();
        assert_eq!(r.0, Malformed::BadLen);
        // The reader delivers fewer bytes than announced.
        let r = read_tx_packet(&mut &bytes[..46], 49, &mut buf).unwrap_err();
        assert_eq!(r.0, Malformed::Unreadable);
    }

    #[test]
    fn rst_reply_swaps_addresses() {
        let r = sample().reply_rst();
        assert_eq!((r.src_cid, r.dst_cid), (HOST_CID, 3));
        assert_eq!((r.src_port, r.dst_port), (6000, 1234));
        assert_eq!((r.op, r.len, r.type_), (op::RST, 0, TYPE_STREAM));
    }
}
