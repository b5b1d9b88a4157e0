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

mod http;
