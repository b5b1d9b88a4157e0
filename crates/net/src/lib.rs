//! The VPC data plane (issue 16, docs/networking.md): each VPC is a routed network namespace
//! per host, each network interface a TAP in it, security groups an nftables ruleset replaced
//! in one transaction, DHCP and DNS a dnsmasq per namespace, the outside an edge namespace
//! with 1:1 NAT, and hosts joined by one VXLAN device per VPC.
//!
//! vireod describes what it wants ([`VpcState`], from its database) and calls [`apply`]
//! (idempotent: on every change and at start-up; [`apply_since`] loads only the ruleset when
//! nothing but the security groups changed since the last apply), [`remove_vpc`] (DeleteVpc, or a namespace
//! [`list_vpcs`] finds that the database no longer has), [`open_tap`] (before it starts a
//! VMM: the fd goes to `vireo-vmm --net tap-fd=N`), [`switch_interface`] (a live
//! migration's switch-over: one interface's route, at once) and [`carry_conntrack`] (its
//! tracked connections, after it). [`plan()`] is the pure part: every name, the nftables
//! ruleset and dnsmasq's files, without touching the system.

mod apply;
pub mod model;
pub mod names;
pub mod plan;
mod sys;

pub use apply::{
    apply, apply_since, carry_conntrack, dnsmasq_pid, in_vpc, leases_path, list_ruleset, list_vpcs,
    load_ruleset, remove_edge, remove_vpc, switch_interface, Applied,
};
pub use model::{
    host_name, Cidr, DnsSettings, HostPlace, Interface, Mac, ParseError, Peer, PortRange, Protocol,
    PublicIp, Rule, RulePeer, SecurityGroup, Subnet, VpcState,
};
pub use names::{tap_mac, tap_name, Scope};
pub use plan::{plan, Plan, PlanError};
pub use sys::{in_netns, netns_exists, open_tap, NetError};
