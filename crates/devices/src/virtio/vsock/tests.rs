//! The vsock connection state machine with crafted queues (the test plays the guest's driver)
//! and real Unix sockets on the host side.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::EventSet;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::muxer::{Muxer, CONNECT_TIMEOUT, CONN_BUF_SIZE};
use super::packet::*;
use super::unix::{port_path, HostListener};
use super::*;

const MEM_SIZE: usize = 0x100_0000;
const QUEUE_SIZE: u16 = 256;
const GUEST_CID: u64 = 3;
const RX: usize = 0;
const TX: usize = 1;
const EVENTS: usize = 2;
/// A Linux-sized rx buffer: header plus 4 KiB.
const RX_BUF: u32 = (HDR_LEN + 4096) as u32;

#[derive(Debug, Clone, Copy, Default)]
struct Rings {
    desc: u64,
    avail: u64,
    used: u64,
}

struct Rig {
    mem: Arc<GuestMemory>,
    queues: [Queue; 3],
    rings: [Rings; 3],
    next_desc: [u16; 3],
    /// Used entries of each queue already looked at.
    seen: [u16; 3],
    /// Head descriptor index → buffer address of the rx chains handed out.
    rx_addr: std::collections::HashMap<u16, u64>,
    next_buf: u64,
    muxer: Muxer,
    dir: PathBuf,
    uds: PathBuf,
    _host: HostListener,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: CONN_BUF_SIZE,
        fwd_cnt: 0,
    }
}

impl Rig {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vireo-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let host = HostListener::bind(&uds).unwrap();
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let mut rings = [Rings::default(); 3];
        let mut queues = Vec::new();
        for (i, at) in [0u64, 0x1_0000, 0x2_0000].into_iter().enumerate() {
            let m = MockSplitQueue::create(&*mem, GuestAddress(at), QUEUE_SIZE);
            rings[i] = Rings {
                desc: m.desc_table_addr().0,
                avail: m.avail_addr().0,
                used: m.used_addr().0,
            };
            queues.push(m.create_queue::<Queue>().unwrap());
        }
        let muxer = Muxer::new(GUEST_CID, uds.clone(), host.listener.try_clone().unwrap());
        Rig {
            mem,
            queues: queues.try_into().unwrap(),
            rings,
            next_desc: [0; 3],
            seen: [0; 3],
            rx_addr: Default::default(),
            next_buf: 0x10_0000,
            muxer,
            dir,
            uds,
            _host: host,
        }
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let at = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64);
        assert!(self.next_buf < MEM_SIZE as u64);
        at
    }

    /// Makes a chain of (address, length, device-writable) descriptors available on `q`.
    fn add_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let rings = self.rings[q];
        let start = self.next_desc[q];
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let index = (start + i as u16) % QUEUE_SIZE;
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = RawDescriptor::from(SplitDescriptor::new(
                addr,
                len,
                flags,
                (index + 1) % QUEUE_SIZE,
            ));
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
        self.next_desc[q] = (start + descs.len() as u16) % QUEUE_SIZE;
        start
    }

    /// New used entries of queue `q`: (head, length).
    fn new_used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let used = self.rings[q].used;
        let n: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.seen[q] != n {
            let at = used + 4 + 8 * u64::from(self.seen[q] % QUEUE_SIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.seen[q] = self.seen[q].wrapping_add(1);
        }
        out
    }

    /// The guest sends a packet (header and payload in two descriptors, as Linux does).
    fn send(&mut self, h: Header, payload: &[u8]) {
        let mut h = h;
        h.len = payload.len() as u32;
        let mut raw = h.encode().to_vec();
        raw.extend_from_slice(payload);
        let at = self.alloc(raw.len() as u32);
        self.mem.write_slice(&raw, GuestAddress(at)).unwrap();
        if payload.is_empty() {
            self.add_chain(TX, &[(at, HDR_LEN as u32, false)]);
        } else {
            self.add_chain(
                TX,
                &[
                    (at, HDR_LEN as u32, false),
                    (at + HDR_LEN as u64, payload.len() as u32, false),
                ],
            );
        }
        self.process_tx();
    }

    fn process_tx(&mut self) {
        let [_, txq, _] = &mut self.queues;
        self.muxer.process_tx(&self.mem, txq).unwrap();
        for (_, len) in self.new_used(TX) {
            assert_eq!(len, 0, "tx buffers are only read");
        }
    }

    /// The guest posts `n` rx buffers.
    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            let at = self.alloc(RX_BUF);
            let head = self.add_chain(RX, &[(at, RX_BUF, true)]);
            self.rx_addr.insert(head, at);
        }
    }

    /// What epoll would report, then the rx queue is filled: a few rounds, as the I/O thread
    /// would run them.
    fn pump(&mut self) {
        for _ in 0..4 {
            for (fd, set) in self.muxer.interests() {
                let revents = poll_now(fd, set);
                if !revents.is_empty() {
                    self.muxer.on_event(fd, revents);
                }
            }
            let [rxq, _, _] = &mut self.queues;
            self.muxer.process_rx(&self.mem, rxq).unwrap();
            drop(self.muxer.take_closed());
        }
    }

    /// Packets the guest received since last asked.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.pump();
        let mut out = Vec::new();
        for (head, len) in self.new_used(RX) {
            if len == 0 {
                continue;
            }
            let at = self.rx_addr[&head];
            let mut raw = vec![0u8; len as usize];
            self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
            let h = Header::decode(raw[..HDR_LEN].try_into().unwrap());
            assert_eq!(
                h.len as usize,
                len as usize - HDR_LEN,
                "used length matches"
            );
            assert_eq!((h.dst_cid, h.type_), (GUEST_CID, TYPE_STREAM));
            out.push((h, raw[HDR_LEN..].to_vec()));
        }
        out
    }

    fn recv_one(&mut self) -> (Header, Vec<u8>) {
        let mut v = self.recv();
        assert_eq!(v.len(), 1, "expected one packet, got {v:?}");
        v.remove(0)
    }

    fn ops(&mut self) -> Vec<u16> {
        self.recv().into_iter().map(|(h, _)| h.op).collect()
    }

    /// A host process listening for guest connections to host port `port`.
    fn host_listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(port_path(&self.uds, port)).unwrap()
    }

    /// Establishes a guest → host connection from guest port `gport` to host port `hport`.
    fn guest_connect(&mut self, gport: u32, hport: u32, l: &UnixListener) -> UnixStream {
        self.send(hdr(op::REQUEST, gport, hport), &[]);
        let (h, _) = self.recv_one();
        assert_eq!((h.op, h.src_port, h.dst_port), (op::RESPONSE, hport, gport));
        assert_eq!(h.buf_alloc, CONN_BUF_SIZE);
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}

fn poll_now(fd: RawFd, set: EventSet) -> EventSet {
    let mut p = libc::pollfd {
        fd,
        events: (if set.contains(EventSet::IN) {
            libc::POLLIN
        } else {
            0
        }) | (if set.contains(EventSet::OUT) {
            libc::POLLOUT
        } else {
            0
        }),
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    assert!(n >= 0);
    let mut out = EventSet::empty();
    for (bit, ev) in [
        (libc::POLLIN, EventSet::IN),
        (libc::POLLOUT, EventSet::OUT),
        (libc::POLLHUP, EventSet::HANG_UP),
        (libc::POLLERR, EventSet::ERROR),
    ] {
        if p.revents & bit != 0 {
            out |= ev;
        }
    }
    out
}

/// The VMM closed its end (the host may see a reset when it had written unread bytes).
fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn guest_to_host_round_trip_and_close() {
    let mut r = Rig::new("g2h");
    r.give_rx(16);
    let l = r.host_listen(6000);
    let mut s = r.guest_connect(1025, 6000, &l);

    r.send(hdr(op::RW, 1025, 6000), b"hello\n");
    assert_eq!(read_line(&mut s), "hello\n");

    s.write_all(b"HELLO\n").unwrap();
    let (h, data) = r.recv_one();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RW, 6000, 1025));
    assert_eq!(data, b"HELLO\n");
    assert_eq!(h.fwd_cnt, 6, "the host took the guest's 6 bytes");

    // The guest closes: the host sees EOF, the guest gets its RST.
    let mut h = hdr(op::SHUTDOWN, 1025, 6000);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    r.send(h, &[]);
    assert_eq!(r.ops(), [op::RST]);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    assert_eq!(r.muxer.connection_count(), 0);
}

#[test]
fn guest_half_close_and_host_close() {
    let mut r = Rig::new("half");
    r.give_rx(16);
    let l = r.host_listen(6001);
    let mut s = r.guest_connect(1026, 6001, &l);

    // The guest will send no more: the host reads EOF but can still answer.
    r.send(hdr(op::RW, 1026, 6001), b"last words");
    let mut h = hdr(op::SHUTDOWN, 1026, 6001);
    h.flags = SHUTDOWN_SEND;
    r.send(h, &[]);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
    s.write_all(b"reply").unwrap();
    let (h, data) = r.recv_one();
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"reply"[..]));

    // The host closes: the guest hears both directions are done.
    drop(s);
    let (h, _) = r.recv_one();
    assert_eq!(h.op, op::SHUTDOWN);
    assert_eq!(h.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    r.send(hdr(op::RST, 1026, 6001), &[]);
    assert_eq!(r.muxer.connection_count(), 0);
    assert!(r.recv().is_empty(), "no answer to a RST");
}

#[test]
fn guest_connect_without_host_listener_is_reset() {
    let mut r = Rig::new("refused");
    r.give_rx(4);
    r.send(hdr(op::REQUEST, 1027, 7000), &[]);
    let (h, _) = r.recv_one();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 7000, 1027));
    assert_eq!(r.muxer.connection_count(), 0);
}

#[test]
fn host_to_guest_round_trip() {
    let mut r = Rig::new("h2g");
    r.give_rx(16);
    let mut s = UnixStream::connect(&r.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Bytes after the line are the first data for the guest.
    s.write_all(b"CONNECT 5000\nearly").unwrap();
    r.muxer.accept();
    let (req, _) = r.recv_one();
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 5000));
    assert!(req.src_port >= 1 << 30);
    let hport = req.src_port;

    let mut resp = hdr(op::RESPONSE, 5000, hport);
    resp.buf_alloc = 4096;
    r.send(resp, &[]);
    assert_eq!(read_line(&mut s), format!("OK {hport}\n"));
    let (h, data) = r.recv_one();
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"early"[..]));

    s.write_all(b"ping\n").unwrap();
    let (_, data) = r.recv_one();
    assert_eq!(data, b"ping\n");
    let mut rw = hdr(op::RW, 5000, hport);
    rw.buf_alloc = 4096;
    r.send(rw, b"PONG\n");
    assert_eq!(read_line(&mut s), "PONG\n");

    // The guest resets: the host socket closes.
    r.send(hdr(op::RST, 5000, hport), &[]);
    r.pump();
    assert!(closed(&mut s));
    assert_eq!(r.muxer.connection_count(), 0);
}

#[test]
fn host_connect_refused_or_unanswered_closes_the_socket() {
    let mut r = Rig::new("h2g-refused");
    r.give_rx(16);
    let mut refused = UnixStream::connect(&r.uds).unwrap();
    refused.write_all(b"CONNECT 5001\n").unwrap();
    r.muxer.accept();
    let (req, _) = r.recv_one();
    r.send(hdr(op::RST, 5001, req.src_port), &[]);
    r.pump();
    assert!(closed(&mut refused));

    // Nobody answers: after the timeout the host socket is closed and the guest gets RST.
    let mut silent = UnixStream::connect(&r.uds).unwrap();
    silent.write_all(b"CONNECT 5002\n").unwrap();
    r.muxer.accept();
    let (req, _) = r.recv_one();
    assert!(r.muxer.has_deadlines());
    r.muxer.on_tick(Instant::now());
    assert_eq!(r.muxer.connection_count(), 1, "not yet");
    r.muxer
        .on_tick(Instant::now() + CONNECT_TIMEOUT + Duration::from_millis(1));
    let (h, _) = r.recv_one();
    assert_eq!(
        (h.op, h.dst_port, h.src_port),
        (op::RST, 5002, req.src_port)
    );
    assert!(closed(&mut silent));
    assert!(!r.muxer.has_deadlines());
}

#[test]
fn bad_connect_lines_close_the_socket() {
    let mut r = Rig::new("badline");
    r.give_rx(4);
    for line in [&b"HELLO 5000\n"[..], b"CONNECT x\n", &[b'9'; 40]] {
        let mut s = UnixStream::connect(&r.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(line).unwrap();
        r.muxer.accept();
        r.pump();
        assert!(closed(&mut s), "{line:?}");
    }
    assert!(r.recv().is_empty(), "the guest hears nothing");
    assert_eq!(r.muxer.connection_count(), 0);
}

#[test]
fn host_data_respects_guest_credit() {
    let mut r = Rig::new("credit");
    r.give_rx(32);
    let l = r.host_listen(6002);
    let mut req = hdr(op::REQUEST, 1028, 6002);
    req.buf_alloc = 10;
    r.send(req, &[]);
    assert_eq!(r.ops(), [op::RESPONSE]);
    let (mut s, _) = l.accept().unwrap();

    s.write_all(&[b'x'; 100]).unwrap();
    let got = r.recv();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].0.op, got[0].1.len()), (op::RW, 10));
    assert_eq!(
        got[1].0.op,
        op::CREDIT_REQUEST,
        "asks once when out of credit"
    );
    assert!(r.recv().is_empty(), "nothing beyond the credit");

    // The guest read 10 bytes and grows its buffer to 50.
    let mut up = hdr(op::CREDIT_UPDATE, 1028, 6002);
    up.buf_alloc = 50;
    up.fwd_cnt = 10;
    r.send(up, &[]);
    let got = r.recv();
    let total: usize = got
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(_, d)| d.len())
        .sum();
    assert_eq!(total, 50);

    // Asked for credit, the device answers with its own.
    let mut cr = hdr(op::CREDIT_REQUEST, 1028, 6002);
    cr.buf_alloc = 50;
    cr.fwd_cnt = 10;
    r.send(cr, &[]);
    let (h, _) = r.recv_one();
    assert_eq!((h.op, h.buf_alloc), (op::CREDIT_UPDATE, CONN_BUF_SIZE));
}

#[test]
fn guest_data_bounded_by_device_credit() {
    let mut r = Rig::new("devcredit");
    r.give_rx(16);
    let l = r.host_listen(6003);
    let mut s = r.guest_connect(1029, 6003, &l);
    let chunk = vec![7u8; MAX_PAYLOAD];
    let mut got = vec![0u8; CONN_BUF_SIZE as usize];
    // The whole buffer: the host reads it all; the guest, whose view of the device's free
    // space is now empty, gets a CREDIT_UPDATE.
    for _ in 0..CONN_BUF_SIZE as usize / MAX_PAYLOAD {
        r.send(hdr(op::RW, 1029, 6003), &chunk);
    }
    let mut n = 0;
    while n < got.len() {
        n += s.read(&mut got[n..]).unwrap();
        r.pump();
    }
    let got = r.recv();
    assert!(
        got.iter()
            .any(|(h, _)| h.op == op::CREDIT_UPDATE && h.fwd_cnt > 0),
        "{got:?}"
    );

    // A guest that ignores the credit: with the host not reading, the connection is reset
    // once more is unforwarded than the device offered.
    let mut sent = 0usize;
    let mut reset = false;
    while sent < 64 * CONN_BUF_SIZE as usize {
        let mut h = hdr(op::RW, 1029, 6003);
        h.fwd_cnt = 0;
        r.send(h, &chunk);
        sent += chunk.len();
        if r.ops().contains(&op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "overrunning the credit resets the connection");
    assert_eq!(r.muxer.connection_count(), 0);
}

#[test]
fn hostile_packets() {
    let mut r = Rig::new("hostile");
    r.give_rx(32);
    let l = r.host_listen(6004);
    let _s = r.guest_connect(1030, 6004, &l);

    // A chain shorter than a header, and one the device cannot read (device-writable):
    // dropped without an answer.
    let at = r.alloc(64);
    r.add_chain(TX, &[(at, 10, false)]);
    r.add_chain(TX, &[(at, 64, true)]);
    // A descriptor outside guest memory.
    r.add_chain(TX, &[(MEM_SIZE as u64 - 8, 64, false)]);
    r.process_tx();
    assert!(r.recv().is_empty());

    // Spoofed source CID: dropped, never answered.
    let mut h = hdr(op::REQUEST, 2000, 6004);
    h.src_cid = 7;
    r.send(h, &[]);
    assert!(r.recv().is_empty());

    // Wrong type, wrong destination, unknown op, payload on a control op: RST.
    let mut h = hdr(op::REQUEST, 2001, 6004);
    h.type_ = 2;
    r.send(h, &[]);
    let mut h = hdr(op::REQUEST, 2002, 6004);
    h.dst_cid = 9;
    r.send(h, &[]);
    r.send(hdr(99, 2003, 6004), &[]);
    r.send(hdr(op::REQUEST, 2004, 6004), b"x");
    let got = r.recv();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|(h, _)| h.op == op::RST));
    assert_eq!(
        got.iter().map(|(h, _)| h.dst_port).collect::<Vec<_>>(),
        [2001, 2002, 2003, 2004]
    );

    // len beyond the chain and beyond the maximum.
    let mut h = hdr(op::RW, 2005, 6004);
    h.len = 100;
    let at = r.alloc(HDR_LEN as u32 + 10);
    r.mem.write_slice(&h.encode(), GuestAddress(at)).unwrap();
    r.add_chain(TX, &[(at, HDR_LEN as u32 + 10, false)]);
    let mut h = hdr(op::RW, 2006, 6004);
    h.len = (MAX_PAYLOAD + 1) as u32;
    let at = r.alloc(HDR_LEN as u32 + 0x2_0000);
    r.mem.write_slice(&h.encode(), GuestAddress(at)).unwrap();
    r.add_chain(
        TX,
        &[
            (at, HDR_LEN as u32, false),
            (at + HDR_LEN as u64, 0x2_0000, false),
        ],
    );
    r.process_tx();
    let got = r.recv();
    assert_eq!(
        got.iter()
            .map(|(h, _)| (h.op, h.dst_port))
            .collect::<Vec<_>>(),
        [(op::RST, 2005), (op::RST, 2006)]
    );

    // Data for no connection; a RESPONSE on an established one (which resets it).
    r.send(hdr(op::RW, 2007, 6004), b"?");
    r.send(hdr(op::RESPONSE, 1030, 6004), &[]);
    let got = r.recv();
    assert_eq!(
        got.iter()
            .map(|(h, _)| (h.op, h.dst_port))
            .collect::<Vec<_>>(),
        [(op::RST, 2007), (op::RST, 1030)]
    );
    assert_eq!(r.muxer.connection_count(), 0);
    // A RST for nothing is not answered.
    r.send(hdr(op::RST, 2008, 6004), &[]);
    assert!(r.recv().is_empty());
}

#[test]
fn small_rx_buffers_are_skipped() {
    let mut r = Rig::new("smallrx");
    // A buffer too small for a header, a read-only one, then a good one.
    let a = r.alloc(64);
    r.add_chain(RX, &[(a, 20, true)]);
    r.add_chain(RX, &[(a, 64, false)]);
    r.send(hdr(op::REQUEST, 1031, 7001), &[]);
    r.pump();
    assert_eq!(r.new_used(RX), [(0, 0), (1, 0)]);
    r.give_rx(1);
    let (h, _) = r.recv_one();
    assert_eq!((h.op, h.dst_port), (op::RST, 1031));
}

#[test]
fn rx_waits_for_buffers() {
    let mut r = Rig::new("norx");
    let l = r.host_listen(6005);
    r.send(hdr(op::REQUEST, 1032, 6005), &[]);
    r.pump();
    assert!(r.new_used(RX).is_empty());
    r.give_rx(1);
    let (h, _) = r.recv_one();
    assert_eq!(h.op, op::RESPONSE);
    let (mut s, _) = l.accept().unwrap();
    s.write_all(b"queued").unwrap();
    r.pump();
    r.give_rx(1);
    let (_, data) = r.recv_one();
    assert_eq!(data, b"queued");
}

#[test]
fn device_config_and_bad_cid() {
    let dir = std::env::temp_dir().join(format!("vireo-vsock-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let io = crate::virtio::EventLoop::new().unwrap().handle();
    for cid in [0, 1, 2, u64::from(u32::MAX)] {
        assert!(matches!(
            VsockHost::bind(cid, &dir.join("x.sock")),
            Err(VsockError::BadCid(_))
        ));
    }
    let dev = Vsock::new(VsockHost::bind(0x1_0203, &dir.join("x.sock")).unwrap(), io);
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    let mut b = [0xffu8; 12];
    dev.read_config(0, &mut b);
    assert_eq!(b, [3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut b = [0xffu8; 2];
    dev.read_config(1, &mut b);
    assert_eq!(b, [2, 1]);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0, 0]);
    // The path is in use by the first device.
    assert!(matches!(
        VsockHost::bind(3, &dir.join("x.sock")),
        Err(VsockError::Listen(_))
    ));
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by fuzz/fuzz_targets/virtio_vsock.rs: an available index more than a queue ahead made
/// the muxer spin forever on the I/O thread, on either queue.
#[test]
fn bogus_avail_index_fails_instead_of_spinning() {
    let mut r = Rig::new("bogus-idx");
    // The guest connects where nobody listens: an RST is owed, with no rx buffers yet.
    r.send(hdr(op::REQUEST, 1027, 7000), &[]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for q in [RX, TX] {
            let at = GuestAddress(r.rings[q].avail + 2);
            r.mem.write_obj(1000u16, at).unwrap();
        }
        let [rxq, txq, _] = &mut r.queues;
        let rx_result = r.muxer.process_rx(&r.mem, rxq).map(|_| ());
        let tx_result = r.muxer.process_tx(&r.mem, txq).map(|_| ());
        let _ = tx.send((rx_result.is_err(), tx_result.is_err()));
    });
    let errs = rx.recv_timeout(Duration::from_secs(10)).expect("no hang");
    assert_eq!(errs, (true, true));
}

/// After a restore the device tells the driver its connections are gone: one transport-reset
/// event in the first event buffer that can hold it.
#[test]
fn a_transport_reset_goes_in_the_first_usable_event_buffer() {
    let mut rig = Rig::new("transport-reset");
    // Nothing posted yet: nothing sent, no error.
    let mem = rig.mem.clone();
    assert!(!super::post_transport_reset(&mem, &mut rig.queues[EVENTS]).unwrap());
    // A read-only buffer (unusable), a writable one too short, then two usable ones.
    let (ro, short, good, spare) = (rig.alloc(8), rig.alloc(2), rig.alloc(8), rig.alloc(8));
    for at in [ro, short, good, spare] {
        mem.write_obj(0xdead_beef_u32, GuestAddress(at)).unwrap();
    }
    let h_ro = rig.add_chain(EVENTS, &[(ro, 8, false)]);
    let h_short = rig.add_chain(EVENTS, &[(short, 2, true)]);
    let h_good = rig.add_chain(EVENTS, &[(good, 8, true)]);
    rig.add_chain(EVENTS, &[(spare, 8, true)]);
    assert!(super::post_transport_reset(&mem, &mut rig.queues[EVENTS]).unwrap());
    assert_eq!(
        rig.new_used(EVENTS),
        vec![(h_ro, 0), (h_short, 0), (h_good, 4)]
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(good)).unwrap(),
        EVENT_TRANSPORT_RESET
    );
    for untouched in [ro, short, spare] {
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(untouched)).unwrap(),
            0xdead_beef
        );
    }
    // A bogus available index (a whole queue ahead) is an error, not a loop.
    let avail = rig.rings[EVENTS].avail;
    mem.write_obj(1000u16, GuestAddress(avail + 2)).unwrap();
    assert!(super::post_transport_reset(&mem, &mut rig.queues[EVENTS]).is_err());
}
