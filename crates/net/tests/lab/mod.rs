//! What the host tests share: a [`Lab`] (a scope of its own, a temporary directory, and a list
//! of what to remove when the test ends, even when it fails), fake instances (a namespace with
//! a TAP `eth0`, joined to the interface's TAP in the VPC namespace by a packet pump that
//! copies frames verbatim between the two TAP fds: the VPC side is opened with
//! `vireo_net::open_tap`, as vireod opens it for the VMM), and TCP/ping helpers that run in a
//! namespace.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vireo_net::{
    DnsSettings, HostPlace, Interface, Mac, PortRange, Protocol, Rule, RulePeer, Scope,
    SecurityGroup, Subnet, VpcState,
};

/// Fails the test with one line when this host cannot run it.
pub fn require() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("the data-plane host tests need root (network namespaces, nftables)");
    }
    for tool in ["ip", "nft", "bridge", "dnsmasq", "ping", "nc", "busybox"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            panic!("`{tool}` is missing: run scripts/install-deps.sh (nftables, dnsmasq-base, iproute2, iputils-ping, netcat-openbsd, busybox-static)");
        }
    }
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn must(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test's world.
pub struct Lab {
    pub scope: Scope,
    pub dir: PathBuf,
    vpcs: Vec<(String, HostPlace)>,
    extra_netns: Vec<String>,
    pub instances: Vec<Instance>,
}

impl Lab {
    pub fn new() -> Lab {
        require();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!(
            "{:04x}",
            (std::process::id().wrapping_mul(31) + n * 7919) & 0xffff
        );
        let dir = std::env::temp_dir().join(format!("vireo-net-test-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Private, as vireod's data directory is (0700): dnsmasq, once it has dropped its
        // privileges to `nobody`, cannot read anything in there.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let scope = Scope::new(&tag, dir.join("net")).unwrap();
        Lab {
            scope,
            dir,
            vpcs: Vec::new(),
            extra_netns: Vec::new(),
            instances: Vec::new(),
        }
    }

    /// A namespace name of this lab's (removed at the end).
    pub fn netns(&mut self, what: &str) -> String {
        let ns = format!("vireo-{}-t{what}", self.scope.tag());
        must(&["ip", "netns", "add", &ns]);
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        self.extra_netns.push(ns.clone());
        ns
    }

    /// `vireo_net::apply`, remembering the VPC for the clean-up.
    pub fn apply(&mut self, state: &VpcState) -> vireo_net::Plan {
        let key = (state.vpc_id.clone(), state.host.clone());
        if !self.vpcs.contains(&key) {
            self.vpcs.push(key);
        }
        vireo_net::apply(&self.scope, state).unwrap_or_else(|e| panic!("apply: {e}"))
    }

    /// A fake instance for interface `eni` of `state` (already applied): a namespace whose
    /// `eth0` TAP is pumped to the interface's TAP. `configure`: give eth0 the interface's
    /// address and a default route (else leave it to DHCP).
    pub fn instance(&mut self, state: &VpcState, eni: &str, configure: bool) -> usize {
        let i = state
            .interfaces
            .iter()
            .find(|i| i.id == eni)
            .expect("interface of the state");
        let subnet = state.subnets.iter().find(|s| s.id == i.subnet).unwrap();
        let ns = self.netns(&format!("i{}", self.instances.len()));
        must(&[
            "ip", "-n", &ns, "tuntap", "add", "dev", "eth0", "mode", "tap", "vnet_hdr",
        ]);
        must(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            "eth0",
            "address",
            &i.mac.to_string(),
            "up",
        ]);
        vireo_net::in_netns(&ns, || {
            std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1").unwrap()
        })
        .unwrap();
        if configure {
            let a = format!("{}/{}", i.ip, subnet.cidr.prefix);
            must(&["ip", "-n", &ns, "addr", "add", &a, "dev", "eth0"]);
            let r = subnet.cidr.router().to_string();
            must(&["ip", "-n", &ns, "route", "add", "default", "via", &r]);
        }
        let vpc_ns = self.scope.vpc_netns(&state.vpc_id, i.host);
        let outer = vireo_net::open_tap(&vpc_ns, &vireo_net::tap_name(eni))
            .unwrap_or_else(|e| panic!("open_tap: {e}"));
        let inner = vireo_net::open_tap(&ns, "eth0").unwrap();
        let eth0 = inner.try_clone().unwrap();
        let pump = Pump::start(outer, inner);
        if configure {
            // The first exchange (ARP both ways through a fresh TAP) done before the test's.
            let r = subnet.cidr.router();
            assert!(ping(&ns, r), "instance {eni} cannot ping its router {r}");
        }
        self.instances.push(Instance {
            ns,
            ip: i.ip,
            eni: eni.to_string(),
            eth0,
            pump: Some(pump),
        });
        self.instances.len() - 1
    }

    /// Moves instance `instance` to its interface's TAP in VPC namespace `vpc_ns` (a live
    /// migration's switch of VMM): its old TAP is no longer read or written, the new one is.
    /// Its own `eth0` stays attached throughout (its carrier stays up, its neighbour entries
    /// stay), as a migrated guest's NIC does.
    pub fn move_instance(&mut self, instance: usize, vpc_ns: &str) {
        let inst = &mut self.instances[instance];
        let outer = vireo_net::open_tap(vpc_ns, &vireo_net::tap_name(&inst.eni))
            .unwrap_or_else(|e| panic!("open_tap: {e}"));
        inst.pump.take();
        let inner = inst.eth0.try_clone().unwrap();
        inst.pump = Some(Pump::start(outer, inner));
    }

    pub fn ns(&self, instance: usize) -> &str {
        &self.instances[instance].ns
    }

    /// Everything of this lab that is still on the system: namespaces named with its tag, and
    /// processes whose command line names its directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let prefix = format!("vireo-{}-", self.scope.tag());
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) {
                    out.push(format!("namespace {n}"));
                }
            }
        }
        let pg = sh(&["pgrep", "-f", &self.dir.display().to_string()]);
        for pid in String::from_utf8_lossy(&pg.stdout).split_whitespace() {
            out.push(format!("process {pid}"));
        }
        let links = must(&["ip", "-o", "link", "show"]);
        for l in links.lines() {
            if l.contains(&format!("vx{}", self.scope.tag())) {
                out.push(format!("link {l}"));
            }
        }
        out
    }

    /// Removes everything (what the test would otherwise leave behind on failure too).
    pub fn cleanup(&mut self) {
        if std::env::var_os("VIREO_NET_KEEP").is_some() {
            eprintln!(
                "VIREO_NET_KEEP: leaving {} and its namespaces",
                self.dir.display()
            );
            std::mem::forget(std::mem::take(&mut self.instances));
            return;
        }
        for inst in &mut self.instances {
            inst.pump.take();
        }
        for (vpc, host) in std::mem::take(&mut self.vpcs) {
            if let Err(e) = vireo_net::remove_vpc(&self.scope, &vpc, &host) {
                eprintln!("clean-up: remove_vpc {vpc}: {e}");
            }
        }
        for h in 0..4 {
            let _ = vireo_net::remove_edge(&self.scope, h);
        }
        for ns in std::mem::take(&mut self.extra_netns) {
            let _ = sh(&["ip", "netns", "del", &ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

pub struct Instance {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub eni: String,
    /// A second fd of its `eth0` (the pump has the other): keeps it attached while the pump
    /// is replaced.
    eth0: OwnedFd,
    pump: Option<Pump>,
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
                let mut fds = [
                    libc::pollfd {
                        fd: files[0].as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: files[1].as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: `fds` is a valid array of two pollfds for the call's duration.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
                if n <= 0 {
                    continue;
                }
                for (from, to) in [(0usize, 1usize), (1, 0)] {
                    if fds[from].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                        return;
                    }
                    if fds[from].revents & libc::POLLIN != 0 {
                        let Ok(len) = files[from].read(&mut buf) else {
                            continue;
                        };
                        // Both TAPs carry the same virtio-net header: copy frames verbatim.
                        let _ = files[to].write(&buf[..len]);
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

/// One ping (2 s at most).
pub fn ping(ns: &str, to: Ipv4Addr) -> bool {
    let to = to.to_string();
    sh(&[
        "ip", "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "2", &to,
    ])
    .status
    .success()
}

/// A TCP server in `ns` on `ip:port`: sends `greeting` (`"peer"`: the client's address as the
/// server sees it) on each connection, then echoes. Runs
/// until the test process ends (its socket goes with the namespace).
pub fn serve(ns: &str, ip: Ipv4Addr, port: u16, greeting: &'static str) {
    let l = vireo_net::in_netns(ns, || TcpListener::bind((ip, port)))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {ip}:{port} in {ns}: {e}"));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let hello = match (greeting, c.peer_addr()) {
                    ("peer", Ok(a)) => a.ip().to_string(),
                    _ => greeting.to_string(),
                };
                let _ = c.write_all(hello.as_bytes());
                let mut buf = [0u8; 512];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Connects from `ns` to `to:port` (2 s at most: this machine's two cores are shared) and
/// reads the server's greeting.
pub fn connect(ns: &str, to: Ipv4Addr, port: u16) -> Option<(TcpStream, String)> {
    let addr = SocketAddr::from((to, port));
    let s = vireo_net::in_netns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })
    .unwrap()
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    let n = (&s).read(&mut buf).ok()?;
    Some((s, String::from_utf8_lossy(&buf[..n]).into_owned()))
}

/// Whether a connection from `ns` to `to:port` gets its greeting.
pub fn reaches(ns: &str, to: Ipv4Addr, port: u16) -> bool {
    connect(ns, to, port).is_some()
}

/// Sends `text` on an open connection and reads it back (the server echoes).
pub fn echo(s: &mut TcpStream, text: &str) -> bool {
    if s.write_all(text.as_bytes()).is_err() {
        return false;
    }
    let mut buf = vec![0u8; text.len()];
    s.read_exact(&mut buf).is_ok() && buf == text.as_bytes()
}

// Builders for desired states.

pub fn mac(n: u8) -> Mac {
    Mac([0x02, 0x00, 0x00, 0x00, 0x00, n])
}

pub fn subnet(id: &str, cidr: &str) -> Subnet {
    Subnet {
        id: id.into(),
        cidr: cidr.parse().unwrap(),
    }
}

pub fn eni(id: &str, ip: &str, subnet: &str, groups: &[&str], mac_n: u8) -> Interface {
    Interface {
        id: id.into(),
        mac: mac(mac_n),
        ip: ip.parse().unwrap(),
        subnet: subnet.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        host: 0,
        standby: None,
    }
}

pub fn cidr_rule(protocol: Protocol, cidr: &str) -> Rule {
    Rule {
        protocol,
        peer: RulePeer::Cidr(cidr.parse().unwrap()),
    }
}

pub fn tcp(port: u16) -> Protocol {
    Protocol::Tcp(PortRange::single(port))
}

pub fn group(id: &str, ingress: Vec<Rule>, egress: Vec<Rule>) -> SecurityGroup {
    SecurityGroup {
        id: id.into(),
        ingress,
        egress,
    }
}

/// A group that allows everything from the VPC and every egress.
pub fn open_group(id: &str) -> SecurityGroup {
    group(
        id,
        vec![cidr_rule(Protocol::All, "10.0.0.0/16")],
        vec![cidr_rule(Protocol::All, "0.0.0.0/0")],
    )
}

/// A VPC 10.0.0.0/16 on host 0 with the given subnets, interfaces and groups.
pub fn vpc(
    id: &str,
    subnets: Vec<Subnet>,
    interfaces: Vec<Interface>,
    groups: Vec<SecurityGroup>,
) -> VpcState {
    VpcState {
        vpc_id: id.into(),
        cidr: "10.0.0.0/16".parse().unwrap(),
        region: "us-east-1".into(),
        host: HostPlace {
            index: 0,
            netns: None,
        },
        subnets,
        interfaces,
        security_groups: groups,
        internet_gateway: false,
        public_ips: Vec::new(),
        dns: DnsSettings {
            support: true,
            hostnames: true,
        },
        peers: Vec::new(),
    }
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
