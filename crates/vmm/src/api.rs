//! The VMM's control API: HTTP/1.1 with JSON bodies on a Unix socket (docs/api.md), served
//! by one thread and a thread per connection.
//!
//! | request | effect |
//! |---|---|
//! | `GET /vm` | state, vCPUs, memory |
//! | `PUT /vm/pause`, `PUT /vm/resume` | stop / restart every vCPU (devices keep running) |
//! | `PUT /vm/stop` | end the VM now (the process exits with status 0) |
//! | `PUT /vm/shutdown` | press Ctrl-Alt-Del on the guest's keyboard (a graceful shutdown) |
//! | `GET /balloon` | the balloon's target, actual size and the guest's statistics |
//! | `PATCH /balloon` `{"target_mib": N}` | ask the guest to give back N MiB |
//! | `GET /drives/{i}`, `PATCH /drives/{i}` `{"rate_limiter": {"ops": B, "bytes": B}}` | drive i's limits |
//! | `GET /net/{i}`, `PATCH /net/{i}` `{"rx_rate_limiter": L, "tx_rate_limiter": L}` | net device i's limits |
//! | `GET /metrics` | Prometheus text: vCPU time and steal, VM exits, memory, drives, net (docs/api.md) |
//! | `PUT /vm/snapshot` `{"path": DIR}` | write a snapshot of the paused VM to DIR |
//! | `PUT /vm/migrate` `{"destination": "HOST:PORT", "downtime_ms": N}` | live-migrate |
//! | `GET /vm/migrate` | the migration's progress |
//! | `PUT /vm/snapshot/load` `{"path": DIR, "resume": B, "verify_memory": B}` | start from a snapshot (only a VMM started with nothing but `--api-sock`: [`restore_from_api`]) |
//!
//! The bodies are the types of `vireo_vmm_api`, the contract vireod and the tests use too.
//! A request is first parsed into an [`Action`] by [`parse`] (a pure function: the method,
//! path and body decide everything that needs no machine), then carried out on the machine's
//! [`MachineHandle`], whose refusals become the answer's status. The engine knows nothing of
//! this module: the binary gives it an [`HttpApi`] ([`ControlServer`]) to serve a machine.
//!
//! Requests are bounded (64 KiB of headers and body); anything malformed gets a 400 with a
//! JSON `{"error": "..."}` and changes nothing.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use vireo_vmm_api::{
    self as wire, BalloonTarget, DriveLimits, ErrorBody, LoadRequest, MigrateRequest, NetLimits,
    RateLimiter, SnapshotRequest, VmInfo, VmState,
};

use crate::config::SerialConfig;
use crate::handle::{ControlError, ControlServer, MachineHandle, ServeError};
use crate::machine::{Error, RunOptions, RunReport};
use crate::snapshot::{RestoreOptions, SnapshotError, SnapshotLoader};

const MAX_REQUEST: usize = 64 * 1024;
/// Connections served at once; each has its own thread (a migration's PUT lasts while
/// GET /vm/migrate is asked).
const MAX_CONNECTIONS: usize = 8;

/// What a request asks of a running machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Info,
    Pause,
    Resume,
    Stop,
    Shutdown,
    Balloon,
    SetBalloon(BalloonTarget),
    DriveLimits(usize),
    SetDriveLimits(usize, DriveLimits),
    NetLimits(usize),
    SetNetLimits(usize, NetLimits),
    Metrics,
    Snapshot(SnapshotRequest),
    /// `PUT /vm/migrate`, the downtime defaulted and checked.
    Migrate {
        destination: String,
        downtime_ms: u64,
    },
    Migration,
}

/// A request refused before anything was done: the answer's status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The resources of a running VMM without an index; another method on one of them is a 405.
const RESOURCES: [&str; 9] = [
    "/vm",
    "/vm/pause",
    "/vm/resume",
    "/vm/stop",
    "/vm/shutdown",
    "/vm/snapshot",
    "/vm/migrate",
    "/balloon",
    "/metrics",
];

/// Parses a request to a running VMM.
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<Action, Refusal> {
    Ok(match (method, path) {
        ("GET", "/vm") => Action::Info,
        ("PUT", "/vm/pause") => Action::Pause,
        ("PUT", "/vm/resume") => Action::Resume,
        ("PUT", "/vm/stop") => Action::Stop,
        ("PUT", "/vm/shutdown") => Action::Shutdown,
        ("GET", "/balloon") => Action::Balloon,
        ("PATCH", "/balloon") => Action::SetBalloon(
            serde_json::from_slice(body)
                .map_err(|_| Refusal::new(400, "body must be {\"target_mib\": N}"))?,
        ),
        ("PUT", "/vm/snapshot") => match serde_json::from_slice::<SnapshotRequest>(body) {
            Ok(r) if !r.path.as_os_str().is_empty() => Action::Snapshot(r),
            _ => return Err(Refusal::new(400, "body must be {\"path\": \"DIR\"}")),
        },
        ("PUT", "/vm/migrate") => {
            let r: MigrateRequest = serde_json::from_slice(body).map_err(|e| {
                Refusal::new(
                    400,
                    format!(
                        "body must be {{\"destination\": \"HOST:PORT\", \"downtime_ms\": N}}: {e}"
                    ),
                )
            })?;
            let downtime_ms = r.downtime_ms.unwrap_or(wire::DEFAULT_DOWNTIME_MS);
            if !wire::DOWNTIME_MS_RANGE.contains(&downtime_ms) {
                return Err(Refusal::new(400, "downtime_ms must be 1 to 60000"));
            }
            Action::Migrate {
                destination: r.destination,
                downtime_ms,
            }
        }
        ("GET", "/vm/migrate") => Action::Migration,
        ("GET", "/metrics") => Action::Metrics,
        (_, p) if p.starts_with("/drives/") || p.starts_with("/net/") => {
            return parse_limits(method, path, body)
        }
        (_, p) if RESOURCES.contains(&p) => {
            return Err(Refusal::new(
                405,
                format!("{method} is not allowed on {path}"),
            ))
        }
        _ => return Err(Refusal::new(404, format!("no such resource: {path}"))),
    })
}

/// `/drives/{i}` and `/net/{i}`: read or change a device's rate limits.
fn parse_limits(method: &str, path: &str, body: &[u8]) -> Result<Action, Refusal> {
    let (drive, index) = match (path.strip_prefix("/drives/"), path.strip_prefix("/net/")) {
        (Some(i), _) => (true, i),
        (_, Some(i)) => (false, i),
        _ => return Err(Refusal::new(404, format!("no such resource: {path}"))),
    };
    let Ok(index) = index.parse::<usize>() else {
        return Err(Refusal::new(404, format!("no such device: {path}")));
    };
    match method {
        "GET" if drive => Ok(Action::DriveLimits(index)),
        "GET" => Ok(Action::NetLimits(index)),
        "PATCH" => {
            let bad = |e: serde_json::Error| Refusal::new(400, format!("bad limits: {e}"));
            // Every field is checked before any is applied.
            if drive {
                let l: DriveLimits = serde_json::from_slice(body).map_err(bad)?;
                check_buckets("rate_limiter", &l.rate_limiter)?;
                Ok(Action::SetDriveLimits(index, l))
            } else {
                let l: NetLimits = serde_json::from_slice(body).map_err(bad)?;
                check_buckets("rx_rate_limiter", &l.rx_rate_limiter)?;
                check_buckets("tx_rate_limiter", &l.tx_rate_limiter)?;
                Ok(Action::SetNetLimits(index, l))
            }
        }
        _ => Err(Refusal::new(
            405,
            format!("{method} is not allowed on {path}"),
        )),
    }
}

/// A bucket that never fills would stop the device for good: refused.
fn check_buckets(key: &str, limiter: &Option<RateLimiter>) -> Result<(), Refusal> {
    let zero = limiter
        .iter()
        .flat_map(|l| [l.ops, l.bytes])
        .flatten()
        .any(|b| b.size == 0 || b.refill_time_ms == 0);
    if zero {
        return Err(Refusal::new(
            400,
            format!("{key}: size and refill_time_ms must be positive (null: unlimited)"),
        ));
    }
    Ok(())
}

/// What a request asks of a VMM that has no VM yet ([`restore_from_api`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preload {
    Info,
    Load(LoadRequest),
}

/// Parses a request to a VMM that waits for a snapshot to load.
pub fn parse_preload(method: &str, path: &str, body: &[u8]) -> Result<Preload, Refusal> {
    match (method, path) {
        ("GET", "/vm") => Ok(Preload::Info),
        ("PUT", "/vm/snapshot/load") => serde_json::from_slice(body)
            .map(Preload::Load)
            .map_err(|e| Refusal::new(400, format!("bad snapshot load request: {e}"))),
        (_, "/vm/snapshot/load") => {
            Err(Refusal::new(405, "PUT /vm/snapshot/load loads a snapshot"))
        }
        _ => Err(Refusal::new(
            400,
            "no VM yet: load a snapshot first (PUT /vm/snapshot/load {\"path\": DIR})",
        )),
    }
}

/// An answer to write.
struct Response {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn json(code: u16, v: &impl Serialize) -> Self {
        Self {
            code,
            content_type: "application/json",
            body: serde_json::to_string(v).expect("answers always serialize"),
        }
    }
    fn error(code: u16, msg: impl Into<String>) -> Self {
        Self::json(code, &ErrorBody { error: msg.into() })
    }
    fn no_content() -> Self {
        Self {
            code: 204,
            content_type: "application/json",
            body: String::new(),
        }
    }
    fn from_result<T: Serialize>(r: Result<T, ControlError>) -> Self {
        match r {
            Ok(v) => Self::json(200, &v),
            Err(e) => Self::refused(e),
        }
    }
    fn done(r: Result<(), ControlError>) -> Self {
        match r {
            Ok(()) => Self::no_content(),
            Err(e) => Self::refused(e),
        }
    }
    fn refused(e: ControlError) -> Self {
        let code = match &e {
            ControlError::Stopped
            | ControlError::Paused
            | ControlError::MigrationBusy(_)
            | ControlError::Snapshot(SnapshotError::NotPaused) => 409,
            ControlError::NoBalloon | ControlError::NoKeyboard | ControlError::NoDevice => 404,
            ControlError::BalloonTooLarge { .. } => 400,
            ControlError::Snapshot(_) => 500,
            ControlError::Migration(_) => 502,
        };
        Self::error(code, e.to_string())
    }
}

/// Carries out `action` on the machine.
fn carry_out(m: &MachineHandle, action: Action) -> Response {
    let no_device = |kind: &str, i: usize, e: ControlError| match e {
        ControlError::NoDevice => Response::error(404, format!("no such device: /{kind}/{i}")),
        e => Response::refused(e),
    };
    match action {
        Action::Info => Response::json(200, &m.info()),
        Action::Pause => Response::done(m.pause()),
        Action::Resume => {
            m.resume();
            Response::no_content()
        }
        Action::Stop => {
            m.stop();
            Response::no_content()
        }
        Action::Shutdown => Response::done(m.shutdown()),
        Action::Balloon => Response::from_result(m.balloon()),
        Action::SetBalloon(t) => Response::done(m.set_balloon_target(t.target_mib)),
        Action::DriveLimits(i) => m
            .drive_limits(i)
            .map_or_else(|e| no_device("drives", i, e), |l| Response::json(200, &l)),
        Action::SetDriveLimits(i, l) => m
            .set_drive_limits(i, &l)
            .map_or_else(|e| no_device("drives", i, e), |()| Response::no_content()),
        Action::NetLimits(i) => m
            .net_limits(i)
            .map_or_else(|e| no_device("net", i, e), |l| Response::json(200, &l)),
        Action::SetNetLimits(i, l) => m
            .set_net_limits(i, &l)
            .map_or_else(|e| no_device("net", i, e), |()| Response::no_content()),
        Action::Metrics => Response {
            code: 200,
            content_type: wire::METRICS_CONTENT_TYPE,
            body: m.metrics(),
        },
        Action::Snapshot(r) => Response::from_result(m.snapshot(&r.path)),
        Action::Migrate {
            destination,
            downtime_ms,
        } => Response::from_result(m.migrate(&destination, downtime_ms)),
        Action::Migration => Response::json(200, &m.migration()),
    }
}

/// Binds the API socket `path`. A stale socket file (nothing listening) is replaced; a live
/// one is an error.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// The HTTP API as a machine's [`ControlServer`]: serves on `path` until the machine stops,
/// then removes the socket file.
#[derive(Debug)]
pub struct HttpApi {
    path: PathBuf,
    /// Already bound (by the API that loaded a snapshot): served without a moment in which
    /// the socket does not answer.
    listener: Option<Arc<UnixListener>>,
}

impl HttpApi {
    /// Binds `path` when the machine runs.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            listener: None,
        }
    }

    /// Serves `listener`, bound to `path`.
    pub fn on_listener(listener: UnixListener, path: PathBuf) -> Self {
        Self {
            path,
            listener: Some(Arc::new(listener)),
        }
    }
}

impl ControlServer for HttpApi {
    fn serve(&self, machine: MachineHandle) -> Result<JoinHandle<()>, ServeError> {
        let fail = |source: std::io::Error| ServeError::Start {
            socket: self.path.clone(),
            source,
        };
        let listener = match &self.listener {
            Some(l) => l.clone(),
            None => Arc::new(bind(&self.path).map_err(fail)?),
        };
        listener.set_nonblocking(true).map_err(fail)?;
        let server = Arc::new(Server {
            machine,
            connections: Arc::new(AtomicUsize::new(0)),
        });
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                server.serve(&listener);
                let _ = std::fs::remove_file(&path);
            })
            .map_err(fail)
    }
}

struct Server {
    machine: MachineHandle,
    /// Connections being served, at most MAX_CONNECTIONS at once.
    connections: Arc<AtomicUsize>,
}

impl Server {
    fn serve(self: &Arc<Self>, listener: &UnixListener) {
        while !self.machine.should_stop() {
            let mut pfd = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, 200) };
            if n <= 0 {
                continue;
            }
            match listener.accept() {
                Ok((mut stream, _)) => {
                    if self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        self.connections.fetch_sub(1, Ordering::SeqCst);
                        let _ = write_response(
                            &mut stream,
                            &Response::error(503, "too many API connections"),
                        );
                        continue;
                    }
                    let server = self.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("api-conn".into())
                            .spawn(move || {
                                if let Err(e) = server.serve_connection(stream) {
                                    tracing::debug!("api connection: {e}");
                                }
                                // Counted out only once this thread no longer holds the machine.
                                let connections = server.connections.clone();
                                drop(server);
                                connections.fetch_sub(1, Ordering::SeqCst);
                            });
                    if let Err(e) = spawned {
                        self.connections.fetch_sub(1, Ordering::SeqCst);
                        tracing::warn!("api: cannot start a connection thread: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => tracing::warn!("api accept: {e}"),
            }
        }
        // Connection threads hold the machine (its memory among it): let them finish before
        // the machine is torn down. A client that keeps a connection open is not waited for
        // long (its reads time out after 5 s).
        let deadline = std::time::Instant::now() + Duration::from_secs(6);
        while self.connections.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn serve_connection(&self, mut stream: UnixStream) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = Vec::with_capacity(4096);
        loop {
            let (request, used) = match read_request(&mut stream, &mut buf)? {
                Some(r) => r,
                None => return Ok(()),
            };
            match request {
                Ok((method, path, body)) => {
                    let response = match parse(&method, &path, &body) {
                        Ok(action) => carry_out(&self.machine, action),
                        Err(r) => Response::error(r.status, r.message),
                    };
                    let written = write_response(&mut stream, &response);
                    // A migration that succeeded ends the machine once its answer is out.
                    if self.machine.finish_migration() {
                        return written;
                    }
                    written?;
                }
                Err(msg) => {
                    // The stream cannot be resynchronised after a malformed request.
                    return write_response(&mut stream, &Response::error(400, msg));
                }
            }
            buf.drain(..used);
        }
    }
}

/// Serves the API on `socket` until a client loads a snapshot (`PUT /vm/snapshot/load`), then
/// runs that machine to its end, its API on the same socket. A snapshot that cannot be loaded
/// is refused to the client with the reason, leaves nothing behind, and the VMM waits on.
///
/// While it waits, the engine holds the machine's shell ready ([`SnapshotLoader`]), so that a
/// load does only what depends on the snapshot.
pub fn restore_from_api(
    socket: &Path,
    serial: Option<SerialConfig>,
    mut opts: RunOptions,
) -> Result<RunReport, Error> {
    // The shell first: a host without KVM fails before the socket exists.
    let mut loader = SnapshotLoader::new()?;
    let listener = bind(socket).map_err(|source| ServeError::Start {
        socket: socket.to_path_buf(),
        source,
    })?;
    let (prepared, requested) = serve_until_load(&listener, |req| {
        let requested = std::time::Instant::now();
        let ropts = RestoreOptions {
            dir: req.path,
            resume: req.resume,
            verify_memory: req.verify_memory,
            serial: serial.clone(),
        };
        loader
            .load(&ropts)
            .map(|p| (p, requested))
            .map_err(|e| e.to_string())
    })
    .map_err(|source| ServeError::Failed {
        socket: socket.to_path_buf(),
        source,
    })?;
    opts.control = Some(Arc::new(HttpApi::on_listener(
        listener,
        socket.to_path_buf(),
    )));
    opts.restore_requested = Some(requested);
    prepared.run(opts)
}

/// The API of a VMM that has no VM yet: serves `listener` one connection at a time until a
/// `PUT /vm/snapshot/load` succeeds, and returns what `load` made of it. `load` builds the
/// machine; when it fails, the client gets a 400 with its message, nothing is kept, and the
/// VMM goes on waiting. `GET /vm` answers `{"state": "not-loaded"}`; anything else gets a
/// 400 that says a snapshot must be loaded first.
fn serve_until_load<T>(
    listener: &UnixListener,
    mut load: impl FnMut(LoadRequest) -> Result<T, String>,
) -> std::io::Result<T> {
    listener.set_nonblocking(false)?;
    loop {
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = Vec::with_capacity(4096);
        // A client that misbehaves costs only its own connection.
        while let Ok(Some((request, used))) = read_request(&mut stream, &mut buf) {
            let (method, path, body) = match request {
                Ok(r) => r,
                Err(msg) => {
                    let _ = write_response(&mut stream, &Response::error(400, msg));
                    break;
                }
            };
            buf.drain(..used);
            let response = match parse_preload(&method, &path, &body) {
                Ok(Preload::Info) => Response::json(
                    200,
                    &VmInfo {
                        memory_mib: None,
                        state: VmState::NotLoaded,
                        vcpus: None,
                    },
                ),
                Ok(Preload::Load(req)) => match load(req) {
                    Ok(loaded) => {
                        let _ = write_response(&mut stream, &Response::no_content());
                        return Ok(loaded);
                    }
                    Err(msg) => Response::error(400, msg),
                },
                Err(r) => Response::error(r.status, r.message),
            };
            if write_response(&mut stream, &response).is_err() {
                break;
            }
        }
    }
}

type Parsed = Result<(String, String, Vec<u8>), String>;

/// Reads one request into `buf`; returns it and how many bytes of `buf` it used, or None at
/// end of stream.
fn read_request(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(Parsed, usize)>> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(header_len)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| {
                        std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    });
                let len = match len {
                    None => 0,
                    Some(Some(n)) if header_len + n <= MAX_REQUEST => n,
                    Some(Some(_)) => return Ok(Some((Err("request too large".into()), buf.len()))),
                    Some(None) => return Ok(Some((Err("bad Content-Length".into()), buf.len()))),
                };
                while buf.len() < header_len + len {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Ok(None);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = buf[header_len..header_len + len].to_vec();
                return Ok(Some((Ok((method, path, body)), header_len + len)));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Ok(Some((Err(format!("malformed request: {e}")), buf.len()))),
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(Some((Err("request too large".into()), buf.len())));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn write_response(stream: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let reason = match r.code {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        r.code,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(r.body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::TokenBucket;

    fn refused(method: &str, path: &str, body: &str) -> Refusal {
        parse(method, path, body.as_bytes()).expect_err(&format!("{method} {path} {body}"))
    }

    #[test]
    fn requests_become_actions() {
        let p = |m: &str, path: &str, body: &str| parse(m, path, body.as_bytes()).unwrap();
        assert_eq!(p("GET", "/vm", ""), Action::Info);
        assert_eq!(p("PUT", "/vm/pause", ""), Action::Pause);
        assert_eq!(p("PUT", "/vm/resume", ""), Action::Resume);
        assert_eq!(p("PUT", "/vm/stop", ""), Action::Stop);
        assert_eq!(p("PUT", "/vm/shutdown", ""), Action::Shutdown);
        assert_eq!(p("GET", "/balloon", ""), Action::Balloon);
        assert_eq!(
            p("PATCH", "/balloon", r#"{"target_mib": 16}"#),
            Action::SetBalloon(BalloonTarget { target_mib: 16 })
        );
        assert_eq!(p("GET", "/metrics", ""), Action::Metrics);
        assert_eq!(p("GET", "/vm/migrate", ""), Action::Migration);
        assert_eq!(
            p("PUT", "/vm/snapshot", r#"{"path": "/s"}"#),
            Action::Snapshot(SnapshotRequest { path: "/s".into() })
        );
        assert_eq!(
            p("PUT", "/vm/migrate", r#"{"destination": "h:1"}"#),
            Action::Migrate {
                destination: "h:1".into(),
                downtime_ms: 50
            }
        );
        assert_eq!(
            p(
                "PUT",
                "/vm/migrate",
                r#"{"destination": "h:1", "downtime_ms": 60000}"#
            ),
            Action::Migrate {
                destination: "h:1".into(),
                downtime_ms: 60000
            }
        );
        assert_eq!(p("GET", "/drives/0", ""), Action::DriveLimits(0));
        assert_eq!(p("GET", "/net/3", ""), Action::NetLimits(3));
        let ops = TokenBucket {
            one_time_burst: 0,
            refill_time_ms: 1000,
            size: 500,
        };
        assert_eq!(
            p(
                "PATCH",
                "/drives/1",
                r#"{"rate_limiter": {"ops": {"size": 500, "refill_time_ms": 1000}}}"#
            ),
            Action::SetDriveLimits(
                1,
                DriveLimits {
                    rate_limiter: Some(RateLimiter {
                        bytes: None,
                        ops: Some(ops)
                    })
                }
            )
        );
        // `{}` lifts the limits; no field changes nothing.
        assert_eq!(
            p("PATCH", "/drives/0", r#"{"rate_limiter": {}}"#),
            Action::SetDriveLimits(
                0,
                DriveLimits {
                    rate_limiter: Some(RateLimiter::default())
                }
            )
        );
        assert_eq!(
            p("PATCH", "/net/0", r#"{"tx_rate_limiter": {"bytes": null}}"#),
            Action::SetNetLimits(
                0,
                NetLimits {
                    rx_rate_limiter: None,
                    tx_rate_limiter: Some(RateLimiter::default())
                }
            )
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_400() {
        for (method, path, body) in [
            ("PATCH", "/balloon", r#""x""#),
            ("PATCH", "/balloon", ""),
            ("PATCH", "/balloon", "{not json"),
            ("PATCH", "/balloon", r#"{"target_mib": -1}"#),
            ("PATCH", "/balloon", r#"{"target_mib": 1, "extra": 2}"#),
            ("PUT", "/vm/snapshot", r#"{"path": ""}"#),
            ("PUT", "/vm/snapshot", r#"{"dir": "/s"}"#),
            ("PUT", "/vm/snapshot", "[]"),
            ("PUT", "/vm/migrate", r#"{"downtime_ms": 5}"#),
            (
                "PUT",
                "/vm/migrate",
                r#"{"destination": "h:1", "speed": 5}"#,
            ),
            ("PATCH", "/drives/0", r#""x""#),
            (
                "PATCH",
                "/drives/0",
                r#"{"rx_rate_limiter": {"ops": null}}"#,
            ),
            ("PATCH", "/drives/0", r#"{"rate_limiter": null}"#),
            (
                "PATCH",
                "/drives/0",
                r#"{"rate_limiter": {"ops": {"size": 1}}}"#,
            ),
            ("PATCH", "/net/0", r#"{"rate_limiter": {}}"#),
        ] {
            assert_eq!(
                refused(method, path, body).status,
                400,
                "{method} {path} {body}"
            );
        }
        assert_eq!(
            refused("PATCH", "/balloon", r#""x""#).message,
            r#"body must be {"target_mib": N}"#
        );
    }

    #[test]
    fn downtime_out_of_range_and_empty_buckets_are_refused() {
        for d in ["0", "60001", "18446744073709551615"] {
            let body = format!(r#"{{"destination": "h:1", "downtime_ms": {d}}}"#);
            let r = refused("PUT", "/vm/migrate", &body);
            assert_eq!(
                (r.status, r.message.as_str()),
                (400, "downtime_ms must be 1 to 60000")
            );
        }
        let r = refused(
            "PATCH",
            "/drives/0",
            r#"{"rate_limiter": {"ops": {"size": 0, "refill_time_ms": 1000}}}"#,
        );
        assert_eq!(
            (r.status, r.message.as_str()),
            (
                400,
                "rate_limiter: size and refill_time_ms must be positive (null: unlimited)"
            )
        );
        let r = refused(
            "PATCH",
            "/net/0",
            r#"{"rx_rate_limiter": {}, "tx_rate_limiter": {"bytes": {"size": 9, "refill_time_ms": 0}}}"#,
        );
        assert!(r.message.starts_with("tx_rate_limiter: "), "{r:?}");
    }

    #[test]
    fn wrong_methods_get_405_and_unknown_paths_404() {
        for (method, path) in [
            ("DELETE", "/vm"),
            ("GET", "/vm/pause"),
            ("POST", "/vm/resume"),
            ("GET", "/vm/stop"),
            ("GET", "/vm/shutdown"),
            ("GET", "/vm/snapshot"),
            ("DELETE", "/vm/migrate"),
            ("PUT", "/balloon"),
            ("PUT", "/metrics"),
            ("PUT", "/drives/0"),
            ("DELETE", "/net/1"),
        ] {
            let r = refused(method, path, "");
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.message, format!("{method} is not allowed on {path}"));
        }
        for path in ["/nope", "/vm/", "/drives", "/vm/snapshot/load"] {
            let r = refused("GET", path, "");
            assert_eq!(
                (r.status, r.message),
                (404, format!("no such resource: {path}"))
            );
        }
        for path in ["/drives/x", "/net/", "/drives/0/1", "/net/-1"] {
            let r = refused("GET", path, "");
            assert_eq!(
                (r.status, r.message),
                (404, format!("no such device: {path}"))
            );
        }
    }

    #[test]
    fn a_vmm_without_a_vm_takes_only_a_load() {
        assert_eq!(parse_preload("GET", "/vm", b"").unwrap(), Preload::Info);
        assert_eq!(
            parse_preload(
                "PUT",
                "/vm/snapshot/load",
                br#"{"path": "/s", "resume": true}"#
            )
            .unwrap(),
            Preload::Load(LoadRequest {
                path: "/s".into(),
                resume: true,
                verify_memory: true
            })
        );
        let r =
            parse_preload("PUT", "/vm/snapshot/load", br#"{"path": "/s", "x": 1}"#).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(
            r.message.starts_with("bad snapshot load request: "),
            "{r:?}"
        );
        assert_eq!(
            parse_preload("GET", "/vm/snapshot/load", b"")
                .unwrap_err()
                .status,
            405
        );
        let r = parse_preload("PUT", "/vm/pause", b"").unwrap_err();
        assert_eq!(r.status, 400);
        assert!(r.message.starts_with("no VM yet: load a snapshot first"));
    }
}
