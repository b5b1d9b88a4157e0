//! Elastic IPs: AllocateAddress, AssociateAddress, DisassociateAddress, ReleaseAddress and
//! DescribeAddresses (Domain=vpc; from the pool of `vireod serve --public-cidr`).

use vireo_ec2_api::ids::{self, IdKind};
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::netparams::{describe_query, ipv4, opt_id, tags_xml};
use super::params::{allow, dry_run, tag_specifications};
use crate::service::{AddressRef, AddressTarget, AssociateRequest, Service};

/// AllocationId (of `kind`'s id form), or PublicIp.
fn address_ref(p: &Params, id_name: &str, kind: IdKind) -> Result<AddressRef, Ec2Error> {
    match (p.get(id_name), ipv4(p, "PublicIp")?) {
        (Some(id), None) => {
            ids::validate(kind, id)?;
            Ok(AddressRef::Allocation(id.to_string()))
        }
        (None, Some(ip)) => Ok(AddressRef::PublicIp(ip)),
        (Some(_), Some(_)) => Err(Ec2Error::invalid_parameter_combination(format!(
            "{id_name} and PublicIp cannot be given together"
        ))),
        (None, None) => Err(Ec2Error::missing_parameter(id_name)),
    }
}

pub(super) fn allocate(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "Domain",
            "Address",
            "TagSpecification",
            "NetworkBorderGroup",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    if let Some(d) = p.get("Domain") {
        if d != "vpc" {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Domain '{d}' is not supported: vireod's addresses are for VPCs (vpc)"
            )));
        }
    }
    let tags = tag_specifications(p, "elastic-ip")?;
    let a = svc.allocate_address(ipv4(p, "Address")?, &tags)?;
    r.elem("publicIp", a.public_ip)
        .elem("domain", "vpc")
        .opt_elem("allocationId", a.allocation_id.as_deref())
        .elem("publicIpv4Pool", "vireo")
        .elem("networkBorderGroup", &svc.config().region);
    Ok(())
}

pub(super) fn associate(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "AllocationId",
            "PublicIp",
            "InstanceId",
            "NetworkInterfaceId",
            "PrivateIpAddress",
            "AllowReassociation",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let address = address_ref(p, "AllocationId", IdKind::Allocation)?;
    let target = match (
        opt_id(p, "InstanceId", IdKind::Instance)?,
        opt_id(p, "NetworkInterfaceId", IdKind::NetworkInterface)?,
    ) {
        (Some(i), None) => AddressTarget::Instance(i),
        (None, Some(e)) => AddressTarget::Interface(e),
        (Some(_), Some(_)) => {
            return Err(Ec2Error::invalid_parameter_combination(
                "InstanceId and NetworkInterfaceId cannot be given together",
            ))
        }
        (None, None) => return Err(Ec2Error::missing_parameter("InstanceId")),
    };
    let id = svc.associate_address(&AssociateRequest {
        address,
        target,
        private_ip: ipv4(p, "PrivateIpAddress")?,
        allow_reassociation: p.bool("AllowReassociation")?.unwrap_or(false),
    })?;
    r.elem("return", "true").elem("associationId", id);
    Ok(())
}

pub(super) fn disassociate(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["AssociationId", "PublicIp", "DryRun"])?;
    dry_run(p)?;
    svc.disassociate_address(&address_ref(
        p,
        "AssociationId",
        IdKind::ElasticIpAssociation,
    )?)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn release(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &["AllocationId", "PublicIp", "NetworkBorderGroup", "DryRun"],
    )?;
    dry_run(p)?;
    svc.release_address(&address_ref(p, "AllocationId", IdKind::Allocation)?)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["AllocationId", "PublicIp", "Filter", "DryRun"])?;
    dry_run(p)?;
    let q = describe_query(p, "AllocationId", IdKind::Allocation)?;
    let mut ips = Vec::new();
    for ip in p.list("PublicIp")? {
        ips.push(ip.parse().map_err(|_| {
            Ec2Error::invalid_parameter_value(format!("Invalid value '{ip}' for PublicIp"))
        })?);
    }
    let (page, net) = svc.describe_addresses(&ips, &q)?;
    r.list("addressesSet", &page, |r, a| {
        let eni = a.eni_id.as_deref().and_then(|e| net.interface(e));
        r.elem("publicIp", a.public_ip)
            .opt_elem("allocationId", a.allocation_id.as_deref())
            .elem("domain", "vpc")
            .elem("publicIpv4Pool", "vireo")
            .elem("networkBorderGroup", &svc.config().region)
            .opt_elem("associationId", a.association_id.as_deref())
            .opt_elem("networkInterfaceId", a.eni_id.as_deref())
            .opt_elem(
                "instanceId",
                eni.and_then(|e| e.attachment.as_ref())
                    .map(|x| x.instance_id.as_str()),
            )
            .opt_elem("privateIpAddress", eni.map(|e| e.private_ip))
            .opt_elem("networkInterfaceOwnerId", eni.map(|_| svc.owner_id()));
        tags_xml(r, &a.tags);
    });
    Ok(())
}
