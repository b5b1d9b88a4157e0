//! A live migration's switch-over in the data plane (root needed): an interface moving from
//! host 1 to host 2 of a VPC that also has host 3 stands by on host 2 (its TAP and chains
//! there, its traffic still routed to host 1), and `switch_interface` on each host then
//! changes that one interface's route (and, on the other host, its neighbour entry) and
//! nothing else; instances on all three hosts reach it at once at its new TAP, whose MAC is
//! the old one's (the guest keeps its neighbour entries); a connection it opened, whose peer
//! talks next, goes on once `carry_conntrack` has copied its entry to host 2 (its group lets
//! in only ICMP as new); the applies that follow change nothing back.

mod lab;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use lab::*;
use vireo_net::{HostPlace, Peer, VpcState};

/// What of host namespace `ns`'s VPC namespace the switch-over may not change unnoticed: its
/// links (name and MAC), routes, VXLAN neighbours and fdb entries, and its ruleset (less
/// the counters' values).
fn snapshot(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (what, args) in [
        ("link", vec!["ip", "-n", ns, "-br", "link"]),
        (
            "route",
            vec!["ip", "-n", ns, "route", "show", "table", "main"],
        ),
        (
            "neigh",
            vec!["ip", "-n", ns, "neigh", "show", "dev", "vxlan0"],
        ),
        (
            "fdb",
            vec!["bridge", "-n", ns, "fdb", "show", "dev", "vxlan0"],
        ),
        (
            "nft",
            vec!["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
        ),
    ] {
        for l in must(&args).lines() {
            let mut l = l.trim().to_string();
            if let Some(i) = l.find("counter packets") {
                l.truncate(i);
            }
            if what == "link" {
                // Name and MAC: a TAP's carrier is whether a VMM (here, a pump) holds it.
                let f: Vec<&str> = l.split_whitespace().collect();
                l = format!("{} {}", f[0], f.get(2).unwrap_or(&""));
            }
            out.push(format!("{what}: {l}"));
        }
    }
    out.sort();
    out
}

/// Fake instances (their addresses configured) of the interfaces `enis` of `state`: their
/// namespaces.
fn started<const N: usize>(lab: &mut Lab, state: &VpcState, enis: [&str; N]) -> [String; N] {
    enis.map(|e| {
        let i = lab.instance(state, e, true);
        lab.ns(i).to_string()
    })
}

/// The lines of `after` that `before` lacks, and the other way round.
fn changes(before: &[String], after: &[String]) -> (Vec<String>, Vec<String>) {
    let gone = before.iter().filter(|l| !after.contains(l)).cloned();
    let new = after.iter().filter(|l| !before.contains(l)).cloned();
    (new.collect(), gone.collect())
}

#[test]
fn the_switch_over_changes_one_route_per_host_and_nothing_else() {
    let mut lab = Lab::new();
    // Three "hosts" on one underlay bridge.
    let ul = lab.netns("ul");
    must(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"]);
    must(&["ip", "-n", &ul, "link", "set", "br0", "up"]);
    let hosts: Vec<String> = (1..=3).map(|h| lab.netns(&format!("host{h}"))).collect();
    for (i, h) in hosts.iter().enumerate() {
        let port = format!("p{}", i + 1);
        must(&[
            "ip", "-n", h, "link", "add", "u", "type", "veth", "peer", "name", &port, "netns", &ul,
        ]);
        must(&["ip", "-n", &ul, "link", "set", &port, "master", "br0", "up"]);
        let a = format!("10.213.0.{}/24", i + 1);
        must(&["ip", "-n", h, "addr", "add", &a, "dev", "u"]);
        must(&["ip", "-n", h, "link", "set", "u", "up"]);
    }
    // m lets in ICMP only (anything else must belong to a connection tracked on its host);
    // the others everything from the VPC.
    let mut base = vpc(
        "vpc-move",
        vec![subnet("subnet-a", "10.0.1.0/24")],
        ["eni-m", "eni-a", "eni-b", "eni-c"]
            .into_iter()
            .zip(5u8..)
            .map(|(e, n)| {
                let g = if e == "eni-m" { "sg-m" } else { "sg-all" };
                eni(e, &format!("10.0.1.{n}"), "subnet-a", &[g], n)
            })
            .collect(),
        vec![
            open_group("sg-all"),
            group(
                "sg-m",
                vec![cidr_rule(
                    vireo_net::Protocol::Icmp {
                        icmp_type: None,
                        code: None,
                    },
                    "10.0.0.0/16",
                )],
                vec![cidr_rule(vireo_net::Protocol::All, "0.0.0.0/0")],
            ),
        ],
    );
    for (i, host) in [1, 1, 2, 3].into_iter().enumerate() {
        base.interfaces[i].host = host;
    }
    // The state of host `host` with eni-m owned by `owner`, standing by on `standby`.
    let on = |host: u32, owner: u32, standby: Option<u32>| {
        let mut s = base.clone();
        s.host = HostPlace {
            index: host,
            netns: Some(hosts[host as usize - 1].clone()),
        };
        s.peers = (1..=3)
            .filter(|&p| p != host)
            .map(|p| Peer {
                host: p,
                underlay: ip(&format!("10.213.0.{p}")),
            })
            .collect();
        s.interfaces[0].host = owner;
        s.interfaces[0].standby = standby;
        s
    };
    let apply_all = |lab: &mut Lab, owner: u32, standby: Option<u32>| -> Vec<VpcState> {
        (1..=3)
            .map(|h| {
                let s = on(h, owner, standby);
                lab.apply(&s);
                s
            })
            .collect()
    };
    let vpc_ns: Vec<String> = (1..=3)
        .map(|h| lab.scope.vpc_netns("vpc-move", h))
        .collect();
    let m_ip = ip("10.0.1.5");
    let tap_m = vireo_net::tap_name("eni-m");
    let route_of_m = |h: usize| must(&["ip", "-n", &vpc_ns[h - 1], "route", "show", "10.0.1.5"]);

    let first = apply_all(&mut lab, 1, None);
    let m = lab.instance(&first[0], "eni-m", true);
    let [na] = started(&mut lab, &first[0], ["eni-a"]);
    let [nb] = started(&mut lab, &first[1], ["eni-b"]);
    let [nc] = started(&mut lab, &first[2], ["eni-c"]);
    let nm = lab.ns(m).to_string();
    for from in [&na, &nb, &nc] {
        assert!(ping(from, m_ip), "{from} reaches m on host 1");
    }
    // m knows its router's and its peers' MAC: the TAP's (proxy ARP).
    let tap_mac = vireo_net::tap_mac("eni-m").to_string();
    let neigh = must(&["ip", "-n", &nm, "neigh", "show", "dev", "eth0"]);
    assert!(neigh.contains(&tap_mac), "{neigh}");

    // Standing by: host 2 has m's TAP (with its fixed MAC) and chains, but routes m to host 1.
    let standby = apply_all(&mut lab, 1, Some(2));
    let links2 = must(&["ip", "-n", &vpc_ns[1], "link", "show", "dev", &tap_m]);
    assert!(links2.contains(&tap_mac), "{links2}");
    let rules2 = vireo_net::list_ruleset(&vpc_ns[1]).unwrap();
    assert!(rules2.contains(&format!("chain spoof-{tap_m}")), "{rules2}");
    assert!(route_of_m(1).contains(&tap_m), "{}", route_of_m(1));
    assert!(route_of_m(2).contains("vxlan0"), "{}", route_of_m(2));
    for from in [&na, &nb, &nc] {
        assert!(
            ping(from, m_ip),
            "{from} reaches m on host 1 while host 2 stands by"
        );
    }
    // m opens a connection to c (tracked on hosts 1 and 3, where it passes); c talks first.
    let listener = vireo_net::in_netns(&nc, || TcpListener::bind(("10.0.1.8", 5000)))
        .unwrap()
        .unwrap();
    let to_c = SocketAddr::from((ip("10.0.1.8"), 5000));
    let mut m_conn = vireo_net::in_netns(&nm, || {
        TcpStream::connect_timeout(&to_c, Duration::from_secs(2))
    })
    .unwrap()
    .unwrap();
    let (mut c_conn, _) = listener.accept().unwrap();
    let said = |c: &mut TcpStream, m: &mut TcpStream, text: &str, wait: u64| -> bool {
        c.write_all(text.as_bytes()).unwrap();
        m.set_read_timeout(Some(Duration::from_secs(wait))).unwrap();
        let mut buf = vec![0u8; text.len()];
        m.read_exact(&mut buf).is_ok() && buf == text.as_bytes()
    };
    assert!(said(&mut c_conn, &mut m_conn, "before", 2), "c to m before");

    // Applying again changes nothing (the plan is stable while standing by).
    let before: Vec<Vec<String>> = vpc_ns.iter().map(|ns| snapshot(ns)).collect();
    for s in &standby {
        lab.apply(s);
    }
    let again: Vec<Vec<String>> = vpc_ns.iter().map(|ns| snapshot(ns)).collect();
    assert_eq!(before, again);

    // The guest now runs on host 2: its frames go to and come from host 2's TAP. Until the
    // switch-over, host 1 still routes it to its old TAP, which nobody reads.
    lab.move_instance(m, &vpc_ns[1]);
    assert!(!ping(&na, m_ip), "host 1 still routes m to its old TAP");

    let switched: Vec<VpcState> = (1..=3).map(|h| on(h, 2, Some(1))).collect();
    let t = Instant::now();
    for h in [2, 1, 3] {
        vireo_net::switch_interface(&lab.scope, &switched[h - 1], "eni-m")
            .unwrap_or_else(|e| panic!("switch on host {h}: {e}"));
    }
    eprintln!(
        "switch-over on three hosts: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    // At once, with no apply: everyone reaches m at its new TAP, and m (its neighbour
    // entries untouched) reaches everyone.
    for from in [&na, &nb, &nc] {
        assert!(
            ping(from, m_ip),
            "{from} reaches m on host 2 after the switch-over"
        );
    }
    for to in ["10.0.1.6", "10.0.1.7", "10.0.1.8"] {
        assert!(ping(&nm, ip(to)), "m reaches {to} from host 2");
    }

    // What changed: m's route on hosts 1 and 2, its neighbour entry on host 3. Nothing else.
    let after: Vec<Vec<String>> = vpc_ns.iter().map(|ns| snapshot(ns)).collect();
    let vx2 = lab.scope.vxlan_mac("vpc-move", 2).to_string();
    let vx1 = lab.scope.vxlan_mac("vpc-move", 1).to_string();
    let (new, gone) = changes(&before[0], &after[0]);
    assert_eq!(new, ["route: 10.0.1.5 dev vxlan0 scope link"], "host 1");
    assert_eq!(
        gone,
        [format!(
            "route: 10.0.1.5 dev {tap_m} scope link src 10.0.1.1"
        )],
        "host 1"
    );
    let (new, gone) = changes(&before[1], &after[1]);
    assert_eq!(
        new,
        [format!(
            "route: 10.0.1.5 dev {tap_m} scope link src 10.0.1.1"
        )],
        "host 2"
    );
    assert_eq!(gone, ["route: 10.0.1.5 dev vxlan0 scope link"], "host 2");
    let (new, gone) = changes(&before[2], &after[2]);
    assert_eq!(
        new,
        [format!("neigh: 10.0.1.5 lladdr {vx2} PERMANENT")],
        "host 3"
    );
    assert_eq!(
        gone,
        [format!("neigh: 10.0.1.5 lladdr {vx1} PERMANENT")],
        "host 3"
    );

    // c talks on the connection m opened: host 2 has never seen it, and m's group lets in
    // only ICMP as new, so c's data is dropped there until its entry is carried over; then
    // c's retransmission gets through.
    assert!(
        !said(&mut c_conn, &mut m_conn, "after", 2),
        "without its conntrack entry, host 2 drops what c sends on m's connection"
    );
    let t = Instant::now();
    let carried = vireo_net::carry_conntrack(&lab.scope, "vpc-move", m_ip, 1, 2)
        .unwrap_or_else(|e| panic!("carry_conntrack: {e}"));
    eprintln!(
        "conntrack entries carried from host 1 to host 2: {carried} in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(carried >= 1, "m's connection to c was tracked on host 1");
    let mut buf = [0u8; 5];
    m_conn
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    m_conn
        .read_exact(&mut buf)
        .expect("c's data reaches m once carried");
    assert_eq!(&buf, b"after");
    assert!(
        said(&mut c_conn, &mut m_conn, "again", 2),
        "and from then on"
    );
    m_conn.write_all(b"back").unwrap();
    let mut buf = [0u8; 4];
    c_conn
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    c_conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"back");

    // The applies that follow (the switched state, then the move's end: m on host 2 only)
    // keep every route where the switch-over put it; host 1's TAP of m goes at the end.
    for s in &switched {
        lab.apply(s);
    }
    let reapplied: Vec<Vec<String>> = vpc_ns.iter().map(|ns| snapshot(ns)).collect();
    assert_eq!(
        after, reapplied,
        "applying the switched state changes nothing"
    );
    apply_all(&mut lab, 2, None);
    assert!(route_of_m(1).contains("vxlan0"), "{}", route_of_m(1));
    assert!(route_of_m(2).contains(&tap_m), "{}", route_of_m(2));
    assert!(route_of_m(3).contains("vxlan0"), "{}", route_of_m(3));
    let links1 = must(&["ip", "-n", &vpc_ns[0], "-br", "link"]);
    assert!(!links1.contains(&tap_m), "{links1}");
    for from in [&na, &nb, &nc] {
        assert!(ping(from, m_ip), "{from} reaches m after the move");
    }
    lab.cleanup();
    let left = lab.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}
