//! Route tables: Create/DeleteRouteTable, Create/Replace/DeleteRoute,
//! Associate/Disassociate/ReplaceRouteTableAssociation and DescribeRouteTables.

use vireo_ec2_api::ids::{self, IdKind};
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::netparams::{on_one_id, one_id, paged_describe, tags_xml};
use super::params::{allow, dry_run, tag_specifications};
use crate::db::network::NetState;
use crate::netmodel::{RouteTable, RouteTarget};
use crate::service::{route_state, Service};

fn table_xml(r: &mut Response, svc: &Service, net: &NetState, t: &RouteTable) {
    r.elem("routeTableId", &t.route_table_id)
        .elem("vpcId", &t.vpc_id)
        .elem("ownerId", svc.owner_id())
        .list("routeSet", &t.routes, |r, x| {
            r.elem("destinationCidrBlock", x.destination);
            match &x.target {
                RouteTarget::Local => {
                    r.elem("gatewayId", "local")
                        .elem("origin", "CreateRouteTable");
                }
                RouteTarget::Gateway(g) => {
                    r.elem("gatewayId", g).elem("origin", "CreateRoute");
                }
            }
            r.elem("state", route_state(net, t, x));
        })
        .list("associationSet", &t.associations, |r, a| {
            r.elem("routeTableAssociationId", &a.association_id)
                .elem("routeTableId", &t.route_table_id)
                .bool_elem("main", a.subnet_id.is_none())
                .opt_elem("subnetId", a.subnet_id.as_deref())
                .nest("associationState", |r| {
                    r.elem("state", "associated");
                });
        })
        .list("propagatingVgwSet", std::iter::empty::<()>(), |_, _| {});
    tags_xml(r, &t.tags);
}

pub(super) fn create(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["VpcId", "TagSpecification", "ClientToken", "DryRun"])?;
    dry_run(p)?;
    let vpc = one_id(p, "VpcId", IdKind::Vpc)?;
    let tags = tag_specifications(p, "route-table")?;
    let t = svc.create_route_table(&vpc, &tags)?;
    let net = svc.instance_networks()?;
    r.nest("routeTable", |r| table_xml(r, svc, &net, &t));
    Ok(())
}

pub(super) fn delete(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    on_one_id(p, r, "RouteTableId", IdKind::RouteTable, |id| {
        svc.delete_route_table(id)
    })
}

/// Targets EC2 routes may have that vireod's do not (only internet gateways).
const OTHER_TARGETS: [&str; 12] = [
    "NatGatewayId",
    "InstanceId",
    "NetworkInterfaceId",
    "VpcPeeringConnectionId",
    "TransitGatewayId",
    "EgressOnlyInternetGatewayId",
    "LocalGatewayId",
    "CarrierGatewayId",
    "VpcEndpointId",
    "CoreNetworkArn",
    "DestinationPrefixListId",
    "DestinationIpv6CidrBlock",
];

/// The parameters of CreateRoute and ReplaceRoute: (table, destination, internet gateway).
fn route_params(p: &Params) -> Result<(String, &str, &str), Ec2Error> {
    let mut allowed = vec![
        "RouteTableId",
        "DestinationCidrBlock",
        "GatewayId",
        "DryRun",
    ];
    allowed.extend(OTHER_TARGETS);
    allow(p, &allowed)?;
    dry_run(p)?;
    if let Some(other) = OTHER_TARGETS.iter().find(|n| p.get(n).is_some()) {
        return Err(Ec2Error::unsupported_operation(format!(
            "{other}: vireod's routes are IPv4 to an internet gateway (GatewayId)"
        )));
    }
    let rtb = one_id(p, "RouteTableId", IdKind::RouteTable)?;
    let dest = p.required("DestinationCidrBlock")?;
    let gw = p.required("GatewayId")?;
    ids::validate(IdKind::InternetGateway, gw)?;
    Ok((rtb, dest, gw))
}

pub(super) fn create_route(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let (rtb, dest, gw) = route_params(p)?;
    svc.create_route(&rtb, dest, gw)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn replace_route(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let (rtb, dest, gw) = route_params(p)?;
    svc.replace_route(&rtb, dest, gw)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn delete_route(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["RouteTableId", "DestinationCidrBlock", "DryRun"])?;
    dry_run(p)?;
    let rtb = one_id(p, "RouteTableId", IdKind::RouteTable)?;
    svc.delete_route(&rtb, p.required("DestinationCidrBlock")?)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn associate(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["RouteTableId", "SubnetId", "GatewayId", "DryRun"])?;
    dry_run(p)?;
    if p.get("GatewayId").is_some() {
        return Err(Ec2Error::unsupported_operation(
            "Gateway route tables are not supported: associate a subnet",
        ));
    }
    let rtb = one_id(p, "RouteTableId", IdKind::RouteTable)?;
    let subnet = one_id(p, "SubnetId", IdKind::Subnet)?;
    let id = svc.associate_route_table(&rtb, &subnet)?;
    r.elem("associationId", id).nest("associationState", |r| {
        r.elem("state", "associated");
    });
    Ok(())
}

pub(super) fn replace_association(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    allow(p, &["AssociationId", "RouteTableId", "DryRun"])?;
    dry_run(p)?;
    let association = p.required("AssociationId")?;
    ids::validate(IdKind::RouteTableAssociation, association)?;
    let rtb = one_id(p, "RouteTableId", IdKind::RouteTable)?;
    let id = svc.replace_route_table_association(association, &rtb)?;
    r.elem("newAssociationId", id)
        .nest("associationState", |r| {
            r.elem("state", "associated");
        });
    Ok(())
}

pub(super) fn disassociate(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    on_one_id(p, r, "AssociationId", IdKind::RouteTableAssociation, |id| {
        svc.disassociate_route_table(id)
    })
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let q = paged_describe(p, "RouteTableId", IdKind::RouteTable, &[])?;
    let (page, net, next) = svc.describe_route_tables(&q)?;
    r.list("routeTableSet", &page, |r, t| table_xml(r, svc, &net, t));
    r.opt_elem("nextToken", next);
    Ok(())
}
