//! Internet gateways: Create, Attach, Detach, Delete and DescribeInternetGateways.

use vireo_ec2_api::ids::IdKind;
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::netparams::{on_one_id, one_id, paged_describe, tags_xml};
use super::params::{allow, dry_run, tag_specifications};
use crate::netmodel::InternetGateway;
use crate::service::Service;

fn gateway_xml(r: &mut Response, svc: &Service, g: &InternetGateway) {
    r.elem("internetGatewayId", &g.igw_id)
        .elem("ownerId", svc.owner_id())
        .list("attachmentSet", g.vpc_id.iter(), |r, v| {
            r.elem("vpcId", v).elem("state", "available");
        });
    tags_xml(r, &g.tags);
}

pub(super) fn create(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["TagSpecification", "DryRun"])?;
    dry_run(p)?;
    let tags = tag_specifications(p, "internet-gateway")?;
    let g = svc.create_internet_gateway(&tags)?;
    r.nest("internetGateway", |r| gateway_xml(r, svc, &g));
    Ok(())
}

/// The gateway and VPC that AttachInternetGateway and DetachInternetGateway name, once their
/// parameters are known and DryRun is answered.
fn gateway_and_vpc(p: &Params) -> Result<(String, String), Ec2Error> {
    allow(p, &["InternetGatewayId", "VpcId", "DryRun"])?;
    dry_run(p)?;
    let igw = one_id(p, "InternetGatewayId", IdKind::InternetGateway)?;
    Ok((igw, one_id(p, "VpcId", IdKind::Vpc)?))
}

pub(super) fn attach(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let (igw, vpc) = gateway_and_vpc(p)?;
    svc.attach_internet_gateway(&igw, &vpc)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn detach(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let (igw, vpc) = gateway_and_vpc(p)?;
    svc.detach_internet_gateway(&igw, &vpc)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn delete(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    on_one_id(p, r, "InternetGatewayId", IdKind::InternetGateway, |id| {
        svc.delete_internet_gateway(id)
    })
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let q = paged_describe(p, "InternetGatewayId", IdKind::InternetGateway, &[])?;
    let (page, next) = svc.describe_internet_gateways(&q)?;
    r.list("internetGatewaySet", &page, |r, g| gateway_xml(r, svc, g));
    r.opt_elem("nextToken", next);
    Ok(())
}
