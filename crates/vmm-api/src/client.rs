//! An async client for one VMM's API socket: one typed method per endpoint, every call bounded
//! by a timeout.
//!
//! Each call opens its own connection (HTTP/1.1 over the Unix socket, hyper's client
//! connection driven in the calling task, no task spawned) and closes it after the answer: the
//! VMM serves a handful of connections at once, and a caller that keeps none open cannot use
//! them up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use crate::{
    BalloonInfo, BalloonTarget, DriveLimits, ErrorBody, LoadRequest, MigrateRequest,
    MigrationProgress, NetLimits, SnapshotRequest, SnapshotStats, VmInfo,
};

/// How long a call waits for its whole answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read; the largest real one (metrics of many devices) is a few KiB.
const MAX_ANSWER: usize = 16 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens on the socket (the VMM has not started serving, or has exited).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The whole exchange took longer than the client's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke, or what came back was not HTTP.
    #[error("the VMM's API connection failed: {0}")]
    Http(#[from] hyper::Error),
    /// The answer was larger than any the VMM writes.
    #[error("the VMM's API answer is too large")]
    TooLarge,
    /// The VMM refused the request: its status, the message of its `{"error": ...}` body (the
    /// whole body when it has none) and the body as it came.
    #[error("{status} {message}")]
    Status {
        status: u16,
        message: String,
        body: String,
    },
    /// A success other than the endpoint's (200 with a body, or 204 without).
    #[error("the VMM answered {path} with {status}, not {expected}")]
    UnexpectedStatus {
        path: String,
        status: u16,
        expected: u16,
    },
    /// A successful answer whose body is not what the endpoint answers.
    #[error("the VMM's answer to {path} cannot be read: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The HTTP status of a refused request.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The client of one VMM's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the socket at `socket`, with [`DEFAULT_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another timeout for each call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /vm`.
    pub async fn vm(&self) -> Result<VmInfo, Error> {
        self.json(Method::GET, "/vm", None).await
    }

    /// `PUT /vm/pause`.
    pub async fn pause(&self) -> Result<(), Error> {
        self.empty(Method::PUT, "/vm/pause", None).await
    }

    /// `PUT /vm/resume`.
    pub async fn resume(&self) -> Result<(), Error> {
        self.empty(Method::PUT, "/vm/resume", None).await
    }

    /// `PUT /vm/stop`.
    pub async fn stop(&self) -> Result<(), Error> {
        self.empty(Method::PUT, "/vm/stop", None).await
    }

    /// `PUT /vm/shutdown`: Ctrl-Alt-Del on the guest's keyboard.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.empty(Method::PUT, "/vm/shutdown", None).await
    }

    /// `GET /balloon`.
    pub async fn balloon(&self) -> Result<BalloonInfo, Error> {
        self.json(Method::GET, "/balloon", None).await
    }

    /// `PATCH /balloon`.
    pub async fn set_balloon(&self, target: &BalloonTarget) -> Result<(), Error> {
        self.empty(Method::PATCH, "/balloon", Some(body(target)))
            .await
    }

    /// `GET /drives/{index}`.
    pub async fn drive_limits(&self, index: usize) -> Result<DriveLimits, Error> {
        self.json(Method::GET, &format!("/drives/{index}"), None)
            .await
    }

    /// `PATCH /drives/{index}`.
    pub async fn set_drive_limits(&self, index: usize, limits: &DriveLimits) -> Result<(), Error> {
        let path = format!("/drives/{index}");
        self.empty(Method::PATCH, &path, Some(body(limits))).await
    }

    /// `GET /net/{index}`.
    pub async fn net_limits(&self, index: usize) -> Result<NetLimits, Error> {
        self.json(Method::GET, &format!("/net/{index}"), None).await
    }

    /// `PATCH /net/{index}`.
    pub async fn set_net_limits(&self, index: usize, limits: &NetLimits) -> Result<(), Error> {
        let path = format!("/net/{index}");
        self.empty(Method::PATCH, &path, Some(body(limits))).await
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, Error> {
        let (status, text) = self.request(Method::GET, "/metrics", None).await?;
        ok("/metrics", status, 200, text)
    }

    /// `PUT /vm/snapshot` (the VM must be paused).
    pub async fn snapshot(&self, request: &SnapshotRequest) -> Result<SnapshotStats, Error> {
        self.json(Method::PUT, "/vm/snapshot", Some(body(request)))
            .await
    }

    /// `PUT /vm/snapshot/load` (a VMM started with only `--api-sock`).
    pub async fn load_snapshot(&self, request: &LoadRequest) -> Result<(), Error> {
        self.empty(Method::PUT, "/vm/snapshot/load", Some(body(request)))
            .await
    }

    /// `PUT /vm/migrate`: answers when the migration is over.
    pub async fn migrate(&self, request: &MigrateRequest) -> Result<MigrationProgress, Error> {
        self.json(Method::PUT, "/vm/migrate", Some(body(request)))
            .await
    }

    /// `GET /vm/migrate`.
    pub async fn migration(&self) -> Result<MigrationProgress, Error> {
        self.json(Method::GET, "/vm/migrate", None).await
    }

    /// One request with any method, path and body; returns the status and the body whatever
    /// the status. For tests that send what the typed methods cannot (malformed bodies, wrong
    /// methods).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String), Error> {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        self.request(method, path, body.map(Bytes::from)).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<T, Error> {
        let (status, text) = self.request(method, path, body).await?;
        let text = ok(path, status, 200, text)?;
        serde_json::from_str(&text).map_err(|source| Error::Decode {
            path: path.to_string(),
            source,
        })
    }

    async fn empty(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<(), Error> {
        let (status, text) = self.request(method, path, body).await?;
        ok(path, status, 204, text).map(drop)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, String), Error> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, String), Error> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| Error::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let body = body.unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost")
            .header(CONNECTION, "close")
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .expect("a request of a valid method, path and headers");
        // The connection is driven here, beside the exchange; it ends once the answer has been
        // read and the sender dropped.
        let exchange = async move {
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let collected = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(e) => Error::Http(*e),
                    Err(_) => Error::TooLarge,
                })?;
            drop(sender);
            let text = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
            Ok::<_, Error>((status, text))
        };
        let (answer, conn) = tokio::join!(exchange, conn);
        let answer = answer?;
        // The answer is complete: the VMM closing the connection abruptly after it is no
        // failure of this call.
        drop(conn);
        Ok(answer)
    }
}

fn body(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("request bodies always serialize"))
}

/// The body of an answer with the `expected` status, or the refusal as an [`Error::Status`].
fn ok(path: &str, status: u16, expected: u16, body: String) -> Result<String, Error> {
    if status == expected {
        return Ok(body);
    }
    if (200..300).contains(&status) {
        return Err(Error::UnexpectedStatus {
            path: path.to_string(),
            status,
            expected,
        });
    }
    let message = serde_json::from_str::<ErrorBody>(&body)
        .map(|e| e.error)
        .unwrap_or_else(|_| body.trim().to_string());
    Err(Error::Status {
        status,
        message,
        body,
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper::{Response, StatusCode};
    use tokio::net::UnixListener;

    use super::*;
    use crate::{BalloonTarget, MigrationState, RateLimiter, TokenBucket, VmState};

    /// What the in-test server saw: method, path, body.
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

    /// A server on a fresh socket in a temporary directory that answers every request with
    /// `answer(method, path, body)`; `delay` holds every answer back that long.
    fn serve(
        answer: fn(&str, &str, &str) -> (u16, &'static str),
        delay: Duration,
    ) -> (PathBuf, Seen) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vmm-api-client-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let (method, path) = (req.method().to_string(), req.uri().to_string());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body = String::from_utf8(body.to_vec()).unwrap();
                            let (code, text) = answer(&method, &path, &body);
                            log.lock().unwrap().push((method, path, body));
                            tokio::time::sleep(delay).await;
                            let mut r = Response::new(Full::new(Bytes::from(text)));
                            *r.status_mut() = StatusCode::from_u16(code).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (sock, seen)
    }

    fn vmm(method: &str, path: &str, _body: &str) -> (u16, &'static str) {
        match (method, path) {
            ("GET", "/vm") => (200, r#"{"memory_mib":64,"state":"running","vcpus":2}"#),
            ("PUT", "/vm/pause") => (204, ""),
            ("PUT", "/vm/shutdown") => (409, r#"{"error":"the VM is paused: resume it first"}"#),
            ("GET", "/drives/0") => (
                200,
                r#"{"rate_limiter":{"bytes":null,"ops":{"one_time_burst":0,"refill_time_ms":1000,"size":100}}}"#,
            ),
            ("PATCH", "/drives/0") | ("PATCH", "/balloon") => (204, ""),
            ("GET", "/metrics") => (
                200,
                "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n",
            ),
            ("PUT", "/vm/migrate") => (
                200,
                r#"{"bytes_sent":5,"destination":"h:1","dirty_pages":0,"downtime_ms":3,"downtime_source_ms":2,"error":null,"pages_sent":1,"rounds":2,"state":"completed","total_ms":9}"#,
            ),
            ("GET", "/balloon") => (200, r#"{"target_mib":1}"#),
            ("PUT", "/vm/resume") => (200, "{}"),
            ("GET", "/vm/migrate") => (200, "not json"),
            _ => (404, r#"{"error":"no such resource"}"#),
        }
    }

    #[tokio::test]
    async fn typed_calls_send_and_read_the_wire_format() {
        let (sock, seen) = serve(vmm, Duration::ZERO);
        let c = Client::new(&sock);
        let vm = c.vm().await.unwrap();
        assert_eq!(
            (vm.state, vm.vcpus, vm.memory_mib),
            (VmState::Running, Some(2), Some(64))
        );
        c.pause().await.unwrap();
        let limits = c.drive_limits(0).await.unwrap();
        assert_eq!(limits.rate_limiter.unwrap().ops.unwrap().size, 100);
        let new = DriveLimits {
            rate_limiter: Some(RateLimiter {
                bytes: None,
                ops: Some(TokenBucket {
                    one_time_burst: 0,
                    refill_time_ms: 1000,
                    size: 500,
                }),
            }),
        };
        c.set_drive_limits(0, &new).await.unwrap();
        c.set_balloon(&BalloonTarget { target_mib: 16 })
            .await
            .unwrap();
        assert!(c.metrics().await.unwrap().ends_with("a_total 1\n"));
        let progress = c
            .migrate(&MigrateRequest {
                destination: "h:1".into(),
                downtime_ms: Some(50),
            })
            .await
            .unwrap();
        assert_eq!(
            (progress.state, progress.rounds),
            (MigrationState::Completed, 2)
        );
        let (code, body) = c
            .raw("PATCH", "/balloon", Some(b"\"x\"".to_vec()))
            .await
            .unwrap();
        assert_eq!((code, body.as_str()), (204, ""));

        let seen = seen.lock().unwrap().clone();
        let bodies: Vec<(&str, &str, &str)> = seen
            .iter()
            .map(|(m, p, b)| (m.as_str(), p.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            bodies,
            [
                ("GET", "/vm", ""),
                ("PUT", "/vm/pause", ""),
                ("GET", "/drives/0", ""),
                (
                    "PATCH",
                    "/drives/0",
                    r#"{"rate_limiter":{"bytes":null,"ops":{"one_time_burst":0,"refill_time_ms":1000,"size":500}}}"#
                ),
                ("PATCH", "/balloon", r#"{"target_mib":16}"#),
                ("GET", "/metrics", ""),
                (
                    "PUT",
                    "/vm/migrate",
                    r#"{"destination":"h:1","downtime_ms":50}"#
                ),
                ("PATCH", "/balloon", "\"x\""),
            ]
        );
        std::fs::remove_dir_all(sock.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn refusals_bad_answers_silence_and_no_server_are_told_apart() {
        let (sock, _) = serve(vmm, Duration::ZERO);
        let c = Client::new(&sock);
        match c.shutdown().await {
            Err(Error::Status {
                status: 409,
                message,
                body,
            }) => {
                assert_eq!(message, "the VM is paused: resume it first");
                assert_eq!(body, r#"{"error":"the VM is paused: resume it first"}"#);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.net_limits(3).await.unwrap_err().status(), Some(404));
        assert!(matches!(c.migration().await, Err(Error::Decode { .. })));
        assert!(matches!(
            c.resume().await,
            Err(Error::UnexpectedStatus {
                status: 200,
                expected: 204,
                ..
            })
        ));
        // `{"target_mib": 1}` alone is not a balloon's answer: missing fields are refused too.
        assert!(matches!(c.balloon().await, Err(Error::Decode { .. })));

        let (slow, _) = serve(vmm, Duration::from_secs(5));
        let c = Client::new(&slow).with_timeout(Duration::from_millis(100));
        let t0 = std::time::Instant::now();
        assert!(matches!(c.vm().await, Err(Error::Timeout(_))));
        assert!(t0.elapsed() < Duration::from_secs(2));

        let gone = Client::new(sock.with_file_name("nobody.sock"));
        assert!(matches!(gone.vm().await, Err(Error::Connect { .. })));
        for s in [sock, slow] {
            std::fs::remove_dir_all(s.parent().unwrap()).unwrap();
        }
    }
}
