//! The metadata service in-process, without a network: every path and rule of the handler,
//! and hyper's side (bounds on hostile requests, keep-alive, tokens across requests) over an
//! in-memory stream.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handler::{answer, tag_key_servable, Reply, Request, VERSIONS};
use super::server::{serve_connection, Context, Limits};
use super::token::TokenKey;
use super::view::{InstanceView, InterfaceView};
use super::Lookup;
use crate::model::{MetadataOptions, Tag};

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 6);
const NOW: u64 = 1_700_000_000;

fn view(id: &str, ip: Ipv4Addr) -> InstanceView {
    let mac = format!("02:00:0a:00:01:{:02x}", ip.octets()[3]);
    InstanceView {
        instance_id: id.into(),
        image_id: "ami-0123456789abcdef0".into(),
        instance_type: "t3.micro".into(),
        reservation_id: "r-0123456789abcdef0".into(),
        launch_index: 0,
        account_id: "123456789012".into(),
        launch_time: "2024-05-06T07:08:09.123Z".into(),
        region: "vireo-test-1".into(),
        availability_zone: "vireo-test-1a".into(),
        domain: "vireo-test-1.compute.internal".into(),
        options: MetadataOptions::default(),
        user_data: Vec::new(),
        key: None,
        tags: Vec::new(),
        interfaces: vec![InterfaceView {
            device_number: 0,
            eni_id: "eni-0123456789abcdef0".into(),
            mac,
            private_ip: ip,
            subnet_id: "subnet-0123456789abcdef0".into(),
            subnet_cidr: "10.0.1.0/24".into(),
            vpc_id: "vpc-0123456789abcdef0".into(),
            vpc_cidr: "10.0.0.0/16".into(),
            group_ids: vec!["sg-01".into(), "sg-02".into()],
            group_names: vec!["default".into(), "web".into()],
            public_ip: None,
            public_dns: None,
        }],
    }
}

/// An instance with everything: a public address, a second interface, a key, user data and
/// tags in its metadata.
fn full_view() -> InstanceView {
    let mut v = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    v.interfaces[0].public_ip = Some(Ipv4Addr::new(198, 51, 100, 7));
    v.interfaces[0].public_dns =
        Some("ec2-198-51-100-7.vireo-test-1.compute.vireo.internal".into());
    let mut second = v.interfaces[0].clone();
    second.device_number = 1;
    second.eni_id = "eni-0fffffffffffffff0".into();
    second.mac = "02:00:0a:00:02:09".into();
    second.private_ip = Ipv4Addr::new(10, 0, 2, 9);
    second.subnet_id = "subnet-0fffffffffffffff0".into();
    second.subnet_cidr = "10.0.2.0/24".into();
    second.public_ip = None;
    second.public_dns = None;
    v.interfaces.push(second);
    v.key = Some((
        "my-key".into(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx my-key".into(),
    ));
    v.user_data = b"#cloud-config\n\x00\xffbinary".to_vec();
    v.options.tags_enabled = true;
    v.tags = vec![
        Tag::new("Name", "web-1"),
        Tag::new("env", ""),
        Tag::new("has space", "hidden"),
        Tag::new("a/b", "hidden"),
    ];
    v
}

fn key() -> TokenKey {
    TokenKey::new([7; 32])
}

struct Call {
    method: Method,
    path: String,
    headers: HeaderMap,
}

fn get(path: &str) -> Call {
    Call {
        method: Method::GET,
        path: path.into(),
        headers: HeaderMap::new(),
    }
}

fn put_token(ttl: &str) -> Call {
    let mut c = get("/latest/api/token");
    c.method = Method::PUT;
    c.headers.insert(
        "x-aws-ec2-metadata-token-ttl-seconds",
        HeaderValue::from_str(ttl).unwrap(),
    );
    c
}

impl Call {
    fn header(mut self, k: &'static str, v: &str) -> Call {
        self.headers
            .append(k, HeaderValue::from_bytes(v.as_bytes()).unwrap());
        self
    }
    fn with_token(self, t: &str) -> Call {
        self.header("x-aws-ec2-metadata-token", t)
    }
    fn to(&self, v: Option<&InstanceView>) -> Reply {
        self.at(v, NOW)
    }
    fn at(&self, v: Option<&InstanceView>, now: u64) -> Reply {
        answer(
            v,
            &key(),
            now,
            Request {
                method: &self.method,
                path: &self.path,
                headers: &self.headers,
            },
        )
    }
}

fn text(r: &Reply) -> String {
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    String::from_utf8(r.body.clone()).unwrap()
}

fn body(v: &InstanceView, path: &str) -> String {
    text(&get(path).to(Some(v)))
}

fn status(v: Option<&InstanceView>, c: Call) -> u16 {
    c.to(v).status.as_u16()
}

// --- the tree ---------------------------------------------------------------------------

#[test]
fn the_root_lists_the_versions_and_each_version_its_parts() {
    let v = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    let root = body(&v, "/");
    assert_eq!(root, VERSIONS.join("\n"));
    for want in [
        "latest",
        "2021-03-23",
        "2018-09-24",
        "2016-09-02",
        "2009-04-04",
        "1.0",
    ] {
        assert!(root.lines().any(|l| l == want), "{want}");
    }
    assert!(!root.ends_with('\n'));
    for ver in VERSIONS {
        assert_eq!(body(&v, &format!("/{ver}/")), "dynamic\nmeta-data");
        assert_eq!(body(&v, &format!("/{ver}")), "dynamic\nmeta-data");
        assert_eq!(
            body(&v, &format!("/{ver}/meta-data/instance-id")),
            "i-0aaaaaaaaaaaaaaaa"
        );
    }
    let full = full_view();
    assert_eq!(body(&full, "/latest/"), "dynamic\nmeta-data\nuser-data");
    for bad in [
        "/2030-01-01/meta-data/",
        "/LATEST/meta-data/",
        "/latest/meta-data/nope",
        "/latest/nope",
        "/favicon.ico",
    ] {
        assert_eq!(status(Some(&v), get(bad)), 404, "{bad}");
    }
}

#[test]
fn meta_data_lists_what_the_instance_has() {
    let v = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    let plain = "ami-id\nami-launch-index\nami-manifest-path\nblock-device-mapping/\nevents/\n\
                 hostname\ninstance-action\ninstance-id\ninstance-life-cycle\ninstance-type\n\
                 local-hostname\nlocal-ipv4\nmac\nnetwork/\nplacement/\nprofile\nreservation-id\n\
                 security-groups\nservices/";
    assert_eq!(body(&v, "/latest/meta-data/"), plain);
    assert_eq!(
        body(&v, "/latest/meta-data"),
        plain,
        "without the slash too"
    );
    let full = full_view();
    let all = body(&full, "/latest/meta-data/");
    for e in ["public-hostname", "public-ipv4", "public-keys/", "tags/"] {
        assert!(all.lines().any(|l| l == e), "{e} in {all}");
        assert!(!plain.lines().any(|l| l == e), "{e}");
    }
    for p in [
        "public-ipv4",
        "public-hostname",
        "public-keys/",
        "public-keys/0/openssh-key",
        "tags/instance",
    ] {
        assert_eq!(
            status(Some(&v), get(&format!("/latest/meta-data/{p}"))),
            404,
            "{p}"
        );
    }
}

#[test]
fn meta_data_values() {
    let v = full_view();
    let cases = [
        ("ami-id", "ami-0123456789abcdef0"),
        ("ami-launch-index", "0"),
        ("ami-manifest-path", "(unknown)"),
        ("block-device-mapping/", "ami\nroot"),
        ("block-device-mapping/root", "/dev/vda"),
        ("hostname", "ip-10-0-1-5.vireo-test-1.compute.internal"),
        (
            "local-hostname",
            "ip-10-0-1-5.vireo-test-1.compute.internal",
        ),
        ("instance-action", "none"),
        ("instance-id", "i-0aaaaaaaaaaaaaaaa"),
        ("instance-type", "t3.micro"),
        ("local-ipv4", "10.0.1.5"),
        ("mac", "02:00:0a:00:01:05"),
        ("placement/", "availability-zone\nregion"),
        ("placement/availability-zone", "vireo-test-1a"),
        ("placement/region", "vireo-test-1"),
        ("public-ipv4", "198.51.100.7"),
        (
            "public-hostname",
            "ec2-198-51-100-7.vireo-test-1.compute.vireo.internal",
        ),
        ("public-keys/", "0=my-key"),
        ("public-keys/0/", "openssh-key"),
        (
            "public-keys/0/openssh-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx my-key",
        ),
        ("reservation-id", "r-0123456789abcdef0"),
        ("security-groups", "default\nweb"),
        ("services/domain", "amazonaws.com"),
        ("services/partition", "aws"),
        ("tags/", "instance/"),
        ("tags/instance", "Name\nenv"),
        ("tags/instance/Name", "web-1"),
        ("tags/instance/env", ""),
        ("network/", "interfaces/"),
        ("network/interfaces/", "macs/"),
        (
            "network/interfaces/macs/",
            "02:00:0a:00:01:05/\n02:00:0a:00:02:09/",
        ),
    ];
    for (path, want) in cases {
        assert_eq!(
            body(&v, &format!("/latest/meta-data/{path}")),
            want,
            "{path}"
        );
    }
    assert_eq!(
        status(Some(&v), get("/latest/meta-data/tags/instance/has space")),
        404,
        "keys EC2 would not serve are not served"
    );
    let mac = "/latest/meta-data/network/interfaces/macs/02:00:0a:00:01:05/";
    assert_eq!(
        body(&v, mac),
        "device-number\ninterface-id\nipv4-associations/\nlocal-hostname\nlocal-ipv4s\nmac\n\
         owner-id\npublic-hostname\npublic-ipv4s\nsecurity-group-ids\nsecurity-groups\nsubnet-id\n\
         subnet-ipv4-cidr-block\nvpc-id\nvpc-ipv4-cidr-block\nvpc-ipv4-cidr-blocks"
    );
    let nic = [
        ("device-number", "0"),
        ("interface-id", "eni-0123456789abcdef0"),
        ("ipv4-associations/", "198.51.100.7"),
        ("ipv4-associations/198.51.100.7", "10.0.1.5"),
        (
            "local-hostname",
            "ip-10-0-1-5.vireo-test-1.compute.internal",
        ),
        ("local-ipv4s", "10.0.1.5"),
        ("mac", "02:00:0a:00:01:05"),
        ("owner-id", "123456789012"),
        ("public-ipv4s", "198.51.100.7"),
        ("security-group-ids", "sg-01\nsg-02"),
        ("security-groups", "default\nweb"),
        ("subnet-id", "subnet-0123456789abcdef0"),
        ("subnet-ipv4-cidr-block", "10.0.1.0/24"),
        ("vpc-id", "vpc-0123456789abcdef0"),
        ("vpc-ipv4-cidr-block", "10.0.0.0/16"),
        ("vpc-ipv4-cidr-blocks", "10.0.0.0/16"),
    ];
    for (leaf, want) in nic {
        assert_eq!(body(&v, &format!("{mac}{leaf}")), want, "{leaf}");
    }
    let second = "/latest/meta-data/network/interfaces/macs/02:00:0A:00:02:09/";
    assert_eq!(body(&v, &format!("{second}device-number")), "1");
    assert_eq!(
        body(&v, &format!("{second}subnet-ipv4-cidr-block")),
        "10.0.2.0/24"
    );
    assert!(
        !body(&v, second).contains("public"),
        "no public address there"
    );
    assert_eq!(
        status(
            Some(&v),
            get("/latest/meta-data/network/interfaces/macs/02:00:00:00:00:99/")
        ),
        404
    );
}

#[test]
fn user_data_and_the_identity_document() {
    let v = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    assert_eq!(status(Some(&v), get("/latest/user-data")), 404, "none");
    let full = full_view();
    let r = get("/latest/user-data").to(Some(&full));
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, b"#cloud-config\n\x00\xffbinary", "the raw bytes");
    assert_eq!(r.content_type, "application/octet-stream");
    assert_eq!(body(&v, "/latest/dynamic"), "instance-identity/");
    assert_eq!(body(&v, "/latest/dynamic/instance-identity"), "document");
    let doc: serde_json::Value =
        serde_json::from_str(&body(&v, "/2021-03-23/dynamic/instance-identity/document")).unwrap();
    assert_eq!(doc["accountId"], "123456789012");
    assert_eq!(doc["architecture"], "x86_64");
    assert_eq!(doc["availabilityZone"], "vireo-test-1a");
    assert_eq!(doc["imageId"], "ami-0123456789abcdef0");
    assert_eq!(doc["instanceId"], "i-0aaaaaaaaaaaaaaaa");
    assert_eq!(doc["instanceType"], "t3.micro");
    assert_eq!(doc["pendingTime"], "2024-05-06T07:08:09Z");
    assert_eq!(doc["privateIp"], "10.0.1.5");
    assert_eq!(doc["region"], "vireo-test-1");
    assert_eq!(doc["version"], "2017-09-30");
    assert!(doc["kernelId"].is_null());
}

/// Walks the tree as cloud-init's crawler does (every listed entry fetched, `N=name` meaning
/// `N/openssh-key`): every entry any listing names answers 200.
#[test]
fn every_listed_entry_answers() {
    fn walk(v: &InstanceView, path: &str, seen: &mut usize) {
        let listing = body(v, path);
        for entry in listing.lines() {
            *seen += 1;
            if let Some(dir) = entry.strip_suffix('/') {
                walk(v, &format!("{path}{dir}/"), seen);
            } else if let Some((n, _)) = entry.split_once('=') {
                body(v, &format!("{path}{n}/openssh-key"));
            } else {
                body(v, &format!("{path}{entry}"));
            }
        }
    }
    for v in [view("i-0aaaaaaaaaaaaaaaa", A_IP), full_view()] {
        let mut seen = 0;
        walk(&v, "/2021-03-23/meta-data/", &mut seen);
        walk(&v, "/latest/dynamic/", &mut seen);
        assert!(seen > 40, "{seen}");
    }
}

// --- tokens and options -------------------------------------------------------------------

#[test]
fn token_ttls_are_checked() {
    let v = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    for ok in ["1", "21600", "60", "00060"] {
        let r = put_token(ok).to(Some(&v));
        assert_eq!(r.status, StatusCode::OK, "{ok}");
        assert_eq!(r.hop_limit, Some(1), "EC2's default hop limit");
        let ttl: u64 = ok.parse().unwrap();
        assert!(r
            .headers
            .contains(&("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())));
        assert_eq!(key().check(&text(&r), "i-0aaaaaaaaaaaaaaaa", NOW), Ok(ttl));
    }
    for bad in [
        "0",
        "21601",
        "-1",
        "+5",
        " 5",
        "5 ",
        "1e3",
        "abc",
        "",
        "999999999999999999999",
        "60.0",
    ] {
        assert_eq!(status(Some(&v), put_token(bad)), 400, "{bad:?}");
    }
    let mut no_ttl = put_token("1");
    no_ttl.headers.clear();
    assert_eq!(status(Some(&v), no_ttl), 400, "no TTL");
    assert_eq!(
        status(
            Some(&v),
            put_token("5").header("x-aws-ec2-metadata-token-ttl-seconds", "5")
        ),
        400,
        "two TTLs"
    );
}

#[test]
fn a_token_put_through_a_proxy_is_refused() {
    let v = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    assert_eq!(
        status(
            Some(&v),
            put_token("60").header("x-forwarded-for", "10.0.1.5")
        ),
        403
    );
    assert_eq!(
        status(Some(&v), put_token("60").header("X-Forwarded-For", "")),
        403
    );
}

#[test]
fn tokens_belong_to_one_instance_and_expire() {
    let a = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    let b = view("i-0bbbbbbbbbbbbbbbb", B_IP);
    let token = text(&put_token("100").to(Some(&a)));
    let id = get("/latest/meta-data/instance-id").with_token(&token);
    assert_eq!(text(&id.to(Some(&a))), "i-0aaaaaaaaaaaaaaaa");
    assert_eq!(
        id.to(Some(&b)).status,
        StatusCode::UNAUTHORIZED,
        "A's token on B"
    );
    assert_eq!(id.at(Some(&a), NOW + 99).status, StatusCode::OK);
    assert_eq!(
        id.at(Some(&a), NOW + 100).status,
        StatusCode::UNAUTHORIZED,
        "expired"
    );
    for garbage in ["x", "", "AQ", &token[..54], &format!("{token}x")] {
        let c = get("/latest/meta-data/instance-id").with_token(garbage);
        assert_eq!(
            c.to(Some(&a)).status,
            StatusCode::UNAUTHORIZED,
            "{garbage:?}"
        );
    }
    let two = get("/latest/meta-data/instance-id")
        .with_token(&token)
        .with_token(&token);
    assert_eq!(two.to(Some(&a)).status, StatusCode::BAD_REQUEST);
}

#[test]
fn http_tokens_required_refuses_imdsv1() {
    let mut v = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    assert_eq!(
        status(Some(&v), get("/latest/meta-data/instance-id")),
        200,
        "v1 allowed"
    );
    v.options.tokens_required = true;
    assert_eq!(status(Some(&v), get("/latest/meta-data/instance-id")), 401);
    assert_eq!(status(Some(&v), get("/")), 401);
    let token = text(&put_token("60").to(Some(&v)));
    assert_eq!(
        status(
            Some(&v),
            get("/latest/meta-data/instance-id").with_token(&token)
        ),
        200
    );
}

#[test]
fn the_hop_limit_goes_with_token_replies_only() {
    let mut v = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    v.options.hop_limit = 3;
    assert_eq!(put_token("60").to(Some(&v)).hop_limit, Some(3));
    assert_eq!(get("/latest/meta-data/").to(Some(&v)).hop_limit, None);
    assert_eq!(put_token("0").to(Some(&v)).hop_limit, None);
}

#[test]
fn a_disabled_endpoint_answers_403_to_everything() {
    let mut v = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    let token = text(&put_token("60").to(Some(&v)));
    v.options.endpoint_enabled = false;
    assert_eq!(status(Some(&v), put_token("60")), 403);
    assert_eq!(status(Some(&v), get("/latest/meta-data/instance-id")), 403);
    assert_eq!(
        status(
            Some(&v),
            get("/latest/meta-data/instance-id").with_token(&token)
        ),
        403
    );
    assert_eq!(status(Some(&v), get("/nope")), 403);
    assert_eq!(status(None, get("/latest/meta-data/")), 403, "no instance");
}

#[test]
fn methods_and_odd_paths() {
    let v = view("i-0aaaaaaaaaaaaaaaa", A_IP);
    assert_eq!(status(Some(&v), get("/latest/api/token")), 405);
    let mut put = put_token("60");
    put.path = "/latest/meta-data/".into();
    assert_eq!(status(Some(&v), put), 405);
    let mut put = put_token("60");
    put.path = "/2021-03-23/api/token".into();
    assert_eq!(status(Some(&v), put), 405, "tokens come from latest only");
    for m in [Method::POST, Method::DELETE, Method::OPTIONS, Method::PATCH] {
        let mut c = get("/latest/meta-data/");
        c.method = m.clone();
        let r = c.to(Some(&v));
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert!(r.headers.iter().any(|(k, _)| *k == "allow"));
    }
    let mut head = get("/latest/meta-data/instance-id");
    head.method = Method::HEAD;
    assert_eq!(text(&head.to(Some(&v))), "i-0aaaaaaaaaaaaaaaa");
    // Dots and doubled slashes have no meaning: names are names.
    assert_eq!(status(Some(&v), get("/latest/meta-data/../user-data")), 404);
    assert_eq!(
        body(&v, "//latest//meta-data//instance-id"),
        "i-0aaaaaaaaaaaaaaaa"
    );
    assert_eq!(status(Some(&v), get("latest/meta-data/")), 400);
    let long = format!("/latest/{}", "a/".repeat(4000));
    assert_eq!(status(Some(&v), get(&long)), 404);
}

#[test]
fn tag_keys_that_can_be_paths() {
    for ok in ["Name", "env", "a.b", "k+v=x,y_z:w@h", "-"] {
        assert!(tag_key_servable(ok), "{ok}");
    }
    for bad in ["", ".", "..", "_index", "a b", "a/b", "é", "a\nb"] {
        assert!(!tag_key_servable(bad), "{bad:?}");
    }
}

/// Random paths and headers never make the handler panic, and only answer with the statuses
/// it has.
#[test]
fn random_requests_get_an_answer() {
    let v = full_view();
    let alphabet = b"/abcdefgilmnoprstuvy-0123456789.:=%?#\\\x7f ";
    let mut token = None;
    for i in 0..5000u32 {
        let len = (rand::random::<u8>() % 64) as usize;
        let path: String = (0..len)
            .map(|_| alphabet[rand::random::<u32>() as usize % alphabet.len()] as char)
            .collect();
        let method = [Method::GET, Method::PUT, Method::HEAD, Method::POST][i as usize % 4].clone();
        let mut c = Call {
            method,
            path: format!("/{path}"),
            headers: HeaderMap::new(),
        };
        if i % 3 == 0 {
            let ttl: u32 = rand::random::<u32>() % 30000;
            c = c.header("x-aws-ec2-metadata-token-ttl-seconds", &ttl.to_string());
        }
        if i % 5 == 0 {
            let t: String = token.clone().unwrap_or_else(|| "junk".into());
            c = c.with_token(&t);
        }
        let r = c.to(Some(&v));
        assert!(
            [200, 400, 401, 403, 404, 405].contains(&r.status.as_u16()),
            "{} {}: {}",
            c.method,
            c.path,
            r.status
        );
        if r.hop_limit.is_some() {
            token = Some(text(&r));
        }
    }
}

// --- HTTP, in memory ------------------------------------------------------------------------

/// A fixed set of instances by address; `fail` makes every lookup an error.
#[derive(Default)]
struct Fake {
    views: Mutex<HashMap<Ipv4Addr, InstanceView>>,
    fail: bool,
}

impl Lookup for Fake {
    fn instance_at(&self, vpc_id: &str, ip: Ipv4Addr) -> Result<Option<InstanceView>, String> {
        assert_eq!(vpc_id, "vpc-test");
        if self.fail {
            return Err("the database is gone".into());
        }
        Ok(self.views.lock().unwrap().get(&ip).cloned())
    }
}

fn test_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        connection_lifetime: Duration::from_secs(3),
        max_connections: 3,
        max_per_source: 2,
        ..Limits::default()
    }
}

fn context(fake: Fake) -> Arc<Context> {
    fake.views
        .lock()
        .unwrap()
        .insert(A_IP, view("i-0aaaaaaaaaaaaaaaa", A_IP));
    fake.views
        .lock()
        .unwrap()
        .insert(B_IP, view("i-0bbbbbbbbbbbbbbbb", B_IP));
    Arc::new(Context::new(
        "vpc-test",
        Arc::new(fake),
        key(),
        test_limits(),
    ))
}

/// A connection from `peer` served in memory: the client's end.
fn connect(ctx: &Arc<Context>, peer: Ipv4Addr) -> tokio::io::DuplexStream {
    let (client, server) = tokio::io::duplex(256 * 1024);
    tokio::spawn(serve_connection(server, peer, ctx.clone(), None));
    client
}

/// Everything the server sends until it closes the connection (at most 10 s).
async fn read_all(c: &mut tokio::io::DuplexStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One response's head and body (Content-Length framed), read from an open connection.
async fn read_response(c: &mut tokio::io::DuplexStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut byte))
            .await
            .expect("a response in time")
            .unwrap();
        assert_eq!(n, 1, "closed early: {}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let code: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.unwrap();
    (code, head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn requests_over_one_kept_alive_connection() {
    let ctx = context(Fake::default());
    let mut c = connect(&ctx, A_IP);
    c.write_all(b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")
        .await
        .unwrap();
    let (code, head, token) = read_response(&mut c).await;
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("server: ec2ws"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("x-aws-ec2-metadata-token-ttl-seconds: 60"),
        "{head}"
    );
    c.write_all(format!("GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (code, _, id) = read_response(&mut c).await;
    assert_eq!((code, id.as_str()), (200, "i-0aaaaaaaaaaaaaaaa"));
    // A GET with a body is answered and the connection stays usable.
    c.write_all(
        b"GET /latest/meta-data/local-ipv4 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let (code, _, ip) = read_response(&mut c).await;
    assert_eq!((code, ip.as_str()), (200, "10.0.1.5"));
    c.write_all(b"GET /latest/meta-data/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = read_all(&mut c).await;
    assert!(rest.starts_with("HTTP/1.1 404"), "{rest}");
}

#[tokio::test]
async fn the_address_decides_the_instance() {
    let ctx = context(Fake::default());
    let mut a = connect(&ctx, A_IP);
    a.write_all(
        b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
    )
    .await
    .unwrap();
    let (_, _, token) = read_response(&mut a).await;
    let mut b = connect(&ctx, B_IP);
    b.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut b).await.2, "i-0bbbbbbbbbbbbbbbb");
    b.write_all(format!("GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut b).await.0,
        401,
        "A's token from B's address"
    );
    let mut stranger = connect(&ctx, Ipv4Addr::new(10, 0, 1, 99));
    stranger
        .write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_all(&mut stranger).await.starts_with("HTTP/1.1 403"));
}

#[tokio::test]
async fn huge_and_many_headers_are_refused() {
    let ctx = context(Fake::default());
    let mut c = connect(&ctx, A_IP);
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    c.write_all(big.as_bytes()).await.unwrap();
    let out = read_all(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let mut c = connect(&ctx, A_IP);
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    c.write_all(many.as_bytes()).await.unwrap();
    let out = read_all(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
}

#[tokio::test]
async fn large_and_slow_bodies_are_refused() {
    let ctx = context(Fake::default());
    let mut c = connect(&ctx, A_IP);
    c.write_all(b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    c.write_all(&[b'x'; 8192]).await.unwrap();
    let out = read_all(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    let mut c = connect(&ctx, A_IP);
    c.write_all(b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let t = Instant::now();
    let out = read_all(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_slow_client_is_cut_off() {
    let ctx = context(Fake::default());
    let mut c = connect(&ctx, A_IP);
    c.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169")
        .await
        .unwrap();
    let t = Instant::now();
    let out = read_all(&mut c).await;
    assert!(!out.contains("200 OK"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "closed after the header timeout, not the test's read timeout"
    );
    // A connection that sends nothing, or nothing more after a request, is closed by the same
    // timeout (300 ms here), well before its lifetime (3 s).
    let mut idle = connect(&ctx, A_IP);
    let t = Instant::now();
    assert_eq!(read_all(&mut idle).await, "");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let mut kept = connect(&ctx, A_IP);
    kept.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept).await.0, 200);
    let t = Instant::now();
    assert_eq!(read_all(&mut kept).await, "");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_busy_connection_ends_with_its_lifetime() {
    let ctx = context(Fake::default());
    let mut c = connect(&ctx, A_IP);
    let t = Instant::now();
    let mut answered = 0;
    loop {
        let sent = c
            .write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
            .await;
        let mut first = [0u8; 12];
        let got = tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut first)).await;
        if sent.is_err() || !matches!(got, Ok(Ok(_))) {
            break;
        }
        assert_eq!(&first, b"HTTP/1.1 200");
        // The rest of the response: its head and the 19-byte id.
        let mut rest = Vec::new();
        while !rest.ends_with(b"i-0aaaaaaaaaaaaaaaa") {
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
            rest.push(b[0]);
        }
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lived = t.elapsed();
    assert!(answered > 5, "{answered}");
    assert!(
        lived >= Duration::from_millis(2900) && lived < Duration::from_secs(6),
        "closed after {lived:?} (lifetime 3 s)"
    );
}

#[tokio::test]
async fn garbage_gets_400_or_a_closed_connection() {
    let ctx = context(Fake::default());
    let cases: [&[u8]; 6] = [
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for raw in cases {
        let mut c = connect(&ctx, A_IP);
        c.write_all(raw).await.unwrap();
        let out = read_all(&mut c).await;
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 4") || out.starts_with("HTTP/1.0 4"),
            "{:?}: {out}",
            String::from_utf8_lossy(raw)
        );
    }
    // Random bytes: the connection ends (answered or not) and nothing panics.
    for _ in 0..200 {
        let len = rand::random::<u16>() as usize % 2048;
        let junk: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        let mut c = connect(&ctx, A_IP);
        c.write_all(&junk).await.unwrap();
        c.write_all(b"\r\n\r\n").await.unwrap();
        let _ = read_all(&mut c).await;
    }
    // The service still answers.
    let mut c = connect(&ctx, A_IP);
    c.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.2, "i-0aaaaaaaaaaaaaaaa");
}

#[tokio::test]
async fn a_lookup_failure_is_a_500() {
    let ctx = context(Fake {
        fail: true,
        ..Fake::default()
    });
    let mut c = connect(&ctx, A_IP);
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut c).await.0, 500);
}

#[test]
fn connections_are_limited_per_namespace_and_address() {
    let ctx = context(Fake::default());
    let a1 = ctx.admit(A_IP).expect("first");
    let a2 = ctx.admit(A_IP).expect("second");
    assert!(ctx.admit(A_IP).is_none(), "two per address");
    let b1 = ctx.admit(B_IP).expect("another address");
    assert!(
        ctx.admit(Ipv4Addr::new(10, 0, 1, 7)).is_none(),
        "three per namespace"
    );
    drop(a1);
    assert!(ctx.admit(A_IP).is_some(), "a slot freed");
    drop((a2, b1));
    let again: Vec<_> = (0..2).map(|_| ctx.admit(A_IP).unwrap()).collect();
    assert_eq!(again.len(), 2);
}
