//! The planner's unit tests: names, checks, the ruleset text and dnsmasq's files, without root.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::*;
use crate::model::{DnsSettings, HostPlace, Interface, Peer, PublicIp, SecurityGroup, Subnet};

fn scope() -> Scope {
    Scope::new("ab12", PathBuf::from("/data/net")).unwrap()
}

fn eni(id: &str, ip: [u8; 4], subnet: &str, groups: &[&str], host: u32) -> Interface {
    Interface {
        id: id.into(),
        mac: Mac([0x02, 0, ip[0], ip[1], ip[2], ip[3]]),
        ip: Ipv4Addr::from(ip),
        subnet: subnet.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        host,
        standby: None,
    }
}

fn state() -> VpcState {
    VpcState {
        vpc_id: "vpc-1".into(),
        cidr: "10.0.0.0/16".parse().unwrap(),
        region: "us-east-1".into(),
        host: HostPlace {
            index: 0,
            netns: None,
        },
        subnets: vec![
            Subnet {
                id: "subnet-a".into(),
                cidr: "10.0.1.0/24".parse().unwrap(),
            },
            Subnet {
                id: "subnet-b".into(),
                cidr: "10.0.2.0/24".parse().unwrap(),
            },
        ],
        interfaces: vec![
            eni("eni-a", [10, 0, 1, 5], "subnet-a", &["sg-web"], 0),
            eni("eni-b", [10, 0, 2, 6], "subnet-b", &["sg-db"], 0),
            eni("eni-c", [10, 0, 1, 7], "subnet-a", &["sg-web"], 1),
        ],
        security_groups: vec![
            SecurityGroup {
                id: "sg-web".into(),
                ingress: vec![
                    Rule {
                        protocol: Protocol::Tcp(PortRange::single(22)),
                        peer: RulePeer::Cidr("192.0.2.0/24".parse().unwrap()),
                    },
                    Rule {
                        protocol: Protocol::Icmp {
                            icmp_type: Some(8),
                            code: None,
                        },
                        peer: RulePeer::Cidr("0.0.0.0/0".parse().unwrap()),
                    },
                ],
                egress: vec![Rule {
                    protocol: Protocol::All,
                    peer: RulePeer::Cidr("0.0.0.0/0".parse().unwrap()),
                }],
            },
            SecurityGroup {
                id: "sg-db".into(),
                ingress: vec![Rule {
                    protocol: Protocol::Tcp(PortRange {
                        from: 5432,
                        to: 5433,
                    }),
                    peer: RulePeer::Group("sg-web".into()),
                }],
                egress: vec![],
            },
        ],
        internet_gateway: true,
        public_ips: vec![PublicIp {
            public: Ipv4Addr::new(203, 0, 113, 5),
            private: Ipv4Addr::new(10, 0, 1, 5),
        }],
        dns: DnsSettings {
            support: true,
            hostnames: true,
        },
        peers: vec![Peer {
            host: 1,
            underlay: Ipv4Addr::new(10, 214, 3, 6),
        }],
    }
}

#[test]
fn names_taps_remotes() {
    let p = plan(&scope(), &state()).unwrap();
    assert_eq!(p.netns, "vireo-ab12-vpc-1-h0");
    assert_eq!(p.taps.len(), 2);
    let a = &p.taps[0];
    assert_eq!(a.name, crate::names::tap_name("eni-a"));
    assert_eq!((a.router, a.prefix), (Ipv4Addr::new(10, 0, 1, 1), 24));
    assert_eq!(p.taps[1].router, Ipv4Addr::new(10, 0, 2, 1));
    assert_eq!(p.remotes.len(), 1);
    assert_eq!(p.remotes[0].underlay, Ipv4Addr::new(10, 214, 3, 6));
    assert_eq!(p.remotes[0].mac, scope().vxlan_mac("vpc-1", 1));
    let v = p.vxlan.as_ref().unwrap();
    assert_eq!(v.vni, scope().vni("vpc-1"));
    assert_eq!(v.mac, scope().vxlan_mac("vpc-1", 0));
    let u = p.uplink.as_ref().unwrap();
    assert_eq!(u.edge_netns, "vireo-ab12-edge-h0");
    assert_eq!(u.publics, vec![Ipv4Addr::new(203, 0, 113, 5)]);
}

#[test]
fn ruleset_text() {
    let p = plan(&scope(), &state()).unwrap();
    let a = crate::names::tap_name("eni-a");
    let b = crate::names::tap_name("eni-b");
    let n = &p.nft;
    // Replace, not append: the tables are made and deleted first, in the same file.
    assert!(n.starts_with("# vireo-net"));
    assert!(n.contains("table inet vireo\ndelete table inet vireo\ntable netdev vireo\ndelete table netdev vireo\n"));
    // The referenced group's members, from every host.
    assert!(
        n.contains("set sg-web {\n    type ipv4_addr\n    elements = { 10.0.1.5, 10.0.1.7 }\n  }"),
        "{n}"
    );
    assert!(n.contains(&format!("chain in-{a} {{\n    ip saddr 192.0.2.0/24 tcp dport 22 accept\n    icmp type 8 accept\n    counter drop\n  }}")), "{n}");
    assert!(
        n.contains(&format!(
            "chain out-{a} {{\n    return\n    counter drop\n  }}"
        )),
        "{n}"
    );
    assert!(n.contains(&format!("chain in-{b} {{\n    ip saddr @sg-web tcp dport 5432-5433 accept\n    counter drop\n  }}")), "{n}");
    // No egress rule: nothing leaves.
    assert!(
        n.contains(&format!("chain out-{b} {{\n    counter drop\n  }}")),
        "{n}"
    );
    assert!(n.contains("ct state established,related accept\n    ct state invalid drop\n"));
    assert!(n.contains(&format!(
        "iifname vmap {{ \"{a}\" : jump out-{a}, \"{b}\" : jump out-{b} }}"
    )));
    assert!(n.contains("iifname \"uplink\" ip daddr != { 10.0.1.5 } drop"));
    assert!(n.contains("iifname \"vt*\" oifname \"uplink\" ip saddr { 10.0.1.5 } accept"));
    assert!(n.contains("iifname \"vt*\" oifname \"vxlan0\" accept"));
    assert!(n.contains("iifname \"uplink\" ip daddr 203.0.113.5 dnat ip to 10.0.1.5"));
    assert!(n.contains("oifname \"uplink\" ip saddr 10.0.1.5 snat ip to 203.0.113.5"));
    assert!(n.contains("udp dport 53 accept"));
    // The metadata service: its address and port, from the TAPs only.
    assert!(
        n.contains("iifname \"vt*\" udp dport 67 accept\n    iifname \"vt*\" ip daddr 169.254.169.254 tcp dport 80 accept\n"),
        "{n}"
    );
    assert_eq!(n.matches("169.254.169.254").count(), 1, "{n}");
    // Anti-spoofing per local TAP only.
    assert!(n.contains(&format!(
        "chain spoof-{a} {{\n    type filter hook ingress device \"{a}\""
    )));
    assert!(n.contains("ether saddr 02:00:0a:00:01:05 ip saddr 10.0.1.5 accept"));
    assert!(!n.contains(&crate::names::tap_name("eni-c")));
}

#[test]
fn protocols_as_matches() {
    let r = |protocol, peer| rule_match(&Rule { protocol, peer }, "saddr");
    let any = RulePeer::Cidr("0.0.0.0/0".parse().unwrap());
    assert_eq!(r(Protocol::All, any.clone()), "");
    assert_eq!(
        r(Protocol::Tcp(PortRange::ALL), any.clone()),
        "meta l4proto tcp "
    );
    assert_eq!(
        r(Protocol::Udp(PortRange::single(53)), any.clone()),
        "udp dport 53 "
    );
    assert_eq!(
        r(
            Protocol::Icmp {
                icmp_type: None,
                code: None
            },
            any.clone()
        ),
        "meta l4proto icmp "
    );
    assert_eq!(
        r(
            Protocol::Icmp {
                icmp_type: Some(3),
                code: Some(4)
            },
            RulePeer::Cidr("10.1.2.3/16".parse().unwrap())
        ),
        "ip saddr 10.1.0.0/16 icmp type 3 icmp code 4 "
    );
}

#[test]
fn dnsmasq_files() {
    let p = plan(&scope(), &state()).unwrap();
    let d = p.dnsmasq.unwrap();
    assert_eq!(d.dir, PathBuf::from("/data/net/vpc-1-h0"));
    for line in [
        "pid-file=/data/net/vpc-1-h0/dnsmasq.pid",
        "interface=vt*",
        "domain=us-east-1.compute.internal",
        "dhcp-range=set:subnet-a,10.0.1.0,static,255.255.255.0,1h",
        "dhcp-option=tag:subnet-a,option:router,10.0.1.1",
        "dhcp-option=tag:subnet-b,option:dns-server,10.0.2.1",
        "dhcp-option=option:mtu,1500",
        "dhcp-host=02:00:0a:00:01:05,set:ip-10-0-1-5,10.0.1.5",
        "dhcp-host=02:00:0a:00:02:06,set:ip-10-0-2-6,10.0.2.6",
        "dhcp-option=tag:ip-10-0-1-5,12,ip-10-0-1-5",
        "dhcp-option=tag:ip-10-0-2-6,12,ip-10-0-2-6",
        "dhcp-ignore-names",
        "host-record=ip-10-0-1-7.us-east-1.compute.internal,ip-10-0-1-7,10.0.1.7",
    ] {
        assert!(d.conf.lines().any(|l| l == line), "{line} in {}", d.conf);
    }
    // Nothing dnsmasq would read after dropping its privileges.
    for option in ["dhcp-hostsfile", "dhcp-optsfile", "addn-hosts", "conf-dir"] {
        assert!(!d.conf.contains(option), "{option} in {}", d.conf);
    }
    assert!(d.hostnames);

    let mut s = state();
    s.dns = DnsSettings {
        support: false,
        hostnames: false,
    };
    let d = plan(&scope(), &s).unwrap().dnsmasq.unwrap();
    assert!(d.conf.lines().any(|l| l == "port=0"));
    assert!(!d.conf.contains("dns-server"));
    assert!(!d.hostnames);
    assert!(!d.conf.contains("host-record"));
    assert!(!plan(&scope(), &s).unwrap().nft.contains("dport 53"));
}

#[test]
fn without_gateway_or_remotes() {
    let mut s = state();
    s.internet_gateway = false;
    s.interfaces.retain(|i| i.host == 0);
    let p = plan(&scope(), &s).unwrap();
    assert!(p.uplink.is_none());
    assert!(p.vxlan.is_none());
    assert!(!p.nft.contains("uplink"));
    assert!(!p.nft.contains("nat"));
    assert!(!p.nft.contains("vxlan0"));
    s.interfaces.clear();
    let p = plan(&scope(), &s).unwrap_err();
    assert!(matches!(p, PlanError::PublicWithoutInterface { .. }));
    s.public_ips.clear();
    let p = plan(&scope(), &s).unwrap();
    assert!(p.dnsmasq.is_none());
    assert!(!p.nft.contains("table netdev vireo {"));
}

#[test]
fn bad_states_are_refused() {
    let check = |f: &dyn Fn(&mut VpcState), want: &str| {
        let mut s = state();
        f(&mut s);
        let e = plan(&scope(), &s).unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} should say {want:?}");
    };
    check(&|s| s.vpc_id = "VPC 1".into(), "invalid VPC id");
    check(
        &|s| s.subnets[1].cidr = "10.1.0.0/24".parse().unwrap(),
        "is not inside the VPC",
    );
    check(
        &|s| s.subnets[1].cidr = "10.0.1.128/25".parse().unwrap(),
        "overlap",
    );
    check(
        &|s| s.subnets[1].cidr = "10.0.2.0/31".parse().unwrap(),
        "too small",
    );
    check(
        &|s| s.interfaces[0].subnet = "subnet-x".into(),
        "no subnet subnet-x",
    );
    check(
        &|s| s.interfaces[0].groups.push("sg-x".into()),
        "no security group sg-x",
    );
    check(
        &|s| s.interfaces[0].ip = Ipv4Addr::new(10, 0, 1, 1),
        "reserved",
    );
    check(
        &|s| s.interfaces[0].ip = Ipv4Addr::new(10, 0, 2, 9),
        "not a host address",
    );
    check(
        &|s| s.interfaces[1].ip = Ipv4Addr::new(10, 0, 1, 5),
        "duplicate private IP",
    );
    check(
        &|s| s.interfaces[1].mac = s.interfaces[0].mac,
        "duplicate MAC",
    );
    check(
        &|s| s.interfaces[0].mac = "01:00:5e:00:00:01".parse().unwrap(),
        "not a unicast",
    );
    check(&|s| s.peers.clear(), "not among the peers");
    check(
        &|s| {
            s.security_groups[0].ingress[0].protocol = Protocol::Tcp(PortRange { from: 30, to: 20 })
        },
        "reversed",
    );
    check(
        &|s| s.public_ips[0].private = Ipv4Addr::new(10, 0, 1, 99),
        "which no interface",
    );
}

#[test]
fn public_ip_of_a_remote_interface_is_served_by_its_host() {
    let mut s = state();
    s.public_ips.push(PublicIp {
        public: Ipv4Addr::new(203, 0, 113, 7),
        private: Ipv4Addr::new(10, 0, 1, 7),
    });
    let p = plan(&scope(), &s).unwrap();
    assert_eq!(
        p.uplink.unwrap().publics,
        vec![Ipv4Addr::new(203, 0, 113, 5)]
    );
    assert!(!p.nft.contains("203.0.113.7"));
}

/// Where host `p` sends traffic for `ip`: `tap NAME` (routed to a TAP here), `vxlan MAC`
/// (routed over VXLAN, to the host of that MAC) or `none`.
fn route_of(p: &Plan, ip: Ipv4Addr) -> String {
    let taps: Vec<_> = p.taps.iter().filter(|t| t.ip == ip && !t.standby).collect();
    let remotes: Vec<_> = p.remotes.iter().filter(|r| r.ip == ip && r.route).collect();
    match (taps.as_slice(), remotes.as_slice()) {
        ([t], []) => format!("tap {}", t.name),
        ([], [r]) => format!("vxlan {}", r.mac),
        ([], []) => "none".into(),
        _ => panic!("{ip} routed twice: {taps:?} {remotes:?}"),
    }
}

/// eni-a (10.0.1.5, with a public IP) moves from host 0 to host 1; eni-b stays on host 0,
/// eni-c is on host 2. The state of `host` with eni-a owned by `owner`, standing by on
/// `standby`.
fn moving(host: u32, owner: u32, standby: Option<u32>) -> VpcState {
    let mut s = state();
    s.interfaces[0].host = owner;
    s.interfaces[0].standby = standby;
    s.interfaces[2].host = 2;
    s.host.index = host;
    s.peers = (0..3)
        .filter(|&h| h != host)
        .map(|h| Peer {
            host: h,
            underlay: Ipv4Addr::new(10, 214, 3, h as u8 + 1),
        })
        .collect();
    s
}

#[test]
fn a_migration_stands_by_and_switches_over() {
    let sc = scope();
    let a_ip = Ipv4Addr::new(10, 0, 1, 5);
    let tap_a = crate::names::tap_name("eni-a");
    let vx = |h: u32| format!("vxlan {}", sc.vxlan_mac("vpc-1", h));
    let peers = |p: &Plan| -> Vec<u32> {
        p.vxlan
            .as_ref()
            .map_or(Vec::new(), |v| v.peers.iter().map(|x| x.host).collect())
    };
    let tap = |p: &Plan| p.taps.iter().find(|t| t.eni_id == "eni-a").cloned();

    // Before the switch-over: the source routes to its TAP and has the destination's VXLAN
    // entries ready (a neighbour entry without a route); the destination has eni-a's TAP,
    // chains and DHCP host but routes it to the source; the other host to the source too,
    // with the destination's fdb entry ready.
    let src = plan(&sc, &moving(0, 0, Some(1))).unwrap();
    assert_eq!(route_of(&src, a_ip), format!("tap {tap_a}"));
    let ready: Vec<_> = src.remotes.iter().filter(|r| r.eni_id == "eni-a").collect();
    assert_eq!(ready.len(), 1);
    assert_eq!((ready[0].host, ready[0].route), (1, false));
    assert_eq!(ready[0].mac, sc.vxlan_mac("vpc-1", 1));
    assert_eq!(peers(&src), [1, 2]);
    assert_eq!(
        src.uplink.as_ref().unwrap().publics,
        [Ipv4Addr::new(203, 0, 113, 5)]
    );

    let dst = plan(&sc, &moving(1, 0, Some(1))).unwrap();
    let t = tap(&dst).expect("the destination's TAP");
    assert!(t.standby);
    assert_eq!(t.tap_mac, crate::names::tap_mac("eni-a"));
    assert_eq!(route_of(&dst, a_ip), vx(0));
    assert!(
        dst.nft.contains(&format!("chain spoof-{tap_a} {{")),
        "{}",
        dst.nft
    );
    assert!(
        dst.nft.contains(&format!("chain in-{tap_a} {{")),
        "{}",
        dst.nft
    );
    assert!(dst
        .dnsmasq
        .as_ref()
        .unwrap()
        .conf
        .contains("dhcp-host=02:00:0a:00:01:05,set:ip-10-0-1-5,10.0.1.5"));
    // Its public IP stays with the owner's edge.
    assert!(dst.uplink.as_ref().unwrap().publics.is_empty());
    assert!(!dst.nft.contains("203.0.113.5"), "{}", dst.nft);
    assert_eq!(peers(&dst), [0, 2]);

    let other = plan(&sc, &moving(2, 0, Some(1))).unwrap();
    assert!(tap(&other).is_none());
    assert_eq!(route_of(&other, a_ip), vx(0));
    assert_eq!(peers(&other), [0, 1]);

    // After the switch-over: the destination owns it, the source stands by (its TAP stays
    // for the source VMM until the move ends) and routes it over VXLAN; the other host's
    // route points at the destination. Nothing else differs from before.
    let src2 = plan(&sc, &moving(0, 1, Some(0))).unwrap();
    assert!(tap(&src2).unwrap().standby);
    assert_eq!(route_of(&src2, a_ip), vx(1));
    assert_eq!(peers(&src2), [1, 2]);
    let dst2 = plan(&sc, &moving(1, 1, Some(0))).unwrap();
    assert!(!tap(&dst2).unwrap().standby);
    assert_eq!(route_of(&dst2, a_ip), format!("tap {tap_a}"));
    let ready: Vec<_> = dst2
        .remotes
        .iter()
        .filter(|r| r.eni_id == "eni-a")
        .collect();
    assert_eq!((ready[0].host, ready[0].route), (0, false));
    let other2 = plan(&sc, &moving(2, 1, Some(0))).unwrap();
    assert_eq!(route_of(&other2, a_ip), vx(1));
    for (before, after) in [(&src, &src2), (&dst, &dst2), (&other, &other2)] {
        for ip in [Ipv4Addr::new(10, 0, 2, 6), Ipv4Addr::new(10, 0, 1, 7)] {
            assert_eq!(route_of(before, ip), route_of(after, ip), "{ip}");
        }
        assert_eq!(
            before.taps.iter().map(|t| &t.name).collect::<Vec<_>>(),
            after.taps.iter().map(|t| &t.name).collect::<Vec<_>>()
        );
        assert_eq!(peers(before), peers(after));
    }

    // When the move ends (eni-a on host 1, standing by nowhere) every host routes it where
    // the switch-over did: the reconciling apply flips nothing back. The source's TAP goes.
    for (host, switched) in [(0, &src2), (1, &dst2), (2, &other2)] {
        let done = plan(&sc, &moving(host, 1, None)).unwrap();
        assert_eq!(
            route_of(&done, a_ip),
            route_of(switched, a_ip),
            "host {host}"
        );
    }
    assert!(tap(&plan(&sc, &moving(0, 1, None)).unwrap()).is_none());
    // And before the move began, the destination knew nothing of host 1's side.
    let before = plan(&sc, &moving(2, 0, None)).unwrap();
    assert_eq!(peers(&before), [0]);
}

#[test]
fn a_standby_needs_another_host_that_is_a_peer() {
    let e = plan(&scope(), &moving(0, 0, Some(0))).unwrap_err();
    assert!(
        matches!(e, PlanError::StandbyOnOwner { ref eni, host: 0 } if eni == "eni-a"),
        "{e}"
    );
    let e = plan(&scope(), &moving(0, 0, Some(3))).unwrap_err();
    assert!(matches!(e, PlanError::NoPeer { host: 3, .. }), "{e}");
}

#[test]
fn taps_have_a_fixed_mac_per_interface() {
    let p = plan(&scope(), &state()).unwrap();
    for t in &p.taps {
        assert_eq!(t.tap_mac, crate::names::tap_mac(&t.eni_id));
        assert!(!t.standby);
    }
    assert_ne!(p.taps[0].tap_mac, p.taps[1].tap_mac);
    // The VXLAN peers: one fdb entry per other host, not per remote interface.
    assert_eq!(p.vxlan.unwrap().peers.len(), 1);
}
