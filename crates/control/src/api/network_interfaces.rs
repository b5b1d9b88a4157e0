//! Network interfaces: DescribeNetworkInterfaces; RunInstances' network parameters (SubnetId,
//! SecurityGroupId.N, SecurityGroup.N, PrivateIpAddress, NetworkInterface.N); and the network
//! part of DescribeInstances' instances.

use vireo_ec2_api::ids::IdKind;
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::netparams::{id_list, ipv4, opt_id, paged_describe, tags_xml};
use crate::cidr::host_name;
use crate::db::network::NetState;
use crate::netmodel::NetworkInterface;
use crate::service::{InterfaceSpec, Service};

/// RunInstances' interfaces: the NetworkInterface.N form, or the instance-level parameters as
/// device 0; empty when neither is given (the default subnet).
pub(super) fn launch_interfaces(p: &Params) -> Result<Vec<InterfaceSpec>, Ec2Error> {
    let group_ids = id_list(p, "SecurityGroupId", IdKind::SecurityGroup)?;
    let group_names: Vec<String> = p
        .list("SecurityGroup")?
        .into_iter()
        .map(str::to_string)
        .collect();
    let subnet_id = opt_id(p, "SubnetId", IdKind::Subnet)?;
    let private_ip = ipv4(p, "PrivateIpAddress")?;
    let members = p.structs("NetworkInterface")?;
    if members.is_empty() {
        if subnet_id.is_none()
            && group_ids.is_empty()
            && group_names.is_empty()
            && private_ip.is_none()
        {
            return Ok(Vec::new());
        }
        return Ok(vec![InterfaceSpec {
            device_index: 0,
            subnet_id,
            group_ids,
            group_names,
            private_ip,
            associate_public_ip: None,
            delete_on_termination: true,
            description: String::new(),
        }]);
    }
    if subnet_id.is_some()
        || !group_ids.is_empty()
        || !group_names.is_empty()
        || private_ip.is_some()
    {
        return Err(Ec2Error::invalid_parameter_combination(
            "Network interfaces and an instance-level subnet ID, security groups or private IP address may not be specified on the same request",
        ));
    }
    let mut out = Vec::new();
    for m in members {
        for unsupported in [
            "NetworkInterfaceId",
            "Ipv6AddressCount",
            "SecondaryPrivateIpAddressCount",
            "PrivateIpAddresses",
            "Ipv4PrefixCount",
            "Ipv6PrefixCount",
        ] {
            if m.iter()
                .any(|(k, _)| k == unsupported || k.starts_with(&format!("{unsupported}.")))
            {
                return Err(Ec2Error::unsupported_operation(format!(
                    "{} is not supported: an instance's interfaces are made with it, one private IPv4 address each",
                    m.full_name(unsupported)
                )));
            }
        }
        if let Some(t) = m.get("InterfaceType") {
            if t != "interface" {
                return Err(Ec2Error::unsupported_operation(format!(
                    "InterfaceType '{t}' is not supported"
                )));
            }
        }
        out.push(InterfaceSpec {
            device_index: m
                .int("DeviceIndex", 0..=7)?
                .ok_or_else(|| Ec2Error::missing_parameter(&m.full_name("DeviceIndex")))?
                as u32,
            subnet_id: opt_id(&m, "SubnetId", IdKind::Subnet)?,
            group_ids: id_list(&m, "SecurityGroupId", IdKind::SecurityGroup)?,
            group_names: Vec::new(),
            private_ip: ipv4(&m, "PrivateIpAddress")?,
            associate_public_ip: m.bool("AssociatePublicIpAddress")?,
            delete_on_termination: m.bool("DeleteOnTermination")?.unwrap_or(true),
            description: m.get("Description").unwrap_or("").to_string(),
        });
    }
    out.sort_by_key(|s| s.device_index);
    Ok(out)
}

/// The `groupSet` of an interface: id and name of each group.
pub(super) fn groups_xml(r: &mut Response, net: &NetState, groups: &[String]) {
    r.list("groupSet", groups, |r, g| {
        r.elem("groupId", g).elem(
            "groupName",
            net.group(g).map(|g| g.name.as_str()).unwrap_or(""),
        );
    });
}

/// The DNS domain's private name of an address: `ip-10-0-1-5.<region>.compute.internal`.
pub(super) fn private_dns(svc: &Service, e: &NetworkInterface) -> String {
    format!("{}.{}", host_name(e.private_ip), svc.dns_domain())
}

/// A public address's DNS name (EC2: ec2-198-51-100-2.<region>.compute.amazonaws.com).
pub(super) fn public_dns(svc: &Service, ip: std::net::Ipv4Addr) -> String {
    crate::service::public_dns_name(&svc.config().region, ip)
}

fn association_xml(r: &mut Response, svc: &Service, net: &NetState, e: &NetworkInterface) {
    if let Some(a) = net.public_ip_of(&e.eni_id) {
        r.nest("association", |r| {
            r.elem("publicIp", a.public_ip)
                .elem("publicDnsName", public_dns(svc, a.public_ip))
                .elem(
                    "ipOwnerId",
                    if a.allocation_id.is_some() {
                        svc.owner_id()
                    } else {
                        "amazon"
                    },
                )
                .opt_elem("allocationId", a.allocation_id.as_deref())
                .opt_elem("associationId", a.association_id.as_deref());
        });
    }
}

/// An interface's `attachment`, if it has one; `with_instance` adds the instance's id and owner
/// (DescribeNetworkInterfaces does; DescribeInstances shows the interface inside its instance).
fn attachment_xml(r: &mut Response, svc: &Service, e: &NetworkInterface, with_instance: bool) {
    if let Some(a) = &e.attachment {
        r.nest("attachment", |r| {
            r.elem("attachmentId", &a.attachment_id);
            if with_instance {
                r.elem("instanceId", &a.instance_id)
                    .elem("instanceOwnerId", svc.owner_id());
            }
            r.elem("deviceIndex", a.device_index)
                .elem("networkCardIndex", 0)
                .elem("status", "attached")
                .elem("attachTime", &a.attach_time)
                .bool_elem("deleteOnTermination", a.delete_on_termination);
        });
    }
}

/// An interface's public association, its one (primary) private address and no IPv6 ones.
fn addresses_xml(r: &mut Response, svc: &Service, net: &NetState, e: &NetworkInterface) {
    association_xml(r, svc, net, e);
    r.list("privateIpAddressesSet", [()], |r, _| {
        r.elem("privateIpAddress", e.private_ip)
            .elem("privateDnsName", private_dns(svc, e))
            .bool_elem("primary", true);
        association_xml(r, svc, net, e);
    });
    r.list("ipv6AddressesSet", std::iter::empty::<()>(), |_, _| {});
}

/// One interface as DescribeInstances shows it (InstanceNetworkInterface).
pub(super) fn instance_interface_xml(
    r: &mut Response,
    svc: &Service,
    net: &NetState,
    e: &NetworkInterface,
) {
    r.elem("networkInterfaceId", &e.eni_id)
        .elem("subnetId", &e.subnet_id)
        .elem("vpcId", &e.vpc_id)
        .elem("description", &e.description)
        .elem("ownerId", svc.owner_id())
        .elem("status", "in-use")
        .elem("macAddress", &e.mac)
        .elem("privateIpAddress", e.private_ip)
        .elem("privateDnsName", private_dns(svc, e))
        .bool_elem("sourceDestCheck", e.source_dest_check)
        .elem("interfaceType", "interface");
    groups_xml(r, net, &e.groups);
    attachment_xml(r, svc, e, false);
    addresses_xml(r, svc, net, e);
}

fn interface_xml(r: &mut Response, svc: &Service, net: &NetState, e: &NetworkInterface) {
    r.elem("networkInterfaceId", &e.eni_id)
        .elem("subnetId", &e.subnet_id)
        .elem("vpcId", &e.vpc_id)
        .elem("availabilityZone", &e.availability_zone)
        .elem("availabilityZoneId", svc.availability_zone_id())
        .elem("description", &e.description)
        .elem("ownerId", svc.owner_id())
        .bool_elem("requesterManaged", false)
        .elem(
            "status",
            if e.attachment.is_some() {
                "in-use"
            } else {
                "available"
            },
        )
        .elem("macAddress", &e.mac)
        .elem("privateIpAddress", e.private_ip)
        .elem("privateDnsName", private_dns(svc, e))
        .bool_elem("sourceDestCheck", e.source_dest_check)
        .elem("interfaceType", "interface");
    if let Some(p) = net.public_ip_of(&e.eni_id) {
        r.elem("publicDnsName", public_dns(svc, p.public_ip));
    }
    groups_xml(r, net, &e.groups);
    attachment_xml(r, svc, e, true);
    addresses_xml(r, svc, net, e);
    tags_xml(r, &e.tags);
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let q = paged_describe(p, "NetworkInterfaceId", IdKind::NetworkInterface, &[])?;
    let (page, net, next) = svc.describe_network_interfaces(&q)?;
    r.list("networkInterfaceSet", &page, |r, e| {
        interface_xml(r, svc, &net, e)
    });
    r.opt_elem("nextToken", next);
    Ok(())
}
