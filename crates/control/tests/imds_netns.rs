//! The metadata service's listener in real network namespaces (root needed; the test fails
//! with one line without it): vireod's [`Registry`] binds 169.254.169.254:80 inside a
//! namespace standing for a VPC's, and a "guest" namespace, joined to it by a veth and routed
//! through it, asks over TCP as a guest would. Behind the guest, a "container" namespace (one
//! more hop, NATed by the guest as Docker does) shows HttpPutResponseHopLimit at work: with 1
//! its token PUT gets no answer while IMDSv1 GETs do; with 2 it gets its token. A namespace
//! made again under the same name gets a new listener; a removed one answers no more.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vireo_control::imds::{InstanceView, InterfaceView, Lookup, Registry, TokenKey};
use vireo_control::model::MetadataOptions;

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]))
}

fn must(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test's namespaces, removed when it ends (pass or fail).
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, ns: &str) {
        must(&["ip", "netns", "add", ns]);
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        self.0.push(ns.to_string());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// A veth `{name}0` in `a` (address `aa/24`) and `{name}1` in `b` (`ba/24`).
fn link(a: &str, aa: &str, b: &str, ba: &str, name: &str) {
    let (ea, eb) = (format!("{name}0"), format!("{name}1"));
    must(&[
        "ip", "-n", a, "link", "add", &ea, "type", "veth", "peer", "name", &eb, "netns", b,
    ]);
    must(&[
        "ip",
        "-n",
        a,
        "addr",
        "add",
        &format!("{aa}/24"),
        "dev",
        &ea,
    ]);
    must(&[
        "ip",
        "-n",
        b,
        "addr",
        "add",
        &format!("{ba}/24"),
        "dev",
        &eb,
    ]);
    must(&["ip", "-n", a, "link", "set", &ea, "up"]);
    must(&["ip", "-n", b, "link", "set", &eb, "up"]);
}

/// The one instance, at [`GUEST`] in `vpc-test`, with options the test changes.
struct One(Mutex<MetadataOptions>);

impl Lookup for One {
    fn instance_at(&self, vpc_id: &str, ip: Ipv4Addr) -> Result<Option<InstanceView>, String> {
        if vpc_id != "vpc-test" || ip != GUEST {
            return Ok(None);
        }
        Ok(Some(InstanceView {
            instance_id: "i-0123456789abcdef0".into(),
            image_id: "ami-0123456789abcdef0".into(),
            instance_type: "t3.nano".into(),
            reservation_id: "r-0123456789abcdef0".into(),
            launch_index: 0,
            account_id: "123456789012".into(),
            launch_time: "2024-01-01T00:00:00.000Z".into(),
            region: "vireo-test-1".into(),
            availability_zone: "vireo-test-1a".into(),
            domain: "vireo-test-1.compute.internal".into(),
            options: *self.0.lock().unwrap(),
            user_data: Vec::new(),
            key: None,
            tags: Vec::new(),
            interfaces: vec![InterfaceView {
                device_number: 0,
                eni_id: "eni-0123456789abcdef0".into(),
                mac: "02:00:0a:09:00:02".into(),
                private_ip: GUEST,
                subnet_id: "subnet-0123456789abcdef0".into(),
                subnet_cidr: "10.9.0.0/24".into(),
                vpc_id: "vpc-test".into(),
                vpc_cidr: "10.9.0.0/16".into(),
                group_ids: vec!["sg-0123456789abcdef0".into()],
                group_names: vec!["default".into()],
                public_ip: None,
                public_dns: None,
            }],
        }))
    }
}

/// One HTTP/1.1 request from namespace `ns` to 169.254.169.254:80: the status and body, or
/// `None` if no answer came within 3 s.
fn http(ns: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::new(169, 254, 169, 254), 80));
    let s = vireo_net::in_netns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .unwrap()
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    (&s).write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    (&s).read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.get(9..12)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn token(ns: &str) -> Option<(u16, String)> {
    http(
        ns,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
    )
}

#[test]
fn guests_reach_the_listener_and_the_hop_limit_stops_a_container() {
    // SAFETY: geteuid only reads the process's credentials.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "this test needs root (network namespaces)");
    let tag = format!("vireo-imdst{}", std::process::id() % 100_000);
    let (vpc, guest, container) = (format!("{tag}-v"), format!("{tag}-g"), format!("{tag}-c"));
    let mut nss = Namespaces(Vec::new());
    for ns in [&vpc, &guest, &container] {
        nss.add(ns);
    }
    // The VPC side: the router at 10.9.0.1 with the metadata address on its loopback.
    link(&vpc, "10.9.0.1", &guest, "10.9.0.2", "imds");
    must(&[
        "ip",
        "-n",
        &vpc,
        "addr",
        "add",
        "169.254.169.254/32",
        "dev",
        "lo",
    ]);
    must(&[
        "ip", "-n", &guest, "route", "add", "default", "via", "10.9.0.1",
    ]);
    // The container behind the guest, which forwards and masquerades it.
    link(&guest, "10.9.1.1", &container, "10.9.1.2", "ctr");
    must(&[
        "ip", "-n", &container, "route", "add", "default", "via", "10.9.1.1",
    ]);
    vireo_net::in_netns(&guest, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap()
    })
    .unwrap();
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &guest, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    nft.stdin
        .take()
        .unwrap()
        .write_all(
            b"table ip nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n  \
              oifname \"imds1\" masquerade\n }\n}\n",
        )
        .unwrap();
    assert!(nft.wait().unwrap().success());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let registry = Registry::new(rt.handle().clone(), Default::default());
    let options = Arc::new(One(Mutex::new(MetadataOptions::default())));
    registry.serve(options.clone(), TokenKey::random());
    registry.namespace_ready("vpc-test", 0, &vpc).unwrap();
    assert_eq!(registry.listening(), vec![("vpc-test".to_string(), 0)]);
    // Again: nothing changes (the same namespace keeps its listener).
    registry.namespace_ready("vpc-test", 0, &vpc).unwrap();

    // The guest: IMDSv2 and IMDSv1.
    let (code, t) = token(&guest).expect("the guest gets an answer");
    assert_eq!(code, 200, "{t}");
    let with_token = [("X-aws-ec2-metadata-token", t.as_str())];
    assert_eq!(
        http(&guest, "GET", "/latest/meta-data/instance-id", &with_token),
        Some((200, "i-0123456789abcdef0".to_string()))
    );
    assert_eq!(
        http(&guest, "GET", "/latest/meta-data/local-ipv4", &[]),
        Some((200, "10.9.0.2".to_string()))
    );

    // The container, one hop further: hop limit 1 (EC2's default) lets no token reach it,
    // while IMDSv1 (not limited, as on EC2) does.
    assert_eq!(token(&container), None, "no token one hop further");
    assert_eq!(
        http(&container, "GET", "/latest/meta-data/instance-id", &[]),
        Some((200, "i-0123456789abcdef0".to_string())),
        "the container is the guest's address to the service"
    );
    options.0.lock().unwrap().hop_limit = 2;
    assert_eq!(token(&container).map(|r| r.0), Some(200), "hop limit 2");
    options.0.lock().unwrap().tokens_required = true;
    assert_eq!(
        http(&container, "GET", "/latest/meta-data/instance-id", &[]).map(|r| r.0),
        Some(401)
    );
    options.0.lock().unwrap().endpoint_enabled = false;
    assert_eq!(token(&guest).map(|r| r.0), Some(403));
    *options.0.lock().unwrap() = MetadataOptions::default();

    // The namespace made again under its name is a new one: a new listener there.
    // (Its links first, as vireo-net's remove_vpc does: the old listener's socket keeps the
    // old namespace alive, and with it whatever is left in it.)
    must(&["ip", "-n", &vpc, "link", "del", "imds0"]);
    must(&["ip", "netns", "del", &vpc]);
    nss.0.retain(|n| n != &vpc);
    nss.add(&vpc);
    link(&vpc, "10.9.0.1", &guest, "10.9.0.2", "imds");
    must(&[
        "ip",
        "-n",
        &vpc,
        "addr",
        "add",
        "169.254.169.254/32",
        "dev",
        "lo",
    ]);
    must(&[
        "ip", "-n", &guest, "route", "replace", "default", "via", "10.9.0.1",
    ]);
    assert_eq!(
        token(&guest),
        None,
        "nothing listens in the new namespace yet"
    );
    registry.namespace_ready("vpc-test", 0, &vpc).unwrap();
    assert_eq!(token(&guest).map(|r| r.0), Some(200));

    // Removed: the listener closes.
    registry.namespace_removed("vpc-test", 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(token(&guest), None);
    assert!(registry.listening().is_empty());
    drop(nss);
    let left = must(&["ip", "netns", "list"]);
    assert!(!left.contains(&tag), "{left}");
}
