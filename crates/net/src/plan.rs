//! The pure half of the data plane: a [`VpcState`] in, a [`Plan`] out (every name, the nftables
//! ruleset text, dnsmasq's configuration and host files). It checks the state and touches
//! nothing, so all of it is unit-tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::model::{
    host_name, Cidr, HostPlace, Mac, PortRange, Protocol, Rule, RulePeer, VpcState,
};
use crate::names::{self, Scope, METADATA_ADDR, METADATA_PORT, UPLINK, VXLAN};

/// The MTU the TAPs have and DHCP announces.
pub const MTU: u32 = 1500;
/// The VXLAN device's MTU: 1500 less VXLAN's 50 bytes of outer headers.
pub const VXLAN_MTU: u32 = 1450;

/// Why a desired state cannot be planned. Each names the offending resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("invalid {kind} id {id:?}: 1 to 64 lower-case letters, digits and '-'")]
    BadId { kind: &'static str, id: String },
    #[error("duplicate {kind} {id}")]
    Duplicate { kind: &'static str, id: String },
    #[error("subnet {subnet} ({cidr}) is not inside the VPC's {vpc}")]
    SubnetOutsideVpc {
        subnet: String,
        cidr: Cidr,
        vpc: Cidr,
    },
    #[error("subnet {subnet}: /{prefix} is too small (at most /30)")]
    SubnetTooSmall { subnet: String, prefix: u8 },
    #[error("subnets {0} and {1} overlap")]
    SubnetOverlap(String, String),
    #[error("interface {eni}: no subnet {subnet} in this VPC")]
    UnknownSubnet { eni: String, subnet: String },
    #[error("interface {eni}: no security group {group} in this VPC")]
    UnknownGroup { eni: String, group: String },
    #[error("interface {eni}: {ip} is not a host address of its subnet {cidr} (network, router and broadcast addresses are reserved)")]
    BadAddress {
        eni: String,
        ip: Ipv4Addr,
        cidr: Cidr,
    },
    #[error("interface {eni}: {mac} is not a unicast MAC address")]
    BadMac { eni: String, mac: Mac },
    #[error("interface {eni} is on host {host}, which is not this host and not among the peers")]
    NoPeer { eni: String, host: u32 },
    #[error("interface {eni} stands by on host {host}, the host that owns it")]
    StandbyOnOwner { eni: String, host: u32 },
    #[error("public IP {public} maps to {private}, which no interface of this VPC has")]
    PublicWithoutInterface { public: Ipv4Addr, private: Ipv4Addr },
    #[error("port range {from}-{to} is reversed")]
    BadPorts { from: u16, to: u16 },
}

/// An interface's TAP in the VPC namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPlan {
    pub eni_id: String,
    pub name: String,
    /// The interface's (the guest's) MAC.
    pub mac: Mac,
    /// The TAP's own MAC ([`names::tap_mac`]): what proxy ARP answers the guest with, the same
    /// on every host.
    pub tap_mac: Mac,
    pub ip: Ipv4Addr,
    /// The subnet router's address, which the TAP carries (with the subnet's prefix length,
    /// without a prefix route).
    pub router: Ipv4Addr,
    pub prefix: u8,
    /// A live migration's TAP on the host that stands by ([`crate::Interface::standby`]): it
    /// gets no route; the interface's address is routed over VXLAN to its owner (a
    /// [`RemotePlan`] with `route`).
    pub standby: bool,
}

/// An interface whose traffic goes over VXLAN to another host's VPC namespace: a neighbour
/// entry for its address (that host's VXLAN MAC) and, with `route`, its /32 route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePlan {
    pub eni_id: String,
    pub ip: Ipv4Addr,
    /// The host its traffic goes to: its owner, or (without `route`) the host that stands by
    /// for it during a live migration.
    pub host: u32,
    /// The other host's address on the underlay.
    pub underlay: Ipv4Addr,
    /// The MAC of the VPC's VXLAN device on that host.
    pub mac: Mac,
    /// Whether its /32 is routed over VXLAN. `false` on the owner of a migrating interface
    /// (routed to its TAP here): the neighbour entry is ready for the switch-over.
    pub route: bool,
}

/// Another host of the VPC as this host's VXLAN device knows it: a permanent fdb entry from
/// its VXLAN MAC to its underlay address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPeer {
    pub host: u32,
    pub underlay: Ipv4Addr,
    pub mac: Mac,
}

/// This host's VXLAN device for the VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPlan {
    pub vni: u32,
    /// Its name in the host namespace, where it is made (its UDP socket stays there).
    pub temp_name: String,
    pub mac: Mac,
    /// The hosts it sends to: every other host an interface is on or stands by on.
    pub peers: Vec<VxlanPeer>,
}

/// The uplink from the VPC namespace into the host's edge namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkPlan {
    pub edge_netns: String,
    pub edge_link: String,
    /// The public IPs (of local interfaces) the edge routes to this uplink.
    pub publics: Vec<Ipv4Addr>,
}

/// dnsmasq's files for the VPC namespace. Every entry (a local interface's MAC→IP and host
/// name, the VPC's names in DNS) is in the configuration file itself: dnsmasq reads that as
/// root before it drops its privileges, while files it is pointed at (`dhcp-hostsfile`,
/// `addn-hosts`) it reads afterwards, as `nobody`, who cannot enter vireod's private data
/// directory (0700): guests then got no lease ("no address available").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqPlan {
    pub dir: PathBuf,
    pub conf: String,
    /// Whether the VPC's names are in DNS (enableDnsHostnames): when not, the names of the
    /// lease file are blanked before dnsmasq starts (it would put them in DNS).
    pub hostnames: bool,
}

impl DnsmasqPlan {
    pub fn conf_path(&self) -> PathBuf {
        self.dir.join("dnsmasq.conf")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
    pub fn leases_path(&self) -> PathBuf {
        self.dir.join("leases")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }
}

/// Everything [`crate::apply`] makes for one VPC on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub vpc_id: String,
    pub netns: String,
    pub host: HostPlace,
    pub vpc_cidr: Cidr,
    pub taps: Vec<TapPlan>,
    pub remotes: Vec<RemotePlan>,
    pub vxlan: Option<VxlanPlan>,
    pub uplink: Option<UplinkPlan>,
    /// The whole nftables ruleset of the VPC namespace, loaded with one `nft -f`.
    pub nft: String,
    /// `None` when no interface of the VPC is on this host.
    pub dnsmasq: Option<DnsmasqPlan>,
}

/// Whether `id` is usable in names: 1 to 64 of `[a-z0-9-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_id(kind: &'static str, id: &str) -> Result<(), PlanError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(PlanError::BadId {
            kind,
            id: id.to_string(),
        })
    }
}

/// Checks `state` and works out everything [`crate::apply`] makes.
pub fn plan(scope: &Scope, state: &VpcState) -> Result<Plan, PlanError> {
    check_id("VPC", &state.vpc_id)?;
    check_id("region", &state.region)?;
    let here = state.host.index;

    let mut subnets: BTreeMap<&str, Cidr> = BTreeMap::new();
    for s in &state.subnets {
        check_id("subnet", &s.id)?;
        if !state.cidr.covers(&s.cidr) {
            return Err(PlanError::SubnetOutsideVpc {
                subnet: s.id.clone(),
                cidr: s.cidr,
                vpc: state.cidr,
            });
        }
        if s.cidr.prefix > 30 {
            return Err(PlanError::SubnetTooSmall {
                subnet: s.id.clone(),
                prefix: s.cidr.prefix,
            });
        }
        for (other, c) in &subnets {
            if c.overlaps(&s.cidr) {
                return Err(PlanError::SubnetOverlap(other.to_string(), s.id.clone()));
            }
        }
        if subnets.insert(&s.id, s.cidr.normalized()).is_some() {
            return Err(PlanError::Duplicate {
                kind: "subnet",
                id: s.id.clone(),
            });
        }
    }

    let mut groups = BTreeSet::new();
    for g in &state.security_groups {
        check_id("security group", &g.id)?;
        if !groups.insert(g.id.as_str()) {
            return Err(PlanError::Duplicate {
                kind: "security group",
                id: g.id.clone(),
            });
        }
        for r in g.ingress.iter().chain(&g.egress) {
            if let Protocol::Tcp(p) | Protocol::Udp(p) = r.protocol {
                if p.from > p.to {
                    return Err(PlanError::BadPorts {
                        from: p.from,
                        to: p.to,
                    });
                }
            }
            if let RulePeer::Group(id) = &r.peer {
                check_id("security group", id)?;
            }
        }
    }

    let peers: BTreeMap<u32, Ipv4Addr> = state.peers.iter().map(|p| (p.host, p.underlay)).collect();
    let (mut ids, mut ips, mut macs) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut taps = Vec::new();
    let mut remotes = Vec::new();
    let mut vxlan_peers: BTreeMap<u32, VxlanPeer> = BTreeMap::new();
    for i in &state.interfaces {
        check_id("interface", &i.id)?;
        if !ids.insert(i.id.as_str()) {
            return Err(PlanError::Duplicate {
                kind: "interface",
                id: i.id.clone(),
            });
        }
        if !ips.insert(i.ip) {
            return Err(PlanError::Duplicate {
                kind: "private IP",
                id: i.ip.to_string(),
            });
        }
        if !macs.insert(i.mac) {
            return Err(PlanError::Duplicate {
                kind: "MAC address",
                id: i.mac.to_string(),
            });
        }
        if !i.mac.is_unicast() {
            return Err(PlanError::BadMac {
                eni: i.id.clone(),
                mac: i.mac,
            });
        }
        let cidr = *subnets
            .get(i.subnet.as_str())
            .ok_or_else(|| PlanError::UnknownSubnet {
                eni: i.id.clone(),
                subnet: i.subnet.clone(),
            })?;
        if !cidr.contains(i.ip)
            || i.ip == cidr.network()
            || i.ip == cidr.router()
            || i.ip == cidr.last()
        {
            return Err(PlanError::BadAddress {
                eni: i.id.clone(),
                ip: i.ip,
                cidr,
            });
        }
        for g in &i.groups {
            if !groups.contains(g.as_str()) {
                return Err(PlanError::UnknownGroup {
                    eni: i.id.clone(),
                    group: g.clone(),
                });
            }
        }
        if i.standby == Some(i.host) {
            return Err(PlanError::StandbyOnOwner {
                eni: i.id.clone(),
                host: i.host,
            });
        }
        // Every other host the interface is on (owner or standby) is a VXLAN peer: the fdb
        // entries for both sides of a migration are in place before its switch-over.
        let mut peer = |host: u32| -> Result<VxlanPeer, PlanError> {
            let underlay = *peers.get(&host).ok_or_else(|| PlanError::NoPeer {
                eni: i.id.clone(),
                host,
            })?;
            let p = VxlanPeer {
                host,
                underlay,
                mac: scope.vxlan_mac(&state.vpc_id, host),
            };
            vxlan_peers.insert(host, p.clone());
            Ok(p)
        };
        let remote = |p: VxlanPeer, route: bool| RemotePlan {
            eni_id: i.id.clone(),
            ip: i.ip,
            host: p.host,
            underlay: p.underlay,
            mac: p.mac,
            route,
        };
        if i.host == here || i.standby == Some(here) {
            taps.push(TapPlan {
                eni_id: i.id.clone(),
                name: names::tap_name(&i.id),
                mac: i.mac,
                tap_mac: names::tap_mac(&i.id),
                ip: i.ip,
                router: cidr.router(),
                prefix: cidr.prefix,
                standby: i.host != here,
            });
        }
        if i.host != here {
            remotes.push(remote(peer(i.host)?, true));
            if let Some(s) = i.standby.filter(|&s| s != here) {
                peer(s)?;
            }
        } else if let Some(s) = i.standby {
            remotes.push(remote(peer(s)?, false));
        }
    }

    let mut publics = Vec::new();
    let mut seen_public = BTreeSet::new();
    for p in &state.public_ips {
        if !seen_public.insert(p.public) {
            return Err(PlanError::Duplicate {
                kind: "public IP",
                id: p.public.to_string(),
            });
        }
        if !ips.contains(&p.private) {
            return Err(PlanError::PublicWithoutInterface {
                public: p.public,
                private: p.private,
            });
        }
        // A public IP is served by the edge of the host its interface is on (its owner).
        if taps.iter().any(|t| t.ip == p.private && !t.standby) {
            publics.push(*p);
        }
    }

    let uplink = state.internet_gateway.then(|| UplinkPlan {
        edge_netns: scope.edge_netns(here),
        edge_link: names::edge_link_name(&state.vpc_id),
        publics: publics.iter().map(|p| p.public).collect(),
    });
    let vxlan = (!vxlan_peers.is_empty()).then(|| VxlanPlan {
        vni: scope.vni(&state.vpc_id),
        temp_name: scope.vxlan_temp_name(&state.vpc_id, here),
        mac: scope.vxlan_mac(&state.vpc_id, here),
        peers: vxlan_peers.into_values().collect(),
    });

    let nft = ruleset(state, &taps, vxlan.is_some(), uplink.is_some(), &publics);
    let dnsmasq = (!taps.is_empty()).then(|| dnsmasq(scope, state, &taps, &subnets));
    Ok(Plan {
        vpc_id: state.vpc_id.clone(),
        netns: scope.vpc_netns(&state.vpc_id, here),
        host: state.host.clone(),
        vpc_cidr: state.cidr.normalized(),
        taps,
        remotes,
        vxlan,
        uplink,
        nft,
        dnsmasq,
    })
}

fn ports(p: PortRange) -> String {
    if p.from == p.to {
        p.from.to_string()
    } else {
        format!("{}-{}", p.from, p.to)
    }
}

/// One rule as an nft match (possibly empty: "everything"); `dir` is `saddr` for ingress and
/// `daddr` for egress.
fn rule_match(rule: &Rule, dir: &str) -> String {
    let mut m = String::new();
    match &rule.peer {
        RulePeer::Cidr(c) if c.prefix == 0 => {}
        RulePeer::Cidr(c) => {
            let _ = write!(m, "ip {dir} {} ", c.normalized());
        }
        RulePeer::Group(g) => {
            let _ = write!(m, "ip {dir} @{g} ");
        }
    }
    match rule.protocol {
        Protocol::All => {}
        Protocol::Tcp(p) if p == PortRange::ALL => m.push_str("meta l4proto tcp "),
        Protocol::Udp(p) if p == PortRange::ALL => m.push_str("meta l4proto udp "),
        Protocol::Tcp(p) => {
            let _ = write!(m, "tcp dport {} ", ports(p));
        }
        Protocol::Udp(p) => {
            let _ = write!(m, "udp dport {} ", ports(p));
        }
        Protocol::Icmp {
            icmp_type: None, ..
        } => m.push_str("meta l4proto icmp "),
        Protocol::Icmp {
            icmp_type: Some(t),
            code: None,
        } => {
            let _ = write!(m, "icmp type {t} ");
        }
        Protocol::Icmp {
            icmp_type: Some(t),
            code: Some(c),
        } => {
            let _ = write!(m, "icmp type {t} icmp code {c} ");
        }
    }
    m
}

/// The VPC namespace's whole ruleset. The first four lines make the two tables exist and then
/// delete them, so that loading the file replaces the old ruleset in the same transaction:
/// the kernel swaps old for new at once or, on any error, keeps the old.
fn ruleset(
    state: &VpcState,
    taps: &[TapPlan],
    vxlan: bool,
    uplink: bool,
    publics: &[crate::model::PublicIp],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# vireo-net: security groups of {} on host {}\n\
         table inet vireo\ndelete table inet vireo\ntable netdev vireo\ndelete table netdev vireo\n\
         table inet vireo {{",
        state.vpc_id, state.host.index
    );

    // Referenced groups: a set of their members' private IPs (all hosts).
    let referenced: BTreeSet<&str> = state
        .security_groups
        .iter()
        .flat_map(|g| g.ingress.iter().chain(&g.egress))
        .filter_map(|r| match &r.peer {
            RulePeer::Group(g) => Some(g.as_str()),
            RulePeer::Cidr(_) => None,
        })
        .collect();
    for g in &referenced {
        let members: Vec<String> = state
            .interfaces
            .iter()
            .filter(|i| i.groups.iter().any(|x| x == g))
            .map(|i| i.ip.to_string())
            .collect();
        let _ = writeln!(s, "  set {g} {{\n    type ipv4_addr");
        if !members.is_empty() {
            let _ = writeln!(s, "    elements = {{ {} }}", members.join(", "));
        }
        s.push_str("  }\n");
    }

    // The router itself: DHCP, DNS, ICMP and the metadata service (vireod's listener on
    // METADATA_ADDR) from the instances, nothing from elsewhere.
    s.push_str(
        "  chain input {\n    type filter hook input priority filter; policy drop;\n    \
         iif \"lo\" accept\n    ct state established,related accept\n    \
         iifname \"vt*\" meta l4proto icmp accept\n    iifname \"vt*\" udp dport 67 accept\n",
    );
    let _ = writeln!(
        s,
        "    iifname \"vt*\" ip daddr {METADATA_ADDR} tcp dport {METADATA_PORT} accept"
    );
    if state.dns.support {
        s.push_str(
            "    iifname \"vt*\" udp dport 53 accept\n    iifname \"vt*\" tcp dport 53 accept\n",
        );
    }
    s.push_str("  }\n");

    let privates: Vec<String> = publics.iter().map(|p| p.private.to_string()).collect();
    s.push_str(
        "  chain forward {\n    type filter hook forward priority filter; policy drop;\n    \
         ct state established,related accept\n    ct state invalid drop\n",
    );
    if uplink {
        // From the outside only what the 1:1 NAT turned into an instance's address.
        if privates.is_empty() {
            s.push_str("    iifname \"uplink\" drop\n");
        } else {
            let _ = writeln!(
                s,
                "    iifname \"uplink\" ip daddr != {{ {} }} drop",
                privates.join(", ")
            );
        }
    }
    if !taps.is_empty() {
        let out: Vec<String> = taps
            .iter()
            .map(|t| format!("\"{0}\" : jump out-{0}", t.name))
            .collect();
        let inn: Vec<String> = taps
            .iter()
            .map(|t| format!("\"{0}\" : jump in-{0}", t.name))
            .collect();
        let _ = writeln!(s, "    iifname vmap {{ {} }}", out.join(", "));
        let _ = writeln!(s, "    oifname vmap {{ {} }}", inn.join(", "));
    }
    if vxlan {
        // Egress was checked above; the other host checks ingress.
        let _ = writeln!(s, "    iifname \"vt*\" oifname \"{VXLAN}\" accept");
    }
    if uplink && !privates.is_empty() {
        let _ = writeln!(
            s,
            "    iifname \"vt*\" oifname \"{UPLINK}\" ip saddr {{ {} }} accept",
            privates.join(", ")
        );
    }
    s.push_str("  }\n");

    // Per interface: egress (returns when allowed, so ingress is checked next) and ingress.
    for t in taps {
        let iface = state
            .interfaces
            .iter()
            .find(|i| i.id == t.eni_id)
            .expect("taps come from interfaces");
        let rules = |egress: bool| {
            let mut seen = BTreeSet::new();
            let mut out = Vec::new();
            for g in &iface.groups {
                let Some(sg) = state.security_groups.iter().find(|x| &x.id == g) else {
                    continue;
                };
                for r in if egress { &sg.egress } else { &sg.ingress } {
                    let m = rule_match(r, if egress { "daddr" } else { "saddr" });
                    if seen.insert(m.clone()) {
                        out.push(m);
                    }
                }
            }
            out
        };
        let _ = writeln!(s, "  chain out-{} {{", t.name);
        for m in rules(true) {
            let _ = writeln!(s, "    {m}return");
        }
        s.push_str("    counter drop\n  }\n");
        let _ = writeln!(s, "  chain in-{} {{", t.name);
        for m in rules(false) {
            let _ = writeln!(s, "    {m}accept");
        }
        s.push_str("    counter drop\n  }\n");
    }

    if uplink && !publics.is_empty() {
        s.push_str(
            "  chain nat-pre {\n    type nat hook prerouting priority dstnat; policy accept;\n",
        );
        for p in publics {
            let _ = writeln!(
                s,
                "    iifname \"{UPLINK}\" ip daddr {} dnat ip to {}",
                p.public, p.private
            );
        }
        s.push_str("  }\n  chain nat-post {\n    type nat hook postrouting priority srcnat; policy accept;\n");
        for p in publics {
            let _ = writeln!(
                s,
                "    oifname \"{UPLINK}\" ip saddr {} snat ip to {}",
                p.private, p.public
            );
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");

    // Anti-spoofing on each TAP's ingress, before routing: only the interface's own MAC and
    // IP (and DHCP's 0.0.0.0 discovery), ARP only about itself; IPv6 and the rest dropped.
    if !taps.is_empty() {
        s.push_str("table netdev vireo {\n");
        for t in taps {
            let _ = writeln!(
                s,
                "  chain spoof-{n} {{\n    type filter hook ingress device \"{n}\" priority filter; policy drop;\n    \
                 ether saddr {m} arp saddr ether {m} arp saddr ip {{ 0.0.0.0, {ip} }} accept\n    \
                 ether saddr {m} ip saddr {ip} accept\n    \
                 ether saddr {m} ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept\n    \
                 counter drop\n  }}",
                n = t.name,
                m = t.mac,
                ip = t.ip
            );
        }
        s.push_str("}\n");
    }
    s
}

fn dnsmasq(
    scope: &Scope,
    state: &VpcState,
    taps: &[TapPlan],
    subnets: &BTreeMap<&str, Cidr>,
) -> DnsmasqPlan {
    let dir = scope.dnsmasq_dir(&state.vpc_id, state.host.index);
    let domain = format!("{}.compute.internal", state.region);
    let mut p = DnsmasqPlan {
        dir,
        conf: String::new(),
        hostnames: state.dns.hostnames,
    };
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# vireo-net: DHCP and DNS of {} on host {} (generated; rewritten by every apply)",
        state.vpc_id, state.host.index
    );
    let _ = writeln!(c, "pid-file={}", p.pid_path().display());
    let _ = writeln!(c, "dhcp-leasefile={}", p.leases_path().display());
    let _ = writeln!(c, "log-facility={}", p.log_path().display());
    // The namespace is the VPC's alone: answer on every TAP, present and future.
    c.push_str("interface=vt*\nbind-dynamic\nno-resolv\nno-hosts\nno-poll\ndhcp-authoritative\n");
    // Names in DNS come from the hosts file only (enableDnsHostnames), never from DHCP.
    c.push_str("dhcp-ignore-names\nlog-dhcp\n");
    if state.dns.support {
        let _ = writeln!(c, "domain={domain}\nlocal=/{domain}/");
    } else {
        c.push_str("port=0\n");
        let _ = writeln!(c, "domain={domain}");
    }
    let _ = writeln!(c, "dhcp-option=option:mtu,{MTU}");
    let used: BTreeSet<&str> = state
        .interfaces
        .iter()
        .filter(|i| taps.iter().any(|t| t.eni_id == i.id))
        .map(|i| i.subnet.as_str())
        .collect();
    for (id, cidr) in subnets.iter().filter(|(id, _)| used.contains(*id)) {
        let _ = writeln!(
            c,
            "dhcp-range=set:{id},{},static,{},1h",
            cidr.network(),
            cidr.netmask()
        );
        let _ = writeln!(c, "dhcp-option=tag:{id},option:router,{}", cidr.router());
        if state.dns.support {
            let _ = writeln!(
                c,
                "dhcp-option=tag:{id},option:dns-server,{}",
                cidr.router()
            );
        }
    }
    // Per local interface: its address (`set:` tags the host for the next line) and its host
    // name as option 12. The host name goes out as a plain option, not as dnsmasq's name of
    // the host, so that it never enters DNS on its own: only `host-record` puts names there.
    for t in taps {
        let n = host_name(t.ip);
        let _ = writeln!(c, "dhcp-host={},set:{n},{}", t.mac, t.ip);
        let _ = writeln!(c, "dhcp-option=tag:{n},12,{n}");
    }
    if state.dns.hostnames {
        for i in &state.interfaces {
            let n = host_name(i.ip);
            let _ = writeln!(c, "host-record={n}.{domain},{n},{}", i.ip);
        }
    }
    p.conf = c;
    p
}

#[cfg(test)]
mod tests;
