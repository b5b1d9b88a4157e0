//! Route tables: CreateRouteTable (with the VPC's `local` route), DeleteRouteTable,
//! Create/Replace/DeleteRoute (to an internet gateway attached to the VPC),
//! Associate/Disassociate/ReplaceRouteTableAssociation and DescribeRouteTables. The VPC's main
//! table (made with it) serves every subnet without its own association.

use vireo_ec2_api::ids::{self, IdKind};

use super::netquery::{
    b, dependency, describe, rtb_not_found, subnet_not_found, vpc_not_found, DescribeQuery,
};
use super::Service;
use crate::cidr::Ipv4Cidr;
use crate::db;
use crate::db::network::{self as netdb, NetState};
use crate::error::{ApiError, ApiResult};
use crate::model::Tag;
use crate::netmodel::{Route, RouteTable, RouteTableAssociation, RouteTarget};

/// A route's state: `active`, or `blackhole` when its gateway is no longer attached to the VPC.
pub fn route_state(net: &NetState, table: &RouteTable, route: &Route) -> &'static str {
    match &route.target {
        RouteTarget::Local => "active",
        RouteTarget::Gateway(g) => {
            let attached = net
                .gateway(g)
                .is_some_and(|g| g.vpc_id.as_deref() == Some(table.vpc_id.as_str()));
            if attached {
                "active"
            } else {
                "blackhole"
            }
        }
    }
}

/// A destination as CreateRoute, ReplaceRoute and DeleteRoute take it.
fn destination(destination: &str) -> ApiResult<Ipv4Cidr> {
    destination.parse().map_err(|_| {
        ApiError::invalid_value(format!(
            "Value ({destination}) for parameter destinationCidrBlock is invalid. This is not a valid CIDR block."
        ))
    })
}

/// Whether table `t` may route `dest` to `gateway_id`: the gateway exists and is attached to the
/// table's VPC, and `dest` is not inside the VPC (its `local` route has that).
fn check_gateway_route(
    net: &NetState,
    t: &RouteTable,
    dest: Ipv4Cidr,
    gateway_id: &str,
) -> ApiResult<()> {
    let vpc = net.vpc(&t.vpc_id).ok_or_else(|| vpc_not_found(&t.vpc_id))?;
    let g = net
        .gateway(gateway_id)
        .ok_or_else(|| super::netquery::igw_not_found(gateway_id))?;
    if g.vpc_id.as_deref() != Some(t.vpc_id.as_str()) {
        return Err(ApiError::invalid_value(format!(
            "route table {} and network gateway {gateway_id} belong to different networks",
            t.route_table_id
        )));
    }
    if vpc.cidr.contains(dest) {
        return Err(ApiError::invalid_value(format!(
            "The destination CIDR block {dest} is equal to or more specific than one of this VPC's CIDR blocks. This route can target only an interface or an instance."
        )));
    }
    Ok(())
}

/// The table and association of an association id.
fn find_association<'a>(
    net: &'a NetState,
    association_id: &str,
) -> ApiResult<(&'a RouteTable, &'a RouteTableAssociation)> {
    net.route_tables
        .iter()
        .find_map(|t| {
            t.associations
                .iter()
                .find(|a| a.association_id == association_id)
                .map(|a| (t, a))
        })
        .ok_or_else(|| {
            ApiError::new(
                "InvalidAssociationID.NotFound",
                format!("The association ID '{association_id}' does not exist"),
            )
        })
}

fn route_not_found(rtb_id: &str, dest: Ipv4Cidr) -> ApiError {
    ApiError::new(
        "InvalidRoute.NotFound",
        format!("no route with destination-cidr-block {dest} in route table {rtb_id}"),
    )
}

/// The route to `dest` in table `t`, which DeleteRoute and ReplaceRoute may change: the `local`
/// route may not be (`verb` is what the refused call would have done to it).
fn changeable_route<'a>(t: &'a RouteTable, dest: Ipv4Cidr, verb: &str) -> ApiResult<&'a Route> {
    let r = t
        .routes
        .iter()
        .find(|r| r.destination == dest)
        .ok_or_else(|| route_not_found(&t.route_table_id, dest))?;
    if r.target == RouteTarget::Local {
        return Err(ApiError::invalid_value(format!(
            "cannot {verb} local route {dest} in route table {}",
            t.route_table_id
        )));
    }
    Ok(r)
}

impl Service {
    /// Runs `change` on table `rtb_id` (or fails with `InvalidRouteTableID.NotFound`) under the
    /// database lock, then tells the data plane that the table's VPC changed.
    fn change_route_table<T>(
        &self,
        rtb_id: &str,
        change: impl FnOnce(&db::Db, &NetState, &RouteTable) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let (out, vpc) = {
            let db = self.db();
            let net = db.net_state()?;
            let t = net
                .route_table(rtb_id)
                .ok_or_else(|| rtb_not_found(rtb_id))?;
            (change(&db, &net, t)?, t.vpc_id.clone())
        };
        self.network_changed(&[vpc]);
        Ok(out)
    }

    pub fn create_route_table(&self, vpc_id: &str, tags: &[Tag]) -> ApiResult<RouteTable> {
        let id = ids::new_id(IdKind::RouteTable);
        {
            let mut db = self.db();
            let net = db.net_state()?;
            let vpc = net.vpc(vpc_id).ok_or_else(|| vpc_not_found(vpc_id))?;
            let tx = db.transaction()?;
            netdb::insert_route_table(&tx, &id, vpc_id)?;
            netdb::insert_route(&tx, &id, vpc.cidr, &RouteTarget::Local)?;
            netdb::put_tags(&tx, &id, tags)?;
            tx.commit().map_err(db::DbError::from)?;
        }
        self.net()?
            .route_table(&id)
            .cloned()
            .ok_or_else(|| rtb_not_found(&id))
    }

    pub fn delete_route_table(&self, rtb_id: &str) -> ApiResult<()> {
        let mut db = self.db();
        let net = db.net_state()?;
        let t = net
            .route_table(rtb_id)
            .ok_or_else(|| rtb_not_found(rtb_id))?;
        if !t.associations.is_empty() {
            return Err(dependency("routeTable", rtb_id));
        }
        let tx = db.transaction()?;
        netdb::delete_route_table(&tx, rtb_id)?;
        tx.commit().map_err(db::DbError::from)?;
        Ok(())
    }

    /// CreateRoute to an internet gateway attached to the table's VPC.
    pub fn create_route(&self, rtb_id: &str, destination: &str, gateway_id: &str) -> ApiResult<()> {
        let dest = self::destination(destination)?;
        self.change_route_table(rtb_id, |db, net, t| {
            check_gateway_route(net, t, dest, gateway_id)?;
            if t.routes.iter().any(|r| r.destination == dest) {
                return Err(ApiError::new(
                    "RouteAlreadyExists",
                    format!("The route identified by {dest} already exists."),
                ));
            }
            let target = RouteTarget::Gateway(gateway_id.to_string());
            Ok(netdb::insert_route(db.conn(), rtb_id, dest, &target)?)
        })
    }

    pub fn delete_route(&self, rtb_id: &str, destination: &str) -> ApiResult<()> {
        let dest = self::destination(destination)?;
        self.change_route_table(rtb_id, |db, _, t| {
            changeable_route(t, dest, "remove")?;
            Ok(netdb::delete_route(db.conn(), rtb_id, dest)?)
        })
    }

    /// AssociateRouteTable with a subnet: returns the association id.
    pub fn associate_route_table(&self, rtb_id: &str, subnet_id: &str) -> ApiResult<String> {
        let id = ids::new_id(IdKind::RouteTableAssociation);
        self.change_route_table(rtb_id, |db, net, t| {
            let s = net
                .subnet(subnet_id)
                .ok_or_else(|| subnet_not_found(subnet_id))?;
            if s.vpc_id != t.vpc_id {
                return Err(ApiError::invalid_value(format!(
                    "Route table {rtb_id} and subnet {subnet_id} belong to different networks"
                )));
            }
            let taken = net.route_tables.iter().any(|x| {
                x.associations
                    .iter()
                    .any(|a| a.subnet_id.as_deref() == Some(subnet_id))
            });
            if taken {
                return Err(ApiError::new(
                    "Resource.AlreadyAssociated",
                    format!(
                        "the specified association for route table {rtb_id} conflicts with an existing association"
                    ),
                ));
            }
            netdb::insert_rtb_association(db.conn(), &id, rtb_id, &t.vpc_id, Some(subnet_id))?;
            Ok(id)
        })
    }

    /// ReplaceRoute: the route to `destination` goes to `gateway_id` instead (an internet
    /// gateway attached to the table's VPC, as CreateRoute takes); the `local` route stays.
    pub fn replace_route(
        &self,
        rtb_id: &str,
        destination: &str,
        gateway_id: &str,
    ) -> ApiResult<()> {
        let dest = self::destination(destination)?;
        self.change_route_table(rtb_id, |db, net, t| {
            changeable_route(t, dest, "replace")?;
            check_gateway_route(net, t, dest, gateway_id)?;
            let target = RouteTarget::Gateway(gateway_id.to_string());
            Ok(netdb::replace_route(db.conn(), rtb_id, dest, &target)?)
        })
    }

    /// ReplaceRouteTableAssociation: the subnet (or, for the main association, the VPC) of
    /// `association_id` uses `rtb_id` from now on; returns the new association's id (the old
    /// one is gone, as in EC2). Terraform's aws_main_route_table_association uses it.
    pub fn replace_route_table_association(
        &self,
        association_id: &str,
        rtb_id: &str,
    ) -> ApiResult<String> {
        let id = ids::new_id(IdKind::RouteTableAssociation);
        let vpc = {
            let mut db = self.db();
            let net = db.net_state()?;
            let (old, a) = find_association(&net, association_id)?;
            let t = net
                .route_table(rtb_id)
                .ok_or_else(|| rtb_not_found(rtb_id))?;
            if t.vpc_id != old.vpc_id {
                return Err(ApiError::invalid_value(format!(
                    "Route table {rtb_id} and association {association_id} belong to different networks"
                )));
            }
            let tx = db.transaction()?;
            netdb::delete_rtb_association(&tx, association_id)?;
            netdb::insert_rtb_association(&tx, &id, rtb_id, &t.vpc_id, a.subnet_id.as_deref())?;
            tx.commit().map_err(db::DbError::from)?;
            t.vpc_id.clone()
        };
        self.network_changed(&[vpc]);
        Ok(id)
    }

    pub fn disassociate_route_table(&self, association_id: &str) -> ApiResult<()> {
        let vpc = {
            let db = self.db();
            let net = db.net_state()?;
            let (t, a) = find_association(&net, association_id)?;
            if a.subnet_id.is_none() {
                return Err(ApiError::invalid_value(format!(
                    "cannot disassociate the main route table association {association_id}"
                )));
            }
            netdb::delete_rtb_association(db.conn(), association_id)?;
            t.vpc_id.clone()
        };
        self.network_changed(&[vpc]);
        Ok(())
    }

    pub fn describe_route_tables(
        &self,
        q: &DescribeQuery,
    ) -> ApiResult<(Vec<RouteTable>, NetState, Option<String>)> {
        let net = self.net()?;
        let owner = self.owner_id().to_string();
        let (page, next) = describe(
            net.route_tables.clone(),
            q,
            &[
                "route-table-id",
                "vpc-id",
                "association.main",
                "association.subnet-id",
                "association.route-table-association-id",
                "association.route-table-id",
                "route.destination-cidr-block",
                "route.gateway-id",
                "route.state",
                "route.origin",
                "owner-id",
            ],
            |t, name| match name {
                "route-table-id" | "association.route-table-id" => vec![t.route_table_id.clone()],
                "vpc-id" => vec![t.vpc_id.clone()],
                // A table without associations matches neither true nor false, as in EC2.
                "association.main" => t
                    .associations
                    .iter()
                    .map(|a| b(a.subnet_id.is_none()))
                    .collect(),
                "association.subnet-id" => t
                    .associations
                    .iter()
                    .filter_map(|a| a.subnet_id.clone())
                    .collect(),
                "association.route-table-association-id" => t
                    .associations
                    .iter()
                    .map(|a| a.association_id.clone())
                    .collect(),
                "route.destination-cidr-block" => {
                    t.routes.iter().map(|r| r.destination.to_string()).collect()
                }
                "route.gateway-id" => t
                    .routes
                    .iter()
                    .map(|r| match &r.target {
                        RouteTarget::Local => "local".to_string(),
                        RouteTarget::Gateway(g) => g.clone(),
                    })
                    .collect(),
                "route.state" => t
                    .routes
                    .iter()
                    .map(|r| route_state(&net, t, r).to_string())
                    .collect(),
                "route.origin" => t
                    .routes
                    .iter()
                    .map(|r| match r.target {
                        RouteTarget::Local => "CreateRouteTable".to_string(),
                        RouteTarget::Gateway(_) => "CreateRoute".to_string(),
                    })
                    .collect(),
                _ => vec![owner.clone()],
            },
            rtb_not_found,
        )?;
        Ok((page, net, next))
    }
}
