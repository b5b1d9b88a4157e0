//! The metadata service's answers: one request (method, path, headers) and what is known of
//! the instance that sent it in, one reply out. Pure: no I/O, no clock of its own, no state,
//! so every path and every rule is unit-tested here; [`super::server`] does the HTTP.
//!
//! The rules, EC2's:
//! - HttpEndpoint `disabled`: 403 to everything (cloud-init reads a 403 on the token PUT as
//!   "IMDS is turned off" and stops at once).
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` 1–21600 answers a
//!   token bound to the instance ([`super::token`]); the header missing, repeated or out of
//!   range: 400; any `X-Forwarded-For`: 403 (a token PUT that went through a proxy). The reply
//!   carries the instance's HttpPutResponseHopLimit as its IP TTL ([`Reply::hop_limit`]).
//! - GET (and HEAD) with `X-aws-ec2-metadata-token`: a token that is not this instance's, or
//!   has expired: 401, also where tokens are optional. Without one: 401 when HttpTokens is
//!   `required`, else served (IMDSv1).
//! - Every version (`latest`, `2021-03-23`, …, `1.0`) serves the same tree; `/` lists them.
//!   A directory is served with or without its trailing slash and lists its entries one per
//!   line, subdirectories with a trailing `/`, no final newline. Everything a listing names
//!   answers 200 (cloud-init's crawler fetches every entry and gives up on the first error).
//!   Anything else: 404.

use std::net::Ipv4Addr;

use axum::http::{HeaderMap, Method, StatusCode};

use super::token::{TokenKey, TTL_SECONDS};
use super::view::{InstanceView, InterfaceView};

/// The versions `GET /` lists, oldest first; all of them serve the same tree.
pub const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "2024-04-11",
    "latest",
];

/// The header a token PUT names its TTL in.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The header a GET carries its token in.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// The part of an HTTP request the answer depends on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    /// The URI's path (no query).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Headers beyond Content-Type.
    pub headers: Vec<(&'static str, String)>,
    /// The IP TTL the reply must go out with (a token PUT's: HttpPutResponseHopLimit).
    pub hop_limit: Option<u8>,
}

impl Reply {
    fn text(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: "text/plain",
            body: body.into(),
            headers: Vec::new(),
            hop_limit: None,
        }
    }

    /// An error page (a small HTML document naming the status, as EC2's are).
    pub fn error(status: StatusCode) -> Reply {
        let title = format!(
            "{} - {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        Reply {
            status,
            content_type: "text/html",
            body: format!(
                "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>\n"
            )
            .into_bytes(),
            headers: Vec::new(),
            hop_limit: None,
        }
    }

    fn not_allowed(allow: &str) -> Reply {
        let mut r = Reply::error(StatusCode::METHOD_NOT_ALLOWED);
        r.headers.push(("allow", allow.to_string()));
        r
    }
}

/// The answer to `req` from the instance `view` (`None`: no instance has the address the
/// request came from), with `key` for tokens, at `now` (Unix seconds).
pub fn answer(view: Option<&InstanceView>, key: &TokenKey, now: u64, req: Request<'_>) -> Reply {
    let Some(v) = view else {
        return Reply::error(StatusCode::FORBIDDEN);
    };
    if !v.options.endpoint_enabled {
        return Reply::error(StatusCode::FORBIDDEN);
    }
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    if !req.path.starts_with('/') {
        return Reply::error(StatusCode::BAD_REQUEST);
    }
    let token_path = segs == ["latest", "api", "token"];
    match *req.method {
        Method::PUT if token_path => issue_token(v, key, now, req.headers),
        Method::PUT => Reply::not_allowed("GET, HEAD"),
        Method::GET | Method::HEAD if token_path => Reply::not_allowed("PUT"),
        Method::GET | Method::HEAD => {
            let mut tokens = req.headers.get_all(TOKEN_HEADER).iter();
            match (tokens.next(), tokens.next()) {
                (Some(_), Some(_)) => return Reply::error(StatusCode::BAD_REQUEST),
                (Some(t), None) => {
                    let ok = t
                        .to_str()
                        .ok()
                        .is_some_and(|t| key.check(t, &v.instance_id, now).is_ok());
                    if !ok {
                        return Reply::error(StatusCode::UNAUTHORIZED);
                    }
                }
                (None, _) if v.options.tokens_required => {
                    return Reply::error(StatusCode::UNAUTHORIZED)
                }
                (None, _) => {}
            }
            match resolve(v, &segs) {
                Some(r) => r,
                None => Reply::error(StatusCode::NOT_FOUND),
            }
        }
        _ => Reply::not_allowed("GET, HEAD, PUT"),
    }
}

fn issue_token(v: &InstanceView, key: &TokenKey, now: u64, headers: &HeaderMap) -> Reply {
    if headers.contains_key("x-forwarded-for") {
        return Reply::error(StatusCode::FORBIDDEN);
    }
    let mut ttls = headers.get_all(TTL_HEADER).iter();
    let ttl = match (ttls.next(), ttls.next()) {
        (Some(t), None) => parse_ttl(t.as_bytes()),
        _ => None,
    };
    let Some(ttl) = ttl else {
        return Reply::error(StatusCode::BAD_REQUEST);
    };
    let mut r = Reply::text(key.issue(&v.instance_id, now, ttl));
    r.headers.push((TTL_HEADER, ttl.to_string()));
    r.hop_limit = Some(v.options.hop_limit);
    r
}

/// A TTL header's value: decimal digits only, 1 to 21600.
fn parse_ttl(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 5 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    TTL_SECONDS.contains(&n).then_some(n)
}

/// A directory listing: entries one per line, no final newline.
fn listing<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Reply {
    let lines: Vec<String> = entries
        .into_iter()
        .map(|s| s.as_ref().to_string())
        .collect();
    Reply::text(lines.join("\n"))
}

fn lines(items: &[String]) -> Reply {
    Reply::text(items.join("\n"))
}

/// Whether a tag key can be a path in the metadata (EC2's rule for InstanceMetadataTags:
/// letters, digits and `+ - = . , _ : @`, and not `.`, `..` or `_index`).
pub fn tag_key_servable(k: &str) -> bool {
    !k.is_empty()
        && k != "."
        && k != ".."
        && k != "_index"
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-=.,_:@".contains(&b))
}

/// The reply for a GET of `segs` (the path's non-empty segments), or `None` (404).
fn resolve(v: &InstanceView, segs: &[&str]) -> Option<Reply> {
    let Some((version, rest)) = segs.split_first() else {
        return Some(listing(VERSIONS));
    };
    if !VERSIONS.contains(version) {
        return None;
    }
    match rest {
        [] => {
            let mut e = vec!["dynamic", "meta-data"];
            if !v.user_data.is_empty() {
                e.push("user-data");
            }
            Some(listing(e))
        }
        ["user-data"] if !v.user_data.is_empty() => {
            let mut r = Reply::text(v.user_data.clone());
            r.content_type = "application/octet-stream";
            Some(r)
        }
        ["meta-data", rest @ ..] => meta_data(v, rest),
        ["dynamic"] => Some(listing(["instance-identity/"])),
        ["dynamic", "instance-identity"] => Some(listing(["document"])),
        ["dynamic", "instance-identity", "document"] => Some(Reply::text(identity_document(v))),
        _ => None,
    }
}

fn meta_data(v: &InstanceView, segs: &[&str]) -> Option<Reply> {
    let primary = v.primary()?;
    let public = primary.public_ip;
    let text = |s: String| Some(Reply::text(s));
    match segs {
        [] => {
            let mut e = vec![
                "ami-id",
                "ami-launch-index",
                "ami-manifest-path",
                "block-device-mapping/",
                "events/",
                "hostname",
                "instance-action",
                "instance-id",
                "instance-life-cycle",
                "instance-type",
                "local-hostname",
                "local-ipv4",
                "mac",
                "network/",
                "placement/",
                "profile",
            ];
            if public.is_some() {
                e.extend(["public-hostname", "public-ipv4"]);
            }
            if v.key.is_some() {
                e.push("public-keys/");
            }
            e.extend(["reservation-id", "security-groups", "services/"]);
            if v.options.tags_enabled {
                e.push("tags/");
            }
            Some(listing(e))
        }
        ["ami-id"] => text(v.image_id.clone()),
        ["ami-launch-index"] => text(v.launch_index.to_string()),
        // EC2's answer for an image that is not an S3 bundle.
        ["ami-manifest-path"] => text("(unknown)".into()),
        ["block-device-mapping"] => Some(listing(["ami", "root"])),
        // The root disk is the guest's /dev/vda (virtio-blk), as DescribeInstances'
        // rootDeviceName says.
        ["block-device-mapping", "ami" | "root"] => text("/dev/vda".into()),
        ["events"] => Some(listing(["maintenance/"])),
        ["events", "maintenance"] => Some(listing(["history", "scheduled"])),
        ["events", "maintenance", "history" | "scheduled"] => text("[]".into()),
        ["hostname" | "local-hostname"] => text(v.private_name(primary.private_ip)),
        ["instance-action"] => text("none".into()),
        ["instance-id"] => text(v.instance_id.clone()),
        ["instance-life-cycle"] => text("on-demand".into()),
        ["instance-type"] => text(v.instance_type.clone()),
        ["local-ipv4"] => text(primary.private_ip.to_string()),
        ["mac"] => text(primary.mac.clone()),
        ["network", rest @ ..] => network(v, rest),
        ["placement"] => Some(listing(["availability-zone", "region"])),
        ["placement", "availability-zone"] => text(v.availability_zone.clone()),
        ["placement", "region"] => text(v.region.clone()),
        ["profile"] => text("default-hvm".into()),
        ["public-hostname"] => primary.public_dns.clone().map(Reply::text),
        ["public-ipv4"] => public.map(|p| Reply::text(p.to_string())),
        ["public-keys", rest @ ..] => {
            let (name, key) = v.key.as_ref()?;
            match rest {
                [] => text(format!("0={name}")),
                ["0"] => Some(listing(["openssh-key"])),
                ["0", "openssh-key"] => text(key.clone()),
                _ => None,
            }
        }
        ["reservation-id"] => text(v.reservation_id.clone()),
        ["security-groups"] => Some(lines(&primary.group_names)),
        ["services"] => Some(listing(["domain", "partition"])),
        ["services", "domain"] => text("amazonaws.com".into()),
        ["services", "partition"] => text("aws".into()),
        ["tags", rest @ ..] if v.options.tags_enabled => {
            let servable = || v.tags.iter().filter(|t| tag_key_servable(&t.key));
            match rest {
                [] => Some(listing(["instance/"])),
                ["instance"] => Some(listing(servable().map(|t| t.key.as_str()))),
                ["instance", k] => servable()
                    .find(|t| t.key == *k)
                    .map(|t| Reply::text(t.value.clone())),
                _ => None,
            }
        }
        _ => None,
    }
}

fn network(v: &InstanceView, segs: &[&str]) -> Option<Reply> {
    match segs {
        [] => Some(listing(["interfaces/"])),
        ["interfaces"] => Some(listing(["macs/"])),
        ["interfaces", "macs"] => Some(listing(v.interfaces.iter().map(|i| format!("{}/", i.mac)))),
        ["interfaces", "macs", mac, rest @ ..] => {
            let i = v
                .interfaces
                .iter()
                .find(|i| i.mac.eq_ignore_ascii_case(mac))?;
            interface(v, i, rest)
        }
        _ => None,
    }
}

fn interface(v: &InstanceView, i: &InterfaceView, segs: &[&str]) -> Option<Reply> {
    let text = |s: String| Some(Reply::text(s));
    match segs {
        [] => {
            let mut e = vec!["device-number", "interface-id"];
            if i.public_ip.is_some() {
                e.push("ipv4-associations/");
            }
            e.extend(["local-hostname", "local-ipv4s", "mac", "owner-id"]);
            if i.public_ip.is_some() {
                e.extend(["public-hostname", "public-ipv4s"]);
            }
            e.extend([
                "security-group-ids",
                "security-groups",
                "subnet-id",
                "subnet-ipv4-cidr-block",
                "vpc-id",
                "vpc-ipv4-cidr-block",
                "vpc-ipv4-cidr-blocks",
            ]);
            Some(listing(e))
        }
        ["device-number"] => text(i.device_number.to_string()),
        ["interface-id"] => text(i.eni_id.clone()),
        ["ipv4-associations"] => i.public_ip.map(|p| listing([p.to_string()])),
        ["ipv4-associations", p] => {
            let public = i.public_ip?;
            (p.parse::<Ipv4Addr>().ok()? == public).then(|| Reply::text(i.private_ip.to_string()))
        }
        ["local-hostname"] => text(v.private_name(i.private_ip)),
        ["local-ipv4s"] => text(i.private_ip.to_string()),
        ["mac"] => text(i.mac.clone()),
        ["owner-id"] => text(v.account_id.clone()),
        ["public-hostname"] => i.public_dns.clone().map(Reply::text),
        ["public-ipv4s"] => i.public_ip.map(|p| Reply::text(p.to_string())),
        ["security-group-ids"] => Some(lines(&i.group_ids)),
        ["security-groups"] => Some(lines(&i.group_names)),
        ["subnet-id"] => text(i.subnet_id.clone()),
        ["subnet-ipv4-cidr-block"] => text(i.subnet_cidr.clone()),
        ["vpc-id"] => text(i.vpc_id.clone()),
        ["vpc-ipv4-cidr-block" | "vpc-ipv4-cidr-blocks"] => text(i.vpc_cidr.clone()),
        _ => None,
    }
}

/// `dynamic/instance-identity/document`: EC2's JSON (keys in EC2's alphabetical order).
/// Unsigned: vireod has no AWS signing key, so `pkcs7`, `signature` and `rsa2048` are not
/// offered.
fn identity_document(v: &InstanceView) -> String {
    // EC2 writes pendingTime to the second.
    let pending = match v.launch_time.split_once('.') {
        Some((secs, _)) => format!("{secs}Z"),
        None => v.launch_time.clone(),
    };
    let doc = serde_json::json!({
        "accountId": v.account_id,
        "architecture": "x86_64",
        "availabilityZone": v.availability_zone,
        "billingProducts": null,
        "devpayProductCodes": null,
        "imageId": v.image_id,
        "instanceId": v.instance_id,
        "instanceType": v.instance_type,
        "kernelId": null,
        "marketplaceProductCodes": null,
        "pendingTime": pending,
        "privateIp": v.primary().map(|p| p.private_ip.to_string()),
        "ramdiskId": null,
        "region": v.region,
        "version": "2017-09-30",
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
}
