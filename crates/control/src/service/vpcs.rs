//! VPCs: CreateVpc (with its main route table, default network ACL and `default` security
//! group), DescribeVpcs, DeleteVpc, Describe/ModifyVpcAttribute, DescribeNetworkAcls, and the
//! default VPC every data directory has.

use super::netquery::{b, dependency, describe, vpc_not_found, DescribeQuery, Page};
use super::Service;
use crate::cidr::{CidrError, Ipv4Cidr};
use crate::db;
use crate::db::network::{self as netdb, VpcFlag};
use crate::error::{ApiError, ApiResult};
use crate::model::Tag;
use crate::netmodel::{NetworkAcl, Vpc};

/// The VPC and subnet prefix lengths EC2 allows.
pub const PREFIX_RANGE: std::ops::RangeInclusive<u8> = 16..=28;

/// A CIDR block as CreateVpc and CreateSubnet take it: well formed, aligned and /16 to /28
/// (`range_code` is the action's error for a size outside that).
pub(super) fn parse_block(
    text: &str,
    param: &str,
    range_code: &'static str,
) -> ApiResult<Ipv4Cidr> {
    let cidr: Ipv4Cidr = text.parse().map_err(|e: CidrError| {
        ApiError::invalid_value(format!(
            "Value ({text}) for parameter {param} is invalid. This is not a valid CIDR block: {e}"
        ))
    })?;
    if !PREFIX_RANGE.contains(&cidr.prefix()) {
        return Err(ApiError::new(
            range_code,
            format!(
                "The CIDR '{text}' is invalid: the block size must be between /{} and /{}",
                PREFIX_RANGE.start(),
                PREFIX_RANGE.end()
            ),
        ));
    }
    Ok(cidr)
}

/// The attributes DescribeVpcAttribute reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VpcAttribute {
    EnableDnsSupport,
    EnableDnsHostnames,
    /// Always false (vireod keeps no address usage metrics); Terraform reads it.
    EnableNetworkAddressUsageMetrics,
}

impl Service {
    pub fn create_vpc(&self, cidr: &str, tags: &[Tag]) -> ApiResult<Vpc> {
        let cidr = parse_block(cidr, "cidrBlock", "InvalidVpc.Range")?;
        let id = {
            let mut db = self.db();
            let tx = db.transaction()?;
            let made = netdb::create_vpc(&tx, cidr, false)?;
            netdb::put_tags(&tx, &made.vpc_id, tags)?;
            tx.commit().map_err(db::DbError::from)?;
            made.vpc_id
        };
        self.network_changed(&[&id]);
        self.net()?
            .vpc(&id)
            .cloned()
            .ok_or_else(|| vpc_not_found(&id))
    }

    pub fn describe_vpcs(&self, q: &DescribeQuery) -> ApiResult<(Vec<Vpc>, Option<String>)> {
        let owner = self.owner_id().to_string();
        describe(
            self.net()?.vpcs,
            q,
            &[
                "vpc-id",
                "cidr",
                "cidr-block-association.cidr-block",
                "cidr-block-association.state",
                "state",
                "is-default",
                "isDefault",
                "owner-id",
                "dhcp-options-id",
            ],
            |v, name| match name {
                "vpc-id" => vec![v.vpc_id.clone()],
                "cidr" | "cidr-block-association.cidr-block" => vec![v.cidr.to_string()],
                "cidr-block-association.state" => vec!["associated".into()],
                "state" => vec!["available".into()],
                "is-default" | "isDefault" => vec![b(v.is_default)],
                "owner-id" => vec![owner.clone()],
                _ => vec!["default".into()],
            },
            vpc_not_found,
        )
    }

    /// DeleteVpc: only a VPC with nothing in it but what CreateVpc made.
    pub fn delete_vpc(&self, vpc_id: &str) -> ApiResult<()> {
        {
            let mut db = self.db();
            let net = db.net_state()?;
            net.vpc(vpc_id).ok_or_else(|| vpc_not_found(vpc_id))?;
            let in_use = net.subnets.iter().any(|s| s.vpc_id == vpc_id)
                || net.interfaces.iter().any(|e| e.vpc_id == vpc_id)
                || net
                    .gateways
                    .iter()
                    .any(|g| g.vpc_id.as_deref() == Some(vpc_id))
                || net
                    .groups
                    .iter()
                    .any(|g| g.vpc_id == vpc_id && g.name != "default")
                || net
                    .route_tables
                    .iter()
                    .any(|t| t.vpc_id == vpc_id && !t.is_main());
            if in_use {
                return Err(dependency("vpc", vpc_id));
            }
            let tx = db.transaction()?;
            netdb::delete_vpc(&tx, vpc_id)?;
            tx.commit().map_err(db::DbError::from)?;
        }
        self.network_changed(&[vpc_id]);
        Ok(())
    }

    pub fn vpc_attribute(&self, vpc_id: &str, attr: VpcAttribute) -> ApiResult<bool> {
        let net = self.net()?;
        let vpc = net.vpc(vpc_id).ok_or_else(|| vpc_not_found(vpc_id))?;
        Ok(match attr {
            VpcAttribute::EnableDnsSupport => vpc.enable_dns_support,
            VpcAttribute::EnableDnsHostnames => vpc.enable_dns_hostnames,
            VpcAttribute::EnableNetworkAddressUsageMetrics => false,
        })
    }

    /// ModifyVpcAttribute: one attribute per call, as EC2 requires.
    pub fn modify_vpc_attribute(
        &self,
        vpc_id: &str,
        attr: VpcAttribute,
        on: bool,
    ) -> ApiResult<()> {
        {
            let db = self.db();
            let net = db.net_state()?;
            let vpc = net.vpc(vpc_id).ok_or_else(|| vpc_not_found(vpc_id))?;
            let flag = match attr {
                VpcAttribute::EnableDnsSupport => VpcFlag::DnsSupport,
                VpcAttribute::EnableDnsHostnames => {
                    // EC2: host names need DNS resolution.
                    if on && !vpc.enable_dns_support {
                        return Err(ApiError::invalid_value(
                            "enableDnsHostnames cannot be true while enableDnsSupport is false",
                        ));
                    }
                    VpcFlag::DnsHostnames
                }
                VpcAttribute::EnableNetworkAddressUsageMetrics => {
                    if on {
                        return Err(ApiError::new(
                            "UnsupportedOperation",
                            "vireod keeps no network address usage metrics",
                        ));
                    }
                    return Ok(());
                }
            };
            if flag == VpcFlag::DnsSupport && !on && vpc.enable_dns_hostnames {
                return Err(ApiError::invalid_value(
                    "enableDnsSupport cannot be false while enableDnsHostnames is true",
                ));
            }
            netdb::set_vpc_attribute(db.conn(), vpc_id, flag, on)?;
        }
        self.network_changed(&[vpc_id]);
        Ok(())
    }

    /// DescribeNetworkAcls: each VPC's default ACL (allow all), associated with its subnets.
    pub fn describe_network_acls(
        &self,
        q: &DescribeQuery,
    ) -> ApiResult<Page<(NetworkAcl, Vec<String>)>> {
        let net = self.net()?;
        let owner = self.owner_id().to_string();
        let subnets_of = |vpc: &str| -> Vec<String> {
            net.subnets
                .iter()
                .filter(|s| s.vpc_id == vpc)
                .map(|s| s.subnet_id.clone())
                .collect()
        };
        let (page, next) = describe(
            net.acls.clone(),
            q,
            &[
                "network-acl-id",
                "vpc-id",
                "default",
                "association.subnet-id",
                "owner-id",
            ],
            |a, name| match name {
                "network-acl-id" => vec![a.acl_id.clone()],
                "vpc-id" => vec![a.vpc_id.clone()],
                "default" => vec![b(true)],
                "owner-id" => vec![owner.clone()],
                _ => subnets_of(&a.vpc_id),
            },
            |id| super::netquery::not_found("InvalidNetworkAclID.NotFound", "network ACL", id),
        )?;
        Ok((
            page.into_iter()
                .map(|a| {
                    let s = subnets_of(&a.vpc_id);
                    (a, s)
                })
                .collect(),
            next,
        ))
    }
}
