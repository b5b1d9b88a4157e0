//! vireod's data plane ([`LinuxPlane`]: its worker queue, `vireo-net` underneath) on this
//! host's kernel, without guests (root needed; the test fails with one line without it): a
//! security group change is in force once [`NetworkPlane::settle`] has returned, which is what
//! the API waits for before it answers AuthorizeSecurityGroupIngress/Egress,
//! RevokeSecurityGroupIngress/Egress, ModifySecurityGroupRules, DeleteSecurityGroup and
//! ModifyInstanceAttribute GroupId.N. Each "instance" is a namespace whose `eth0` TAP is pumped
//! frame by frame to the interface's TAP, opened with the plane's `open_tap` as vireod opens
//! it for the VMM. The first connection tried after each change is the one checked: no retry,
//! no sleep. A change the data plane cannot make is an error of `settle`, and the rules in
//! force stay as they were. How long each change took is printed, not asserted.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vireo_control::netmodel::Protocol;
use vireo_control::service::dataplane::{remove_all, LinuxPlane};
use vireo_control::service::network::{
    GroupNetwork, InterfaceNetwork, NetworkPlane, RuleNetwork, RulePeer, SubnetNetwork, VpcNetwork,
};

const VPC: &str = "vpc-0a1b2c3d4e5f60718";
const BOUND: Duration = Duration::from_secs(30);

fn must(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rule(id: &str, protocol: Protocol, ports: (i32, i32), cidr: &str) -> RuleNetwork {
    RuleNetwork {
        rule_id: id.into(),
        protocol,
        from_port: ports.0,
        to_port: ports.1,
        peer: RulePeer::Cidr(cidr.parse().unwrap()),
    }
}

fn iface(eni: &str, ip: [u8; 4], groups: &[&str]) -> InterfaceNetwork {
    InterfaceNetwork {
        eni_id: eni.into(),
        mac: format!("02:00:0a:00:01:{:02x}", ip[3]),
        private_ip: Ipv4Addr::from(ip),
        subnet_id: "subnet-0a1b2c3d4e5f60718".into(),
        host_name: format!("ip-10-0-1-{}", ip[3]),
        instance_id: None,
        host: 0,
        instance_running: true,
        device_index: Some(0),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        public_ip: None,
    }
}

/// A server (10.0.1.10, `sg-0000000000000000a`: tcp 22 in from the subnet, no egress rule) and
/// a client (10.0.1.5, `sg-0000000000000000b`: nothing in, all out).
fn desired() -> VpcNetwork {
    VpcNetwork {
        vpc_id: VPC.into(),
        cidr: "10.0.0.0/16".parse().unwrap(),
        enable_dns_support: true,
        enable_dns_hostnames: false,
        region: "vireo-test-1".into(),
        dns_domain: "vireo-test-1.compute.internal".into(),
        subnets: vec![SubnetNetwork {
            subnet_id: "subnet-0a1b2c3d4e5f60718".into(),
            cidr: "10.0.1.0/24".parse().unwrap(),
            router: Ipv4Addr::new(10, 0, 1, 1),
            internet_routes: Vec::new(),
        }],
        interfaces: vec![
            iface(
                "eni-0000000000000000a",
                [10, 0, 1, 10],
                &["sg-0000000000000000a"],
            ),
            iface(
                "eni-0000000000000000b",
                [10, 0, 1, 5],
                &["sg-0000000000000000b"],
            ),
        ],
        groups: vec![
            GroupNetwork {
                group_id: "sg-0000000000000000a".into(),
                ingress: vec![rule("sgr-1", Protocol::Tcp, (22, 22), "10.0.1.0/24")],
                egress: Vec::new(),
                members: vec![Ipv4Addr::new(10, 0, 1, 10)],
            },
            GroupNetwork {
                group_id: "sg-0000000000000000b".into(),
                ingress: Vec::new(),
                egress: vec![rule("sgr-2", Protocol::All, (-1, -1), "0.0.0.0/0")],
                members: vec![Ipv4Addr::new(10, 0, 1, 5)],
            },
        ],
        internet_gateway: None,
        nat: Vec::new(),
    }
}

/// Copies frames both ways between two TAP fds until dropped.
struct Pump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pump {
    fn start(a: OwnedFd, b: OwnedFd) -> Pump {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 70_000];
            let mut files = [std::fs::File::from(a), std::fs::File::from(b)];
            while !s.load(Ordering::Relaxed) {
                let mut fds = files.each_ref().map(|f| libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                // SAFETY: `fds` is a valid array of two pollfds for the call's duration.
                if unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) } <= 0 {
                    continue;
                }
                for (from, to) in [(0usize, 1usize), (1, 0)] {
                    if fds[from].revents & libc::POLLIN != 0 {
                        if let Ok(len) = files[from].read(&mut buf) {
                            // Both TAPs carry the same virtio-net header: frames go verbatim.
                            let _ = files[to].write(&buf[..len]);
                        }
                    }
                }
            }
        });
        Pump {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the test made, removed when it ends (pass or fail).
struct World {
    dir: tempfile::TempDir,
    hosts: Vec<vireo_control::hosts::Host>,
    netns: Vec<String>,
    pumps: Vec<Pump>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.pumps.clear();
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if let Err(e) = remove_all(self.dir.path(), &self.hosts) {
            eprintln!("clean-up: {e}");
        }
    }
}

/// A fake instance of `eni` at `ip`: a namespace whose `eth0` is pumped to the interface's
/// TAP; returns the namespace.
fn instance(w: &mut World, plane: &LinuxPlane, eni: &str, mac: &str, ip: Ipv4Addr) -> String {
    let ns = format!(
        "vireo-sgt-{}-{}",
        std::process::id() % 10_000,
        w.netns.len()
    );
    must(&["ip", "netns", "add", &ns]);
    w.netns.push(ns.clone());
    must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    must(&[
        "ip", "-n", &ns, "tuntap", "add", "dev", "eth0", "mode", "tap", "vnet_hdr",
    ]);
    must(&["ip", "-n", &ns, "link", "set", "eth0", "address", mac, "up"]);
    must(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        "eth0",
    ]);
    must(&[
        "ip", "-n", &ns, "route", "add", "default", "via", "10.0.1.1",
    ]);
    let outer = plane
        .open_tap(VPC, 0, eni)
        .unwrap_or_else(|e| panic!("open_tap: {e}"))
        .expect("a TAP");
    let inner = vireo_net::open_tap(&ns, "eth0").unwrap();
    w.pumps.push(Pump::start(outer, inner));
    ns
}

/// Whether a connection from `ns` to `to:port` gets the server's greeting (one attempt, 1 s).
fn reaches(ns: &str, to: Ipv4Addr, port: u16) -> bool {
    let addr = SocketAddr::from((to, port));
    vireo_net::in_netns(ns, || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if n > 0)
    })
    .unwrap()
}

/// A server in `ns` on `ip:port` that greets every connection.
fn serve(ns: &str, ip: Ipv4Addr, port: u16) {
    let l = vireo_net::in_netns(ns, || TcpListener::bind((ip, port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"hello\n");
        }
    });
}

/// Hands `d` to the plane and waits as the API does; returns how long that took.
fn change(plane: &LinuxPlane, d: &VpcNetwork) -> Duration {
    let t0 = Instant::now();
    plane.apply(d).unwrap();
    plane
        .settle(VPC, BOUND)
        .unwrap_or_else(|e| panic!("settle: {e}"));
    t0.elapsed()
}

#[test]
fn a_group_change_is_in_force_once_settle_returns() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (network namespaces, nftables)");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let hosts = vireo_control::hosts::plan(dir.path(), 0).unwrap();
    let plane = LinuxPlane::new(dir.path(), hosts.clone(), None).unwrap();
    let mut w = World {
        dir,
        hosts,
        netns: Vec::new(),
        pumps: Vec::new(),
    };
    let d = desired();
    let first = change(&plane, &d);
    let server = Ipv4Addr::new(10, 0, 1, 10);
    let srv = instance(
        &mut w,
        &plane,
        "eni-0000000000000000a",
        "02:00:0a:00:01:0a",
        server,
    );
    let cli = instance(
        &mut w,
        &plane,
        "eni-0000000000000000b",
        "02:00:0a:00:01:05",
        Ipv4Addr::new(10, 0, 1, 5),
    );
    serve(&srv, server, 22);
    serve(&srv, server, 80);
    // The first exchange (ARP through fresh TAPs) before the test's own.
    let t = Instant::now();
    while !reaches(&cli, server, 22) {
        assert!(t.elapsed() < Duration::from_secs(10), "22 never reachable");
    }
    let mut times = vec![("first apply (namespace, TAPs, dnsmasq)", first)];

    // RevokeSecurityGroupIngress: the next connection is refused.
    let mut revoked = d.clone();
    revoked.groups[0].ingress.clear();
    times.push(("ingress revoke", change(&plane, &revoked)));
    assert!(!reaches(&cli, server, 22), "22 refused once settled");
    // AuthorizeSecurityGroupIngress: the next connection gets through.
    let mut port80 = d.clone();
    port80.groups[0]
        .ingress
        .push(rule("sgr-3", Protocol::Tcp, (80, 80), "10.0.1.5/32"));
    times.push(("ingress authorize", change(&plane, &port80)));
    assert!(reaches(&cli, server, 80), "80 open once settled");
    // RevokeSecurityGroupEgress of the client's allow-all, then authorized again.
    let mut no_egress = port80.clone();
    no_egress.groups[1].egress.clear();
    times.push(("egress revoke", change(&plane, &no_egress)));
    assert!(!reaches(&cli, server, 80), "no egress once settled");
    times.push(("egress authorize", change(&plane, &port80)));
    assert!(reaches(&cli, server, 80), "egress back once settled");
    // ModifyInstanceAttribute GroupId.N: the client joins the server's group (no egress rule).
    let mut moved = port80.clone();
    moved.interfaces[1].groups = vec!["sg-0000000000000000a".into()];
    moved.groups[0].members.push(Ipv4Addr::new(10, 0, 1, 5));
    moved.groups[1].members.clear();
    times.push(("interface's groups changed", change(&plane, &moved)));
    assert!(!reaches(&cli, server, 80), "the new group has no egress");
    times.push(("interface's groups back", change(&plane, &port80)));
    assert!(reaches(&cli, server, 80));

    // A change the data plane refuses (ports 90-80: no ruleset can say that) is an error of
    // settle, in one line, and the rules in force stay.
    let mut bad = port80.clone();
    bad.groups[0]
        .ingress
        .push(rule("sgr-4", Protocol::Tcp, (90, 80), "10.0.1.5/32"));
    plane.apply(&bad).unwrap();
    let e = plane.settle(VPC, BOUND).unwrap_err().to_string();
    assert!(e.contains("90") && !e.contains('\n'), "{e}");
    assert!(reaches(&cli, server, 80), "the rules in force stay");
    // The next good change is in force again (a full apply after the failure).
    times.push(("revoke after a failed change", change(&plane, &revoked)));
    assert!(!reaches(&cli, server, 80) && !reaches(&cli, server, 22));

    for (what, t) in times {
        println!(
            "{what}: settled {:.1} ms after apply()",
            t.as_secs_f64() * 1e3
        );
    }
}
