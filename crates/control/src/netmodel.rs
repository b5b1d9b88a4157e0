//! The records of VPC networking, as stored in SQLite and as the API shows them: VPCs, subnets,
//! security groups and their rules, network interfaces, internet gateways, route tables,
//! network ACLs and public addresses.

use std::fmt;
use std::net::Ipv4Addr;

use crate::cidr::Ipv4Cidr;
use crate::model::Tag;

/// A VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub seq: i64,
    pub vpc_id: String,
    pub cidr: Ipv4Cidr,
    pub is_default: bool,
    pub enable_dns_support: bool,
    pub enable_dns_hostnames: bool,
    pub tags: Vec<Tag>,
}

/// A subnet of a VPC, in one availability zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub seq: i64,
    pub subnet_id: String,
    pub vpc_id: String,
    pub cidr: Ipv4Cidr,
    pub availability_zone: String,
    pub default_for_az: bool,
    pub map_public_ip_on_launch: bool,
    pub tags: Vec<Tag>,
}

/// A security group of a VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub seq: i64,
    pub group_id: String,
    pub vpc_id: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<Tag>,
}

/// The IP protocol of a rule, as EC2 names it (`-1` is every protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
    /// Any other IP protocol number (0-255), without ports.
    Number(u8),
}

impl Protocol {
    /// EC2's spelling: `tcp`, `udp`, `icmp`, `-1` or the number.
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "-1" | "all" => Protocol::All,
            "tcp" | "6" => Protocol::Tcp,
            "udp" | "17" => Protocol::Udp,
            "icmp" | "1" => Protocol::Icmp,
            n => Protocol::Number(n.parse().ok()?),
        })
    }

    /// Whether rules of this protocol carry a port range (ICMP: type and code).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Icmp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::All => f.write_str("-1"),
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

/// Where a rule's traffic comes from (ingress) or goes to (egress).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleSource {
    Cidr(Ipv4Cidr),
    /// The members of a security group (the interfaces that have it).
    Group(String),
}

/// One security group rule (EC2's SecurityGroupRule: one protocol and port range, one source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupRule {
    /// Insertion order; pagination follows it (0 until stored).
    pub seq: i64,
    pub rule_id: String,
    pub group_id: String,
    pub egress: bool,
    pub protocol: Protocol,
    /// TCP/UDP: the port range; ICMP: type and code (-1: any); otherwise both -1.
    pub from_port: i32,
    pub to_port: i32,
    pub source: RuleSource,
    pub description: String,
    pub tags: Vec<Tag>,
}

impl SecurityGroupRule {
    /// The part of a rule that makes it the same rule (EC2's duplicate check).
    pub fn same_permission(&self, other: &SecurityGroupRule) -> bool {
        self.group_id == other.group_id
            && self.egress == other.egress
            && self.protocol == other.protocol
            && self.from_port == other.from_port
            && self.to_port == other.to_port
            && self.source == other.source
    }
}

/// A network interface (ENI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    pub seq: i64,
    pub eni_id: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub availability_zone: String,
    pub mac: String,
    pub private_ip: Ipv4Addr,
    pub description: String,
    pub source_dest_check: bool,
    pub attachment: Option<EniAttachment>,
    /// Group ids, in the order given.
    pub groups: Vec<String>,
    pub tags: Vec<Tag>,
}

/// An interface's attachment to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniAttachment {
    pub attachment_id: String,
    pub instance_id: String,
    pub device_index: u32,
    pub delete_on_termination: bool,
    pub attach_time: String,
}

/// An internet gateway, attached to at most one VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternetGateway {
    pub seq: i64,
    pub igw_id: String,
    pub vpc_id: Option<String>,
    pub tags: Vec<Tag>,
}

/// A route's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// The VPC itself (its CIDR; every route table has it).
    Local,
    /// An internet gateway.
    Gateway(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Cidr,
    pub target: RouteTarget,
}

/// A route table's association: with a subnet, or the VPC's main association.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTableAssociation {
    pub association_id: String,
    pub route_table_id: String,
    /// `None`: the main association (the table subnets without their own use).
    pub subnet_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    pub seq: i64,
    pub route_table_id: String,
    pub vpc_id: String,
    pub routes: Vec<Route>,
    pub associations: Vec<RouteTableAssociation>,
    pub tags: Vec<Tag>,
}

impl RouteTable {
    pub fn is_main(&self) -> bool {
        self.associations.iter().any(|a| a.subnet_id.is_none())
    }
}

/// A VPC's default network ACL (allow all; vireod has no others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAcl {
    pub seq: i64,
    pub acl_id: String,
    pub vpc_id: String,
    pub tags: Vec<Tag>,
}

/// A public address from the pool (`vireod serve --public-cidr`): an Elastic IP (with an
/// allocation id) or one given to an interface at launch (without; it goes with the interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicAddress {
    pub seq: i64,
    pub public_ip: Ipv4Addr,
    pub allocation_id: Option<String>,
    pub association_id: Option<String>,
    pub eni_id: Option<String>,
    pub tags: Vec<Tag>,
}
