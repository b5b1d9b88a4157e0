//! Internet gateways: Create, Attach (one VPC each, one gateway per VPC), Detach, Delete and
//! DescribeInternetGateways.

use vireo_ec2_api::ids::{self, IdKind};

use super::netquery::{dependency, describe, igw_not_found, vpc_not_found, DescribeQuery};
use super::Service;
use crate::db;
use crate::db::network as netdb;
use crate::error::{ApiError, ApiResult};
use crate::model::Tag;
use crate::netmodel::InternetGateway;

impl Service {
    pub fn create_internet_gateway(&self, tags: &[Tag]) -> ApiResult<InternetGateway> {
        let id = ids::new_id(IdKind::InternetGateway);
        {
            let mut db = self.db();
            let tx = db.transaction()?;
            netdb::insert_gateway(&tx, &id, tags)?;
            tx.commit().map_err(db::DbError::from)?;
        }
        self.net()?
            .gateway(&id)
            .cloned()
            .ok_or_else(|| igw_not_found(&id))
    }

    pub fn attach_internet_gateway(&self, igw_id: &str, vpc_id: &str) -> ApiResult<()> {
        {
            let db = self.db();
            let net = db.net_state()?;
            let g = net.gateway(igw_id).ok_or_else(|| igw_not_found(igw_id))?;
            net.vpc(vpc_id).ok_or_else(|| vpc_not_found(vpc_id))?;
            if let Some(v) = &g.vpc_id {
                return Err(ApiError::new(
                    "Resource.AlreadyAssociated",
                    format!("resource {igw_id} is already attached to network {v}"),
                ));
            }
            if let Some(other) = net
                .gateways
                .iter()
                .find(|o| o.vpc_id.as_deref() == Some(vpc_id))
            {
                return Err(ApiError::new(
                    "Resource.AlreadyAssociated",
                    format!(
                        "network {vpc_id} already has an internet gateway attached ({})",
                        other.igw_id
                    ),
                ));
            }
            netdb::set_gateway_vpc(db.conn(), igw_id, Some(vpc_id))?;
        }
        self.network_changed(&[vpc_id]);
        Ok(())
    }

    pub fn detach_internet_gateway(&self, igw_id: &str, vpc_id: &str) -> ApiResult<()> {
        {
            let db = self.db();
            let net = db.net_state()?;
            let g = net.gateway(igw_id).ok_or_else(|| igw_not_found(igw_id))?;
            net.vpc(vpc_id).ok_or_else(|| vpc_not_found(vpc_id))?;
            if g.vpc_id.as_deref() != Some(vpc_id) {
                return Err(ApiError::new(
                    "Gateway.NotAttached",
                    format!("resource {igw_id} is not attached to network {vpc_id}"),
                ));
            }
            let mapped = net.addresses.iter().any(|a| {
                a.eni_id
                    .as_deref()
                    .and_then(|e| net.interface(e))
                    .is_some_and(|e| e.vpc_id == vpc_id)
            });
            if mapped {
                return Err(ApiError::new(
                    "DependencyViolation",
                    format!(
                        "Network {vpc_id} has some mapped public address(es). Please unmap those public address(es) before detaching the gateway."
                    ),
                ));
            }
            netdb::set_gateway_vpc(db.conn(), igw_id, None)?;
        }
        self.network_changed(&[vpc_id]);
        Ok(())
    }

    pub fn delete_internet_gateway(&self, igw_id: &str) -> ApiResult<()> {
        let db = self.db();
        let net = db.net_state()?;
        let g = net.gateway(igw_id).ok_or_else(|| igw_not_found(igw_id))?;
        if g.vpc_id.is_some() {
            return Err(dependency("internetGateway", igw_id));
        }
        netdb::delete_gateway(db.conn(), igw_id)?;
        Ok(())
    }

    pub fn describe_internet_gateways(
        &self,
        q: &DescribeQuery,
    ) -> ApiResult<(Vec<InternetGateway>, Option<String>)> {
        let owner = self.owner_id().to_string();
        describe(
            self.net()?.gateways,
            q,
            &[
                "internet-gateway-id",
                "attachment.vpc-id",
                "attachment.state",
                "owner-id",
            ],
            |g, name| match name {
                "internet-gateway-id" => vec![g.igw_id.clone()],
                "attachment.vpc-id" => g.vpc_id.clone().into_iter().collect(),
                "attachment.state" => g.vpc_id.iter().map(|_| "available".into()).collect(),
                _ => vec![owner.clone()],
            },
            igw_not_found,
        )
    }
}
