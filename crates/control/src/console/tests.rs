//! The console over a real loopback listener: sign-in against the key store, the session
//! cookie's attributes, expiry, sign-out, the CSRF refusals (no token, a wrong one, a foreign or
//! missing Origin) changing nothing, and answers that come from the service layer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{router, ConsoleConfig, CONTENT_SECURITY_POLICY};
use crate::db::Db;
use crate::model::{KeyType, Tag};
use crate::service::{Capacity, Config, Service};

const KEY_ID: &str = "AKIAVIREOTESTKEY0001";
const SECRET: &str = "c29tZSBzZWNyZXQgdGhhdCBpcyBsb25nIGVub3VnaA";

struct Server {
    addr: SocketAddr,
    svc: Service,
    _data: tempfile::TempDir,
}

async fn server(cfg: ConsoleConfig) -> Server {
    let data = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: data.path().to_path_buf(),
        vmm_bin: PathBuf::new(),
        capacity: Capacity {
            vcpus: 0,
            memory_mib: 0,
        },
        shutdown_timeout: Duration::ZERO,
        region: "vireo-test-1".into(),
        hosts: Vec::new(),
        import_dirs: Vec::new(),
        public_cidr: None,
    };
    {
        let db = Db::open(&config.db_path()).unwrap();
        db.set_setting("owner_id", "123456789012").unwrap();
        db.add_access_key(KEY_ID, SECRET, "2026-01-01T00:00:00Z")
            .unwrap();
    }
    let svc = Service::open(config).unwrap();
    let app: axum::Router = router(svc.clone(), cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        addr,
        svc,
        _data: data,
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection; `headers` are added as given (so a test can
/// leave out Origin or the CSRF token).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn origin(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Signs in; returns the cookie header value and the CSRF token.
async fn sign_in(addr: SocketAddr) -> (String, String) {
    let o = origin(addr);
    let body = format!(r#"{{"access_key_id":"{KEY_ID}","secret_access_key":"{SECRET}"}}"#);
    let r = request(
        addr,
        "POST",
        "/console/api/signin",
        &[("Origin", &o)],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r.header("set-cookie").unwrap();
    let pair = cookie.split(';').next().unwrap().to_string();
    (pair, r.json()["csrf_token"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_with_an_expiry() {
    let s = server(ConsoleConfig::default()).await;
    let o = origin(s.addr);
    let body = format!(r#"{{"access_key_id":"{KEY_ID}","secret_access_key":"{SECRET}"}}"#);
    let r = request(
        s.addr,
        "POST",
        "/console/api/signin",
        &[("Origin", &o)],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("vireo_console="), "{cookie}");
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    assert!(!cookie.contains("Secure"), "no TLS, no Secure: {cookie}");
    let j = r.json();
    assert_eq!(j["access_key_id"], KEY_ID);
    assert_eq!(j["account_id"], "123456789012");
    assert_eq!(j["csrf_token"].as_str().unwrap().len(), 64);
    // The cookie opens the session.
    let pair = cookie.split(';').next().unwrap();
    let r = request(
        s.addr,
        "GET",
        "/console/api/session",
        &[("Cookie", pair)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["csrf_token"], j["csrf_token"]);
}

#[tokio::test]
async fn under_tls_the_cookie_is_secure_and_the_origin_https() {
    let s = server(ConsoleConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    let body = format!(r#"{{"access_key_id":"{KEY_ID}","secret_access_key":"{SECRET}"}}"#);
    let http = origin(s.addr);
    let r = request(
        s.addr,
        "POST",
        "/console/api/signin",
        &[("Origin", &http)],
        Some(&body),
    )
    .await;
    assert_eq!(
        r.status, 403,
        "an http origin is not the console's: {}",
        r.body
    );
    let https = format!("https://{}", s.addr);
    let r = request(
        s.addr,
        "POST",
        "/console/api/signin",
        &[("Origin", &https)],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("set-cookie").unwrap().contains("; Secure"));
}

#[tokio::test]
async fn a_wrong_secret_or_unknown_key_is_refused_alike_and_opens_nothing() {
    let s = server(ConsoleConfig::default()).await;
    let o = origin(s.addr);
    let mut messages = Vec::new();
    for (key, secret) in [
        (KEY_ID, "wrong"),
        (KEY_ID, &SECRET[..SECRET.len() - 1]),
        (KEY_ID, ""),
        ("AKIANOSUCHKEY0000000", SECRET),
    ] {
        let body = serde_json::json!({"access_key_id": key, "secret_access_key": secret});
        let r = request(
            s.addr,
            "POST",
            "/console/api/signin",
            &[("Origin", &o)],
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.header("set-cookie").is_none());
        messages.push(r.json()["message"].as_str().unwrap().to_string());
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:?}");
    // Unauthenticated API calls are refused; the page itself is served with its policy.
    let r = request(s.addr, "GET", "/console/api/instances", &[], None).await;
    assert_eq!(r.status, 401);
    let r = request(s.addr, "GET", "/console/", &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-security-policy"),
        Some(CONTENT_SECURITY_POLICY)
    );
    assert!(r.body.contains("/console/app.js"));
}

#[tokio::test]
async fn a_session_ends_at_its_expiry_and_at_sign_out() {
    let s = server(ConsoleConfig {
        session_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let (cookie, _) = sign_in(s.addr).await;
    let get = |c: String| async move {
        request(
            s.addr,
            "GET",
            "/console/api/session",
            &[("Cookie", &c)],
            None,
        )
        .await
        .status
    };
    assert_eq!(get(cookie.clone()).await, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(get(cookie).await, 401, "expired");

    let s = server(ConsoleConfig::default()).await;
    let (cookie, csrf) = sign_in(s.addr).await;
    let o = origin(s.addr);
    let r = request(
        s.addr,
        "POST",
        "/console/api/signout",
        &[("Cookie", &cookie), ("Origin", &o), ("X-CSRF-Token", &csrf)],
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = request(
        s.addr,
        "GET",
        "/console/api/session",
        &[("Cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "signed out");
}

#[tokio::test]
async fn changes_without_the_csrf_token_or_from_another_origin_are_refused() {
    let s = server(ConsoleConfig::default()).await;
    let (cookie, csrf) = sign_in(s.addr).await;
    let o = origin(s.addr);
    let body = r#"{"key_name":"from-the-console","key_type":"ed25519"}"#;
    let wrong = "0".repeat(64);
    for (what, headers) in [
        (
            "no token",
            vec![("Cookie", cookie.as_str()), ("Origin", o.as_str())],
        ),
        (
            "a wrong token",
            vec![
                ("Cookie", cookie.as_str()),
                ("Origin", o.as_str()),
                ("X-CSRF-Token", wrong.as_str()),
            ],
        ),
        (
            "a foreign origin",
            vec![
                ("Cookie", cookie.as_str()),
                ("Origin", "http://evil.example"),
                ("X-CSRF-Token", csrf.as_str()),
            ],
        ),
        (
            "no origin",
            vec![("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())],
        ),
    ] {
        let r = request(
            s.addr,
            "POST",
            "/console/api/key-pairs",
            &headers,
            Some(body),
        )
        .await;
        assert_eq!(r.status, 403, "{what}: {}", r.body);
        assert_eq!(r.json()["code"], "CsrfRefused", "{what}");
    }
    assert!(
        s.svc.describe_key_pairs(&[], &[], &[]).unwrap().is_empty(),
        "a refused change changed nothing"
    );
    // Sign-in from another origin is refused too.
    let signin = format!(r#"{{"access_key_id":"{KEY_ID}","secret_access_key":"{SECRET}"}}"#);
    let r = request(
        s.addr,
        "POST",
        "/console/api/signin",
        &[("Origin", "http://evil.example")],
        Some(&signin),
    )
    .await;
    assert_eq!(r.status, 403);
    // With both, the change is made, through the service.
    let r = request(
        s.addr,
        "POST",
        "/console/api/key-pairs",
        &[("Cookie", &cookie), ("Origin", &o), ("X-CSRF-Token", &csrf)],
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert!(j["private_key"]
        .as_str()
        .unwrap()
        .contains("BEGIN OPENSSH PRIVATE KEY"));
    let pairs = s.svc.describe_key_pairs(&[], &[], &[]).unwrap();
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].key_pair_id, j["key_pair_id"].as_str().unwrap());
}

#[tokio::test]
async fn the_api_answers_from_the_service_layer() {
    let s = server(ConsoleConfig::default()).await;
    let xss = "<img src=x onerror=alert(1)>";
    let vpc = s
        .svc
        .create_vpc(
            "10.20.0.0/16",
            &[Tag {
                key: "Name".into(),
                value: xss.into(),
            }],
        )
        .unwrap();
    s.svc
        .create_key_pair("made-by-the-service", KeyType::Ed25519, Vec::new())
        .await
        .unwrap();
    let (cookie, csrf) = sign_in(s.addr).await;
    let get = |path: &'static str| {
        let c = cookie.clone();
        async move {
            let r = request(s.addr, "GET", path, &[("Cookie", &c)], None).await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            r.json()
        }
    };
    let vpcs = get("/console/api/vpcs").await;
    let ours = vpcs["vpcs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vpc_id"] == vpc.vpc_id.as_str())
        .expect("the new VPC is listed");
    assert_eq!(ours["cidr_block"], "10.20.0.0/16");
    assert_eq!(
        ours["tags"][0]["value"], xss,
        "tag values are data, unchanged"
    );
    assert!(
        vpcs["vpcs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["is_default"] == true),
        "the default VPC"
    );
    let types = get("/console/api/instance-types").await;
    assert_eq!(
        types["instance_types"].as_array().unwrap().len(),
        crate::types::CATALOG.len()
    );
    let pairs = get("/console/api/key-pairs").await;
    assert_eq!(pairs["key_pairs"][0]["key_name"], "made-by-the-service");
    let groups = get("/console/api/security-groups").await;
    assert!(groups["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["vpc_id"] == vpc.vpc_id.as_str() && g["group_name"] == "default"));
    assert_eq!(
        get("/console/api/subnets").await["subnets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        get("/console/api/images").await["images"],
        serde_json::json!([])
    );
    assert_eq!(
        get("/console/api/instances").await["instances"],
        serde_json::json!([])
    );
    // The service's own errors come through with their EC2 codes.
    let o = origin(s.addr);
    let r = request(
        s.addr,
        "POST",
        "/console/api/instances",
        &[("Cookie", &cookie), ("Origin", &o), ("X-CSRF-Token", &csrf)],
        Some(r#"{"image_id":"ami-0123456789abcdef0","instance_type":"t3.micro","count":1}"#),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["code"], "InvalidAMIID.NotFound");
    let r = request(
        s.addr,
        "POST",
        "/console/api/instances/action",
        &[("Cookie", &cookie), ("Origin", &o), ("X-CSRF-Token", &csrf)],
        Some(r#"{"action":"stop","instance_ids":["i-0123456789abcdef0"]}"#),
    )
    .await;
    assert_eq!(r.json()["code"], "InvalidInstanceID.NotFound", "{}", r.body);
    let r = request(
        s.addr,
        "GET",
        "/console/api/instances/not-an-id",
        &[("Cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(
        r.json()["code"],
        "InvalidInstanceID.Malformed",
        "{}",
        r.body
    );
}

#[tokio::test]
async fn tags_are_set_and_removed_with_create_tags_rules() {
    let s = server(ConsoleConfig::default()).await;
    let vpc = s.svc.create_vpc("10.30.0.0/16", &[]).unwrap();
    let (cookie, csrf) = sign_in(s.addr).await;
    let o = origin(s.addr);
    let post = |path: &'static str, body: String| {
        let (cookie, csrf, o) = (cookie.clone(), csrf.clone(), o.clone());
        async move {
            request(
                s.addr,
                "POST",
                path,
                &[("Cookie", &cookie), ("Origin", &o), ("X-CSRF-Token", &csrf)],
                Some(&body),
            )
            .await
        }
    };
    let id = vpc.vpc_id.clone();
    let r = post(
        "/console/api/tags",
        serde_json::json!({"resource_id": id, "tags": [{"key": "env", "value": "<b>prod</b>"}, {"key": "team", "value": "a"}]})
            .to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tags"][0]["value"], "<b>prod</b>");
    let tags_now = |s: &Server| {
        let (v, _) = s
            .svc
            .describe_vpcs(&crate::service::DescribeQuery {
                ids: vec![id.clone()],
                ..Default::default()
            })
            .unwrap();
        let mut t: Vec<(String, String)> = v[0]
            .tags
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect();
        t.sort();
        t
    };
    assert_eq!(
        tags_now(&s),
        vec![
            ("env".into(), "<b>prod</b>".into()),
            ("team".into(), "a".into())
        ]
    );
    // CreateTags' rules: a reserved key is refused and nothing changes.
    let r = post(
        "/console/api/tags",
        serde_json::json!({"resource_id": id, "tags": [{"key": "aws:x", "value": "1"}]})
            .to_string(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "InvalidParameterValue");
    let r = post(
        "/console/api/tags",
        serde_json::json!({"resource_id": "vpc-0123456789abcdef0", "tags": [{"key": "k", "value": "1"}]})
            .to_string(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Removing names its keys; none named is refused (DeleteTags would remove them all).
    let r = post(
        "/console/api/tags/delete",
        serde_json::json!({"resource_id": id, "keys": []}).to_string(),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = post(
        "/console/api/tags/delete",
        serde_json::json!({"resource_id": id, "keys": ["env"]}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(tags_now(&s), vec![("team".into(), "a".into())]);
}
