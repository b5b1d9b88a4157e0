//! The VMM's control API: HTTP/1.1 with JSON bodies on a Unix socket, served by one thread.
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
//! | `PUT /vm/snapshot/load` `{"path": DIR, "resume": B, "verify_memory": B}` | start from a snapshot (only a VMM started with nothing but `--api-sock`; `serve_until_load`) |
//!
//! A bucket `B` is `{"size": N, "one_time_burst": N, "refill_time_ms": N}` or `null`
//! (unlimited); changed limits apply to a running device within a millisecond.
//!
//! Requests are bounded (64 KiB of headers and body); anything malformed gets a 400 with a
//! JSON `{"error": "..."}` and changes nothing.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use devices::rate_limiter::LimiterHandle;
use devices::virtio::net::NetCounters;
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _, MemoryRegionAddress};

use crate::config::RateLimiterConfig;
use crate::machine::DeviceControls;
use crate::metrics::{self, Exposition};
use crate::migration::{self, MigrationError, SharedProgress};
use crate::snapshot::{MachineAccess, SnapshotError};
use crate::vstate::control::{ExitCounters, RunControl, StopReason};

const MAX_REQUEST: usize = 64 * 1024;

/// Interrupts KVM_RUN on every vCPU thread.
pub type Kicker = Arc<dyn Fn() + Send + Sync>;

/// What the API acts on.
pub struct ApiContext {
    pub control: Arc<RunControl>,
    pub kick_vcpus: Kicker,
    pub nr_vcpus: usize,
    pub memory_mib: u64,
    pub devices: DeviceControls,
    pub exit_counters: Vec<Arc<ExitCounters>>,
    /// Snapshots and migration.
    pub machine: Arc<MachineAccess>,
}

struct Api {
    ctx: ApiContext,
    migration: SharedProgress,
    migrating: AtomicBool,
    /// Connections being served; each has its own thread (a migration's PUT lasts while
    /// GET /vm/migrate is asked), and at most MAX_CONNECTIONS at once.
    connections: Arc<AtomicUsize>,
    /// Set when a migration succeeded: the VMM stops once its answer is written, and its
    /// I/O thread stays frozen until then (its devices must not act for a guest that now
    /// runs elsewhere).
    migrated: Mutex<Option<devices::virtio::IoFreeze>>,
}

const MAX_CONNECTIONS: usize = 8;

struct Response {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn json(code: u16, v: Value) -> Self {
        Self {
            code,
            content_type: "application/json",
            body: v.to_string(),
        }
    }
    fn error(code: u16, msg: impl Into<String>) -> Self {
        Self::json(code, json!({ "error": msg.into() }))
    }
    fn no_content() -> Self {
        Self {
            code: 204,
            content_type: "application/json",
            body: String::new(),
        }
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

/// Binds `path` and serves the API on a thread until the machine stops.
pub fn spawn(path: &Path, ctx: ApiContext) -> std::io::Result<JoinHandle<()>> {
    spawn_on(Arc::new(bind(path)?), path, ctx)
}

/// Serves the API on `listener`, bound to `path`, on a thread until the machine stops; the
/// socket file is removed then.
pub fn spawn_on(
    listener: Arc<UnixListener>,
    path: &Path,
    ctx: ApiContext,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let api = Arc::new(Api {
        ctx,
        migration: Arc::new(Mutex::new(migration::Progress {
            state: "none".into(),
            ..Default::default()
        })),
        migrating: AtomicBool::new(false),
        connections: Arc::new(AtomicUsize::new(0)),
        migrated: Mutex::new(None),
    });
    let path: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            api.serve(&listener);
            let _ = std::fs::remove_file(&path);
        })
}

impl Api {
    fn serve(self: &Arc<Self>, listener: &UnixListener) {
        while !self.ctx.control.should_stop() {
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
                    let api = self.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("api-conn".into())
                            .spawn(move || {
                                if let Err(e) = api.serve_connection(stream) {
                                    tracing::debug!("api connection: {e}");
                                }
                                // Counted out only once this thread no longer holds the machine.
                                let connections = api.connections.clone();
                                drop(api);
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
                    let written = write_response(&mut stream, &self.route(&method, &path, &body));
                    let frozen = self
                        .migrated
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    if let Some(frozen) = frozen {
                        self.ctx.control.request_stop(StopReason::Migrated);
                        drop(frozen);
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

    fn route(&self, method: &str, path: &str, body: &[u8]) -> Response {
        match (method, path) {
            ("GET", "/vm") => Response::json(
                200,
                json!({
                    "state": if self.ctx.control.pause_requested() { "paused" } else { "running" },
                    "vcpus": self.ctx.nr_vcpus,
                    "memory_mib": self.ctx.memory_mib,
                }),
            ),
            ("PUT", "/vm/pause") => {
                let kick = self.ctx.kick_vcpus.clone();
                if self.ctx.control.pause(self.ctx.nr_vcpus, || kick()) {
                    Response::no_content()
                } else {
                    Response::error(409, "the VM has stopped")
                }
            }
            ("PUT", "/vm/resume") => {
                self.ctx.control.resume();
                Response::no_content()
            }
            ("PUT", "/vm/stop") => {
                self.ctx.control.request_stop(StopReason::Host);
                Response::no_content()
            }
            ("PUT", "/vm/shutdown") => self.shutdown(),
            ("GET", "/balloon") => match &self.ctx.devices.balloon {
                Some(b) => {
                    let s = b.status();
                    Response::json(
                        200,
                        json!({
                            "target_mib": (u64::from(s.target_pages) * 4096) >> 20,
                            "actual_mib": (u64::from(s.actual_pages) * 4096) >> 20,
                            "inflated_pages": s.inflated_pages,
                            "deflated_pages": s.deflated_pages,
                            "invalid_pfns": s.invalid_pfns,
                            "stats": s.stats.map(|st| json!({
                                "swap_in": st.swap_in, "swap_out": st.swap_out,
                                "major_faults": st.major_faults, "minor_faults": st.minor_faults,
                                "free_memory": st.free_memory, "total_memory": st.total_memory,
                                "available_memory": st.available_memory,
                                "disk_caches": st.disk_caches,
                            })),
                        }),
                    )
                }
                None => Response::error(404, "this VM has no balloon"),
            },
            ("PATCH", "/balloon") => {
                let Some(b) = &self.ctx.devices.balloon else {
                    return Response::error(404, "this VM has no balloon");
                };
                let target = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("target_mib").and_then(Value::as_u64));
                match target {
                    Some(mib) if mib <= self.ctx.memory_mib => {
                        b.set_target_mib(mib as u32);
                        Response::no_content()
                    }
                    Some(mib) => Response::error(
                        400,
                        format!(
                            "target_mib {mib} is more than the VM's {} MiB",
                            self.ctx.memory_mib
                        ),
                    ),
                    None => Response::error(400, "body must be {\"target_mib\": N}"),
                }
            }
            ("PUT", "/vm/snapshot") => self.snapshot(body),
            ("PUT", "/vm/migrate") => self.migrate(body),
            ("GET", "/vm/migrate") => {
                let p = self
                    .migration
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                Response::json(200, json!(p))
            }
            ("GET", "/metrics") => Response {
                code: 200,
                content_type: "text/plain; version=0.0.4",
                body: self.metrics(),
            },
            (_, p) if p.starts_with("/drives/") || p.starts_with("/net/") => {
                self.route_limits(method, p, body)
            }
            (
                _,
                "/vm" | "/vm/pause" | "/vm/resume" | "/vm/stop" | "/vm/shutdown" | "/vm/snapshot"
                | "/vm/migrate" | "/balloon" | "/metrics",
            ) => Response::error(405, format!("{method} is not allowed on {path}")),
            _ => Response::error(404, format!("no such resource: {path}")),
        }
    }

    /// Asks the guest to shut down: Ctrl-Alt-Del on its keyboard. What the guest does with it
    /// is up to the guest (the VMM exits when it powers off); a paused guest could not act on
    /// it, so that is refused rather than left to wait unseen.
    fn shutdown(&self) -> Response {
        if self.ctx.control.should_stop() {
            return Response::error(409, "the VM has stopped");
        }
        if self.ctx.control.pause_requested() {
            return Response::error(409, "the VM is paused: resume it first");
        }
        let Some(kbd) = &self.ctx.devices.keyboard else {
            return Response::error(404, "this VM has no keyboard");
        };
        if !kbd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .press_ctrl_alt_del()
        {
            // The guest turned its keyboard off or is not reading it: it will not see this
            // press, which is what a stop with a deadline is for.
            tracing::warn!("ctrl-alt-del not delivered: the guest's keyboard is not listening");
        }
        Response::no_content()
    }

    /// `PUT /vm/snapshot {"path": DIR}`: the VM must be paused.
    fn snapshot(&self, body: &[u8]) -> Response {
        let path = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("path").and_then(Value::as_str).map(PathBuf::from));
        let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
            return Response::error(400, "body must be {\"path\": \"DIR\"}");
        };
        if self.ctx.control.should_stop() {
            return Response::error(409, "the VM has stopped");
        }
        match self.ctx.machine.snapshot(&path) {
            Ok(stats) => Response::json(200, json!(stats)),
            Err(e @ SnapshotError::NotPaused) => Response::error(409, e.to_string()),
            Err(e) => Response::error(500, e.to_string()),
        }
    }

    /// `PUT /vm/migrate {"destination": "HOST:PORT", "downtime_ms": N}`: answers when the
    /// migration is over: 200 (the destination runs the guest; this VMM then exits with
    /// status 0) or an error (the guest still runs here).
    fn migrate(&self, body: &[u8]) -> Response {
        let v = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let Some(dest) = v.get("destination").and_then(Value::as_str) else {
            return Response::error(
                400,
                "body must be {\"destination\": \"HOST:PORT\", \"downtime_ms\": N}",
            );
        };
        let downtime_ms = match v.get("downtime_ms") {
            None | Some(Value::Null) => 50,
            Some(d) => match d.as_u64() {
                Some(ms) if (1..=60_000).contains(&ms) => ms,
                _ => return Response::error(400, "downtime_ms must be 1 to 60000"),
            },
        };
        if self.ctx.control.should_stop() {
            return Response::error(409, "the VM has stopped");
        }
        if self.migrating.swap(true, Ordering::SeqCst) {
            return Response::error(409, MigrationError::Busy.to_string());
        }
        let r = migration::migrate(&self.ctx.machine, dest, downtime_ms, &self.migration);
        self.migrating.store(false, Ordering::SeqCst);
        let progress = self
            .migration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match r {
            Ok(frozen) => {
                *self.migrated.lock().unwrap_or_else(|e| e.into_inner()) = Some(frozen);
                Response::json(200, json!(progress))
            }
            Err(e) => Response::error(502, format!("migration failed: {e}")),
        }
    }

    /// `/drives/{i}` and `/net/{i}`: read or change a device's rate limits.
    fn route_limits(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let (kind, index) = match path.trim_start_matches('/').split_once('/') {
            Some((kind, i)) => (kind, i.parse::<usize>().ok()),
            None => return Response::error(404, format!("no such resource: {path}")),
        };
        let limits: Vec<(&str, &LimiterHandle)> = match (kind, index) {
            ("drives", Some(i)) if i < self.ctx.devices.drives.len() => {
                vec![("rate_limiter", &self.ctx.devices.drives[i])]
            }
            ("net", Some(i)) if i < self.ctx.devices.net.len() => {
                let (rx, tx) = &self.ctx.devices.net[i];
                vec![("rx_rate_limiter", rx), ("tx_rate_limiter", tx)]
            }
            _ => return Response::error(404, format!("no such device: {path}")),
        };
        match method {
            "GET" => {
                let mut out = serde_json::Map::new();
                for (key, h) in &limits {
                    let (ops, bytes) = h.limits();
                    out.insert(
                        key.to_string(),
                        json!(RateLimiterConfig::from_buckets(ops, bytes)),
                    );
                }
                Response::json(200, Value::Object(out))
            }
            "PATCH" => {
                let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
                    return Response::error(400, "body must be a JSON object");
                };
                let mut changes = Vec::new();
                for (key, value) in fields {
                    let Some((_, handle)) = limits.iter().find(|(k, _)| *k == key) else {
                        return Response::error(400, format!("unknown field {key:?}"));
                    };
                    let cfg = match serde_json::from_value::<RateLimiterConfig>(value) {
                        Ok(c) => c,
                        Err(e) => return Response::error(400, format!("{key}: {e}")),
                    };
                    let zero = [cfg.ops, cfg.bytes]
                        .iter()
                        .flatten()
                        .any(|b| b.size == 0 || b.refill_time_ms == 0);
                    if zero {
                        return Response::error(
                            400,
                            format!(
                                "{key}: size and refill_time_ms must be positive (null: unlimited)"
                            ),
                        );
                    }
                    changes.push((*handle, cfg.buckets()));
                }
                // All fields were valid: apply them together.
                for (handle, (ops, bytes)) in changes {
                    handle.set(ops, bytes);
                }
                Response::no_content()
            }
            _ => Response::error(405, format!("{method} is not allowed on {path}")),
        }
    }

    fn metrics(&self) -> String {
        let mut e = Exposition::default();
        self.vcpu_metrics(&mut e);
        self.memory_metrics(&mut e);
        self.block_metrics(&mut e);
        self.net_metrics(&mut e);
        e.finish()
    }

    fn vcpu_metrics(&self, e: &mut Exposition) {
        let counters = &self.ctx.exit_counters;
        let ids: Vec<String> = (0..counters.len()).map(|i| i.to_string()).collect();
        let times: Vec<(u64, u64)> = counters.iter().map(|c| c.thread_times()).collect();
        e.family(
            "vireo_vcpu_seconds_total",
            "counter",
            "CPU time (user and system, guest mode included) of each vCPU thread.",
        );
        for (id, (cpu, _)) in ids.iter().zip(&times) {
            e.sample("vireo_vcpu_seconds_total", &[("vcpu", id)], secs(*cpu));
        }
        e.family(
            "vireo_vcpu_steal_seconds_total",
            "counter",
            "Time each vCPU thread was runnable but waiting for a host CPU (the steal time \
             KVM reports to the guest).",
        );
        for (id, (_, wait)) in ids.iter().zip(&times) {
            e.sample(
                "vireo_vcpu_steal_seconds_total",
                &[("vcpu", id)],
                secs(*wait),
            );
        }
        e.family(
            "vireo_vcpu_exits_total",
            "counter",
            "VM exits handled by the VMM, by vCPU and reason.",
        );
        let mut all = 0u64;
        for (id, c) in ids.iter().zip(counters) {
            let s = c.snapshot();
            for (reason, n) in [
                ("io_in", s.io_in),
                ("io_out", s.io_out),
                ("mmio_read", s.mmio_read),
                ("mmio_write", s.mmio_write),
                ("hlt", s.hlt),
                ("interrupted", s.interrupted),
                ("other", s.other),
            ] {
                all += n;
                e.sample(
                    "vireo_vcpu_exits_total",
                    &[("vcpu", id), ("reason", reason)],
                    n,
                );
            }
        }
        e.family(
            "vireo_vm_exits_total",
            "counter",
            "VM exits handled by the VMM, every vCPU and reason together.",
        );
        e.sample("vireo_vm_exits_total", &[], all);
    }

    fn memory_metrics(&self, e: &mut Exposition) {
        e.family("vireo_memory_bytes", "gauge", "Guest memory size.");
        e.sample("vireo_memory_bytes", &[], self.ctx.memory_mib << 20);
        let guest: Vec<(usize, usize)> = self
            .ctx
            .machine
            .mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some((host as usize, r.len() as usize))
            })
            .collect();
        if let Some((guest_rss, vmm_rss)) = metrics::resident_bytes(&guest) {
            e.family(
                "vireo_memory_resident_bytes",
                "gauge",
                "Guest memory backed by host RAM (resident in the VMM process).",
            );
            e.sample("vireo_memory_resident_bytes", &[], guest_rss);
            e.family(
                "vireo_vmm_resident_bytes",
                "gauge",
                "Resident memory of the VMM process other than guest memory.",
            );
            e.sample("vireo_vmm_resident_bytes", &[], vmm_rss);
        }
        if let Some(b) = &self.ctx.devices.balloon {
            let s = b.status();
            e.family(
                "vireo_balloon_target_bytes",
                "gauge",
                "Memory the balloon asks the guest to give back.",
            );
            e.sample(
                "vireo_balloon_target_bytes",
                &[],
                u64::from(s.target_pages) * 4096,
            );
            e.family(
                "vireo_balloon_actual_bytes",
                "gauge",
                "Memory the guest has given back to the balloon.",
            );
            e.sample(
                "vireo_balloon_actual_bytes",
                &[],
                u64::from(s.actual_pages) * 4096,
            );
            if let Some(free) = s.stats.and_then(|st| st.free_memory) {
                e.family(
                    "vireo_guest_free_memory_bytes",
                    "gauge",
                    "Free memory the guest last reported through the balloon.",
                );
                e.sample("vireo_guest_free_memory_bytes", &[], free);
            }
        }
    }

    fn block_metrics(&self, e: &mut Exposition) {
        let drives = &self.ctx.devices.drive_stats;
        if drives.is_empty() {
            return;
        }
        let config = &self.ctx.machine.config.drives;
        let ids: Vec<String> = (0..drives.len()).map(|i| i.to_string()).collect();
        let labels = |i: usize| -> Vec<(&str, &str)> {
            let mut l = vec![("drive", ids[i].as_str())];
            if let Some(serial) = config.get(i).and_then(|d| d.serial.as_deref()) {
                l.push(("serial", serial));
            }
            l
        };
        e.family(
            "vireo_block_requests_total",
            "counter",
            "Requests a drive completed, by operation (failed ones too).",
        );
        for (i, s) in drives.iter().enumerate() {
            for (op, c) in [
                ("read", &s.reads),
                ("write", &s.writes),
                ("flush", &s.flushes),
                ("discard", &s.discards),
                ("other", &s.other),
            ] {
                let mut l = labels(i);
                l.push(("op", op));
                e.sample("vireo_block_requests_total", &l, c.get());
            }
        }
        type Get = fn(&devices::virtio::block::Stats) -> u64;
        let simple: [(&str, &str, Get); 7] = [
            (
                "vireo_block_read_bytes_total",
                "Bytes a drive read for the guest.",
                |s| s.read_bytes.get(),
            ),
            (
                "vireo_block_written_bytes_total",
                "Bytes the guest wrote to a drive.",
                |s| s.written_bytes.get(),
            ),
            (
                "vireo_block_errors_total",
                "Requests that failed or were malformed.",
                |s| s.errors.get(),
            ),
            (
                "vireo_block_notifications_total",
                "Queue notifications from the guest (each a VM exit handled in the kernel).",
                |s| s.notifications.get(),
            ),
            (
                "vireo_block_interrupts_total",
                "Interrupts the drive raised in the guest.",
                |s| s.interrupts.get(),
            ),
            (
                "vireo_block_batches_total",
                "Groups of two or more reads and writes handed to the disk together (io_engine=io_uring).",
                |s| s.batches.get(),
            ),
            (
                "vireo_block_batched_requests_total",
                "Requests in those groups.",
                |s| s.batched.get(),
            ),
        ];
        for (name, help, get) in simple {
            e.family(name, "counter", help);
            for (i, s) in drives.iter().enumerate() {
                e.sample(name, &labels(i), get(s));
            }
        }
        e.family(
            "vireo_block_request_seconds",
            "histogram",
            "Time to serve a request once taken off the queue (after any rate-limit wait).",
        );
        for (i, s) in drives.iter().enumerate() {
            e.histogram(
                "vireo_block_request_seconds",
                &labels(i),
                &s.latency.snapshot(),
            );
        }
        let throttle: Vec<_> = self
            .ctx
            .devices
            .drives
            .iter()
            .map(|h| h.counters())
            .collect();
        e.family(
            "vireo_block_throttled_total",
            "counter",
            "Times a drive's rate limiter held its queue back.",
        );
        for (i, t) in throttle.iter().enumerate() {
            e.sample("vireo_block_throttled_total", &labels(i), t.throttled.get());
        }
        e.family(
            "vireo_block_throttled_seconds_total",
            "counter",
            "Time a drive's queue was held back by its rate limiter (counted as each wait ends).",
        );
        for (i, t) in throttle.iter().enumerate() {
            e.sample(
                "vireo_block_throttled_seconds_total",
                &labels(i),
                secs(t.throttled_ns.get()),
            );
        }
    }

    fn net_metrics(&self, e: &mut Exposition) {
        let ifaces = &self.ctx.devices.net_stats;
        if ifaces.is_empty() {
            return;
        }
        let config = &self.ctx.machine.config.net;
        let ids: Vec<String> = (0..ifaces.len()).map(|i| i.to_string()).collect();
        let labels = |i: usize| -> Vec<(&str, &str)> {
            let mut l = vec![("iface", ids[i].as_str())];
            if let Some(n) = config.get(i) {
                l.push(("tap", n.tap.as_str()));
            }
            l
        };
        type Get = fn(&devices::virtio::net::NetCounters) -> u64;
        let families: [(&str, &str, Get); 6] = [
            (
                "vireo_net_rx_packets_total",
                "Frames delivered to the guest.",
                |c| NetCounters::get(&c.rx_packets),
            ),
            (
                "vireo_net_rx_bytes_total",
                "Bytes delivered to the guest (Ethernet frames, no virtio header).",
                |c| NetCounters::get(&c.rx_bytes),
            ),
            (
                "vireo_net_rx_dropped_total",
                "Frames from the TAP not delivered: malformed, or the guest's buffers unusable.",
                |c| NetCounters::get(&c.rx_dropped),
            ),
            (
                "vireo_net_tx_packets_total",
                "Frames the guest sent to the TAP.",
                |c| NetCounters::get(&c.tx_packets),
            ),
            (
                "vireo_net_tx_bytes_total",
                "Bytes the guest sent (Ethernet frames, no virtio header).",
                |c| NetCounters::get(&c.tx_bytes),
            ),
            (
                "vireo_net_tx_dropped_total",
                "Guest frames not sent: malformed, oversize, or refused by the TAP.",
                |c| NetCounters::get(&c.tx_dropped),
            ),
        ];
        for (name, help, get) in families {
            e.family(name, "counter", help);
            for (i, c) in ifaces.iter().enumerate() {
                e.sample(name, &labels(i), get(c));
            }
        }
        let throttle: Vec<_> = self
            .ctx
            .devices
            .net
            .iter()
            .map(|(rx, tx)| (rx.counters(), tx.counters()))
            .collect();
        e.family(
            "vireo_net_throttled_total",
            "counter",
            "Times an interface's rate limiter held a direction back.",
        );
        for (i, (rx, tx)) in throttle.iter().enumerate() {
            for (dir, t) in [("rx", rx), ("tx", tx)] {
                let mut l = labels(i);
                l.push(("direction", dir));
                e.sample("vireo_net_throttled_total", &l, t.throttled.get());
            }
        }
        e.family(
            "vireo_net_throttled_seconds_total",
            "counter",
            "Time an interface's direction was held back by its rate limiter.",
        );
        for (i, (rx, tx)) in throttle.iter().enumerate() {
            for (dir, t) in [("rx", rx), ("tx", tx)] {
                let mut l = labels(i);
                l.push(("direction", dir));
                e.sample(
                    "vireo_net_throttled_seconds_total",
                    &l,
                    secs(t.throttled_ns.get()),
                );
            }
        }
    }
}

/// Nanoseconds as the seconds Prometheus expects.
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// `PUT /vm/snapshot/load`: what a VMM started with only `--api-sock` is asked to run.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// The snapshot directory (`PUT /vm/snapshot`'s `path`).
    pub path: PathBuf,
    /// Run the vCPUs at once; otherwise the VM waits, paused, for `PUT /vm/resume`.
    #[serde(default)]
    pub resume: bool,
    /// Check the memory file's checksum too (reads every data page of it).
    #[serde(default = "yes")]
    pub verify_memory: bool,
}

fn yes() -> bool {
    true
}

/// The API of a VMM that has no VM yet: serves `listener` one connection at a time until a
/// `PUT /vm/snapshot/load` succeeds, and returns what `load` made of it. `load` builds the
/// machine; when it fails, the client gets a 400 with its message, nothing is kept, and the
/// VMM goes on waiting. `GET /vm` answers `{"state": "not-loaded"}`; anything else gets a
/// 400 that says a snapshot must be loaded first.
pub fn serve_until_load<T>(
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
            let response = match (method.as_str(), path.as_str()) {
                ("GET", "/vm") => Response::json(200, json!({ "state": "not-loaded" })),
                ("PUT", "/vm/snapshot/load") => {
                    match serde_json::from_slice::<LoadRequest>(&body) {
                        Err(e) => Response::error(400, format!("bad snapshot load request: {e}")),
                        Ok(req) => match load(req) {
                            Ok(loaded) => {
                                let _ = write_response(&mut stream, &Response::no_content());
                                return Ok(loaded);
                            }
                            Err(msg) => Response::error(400, msg),
                        },
                    }
                }
                (_, "/vm/snapshot/load") => {
                    Response::error(405, "PUT /vm/snapshot/load loads a snapshot")
                }
                _ => Response::error(
                    400,
                    "no VM yet: load a snapshot first (PUT /vm/snapshot/load {\"path\": DIR})",
                ),
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
