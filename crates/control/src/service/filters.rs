//! The filters DescribeInstances and DescribeImages take, and how a resource matches them (the
//! wildcard matching itself is [`crate::filter`]). An instance's network filters read its
//! interfaces from the network state: the primary interface (device 0) for `vpc-id`,
//! `subnet-id`, `private-ip-address`, `ip-address` and `private-dns-name`, as DescribeInstances
//! shows them; every interface for `network-interface.*` and `instance.group-*`.

use crate::cidr::host_name;
use crate::db::network::NetState;
use crate::filter::{Filter, FilterMatch};
use crate::model::{Instance, Tag};
use crate::netmodel::NetworkInterface;

/// What an instance's network filters compare against: the network state and the domain of
/// private DNS names (`<region>.compute.internal`).
pub(super) struct NetView<'a> {
    pub net: &'a NetState,
    pub dns_domain: &'a str,
}

pub(super) fn is_instance_filter(name: &str) -> bool {
    matches!(
        name,
        "instance-state-name"
            | "instance-state-code"
            | "instance-type"
            | "image-id"
            | "instance-id"
            | "reservation-id"
            | "tag-key"
            | "tag-value"
            | "launch-index"
            | "availability-zone"
            | "vpc-id"
            | "subnet-id"
            | "private-ip-address"
            | "ip-address"
            | "private-dns-name"
            | "instance.group-id"
            | "instance.group-name"
            | "network-interface.network-interface-id"
            | "network-interface.subnet-id"
            | "network-interface.vpc-id"
            | "network-interface.addresses.private-ip-address"
    ) || name.starts_with("tag:")
}

/// The values of an instance's network filter `name` (`None`: not a network filter).
fn network_values(i: &Instance, name: &str, v: &NetView<'_>) -> Option<Vec<String>> {
    let enis = v.net.interfaces_of(&i.instance_id);
    let primary: Vec<&NetworkInterface> = enis
        .iter()
        .copied()
        .filter(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0))
        .collect();
    let each = |list: &[&NetworkInterface], f: &dyn Fn(&NetworkInterface) -> String| {
        list.iter().map(|e| f(e)).collect::<Vec<String>>()
    };
    Some(match name {
        "vpc-id" => each(&primary, &|e| e.vpc_id.clone()),
        "subnet-id" => each(&primary, &|e| e.subnet_id.clone()),
        "private-ip-address" => each(&primary, &|e| e.private_ip.to_string()),
        "private-dns-name" => each(&primary, &|e| {
            format!("{}.{}", host_name(e.private_ip), v.dns_domain)
        }),
        "ip-address" => primary
            .iter()
            .filter_map(|e| v.net.public_ip_of(&e.eni_id))
            .map(|a| a.public_ip.to_string())
            .collect(),
        "instance.group-id" => enis.iter().flat_map(|e| e.groups.clone()).collect(),
        "instance.group-name" => enis
            .iter()
            .flat_map(|e| &e.groups)
            .filter_map(|g| v.net.group(g))
            .map(|g| g.name.clone())
            .collect(),
        "network-interface.network-interface-id" => each(&enis, &|e| e.eni_id.clone()),
        "network-interface.subnet-id" => each(&enis, &|e| e.subnet_id.clone()),
        "network-interface.vpc-id" => each(&enis, &|e| e.vpc_id.clone()),
        "network-interface.addresses.private-ip-address" => {
            each(&enis, &|e| e.private_ip.to_string())
        }
        _ => return None,
    })
}

pub(super) fn instance_matches(i: &Instance, f: &Filter, net: &NetView<'_>) -> bool {
    if let Some(values) = network_values(i, &f.name, net) {
        return f.matches_any(values.iter().map(String::as_str));
    }
    match f.name.as_str() {
        "instance-state-name" => f.matches_any([i.state.name()]),
        "instance-state-code" => f.matches_any([i.state.code().to_string().as_str()]),
        "instance-type" => f.matches_any([i.instance_type.as_str()]),
        "image-id" => f.matches_any([i.image_id.as_str()]),
        "instance-id" => f.matches_any([i.instance_id.as_str()]),
        "reservation-id" => f.matches_any([i.reservation_id.as_str()]),
        "launch-index" => f.matches_any([i.launch_index.to_string().as_str()]),
        "availability-zone" => true,
        n => tag_filter(n, f, &i.tags),
    }
}

pub(super) fn tag_filter(name: &str, f: &Filter, tags: &[Tag]) -> bool {
    if let Some(key) = name.strip_prefix("tag:") {
        tags.iter()
            .any(|t| t.key == key && f.matches_any([t.value.as_str()]))
    } else if name == "tag-key" {
        f.matches_any(tags.iter().map(|t| t.key.as_str()))
    } else if name == "tag-value" {
        f.matches_any(tags.iter().map(|t| t.value.as_str()))
    } else {
        false
    }
}
