//! VPCs: CreateVpc, DescribeVpcs, DeleteVpc, Describe/ModifyVpcAttribute, and
//! DescribeNetworkAcls (each VPC's default ACL).

use vireo_ec2_api::ids::IdKind;
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::netparams::{attr_bool, on_one_id, one_id, paged_describe, tags_xml};
use super::params::{allow, dry_run, tag_specifications};
use crate::netmodel::Vpc;
use crate::service::{Service, VpcAttribute};

pub(super) fn vpc_xml(r: &mut Response, v: &Vpc, owner: &str) {
    r.elem("vpcId", &v.vpc_id)
        .elem("ownerId", owner)
        .elem("state", "available")
        .elem("cidrBlock", v.cidr)
        .list("cidrBlockAssociationSet", [()], |r, _| {
            r.elem(
                "associationId",
                format!("vpc-cidr-assoc-{}", &v.vpc_id[4..]),
            )
            .elem("cidrBlock", v.cidr)
            .nest("cidrBlockState", |r| {
                r.elem("state", "associated");
            });
        })
        .list(
            "ipv6CidrBlockAssociationSet",
            std::iter::empty::<()>(),
            |_, _| {},
        )
        .elem("dhcpOptionsId", "default")
        .elem("instanceTenancy", "default")
        .bool_elem("isDefault", v.is_default);
    tags_xml(r, &v.tags);
}

pub(super) fn create(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "CidrBlock",
            "TagSpecification",
            "InstanceTenancy",
            "AmazonProvidedIpv6CidrBlock",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let cidr = p.required("CidrBlock")?;
    if let Some(t) = p.get("InstanceTenancy") {
        if t != "default" {
            return Err(Ec2Error::unsupported_operation(format!(
                "InstanceTenancy '{t}' is not supported: vireod's VPCs are default tenancy"
            )));
        }
    }
    if p.bool("AmazonProvidedIpv6CidrBlock")?.unwrap_or(false) {
        return Err(Ec2Error::unsupported_operation(
            "vireod's VPCs are IPv4 only",
        ));
    }
    let tags = tag_specifications(p, "vpc")?;
    let vpc = svc.create_vpc(cidr, &tags)?;
    r.nest("vpc", |r| vpc_xml(r, &vpc, svc.owner_id()));
    Ok(())
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let q = paged_describe(p, "VpcId", IdKind::Vpc, &[])?;
    let (page, next) = svc.describe_vpcs(&q)?;
    r.list("vpcSet", &page, |r, v| vpc_xml(r, v, svc.owner_id()));
    r.opt_elem("nextToken", next);
    Ok(())
}

pub(super) fn delete(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    on_one_id(p, r, "VpcId", IdKind::Vpc, |id| svc.delete_vpc(id))
}

fn attribute(name: &str) -> Result<(VpcAttribute, &'static str), Ec2Error> {
    match name {
        "enableDnsSupport" | "EnableDnsSupport" => {
            Ok((VpcAttribute::EnableDnsSupport, "enableDnsSupport"))
        }
        "enableDnsHostnames" | "EnableDnsHostnames" => {
            Ok((VpcAttribute::EnableDnsHostnames, "enableDnsHostnames"))
        }
        "enableNetworkAddressUsageMetrics" | "EnableNetworkAddressUsageMetrics" => Ok((
            VpcAttribute::EnableNetworkAddressUsageMetrics,
            "enableNetworkAddressUsageMetrics",
        )),
        other => Err(Ec2Error::invalid_parameter_value(format!(
            "Value ({other}) for parameter attribute is invalid: enableDnsSupport, enableDnsHostnames or enableNetworkAddressUsageMetrics"
        ))),
    }
}

pub(super) fn describe_attribute(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    allow(p, &["VpcId", "Attribute", "DryRun"])?;
    dry_run(p)?;
    let id = one_id(p, "VpcId", IdKind::Vpc)?;
    let (attr, elem) = attribute(p.required("Attribute")?)?;
    let on = svc.vpc_attribute(&id, attr)?;
    r.elem("vpcId", &id).nest(elem, |r| {
        r.bool_elem("value", on);
    });
    Ok(())
}

pub(super) fn modify_attribute(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "VpcId",
            "EnableDnsSupport",
            "EnableDnsHostnames",
            "EnableNetworkAddressUsageMetrics",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let id = one_id(p, "VpcId", IdKind::Vpc)?;
    let mut given = Vec::new();
    for name in [
        "EnableDnsSupport",
        "EnableDnsHostnames",
        "EnableNetworkAddressUsageMetrics",
    ] {
        if let Some(v) = attr_bool(p, name)? {
            given.push((attribute(name)?.0, v));
        }
    }
    let [(attr, on)] = given[..] else {
        return Err(Ec2Error::invalid_parameter_combination(
            "Exactly one attribute must be given (EnableDnsSupport, EnableDnsHostnames or EnableNetworkAddressUsageMetrics)",
        ));
    };
    svc.modify_vpc_attribute(&id, attr, on)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn describe_network_acls(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    let q = paged_describe(p, "NetworkAclId", IdKind::NetworkAcl, &[])?;
    let (page, next) = svc.describe_network_acls(&q)?;
    r.list("networkAclSet", &page, |r, (acl, subnets)| {
        r.elem("networkAclId", &acl.acl_id)
            .elem("vpcId", &acl.vpc_id)
            .bool_elem("default", true)
            .elem("ownerId", svc.owner_id());
        // EC2's default ACL: rule 100 allows all, the catch-all `*` (32767) denies, both ways.
        let entries = [
            (100, false, "allow"),
            (32767, false, "deny"),
            (100, true, "allow"),
            (32767, true, "deny"),
        ];
        r.list("entrySet", entries, |r, (n, egress, action)| {
            r.elem("ruleNumber", n)
                .elem("protocol", "-1")
                .elem("ruleAction", action)
                .bool_elem("egress", egress)
                .elem("cidrBlock", "0.0.0.0/0");
        });
        r.list("associationSet", subnets, |r, s| {
            r.elem("networkAclAssociationId", format!("aclassoc-{}", &s[7..]))
                .elem("networkAclId", &acl.acl_id)
                .elem("subnetId", s);
        });
        tags_xml(r, &acl.tags);
    });
    r.opt_elem("nextToken", next);
    Ok(())
}
