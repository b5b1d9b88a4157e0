//! virtio-net on a host TAP device.
//!
//! The device offers the guest a MAC address, link status, checksum and TCP segmentation
//! offloads in both directions, mergeable receive buffers and event-index notification. Frames
//! travel between the guest's queues and the TAP with the 12-byte `virtio_net_hdr_v1` in front,
//! which the TAP speaks natively (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ`), so offloaded packets pass
//! through without being touched. What the guest accepts to receive (`GUEST_CSUM`,
//! `GUEST_TSO4/6`, `GUEST_ECN`) becomes the TAP's `TUNSETOFFLOAD` at activation: the kernel
//! never hands the device a packet the guest did not agree to take.
//!
//! All work runs on the I/O thread ([`handler`]): receive (TAP → guest) and transmit (guest →
//! TAP), each with its own optional [`RateLimiter`](crate::rate_limiter::RateLimiter).

#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
mod handler;
pub mod tap;

#[cfg(test)]
mod tests;

use std::fmt;
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::SubscriberId;
use virtio_bindings::virtio_net as vn;

use super::{device_type, ActivateContext, ActivateError, EventLoopHandle, VirtioDevice};
use crate::rate_limiter::{BucketConfig, LimiterHandle, RateLimiter};
use handler::NetHandler;

pub use tap::{Tap, TapError};

/// Queue 0 receives, queue 1 transmits.
const QUEUE_SIZES: &[u16] = &[256, 256];

/// `virtio_net_hdr_v1`: with VERSION_1 the header always has `num_buffers`.
pub const HDR_LEN: usize = 12;
/// The largest frame either way, header excluded: a 64 KiB GSO packet with its Ethernet and
/// VLAN headers.
pub const MAX_FRAME_LEN: usize = 65_562;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Features the device offers on top of VERSION_1.
pub const OFFERED_FEATURES: u64 = bit(vn::VIRTIO_NET_F_CSUM)
    | bit(vn::VIRTIO_NET_F_GUEST_CSUM)
    | bit(vn::VIRTIO_NET_F_GUEST_TSO4)
    | bit(vn::VIRTIO_NET_F_GUEST_TSO6)
    | bit(vn::VIRTIO_NET_F_GUEST_ECN)
    | bit(vn::VIRTIO_NET_F_HOST_TSO4)
    | bit(vn::VIRTIO_NET_F_HOST_TSO6)
    | bit(vn::VIRTIO_NET_F_HOST_ECN)
    | bit(vn::VIRTIO_NET_F_MRG_RXBUF)
    | bit(vn::VIRTIO_NET_F_MAC)
    | bit(vn::VIRTIO_NET_F_STATUS)
    | super::features::RING_EVENT_IDX
    | super::features::RING_INDIRECT_DESC;

/// The TAP offload flags (`TUNSETOFFLOAD`) that match what the guest accepted to receive. The
/// kernel wants TUN_F_CSUM for any TSO and TSO for ECN, as the virtio spec does.
pub fn tap_offload_flags(features: u64) -> u32 {
    let has = |b: u32| features & bit(b) != 0;
    if !has(vn::VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(vn::VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(vn::VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(vn::VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

/// Where the device's frames go: the TAP, or in tests anything that keeps frame boundaries.
/// Every frame carries the 12-byte virtio-net header in front.
pub trait Backend: AsRawFd + Send + Sync {
    /// Reads one frame without blocking (`WouldBlock` when there is none).
    fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize>;
    /// Writes one frame gathered from `parts`, in order. This one gathers into a buffer and
    /// calls [`Self::write_frame`]; the TAP sends the parts with one `writev`, without a copy.
    ///
    /// # Safety
    /// Each of `parts` must point to memory that stays mapped and readable for its length until
    /// the call returns.
    unsafe fn write_frame_gathered(&self, parts: &[libc::iovec]) -> std::io::Result<usize> {
        let mut frame = Vec::with_capacity(parts.iter().map(|p| p.iov_len).sum());
        for p in parts {
            // SAFETY: the caller vouches that the part is mapped and readable.
            let bytes = unsafe { std::slice::from_raw_parts(p.iov_base as *const u8, p.iov_len) };
            frame.extend_from_slice(bytes);
        }
        self.write_frame(&frame)
    }
    /// Sets the offloads the reader accepts (`TUN_F_*`).
    fn set_offload(&self, flags: u32) -> std::io::Result<()>;
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address.
    pub fn random_local() -> Self {
        let mut b = [0u8; 6];
        // SAFETY: `b` is valid for writes of its length.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // Without entropy, still distinct per process and time.
            let seed = std::process::id() as u64
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
            b.copy_from_slice(&seed.to_le_bytes()[..6]);
        }
        b[0] = (b[0] & 0xfc) | 0x02;
        MacAddr(b)
    }
}

/// Why a MAC address given to a net device is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacAddrError {
    #[error("invalid MAC address {0:?}: want six hex bytes like 02:00:00:00:00:01")]
    Syntax(String),
    #[error("invalid MAC address {0:?}: a multicast address cannot be a NIC's")]
    Multicast(String),
}

impl FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(s: &str) -> Result<Self, MacAddrError> {
        let bad = || MacAddrError::Syntax(s.to_string());
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut b {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if b[0] & 1 != 0 {
            return Err(MacAddrError::Multicast(s.to_string()));
        }
        Ok(MacAddr(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The limits of one direction; `None` buckets are unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub ops: Option<BucketConfig>,
    pub bytes: Option<BucketConfig>,
}

fn limiter(handle: &LimiterHandle) -> Result<RateLimiter, ActivateError> {
    handle
        .limiter()
        .map_err(|e| ActivateError::Handler(format!("rate limiter: {e}")))
}

/// What the device counts; the guest's frames that could not be delivered are never silent.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames from the TAP that the guest's buffers could not take (too small, bad chains) or
    /// that were malformed.
    pub rx_dropped: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Guest frames not sent: malformed chains or headers, oversize, refused by the TAP.
    pub tx_dropped: AtomicU64,
}

impl NetCounters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

pub struct Net {
    io: EventLoopHandle,
    backend: Arc<dyn Backend>,
    mac: MacAddr,
    rx_limits: LimiterHandle,
    tx_limits: LimiterHandle,
    counters: Arc<NetCounters>,
    handler: Option<SubscriberId>,
}

impl Net {
    pub fn new(
        io: EventLoopHandle,
        backend: Arc<dyn Backend>,
        mac: Option<MacAddr>,
        rx_limits: Limits,
        tx_limits: Limits,
    ) -> Self {
        Self {
            io,
            backend,
            mac: mac.unwrap_or_else(MacAddr::random_local),
            rx_limits: LimiterHandle::new(rx_limits.ops, rx_limits.bytes),
            tx_limits: LimiterHandle::new(tx_limits.ops, tx_limits.bytes),
            counters: Arc::default(),
            handler: None,
        }
    }

    /// The (rx, tx) rate limits, changeable while the device runs.
    pub fn limits(&self) -> (LimiterHandle, LimiterHandle) {
        (self.rx_limits.clone(), self.tx_limits.clone())
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    fn config_space(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac.0);
        c[6..8].copy_from_slice(&(vn::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_space(&self.config_space(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let handler = NetHandler::new(
            ctx,
            self.backend.clone(),
            limiter(&self.rx_limits)?,
            limiter(&self.tx_limits)?,
            self.counters.clone(),
        )?;
        self.handler = Some(self.io.add(Arc::new(Mutex::new(handler)))?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(id) = self.handler.take() {
            self.io.remove(id);
        }
    }
}
