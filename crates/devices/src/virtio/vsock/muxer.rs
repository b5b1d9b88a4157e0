//! The vsock connections between the guest and host Unix sockets, and the packets they make.
//!
//! The [`Muxer`] owns every connection and the host sockets behind them. The I/O thread's
//! handler feeds it: the tx queue's packets ([`Muxer::process_tx`]), readiness of host sockets
//! ([`Muxer::on_event`]) and timer ticks ([`Muxer::on_tick`]); and it fills the rx queue with
//! what the guest is owed ([`Muxer::process_rx`]). It never blocks: host sockets are
//! non-blocking, and what a host socket cannot take yet waits in a per-connection buffer that
//! the guest's credit bounds (it may not send more than [`CONN_BUF_SIZE`] unforwarded bytes).
//! Which host sockets need watching, and for what, is in [`Muxer::interests`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use event_manager::EventSet;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::packet::{
    op, read_tx_packet, Header, Malformed, HDR_LEN, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV,
    SHUTDOWN_SEND, TYPE_STREAM,
};
use super::unix::{connect_nonblocking, parse_connect_line, port_path, ConnectLine};
use crate::virtio::GuestMemory;

/// Connections at once, both directions together; more are refused with RST.
pub const MAX_CONNECTIONS: usize = 256;
/// Host processes connected to `uds_path` that have not yet sent their `CONNECT` line.
pub const MAX_PENDING_HOST: usize = 32;
/// RSTs waiting for rx buffers; more are dropped (the guest's own timeouts then apply).
const MAX_STRAY_RST: usize = 512;
/// What each connection offers the guest: bytes it may send beyond what the host has taken.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// A CREDIT_UPDATE goes out when the guest's idea of our free space falls below this.
const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;
/// How long the guest has to answer a host-initiated REQUEST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closing connection may take to hand the host what is left.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host process has to send its `CONNECT` line.
pub const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Host-side ports of host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Connections accepted per listener wake-up.
const ACCEPT_BATCH: usize = 16;
/// How long accepting pauses after accept(2) fails for a reason other than EAGAIN.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    /// The host's end: the port the guest connected to, or the one the VMM chose.
    local_port: u32,
    /// The guest's end.
    peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent or queued, waiting for the guest's RESPONSE.
    Connecting,
    Established,
    /// The guest shut down both directions: hand the host what is left, then RST.
    Closing,
}

/// Control packets a connection owes the guest.
#[derive(Debug, Default)]
struct Owed {
    request: bool,
    response: bool,
    credit_update: bool,
    credit_request: bool,
    /// SHUTDOWN flags not yet sent.
    shutdown: u32,
}

struct Conn {
    stream: UnixStream,
    state: State,
    deadline: Option<Instant>,
    owed: Owed,

    // Guest → host.
    to_host: VecDeque<u8>,
    /// Bytes at the front of `to_host` that are the VMM's own (the `OK` line), not guest data.
    own_bytes: usize,
    /// Guest payload bytes received, and forwarded to the host socket.
    recv_cnt: u32,
    fwd_cnt: u32,
    /// `fwd_cnt` as the guest last heard it.
    last_fwd_sent: u32,
    guest_shut_send: bool,
    guest_shut_rcv: bool,
    host_write_shut: bool,

    // Host → guest.
    /// Bytes the host sent after its `CONNECT` line, sent to the guest first.
    prefix: Vec<u8>,
    /// The host socket may have data (or EOF) to read.
    readable: bool,
    host_eof: bool,
    /// The host socket hung up: the host end is closed for good.
    hup: bool,
    /// Payload bytes sent to the guest.
    sent_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    credit_requested: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Self {
        Conn {
            stream,
            state,
            deadline: None,
            owed: Owed::default(),
            to_host: VecDeque::new(),
            own_bytes: 0,
            recv_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_shut: false,
            prefix: Vec::new(),
            readable: false,
            host_eof: false,
            hup: false,
            sent_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            credit_requested: false,
        }
    }

    /// Bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.sent_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Data for the guest may be waiting (the host socket or the leftover of the CONNECT line).
    fn has_host_data(&self) -> bool {
        self.state == State::Established
            && !self.guest_shut_rcv
            && (!self.prefix.is_empty() || (self.readable && !self.host_eof))
    }

    /// Counts `n` bytes taken by the host socket.
    fn forwarded(&mut self, n: usize) {
        let own = n.min(self.own_bytes);
        self.own_bytes -= own;
        self.fwd_cnt = self.fwd_cnt.wrapping_add((n - own) as u32);
    }

    /// Writes what the host socket takes of `to_host`; an error means the host end is gone.
    fn flush(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.to_host.is_empty() {
            if self.to_host.capacity() > 64 * 1024 {
                self.to_host.shrink_to(4096);
            }
            if self.guest_shut_send && !self.host_write_shut {
                self.host_write_shut = true;
                let _ = self.stream.shutdown(Shutdown::Write);
            }
        }
        self.maybe_credit_update();
        Ok(())
    }

    /// Writes guest payload straight to the host socket, keeping what it does not take.
    fn send_to_host(&mut self, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        if self.to_host.is_empty() {
            while done < data.len() {
                match self.stream.write(&data[done..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.forwarded(done);
        }
        self.to_host.extend(&data[done..]);
        self.maybe_credit_update();
        Ok(())
    }

    /// Owes the guest a CREDIT_UPDATE when its view of our free space is small and stale.
    fn maybe_credit_update(&mut self) {
        let unacked = self.recv_cnt.wrapping_sub(self.last_fwd_sent);
        let guest_view_free = CONN_BUF_SIZE.saturating_sub(unacked);
        if self.fwd_cnt != self.last_fwd_sent && guest_view_free < CREDIT_UPDATE_THRESHOLD {
            self.owed.credit_update = true;
        }
    }

    /// Closing and nothing is left for the host: time for the RST.
    fn close_done(&self) -> bool {
        self.state == State::Closing && self.to_host.is_empty()
    }

    /// What to watch on the host socket; None: nothing, not even hang-ups.
    fn interest(&self) -> Option<EventSet> {
        if self.hup {
            return None;
        }
        let mut set = EventSet::empty();
        if self.state == State::Established
            && !self.readable
            && !self.host_eof
            && !self.guest_shut_rcv
        {
            set |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            set |= EventSet::OUT;
        }
        Some(set)
    }
}

/// A host process connected to `uds_path` that has not yet said which guest port it wants.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    accept_paused_until: Option<Instant>,
    conns: HashMap<ConnKey, Conn>,
    /// Host socket → its connection.
    fds: HashMap<RawFd, ConnKey>,
    pending_host: HashMap<RawFd, PendingHost>,
    /// RSTs to send that belong to no connection (any more).
    stray: VecDeque<Header>,
    /// Closed host sockets, kept open until the handler has stopped watching them.
    graveyard: Vec<UnixStream>,
    next_port: u32,
    scratch: Vec<u8>,
}

impl Muxer {
    /// `listener` must be non-blocking.
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> Self {
        Muxer {
            guest_cid,
            uds_path,
            listener,
            accept_paused_until: None,
            conns: HashMap::new(),
            fds: HashMap::new(),
            pending_host: HashMap::new(),
            stray: VecDeque::new(),
            graveyard: Vec::new(),
            next_port: FIRST_HOST_PORT,
            scratch: vec![0; MAX_PAYLOAD],
        }
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn conn_hdr(&self, key: ConnKey, conn: &Conn, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: conn.fwd_cnt,
        }
    }

    fn push_stray(&mut self, h: Header) {
        if self.stray.len() < MAX_STRAY_RST {
            self.stray.push_back(h);
        } else {
            tracing::debug!("vsock: too many RSTs waiting; one dropped");
        }
    }

    /// Ends a connection at once: the guest gets RST, the host socket is closed.
    fn reset(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let rst = self.conn_hdr(key, &conn, op::RST);
            self.push_stray(rst);
            self.fds.remove(&conn.stream.as_raw_fd());
            self.graveyard.push(conn.stream);
        }
    }

    /// Ends a connection the guest has already forgotten (it sent RST): no reply.
    fn forget(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.fds.remove(&conn.stream.as_raw_fd());
            self.graveyard.push(conn.stream);
        }
    }

    fn insert(&mut self, key: ConnKey, conn: Conn) {
        self.fds.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
    }

    // ---- The tx queue: packets from the guest. ----

    /// Takes every packet the guest queued. Returns whether buffers were used.
    pub fn process_tx(
        &mut self,
        mem: &GuestMemory,
        q: &mut Queue,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        let mut payload = std::mem::take(&mut self.scratch);
        let result = (|| -> Result<bool, virtio_queue::Error> {
            loop {
                q.disable_notification(mem)?;
                while let Some(chain) = q.pop_descriptor_chain(mem) {
                    let head = chain.head_index();
                    match chain.reader(mem) {
                        Ok(mut r) => {
                            let avail = r.available_bytes();
                            match read_tx_packet(&mut r, avail, &mut payload) {
                                Ok(p) => self.handle_packet(p.hdr, &payload[..p.payload_len]),
                                Err((why, hdr)) => self.malformed(why, hdr),
                            }
                        }
                        Err(e) => tracing::debug!("vsock: unreadable tx chain: {e}"),
                    }
                    q.add_used(mem, head, 0)?;
                    used = true;
                }
                if !q.enable_notification(mem)? {
                    return Ok(used);
                }
                // pop_descriptor_chain() is None for a bogus avail index (over a queue
                // ahead) or a queue not ready too: fail then, do not spin.
                q.iter(mem)?;
            }
        })();
        self.scratch = payload;
        result
    }

    fn malformed(&mut self, why: Malformed, hdr: Option<Header>) {
        tracing::debug!("vsock: malformed tx packet ({why:?}): {hdr:?}");
        let Some(h) = hdr else { return };
        if h.src_cid != self.guest_cid || h.op == op::RST {
            return;
        }
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        if h.dst_cid == HOST_CID && self.conns.contains_key(&key) {
            self.reset(key);
        } else {
            self.push_stray(h.reply_rst());
        }
    }

    /// One well-formed packet from the guest.
    pub(super) fn handle_packet(&mut self, h: Header, payload: &[u8]) {
        // A packet that claims another source is never answered.
        if h.src_cid != self.guest_cid {
            tracing::debug!("vsock: packet from CID {} dropped", h.src_cid);
            return;
        }
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        if h.op == op::RST {
            if h.dst_cid == HOST_CID {
                self.forget(key);
            }
            return;
        }
        if h.dst_cid != HOST_CID || h.type_ != TYPE_STREAM {
            self.push_stray(h.reply_rst());
            return;
        }
        if h.op == op::REQUEST {
            if h.len != 0 {
                self.push_stray(h.reply_rst());
            } else {
                self.guest_connect(key, &h);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.push_stray(h.reply_rst());
            return;
        };
        conn.update_peer_credit(&h);
        let ok = match h.op {
            _ if h.op != op::RW && h.len != 0 => false,
            op::RESPONSE if conn.state == State::Connecting => {
                conn.state = State::Established;
                conn.deadline = None;
                let line = format!("OK {}\n", key.local_port);
                conn.own_bytes += line.len();
                conn.to_host.extend(line.as_bytes());
                // The host may have closed while the guest was answering.
                conn.flush().is_ok()
            }
            op::RW => {
                let unforwarded = u64::from(conn.recv_cnt.wrapping_sub(conn.fwd_cnt));
                if conn.state != State::Established
                    || conn.guest_shut_send
                    || unforwarded + payload.len() as u64 > u64::from(CONN_BUF_SIZE)
                {
                    false
                } else {
                    conn.recv_cnt = conn.recv_cnt.wrapping_add(payload.len() as u32);
                    conn.send_to_host(payload).is_ok()
                }
            }
            op::CREDIT_UPDATE => true,
            op::CREDIT_REQUEST => {
                conn.owed.credit_update = true;
                true
            }
            op::SHUTDOWN if conn.state != State::Connecting => {
                conn.guest_shut_send |= h.flags & SHUTDOWN_SEND != 0;
                conn.guest_shut_rcv |= h.flags & SHUTDOWN_RCV != 0;
                if conn.guest_shut_send && conn.guest_shut_rcv && conn.state != State::Closing {
                    conn.state = State::Closing;
                    conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                }
                conn.flush().is_ok() && !conn.close_done()
            }
            // Unknown ops, and RESPONSE or SHUTDOWN out of place.
            _ => false,
        };
        if !ok {
            self.reset(key);
        }
    }

    /// The guest connects to host port `key.local_port`.
    fn guest_connect(&mut self, key: ConnKey, h: &Header) {
        if self.conns.contains_key(&key) {
            // The guest reused a live connection's ports: both ends are confused.
            self.reset(key);
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("vsock: connection limit reached, refusing");
            self.push_stray(h.reply_rst());
            return;
        }
        let path = port_path(&self.uds_path, key.local_port);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let mut conn = Conn::new(stream, State::Established);
                conn.update_peer_credit(h);
                conn.owed.response = true;
                self.insert(key, conn);
            }
            Err(e) => {
                tracing::debug!("vsock: guest connection to {}: {e}", path.display());
                self.push_stray(h.reply_rst());
            }
        }
    }

    // ---- Host sockets. ----

    /// Accepts host processes connecting to `uds_path`.
    pub fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending_host.len() >= MAX_PENDING_HOST
                        || stream.set_nonblocking(true).is_err()
                    {
                        tracing::debug!("vsock: too many host connections waiting; one closed");
                        continue;
                    }
                    self.pending_host.insert(
                        stream.as_raw_fd(),
                        PendingHost {
                            stream,
                            line: Vec::new(),
                            deadline: Instant::now() + CONNECT_LINE_TIMEOUT,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, say: stop watching a while rather than spin.
                    tracing::warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// A host socket is ready.
    pub fn on_event(&mut self, fd: RawFd, set: EventSet) {
        if fd == self.listener.as_raw_fd() {
            self.accept();
        } else if self.pending_host.contains_key(&fd) {
            self.read_connect_line(fd);
        } else if let Some(&key) = self.fds.get(&fd) {
            let Some(conn) = self.conns.get_mut(&key) else {
                return;
            };
            // A hang-up reported in the same epoll batch as the closing of an earlier socket
            // with this descriptor number would be stale: believe only what poll(2) confirms.
            let gone = set.intersects(EventSet::HANG_UP | EventSet::ERROR)
                && hung_up(conn.stream.as_raw_fd());
            if gone || set.contains(EventSet::IN) {
                conn.readable = true;
            }
            if gone {
                conn.hup = true;
            }
            if (gone || set.contains(EventSet::OUT)) && (conn.flush().is_err() || conn.close_done())
            {
                self.reset(key);
            }
        }
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending_host.get_mut(&fd) else {
            return;
        };
        let mut buf = [0u8; super::unix::MAX_CONNECT_LINE];
        let room = buf.len() - p.line.len();
        let outcome = match p.stream.read(&mut buf[..room]) {
            Ok(0) => ConnectLine::Invalid,
            Ok(n) => {
                p.line.extend_from_slice(&buf[..n]);
                parse_connect_line(&p.line)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                ConnectLine::Incomplete
            }
            Err(_) => ConnectLine::Invalid,
        };
        match outcome {
            ConnectLine::Incomplete => {}
            ConnectLine::Invalid => {
                if let Some(p) = self.pending_host.remove(&fd) {
                    self.graveyard.push(p.stream);
                }
            }
            ConnectLine::Connect { port, consumed } => {
                let Some(p) = self.pending_host.remove(&fd) else {
                    return;
                };
                if self.conns.len() >= MAX_CONNECTIONS {
                    tracing::debug!("vsock: connection limit reached, host connection closed");
                    self.graveyard.push(p.stream);
                    return;
                }
                let key = ConnKey {
                    local_port: self.free_local_port(port),
                    peer_port: port,
                };
                let mut conn = Conn::new(p.stream, State::Connecting);
                conn.prefix = p.line[consumed..].to_vec();
                conn.owed.request = true;
                conn.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
                self.insert(key, conn);
            }
        }
    }

    /// A host-side port for a new connection to guest port `peer_port`.
    fn free_local_port(&mut self, peer_port: u32) -> u32 {
        // At most MAX_CONNECTIONS ports are taken, so this ends within that many steps.
        loop {
            let port = self.next_port;
            self.next_port = if port == u32::MAX - 1 {
                FIRST_HOST_PORT
            } else {
                port + 1
            };
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return port;
            }
        }
    }

    /// Ends what waited too long: CONNECT lines, REQUESTs the guest never answered, closes.
    pub fn on_tick(&mut self, now: Instant) {
        let late: Vec<RawFd> = self
            .pending_host
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            if let Some(p) = self.pending_host.remove(&fd) {
                self.graveyard.push(p.stream);
            }
        }
        let late: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in late {
            self.reset(key);
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
        }
    }

    /// Whether anything waits for [`Muxer::on_tick`].
    pub fn has_deadlines(&self) -> bool {
        self.accept_paused_until.is_some()
            || !self.pending_host.is_empty()
            || self.conns.values().any(|c| c.deadline.is_some())
    }

    /// Every host socket to watch and for what (hang-ups and errors are always reported).
    pub fn interests(&self) -> Vec<(RawFd, EventSet)> {
        let mut v = Vec::with_capacity(1 + self.pending_host.len() + self.conns.len());
        if self.accept_paused_until.is_none() {
            v.push((self.listener.as_raw_fd(), EventSet::IN));
        }
        v.extend(self.pending_host.keys().map(|&fd| (fd, EventSet::IN)));
        v.extend(
            self.conns
                .values()
                .filter_map(|c| c.interest().map(|s| (c.stream.as_raw_fd(), s))),
        );
        v
    }

    /// Host sockets closed since the last call; drop them once they are no longer watched.
    pub fn take_closed(&mut self) -> Vec<UnixStream> {
        std::mem::take(&mut self.graveyard)
    }

    // ---- The rx queue: packets to the guest. ----

    /// Sends the guest what it is owed while it has buffers. Returns whether buffers were used.
    pub fn process_rx(
        &mut self,
        mem: &GuestMemory,
        q: &mut Queue,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        // Out of buffers with work left: ask to be told of new ones, and look once more in
        // case they came meanwhile.
        while self.fill_rx(mem, q, &mut used)? {
            if !q.enable_notification(mem)? {
                break;
            }
            // pop_descriptor_chain() is None for a bogus avail index (over a queue
            // ahead) or a queue not ready too: fail then, do not spin.
            q.iter(mem)?;
        }
        Ok(used)
    }

    /// Returns true when it ran out of buffers with packets left to send.
    fn fill_rx(
        &mut self,
        mem: &GuestMemory,
        q: &mut Queue,
        used: &mut bool,
    ) -> Result<bool, virtio_queue::Error> {
        loop {
            while let Some(h) = self.stray.front().copied() {
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    return Ok(true);
                };
                let head = chain.head_index();
                let len = write_packet(mem, chain, &h, &[]);
                q.add_used(mem, head, len.unwrap_or(0))?;
                *used = true;
                if len.is_some() {
                    self.stray.pop_front();
                }
            }
            let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
            for key in keys {
                loop {
                    match self.next_conn_packet(mem, q, key)? {
                        Step::Sent | Step::BadChain => *used = true,
                        Step::Again => {}
                        Step::Idle => break,
                        Step::NoBuffers => return Ok(true),
                    }
                }
            }
            // Connections reset on the way queued RSTs; each connection resets once.
            if self.stray.is_empty() {
                return Ok(false);
            }
        }
    }

    /// Sends the next packet connection `key` owes the guest, if any.
    fn next_conn_packet(
        &mut self,
        mem: &GuestMemory,
        q: &mut Queue,
        key: ConnKey,
    ) -> Result<Step, virtio_queue::Error> {
        let guest_cid = self.guest_cid;
        let Some(conn) = self.conns.get_mut(&key) else {
            return Ok(Step::Idle);
        };
        // The host end closed while the guest does not read: nothing more will come.
        if conn.hup && conn.guest_shut_rcv && !conn.host_eof {
            conn.host_eof = true;
            conn.owed.shutdown |= SHUTDOWN_SEND | SHUTDOWN_RCV;
        }
        let wants_data = conn.has_host_data();
        if wants_data && conn.peer_credit() == 0 && !conn.credit_requested {
            conn.credit_requested = true;
            conn.owed.credit_request = true;
        }
        let ctl = if conn.owed.request {
            Some((op::REQUEST, 0))
        } else if conn.owed.response {
            Some((op::RESPONSE, 0))
        } else if wants_data && conn.peer_credit() > 0 {
            None
        } else if conn.owed.credit_request {
            Some((op::CREDIT_REQUEST, 0))
        } else if conn.owed.credit_update {
            Some((op::CREDIT_UPDATE, 0))
        } else if conn.owed.shutdown != 0 {
            Some((op::SHUTDOWN, conn.owed.shutdown))
        } else {
            return Ok(Step::Idle);
        };

        let Some(chain) = q.pop_descriptor_chain(mem) else {
            return Ok(Step::NoBuffers);
        };
        let head = chain.head_index();
        let mut hdr = Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op: 0,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: conn.fwd_cnt,
        };

        if let Some((op, flags)) = ctl {
            hdr.op = op;
            hdr.flags = flags;
            let len = write_packet(mem, chain, &hdr, &[]);
            q.add_used(mem, head, len.unwrap_or(0))?;
            if len.is_none() {
                return Ok(Step::BadChain);
            }
            match op {
                op::REQUEST => conn.owed.request = false,
                op::RESPONSE => conn.owed.response = false,
                op::CREDIT_REQUEST => conn.owed.credit_request = false,
                op::SHUTDOWN => conn.owed.shutdown = 0,
                _ => {}
            }
            conn.owed.credit_update = false;
            conn.last_fwd_sent = conn.fwd_cnt;
            return Ok(Step::Sent);
        }

        // A RW packet: as much as the buffer, the guest's credit and the host have.
        let mut writer = match chain.writer(mem) {
            Ok(w) if w.available_bytes() > HDR_LEN => w,
            _ => {
                q.add_used(mem, head, 0)?;
                return Ok(Step::BadChain);
            }
        };
        let cap = (writer.available_bytes() - HDR_LEN)
            .min(MAX_PAYLOAD)
            .min(conn.peer_credit() as usize);
        let n = if !conn.prefix.is_empty() {
            let n = cap.min(conn.prefix.len());
            self.scratch[..n].copy_from_slice(&conn.prefix[..n]);
            conn.prefix.drain(..n);
            n
        } else {
            match conn.stream.read(&mut self.scratch[..cap]) {
                Ok(0) => {
                    conn.readable = false;
                    conn.host_eof = true;
                    conn.owed.shutdown |= SHUTDOWN_SEND;
                    if conn.hup {
                        conn.owed.shutdown |= SHUTDOWN_RCV;
                    }
                    q.go_to_previous_position();
                    return Ok(Step::Again);
                }
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    conn.readable = e.kind() == io::ErrorKind::Interrupted;
                    q.go_to_previous_position();
                    return Ok(Step::Again);
                }
                Err(e) => {
                    tracing::debug!("vsock: host socket: {e}");
                    q.go_to_previous_position();
                    self.reset(key);
                    return Ok(Step::Idle);
                }
            }
        };
        hdr.op = op::RW;
        hdr.len = n as u32;
        let ok =
            writer.write_all(&hdr.encode()).is_ok() && writer.write_all(&self.scratch[..n]).is_ok();
        // The guest's memory failed under us: the data is lost, so is the connection.
        if !ok {
            q.add_used(mem, head, 0)?;
            self.reset(key);
            return Ok(Step::BadChain);
        }
        q.add_used(mem, head, (HDR_LEN + n) as u32)?;
        conn.sent_cnt = conn.sent_cnt.wrapping_add(n as u32);
        conn.owed.credit_update = false;
        conn.last_fwd_sent = conn.fwd_cnt;
        Ok(Step::Sent)
    }
}

enum Step {
    Sent,
    /// The guest's buffer could not hold the packet; it was returned unused.
    BadChain,
    /// Something changed without a packet: look again.
    Again,
    Idle,
    NoBuffers,
}

/// Whether the socket `fd` has hung up or has an error pending, now.
fn hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call, no timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Writes a header and payload to an rx chain; None if it does not fit or cannot be written.
fn write_packet(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    h: &Header,
    payload: &[u8],
) -> Option<u32> {
    let mut w = chain.writer(mem).ok()?;
    if w.available_bytes() < HDR_LEN + payload.len() {
        return None;
    }
    let mut h = *h;
    h.len = payload.len() as u32;
    w.write_all(&h.encode()).ok()?;
    w.write_all(payload).ok()?;
    Some((HDR_LEN + payload.len()) as u32)
}
