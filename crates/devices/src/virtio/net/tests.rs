//! virtio-net with crafted queues and a datagram socket pair standing in for the TAP (it keeps
//! frame boundaries, as a TAP does).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::handler::NetHandler;
use super::*;
use crate::rate_limiter::BucketConfig;
use crate::virtio::{ActivateContext, GuestMemory, Interrupt};

const MEM_SIZE: usize = 0x100_0000;
/// Guest memory is two regions, adjacent at this address, as below and above a hole.
const REGION_2: u64 = 0x80_0000;
const RXQ: u64 = 0;
const TXQ: u64 = 0x1_0000;
const BUF: u64 = 0x10_0000;

/// The test's stand-in for the TAP: frames the device writes arrive at `peer`, frames sent from
/// `peer` are what the device reads.
struct SocketBackend {
    sock: UnixDatagram,
    offload: AtomicU32,
}

impl AsRawFd for SocketBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Backend for SocketBackend {
    fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.recv(buf)
    }
    fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        self.sock.send(frame)
    }
    unsafe fn write_frame_gathered(&self, parts: &[libc::iovec]) -> std::io::Result<usize> {
        // SAFETY: passed on from the caller; the TAP's own writev, on a socket.
        unsafe { super::tap::writev(self.sock.as_raw_fd(), parts) }
    }
    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        self.offload.store(flags, Ordering::SeqCst);
        Ok(())
    }
}

struct Rig {
    mem: Arc<GuestMemory>,
    peer: UnixDatagram,
    backend: Arc<SocketBackend>,
    counters: Arc<NetCounters>,
    handler: NetHandler,
    rings: [Rings; 2],
    /// Next free descriptor index per queue (rx, tx).
    next_desc: [u16; 2],
}

#[derive(Debug, Clone, Copy, Default)]
struct Rings {
    desc: u64,
    avail: u64,
    used: u64,
}

const QUEUE_SIZE: u16 = 16;

fn bucket(size: u64, refill_time_ms: u64) -> Option<BucketConfig> {
    Some(BucketConfig {
        size,
        one_time_burst: 0,
        refill_time_ms,
    })
}

impl Rig {
    fn new(features: u64, rx: Limits, tx: Limits) -> Self {
        let half = REGION_2 as usize;
        let mem = Arc::new(
            GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), half),
                (GuestAddress(REGION_2), MEM_SIZE - half),
            ])
            .unwrap(),
        );
        let (a, peer) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        let backend = Arc::new(SocketBackend {
            sock: a,
            offload: AtomicU32::new(u32::MAX),
        });
        // The mock lays the rings out (and zeroes them) once; the test then plays the driver
        // through guest memory.
        let mut queues = Vec::new();
        let mut rings = [Rings::default(); 2];
        for (i, at) in [RXQ, TXQ].into_iter().enumerate() {
            let m = MockSplitQueue::create(&*mem, GuestAddress(at), QUEUE_SIZE);
            rings[i] = Rings {
                desc: m.desc_table_addr().0,
                avail: m.avail_addr().0,
                used: m.used_addr().0,
            };
            queues.push(m.create_queue::<Queue>().unwrap());
        }
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ctx = ActivateContext {
            mem: mem.clone(),
            interrupt: Arc::new(Interrupt::new(evt())),
            features: features | crate::virtio::features::VERSION_1,
            queues,
            queue_events: vec![evt(), evt()],
            restored: false,
        };
        let counters = Arc::new(NetCounters::default());
        let handler = NetHandler::new(
            ctx,
            backend.clone(),
            limiter(&LimiterHandle::new(rx.ops, rx.bytes)).unwrap(),
            limiter(&LimiterHandle::new(tx.ops, tx.bytes)).unwrap(),
            counters.clone(),
        )
        .unwrap();
        Rig {
            mem,
            peer,
            backend,
            counters,
            handler,
            rings,
            next_desc: [0, 0],
        }
    }

    /// Makes one chain of (address, length, device-writable) descriptors available on queue
    /// `q`, as a driver would; returns its head index.
    fn add_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let rings = self.rings[q];
        let start = self.next_desc[q];
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let index = start + i as u16;
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, index + 1));
            self.mem
                .write_obj(d, GuestAddress(rings.desc + 16 * u64::from(index)))
                .unwrap();
        }
        let avail_idx: u16 = self.mem.read_obj(GuestAddress(rings.avail + 2)).unwrap();
        let slot = u64::from(avail_idx % QUEUE_SIZE);
        self.mem
            .write_obj(start, GuestAddress(rings.avail + 4 + 2 * slot))
            .unwrap();
        self.mem
            .write_obj(avail_idx.wrapping_add(1), GuestAddress(rings.avail + 2))
            .unwrap();
        self.next_desc[q] += descs.len() as u16;
        start
    }

    /// The used ring of queue `q`: (head, length) of each entry.
    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let used = self.rings[q].used;
        let n: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        (0..u64::from(n))
            .map(|i| {
                let at = used + 4 + 8 * (i % u64::from(QUEUE_SIZE));
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                (id, len)
            })
            .collect()
    }

    fn count(&self, c: fn(&NetCounters) -> &AtomicU64) -> u64 {
        NetCounters::get(c(&self.counters))
    }

    fn recv_all(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 128 * 1024];
        while let Ok(n) = self.peer.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// The TAP got frames: what an edge on its fd does.
    fn tap_edge(&mut self) {
        self.handler.tap_edge();
    }
}

/// A header + an Ethernet frame of `len` bytes (header excluded) with a recognisable pattern.
fn packet(len: usize, seed: u8) -> Vec<u8> {
    let mut p = vec![0u8; HDR_LEN];
    p.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    p
}

fn f(b: u32) -> u64 {
    1 << b
}

#[test]
fn tx_frame_reaches_the_tap_with_its_header() {
    let mut r = Rig::new(0, Limits::default(), Limits::default());
    let p = packet(100, 1);
    r.mem.write_slice(&p[..HDR_LEN], GuestAddress(BUF)).unwrap();
    r.mem
        .write_slice(&p[HDR_LEN..], GuestAddress(BUF + 0x1000))
        .unwrap();
    let head = r.add_chain(
        1,
        &[(BUF, HDR_LEN as u32, false), (BUF + 0x1000, 100, false)],
    );
    r.handler.process_tx();
    assert_eq!(r.recv_all(), vec![p]);
    assert_eq!(r.used(1), vec![(u32::from(head), 0)]);
    assert_eq!(r.count(|c| &c.tx_packets), 1);
    assert_eq!(r.count(|c| &c.tx_bytes), 100);
    assert_eq!(r.count(|c| &c.tx_dropped), 0);
}

#[test]
fn tx_frame_in_pieces_is_sent_whole() {
    let mut r = Rig::new(0, Limits::default(), Limits::default());
    let p = packet(3000, 5);
    // The header split over two buffers, the second also holding the frame's start; the rest
    // in one buffer that spans both memory regions.
    let tail = REGION_2 - 1000;
    r.mem.write_slice(&p[..5], GuestAddress(BUF)).unwrap();
    r.mem
        .write_slice(&p[5..112], GuestAddress(BUF + 0x1000))
        .unwrap();
    r.mem.write_slice(&p[112..], GuestAddress(tail)).unwrap();
    let head = r.add_chain(
        1,
        &[
            (BUF, 5, false),
            (BUF + 0x1000, 107, false),
            (tail, (p.len() - 112) as u32, false),
        ],
    );
    r.handler.process_tx();
    assert_eq!(r.recv_all(), vec![p]);
    assert_eq!(r.used(1), vec![(u32::from(head), 0)]);
    assert_eq!(r.count(|c| &c.tx_bytes), 3000);
    assert_eq!(r.count(|c| &c.tx_dropped), 0);
}

#[test]
fn hostile_tx_chains_are_dropped_counted_and_returned() {
    let features = f(vn::VIRTIO_NET_F_CSUM);
    let mut r = Rig::new(features, Limits::default(), Limits::default());
    let p = packet(100, 2);
    r.mem.write_slice(&p, GuestAddress(BUF)).unwrap();
    // A GSO header although HOST_TSO4 was not negotiated.
    let mut gso = packet(100, 3);
    gso[0] = NEEDS_CSUM_FLAG;
    gso[1] = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    gso[4] = 0x40;
    r.mem.write_slice(&gso, GuestAddress(BUF + 0x2000)).unwrap();
    // Only a device-writable buffer: nothing to send.
    r.add_chain(1, &[(BUF, 200, true)]);
    // A good frame, then a device-writable buffer.
    r.add_chain(1, &[(BUF, 112, false), (BUF + 0x3000, 100, true)]);
    // Shorter than the header.
    r.add_chain(1, &[(BUF, (HDR_LEN - 1) as u32, false)]);
    // Beyond guest memory.
    r.add_chain(1, &[(MEM_SIZE as u64 - 50, 112, false)]);
    // Larger than any frame (all of it in guest memory).
    r.add_chain(1, &[(BUF, 40_000, false), (BUF + 0x1_0000, 40_000, false)]);
    r.add_chain(1, &[(BUF + 0x2000, 112, false)]);
    // And then a good one still goes through.
    r.add_chain(1, &[(BUF, 112, false)]);
    r.handler.process_tx();
    assert_eq!(r.recv_all(), vec![p]);
    let used = r.used(1);
    assert_eq!(used.len(), 7, "every chain is returned: {used:?}");
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(r.count(|c| &c.tx_dropped), 6);
    assert_eq!(r.count(|c| &c.tx_packets), 1);
}

const NEEDS_CSUM_FLAG: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;

#[test]
fn tso_frames_pass_when_negotiated() {
    let features = f(vn::VIRTIO_NET_F_CSUM) | f(vn::VIRTIO_NET_F_HOST_TSO4);
    let mut r = Rig::new(features, Limits::default(), Limits::default());
    let mut p = packet(30_000, 4);
    p[0] = NEEDS_CSUM_FLAG;
    p[1] = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    p[4..6].copy_from_slice(&1448u16.to_le_bytes());
    r.mem.write_slice(&p, GuestAddress(BUF)).unwrap();
    r.add_chain(1, &[(BUF, p.len() as u32, false)]);
    r.handler.process_tx();
    assert_eq!(r.recv_all(), vec![p]);
    assert_eq!(r.count(|c| &c.tx_dropped), 0);
}

#[test]
fn rx_frame_lands_in_a_guest_buffer_with_num_buffers_1() {
    let mut r = Rig::new(0, Limits::default(), Limits::default());
    let head = r.add_chain(0, &[(BUF, 8, true), (BUF + 0x1000, 2000, true)]);
    let p = packet(90, 5);
    r.peer.send(&p).unwrap();
    r.tap_edge();
    assert_eq!(r.used(0), vec![(u32::from(head), p.len() as u32)]);
    let mut got = r.read_guest(BUF, 8);
    got.extend(r.read_guest(BUF + 0x1000, p.len() - 8));
    let mut want = p.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(got, want);
    assert_eq!(r.count(|c| &c.rx_packets), 1);
    assert_eq!(r.count(|c| &c.rx_bytes), 90);
}

#[test]
fn rx_frame_spans_mergeable_buffers() {
    let mut r = Rig::new(
        f(vn::VIRTIO_NET_F_MRG_RXBUF),
        Limits::default(),
        Limits::default(),
    );
    let h0 = r.add_chain(0, &[(BUF, 1500, true)]);
    let h1 = r.add_chain(0, &[(BUF + 0x1000, 1500, true)]);
    let h2 = r.add_chain(0, &[(BUF + 0x2000, 1500, true)]);
    let p = packet(2500, 6);
    r.peer.send(&p).unwrap();
    r.tap_edge();
    assert_eq!(
        r.used(0),
        vec![
            (u32::from(h0), 1500),
            (u32::from(h1), (p.len() - 1500) as u32)
        ]
    );
    let mut got = r.read_guest(BUF, 1500);
    got.extend(r.read_guest(BUF + 0x1000, p.len() - 1500));
    let mut want = p.clone();
    want[10..12].copy_from_slice(&2u16.to_le_bytes());
    assert_eq!(got, want);
    // The third buffer is still the guest's for the next frame.
    let p2 = packet(60, 7);
    r.peer.send(&p2).unwrap();
    r.tap_edge();
    assert_eq!(r.used(0)[2], (u32::from(h2), p2.len() as u32));
}

#[test]
fn rx_waits_for_buffers_without_dropping_and_resumes_on_notification() {
    let mut r = Rig::new(
        f(vn::VIRTIO_NET_F_MRG_RXBUF),
        Limits::default(),
        Limits::default(),
    );
    let (p1, p2) = (packet(1000, 8), packet(1000, 9));
    r.peer.send(&p1).unwrap();
    r.peer.send(&p2).unwrap();
    // Only part of the room the first frame needs.
    r.add_chain(0, &[(BUF, 500, true)]);
    r.tap_edge();
    assert!(r.used(0).is_empty(), "nothing delivered yet");
    assert_eq!(r.count(|c| &c.rx_dropped), 0);
    // The guest adds buffers and notifies.
    r.add_chain(0, &[(BUF + 0x1000, 2000, true)]);
    r.add_chain(0, &[(BUF + 0x2000, 2000, true)]);
    r.handler.rx_notified();
    let used = r.used(0);
    assert_eq!(used.len(), 3, "{used:?}");
    assert_eq!(used[0].1 + used[1].1, p1.len() as u32);
    assert_eq!(used[2].1, p2.len() as u32);
    assert_eq!(
        &r.read_guest(BUF + 0x2000, p2.len())[HDR_LEN..],
        &p2[HDR_LEN..]
    );
    assert_eq!(r.count(|c| &c.rx_packets), 2);
    assert_eq!(r.count(|c| &c.rx_dropped), 0);
}

#[test]
fn rx_frames_the_guest_cannot_take_are_dropped_and_counted() {
    let mut r = Rig::new(0, Limits::default(), Limits::default());
    // Too small for the frame (no mergeable buffers).
    let h0 = r.add_chain(0, &[(BUF, 100, true)]);
    // Device-readable only.
    let h1 = r.add_chain(0, &[(BUF + 0x1000, 2000, false)]);
    // Beyond guest memory.
    let h2 = r.add_chain(0, &[(MEM_SIZE as u64 - 10, 2000, true)]);
    let h3 = r.add_chain(0, &[(BUF + 0x2000, 2000, true)]);
    for i in 0..4 {
        r.peer.send(&packet(1000, i)).unwrap();
    }
    // A runt from the TAP.
    r.peer.send(&[0u8; 5]).unwrap();
    r.peer.send(&packet(60, 10)).unwrap();
    r.tap_edge();
    let used = r.used(0);
    assert_eq!(
        used,
        vec![
            (u32::from(h0), 0),
            (u32::from(h1), 0),
            (u32::from(h2), 0),
            (u32::from(h3), 1012)
        ]
    );
    assert_eq!(r.count(|c| &c.rx_dropped), 4);
    assert_eq!(r.count(|c| &c.rx_packets), 1);
    // The last frame waits for a buffer, still not dropped.
    let h4 = r.add_chain(0, &[(BUF + 0x3000, 2000, true)]);
    r.handler.rx_notified();
    assert_eq!(r.used(0)[4], (u32::from(h4), 72));
    assert_eq!(r.count(|c| &c.rx_dropped), 4);
}

#[test]
fn tap_offloads_follow_what_the_guest_accepted() {
    let csum = f(vn::VIRTIO_NET_F_GUEST_CSUM);
    let tso = f(vn::VIRTIO_NET_F_GUEST_TSO4) | f(vn::VIRTIO_NET_F_GUEST_TSO6);
    let ecn = f(vn::VIRTIO_NET_F_GUEST_ECN);
    assert_eq!(tap_offload_flags(0), 0);
    assert_eq!(
        tap_offload_flags(tso | ecn),
        0,
        "TSO needs checksum offload"
    );
    assert_eq!(tap_offload_flags(csum), libc::TUN_F_CSUM);
    assert_eq!(
        tap_offload_flags(csum | tso | ecn),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
    );
    assert_eq!(tap_offload_flags(csum | ecn), libc::TUN_F_CSUM);
    // Host-side offloads never change what the TAP hands the guest.
    let r = Rig::new(
        f(vn::VIRTIO_NET_F_CSUM) | f(vn::VIRTIO_NET_F_HOST_TSO4) | csum,
        Limits::default(),
        Limits::default(),
    );
    assert_eq!(r.backend.offload.load(Ordering::SeqCst), libc::TUN_F_CSUM);
}

/// Blocks until `fd` is readable (bounded, so a broken timer fails instead of hanging).
fn wait_readable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 10_000) };
    assert_eq!(n, 1, "the limiter's timer never fired");
}

#[test]
fn tx_rate_limit_holds_frames_until_the_timer() {
    let tx = Limits {
        ops: bucket(1, 20),
        bytes: None,
    };
    let mut r = Rig::new(0, Limits::default(), tx);
    let p = packet(100, 11);
    r.mem.write_slice(&p, GuestAddress(BUF)).unwrap();
    r.add_chain(1, &[(BUF, p.len() as u32, false)]);
    r.add_chain(1, &[(BUF, p.len() as u32, false)]);
    r.handler.process_tx();
    assert_eq!(r.recv_all().len(), 1, "one frame per bucket");
    assert_eq!(r.used(1).len(), 1, "the other chain is still the device's");
    wait_readable(r.handler.tx_limiter_fd());
    r.handler.tx_limiter_fired();
    assert_eq!(r.recv_all(), vec![p]);
    assert_eq!(r.used(1).len(), 2);
    assert_eq!(r.count(|c| &c.tx_dropped), 0);
}

#[test]
fn rx_rate_limit_holds_frames_until_the_timer() {
    let rx = Limits {
        ops: None,
        bytes: bucket(100, 20),
    };
    let mut r = Rig::new(0, rx, Limits::default());
    for i in 0..2 {
        r.add_chain(0, &[(BUF + i * 0x1000, 2000, true)]);
        r.peer.send(&packet(100, i as u8)).unwrap();
    }
    r.tap_edge();
    assert_eq!(r.used(0).len(), 1);
    wait_readable(r.handler.rx_limiter_fd());
    r.handler.rx_limiter_fired();
    assert_eq!(r.used(0).len(), 2);
    assert_eq!(r.count(|c| &c.rx_dropped), 0);
}

#[test]
fn config_space_has_the_mac_and_link_up() {
    let (a, _b) = UnixDatagram::pair().unwrap();
    let backend = Arc::new(SocketBackend {
        sock: a,
        offload: AtomicU32::new(0),
    });
    let io = crate::virtio::EventLoop::new().unwrap().handle();
    let mac: MacAddr = "02:11:22:33:44:55".parse().unwrap();
    let net = Net::new(io, backend, Some(mac), Limits::default(), Limits::default());
    let mut c = [0xffu8; 10];
    net.read_config(0, &mut c);
    assert_eq!(c, [0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 1, 0, 0, 0]);
    let mut tail = [0xffu8; 2];
    net.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0, 0]);
    assert_ne!(net.features() & f(vn::VIRTIO_NET_F_MAC), 0);
    assert_eq!(net.features() & f(vn::VIRTIO_NET_F_HOST_UFO), 0);
}

#[test]
fn mac_addresses() {
    let m: MacAddr = "02:0a:FF:00:01:10".parse().unwrap();
    assert_eq!(m.0, [0x02, 0x0a, 0xff, 0x00, 0x01, 0x10]);
    assert_eq!(m.to_string(), "02:0a:ff:00:01:10");
    for bad in [
        "",
        "02:00:00:00:00",
        "02:00:00:00:00:01:02",
        "zz:00:00:00:00:01",
        "002:00:00:00:00:01",
        "02::00:00:00:01",
    ] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
    }
    let e = "01:00:5e:00:00:01".parse::<MacAddr>().unwrap_err();
    assert!(e.to_string().contains("multicast"), "{e}");
    let (a, b) = (MacAddr::random_local(), MacAddr::random_local());
    assert_ne!(a, b);
    for m in [a, b] {
        assert_eq!(m.0[0] & 0x03, 0x02, "locally administered unicast: {m}");
    }
}

#[test]
fn tap_that_does_not_exist_is_a_clear_error() {
    let e = Tap::open("vireo-nosuch0").unwrap_err();
    assert!(matches!(e, TapError::Missing(_)), "{e}");
    assert!(e.to_string().contains("vireo-nosuch0"), "{e}");
    assert!(matches!(
        Tap::open("a-name-much-too-long"),
        Err(TapError::BadName(_))
    ));
    assert!(matches!(Tap::open("../x"), Err(TapError::BadName(_))));
}

#[test]
fn tap_fd_that_is_not_a_tap_is_refused() {
    let null = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::OwnedFd::from(null);
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let e = Tap::from_fd(fd).unwrap_err();
    assert!(matches!(e, TapError::FdNotTap(n) if n == raw), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("tap-fd={raw}: not a TAP")),
        "{e}"
    );
}
