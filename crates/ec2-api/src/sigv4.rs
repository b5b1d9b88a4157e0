//! AWS Signature Version 4, as EC2 uses it.
//!
//! [`sign`] is for clients (the `vireo` CLI): it returns the headers to add to a request.
//! [`presign`] builds a presigned query string. [`verify`] is for the server: it recomputes the
//! signature of a received request from the secret that `lookup` returns for the access key, and
//! accepts both the `Authorization` header form and the presigned query-string form.
//!
//! The canonical request is built the way AWS builds it for every service but S3:
//! - the path has its dot segments and empty segments removed, then is URI-encoded *again*
//!   (a `%20` on the wire becomes `%2520`), keeping `/`;
//! - query parameters are decoded (as a form, `+` a space: [`crate::form`], the decoding the
//!   query parser uses too), re-encoded with RFC 3986 unreserved characters only, and
//!   sorted by name then value; a presigned request's `X-Amz-Signature` is left out;
//! - signed headers are named in lowercase, their values trimmed with inner runs of whitespace
//!   folded to one space, repeated headers joined with `,`;
//! - the payload hash is the hex SHA-256 of the body. EC2 does not accept `UNSIGNED-PAYLOAD`.
//!
//! # How failures map to EC2 error codes
//!
//! Every authentication failure is `AuthFailure` (HTTP 401), as the project's API contract says
//! of unsigned, badly signed and expired requests; the message tells which:
//!
//! | [`AuthError`] | message |
//! |---|---|
//! | `Missing` (no Authorization header, no `X-Amz-Algorithm`) | "Request is missing Authentication Token" |
//! | `Malformed` (header or parameters not in SigV4 form, date unparseable, `host`/`x-amz-date` not signed, scope date ≠ request date, both forms at once) | the defect |
//! | `UnknownAccessKey`, `SignatureMismatch` | "AWS was not able to validate the provided access credentials" |
//! | `WrongScope` (service is not `ec2`, terminator is not `aws4_request`), `PayloadHash` (unsigned or mismatched `X-Amz-Content-Sha256`) | the reason |
//! | `Expired` (more than 5 minutes from the server's clock; a presigned URL past `X-Amz-Expires`) | "Signature expired: …" |
//!
//! (EC2 itself answers the first with `MissingAuthenticationToken` and the last with
//! `RequestExpired`; botocore raises a `ClientError` either way.) An unknown key and a wrong
//! secret give the same message, so the answer does not tell a caller which access keys exist.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::error::Ec2Error;
use crate::form;

type HmacSha256 = Hmac<Sha256>;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The service name EC2 requests are scoped to.
pub const EC2_SERVICE: &str = "ec2";
/// How far a request's time may be from the server's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);
/// The longest lifetime of a presigned request (7 days), as in AWS.
pub const MAX_PRESIGN_EXPIRES: u64 = 7 * 24 * 3600;

/// RFC 3986 unreserved characters stay; everything else is %XX (uppercase hex).
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same, keeping `/` for paths.
const ENCODE_PATH: &AsciiSet = &ENCODE.remove(b'/');

/// An access key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    // The secret must not end up in logs through a `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// What a client signs.
#[derive(Debug, Clone)]
pub struct SignInput<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The Host header as it will be sent (with `:port` when the port is not the default).
    pub host: &'a str,
    /// The path as it goes on the wire (already percent-encoded), usually `/`.
    pub path: &'a str,
    /// The query string as it goes on the wire, without `?`; empty for none.
    pub query: &'a str,
    /// Other headers to sign and send, e.g. `Content-Type`. `Host`, `X-Amz-Date` and
    /// `Authorization` are added by [`sign`] and must not be here.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub region: &'a str,
    /// `ec2` for EC2.
    pub service: &'a str,
    pub time: SystemTime,
    /// Also send (and sign) `X-Amz-Content-Sha256`.
    pub content_sha256_header: bool,
}

/// A received request, as the server saw it.
#[derive(Debug, Clone)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The path from the request line, still percent-encoded, without the query.
    pub path: &'a str,
    /// The raw query string from the request line, without `?`.
    pub query: &'a str,
    /// All request headers, names in any case, in the order received.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Who signed a request that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCaller {
    pub access_key_id: String,
    /// The region the client signed for; the server decides whether it serves it.
    pub region: String,
}

/// Why a request's authentication failed. See the module documentation for the EC2 codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the request carries no authentication")]
    Missing,
    #[error("malformed SigV4 authentication: {0}")]
    Malformed(String),
    #[error("unknown access key {0}")]
    UnknownAccessKey(String),
    #[error("the signature does not match")]
    SignatureMismatch,
    #[error("wrong credential scope: {0}")]
    WrongScope(String),
    #[error("payload hash: {0}")]
    PayloadHash(String),
    #[error("request expired: {0}")]
    Expired(String),
}

impl AuthError {
    /// The EC2 error to answer with.
    pub fn to_ec2_error(&self) -> Ec2Error {
        match self {
            AuthError::Missing => Ec2Error::new(
                "AuthFailure",
                "Request is missing Authentication Token",
                401,
            ),
            AuthError::Malformed(m) => Ec2Error::new("AuthFailure", m.clone(), 401),
            AuthError::UnknownAccessKey(_) | AuthError::SignatureMismatch => {
                Ec2Error::auth_failure()
            }
            AuthError::WrongScope(m) => Ec2Error::new("AuthFailure", m.clone(), 401),
            AuthError::PayloadHash(m) => Ec2Error::new("AuthFailure", m.clone(), 401),
            AuthError::Expired(m) => {
                Ec2Error::new("AuthFailure", format!("Signature expired: {m}"), 401)
            }
        }
    }
}

impl From<AuthError> for Ec2Error {
    fn from(e: AuthError) -> Self {
        e.to_ec2_error()
    }
}

/// What the server accepts.
#[derive(Debug, Clone)]
pub struct VerifyOptions<'a> {
    pub service: &'a str,
    pub max_skew: Duration,
}

impl Default for VerifyOptions<'_> {
    fn default() -> Self {
        VerifyOptions {
            service: EC2_SERVICE,
            max_skew: MAX_SKEW,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn amz_date(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    PrimitiveDateTime::parse(s, fmt)
        .ok()
        .map(|t| t.assume_utc().into())
}

/// Removes `.`/`..` and empty segments, keeping a leading and a trailing `/`.
fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    if path.starts_with('/') {
        s.push('/');
    }
    s.push_str(&out.join("/"));
    if path.ends_with('/') && !out.is_empty() {
        s.push('/');
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

fn canonical_uri(path: &str) -> String {
    utf8_percent_encode(&normalize_path(path), ENCODE_PATH).to_string()
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

/// Decoded (name, value) pairs of a raw query string, decoded by [`crate::form`] exactly as the
/// query parser decodes them (`+` is a space, `%2B` a plus): what is signed is what is served.
fn query_pairs(raw: &str) -> Result<Vec<(String, String)>, AuthError> {
    form::pairs(raw.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| AuthError::Malformed("the query string is not valid UTF-8".into()))
}

fn canonical_query(pairs: &[(String, String)], skip_signature: bool) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !(skip_signature && k == "X-Amz-Signature"))
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn fold_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `name:value\n` for each signed header, in the order of `signed`.
fn canonical_headers(headers: &[(String, String)], signed: &[&str]) -> Result<String, AuthError> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| fold_value(v))
            .collect();
        if values.is_empty() {
            return Err(AuthError::Malformed(format!(
                "the signed header '{name}' is not in the request"
            )));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

struct Canonical<'a> {
    method: &'a str,
    path: &'a str,
    query: String,
    headers: String,
    signed_headers: String,
    payload_hash: String,
}

impl Canonical<'_> {
    fn string_to_sign(&self, amz_date: &str, scope: &str) -> String {
        let cr = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            canonical_uri(self.path),
            self.query,
            self.headers,
            self.signed_headers,
            self.payload_hash
        );
        format!(
            "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
            sha256_hex(cr.as_bytes())
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Signing (clients)

/// Signs a request: returns the headers to add (`Authorization`, `X-Amz-Date`, and
/// `X-Amz-Content-Sha256` when asked for). `Host` is signed but not returned: the HTTP client
/// sends it, and it must be exactly `input.host`.
pub fn sign(creds: &Credentials, input: &SignInput<'_>) -> Vec<(String, String)> {
    let date = amz_date(input.time);
    let payload_hash = sha256_hex(input.body);
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .filter(|(k, _)| {
            ![
                "host",
                "x-amz-date",
                "authorization",
                "x-amz-content-sha256",
            ]
            .iter()
            .any(|h| k.eq_ignore_ascii_case(h))
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    headers.push(("host".into(), input.host.to_string()));
    headers.push(("x-amz-date".into(), date.clone()));
    if input.content_sha256_header {
        headers.push(("x-amz-content-sha256".into(), payload_hash.clone()));
    }
    let mut names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    // Every name in `names` comes from `headers`, so this cannot fail.
    let canonical_headers = canonical_headers(&headers, &names).unwrap_or_default();
    // A query that does not decode is signed as AWS would canonicalize what can be decoded;
    // clients build their queries with `encode`, so this only matters for hand-made input.
    let pairs = query_pairs(input.query).unwrap_or_default();
    let c = Canonical {
        method: input.method,
        path: input.path,
        query: canonical_query(&pairs, false),
        headers: canonical_headers,
        signed_headers: names.join(";"),
        payload_hash: payload_hash.clone(),
    };
    let scope = format!(
        "{}/{}/{}/aws4_request",
        &date[..8],
        input.region,
        input.service
    );
    let key = signing_key(
        &creds.secret_access_key,
        &date[..8],
        input.region,
        input.service,
    );
    let signature = hex::encode(hmac(&key, c.string_to_sign(&date, &scope).as_bytes()));
    let mut out = vec![
        (
            "Authorization".to_string(),
            format!(
                "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
                creds.access_key_id, c.signed_headers
            ),
        ),
        ("X-Amz-Date".to_string(), date),
    ];
    if input.content_sha256_header {
        out.push(("X-Amz-Content-Sha256".to_string(), payload_hash));
    }
    out
}

/// A presigned query string: `input.query` plus the `X-Amz-*` authentication parameters, valid
/// for `expires` seconds from `input.time`. Only `host` (and `input.headers`) are signed.
pub fn presign(creds: &Credentials, input: &SignInput<'_>, expires: u64) -> String {
    let date = amz_date(input.time);
    let scope = format!(
        "{}/{}/{}/aws4_request",
        &date[..8],
        input.region,
        input.service
    );
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    headers.push(("host".into(), input.host.to_string()));
    let mut names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let signed_headers = names.join(";");
    let mut pairs = query_pairs(input.query).unwrap_or_default();
    pairs.extend([
        ("X-Amz-Algorithm".to_string(), ALGORITHM.to_string()),
        (
            "X-Amz-Credential".to_string(),
            format!("{}/{scope}", creds.access_key_id),
        ),
        ("X-Amz-Date".to_string(), date.clone()),
        ("X-Amz-Expires".to_string(), expires.to_string()),
        ("X-Amz-SignedHeaders".to_string(), signed_headers.clone()),
    ]);
    let query = canonical_query(&pairs, false);
    let c = Canonical {
        method: input.method,
        path: input.path,
        query: query.clone(),
        headers: canonical_headers(&headers, &names).unwrap_or_default(),
        signed_headers,
        payload_hash: sha256_hex(input.body),
    };
    let key = signing_key(
        &creds.secret_access_key,
        &date[..8],
        input.region,
        input.service,
    );
    let signature = hex::encode(hmac(&key, c.string_to_sign(&date, &scope).as_bytes()));
    format!("{query}&X-Amz-Signature={signature}")
}

// ---------------------------------------------------------------------------------------------
// Verification (server)

struct Claimed {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    /// `Some(seconds)` for a presigned request.
    expires: Option<u64>,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn malformed(m: impl Into<String>) -> AuthError {
    AuthError::Malformed(m.into())
}

/// `AKID/YYYYMMDD/region/service/aws4_request`.
fn parse_credential(c: &str) -> Result<(String, String, String, String), AuthError> {
    let parts: Vec<&str> = c.split('/').collect();
    let [akid, date, region, service, terminator] = parts[..] else {
        return Err(malformed(format!(
            "Credential '{c}' is not ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
        )));
    };
    if akid.is_empty() || region.is_empty() || service.is_empty() {
        return Err(malformed(format!("Credential '{c}' has an empty part")));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!(
            "Credential '{c}' has a date that is not YYYYMMDD"
        )));
    }
    if terminator != "aws4_request" {
        return Err(AuthError::WrongScope(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'"
        )));
    }
    Ok((akid.into(), date.into(), region.into(), service.into()))
}

fn parse_signed_headers(s: &str) -> Result<Vec<String>, AuthError> {
    let names: Vec<String> = s.split(';').map(str::to_string).collect();
    if names
        .iter()
        .any(|n| n.is_empty() || n.bytes().any(|b| b.is_ascii_uppercase() || b <= b' '))
    {
        return Err(malformed(format!(
            "SignedHeaders '{s}' must be lowercase header names separated by ';'"
        )));
    }
    Ok(names)
}

fn check_signature_form(sig: &str) -> Result<(), AuthError> {
    if sig.len() == 64 && sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(malformed("Signature must be 64 lowercase hex digits"))
    }
}

fn from_header(auth: &str, headers: &[(String, String)]) -> Result<Claimed, AuthError> {
    let rest = auth
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            malformed(format!(
                "Authorization header must start with '{ALGORITHM} '"
            ))
        })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for field in rest.split(',') {
        let field = field.trim();
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| malformed(format!("Authorization field '{field}' is not KEY=VALUE")))?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            other => {
                return Err(malformed(format!(
                    "Authorization header has an unknown field '{other}'"
                )))
            }
        };
        if slot.replace(v).is_some() {
            return Err(malformed(format!("Authorization header repeats '{k}'")));
        }
    }
    let missing = |n: &str| malformed(format!("Authorization header lacks '{n}'"));
    let (akid, date, region, service) =
        parse_credential(credential.ok_or_else(|| missing("Credential"))?)?;
    let signed_headers = parse_signed_headers(signed.ok_or_else(|| missing("SignedHeaders"))?)?;
    let signature = signature.ok_or_else(|| missing("Signature"))?.to_string();
    check_signature_form(&signature)?;
    for required in ["host", "x-amz-date"] {
        if !signed_headers.iter().any(|h| h == required) {
            return Err(malformed(format!("'{required}' must be a signed header")));
        }
    }
    let amz_date = header(headers, "x-amz-date")
        .ok_or_else(|| malformed("X-Amz-Date header is missing"))?
        .trim()
        .to_string();
    Ok(Claimed {
        access_key_id: akid,
        date,
        region,
        service,
        signed_headers,
        signature,
        amz_date,
        expires: None,
    })
}

fn from_query(pairs: &[(String, String)]) -> Result<Claimed, AuthError> {
    let get = |name: &str| -> Result<&str, AuthError> {
        let mut found = pairs.iter().filter(|(k, _)| k == name);
        match (found.next(), found.next()) {
            (Some((_, v)), None) => Ok(v.as_str()),
            (None, _) => Err(malformed(format!("presigned request lacks {name}"))),
            (Some(_), Some(_)) => Err(malformed(format!("presigned request repeats {name}"))),
        }
    };
    let algorithm = get("X-Amz-Algorithm")?;
    if algorithm != ALGORITHM {
        return Err(malformed(format!(
            "X-Amz-Algorithm must be {ALGORITHM}, not '{algorithm}'"
        )));
    }
    let (akid, date, region, service) = parse_credential(get("X-Amz-Credential")?)?;
    let signed_headers = parse_signed_headers(get("X-Amz-SignedHeaders")?)?;
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(malformed("'host' must be a signed header"));
    }
    let signature = get("X-Amz-Signature")?.to_string();
    check_signature_form(&signature)?;
    let raw_expires = get("X-Amz-Expires")?;
    let expires = raw_expires
        .parse::<u64>()
        .ok()
        .filter(|e| (1..=MAX_PRESIGN_EXPIRES).contains(e))
        .ok_or_else(|| {
            malformed(format!(
                "X-Amz-Expires '{raw_expires}' must be 1 to {MAX_PRESIGN_EXPIRES} seconds"
            ))
        })?;
    Ok(Claimed {
        access_key_id: akid,
        date,
        region,
        service,
        signed_headers,
        signature,
        amz_date: get("X-Amz-Date")?.to_string(),
        expires: Some(expires),
    })
}

/// Verifies an EC2 request signed with SigV4 (header or presigned form) against the server's
/// clock `now`. `lookup` returns the secret key of an access key id, or `None` for an unknown one.
pub fn verify(
    req: &RequestParts<'_>,
    lookup: impl Fn(&str) -> Option<String>,
    now: SystemTime,
) -> Result<VerifiedCaller, AuthError> {
    verify_with(req, lookup, now, &VerifyOptions::default())
}

/// [`verify`] with another service name or clock tolerance.
pub fn verify_with(
    req: &RequestParts<'_>,
    lookup: impl Fn(&str) -> Option<String>,
    now: SystemTime,
    opts: &VerifyOptions<'_>,
) -> Result<VerifiedCaller, AuthError> {
    let pairs = query_pairs(req.query)?;
    let auth_header = header(req.headers, "authorization");
    let presigned = pairs.iter().any(|(k, _)| k == "X-Amz-Algorithm");
    let claimed = match (auth_header, presigned) {
        (None, false) => return Err(AuthError::Missing),
        (Some(_), true) => {
            return Err(malformed(
                "a request may carry an Authorization header or presigned parameters, not both",
            ))
        }
        (Some(h), false) => from_header(h.trim(), req.headers)?,
        (None, true) => from_query(&pairs)?,
    };

    let signed_at = parse_amz_date(&claimed.amz_date).ok_or_else(|| {
        malformed(format!(
            "X-Amz-Date '{}' is not YYYYMMDDTHHMMSSZ",
            claimed.amz_date
        ))
    })?;
    if !claimed.amz_date.starts_with(&claimed.date) {
        return Err(malformed(format!(
            "the credential date {} is not the date of X-Amz-Date {}",
            claimed.date, claimed.amz_date
        )));
    }
    if claimed.service != opts.service {
        return Err(AuthError::WrongScope(format!(
            "Credential should be scoped to correct service: '{}'",
            opts.service
        )));
    }
    check_time(
        signed_at,
        now,
        claimed.expires,
        opts.max_skew,
        &claimed.amz_date,
    )?;

    let payload_hash = sha256_hex(req.body);
    if claimed.expires.is_none() {
        if let Some(declared) = header(req.headers, "x-amz-content-sha256") {
            let declared = declared.trim();
            if declared.eq_ignore_ascii_case("UNSIGNED-PAYLOAD")
                || declared.starts_with("STREAMING-")
            {
                return Err(AuthError::PayloadHash(format!(
                    "X-Amz-Content-Sha256 '{declared}' is not accepted: EC2 requests must sign their payload"
                )));
            }
            if !declared.eq_ignore_ascii_case(&payload_hash) {
                return Err(AuthError::PayloadHash(
                    "X-Amz-Content-Sha256 does not match the SHA-256 of the body".into(),
                ));
            }
        }
    }

    let secret = lookup(&claimed.access_key_id)
        .ok_or_else(|| AuthError::UnknownAccessKey(claimed.access_key_id.clone()))?;
    let signed: Vec<&str> = claimed.signed_headers.iter().map(String::as_str).collect();
    let c = Canonical {
        method: req.method,
        path: req.path,
        query: canonical_query(&pairs, claimed.expires.is_some()),
        headers: canonical_headers(req.headers, &signed)?,
        signed_headers: claimed.signed_headers.join(";"),
        payload_hash,
    };
    let scope = format!(
        "{}/{}/{}/aws4_request",
        claimed.date, claimed.region, claimed.service
    );
    let key = signing_key(&secret, &claimed.date, &claimed.region, &claimed.service);
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC accepts any key length");
    mac.update(c.string_to_sign(&claimed.amz_date, &scope).as_bytes());
    let given = hex::decode(&claimed.signature)
        .map_err(|_| malformed("Signature must be 64 lowercase hex digits"))?;
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given)
        .map_err(|_| AuthError::SignatureMismatch)?;
    Ok(VerifiedCaller {
        access_key_id: claimed.access_key_id,
        region: claimed.region,
    })
}

fn check_time(
    signed_at: SystemTime,
    now: SystemTime,
    expires: Option<u64>,
    max_skew: Duration,
    signed_s: &str,
) -> Result<(), AuthError> {
    let now_s = amz_date(now);
    if signed_at > now + max_skew {
        return Err(AuthError::Expired(format!(
            "Request is not yet valid: signed at {signed_s}, which is later than {now_s} plus {} seconds",
            max_skew.as_secs()
        )));
    }
    let valid_until = signed_at + expires.map_or(max_skew, Duration::from_secs);
    if now > valid_until {
        return Err(AuthError::Expired(format!(
            "Request has expired: signed at {signed_s}, and it is now {now_s}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        parse_amz_date(s).unwrap()
    }

    fn example_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        }
    }

    /// AWS's documented SigV4 example: `GET https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08`
    /// with a Content-Type header, signed with the example key at 2015-08-30T12:36:00Z.
    #[test]
    fn matches_the_aws_documented_example() {
        let headers = vec![(
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        )];
        let input = SignInput {
            method: "GET",
            host: "iam.amazonaws.com",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
            region: "us-east-1",
            service: "iam",
            time: at("20150830T123600Z"),
            content_sha256_header: false,
        };
        // The hash of the canonical request that AWS documents for this example.
        let c = Canonical {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08".into(),
            headers: "content-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n".into(),
            signed_headers: "content-type;host;x-amz-date".into(),
            payload_hash: sha256_hex(b""),
        };
        assert!(c
            .string_to_sign("20150830T123600Z", "20150830/us-east-1/iam/aws4_request")
            .ends_with("\nf536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"));

        let out = sign(&example_creds(), &input);
        assert_eq!(
            out,
            vec![
                ("Authorization".to_string(), "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7".to_string()),
                ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
            ]
        );

        // And the server side accepts exactly that request.
        let mut received = headers.clone();
        received.push(("Host".into(), "iam.amazonaws.com".into()));
        received.extend(out);
        let req = RequestParts {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &received,
            body: b"",
        };
        let opts = VerifyOptions {
            service: "iam",
            max_skew: MAX_SKEW,
        };
        let lookup = |k: &str| (k == "AKIDEXAMPLE").then(|| example_creds().secret_access_key);
        let caller = verify_with(&req, lookup, at("20150830T123900Z"), &opts).unwrap();
        assert_eq!(
            caller,
            VerifiedCaller {
                access_key_id: "AKIDEXAMPLE".into(),
                region: "us-east-1".into()
            }
        );
    }

    /// A request as the `vireo` CLI or botocore sends it.
    struct Req {
        method: String,
        path: String,
        query: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Req {
        fn parts(&self) -> RequestParts<'_> {
            RequestParts {
                method: &self.method,
                path: &self.path,
                query: &self.query,
                headers: &self.headers,
                body: &self.body,
            }
        }
    }

    const NOW: &str = "20240102T030405Z";

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIAVIREOTEST0000001".into(),
            secret_access_key: "s3cr3t/with+odd=chars".into(),
        }
    }

    fn lookup(k: &str) -> Option<String> {
        (k == "AKIAVIREOTEST0000001").then(|| creds().secret_access_key)
    }

    fn signed_post(body: &str, sha_header: bool) -> Req {
        let headers = vec![(
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        )];
        let input = SignInput {
            method: "POST",
            host: "127.0.0.1:8787",
            path: "/",
            query: "",
            headers: &headers,
            body: body.as_bytes(),
            region: "vireo-local",
            service: "ec2",
            time: at(NOW),
            content_sha256_header: sha_header,
        };
        let mut all = headers.clone();
        all.push(("Host".into(), "127.0.0.1:8787".into()));
        all.extend(sign(&creds(), &input));
        Req {
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: all,
            body: body.as_bytes().to_vec(),
        }
    }

    fn check(r: &Req) -> Result<VerifiedCaller, AuthError> {
        verify(&r.parts(), lookup, at(NOW))
    }

    fn set_header(r: &mut Req, name: &str, value: &str) {
        for (k, v) in r.headers.iter_mut() {
            if k.eq_ignore_ascii_case(name) {
                *v = value.to_string();
            }
        }
    }

    #[test]
    fn round_trip() {
        for sha in [false, true] {
            let r = signed_post("Action=DescribeInstances&Version=2016-11-15", sha);
            assert_eq!(
                check(&r).unwrap(),
                VerifiedCaller {
                    access_key_id: "AKIAVIREOTEST0000001".into(),
                    region: "vireo-local".into()
                }
            );
        }
    }

    #[test]
    fn header_whitespace_and_case_do_not_matter() {
        let mut r = signed_post("Action=DescribeInstances", false);
        set_header(
            &mut r,
            "content-type",
            "  application/x-www-form-urlencoded;   charset=utf-8 ",
        );
        for (k, _) in r.headers.iter_mut() {
            *k = k.to_ascii_uppercase();
        }
        check(&r).unwrap();
    }

    #[test]
    fn every_tampering_fails() {
        let base = signed_post(
            "Action=TerminateInstances&InstanceId.1=i-0123456789abcdef0",
            true,
        );
        let mismatch = Err(AuthError::SignatureMismatch);

        let mut r = signed_post(
            "Action=TerminateInstances&InstanceId.1=i-0123456789abcdef0",
            false,
        );
        r.method = "PUT".into();
        assert_eq!(check(&r), mismatch, "method");

        let mut r = signed_post(
            "Action=TerminateInstances&InstanceId.1=i-0123456789abcdef0",
            false,
        );
        r.path = "/other".into();
        assert_eq!(check(&r), mismatch, "path");

        let mut r = signed_post(
            "Action=TerminateInstances&InstanceId.1=i-0123456789abcdef0",
            false,
        );
        r.query = "DryRun=true".into();
        assert_eq!(check(&r), mismatch, "query parameter");

        let mut r = signed_post(
            "Action=TerminateInstances&InstanceId.1=i-0123456789abcdef0",
            false,
        );
        set_header(&mut r, "content-type", "text/plain");
        assert_eq!(check(&r), mismatch, "signed header");

        let mut r = signed_post(
            "Action=TerminateInstances&InstanceId.1=i-0123456789abcdef0",
            false,
        );
        set_header(&mut r, "host", "example.com");
        assert_eq!(check(&r), mismatch, "host");

        let mut r = signed_post(
            "Action=TerminateInstances&InstanceId.1=i-0123456789abcdef0",
            false,
        );
        r.body = b"Action=TerminateInstances&InstanceId.1=i-0123456789abcdef1".to_vec();
        assert_eq!(check(&r), mismatch, "body");

        // With X-Amz-Content-Sha256, a changed body is caught by the declared hash first.
        let mut r = base;
        r.body.push(b'x');
        assert!(
            matches!(check(&r), Err(AuthError::PayloadHash(_))),
            "body vs declared hash"
        );

        let mut r = signed_post("Action=TerminateInstances", false);
        set_header(&mut r, "x-amz-date", "20240102T030406Z");
        assert_eq!(check(&r), mismatch, "date");

        let r = signed_post("Action=TerminateInstances", false);
        let wrong_secret = |_: &str| Some("not-the-secret".to_string());
        assert_eq!(verify(&r.parts(), wrong_secret, at(NOW)), mismatch, "key");
        let unknown = |_: &str| None;
        assert_eq!(
            verify(&r.parts(), unknown, at(NOW)),
            Err(AuthError::UnknownAccessKey("AKIAVIREOTEST0000001".into()))
        );

        // An unsigned header added on the way changes nothing.
        let mut r = signed_post("Action=TerminateInstances", false);
        r.headers.push(("User-Agent".into(), "curl".into()));
        check(&r).unwrap();
    }

    #[test]
    fn signature_with_a_changed_digit_fails() {
        let mut r = signed_post("Action=DescribeInstances", false);
        for (k, v) in r.headers.iter_mut() {
            if k == "Authorization" {
                let last = v.pop().unwrap();
                v.push(if last == '0' { '1' } else { '0' });
            }
        }
        assert_eq!(check(&r), Err(AuthError::SignatureMismatch));
    }

    #[test]
    fn clock_skew() {
        let r = signed_post("Action=DescribeInstances", false);
        assert!(
            verify(&r.parts(), lookup, at("20240102T030905Z")).is_ok(),
            "5 min after"
        );
        assert!(
            verify(&r.parts(), lookup, at("20240102T025905Z")).is_ok(),
            "5 min before"
        );
        let late = verify(&r.parts(), lookup, at("20240102T030906Z")).unwrap_err();
        assert!(matches!(late, AuthError::Expired(_)));
        assert_eq!(late.to_ec2_error().code, "AuthFailure");
        assert!(late.to_ec2_error().message.starts_with("Signature expired"));
        let early = verify(&r.parts(), lookup, at("20240102T025904Z")).unwrap_err();
        assert!(matches!(early, AuthError::Expired(_)), "{early}");
    }

    #[test]
    fn malformed_and_missing() {
        let r = Req {
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![("Host".into(), "h".into())],
            body: b"Action=X".to_vec(),
        };
        let e = check(&r).unwrap_err();
        assert_eq!(e, AuthError::Missing);
        assert_eq!(e.to_ec2_error().code, "AuthFailure");
        assert_eq!(
            e.to_ec2_error().message,
            "Request is missing Authentication Token"
        );
        assert_eq!(e.to_ec2_error().http_status, 401);

        let good = signed_post("Action=X", false);
        let auth = good
            .headers
            .iter()
            .find(|(k, _)| k == "Authorization")
            .unwrap()
            .1
            .clone();
        let variants = [
            auth.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"),
            auth.replace("Credential=", "Credentials="),
            auth.replace("/aws4_request", ""),
            auth.replace("20240102/", "2024-01-02/"),
            auth.replace("20240102/", "20240101/"),
            auth.replace(";x-amz-date", ""),
            auth.replace("host;", ""),
            auth.replace("content-type", "Content-Type"),
            auth.replace("Signature=", "Signature=zz"),
            format!("{auth}, Signature=00"),
        ];
        for bad in variants {
            let mut r = signed_post("Action=X", false);
            set_header(&mut r, "authorization", &bad);
            let e = check(&r).unwrap_err();
            assert!(
                matches!(e, AuthError::Malformed(_) | AuthError::WrongScope(_)),
                "{bad}: {e:?}"
            );
        }

        let mut r = signed_post("Action=X", false);
        set_header(&mut r, "authorization", &auth.replace("/ec2/", "/s3/"));
        let e = check(&r).unwrap_err();
        assert!(matches!(e, AuthError::WrongScope(_)));
        assert_eq!(e.to_ec2_error().code, "AuthFailure");

        let mut r = signed_post("Action=X", false);
        r.headers.retain(|(k, _)| k != "X-Amz-Date");
        assert!(matches!(check(&r), Err(AuthError::Malformed(_))));

        let mut r = signed_post("Action=X", false);
        set_header(&mut r, "x-amz-date", "2024-01-02T03:04:05Z");
        assert!(matches!(check(&r), Err(AuthError::Malformed(_))));
        assert_eq!(check(&r).unwrap_err().to_ec2_error().code, "AuthFailure");

        let mut r = signed_post("Action=X", false);
        r.headers
            .push(("X-Amz-Content-Sha256".into(), "UNSIGNED-PAYLOAD".into()));
        assert!(matches!(check(&r), Err(AuthError::PayloadHash(_))));
    }

    #[test]
    fn canonical_uri_and_query_follow_aws() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(canonical_uri("/a%20b"), "/a%2520b");
        assert_eq!(canonical_uri("/~x-y_z.w"), "/~x-y_z.w");
        let pairs = query_pairs("b=2&a=%7e&a=1&c&Z=%20%2B").unwrap();
        assert_eq!(canonical_query(&pairs, false), "Z=%20%2B&a=1&a=~&b=2&c=");
        // A `+` is a space here as it is to the query parser (it once stayed a plus here).
        let pairs = query_pairs("Z=%20+").unwrap();
        assert_eq!(canonical_query(&pairs, false), "Z=%20%20");
        assert_eq!(fold_value("  a   b \t c  "), "a b c");
    }

    #[test]
    fn query_parameters_with_odd_characters_round_trip() {
        let query = "Action=DescribeInstances&Filter.1.Name=tag%3AName&Filter.1.Value.1=a%20b%2Fc%2B%E2%9C%93";
        let input = SignInput {
            method: "GET",
            host: "localhost:8787",
            path: "/",
            query,
            headers: &[],
            body: b"",
            region: "us-east-1",
            service: "ec2",
            time: at(NOW),
            content_sha256_header: false,
        };
        let mut headers = sign(&creds(), &input);
        headers.push(("host".into(), "localhost:8787".into()));
        let r = Req {
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            headers,
            body: vec![],
        };
        check(&r).unwrap();
    }

    fn presigned(expires: u64) -> Req {
        let input = SignInput {
            method: "GET",
            host: "127.0.0.1:8787",
            path: "/",
            query: "Action=DescribeInstances&Version=2016-11-15",
            headers: &[],
            body: b"",
            region: "vireo-local",
            service: "ec2",
            time: at(NOW),
            content_sha256_header: false,
        };
        Req {
            method: "GET".into(),
            path: "/".into(),
            query: presign(&creds(), &input, expires),
            headers: vec![("Host".into(), "127.0.0.1:8787".into())],
            body: vec![],
        }
    }

    #[test]
    fn presigned_round_trip_expiry_and_tampering() {
        let r = presigned(60);
        assert!(r.query.contains(
            "X-Amz-Credential=AKIAVIREOTEST0000001%2F20240102%2Fvireo-local%2Fec2%2Faws4_request"
        ));
        check(&r).unwrap();
        assert!(verify(&r.parts(), lookup, at("20240102T030505Z")).is_ok());
        assert!(matches!(
            verify(&r.parts(), lookup, at("20240102T030506Z")),
            Err(AuthError::Expired(_))
        ));

        let mut t = presigned(60);
        t.query = t.query.replace("DescribeInstances", "TerminateInstances");
        assert_eq!(check(&t), Err(AuthError::SignatureMismatch));

        let mut t = presigned(60);
        t.query = t.query.replace("X-Amz-Expires=60", "X-Amz-Expires=6000");
        assert_eq!(check(&t), Err(AuthError::SignatureMismatch));

        let mut t = presigned(60);
        t.query = t.query.replace("X-Amz-Expires=60", "X-Amz-Expires=0");
        assert!(matches!(check(&t), Err(AuthError::Malformed(_))));

        let mut t = presigned(60);
        t.headers = vec![("Host".into(), "evil:1".into())];
        assert_eq!(check(&t), Err(AuthError::SignatureMismatch));

        let mut t = presigned(60);
        t.headers
            .push(("Authorization".into(), "AWS4-HMAC-SHA256 x".into()));
        assert!(matches!(check(&t), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let s = format!("{:?}", creds());
        assert!(!s.contains("s3cr3t"), "{s}");
    }
}
