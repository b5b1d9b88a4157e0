//! What the metadata service knows of one instance: a snapshot the service reads from the
//! database for each request ([`super::Lookup`]), so that the handler is a pure function of it
//! and a change (ModifyInstanceMetadataOptions, a new tag, an Elastic IP) is seen by the next
//! request.

use std::net::Ipv4Addr;

use crate::model::{MetadataOptions, Tag};

/// One instance, as its metadata shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub instance_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub reservation_id: String,
    pub launch_index: u32,
    /// The account (owner) id.
    pub account_id: String,
    /// EC2's launch time (`2024-01-01T00:00:00.000Z`), the identity document's pendingTime.
    pub launch_time: String,
    pub region: String,
    pub availability_zone: String,
    /// `<region>.compute.internal`: the domain of private host names.
    pub domain: String,
    pub options: MetadataOptions,
    /// The raw user data (empty: none, and `user-data` is 404).
    pub user_data: Vec<u8>,
    /// The key pair's name and public key (OpenSSH format), if launched with one.
    pub key: Option<(String, String)>,
    pub tags: Vec<Tag>,
    /// Its interfaces, the primary (device 0) first.
    pub interfaces: Vec<InterfaceView>,
}

/// One of its network interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceView {
    pub device_number: u32,
    pub eni_id: String,
    /// Lower-case `02:…`.
    pub mac: String,
    pub private_ip: Ipv4Addr,
    pub subnet_id: String,
    pub subnet_cidr: String,
    pub vpc_id: String,
    pub vpc_cidr: String,
    /// Its security groups: ids and names, in the same order.
    pub group_ids: Vec<String>,
    pub group_names: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
    /// The public address's DNS name, when it has one.
    pub public_dns: Option<String>,
}

impl InstanceView {
    /// The primary interface (device 0; the first one if, oddly, none is device 0).
    pub fn primary(&self) -> Option<&InterfaceView> {
        self.interfaces
            .iter()
            .find(|i| i.device_number == 0)
            .or(self.interfaces.first())
    }

    /// A private address's host name (`ip-10-0-1-5.<region>.compute.internal`).
    pub fn private_name(&self, ip: Ipv4Addr) -> String {
        format!("{}.{}", crate::cidr::host_name(ip), self.domain)
    }
}
