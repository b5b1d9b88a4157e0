//! Network interfaces: each instance's interfaces, made with it by RunInstances (a subnet, a MAC,
//! the lowest free private address or the one asked for, security groups, a public address
//! where asked) and released when it terminates; DescribeNetworkInterfaces; and the groups of a
//! running instance (ModifyInstanceAttribute GroupId.N).

use std::net::Ipv4Addr;

use vireo_ec2_api::ids::{self, IdKind};

use super::netquery::{b, describe, eni_not_found, subnet_not_found, DescribeQuery};
use super::Service;
use crate::cidr::random_mac;
use crate::db;
use crate::db::network::{self as netdb, NetState};
use crate::error::{ApiError, ApiResult};
use crate::model::InstanceState;
use crate::netmodel::{EniAttachment, NetworkInterface, PublicAddress, Subnet};

/// One interface RunInstances is to make for each instance (`NetworkInterface.N`, or the
/// instance-level SubnetId / SecurityGroupId.N / PrivateIpAddress as device 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub device_index: u32,
    /// None: the default subnet of the default VPC.
    pub subnet_id: Option<String>,
    pub group_ids: Vec<String>,
    /// Group names (SecurityGroup.N), looked up in the subnet's VPC.
    pub group_names: Vec<String>,
    pub private_ip: Option<Ipv4Addr>,
    /// None: the subnet's MapPublicIpOnLaunch decides.
    pub associate_public_ip: Option<bool>,
    pub delete_on_termination: bool,
    pub description: String,
}

/// The interfaces and public addresses a launch makes, ready to insert with its instances.
#[derive(Debug, Clone, Default)]
pub(super) struct LaunchNetwork {
    pub interfaces: Vec<NetworkInterface>,
    pub addresses: Vec<PublicAddress>,
}

/// A subnet's interfaces must get distinct free addresses; this hands them out.
struct Allocator<'a> {
    net: &'a NetState,
    taken: Vec<(String, Ipv4Addr)>,
    public_taken: Vec<Ipv4Addr>,
}

impl Allocator<'_> {
    fn private_ip(&mut self, s: &Subnet, wanted: Option<Ipv4Addr>) -> ApiResult<Ipv4Addr> {
        let mut used = self.net.used_ips(&s.subnet_id);
        used.extend(
            self.taken
                .iter()
                .filter(|(id, _)| *id == s.subnet_id)
                .map(|(_, ip)| *ip),
        );
        let ip = match wanted {
            Some(ip) => {
                if !s.cidr.is_assignable(ip) {
                    return Err(ApiError::invalid_value(format!(
                        "Address {ip} is not a usable address of subnet {} ({}): EC2 reserves the first four and the last",
                        s.subnet_id, s.cidr
                    )));
                }
                if used.contains(&ip) {
                    return Err(ApiError::new(
                        "InvalidIPAddress.InUse",
                        format!("Address {ip} is in use."),
                    ));
                }
                ip
            }
            None => s.cidr.lowest_free(&used).ok_or_else(|| {
                ApiError::new(
                    "InsufficientFreeAddressesInSubnet",
                    format!(
                        "There are not enough free addresses in subnet '{}' to satisfy the requested number of instances.",
                        s.subnet_id
                    ),
                )
            })?,
        };
        self.taken.push((s.subnet_id.clone(), ip));
        Ok(ip)
    }
}

impl Service {
    /// The subnet an interface spec names, or the default subnet.
    fn launch_subnet<'a>(&self, net: &'a NetState, spec: &InterfaceSpec) -> ApiResult<&'a Subnet> {
        match &spec.subnet_id {
            Some(id) => net.subnet(id).ok_or_else(|| subnet_not_found(id)),
            None => {
                let zone = self.inner.cfg.availability_zone();
                net.vpcs
                    .iter()
                    .find(|v| v.is_default)
                    .and_then(|v| {
                        net.subnets.iter().find(|s| {
                            s.vpc_id == v.vpc_id && s.default_for_az && s.availability_zone == zone
                        })
                    })
                    .ok_or_else(|| {
                        ApiError::new(
                            "VPCIdNotSpecified",
                            "No default subnet for this user: give a SubnetId",
                        )
                    })
            }
        }
    }

    /// How many instances the subnets of `specs` have addresses for (each instance takes one
    /// address per spec in its subnet).
    pub(super) fn launch_address_room(
        &self,
        net: &NetState,
        specs: &[InterfaceSpec],
    ) -> ApiResult<u64> {
        let mut room = u64::MAX;
        for spec in specs {
            let subnet = self.launch_subnet(net, spec)?;
            let per_instance = specs
                .iter()
                .filter(|s| {
                    self.launch_subnet(net, s)
                        .is_ok_and(|x| x.subnet_id == subnet.subnet_id)
                })
                .count() as u64;
            let free = super::subnets::available_ips(net, subnet);
            room = room.min(free / per_instance.max(1));
        }
        Ok(room)
    }

    /// The interfaces (and public addresses) of `instance_ids`, one set per instance per spec.
    /// Fails, making nothing, when a subnet runs out of addresses or the pool of public ones.
    pub(super) fn plan_launch_network(
        &self,
        net: &NetState,
        specs: &[InterfaceSpec],
        instance_ids: &[String],
    ) -> ApiResult<LaunchNetwork> {
        let mut seen = Vec::new();
        for s in specs {
            if seen.contains(&s.device_index) {
                return Err(ApiError::invalid_value(format!(
                    "Each network interface requires a unique device index: {} is given twice",
                    s.device_index
                )));
            }
            seen.push(s.device_index);
        }
        if !seen.contains(&0) {
            return Err(ApiError::invalid_value(
                "The primary network interface (DeviceIndex 0) is missing",
            ));
        }
        if instance_ids.len() > 1 && specs.iter().any(|s| s.private_ip.is_some()) {
            return Err(ApiError::new(
                "InvalidParameterCombination",
                "A private IP address cannot be given when launching more than one instance",
            ));
        }
        let mut vpc: Option<&str> = None;
        let mut alloc = Allocator {
            net,
            taken: Vec::new(),
            public_taken: Vec::new(),
        };
        let mut out = LaunchNetwork::default();
        let now = crate::time::now_iso8601();
        for instance_id in instance_ids {
            for spec in specs {
                let subnet = self.launch_subnet(net, spec)?;
                if vpc.is_some_and(|v| v != subnet.vpc_id) {
                    return Err(ApiError::invalid_value(
                        "The network interfaces of an instance must all be in one VPC",
                    ));
                }
                vpc = Some(&subnet.vpc_id);
                let mut groups = spec.group_ids.clone();
                for name in &spec.group_names {
                    let g = net
                        .groups
                        .iter()
                        .find(|g| g.vpc_id == subnet.vpc_id && &g.name == name)
                        .ok_or_else(|| {
                            ApiError::new(
                                "InvalidGroup.NotFound",
                                format!(
                                    "The security group '{name}' does not exist in VPC '{}'",
                                    subnet.vpc_id
                                ),
                            )
                        })?;
                    groups.push(g.group_id.clone());
                }
                if groups.is_empty() {
                    if let Some(g) = net.default_group(&subnet.vpc_id) {
                        groups.push(g.group_id.clone());
                    }
                }
                groups.dedup();
                self.check_groups(net, &groups, &subnet.vpc_id)?;
                let ip = alloc.private_ip(subnet, spec.private_ip)?;
                let eni_id = ids::new_id(IdKind::NetworkInterface);
                let public = spec.associate_public_ip.unwrap_or(
                    subnet.map_public_ip_on_launch && self.inner.cfg.public_cidr.is_some(),
                );
                if public {
                    if spec.device_index != 0 {
                        return Err(ApiError::invalid_value(
                            "A public IP address can only be associated with the interface at DeviceIndex 0",
                        ));
                    }
                    let pip = self.free_public_ip(net, &alloc.public_taken)?;
                    alloc.public_taken.push(pip);
                    out.addresses.push(PublicAddress {
                        seq: 0,
                        public_ip: pip,
                        allocation_id: None,
                        association_id: None,
                        eni_id: Some(eni_id.clone()),
                        tags: Vec::new(),
                    });
                }
                out.interfaces.push(NetworkInterface {
                    seq: 0,
                    eni_id,
                    subnet_id: subnet.subnet_id.clone(),
                    vpc_id: subnet.vpc_id.clone(),
                    availability_zone: subnet.availability_zone.clone(),
                    mac: random_mac(),
                    private_ip: ip,
                    description: spec.description.clone(),
                    source_dest_check: true,
                    attachment: Some(EniAttachment {
                        attachment_id: ids::new_id(IdKind::NetworkInterfaceAttachment),
                        instance_id: instance_id.clone(),
                        device_index: spec.device_index,
                        delete_on_termination: spec.delete_on_termination,
                        attach_time: now.clone(),
                    }),
                    groups,
                    tags: Vec::new(),
                });
            }
        }
        Ok(out)
    }

    /// Stores a launch's interfaces and addresses in the launch's transaction.
    pub(super) fn insert_launch_network(
        tx: &rusqlite::Transaction<'_>,
        n: &LaunchNetwork,
    ) -> ApiResult<()> {
        for e in &n.interfaces {
            netdb::insert_interface(tx, e)?;
        }
        for a in &n.addresses {
            netdb::insert_address(tx, a)?;
        }
        Ok(())
    }

    /// A terminated instance's interfaces go (those with DeleteOnTermination; the others are
    /// detached), with their addresses: launch-time public ones are released, Elastic IPs
    /// disassociated. Idempotent.
    pub(super) fn release_instance_network(&self, instance_id: &str) -> ApiResult<Vec<String>> {
        let mut db = self.db();
        let net = db.net_state()?;
        let enis: Vec<NetworkInterface> = net
            .interfaces_of(instance_id)
            .into_iter()
            .cloned()
            .collect();
        if enis.is_empty() {
            return Ok(Vec::new());
        }
        let tx = db.transaction()?;
        for e in &enis {
            let delete = e
                .attachment
                .as_ref()
                .is_none_or(|a| a.delete_on_termination);
            if delete {
                netdb::delete_interface(&tx, &e.eni_id)?;
            } else {
                tx.execute(
                    "UPDATE network_interfaces SET attachment_id = NULL, instance_id = NULL,
                         device_index = NULL, delete_on_termination = NULL, attach_time = NULL
                     WHERE eni_id = ?1",
                    [&e.eni_id],
                )
                .map_err(db::DbError::from)?;
            }
        }
        tx.commit().map_err(db::DbError::from)?;
        Ok(enis.into_iter().map(|e| e.vpc_id).collect())
    }

    /// Interfaces of instances that are terminated (a vireod stopped between the two commits).
    pub(super) fn release_terminated_networks(&self) -> ApiResult<()> {
        let net = self.net()?;
        let instances = self.db().instances()?;
        for e in &net.interfaces {
            if let Some(a) = &e.attachment {
                let gone = instances
                    .iter()
                    .find(|i| i.instance_id == a.instance_id)
                    .is_none_or(|i| i.state == InstanceState::Terminated);
                if gone {
                    self.release_instance_network(&a.instance_id)?;
                }
            }
        }
        Ok(())
    }

    /// The interfaces of instances, by instance id (DescribeInstances shows them), with the
    /// network state they were read from.
    pub fn instance_networks(&self) -> ApiResult<NetState> {
        self.net()
    }

    /// DescribeNetworkInterfaces.
    pub fn describe_network_interfaces(
        &self,
        q: &DescribeQuery,
    ) -> ApiResult<(Vec<NetworkInterface>, NetState, Option<String>)> {
        let net = self.net()?;
        let owner = self.owner_id().to_string();
        let (page, next) = describe(
            net.interfaces.clone(),
            q,
            &[
                "network-interface-id",
                "subnet-id",
                "vpc-id",
                "private-ip-address",
                "addresses.private-ip-address",
                "mac-address",
                "status",
                "attachment.instance-id",
                "attachment.attachment-id",
                "attachment.device-index",
                "attachment.status",
                "attachment.delete-on-termination",
                "group-id",
                "group-name",
                "availability-zone",
                "owner-id",
                "association.public-ip",
                "description",
                "source-dest-check",
                "interface-type",
            ],
            |e, name| {
                let a = e.attachment.as_ref();
                match name {
                    "network-interface-id" => vec![e.eni_id.clone()],
                    "subnet-id" => vec![e.subnet_id.clone()],
                    "vpc-id" => vec![e.vpc_id.clone()],
                    "private-ip-address" | "addresses.private-ip-address" => {
                        vec![e.private_ip.to_string()]
                    }
                    "mac-address" => vec![e.mac.clone()],
                    "status" => vec![if a.is_some() { "in-use" } else { "available" }.into()],
                    "attachment.instance-id" => {
                        a.map(|a| a.instance_id.clone()).into_iter().collect()
                    }
                    "attachment.attachment-id" => {
                        a.map(|a| a.attachment_id.clone()).into_iter().collect()
                    }
                    "attachment.device-index" => {
                        a.map(|a| a.device_index.to_string()).into_iter().collect()
                    }
                    "attachment.status" => a.map(|_| "attached".to_string()).into_iter().collect(),
                    "attachment.delete-on-termination" => {
                        a.map(|a| b(a.delete_on_termination)).into_iter().collect()
                    }
                    "group-id" => e.groups.clone(),
                    "group-name" => e
                        .groups
                        .iter()
                        .filter_map(|g| net.group(g).map(|g| g.name.clone()))
                        .collect(),
                    "availability-zone" => vec![e.availability_zone.clone()],
                    "owner-id" => vec![owner.clone()],
                    "association.public-ip" => net
                        .public_ip_of(&e.eni_id)
                        .map(|p| p.public_ip.to_string())
                        .into_iter()
                        .collect(),
                    "description" => vec![e.description.clone()],
                    "source-dest-check" => vec![b(e.source_dest_check)],
                    _ => vec!["interface".into()],
                }
            },
            eni_not_found,
        )?;
        Ok((page, net, next))
    }

    /// ModifyInstanceAttribute GroupId.N: the groups of the instance's primary interface;
    /// answers once the data plane enforces them (on a running instance).
    pub async fn modify_instance_groups(
        &self,
        instance_id: &str,
        groups: &[String],
    ) -> ApiResult<()> {
        let inst = self.instance(instance_id)?;
        if inst.state == InstanceState::Terminated {
            return Err(ApiError::incorrect_state(
                instance_id,
                inst.state.name(),
                "modified",
            ));
        }
        let vpc = {
            let db = self.db();
            let net = db.net_state()?;
            let eni = net
                .interfaces_of(instance_id)
                .into_iter()
                .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0))
                .cloned()
                .ok_or_else(|| {
                    ApiError::new(
                        "InvalidInstanceID",
                        format!("The instance '{instance_id}' has no network interface"),
                    )
                })?;
            let mut groups = groups.to_vec();
            groups.dedup();
            self.check_groups(&net, &groups, &eni.vpc_id)?;
            netdb::set_interface_groups(db.conn(), &eni.eni_id, &groups)?;
            eni.vpc_id
        };
        self.network_in_force(&[vpc]).await
    }

    /// ModifyInstanceAttribute SourceDestCheck, on the instance's interfaces.
    pub fn set_source_dest_check(&self, instance_id: &str, on: bool) -> ApiResult<()> {
        self.instance(instance_id)?;
        let vpcs = self.vpcs_of_instance(instance_id)?;
        self.db()
            .conn()
            .execute(
                "UPDATE network_interfaces SET source_dest_check = ?2 WHERE instance_id = ?1",
                rusqlite::params![instance_id, on],
            )
            .map_err(db::DbError::from)?;
        self.network_changed(&vpcs);
        Ok(())
    }
}
