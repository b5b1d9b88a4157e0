//! Subnets: CreateSubnet (inside its VPC's block, overlapping no other subnet), DescribeSubnets
//! (with the addresses left: EC2 reserves the first four and the last), DeleteSubnet and
//! ModifySubnetAttribute (MapPublicIpOnLaunch).

use vireo_ec2_api::ids::{self, IdKind};

use super::netquery::{
    b, dependency, describe, subnet_not_found, vpc_not_found, DescribeQuery, Page,
};
use super::vpcs::parse_block;
use super::Service;
use crate::db;
use crate::db::network::{self as netdb, NetState};
use crate::error::{ApiError, ApiResult};
use crate::model::Tag;
use crate::netmodel::Subnet;

/// What CreateSubnet asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateSubnetRequest {
    pub vpc_id: String,
    pub cidr: String,
    pub availability_zone: Option<String>,
    pub availability_zone_id: Option<String>,
    pub tags: Vec<Tag>,
}

/// Addresses of a subnet still free for interfaces.
pub fn available_ips(net: &NetState, s: &Subnet) -> u64 {
    s.cidr
        .assignable_count()
        .saturating_sub(net.used_ips(&s.subnet_id).len() as u64)
}

impl Service {
    /// The availability zone id EC2 pairs with vireod's one zone.
    pub fn availability_zone_id(&self) -> String {
        format!("{}-az1", self.inner.cfg.region)
    }

    pub fn create_subnet(&self, req: &CreateSubnetRequest) -> ApiResult<Subnet> {
        let cidr = parse_block(&req.cidr, "cidrBlock", "InvalidSubnet.Range")?;
        let zone = self.inner.cfg.availability_zone();
        let zone_ok = req.availability_zone.as_ref().is_none_or(|z| *z == zone)
            && req
                .availability_zone_id
                .as_ref()
                .is_none_or(|z| *z == self.availability_zone_id());
        if !zone_ok {
            let given = req
                .availability_zone
                .as_deref()
                .or(req.availability_zone_id.as_deref())
                .unwrap_or_default();
            return Err(ApiError::invalid_value(format!(
                "Value ({given}) for parameter availabilityZone is invalid. Subnets can currently only be created in the following availability zones: {zone}."
            )));
        }
        let subnet = Subnet {
            seq: 0,
            subnet_id: ids::new_id(IdKind::Subnet),
            vpc_id: req.vpc_id.clone(),
            cidr,
            availability_zone: zone,
            default_for_az: false,
            map_public_ip_on_launch: false,
            tags: req.tags.clone(),
        };
        {
            let mut db = self.db();
            let net = db.net_state()?;
            let vpc = net
                .vpc(&req.vpc_id)
                .ok_or_else(|| vpc_not_found(&req.vpc_id))?;
            if !vpc.cidr.contains(cidr) {
                return Err(ApiError::new(
                    "InvalidSubnet.Range",
                    format!(
                        "The CIDR '{cidr}' is invalid: it is not inside the VPC's block {}",
                        vpc.cidr
                    ),
                ));
            }
            if let Some(other) = net
                .subnets
                .iter()
                .find(|s| s.vpc_id == req.vpc_id && s.cidr.overlaps(cidr))
            {
                return Err(ApiError::new(
                    "InvalidSubnet.Conflict",
                    format!(
                        "The CIDR '{cidr}' conflicts with another subnet ({} has {})",
                        other.subnet_id, other.cidr
                    ),
                ));
            }
            let tx = db.transaction()?;
            netdb::insert_subnet(&tx, &subnet)?;
            tx.commit().map_err(db::DbError::from)?;
        }
        self.network_changed(&[&subnet.vpc_id]);
        self.net()?
            .subnet(&subnet.subnet_id)
            .cloned()
            .ok_or_else(|| subnet_not_found(&subnet.subnet_id))
    }

    /// DescribeSubnets: the subnets with the addresses each has left.
    pub fn describe_subnets(&self, q: &DescribeQuery) -> ApiResult<Page<(Subnet, u64)>> {
        let net = self.net()?;
        let owner = self.owner_id().to_string();
        let az_id = self.availability_zone_id();
        let (page, next) = describe(
            net.subnets.clone(),
            q,
            &[
                "subnet-id",
                "vpc-id",
                "cidr",
                "cidr-block",
                "cidrBlock",
                "availability-zone",
                "availabilityZone",
                "availability-zone-id",
                "default-for-az",
                "defaultForAz",
                "map-public-ip-on-launch",
                "state",
                "available-ip-address-count",
                "owner-id",
                "subnet-arn",
            ],
            |s, name| match name {
                "subnet-id" => vec![s.subnet_id.clone()],
                "vpc-id" => vec![s.vpc_id.clone()],
                "cidr" | "cidr-block" | "cidrBlock" => vec![s.cidr.to_string()],
                "availability-zone" | "availabilityZone" => vec![s.availability_zone.clone()],
                "availability-zone-id" => vec![az_id.clone()],
                "default-for-az" | "defaultForAz" => vec![b(s.default_for_az)],
                "map-public-ip-on-launch" => vec![b(s.map_public_ip_on_launch)],
                "state" => vec!["available".into()],
                "available-ip-address-count" => vec![available_ips(&net, s).to_string()],
                "owner-id" => vec![owner.clone()],
                _ => vec![self.subnet_arn(&s.subnet_id)],
            },
            subnet_not_found,
        )?;
        Ok((
            page.into_iter()
                .map(|s| {
                    let n = available_ips(&net, &s);
                    (s, n)
                })
                .collect(),
            next,
        ))
    }

    pub fn subnet_arn(&self, subnet_id: &str) -> String {
        format!(
            "arn:aws:ec2:{}:{}:subnet/{subnet_id}",
            self.inner.cfg.region,
            self.owner_id()
        )
    }

    pub fn delete_subnet(&self, subnet_id: &str) -> ApiResult<()> {
        let vpc_id = {
            let mut db = self.db();
            let net = db.net_state()?;
            let s = net
                .subnet(subnet_id)
                .ok_or_else(|| subnet_not_found(subnet_id))?;
            if net.interfaces.iter().any(|e| e.subnet_id == subnet_id) {
                return Err(dependency("subnet", subnet_id));
            }
            let tx = db.transaction()?;
            netdb::delete_subnet(&tx, subnet_id)?;
            tx.commit().map_err(db::DbError::from)?;
            s.vpc_id.clone()
        };
        self.network_changed(&[vpc_id]);
        Ok(())
    }

    /// ModifySubnetAttribute MapPublicIpOnLaunch.
    pub fn set_map_public_ip(&self, subnet_id: &str, on: bool) -> ApiResult<()> {
        let db = self.db();
        let net = db.net_state()?;
        net.subnet(subnet_id)
            .ok_or_else(|| subnet_not_found(subnet_id))?;
        netdb::set_map_public_ip(db.conn(), subnet_id, on)?;
        Ok(())
    }
}
