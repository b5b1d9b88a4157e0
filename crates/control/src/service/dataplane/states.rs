//! Each host's share of a VPC: from the service's desired network, the [`VpcState`] every
//! host it lives on should hold (its interfaces there, and both hosts of one being moved).

use super::*;

/// Every host the VPC should be on, with the state for each: where its interfaces are and,
/// for one a live migration moves, both its hosts (its owner now and the one standing by).
pub(super) fn states(
    hosts_of: &Hosts,
    d: &VpcNetwork,
    moving: &HashMap<String, Move>,
) -> BTreeMap<u32, VpcState> {
    let mut hosts: BTreeSet<u32> = d.interfaces.iter().map(|i| i.host).collect();
    for m in d.interfaces.iter().filter_map(|i| moving.get(&i.eni_id)) {
        hosts.extend([m.from, m.to]);
    }
    let groups: BTreeSet<&str> = d.groups.iter().map(|g| g.group_id.as_str()).collect();
    let security_groups: Vec<SecurityGroup> = d
        .groups
        .iter()
        .map(|g| SecurityGroup {
            id: g.group_id.clone(),
            ingress: g.ingress.iter().filter_map(|r| rule(r, &groups)).collect(),
            egress: g.egress.iter().filter_map(|r| rule(r, &groups)).collect(),
        })
        .collect();
    let internet =
        d.internet_gateway.is_some() && d.subnets.iter().any(|s| !s.internet_routes.is_empty());
    hosts
        .iter()
        .map(|&h| {
            let interfaces = d
                .interfaces
                .iter()
                .filter_map(|i| {
                    // A moving interface has its TAP on both hosts (the destination's
                    // must exist before the destination VMM starts); its traffic goes to
                    // the source until the switch-over.
                    let (host, standby) = match moving.get(&i.eni_id) {
                        Some(m) => {
                            let (owner, standby) = m.hosts();
                            (owner, Some(standby))
                        }
                        None => (i.host, None),
                    };
                    Some(Interface {
                        id: i.eni_id.clone(),
                        mac: i.mac.parse::<Mac>().ok()?,
                        ip: i.private_ip,
                        subnet: i.subnet_id.clone(),
                        groups: i.groups.clone(),
                        host,
                        standby,
                    })
                })
                .collect();
            let peers = hosts
                .iter()
                .filter(|&&o| o != h)
                .filter_map(|&o| {
                    Some(vireo_net::Peer {
                        host: o,
                        underlay: hosts_of.underlay(h, o)?,
                    })
                })
                .collect();
            let state = VpcState {
                vpc_id: d.vpc_id.clone(),
                cidr: cidr(d.cidr),
                region: d.region.clone(),
                host: hosts_of.place(h),
                subnets: d
                    .subnets
                    .iter()
                    .map(|s| Subnet {
                        id: s.subnet_id.clone(),
                        cidr: cidr(s.cidr),
                    })
                    .collect(),
                interfaces,
                security_groups: security_groups.clone(),
                internet_gateway: internet,
                public_ips: d
                    .nat
                    .iter()
                    .map(|n| PublicIp {
                        public: n.public_ip,
                        private: n.private_ip,
                    })
                    .collect(),
                dns: DnsSettings {
                    support: d.enable_dns_support,
                    hostnames: d.enable_dns_hostnames,
                },
                peers,
            };
            (h, state)
        })
        .collect()
}
