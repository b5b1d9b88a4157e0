//! Subnets: CreateSubnet, DescribeSubnets, DeleteSubnet and ModifySubnetAttribute.

use vireo_ec2_api::ids::IdKind;
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::netparams::{attr_bool, on_one_id, one_id, paged_describe, tags_xml};
use super::params::{allow, dry_run, tag_specifications};
use crate::netmodel::Subnet;
use crate::service::{CreateSubnetRequest, Service};

fn subnet_xml(r: &mut Response, svc: &Service, s: &Subnet, available: u64) {
    r.elem("subnetId", &s.subnet_id)
        .elem("subnetArn", svc.subnet_arn(&s.subnet_id))
        .elem("state", "available")
        .elem("vpcId", &s.vpc_id)
        .elem("ownerId", svc.owner_id())
        .elem("cidrBlock", s.cidr)
        .list(
            "ipv6CidrBlockAssociationSet",
            std::iter::empty::<()>(),
            |_, _| {},
        )
        .elem("availableIpAddressCount", available)
        .elem("availabilityZone", &s.availability_zone)
        .elem("availabilityZoneId", svc.availability_zone_id())
        .bool_elem("defaultForAz", s.default_for_az)
        .bool_elem("mapPublicIpOnLaunch", s.map_public_ip_on_launch)
        .bool_elem("mapCustomerOwnedIpOnLaunch", false)
        .bool_elem("assignIpv6AddressOnCreation", false)
        .bool_elem("enableDns64", false)
        .bool_elem("ipv6Native", false)
        .nest("privateDnsNameOptionsOnLaunch", |r| {
            r.elem("hostnameType", "ip-name")
                .bool_elem("enableResourceNameDnsARecord", false)
                .bool_elem("enableResourceNameDnsAAAARecord", false);
        });
    tags_xml(r, &s.tags);
}

pub(super) fn create(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "VpcId",
            "CidrBlock",
            "AvailabilityZone",
            "AvailabilityZoneId",
            "TagSpecification",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let req = CreateSubnetRequest {
        vpc_id: one_id(p, "VpcId", IdKind::Vpc)?,
        cidr: p.required("CidrBlock")?.to_string(),
        availability_zone: p.get("AvailabilityZone").map(str::to_string),
        availability_zone_id: p.get("AvailabilityZoneId").map(str::to_string),
        tags: tag_specifications(p, "subnet")?,
    };
    let s = svc.create_subnet(&req)?;
    let available = s.cidr.assignable_count();
    r.nest("subnet", |r| subnet_xml(r, svc, &s, available));
    Ok(())
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let q = paged_describe(p, "SubnetId", IdKind::Subnet, &[])?;
    let (page, next) = svc.describe_subnets(&q)?;
    r.list("subnetSet", &page, |r, (s, n)| subnet_xml(r, svc, s, *n));
    r.opt_elem("nextToken", next);
    Ok(())
}

pub(super) fn delete(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    on_one_id(p, r, "SubnetId", IdKind::Subnet, |id| svc.delete_subnet(id))
}

pub(super) fn modify_attribute(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "SubnetId",
            "MapPublicIpOnLaunch",
            "AssignIpv6AddressOnCreation",
            "EnableDns64",
            "EnableResourceNameDnsARecordOnLaunch",
            "EnableResourceNameDnsAAAARecordOnLaunch",
            "PrivateDnsHostnameTypeOnLaunch",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let id = one_id(p, "SubnetId", IdKind::Subnet)?;
    // What vireod's subnets cannot be, refused rather than ignored; setting one to what it
    // already is (Terraform sends these) is fine.
    for name in [
        "AssignIpv6AddressOnCreation",
        "EnableDns64",
        "EnableResourceNameDnsARecordOnLaunch",
        "EnableResourceNameDnsAAAARecordOnLaunch",
    ] {
        if attr_bool(p, name)? == Some(true) {
            return Err(Ec2Error::unsupported_operation(format!(
                "{name} is not supported: vireod's subnets are IPv4 with ip-name host names"
            )));
        }
    }
    if let Some(t) = p.get("PrivateDnsHostnameTypeOnLaunch") {
        if t != "ip-name" {
            return Err(Ec2Error::unsupported_operation(format!(
                "PrivateDnsHostnameTypeOnLaunch '{t}' is not supported: only ip-name"
            )));
        }
    }
    match attr_bool(p, "MapPublicIpOnLaunch")? {
        Some(on) => svc.set_map_public_ip(&id, on)?,
        None => svc
            .describe_subnets(&crate::service::DescribeQuery {
                ids: vec![id],
                ..Default::default()
            })
            .map(|_| ())?,
    }
    r.bool_elem("return", true);
    Ok(())
}
