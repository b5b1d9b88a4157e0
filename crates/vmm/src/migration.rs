//! Live migration over TCP: pre-copy with KVM's dirty log (and vm-memory's dirty bitmap for
//! what the devices write), then a stop-and-copy of the last dirty pages and the machine
//! state.
//!
//! The stream starts with `VIREOMIG` and the protocol version (u32, little-endian), then
//! frames: `kind: u32, len: u64, payload[len], xxh64(kind ‖ len ‖ payload): u64`.
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | HELLO | source → destination | JSON: the source's host facts and VM configuration |
//! | ACK | destination → source | empty: the destination built the machine and waits for pages |
//! | PAGES | source → destination | up to 256 × (guest address: u64, 4096 bytes) |
//! | SYNC | source → destination | empty: answer SYNCED once every page before it is in place |
//! | SYNCED | destination → source | empty |
//! | STATE | source → destination | the machine state (postcard, as in a snapshot) |
//! | RUNNING | destination → source | empty: the destination's vCPUs run |
//! | ERROR | destination → source | a one-line reason |
//!
//! The destination treats the stream as hostile: every length is bounded before anything is
//! allocated, every page address must be page-aligned inside guest RAM, the state is checked
//! like a snapshot's. The source resumes its guest whenever anything fails before RUNNING.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::config::{host_memory_mib, SerialConfig, VmConfig};
use crate::machine::{self, Error, Launch, MemorySource, RunOptions, RunReport, Shell};
use crate::memory::{is_zero_page, GuestMemoryMmap, PAGE_SIZE};
use crate::snapshot::{self, HostInfo, MachineAccess};
use crate::vstate::vm::Vm;
use devices::virtio::IoFreeze;

pub const MAGIC: &[u8; 8] = b"VIREOMIG";
pub const VERSION: u32 = 4;

const HELLO: u32 = 1;
const PAGES: u32 = 2;
const STATE: u32 = 3;
const SYNC: u32 = 4;
const ACK: u32 = 16;
const RUNNING: u32 = 17;
const ERROR: u32 = 18;
const SYNCED: u32 = 19;

const PAGES_PER_FRAME: usize = 256;
const PAGE_ENTRY: usize = 8 + PAGE_SIZE;
const MAX_HELLO: u64 = 1 << 20;
const MAX_ERROR: u64 = 4096;
/// Pre-copy rounds after the first full pass, at most.
pub const MAX_ROUNDS: u32 = 30;
/// A last dirty set this small is not worth another round.
const MIN_FINAL_PAGES: usize = 32;
/// How long either side waits for its peer before giving up.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("connection to the destination failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the destination refused the migration: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Source(String),
    #[error("a migration is already running")]
    Busy,
    /// The destination cannot listen on its address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The destination's wait for a source failed.
    #[error("accept on {addr}: {source}")]
    Accept {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The source's connection cannot be set up (timeouts, a second handle on it).
    #[error("{0}")]
    Connection(#[source] std::io::Error),
    /// The source could not be told that the destination's guest runs.
    #[error("cannot tell the source the guest runs: {0}")]
    Running(#[source] std::io::Error),
}

/// What the source reports while and after it migrates (`GET /vm/migrate`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// "none", "active", "completed" or "failed".
    pub state: String,
    pub destination: String,
    pub rounds: u32,
    pub bytes_sent: u64,
    pub pages_sent: u64,
    /// Dirty pages found by the last round.
    pub dirty_pages: u64,
    pub total_ms: u64,
    /// From pausing the vCPUs here to the destination's RUNNING: how long the guest stood
    /// still.
    pub downtime_ms: u64,
    /// From pausing the vCPUs here to the last byte sent (what QEMU reports as its downtime,
    /// which leaves out the destination's loading of the state).
    pub downtime_source_ms: u64,
    pub error: Option<String>,
}

pub type SharedProgress = Arc<Mutex<Progress>>;

#[derive(Serialize, Deserialize)]
struct Hello {
    host: HostInfo,
    config: VmConfig,
    /// The VM was paused when the migration began: it stays paused on the destination.
    paused: bool,
}

fn frame_checksum(kind: u32, payload: &[u8]) -> u64 {
    let mut d = crate::checksum::Digest::default();
    d.write(&kind.to_le_bytes());
    d.write(&(payload.len() as u64).to_le_bytes());
    d.write(payload);
    d.sum64()
}

fn write_frame(w: &mut impl Write, kind: u32, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&kind.to_le_bytes())?;
    w.write_all(&(payload.len() as u64).to_le_bytes())?;
    w.write_all(payload)?;
    w.write_all(&frame_checksum(kind, payload).to_le_bytes())
}

/// Reads one frame whose payload may be at most `max(kind)` bytes.
fn read_frame(
    r: &mut impl Read,
    max: impl Fn(u32) -> Option<u64>,
) -> Result<(u32, Vec<u8>), MigrationError> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head)?;
    let kind = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let mut l = [0u8; 8];
    l.copy_from_slice(&head[4..12]);
    let len = u64::from_le_bytes(l);
    let Some(limit) = max(kind) else {
        return Err(MigrationError::Protocol(format!(
            "unexpected frame kind {kind}"
        )));
    };
    if len > limit {
        return Err(MigrationError::Protocol(format!(
            "frame kind {kind} of {len} bytes (at most {limit})"
        )));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    let mut c = [0u8; 8];
    r.read_exact(&mut c)?;
    if u64::from_le_bytes(c) != frame_checksum(kind, &payload) {
        return Err(MigrationError::Protocol(format!(
            "frame kind {kind}: checksum mismatch"
        )));
    }
    Ok((kind, payload))
}

/// Sends pages in frames of at most PAGES_PER_FRAME.
struct PageSender<'a, W: Write> {
    w: &'a mut W,
    buf: Vec<u8>,
    pages: u64,
    bytes: u64,
}

impl<W: Write> PageSender<'_, W> {
    fn push(&mut self, gpa: u64, page: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(&gpa.to_le_bytes());
        self.buf.extend_from_slice(page);
        self.pages += 1;
        if self.buf.len() >= PAGES_PER_FRAME * PAGE_ENTRY {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            write_frame(self.w, PAGES, &self.buf)?;
            self.bytes += self.buf.len() as u64 + 20;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Every page of guest memory that is not all zero (the destination starts from zeros).
fn send_all<W: Write>(
    mem: &GuestMemoryMmap,
    backed: &crate::memory::Backed,
    s: &mut PageSender<'_, W>,
) -> std::io::Result<()> {
    // Offsets in the "file" for_each_chunk walks are region offsets laid end to end.
    let regions: Vec<(u64, u64, u64)> = {
        let mut off = 0;
        mem.iter()
            .map(|r| {
                let e = (off, r.start_addr().0, r.len());
                off += r.len();
                e
            })
            .collect()
    };
    snapshot::for_each_chunk(mem, backed, |off, bytes| {
        let Some(&(roff, gpa, _)) = regions
            .iter()
            .find(|(roff, _, len)| off >= *roff && off < roff + len)
        else {
            return Err(std::io::Error::other("offset outside guest memory"));
        };
        for (i, page) in bytes.chunks(PAGE_SIZE).enumerate() {
            if !is_zero_page(page) {
                s.push(gpa + (off - roff) + (i * PAGE_SIZE) as u64, page)?;
            }
        }
        Ok(())
    })?;
    s.flush()
}

/// The pages written since the last call, by the vCPUs (KVM's log) or the devices (the
/// bitmap), as guest addresses; reading clears both.
fn take_dirty(m: &MachineAccess) -> Result<Vec<u64>, MigrationError> {
    let mut out = Vec::new();
    for (slot, region) in m.mem.iter().enumerate() {
        let len = region.len() as usize;
        let kvm =
            m.vm.dirty_log(slot as u32, len)
                .map_err(|e| MigrationError::Source(e.to_string()))?;
        let mmap: &vm_memory::MmapRegion<_> = region;
        let dev = mmap.bitmap().get_and_reset();
        let pages = len / PAGE_SIZE;
        for (w, word) in kvm.iter().enumerate() {
            let mut bits = word | dev.get(w).copied().unwrap_or(0);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let page = w * 64 + b;
                if page < pages {
                    out.push(region.start_addr().0 + (page * PAGE_SIZE) as u64);
                }
            }
        }
    }
    Ok(out)
}

fn send_pages<W: Write>(
    mem: &GuestMemoryMmap,
    gpas: &[u64],
    s: &mut PageSender<'_, W>,
) -> std::io::Result<()> {
    let mut page = vec![0u8; PAGE_SIZE];
    for &gpa in gpas {
        mem.read_slice(&mut page, GuestAddress(gpa))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        s.push(gpa, &page)?;
    }
    s.flush()
}

/// Migrates the running machine to `destination`. On success the destination runs the
/// guest; this machine stays paused with its I/O thread frozen (the returned guard) and the
/// caller stops it. On failure the guest runs here again (if it was running) and the error
/// says why.
pub fn migrate(
    m: &MachineAccess,
    destination: &str,
    downtime_ms: u64,
    progress: &SharedProgress,
) -> Result<IoFreeze, MigrationError> {
    let t0 = Instant::now();
    {
        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
        *p = Progress {
            state: "active".into(),
            destination: destination.into(),
            ..Default::default()
        };
    }
    let was_paused = m.control.pause_requested();
    let mut paused_here = false;
    let result = migrate_inner(m, destination, downtime_ms, progress, t0, &mut paused_here);
    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
    p.total_ms = t0.elapsed().as_millis() as u64;
    match &result {
        Ok(_) => p.state = "completed".into(),
        Err(e) => {
            p.state = "failed".into();
            p.error = Some(e.to_string());
            if let Err(e) = m.vm.set_dirty_logging(&m.mem, false) {
                tracing::warn!("cannot turn dirty logging off: {e}");
            }
            if paused_here && !was_paused {
                m.control.resume();
            }
        }
    }
    result
}

fn migrate_inner(
    m: &MachineAccess,
    destination: &str,
    downtime_ms: u64,
    progress: &SharedProgress,
    t0: Instant,
    paused_here: &mut bool,
) -> Result<IoFreeze, MigrationError> {
    let update =
        |f: &dyn Fn(&mut Progress)| f(&mut progress.lock().unwrap_or_else(|e| e.into_inner()));
    m.warm_up_save();
    let addr = destination
        .to_socket_addrs()
        .map_err(|e| MigrationError::Connect(destination.into(), e.to_string()))?
        .next()
        .ok_or_else(|| MigrationError::Connect(destination.into(), "no address".into()))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| MigrationError::Connect(destination.into(), e.to_string()))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(PEER_TIMEOUT))?;
    stream.set_write_timeout(Some(PEER_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = BufWriter::with_capacity(1 << 20, stream);

    let hello = Hello {
        host: m.host.clone(),
        config: m.config.clone(),
        paused: m.control.pause_requested(),
    };
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    write_frame(
        &mut w,
        HELLO,
        &serde_json::to_vec(&hello).map_err(std::io::Error::other)?,
    )?;
    w.flush()?;
    expect_reply(&mut reader, ACK)?;

    m.vm.set_dirty_logging(&m.mem, true)
        .map_err(|e| MigrationError::Source(format!("cannot log dirty pages: {e}")))?;
    // Start both logs from now: what was written before is in the full pass below.
    take_dirty(m)?;

    let mut sender = PageSender {
        w: &mut w,
        buf: Vec::with_capacity(PAGES_PER_FRAME * PAGE_ENTRY),
        pages: 0,
        bytes: 0,
    };
    let pass = Instant::now();
    send_all(&m.mem, &m.backed, &mut sender)?;
    sync(sender.w, &mut reader)?;
    let mut rate = sender.bytes as f64 / pass.elapsed().as_secs_f64().max(1e-6);
    update(&|p| {
        p.rounds = 1;
        p.bytes_sent = sender.bytes;
        p.pages_sent = sender.pages;
    });

    let mut pending;
    let mut round = 1;
    let mut previous = usize::MAX;
    loop {
        pending = take_dirty(m)?;
        let bytes = (pending.len() * PAGE_ENTRY) as f64;
        let estimate_ms = bytes / rate * 1000.0;
        let n = pending.len() as u64;
        update(&|p| p.dirty_pages = n);
        // Half the downtime budget goes to the last pages, the other half to the machine
        // state and to starting the vCPUs on the destination. Within the budget, rounds go
        // on while they still shrink the dirty set by a quarter: each is shorter than the one
        // before, so fewer pages are dirtied during it, and the pages left for the stop are
        // as few as the guest's writing allows (in the lab an idle Debian guest's last set
        // went from ~250 pages after one round to a few dozen).
        let fits = estimate_ms <= downtime_ms as f64 / 2.0;
        let shrinking = pending.len() > MIN_FINAL_PAGES
            && pending.len().saturating_mul(4) < previous.saturating_mul(3);
        if (fits && !shrinking) || round > MAX_ROUNDS {
            break;
        }
        previous = pending.len();
        let start = Instant::now();
        let before = sender.bytes;
        send_pages(&m.mem, &pending, &mut sender)?;
        // The rate counts until the destination has the pages in place: a destination that
        // lags behind would otherwise work off its backlog during the downtime.
        sync(sender.w, &mut reader)?;
        rate = (sender.bytes - before) as f64 / start.elapsed().as_secs_f64().max(1e-6);
        round += 1;
        update(&|p| {
            p.rounds = round;
            p.bytes_sent = sender.bytes;
            p.pages_sent = sender.pages;
        });
    }

    // Stop and copy. The I/O thread is asked to stop first and the vCPUs are paused while it
    // does: vCPUs never wait on a device, so the order does not matter to the guest, and the
    // two waits overlap.
    let stop = Instant::now();
    let lap = |what: &str| tracing::debug!("stop-and-copy: {what} at {:?}", stop.elapsed());
    let pending_freeze =
        m.io.request_freeze()
            .map_err(|e| MigrationError::Source(e.to_string()))?;
    let kick = m.kick_vcpus.clone();
    if !m.control.pause_requested() {
        *paused_here = true;
        if !m.control.pause(m.vcpus.len(), || kick()) {
            return Err(MigrationError::Source("the VM stopped".into()));
        }
    }
    lap("paused");
    let frozen = pending_freeze
        .wait()
        .map_err(|e| MigrationError::Source(e.to_string()))?;
    lap("I/O frozen");
    let mut last = take_dirty(m)?;
    last.extend_from_slice(&pending);
    last.sort_unstable();
    last.dedup();
    lap("dirty log read");
    send_pages(&m.mem, &last, &mut sender)?;
    lap("last pages sent");
    let state = m
        .save_state()
        .map_err(|e| MigrationError::Source(e.to_string()))?;
    lap("state saved");
    let encoded =
        snapshot::encode_state(&state).map_err(|e| MigrationError::Source(e.to_string()))?;
    let (pages, bytes) = (sender.pages, sender.bytes + encoded.len() as u64);
    write_frame(&mut w, STATE, &encoded)?;
    w.flush()?;
    lap("state sent");
    let sent = stop.elapsed().as_millis() as u64;
    expect_reply(&mut reader, RUNNING)?;
    lap("destination running");
    let downtime = stop.elapsed().as_millis() as u64;
    update(&|p| {
        p.rounds = round;
        p.pages_sent = pages;
        p.bytes_sent = bytes;
        p.dirty_pages = last.len() as u64;
        p.downtime_ms = downtime;
        p.downtime_source_ms = sent;
        p.total_ms = t0.elapsed().as_millis() as u64;
    });
    Ok(frozen)
}

/// Waits until the destination has consumed everything sent so far.
fn sync(w: &mut impl Write, r: &mut impl Read) -> Result<(), MigrationError> {
    write_frame(w, SYNC, &[])?;
    w.flush()?;
    expect_reply(r, SYNCED)
}

fn expect_reply(r: &mut impl Read, want: u32) -> Result<(), MigrationError> {
    let (kind, payload) = read_frame(r, |k| match k {
        ACK | RUNNING | SYNCED => Some(0),
        ERROR => Some(MAX_ERROR),
        _ => None,
    })?;
    match kind {
        ERROR => Err(MigrationError::Refused(
            String::from_utf8_lossy(&payload).into_owned(),
        )),
        k if k == want => Ok(()),
        k => Err(MigrationError::Protocol(format!(
            "reply {k} where {want} was due"
        ))),
    }
}

/// What the destination's operator allows a source to bring.
#[derive(Debug, Clone, Default)]
pub struct IncomingOptions {
    /// The console here (default stdout): never the source's, which could name any file.
    pub serial: Option<SerialConfig>,
    /// The VM's configuration as known here. The source's configuration names host files,
    /// TAPs and sockets that this VMM would open: they must be exactly the ones given here,
    /// and a source that names any is refused when none is given.
    pub local: Option<VmConfig>,
}

/// The host resources a configuration makes the VMM open, for comparison: each drive's file
/// and whether it is read-only, each TAP, the vsock CID and socket.
#[derive(Debug, PartialEq, Eq, Serialize)]
struct Backends {
    drives: Vec<(std::path::PathBuf, bool)>,
    net: Vec<String>,
    vsock: Option<(u64, std::path::PathBuf)>,
}

impl std::fmt::Display for Backends {
    /// As JSON on one line, in the refusal a user reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

fn backends(c: &VmConfig) -> Backends {
    Backends {
        drives: c
            .drives
            .iter()
            .map(|d| (d.path.clone(), d.read_only))
            .collect(),
        net: c.net.iter().map(|n| n.tap.clone()).collect(),
        vsock: c.vsock.as_ref().map(|v| (v.guest_cid, v.uds_path.clone())),
    }
}

/// Checks the source's configuration against what the destination allows.
fn check_allowed(source: &VmConfig, local: Option<&VmConfig>) -> Result<(), MigrationError> {
    let theirs = backends(source);
    let none = backends(&VmConfig::new(Default::default()));
    match local {
        None if theirs != none => Err(MigrationError::Protocol(
            "the source's VM has drives, TAPs or vsock sockets: give the destination the VM's \
             configuration (--config) so that it knows which it may open"
                .into(),
        )),
        Some(l) if backends(l) != theirs => Err(MigrationError::Protocol(format!(
            "the source's devices {theirs} are not the ones --config allows here {}",
            backends(l)
        ))),
        _ => Ok(()),
    }
}

/// Waits on `listen` for one migration, then runs the migrated machine to its end.
pub fn incoming(listen: &str, inc: IncomingOptions, opts: RunOptions) -> Result<RunReport, Error> {
    let listener = TcpListener::bind(listen).map_err(|source| MigrationError::Listen {
        addr: listen.to_string(),
        source,
    })?;
    // The machine's shell is made while no source has called yet.
    let shell = Shell::create(Vm::open_kvm()?)?;
    snapshot::warm_up(&shell);
    let (stream, peer) = listener.accept().map_err(|source| MigrationError::Accept {
        addr: listen.to_string(),
        source,
    })?;
    drop(listener);
    tracing::debug!("migration from {peer}");
    stream
        .set_read_timeout(Some(PEER_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(PEER_TIMEOUT)))
        .and_then(|_| stream.set_nodelay(true))
        .map_err(MigrationError::Connection)?;
    let mut writer = stream.try_clone().map_err(MigrationError::Connection)?;
    let mut r = BufReader::with_capacity(1 << 20, stream);
    match receive(&mut r, &mut writer, inc, shell) {
        Ok((parts, paused)) => {
            let on_started: machine::OnStarted = Box::new(move || {
                write_frame(&mut writer, RUNNING, &[])
                    .and_then(|_| writer.flush())
                    .map_err(|e| MigrationError::Running(e).into())
            });
            let start = if paused {
                Launch::Paused
            } else {
                Launch::Running
            };
            machine::launch(parts, opts, start, Some(on_started))
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = write_frame(
                &mut writer,
                ERROR,
                &msg.as_bytes()[..msg.len().min(MAX_ERROR as usize)],
            );
            Err(e.into())
        }
    }
}

/// Reads the whole stream up to the machine state and builds the machine from it.
fn receive(
    r: &mut impl Read,
    w: &mut impl Write,
    inc: IncomingOptions,
    shell: Shell,
) -> Result<(machine::Parts, bool), MigrationError> {
    let proto = |s: String| MigrationError::Protocol(s);
    let mut head = [0u8; 12];
    r.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(proto("not a vireo migration stream".into()));
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != VERSION {
        return Err(proto(format!(
            "protocol version {version}, this vireo-vmm speaks version {VERSION}"
        )));
    }
    let (_, payload) = read_frame(r, |k| (k == HELLO).then_some(MAX_HELLO))?;
    let hello: Hello =
        serde_json::from_slice(&payload).map_err(|e| proto(format!("hello: {e}")))?;
    let kvm = shell.kvm();
    snapshot::check_on_shell(&shell, &hello.host, &hello.config)
        .map_err(|e| MigrationError::Source(e.to_string()))?;
    let hello_host = hello.host.clone();
    let paused = hello.paused;
    let mut config = hello.config;
    let host_mib = host_memory_mib().map_err(|e| MigrationError::Source(e.to_string()))?;
    config
        .check_limits(kvm.get_max_vcpus() as u64, host_mib)
        .map_err(|e| MigrationError::Source(e.to_string()))?;
    check_allowed(&config, inc.local.as_ref())?;
    // The TAPs are the ones allowed (same names, same order): where the local configuration
    // hands one over as an inherited fd (vireod opens it inside a VPC's network namespace),
    // that fd is used instead of opening the name here.
    if let Some(local) = &inc.local {
        for (n, l) in config.net.iter_mut().zip(&local.net) {
            n.tap_fd = l.tap_fd;
        }
    }
    config.serial = inc.serial.unwrap_or_default();
    let parts = machine::build(shell, &config, MemorySource::Anonymous)
        .map_err(|e| MigrationError::Source(e.to_string()))?;
    let mem = parts.mem.clone();
    // Tell the source to go on only once the machine exists here.
    write_frame(w, ACK, &[])?;
    w.flush()?;
    let max_pages = (PAGES_PER_FRAME * PAGE_ENTRY) as u64;
    let max_state = snapshot::MAX_STATE_LEN;
    loop {
        let (kind, payload) = read_frame(r, |k| match k {
            PAGES => Some(max_pages),
            STATE => Some(max_state),
            SYNC => Some(0),
            _ => None,
        })?;
        if kind == SYNC {
            write_frame(w, SYNCED, &[])?;
            w.flush()?;
            continue;
        }
        if kind == PAGES {
            if payload.len() % PAGE_ENTRY != 0 {
                return Err(proto("a page frame that is not whole pages".into()));
            }
            for entry in payload.chunks(PAGE_ENTRY) {
                let mut a = [0u8; 8];
                a.copy_from_slice(&entry[..8]);
                let gpa = u64::from_le_bytes(a);
                if gpa % PAGE_SIZE as u64 != 0 || !page_in_ram(&mem, gpa) {
                    return Err(proto(format!("page address {gpa:#x} outside guest RAM")));
                }
                mem.write_slice(&entry[8..], GuestAddress(gpa))
                    .map_err(|e| proto(format!("page {gpa:#x}: {e}")))?;
            }
            continue;
        }
        let t = Instant::now();
        let mut state =
            snapshot::decode_state(&payload).map_err(|e| proto(format!("state: {e}")))?;
        tracing::debug!("state parsed in {:?}", t.elapsed());
        state.config.serial = parts.config.serial.clone();
        if state.config.vcpus != parts.config.vcpus
            || state.config.memory_mib != parts.config.memory_mib
        {
            return Err(proto(
                "the state's machine differs from the announced one".into(),
            ));
        }
        snapshot::check_consistent(&state).map_err(|e| proto(e.to_string()))?;
        // The host was checked at HELLO; the state must come from that host.
        if state.host != hello_host {
            return Err(proto(
                "the state's host differs from the announced one".into(),
            ));
        }
        snapshot::apply_state(&parts, &state).map_err(|e| MigrationError::Source(e.to_string()))?;
        tracing::debug!("state applied {:?} after it arrived", t.elapsed());
        return Ok((parts, paused));
    }
}

fn page_in_ram(mem: &GuestMemoryMmap, gpa: u64) -> bool {
    mem.iter().any(|r| {
        let start = r.start_addr().0;
        gpa >= start
            && gpa
                .checked_add(PAGE_SIZE as u64)
                .is_some_and(|end| end <= start + r.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_devices() -> VmConfig {
        let mut c = VmConfig::new("/k".into());
        c.drives
            .push(crate::config::DriveConfig::parse("path=/d/root.img,ro").unwrap());
        c.net
            .push(crate::config::NetConfig::parse("tap=tap0").unwrap());
        c.vsock = Some(crate::config::VsockConfig::parse("cid=3,uds=/d/v.sock").unwrap());
        c
    }

    #[test]
    fn a_source_with_devices_needs_a_local_config_that_names_the_same() {
        let source = config_with_devices();
        assert!(check_allowed(&VmConfig::new("/other".into()), None).is_ok());
        assert!(check_allowed(&source, Some(&source)).is_ok());
        let e = check_allowed(&source, None).unwrap_err().to_string();
        assert!(
            e.contains("give the destination the VM's configuration (--config)"),
            "{e}"
        );
        let mut local = source.clone();
        local.drives[0].read_only = false;
        assert_eq!(
            check_allowed(&source, Some(&local))
                .unwrap_err()
                .to_string(),
            "protocol error: the source's devices \
             {\"drives\":[[\"/d/root.img\",true]],\"net\":[\"tap0\"],\"vsock\":[3,\"/d/v.sock\"]} \
             are not the ones --config allows here \
             {\"drives\":[[\"/d/root.img\",false]],\"net\":[\"tap0\"],\"vsock\":[3,\"/d/v.sock\"]}"
        );
        // Without devices the line reads as it did with json!: empty lists and null.
        assert_eq!(
            backends(&VmConfig::new("/k".into())).to_string(),
            r#"{"drives":[],"net":[],"vsock":null}"#
        );
    }
}
