//! Unit tests of the data plane's mapping: rules, hosts' states, moves and underlay addresses.

use super::*;

fn r(protocol: Protocol, from: i32, to: i32) -> RuleNetwork {
    RuleNetwork {
        rule_id: "sgr-1".into(),
        protocol,
        from_port: from,
        to_port: to,
        peer: RulePeer::Cidr("10.0.0.0/8".parse().unwrap()),
    }
}

#[test]
fn rules_map_onto_the_data_plane() {
    let none = BTreeSet::new();
    let tcp = rule(&r(Protocol::Tcp, 22, 22), &none).unwrap();
    assert_eq!(
        tcp.protocol,
        vireo_net::Protocol::Tcp(PortRange::single(22))
    );
    assert_eq!(
        rule(&r(Protocol::Udp, -1, -1), &none).unwrap().protocol,
        vireo_net::Protocol::Udp(PortRange::ALL)
    );
    assert_eq!(
        rule(&r(Protocol::Icmp, 8, -1), &none).unwrap().protocol,
        vireo_net::Protocol::Icmp {
            icmp_type: Some(8),
            code: None
        }
    );
    assert!(rule(&r(Protocol::Number(47), -1, -1), &none).is_none());
    let mut g = r(Protocol::All, -1, -1);
    g.peer = RulePeer::Group("sg-other".into());
    assert!(rule(&g, &none).is_none(), "a group of another VPC");
    let mine: BTreeSet<&str> = ["sg-other"].into_iter().collect();
    assert_eq!(
        rule(&g, &mine).unwrap().peer,
        vireo_net::RulePeer::Group("sg-other".into())
    );
}

/// A VPC with eni-a (host 0, moving) and eni-b (host 0, staying), over hosts 0 to 2.
fn moving_vpc() -> (Hosts, VpcNetwork) {
    let hosts = Hosts(crate::hosts::plan(std::path::Path::new("/d"), 3).unwrap());
    let iface = |id: &str, ip: [u8; 4]| super::super::network::InterfaceNetwork {
        eni_id: id.into(),
        mac: format!("02:00:00:00:00:{:02x}", ip[3]),
        private_ip: Ipv4Addr::from(ip),
        subnet_id: "subnet-1".into(),
        host_name: String::new(),
        instance_id: None,
        host: 0,
        instance_running: true,
        device_index: Some(0),
        groups: Vec::new(),
        public_ip: None,
    };
    let d = VpcNetwork {
        vpc_id: "vpc-1".into(),
        cidr: "10.0.0.0/16".parse().unwrap(),
        enable_dns_support: true,
        enable_dns_hostnames: false,
        region: "r".into(),
        dns_domain: "r.compute.internal".into(),
        subnets: vec![super::super::network::SubnetNetwork {
            subnet_id: "subnet-1".into(),
            cidr: "10.0.1.0/24".parse().unwrap(),
            router: Ipv4Addr::new(10, 0, 1, 1),
            internet_routes: Vec::new(),
        }],
        interfaces: vec![iface("eni-a", [10, 0, 1, 5]), iface("eni-b", [10, 0, 1, 6])],
        groups: Vec::new(),
        internet_gateway: None,
        nat: Vec::new(),
    };
    (hosts, d)
}

/// Where each host's state puts eni-a: (host, standby), the same on every host.
fn eni_a(states: &BTreeMap<u32, VpcState>) -> Vec<(u32, u32, Option<u32>)> {
    states
        .iter()
        .map(|(h, s)| {
            let i = s.interfaces.iter().find(|i| i.id == "eni-a").unwrap();
            (*h, i.host, i.standby)
        })
        .collect()
}

#[test]
fn a_move_stands_by_then_switches_over() {
    let (hosts, d) = moving_vpc();
    let none = HashMap::new();
    assert_eq!(eni_a(&states(&hosts, &d, &none)), [(0, 0, None)]);
    let mut m = Move {
        from: 0,
        to: 2,
        switched: false,
    };
    let moving: HashMap<String, Move> = [("eni-a".to_string(), m)].into();
    // Both hosts have the VPC; the source owns the interface, the destination stands by.
    let before = states(&hosts, &d, &moving);
    assert_eq!(eni_a(&before), [(0, 0, Some(2)), (2, 0, Some(2))]);
    assert_eq!(before[&0].peers.len(), 1);
    assert_eq!(before[&2].peers[0].host, 0);
    m.switched = true;
    let moving: HashMap<String, Move> = [("eni-a".to_string(), m)].into();
    let after = states(&hosts, &d, &moving);
    assert_eq!(eni_a(&after), [(0, 2, Some(0)), (2, 2, Some(0))]);
    // eni-b stays where it is throughout.
    for s in before.values().chain(after.values()) {
        let b = s.interfaces.iter().find(|i| i.id == "eni-b").unwrap();
        assert_eq!((b.host, b.standby), (0, None));
    }
    // Once the database says host 2 and the move is over, host 0 keeps the VPC for eni-b.
    let mut done = d.clone();
    done.interfaces[0].host = 2;
    assert_eq!(
        eni_a(&states(&hosts, &done, &none)),
        [(0, 2, None), (2, 2, None)]
    );
}

/// `settle` waits for the VPC's newest job at most its bound, then says so; once the job
/// has run, it returns the job's outcome (here a state the data plane refuses before it
/// touches the system: no root needed).
#[test]
fn settle_is_bounded_and_returns_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = crate::hosts::plan(dir.path(), 0).unwrap();
    let plane = LinuxPlane::new(dir.path(), hosts, None).unwrap();
    assert!(
        plane.settle("vpc-1", Duration::ZERO).is_ok(),
        "nothing asked"
    );
    let (_, mut d) = moving_vpc();
    d.vpc_id = "VPC_1".into();
    {
        // The worker is busy (a migration's switch-over holds it).
        let _busy = plane.shared.busy.lock().unwrap();
        plane.apply(&d).unwrap();
        let t0 = Instant::now();
        let e = plane
            .settle("VPC_1", Duration::from_millis(200))
            .unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert!(e.message.contains("not applied within 200ms"), "{e}");
    }
    let e = plane.settle("VPC_1", Duration::from_secs(30)).unwrap_err();
    assert!(
        e.message.contains("VPC_1") && !e.message.contains("within"),
        "{e}"
    );
}

#[test]
fn underlay_addresses_follow_the_links() {
    let hosts = Hosts(crate::hosts::plan(std::path::Path::new("/d"), 2).unwrap());
    assert_eq!(hosts.underlay(0, 1), Some(hosts.0[1].addr));
    assert_eq!(hosts.underlay(1, 0), Some(hosts.0[1].peer));
    assert_eq!(hosts.place(1).netns, hosts.0[1].netns);
    assert_eq!(hosts.place(0).netns, None);
}
