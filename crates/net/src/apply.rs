//! The system half: makes the running system match a [`Plan`] (idempotently: what exists by
//! name is kept or corrected, what is missing is made, what is ours and no longer wanted is
//! removed) and removes a VPC's whole data plane.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::model::{HostPlace, Mac, VpcState};
use crate::names::{Scope, EDGE_ADDR, METADATA_ADDR, UPLINK, UPLINK_ADDR, VXLAN, VXLAN_PORT};
use crate::plan::{plan, DnsmasqPlan, Plan, MTU, VXLAN_MTU};
use crate::sys::{exec_in, in_netns, ip, links_exist, netns_exists, run, run_in, sysctl, NetError};

#[derive(Debug, Deserialize)]
struct AddrInfo {
    family: String,
    local: Option<Ipv4Addr>,
    prefixlen: Option<u8>,
    #[serde(default)]
    noprefixroute: bool,
}

#[derive(Debug, Deserialize)]
struct LinkAddrs {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    mtu: Option<u32>,
    /// The link's MAC.
    address: Option<String>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

impl LinkAddrs {
    fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }

    /// Whether the link is up with this MAC and MTU.
    fn is_up_as(&self, mac: &Mac, mtu: u32) -> bool {
        self.is_up() && self.mtu == Some(mtu) && self.address.as_deref() == Some(&mac.to_string())
    }
}

#[derive(Debug, Deserialize)]
struct RouteEntry {
    dst: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    dev: Option<String>,
    protocol: Option<String>,
    gateway: Option<String>,
    prefsrc: Option<String>,
    metric: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct NeighEntry {
    dst: Ipv4Addr,
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct FdbEntry {
    mac: String,
    dst: Option<String>,
    state: Option<String>,
}

fn parse_json<T: serde::de::DeserializeOwned>(command: &str, text: &str) -> Result<T, NetError> {
    serde_json::from_str(if text.trim().is_empty() { "[]" } else { text }).map_err(|e| {
        NetError::Output {
            command: command.to_string(),
            detail: e.to_string(),
        }
    })
}

fn links(netns: &str) -> Result<Vec<LinkAddrs>, NetError> {
    let out = ip(Some(netns), &["-j", "addr", "show"])?;
    parse_json(&format!("ip -n {netns} -j addr show"), &out)
}

/// Makes network namespace `netns` if it is missing; sets it up as a router (its loopback is
/// left to the caller, which reads its links anyway and brings it up only when it is down).
fn make_netns(netns: &str, settings: &[(String, &str)]) -> Result<(), NetError> {
    if !netns_exists(netns) {
        ip(None, &["netns", "add", netns])?;
    }
    sysctl(netns, settings)
}

fn router_settings() -> Vec<(String, &'static str)> {
    vec![
        ("net/ipv4/ip_forward".into(), "1"),
        ("net/ipv4/conf/all/rp_filter".into(), "1"),
        ("net/ipv4/conf/default/rp_filter".into(), "1"),
        // The VPC is IPv4 only: no link-local IPv6 chatter, no IPv6 path around the rules.
        ("net/ipv6/conf/all/disable_ipv6".into(), "1"),
        ("net/ipv6/conf/default/disable_ipv6".into(), "1"),
    ]
}

/// A route the VPC namespace should have: its identity (as `ip -j route` shows it) and the
/// arguments of `ip route replace` that make it.
struct WantedRoute {
    key: (String, String, String),
    args: Vec<String>,
}

impl WantedRoute {
    /// The value after `word` in the route's arguments (`via`, `src`).
    fn arg(&self, word: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| a == word)?;
        self.args.get(i + 1).map(String::as_str)
    }

    /// Whether `r` is this route already (same destination, type, device, gateway and
    /// source, metric 0): then `ip route replace` would change nothing and is not run.
    fn is(&self, r: &RouteEntry) -> bool {
        route_key(r.kind.as_deref(), &r.dst, r.dev.as_deref()) == self.key
            && r.gateway.as_deref() == self.arg("via")
            && r.prefsrc.as_deref() == self.arg("src")
            && r.metric.unwrap_or(0) == 0
    }
}

fn route_key(kind: Option<&str>, dst: &str, dev: Option<&str>) -> (String, String, String) {
    let dst = if dst == "default" || dst.contains('/') {
        dst.to_string()
    } else {
        format!("{dst}/32")
    };
    let dst = if dst == "0.0.0.0/0" {
        "default".to_string()
    } else {
        dst
    };
    (
        kind.unwrap_or("unicast").to_string(),
        dst,
        dev.unwrap_or("").to_string(),
    )
}

/// Makes the system match the desired state of one VPC on one host; returns the plan it
/// carried out. Safe to call again at any time (after a crash halfway, after vireod
/// restarts): it corrects what differs. The security groups change in one `nft -f`
/// transaction, so a rule change is atomic.
///
/// The ruleset is loaded as early as it can be: once the namespace and the TAPs it names exist
/// (in a VPC whose plumbing is in place, after two commands: `ip -j addr show` and `nft -f`),
/// before the rest is checked, and the rest costs a command only where it differs. Each
/// command is a process: in the loaded lab (tests/tests/lab_vpc_outside.rs) a revoke loaded
/// after a dozen of them was in force 8.4 s after the call, against 0.6-4.2 s now (the most
/// when the host was busiest).
pub fn apply(scope: &Scope, state: &VpcState) -> Result<Plan, NetError> {
    let plan = plan(scope, state)?;
    let ns = plan.netns.as_str();
    make_netns(ns, &router_settings())?;
    let existing = links(ns)?;
    let has = |name: &str| existing.iter().any(|l| l.ifname == name);
    if !existing.iter().any(|l| l.ifname == "lo" && l.is_up()) {
        ip(Some(ns), &["link", "set", "lo", "up"])?;
    }
    // The metadata service's address, local to the namespace: guests reach it through their
    // default route (the router), and vireod's listener binds it (docs/metadata.md).
    let has_metadata_addr = existing.iter().any(|l| {
        l.ifname == "lo"
            && l.addr_info
                .iter()
                .any(|a| a.local == Some(METADATA_ADDR) && a.prefixlen == Some(32))
    });
    if !has_metadata_addr {
        ip(
            Some(ns),
            &[
                "addr",
                "replace",
                &format!("{METADATA_ADDR}/32"),
                "dev",
                "lo",
            ],
        )?;
    }

    // Interfaces' TAPs: persistent, so they outlive the VMM's fd and a vireod restart. They
    // exist, and those of removed interfaces are gone, before the ruleset that names them
    // (each TAP's anti-spoofing chain is bound to its device) is loaded.
    for t in &plan.taps {
        if !has(&t.name) {
            ip(
                Some(ns),
                &["tuntap", "add", "dev", &t.name, "mode", "tap", "vnet_hdr"],
            )?;
        }
    }
    for l in &existing {
        if l.ifname.starts_with("vt") && !plan.taps.iter().any(|t| t.name == l.ifname) {
            ip(Some(ns), &["link", "del", "dev", &l.ifname])?;
        }
    }

    // Security groups and anti-spoofing: one transaction.
    load_ruleset(ns, &plan.nft)?;

    // The TAPs' addresses, MTU and settings.
    let mut settings = Vec::new();
    for t in &plan.taps {
        let want = format!("{}/{}", t.router, t.prefix);
        let current = existing.iter().find(|l| l.ifname == t.name);
        let mut ok = false;
        for a in current.into_iter().flat_map(|l| &l.addr_info) {
            if a.family != "inet" {
                continue;
            }
            let (Some(local), Some(p)) = (a.local, a.prefixlen) else {
                continue;
            };
            if local == t.router && p == t.prefix && a.noprefixroute {
                ok = true;
            } else {
                ip(
                    Some(ns),
                    &["addr", "del", &format!("{local}/{p}"), "dev", &t.name],
                )?;
            }
        }
        if !ok {
            // The subnet's prefix length (dnsmasq finds the DHCP range by it) but no prefix
            // route: each instance gets a /32 route to its own TAP instead.
            ip(
                Some(ns),
                &["addr", "add", &want, "dev", &t.name, "noprefixroute"],
            )?;
        }
        // The TAP's MAC is the interface's, the same on every host: after a live migration
        // the guest's neighbour entries (proxy ARP answered them with it) hold on the new TAP.
        if !current.is_some_and(|l| l.is_up_as(&t.tap_mac, MTU)) {
            ip(
                Some(ns),
                &[
                    "link",
                    "set",
                    "dev",
                    &t.name,
                    "address",
                    &t.tap_mac.to_string(),
                    "mtu",
                    &MTU.to_string(),
                    "up",
                ],
            )?;
        }
        settings.push((format!("net/ipv4/conf/{}/proxy_arp", t.name), "1"));
        settings.push((format!("net/ipv4/conf/{}/rp_filter", t.name), "1"));
        // Proxy ARP answers at once (the kernel's default delays it by up to 0.8 s).
        settings.push((format!("net/ipv4/neigh/{}/proxy_delay", t.name), "0"));
    }
    sysctl(ns, &settings)?;

    // The uplink into the edge namespace. What is in place already (read with one `ip -j` in
    // each namespace) costs no command.
    match &plan.uplink {
        Some(u) => {
            make_netns(
                &u.edge_netns,
                &[
                    ("net/ipv4/ip_forward".into(), "1"),
                    ("net/ipv6/conf/all/disable_ipv6".into(), "1"),
                    ("net/ipv6/conf/default/disable_ipv6".into(), "1"),
                ],
            )?;
            if !has(UPLINK) {
                ip(
                    Some(ns),
                    &[
                        "link",
                        "add",
                        UPLINK,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &u.edge_link,
                        "netns",
                        &u.edge_netns,
                    ],
                )?;
            }
            let e = Some(u.edge_netns.as_str());
            let edge_links = links(&u.edge_netns)?;
            // `ip addr replace ADDR/32` and `ip link set up` on `dev` of `netns`, unless its
            // links show them done.
            let address_up = |netns: Option<&str>, now: &[LinkAddrs], dev: &str, addr: Ipv4Addr| {
                let link = now.iter().find(|l| l.ifname == dev);
                let has_addr = link.is_some_and(|l| {
                    l.addr_info
                        .iter()
                        .any(|a| a.local == Some(addr) && a.prefixlen == Some(32))
                });
                if !has_addr {
                    ip(
                        netns,
                        &["addr", "replace", &format!("{addr}/32"), "dev", dev],
                    )?;
                }
                if !link.is_some_and(LinkAddrs::is_up) {
                    ip(netns, &["link", "set", "dev", dev, "up"])?;
                }
                Ok::<(), NetError>(())
            };
            if !edge_links.iter().any(|l| l.ifname == "lo" && l.is_up()) {
                ip(e, &["link", "set", "lo", "up"])?;
            }
            address_up(Some(ns), &existing, UPLINK, UPLINK_ADDR)?;
            address_up(e, &edge_links, &u.edge_link, EDGE_ADDR)?;
            let cmd = format!("ip -n {} -j route show dev {}", u.edge_netns, u.edge_link);
            let routes: Vec<RouteEntry> =
                parse_json(&cmd, &ip(e, &["-j", "route", "show", "dev", &u.edge_link])?)?;
            let via = UPLINK_ADDR.to_string();
            for p in &u.publics {
                let dst = format!("{p}/32");
                let present = routes.iter().any(|r| {
                    route_key(None, &r.dst, None).1 == dst
                        && r.kind.is_none()
                        && r.gateway.as_deref() == Some(via.as_str())
                        && r.metric.unwrap_or(0) == 0
                });
                if !present {
                    ip(
                        e,
                        &[
                            "route",
                            "replace",
                            &dst,
                            "via",
                            &via,
                            "dev",
                            &u.edge_link,
                            "onlink",
                        ],
                    )?;
                }
            }
            for r in routes {
                let keep = r.protocol.as_deref() == Some("kernel")
                    || u.publics
                        .iter()
                        .any(|p| route_key(None, &r.dst, None).1 == format!("{p}/32"));
                if !keep {
                    ip(e, &["route", "del", &r.dst, "dev", &u.edge_link])?;
                }
            }
        }
        None => {
            if has(UPLINK) {
                // Its peer in the edge namespace goes with it, and the edge's routes with that.
                ip(Some(ns), &["link", "del", "dev", UPLINK])?;
            }
        }
    }

    // VXLAN to the VPC's namespaces on other hosts.
    match &plan.vxlan {
        Some(v) => {
            if !has(VXLAN) {
                let host = plan.host.netns.as_deref();
                // A leftover of an earlier apply that stopped halfway.
                let _ = ip(host, &["link", "del", "dev", &v.temp_name]);
                ip(
                    host,
                    &[
                        "link",
                        "add",
                        &v.temp_name,
                        "type",
                        "vxlan",
                        "id",
                        &v.vni.to_string(),
                        "dstport",
                        &VXLAN_PORT.to_string(),
                        "nolearning",
                    ],
                )?;
                let moved =
                    ip(host, &["link", "set", "dev", &v.temp_name, "netns", ns]).and_then(|_| {
                        ip(
                            Some(ns),
                            &["link", "set", "dev", &v.temp_name, "name", VXLAN],
                        )
                    });
                if let Err(e) = moved {
                    let _ = ip(host, &["link", "del", "dev", &v.temp_name]);
                    let _ = ip(Some(ns), &["link", "del", "dev", &v.temp_name]);
                    return Err(e);
                }
            }
            // Read first: only what is missing or differs costs a command.
            if !existing
                .iter()
                .find(|l| l.ifname == VXLAN)
                .is_some_and(|l| l.is_up_as(&v.mac, VXLAN_MTU))
            {
                ip(
                    Some(ns),
                    &[
                        "link",
                        "set",
                        "dev",
                        VXLAN,
                        "address",
                        &v.mac.to_string(),
                        "mtu",
                        &VXLAN_MTU.to_string(),
                        "up",
                    ],
                )?;
            }
            // One permanent fdb entry per other host (its VXLAN MAC to its underlay address),
            // one permanent neighbour entry per remote interface (its address to its host's
            // VXLAN MAC): no learning, no flooding.
            let cmd = format!("bridge -n {ns} -j fdb show dev {VXLAN}");
            let fdb: Vec<FdbEntry> = parse_json(
                &cmd,
                &run(
                    "bridge",
                    &["-n", ns, "-j", "fdb", "show", "dev", VXLAN],
                    None,
                )?,
            )?;
            let fdb_is = |f: &FdbEntry, mac: &Mac, underlay: Ipv4Addr| {
                f.mac == mac.to_string()
                    && f.dst.as_deref() == Some(underlay.to_string().as_str())
                    && f.state.as_deref() == Some("permanent")
            };
            for p in &v.peers {
                if !fdb.iter().any(|f| fdb_is(f, &p.mac, p.underlay)) {
                    run(
                        "bridge",
                        &[
                            "-n",
                            ns,
                            "fdb",
                            "replace",
                            &p.mac.to_string(),
                            "dev",
                            VXLAN,
                            "dst",
                            &p.underlay.to_string(),
                            "self",
                            "permanent",
                        ],
                        None,
                    )?;
                }
            }
            for f in &fdb {
                let Some(dst) = &f.dst else { continue };
                if !v.peers.iter().any(|p| fdb_is(f, &p.mac, p.underlay)) {
                    // Gone already if the replace above took its MAC.
                    if v.peers.iter().any(|p| p.mac.to_string() == f.mac) {
                        continue;
                    }
                    run(
                        "bridge",
                        &[
                            "-n", ns, "fdb", "del", &f.mac, "dev", VXLAN, "dst", dst, "self",
                        ],
                        None,
                    )?;
                }
            }
            let cmd = format!("ip -n {ns} -j neigh show dev {VXLAN}");
            let neigh: Vec<NeighEntry> =
                parse_json(&cmd, &ip(Some(ns), &["-j", "neigh", "show", "dev", VXLAN])?)?;
            for r in &plan.remotes {
                let present = neigh.iter().any(|n| {
                    n.dst == r.ip
                        && n.lladdr.as_deref() == Some(&r.mac.to_string())
                        && n.state.iter().any(|s| s == "PERMANENT")
                });
                if !present {
                    ip(
                        Some(ns),
                        &[
                            "neigh",
                            "replace",
                            &r.ip.to_string(),
                            "lladdr",
                            &r.mac.to_string(),
                            "dev",
                            VXLAN,
                            "nud",
                            "permanent",
                        ],
                    )?;
                }
            }
            for n in neigh {
                if n.state.iter().any(|s| s == "PERMANENT")
                    && !plan.remotes.iter().any(|r| r.ip == n.dst)
                {
                    ip(
                        Some(ns),
                        &["neigh", "del", &n.dst.to_string(), "dev", VXLAN],
                    )?;
                }
            }
        }
        None => {
            if has(VXLAN) {
                ip(Some(ns), &["link", "del", "dev", VXLAN])?;
            }
        }
    }

    // Routes: a /32 per interface (to its TAP, or over VXLAN), the rest of the VPC's CIDR
    // unreachable (never out of the uplink), a default route to the edge.
    let mut wanted = Vec::new();
    let mut add = |kind: Option<&str>, dst: String, dev: Option<&str>, args: Vec<String>| {
        wanted.push(WantedRoute {
            key: route_key(kind, &dst, dev),
            args,
        });
    };
    // A TAP standing by for a live migration has no route: its address goes over VXLAN to
    // the interface's owner (a remote with `route`) until the switch-over.
    for t in plan.taps.iter().filter(|t| !t.standby) {
        let dst = format!("{}/32", t.ip);
        add(
            None,
            dst.clone(),
            Some(&t.name),
            vec![
                dst,
                "dev".into(),
                t.name.clone(),
                "src".into(),
                t.router.to_string(),
            ],
        );
    }
    for r in plan.remotes.iter().filter(|r| r.route) {
        let dst = format!("{}/32", r.ip);
        add(
            None,
            dst.clone(),
            Some(VXLAN),
            vec![dst, "dev".into(), VXLAN.into()],
        );
    }
    let cidr = plan.vpc_cidr.to_string();
    add(
        Some("unreachable"),
        cidr.clone(),
        None,
        vec!["unreachable".into(), cidr],
    );
    if plan.uplink.is_some() {
        let edge = format!("{EDGE_ADDR}/32");
        add(
            None,
            edge.clone(),
            Some(UPLINK),
            vec![edge, "dev".into(), UPLINK.into()],
        );
        add(
            None,
            "default".into(),
            Some(UPLINK),
            vec![
                "default".into(),
                "via".into(),
                EDGE_ADDR.to_string(),
                "dev".into(),
                UPLINK.into(),
            ],
        );
    }
    // Read first, so that only what is missing or differs costs a command.
    let cmd = format!("ip -n {ns} -j route show table main");
    let routes: Vec<RouteEntry> = parse_json(
        &cmd,
        &ip(Some(ns), &["-j", "route", "show", "table", "main"])?,
    )?;
    for w in &wanted {
        if routes.iter().any(|r| w.is(r)) {
            continue;
        }
        let mut a = vec!["route", "replace"];
        a.extend(w.args.iter().map(String::as_str));
        ip(Some(ns), &a)?;
    }
    for r in routes {
        if r.protocol.as_deref() == Some("kernel") {
            continue;
        }
        let key = route_key(r.kind.as_deref(), &r.dst, r.dev.as_deref());
        if !wanted.iter().any(|w| w.key == key) {
            let mut a = vec!["route", "del"];
            if let Some(k) = r.kind.as_deref() {
                a.push(k);
            }
            a.push(&r.dst);
            if let Some(d) = r.dev.as_deref() {
                a.extend(["dev", d]);
            }
            ip(Some(ns), &a)?;
        }
    }

    // DHCP and DNS.
    match &plan.dnsmasq {
        Some(d) => ensure_dnsmasq(ns, d)?,
        None => {
            let dir = scope.dnsmasq_dir(&plan.vpc_id, plan.host.index);
            stop_dnsmasq(ns, &dir)?;
            remove_dir(&dir)?;
        }
    }
    Ok(plan)
}

/// The switch-over of a live migration on one host: makes interface `eni_id`'s /32 in this
/// host's VPC namespace what `state` (the VPC with the interface's new owner and the old one
/// standing by, [`crate::Interface::standby`]) says, and nothing else: on the new owner its
/// route to its TAP, on the old owner and every other host its route over VXLAN and its
/// neighbour entry (the new owner's VXLAN MAC). One `ip -batch` (a single process): the
/// TAPs, chains and fdb entries were made beforehand by [`apply`] of the state with the
/// interface standing by, and a later [`apply`] of `state` (or of the state after the move)
/// computes the same route, so nothing flips back.
pub fn switch_interface(scope: &Scope, state: &VpcState, eni_id: &str) -> Result<(), NetError> {
    let plan = plan(scope, state)?;
    let ns = plan.netns.as_str();
    let batch = if let Some(t) = plan.taps.iter().find(|t| t.eni_id == eni_id && !t.standby) {
        format!(
            "route replace {}/32 dev {} src {}\n",
            t.ip, t.name, t.router
        )
    } else if let Some(r) = plan.remotes.iter().find(|r| r.eni_id == eni_id && r.route) {
        format!(
            "neigh replace {ip} lladdr {mac} dev {VXLAN} nud permanent\n\
             route replace {ip}/32 dev {VXLAN}\n",
            ip = r.ip,
            mac = r.mac
        )
    } else {
        return Err(NetError::Output {
            command: format!("switch_interface {eni_id} in {ns}"),
            detail: "the state has no such interface".into(),
        });
    };
    run("ip", &["-n", ns, "-batch", "-"], Some(&batch)).map(|_| ())
}

/// Copies the connection tracking entries of address `ip` (a live migration's interface) from
/// its VPC namespace on host `from` to the one on host `to`, with the `conntrack` tool
/// (conntrack-tools): one `conntrack -L -o save` there, one `conntrack -R` here (the entries
/// on its stdin). Each host's namespace tracks the connections it forwards, and security
/// groups are stateful: without its entries, the destination would judge the first packet of
/// each existing connection that reaches the interface as new, and drop it where no ingress
/// rule allows it (the replies to a connection the instance opened, a peer that talks first).
/// Entries the destination has already are updated; NATed ones (a public IP's) are left out.
/// Returns how many it copied.
pub fn carry_conntrack(
    scope: &Scope,
    vpc_id: &str,
    ip: Ipv4Addr,
    from: u32,
    to: u32,
) -> Result<usize, NetError> {
    let saved = exec_in(
        &scope.vpc_netns(vpc_id, from),
        "conntrack",
        &["-L", "-o", "save"],
        None,
    )?;
    let entries = conntrack_entries_of(&saved, ip);
    if !entries.is_empty() {
        let mut input = entries.join("\n");
        input.push('\n');
        // Its stdin by /proc: `-R -` opens /dev/stdin, which a minimal /dev (the lab's) lacks.
        exec_in(
            &scope.vpc_netns(vpc_id, to),
            "conntrack",
            &["-R", "/proc/self/fd/0"],
            Some(&input),
        )?;
    }
    Ok(entries.len())
}

/// The lines of `conntrack -L -o save` output (`-A -t 299 -u ASSURED -s A -d B -r B -q A -p
/// tcp ...`) whose original direction is from or to `ip` and that are not NATed (the reply
/// tuple mirrors the original).
fn conntrack_entries_of(saved: &str, ip: Ipv4Addr) -> Vec<String> {
    let ip = ip.to_string();
    saved
        .lines()
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let arg = |flag: &str| {
                w.iter()
                    .position(|x| *x == flag)
                    .and_then(|i| w.get(i + 1).copied())
            };
            let (s, d, r, q) = (arg("-s"), arg("-d"), arg("-r"), arg("-q"));
            w.first() == Some(&"-A")
                && (s == Some(ip.as_str()) || d == Some(ip.as_str()))
                && s.is_some()
                && r == d
                && q == s
        })
        .map(str::to_string)
        .collect()
}

/// Loads `ruleset` into network namespace `netns` with one `nft -f`: all of it or, on any
/// error, none of it (the ruleset in force stays as it was). One process: `nft` is spawned
/// from a thread inside the namespace.
pub fn load_ruleset(netns: &str, ruleset: &str) -> Result<(), NetError> {
    run_in(netns, "nft", &["-f", "-"], Some(ruleset)).map(|_| ())
}

/// The ruleset in force in `netns` (`nft list ruleset`), for inspection and tests.
pub fn list_ruleset(netns: &str) -> Result<String, NetError> {
    run_in(netns, "nft", &["list", "ruleset"], None)
}

/// What [`apply_since`] did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The plan it carried out (give it back as the next call's `previous`).
    pub plan: Plan,
    /// Only the ruleset was loaded: nothing but the security groups (rules, interfaces'
    /// groups, referenced groups' members) differed from `previous`.
    pub rules_only: bool,
}

/// [`apply`], or less when it can: if `previous` (the plan of the last successful apply of
/// this VPC on this host) differs from `state`'s plan in the ruleset alone (a rule authorized
/// or revoked, an interface's groups changed, a group deleted), only the ruleset is loaded:
/// one `nft -f`, no `ip` command, no dnsmasq restart, so that a security group change is in
/// force moments after it is asked for. If the namespace or one of its TAPs has gone
/// meanwhile (checked without a process), or the load fails, the full [`apply`] runs, which
/// corrects what differs; so does a state whose plan is the same as `previous` (nothing to
/// load: it is asked for to check the system, e.g. before a VMM starts).
pub fn apply_since(
    scope: &Scope,
    previous: Option<&Plan>,
    state: &VpcState,
) -> Result<Applied, NetError> {
    if let Some(prev) = previous {
        let next = plan(scope, state)?;
        if prev.nft != next.nft
            && same_but_ruleset(prev, &next)
            && netns_exists(&next.netns)
            && links_exist(
                &next.netns,
                &next
                    .taps
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>(),
            )
            && load_ruleset(&next.netns, &next.nft).is_ok()
        {
            return Ok(Applied {
                plan: next,
                rules_only: true,
            });
        }
    }
    Ok(Applied {
        plan: apply(scope, state)?,
        rules_only: false,
    })
}

/// Whether two plans make the same links, addresses, routes, VXLAN, uplink and dnsmasq (they
/// may differ in their rulesets).
fn same_but_ruleset(a: &Plan, b: &Plan) -> bool {
    let mut a = a.clone();
    a.nft.clone_from(&b.nft);
    a == *b
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetError {
    let path = path.to_path_buf();
    move |source| NetError::File { what, path, source }
}

/// Writes `text` to `path` (through a temporary file and a rename) unless it holds it already;
/// says whether it changed. Readable by all: dnsmasq re-reads its host files after it has
/// dropped root.
fn write_if_changed(path: &Path, text: &str) -> Result<bool, NetError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(file_err("cannot write", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(file_err("cannot set the mode of", &tmp))?;
    std::fs::rename(&tmp, path).map_err(file_err("cannot rename into", path))?;
    Ok(true)
}

fn remove_dir(dir: &Path) -> Result<(), NetError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(file_err("cannot remove", dir)(e))
        }
        _ => Ok(()),
    }
}

/// The pid of the dnsmasq whose files are in `dir`, if it runs (checked against its command
/// line, so a reused pid is not mistaken for it).
pub fn dnsmasq_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("dnsmasq.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let want = format!("--conf-file={}", dir.join("dnsmasq.conf").display());
    cmdline
        .split(|b| *b == 0)
        .any(|a| a == want.as_bytes())
        .then_some(pid)
}

/// Whether process `pid` runs in network namespace `netns` (same namespace inode).
fn in_namespace(pid: i32, netns: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata(crate::sys::netns_path(netns));
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"));
    match (ours, theirs) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        // Unknown: leave it as it is.
        _ => true,
    }
}

fn ensure_dnsmasq(netns: &str, d: &DnsmasqPlan) -> Result<(), NetError> {
    for dir in [d.dir.parent().unwrap_or(&d.dir), d.dir.as_path()] {
        std::fs::create_dir_all(dir).map_err(file_err("cannot create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(file_err("cannot set the mode of", dir))?;
    }
    // Any change restarts dnsmasq (a few ms; clients retry, leases are kept in its lease
    // file). Not SIGHUP: dnsmasq 2.90 (Debian 12) segfaulted here re-reading its files on
    // SIGHUP (its hosts file alone, too).
    let changed = write_if_changed(&d.conf_path(), &d.conf)?;
    // A dnsmasq left in a namespace that was deleted and made again (`ip netns del` while
    // vireod was down) serves nobody: it counts as changed, so it is stopped and started here.
    let elsewhere = dnsmasq_pid(&d.dir).is_some_and(|pid| !in_namespace(pid, netns));
    match dnsmasq_pid(&d.dir) {
        Some(_) if changed || elsewhere => {
            stop_dnsmasq(netns, &d.dir)?;
            if !d.hostnames {
                forget_lease_names(&d.leases_path())?;
            }
            start_dnsmasq(netns, d)
        }
        Some(_) => Ok(()),
        None => start_dnsmasq(netns, d),
    }
}

/// Blanks the host names in a dnsmasq lease file (`EXPIRY MAC IP NAME CLIENT-ID` per line):
/// dnsmasq puts the names of the leases it reads into DNS, which must not happen once
/// enableDnsHostnames is off.
fn forget_lease_names(path: &Path) -> Result<(), NetError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut out = String::new();
    for line in text.lines() {
        let mut f: Vec<&str> = line.split(' ').collect();
        if f.len() >= 4 {
            f[3] = "*";
        }
        out.push_str(&f.join(" "));
        out.push('\n');
    }
    write_if_changed(path, &out).map(|_| ())
}

fn start_dnsmasq(netns: &str, d: &DnsmasqPlan) -> Result<(), NetError> {
    let _ = std::fs::remove_file(d.pid_path());
    let conf = format!("--conf-file={}", d.conf_path().display());
    // dnsmasq reports configuration errors before it forks, in its exit status.
    exec_in(netns, "dnsmasq", &[&conf], None)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while dnsmasq_pid(&d.dir).is_none() {
        if Instant::now() > deadline {
            return Err(NetError::Dnsmasq {
                netns: netns.to_string(),
                detail: format!("started, but wrote no pid to {}", d.pid_path().display()),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn stop_dnsmasq(netns: &str, dir: &Path) -> Result<(), NetError> {
    let Some(pid) = dnsmasq_pid(dir) else {
        return Ok(());
    };
    // SAFETY: kill() with a pid checked to be our dnsmasq; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            if Instant::now() > deadline + Duration::from_secs(2) {
                return Err(NetError::Dnsmasq {
                    netns: netns.to_string(),
                    detail: format!("pid {pid} does not exit"),
                });
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(dir.join("dnsmasq.pid"));
    Ok(())
}

/// Removes everything of VPC `vpc_id` on host `host`: its dnsmasq and files, its TAPs (even
/// ones a VMM still holds), uplink, VXLAN device and namespace. Nothing is left; removing
/// what is already gone is not an error.
pub fn remove_vpc(scope: &Scope, vpc_id: &str, host: &HostPlace) -> Result<(), NetError> {
    let ns = scope.vpc_netns(vpc_id, host.index);
    let dir = scope.dnsmasq_dir(vpc_id, host.index);
    stop_dnsmasq(&ns, &dir)?;
    remove_dir(&dir)?;
    let temp = scope.vxlan_temp_name(vpc_id, host.index);
    if ip(host.netns.as_deref(), &["link", "show", "dev", &temp]).is_ok() {
        ip(host.netns.as_deref(), &["link", "del", "dev", &temp])?;
    }
    if netns_exists(&ns) {
        // Delete the links first: a TAP still open in a VMM would otherwise keep the
        // namespace (and itself) alive after `ip netns del`.
        for l in links(&ns)? {
            if l.ifname != "lo" {
                // A veth's peer may have gone with it already.
                let _ = ip(Some(&ns), &["link", "del", "dev", &l.ifname]);
            }
        }
        if let Some(l) = links(&ns)?.iter().find(|l| l.ifname != "lo") {
            return Err(NetError::Output {
                command: format!("ip -n {ns} link del dev {}", l.ifname),
                detail: "the link is still there".into(),
            });
        }
        ip(None, &["netns", "del", &ns])?;
    }
    Ok(())
}

/// Removes host `host`'s edge namespace (and with it every uplink's edge side).
pub fn remove_edge(scope: &Scope, host: u32) -> Result<(), NetError> {
    let ns = scope.edge_netns(host);
    if netns_exists(&ns) {
        ip(None, &["netns", "del", &ns])?;
    }
    Ok(())
}

/// The VPC namespaces of this scope that exist, as (VPC id, host): what a restarted vireod
/// compares with its database (apply the wanted ones, [`remove_vpc`] the rest).
pub fn list_vpcs(scope: &Scope) -> Result<Vec<(String, u32)>, NetError> {
    let dir = Path::new("/run/netns");
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_err("cannot list", dir)(e)),
    };
    let mut out = BTreeSet::new();
    for e in entries {
        let e = e.map_err(file_err("cannot list", dir))?;
        if let Some(v) = scope.parse_vpc_netns(&e.file_name().to_string_lossy()) {
            out.insert(v);
        }
    }
    Ok(out.into_iter().collect())
}

/// The path of the dnsmasq lease file of VPC `vpc_id` on host `host`.
pub fn leases_path(scope: &Scope, vpc_id: &str, host: u32) -> PathBuf {
    scope.dnsmasq_dir(vpc_id, host).join("leases")
}

/// Runs `f` inside the VPC namespace of `vpc_id` on host `host` (see [`in_netns`]).
pub fn in_vpc<T: Send>(
    scope: &Scope,
    vpc_id: &str,
    host: u32,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetError> {
    in_netns(&scope.vpc_netns(vpc_id, host), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_entries_of_one_address() {
        let saved = "\
-A -t 299 -u SEEN_REPLY,ASSURED -s 10.0.1.11 -d 10.0.1.10 -r 10.0.1.10 -q 10.0.1.11 -p tcp --sport 40000 --dport 9001 --reply-port-src 9001 --reply-port-dst 40000 --state ESTABLISHED
-A -t 29 -u SEEN_REPLY -s 10.0.1.10 -d 10.0.1.11 -r 10.0.1.11 -q 10.0.1.10 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 77
-A -t 29 -u SEEN_REPLY -s 10.0.1.10 -d 10.0.1.12 -r 10.0.1.12 -q 10.0.1.10 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 78
-A -t 99 -u SEEN_REPLY -s 192.0.2.1 -d 198.51.100.5 -r 10.0.1.11 -q 192.0.2.1 -p tcp --sport 5 --dport 80 --reply-port-src 80 --reply-port-dst 5 --state ESTABLISHED
-A -t 99 -u SEEN_REPLY -s 10.0.1.110 -d 10.0.1.10 -r 10.0.1.10 -q 10.0.1.110 -p udp --sport 5 --dport 53 --reply-port-src 53 --reply-port-dst 5
";
        let got = conntrack_entries_of(saved, Ipv4Addr::new(10, 0, 1, 11));
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got[0].contains("--sport 40000"));
        assert!(got[1].contains("--icmp-id 77"));
        assert!(conntrack_entries_of("", Ipv4Addr::new(10, 0, 1, 11)).is_empty());
    }
}
