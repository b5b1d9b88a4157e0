//! Console sessions: sign-in, the session cookie, sign-out, and the checks every console request
//! passes ([`Authed`]).
//!
//! Sign-in takes an access key id and its secret and checks the secret against the key store
//! SigV4 verifies API requests with ([`Service::secret_for`]), comparing SHA-256 digests in
//! constant time. An unknown key and a wrong secret get the same answer. A session is a random
//! 256-bit token in a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/console`, `Max-Age`, and
//! `Secure` under TLS); vireod keeps only its digest, with the key it belongs to, a random CSRF
//! token and its expiry. A session ends at its expiry, at sign-out, or when its access key is
//! removed or given another secret.
//!
//! Every request that changes something (any method but GET and HEAD) must carry the session's
//! CSRF token in `X-CSRF-Token` and an `Origin` header naming this console's own origin; sign-in
//! needs the Origin too (no signing a browser into someone else's session). Both refusals are
//! 403 and change nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Console, ConsoleError};

/// The session cookie's name.
pub const COOKIE: &str = "vireo_console";
/// The header a change carries the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

type TokenDigest = [u8; 32];

fn digest(s: &[u8]) -> TokenDigest {
    Sha256::digest(s).into()
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
fn ct_eq(a: &TokenDigest, b: &TokenDigest) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A fresh random token: 32 bytes from the operating system's CSPRNG (through rand's thread
/// generator), hex.
fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_key_id: String,
    /// Sent back in `X-CSRF-Token` with every change.
    pub csrf_token: String,
    /// The digest of the key's secret at sign-in: a key given a new secret ends its sessions.
    secret_digest: TokenDigest,
    pub expires: Instant,
    /// Sign-in order: the oldest session makes room when there are too many.
    seq: u64,
}

/// The sessions vireod holds, in memory (a restart signs everyone out), by their token's digest.
pub struct Sessions {
    map: Mutex<HashMap<TokenDigest, Session>>,
    ttl: Duration,
    max: usize,
    next_seq: std::sync::atomic::AtomicU64,
}

impl Sessions {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
            max: max.max(1),
            next_seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `access_key_id`; returns its cookie token and the session.
    fn create(&self, access_key_id: &str, secret: &str) -> (String, Session) {
        let token = new_token();
        let now = Instant::now();
        let session = Session {
            access_key_id: access_key_id.to_string(),
            csrf_token: new_token(),
            secret_digest: digest(secret.as_bytes()),
            expires: now + self.ttl,
            seq: self
                .next_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let mut map = self.lock();
        if map.len() >= self.max {
            map.retain(|_, s| s.expires > now);
        }
        while map.len() >= self.max {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.seq)
                .map(|(k, _)| *k)
                .expect("the map is not empty");
            map.remove(&oldest);
        }
        map.insert(digest(token.as_bytes()), session.clone());
        (token, session)
    }

    /// The live session of cookie token `token`; an expired one is removed.
    fn get(&self, token: &str) -> Option<Session> {
        let key = digest(token.as_bytes());
        let mut map = self.lock();
        let s = map.get(&key)?;
        if s.expires <= Instant::now() {
            map.remove(&key);
            return None;
        }
        Some(s.clone())
    }

    fn remove(&self, token: &str) {
        self.lock().remove(&digest(token.as_bytes()));
    }

    /// How many sessions are held (expired ones included until next looked up).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session token in the request's `Cookie` headers, if any.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn set_cookie(cfg: &super::ConsoleConfig, token: &str, max_age: Duration) -> HeaderValue {
    let secure = if cfg.tls { "; Secure" } else { "" };
    let v = format!(
        "{COOKIE}={token}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        max_age.as_secs()
    );
    HeaderValue::from_str(&v).expect("a cookie of hex and ASCII is a valid header value")
}

fn forbidden(code: &str, message: impl Into<String>) -> ConsoleError {
    ConsoleError::new(StatusCode::FORBIDDEN, code, message)
}

fn unauthorized(message: impl Into<String>) -> ConsoleError {
    ConsoleError::new(StatusCode::UNAUTHORIZED, "AuthFailure", message)
}

/// Refuses a request whose `Origin` is missing or is not this console's own origin (the scheme
/// of [`super::ConsoleConfig::tls`] and the request's `Host`).
fn check_origin(c: &Console, headers: &HeaderMap) -> Result<(), ConsoleError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| forbidden("CsrfRefused", "the request has no Host header"))?;
    let origin = headers
        .get(header::ORIGIN)
        .ok_or_else(|| forbidden("CsrfRefused", "a change needs an Origin header"))?;
    let scheme = if c.cfg.tls { "https" } else { "http" };
    if origin.as_bytes() != format!("{scheme}://{host}").as_bytes() {
        return Err(forbidden(
            "CsrfRefused",
            "the request comes from another origin than the console's",
        ));
    }
    Ok(())
}

/// A request from a signed-in browser. Extracting it checks the session (401 without one) and,
/// for every method but GET and HEAD, the CSRF token and the Origin (403).
pub struct Authed {
    pub session: Session,
    token: String,
}

impl FromRequestParts<Console> for Authed {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, ConsoleError> {
        let token = cookie_token(&parts.headers)
            .ok_or_else(|| unauthorized("sign in first: the request has no console session"))?;
        let session = c
            .sessions
            .get(&token)
            .ok_or_else(|| unauthorized("the console session has expired or ended: sign in"))?;
        // The key must still exist with the secret the session was opened with.
        let still_valid = c
            .svc
            .secret_for(&session.access_key_id)
            .is_some_and(|s| ct_eq(&digest(s.as_bytes()), &session.secret_digest));
        if !still_valid {
            c.sessions.remove(&token);
            return Err(unauthorized(
                "the access key of this session was removed or changed: sign in",
            ));
        }
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            check_origin(c, &parts.headers)?;
            let sent = parts.headers.get(CSRF_HEADER).ok_or_else(|| {
                forbidden("CsrfRefused", "a change needs the X-CSRF-Token header")
            })?;
            if !ct_eq(
                &digest(sent.as_bytes()),
                &digest(session.csrf_token.as_bytes()),
            ) {
                return Err(forbidden(
                    "CsrfRefused",
                    "the X-CSRF-Token header does not match the session's",
                ));
            }
        }
        Ok(Authed { session, token })
    }
}

/// Reads a JSON request body of type `T`; the body must be sent as `application/json`.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ConsoleError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ConsoleError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "InvalidRequest",
            "send the request body as application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ConsoleError::bad_request(format!("the request body is not valid: {e}")))
}

/// POST /console/api/signin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The signed-in session, as sign-in and `GET /console/api/session` answer it.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub access_key_id: String,
    pub account_id: String,
    pub region: String,
    pub csrf_token: String,
    /// Seconds until the session ends.
    pub expires_in: u64,
}

fn info(c: &Console, s: &Session) -> SessionInfo {
    SessionInfo {
        access_key_id: s.access_key_id.clone(),
        account_id: c.svc.owner_id().to_string(),
        region: c.svc.config().region.clone(),
        csrf_token: s.csrf_token.clone(),
        expires_in: s
            .expires
            .saturating_duration_since(Instant::now())
            .as_secs(),
    }
}

pub(super) async fn sign_in(
    State(c): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    check_origin(&c, &headers)?;
    let req: SignInRequest = json_body(&headers, &body)?;
    let stored = c.svc.secret_for(&req.access_key_id);
    // Compared as digests: the same work whether the key exists or not, and the comparison's
    // time tells nothing about the secret.
    let given = digest(req.secret_access_key.as_bytes());
    let (expected, known) = match &stored {
        Some(s) => (digest(s.as_bytes()), true),
        None => (digest(b"\0no such key"), false),
    };
    if !(ct_eq(&given, &expected) & known) {
        tracing::info!(
            "console sign-in refused for access key {:?}",
            req.access_key_id.chars().take(32).collect::<String>()
        );
        return Err(unauthorized(
            "the access key id or the secret access key is not valid",
        ));
    }
    let secret = stored.unwrap_or_default();
    let (token, session) = c.sessions.create(&req.access_key_id, &secret);
    let mut res = Json(info(&c, &session)).into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&c.cfg, &token, c.cfg.session_ttl),
    );
    Ok(res)
}

pub(super) async fn sign_out(State(c): State<Console>, a: Authed) -> Response {
    c.sessions.remove(&a.token);
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&c.cfg, "", Duration::ZERO));
    res
}

pub(super) async fn current(State(c): State<Console>, a: Authed) -> Json<SessionInfo> {
    Json(info(&c, &a.session))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn equal_digests_only() {
        assert!(ct_eq(&digest(b"abc"), &digest(b"abc")));
        assert!(!ct_eq(&digest(b"abc"), &digest(b"abd")));
    }

    #[test]
    fn cookie_token_is_found_among_others_and_must_be_64_hex() {
        let t = "ab".repeat(32);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={t}; c=d")).unwrap(),
        );
        assert_eq!(cookie_token(&h), Some(t));
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}=zz")).unwrap(),
        );
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn the_oldest_session_makes_room() {
        let s = Sessions::new(Duration::from_secs(60), 2);
        let (a, _) = s.create("AKIA1", "x");
        let (b, _) = s.create("AKIA1", "x");
        let (c, _) = s.create("AKIA1", "x");
        assert!(s.get(&a).is_none());
        assert!(s.get(&b).is_some() && s.get(&c).is_some());
        assert_eq!(s.len(), 2);
    }
}
