//! Public addresses from the pool `vireod serve --public-cidr` gives: the ones interfaces get at
//! launch (MapPublicIpOnLaunch / AssociatePublicIpAddress) and Elastic IPs (AllocateAddress,
//! AssociateAddress, DisassociateAddress, ReleaseAddress, DescribeAddresses).
//!
//! The pool's first address after the network's is the edge's own (the outside's next hop into
//! vireod's edge namespace) and its last is the broadcast address: neither is handed out.

use std::net::Ipv4Addr;

use vireo_ec2_api::ids::{self, IdKind};

use super::netquery::{describe, eni_not_found, DescribeQuery};
use super::Service;
use crate::cidr::Ipv4Cidr;
use crate::db;
use crate::db::network::{self as netdb, NetState};
use crate::error::{ApiError, ApiResult};
use crate::model::Tag;
use crate::netmodel::PublicAddress;

/// The addresses of a pool that may be handed out.
pub fn pool_addresses(pool: Ipv4Cidr) -> impl Iterator<Item = Ipv4Addr> {
    let size = pool.size();
    (2..size.saturating_sub(1)).filter_map(move |n| pool.nth(n))
}

/// Where AssociateAddress puts an address.
#[derive(Debug, Clone)]
pub enum AddressTarget {
    Instance(String),
    Interface(String),
}

/// What AssociateAddress asks for.
#[derive(Debug, Clone)]
pub struct AssociateRequest {
    /// The allocation id, or the public address itself.
    pub address: AddressRef,
    pub target: AddressTarget,
    pub private_ip: Option<Ipv4Addr>,
    pub allow_reassociation: bool,
}

/// An Elastic IP by allocation id or by address.
#[derive(Debug, Clone)]
pub enum AddressRef {
    Allocation(String),
    PublicIp(Ipv4Addr),
}

fn no_pool() -> ApiError {
    ApiError::new(
        "AddressLimitExceeded",
        "vireod has no public addresses: start it with --public-cidr CIDR (see docs/vireod.md)",
    )
}

fn allocation_not_found(id: &str) -> ApiError {
    ApiError::new(
        "InvalidAllocationID.NotFound",
        format!("The allocation ID '{id}' does not exist"),
    )
}

fn address_not_found(ip: &str) -> ApiError {
    ApiError::new(
        "InvalidAddress.NotFound",
        format!("Address '{ip}' not found."),
    )
}

impl Service {
    /// The lowest free address of the pool, not counting `taken`.
    pub(super) fn free_public_ip(&self, net: &NetState, taken: &[Ipv4Addr]) -> ApiResult<Ipv4Addr> {
        let pool = self.inner.cfg.public_cidr.ok_or_else(no_pool)?;
        pool_addresses(pool)
            .find(|ip| !taken.contains(ip) && !net.addresses.iter().any(|a| a.public_ip == *ip))
            .ok_or_else(|| {
                ApiError::new(
                    "AddressLimitExceeded",
                    format!("The maximum number of addresses has been reached: the pool {pool} has none left."),
                )
            })
    }

    fn find_eip<'a>(net: &'a NetState, r: &AddressRef) -> ApiResult<&'a PublicAddress> {
        match r {
            AddressRef::Allocation(id) => net
                .addresses
                .iter()
                .find(|a| a.allocation_id.as_deref() == Some(id.as_str()))
                .ok_or_else(|| allocation_not_found(id)),
            AddressRef::PublicIp(ip) => net
                .addresses
                .iter()
                .find(|a| a.public_ip == *ip && a.allocation_id.is_some())
                .ok_or_else(|| address_not_found(&ip.to_string())),
        }
    }

    /// AllocateAddress (Domain=vpc): an Elastic IP from the pool, or the one asked for.
    pub fn allocate_address(
        &self,
        wanted: Option<Ipv4Addr>,
        tags: &[Tag],
    ) -> ApiResult<PublicAddress> {
        let pool = self.inner.cfg.public_cidr.ok_or_else(no_pool)?;
        let mut db = self.db();
        let net = db.net_state()?;
        let ip = match wanted {
            Some(ip) => {
                if !pool_addresses(pool).any(|p| p == ip)
                    || net.addresses.iter().any(|a| a.public_ip == ip)
                {
                    return Err(ApiError::new(
                        "InvalidAddress.NotFound",
                        format!("Address {ip} is not a free address of the public pool {pool}"),
                    ));
                }
                ip
            }
            None => self.free_public_ip(&net, &[])?,
        };
        let a = PublicAddress {
            seq: 0,
            public_ip: ip,
            allocation_id: Some(ids::new_id(IdKind::Allocation)),
            association_id: None,
            eni_id: None,
            tags: tags.to_vec(),
        };
        let tx = db.transaction()?;
        netdb::insert_address(&tx, &a)?;
        tx.commit().map_err(db::DbError::from)?;
        Ok(a)
    }

    /// AssociateAddress: returns the association id.
    pub fn associate_address(&self, req: &AssociateRequest) -> ApiResult<String> {
        let association_id = ids::new_id(IdKind::ElasticIpAssociation);
        let vpcs = {
            let mut db = self.db();
            let net = db.net_state()?;
            let eip = Self::find_eip(&net, &req.address)?.clone();
            let eni = match &req.target {
                AddressTarget::Interface(id) => {
                    net.interface(id).ok_or_else(|| eni_not_found(id))?
                }
                AddressTarget::Instance(id) => {
                    // The guard is held: read the instance through it (the lock is not reentrant).
                    let inst = db
                        .instance(id)?
                        .ok_or_else(|| ApiError::instance_not_found(id))?;
                    if inst.state == crate::model::InstanceState::Terminated {
                        return Err(ApiError::incorrect_state(
                            id,
                            inst.state.name(),
                            "associated",
                        ));
                    }
                    net.interfaces_of(id)
                        .into_iter()
                        .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0))
                        .ok_or_else(|| {
                            ApiError::invalid_value(format!(
                                "The instance '{id}' has no network interface"
                            ))
                        })?
                }
            };
            if let Some(p) = req.private_ip {
                if p != eni.private_ip {
                    return Err(ApiError::invalid_value(format!(
                        "{p} is not the private address of {} ({})",
                        eni.eni_id, eni.private_ip
                    )));
                }
            }
            if !net
                .gateways
                .iter()
                .any(|g| g.vpc_id.as_deref() == Some(&eni.vpc_id))
            {
                return Err(ApiError::new(
                    "Gateway.NotAttached",
                    format!(
                        "Network {} is not attached to any internet gateway",
                        eni.vpc_id
                    ),
                ));
            }
            if eip.eni_id.is_some()
                && eip.eni_id.as_deref() != Some(&eni.eni_id)
                && !req.allow_reassociation
            {
                return Err(ApiError::new(
                    "Resource.AlreadyAssociated",
                    format!(
                        "Address {} is already associated: give AllowReassociation to move it",
                        eip.public_ip
                    ),
                ));
            }
            let mut vpcs = vec![eni.vpc_id.clone()];
            if let Some(old) = eip.eni_id.as_deref().and_then(|e| net.interface(e)) {
                vpcs.push(old.vpc_id.clone());
            }
            let tx = db.transaction()?;
            // The interface's current public address gives way: a launch-time one is released,
            // another Elastic IP disassociated.
            if let Some(cur) = net.public_ip_of(&eni.eni_id) {
                if cur.public_ip != eip.public_ip {
                    if cur.allocation_id.is_none() {
                        netdb::delete_address(&tx, cur.public_ip)?;
                    } else {
                        netdb::associate_address(&tx, cur.public_ip, None, None)?;
                    }
                }
            }
            netdb::associate_address(&tx, eip.public_ip, Some(&association_id), Some(&eni.eni_id))?;
            tx.commit().map_err(db::DbError::from)?;
            vpcs
        };
        self.network_changed(&vpcs);
        Ok(association_id)
    }

    /// DisassociateAddress, by association id or address.
    pub fn disassociate_address(&self, r: &AddressRef) -> ApiResult<()> {
        let vpc = {
            let db = self.db();
            let net = db.net_state()?;
            let a = match r {
                AddressRef::Allocation(assoc) => net
                    .addresses
                    .iter()
                    .find(|a| a.association_id.as_deref() == Some(assoc.as_str()))
                    .ok_or_else(|| {
                        ApiError::new(
                            "InvalidAssociationID.NotFound",
                            format!("The association ID '{assoc}' does not exist"),
                        )
                    })?,
                AddressRef::PublicIp(_) => Self::find_eip(&net, r)?,
            };
            let vpc = a
                .eni_id
                .as_deref()
                .and_then(|e| net.interface(e))
                .map(|e| e.vpc_id.clone());
            netdb::associate_address(db.conn(), a.public_ip, None, None)?;
            vpc
        };
        if let Some(v) = vpc {
            self.network_changed(&[v]);
        }
        Ok(())
    }

    /// ReleaseAddress: only an address that is not associated.
    pub fn release_address(&self, r: &AddressRef) -> ApiResult<()> {
        let db = self.db();
        let net = db.net_state()?;
        let a = Self::find_eip(&net, r)?;
        if a.eni_id.is_some() {
            return Err(ApiError::new(
                "InvalidIPAddress.InUse",
                format!("Address {} is in use: disassociate it first", a.public_ip),
            ));
        }
        netdb::delete_address(db.conn(), a.public_ip)?;
        Ok(())
    }

    /// DescribeAddresses: the Elastic IPs, with where each is associated.
    pub fn describe_addresses(
        &self,
        ips: &[Ipv4Addr],
        q: &DescribeQuery,
    ) -> ApiResult<(Vec<PublicAddress>, NetState)> {
        let net = self.net()?;
        let mut q = q.clone();
        for ip in ips {
            let a = Self::find_eip(&net, &AddressRef::PublicIp(*ip))?;
            q.ids.extend(a.allocation_id.clone());
        }
        let eips: Vec<PublicAddress> = net
            .addresses
            .iter()
            .filter(|a| a.allocation_id.is_some())
            .cloned()
            .collect();
        let (page, _) = describe(
            eips,
            &q,
            &[
                "allocation-id",
                "association-id",
                "domain",
                "instance-id",
                "network-interface-id",
                "network-interface-owner-id",
                "private-ip-address",
                "public-ip",
            ],
            |a, name| {
                let eni = a.eni_id.as_deref().and_then(|e| net.interface(e));
                match name {
                    "allocation-id" => a.allocation_id.clone().into_iter().collect(),
                    "association-id" => a.association_id.clone().into_iter().collect(),
                    "domain" => vec!["vpc".into()],
                    "instance-id" => eni
                        .and_then(|e| e.attachment.as_ref())
                        .map(|x| x.instance_id.clone())
                        .into_iter()
                        .collect(),
                    "network-interface-id" => a.eni_id.clone().into_iter().collect(),
                    "network-interface-owner-id" => vec![self.owner_id().to_string()],
                    "private-ip-address" => {
                        eni.map(|e| e.private_ip.to_string()).into_iter().collect()
                    }
                    _ => vec![a.public_ip.to_string()],
                }
            },
            allocation_not_found,
        )?;
        Ok((page, net))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_its_edge_and_broadcast_addresses() {
        let pool: Ipv4Cidr = "198.51.100.0/29".parse().unwrap();
        let all: Vec<Ipv4Addr> = pool_addresses(pool).collect();
        assert_eq!(
            all,
            (2..7)
                .map(|n| Ipv4Addr::new(198, 51, 100, n))
                .collect::<Vec<_>>()
        );
    }
}
