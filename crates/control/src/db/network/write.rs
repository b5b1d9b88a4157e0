//! The writes VPC networking makes, each inside the caller's transaction: VPCs with what
//! CreateVpc makes besides, subnets, groups and rules, interfaces, gateways, routes and
//! addresses. Deleting a record deletes its tags.

use std::net::Ipv4Addr;

use rusqlite::{params, Connection, OptionalExtension};
use vireo_ec2_api::ids::{self, IdKind};

use crate::cidr::Ipv4Cidr;
use crate::db::Result;
use crate::model::Tag;
use crate::netmodel::{
    NetworkInterface, Protocol, PublicAddress, RouteTarget, RuleSource, SecurityGroupRule, Subnet,
};

/// What CreateVpc makes besides the VPC: its main route table, default network ACL and
/// `default` security group.
#[derive(Debug, Clone)]
pub struct NewVpc {
    pub vpc_id: String,
    pub route_table_id: String,
    pub acl_id: String,
    pub default_group_id: String,
}

/// A VPC with its main route table (the `local` route), default ACL and `default` group
/// (ingress from its own members, egress everywhere).
pub fn create_vpc(conn: &Connection, cidr: Ipv4Cidr, is_default: bool) -> Result<NewVpc> {
    let vpc_id = ids::new_id(IdKind::Vpc);
    conn.execute(
        "INSERT INTO vpcs(vpc_id, cidr, is_default, dns_support, dns_hostnames) VALUES(?1,?2,?3,1,?4)",
        params![vpc_id, cidr.to_string(), is_default, is_default],
    )?;
    let rtb = ids::new_id(IdKind::RouteTable);
    insert_route_table(conn, &rtb, &vpc_id)?;
    insert_route(conn, &rtb, cidr, &RouteTarget::Local)?;
    insert_rtb_association(
        conn,
        &ids::new_id(IdKind::RouteTableAssociation),
        &rtb,
        &vpc_id,
        None,
    )?;
    let acl = ids::new_id(IdKind::NetworkAcl);
    conn.execute(
        "INSERT INTO network_acls(acl_id, vpc_id) VALUES(?1, ?2)",
        [&acl, &vpc_id],
    )?;
    let sg = ids::new_id(IdKind::SecurityGroup);
    insert_group(conn, &sg, &vpc_id, "default", "default VPC security group")?;
    insert_rule(conn, &allow_all(&sg, false, RuleSource::Group(sg.clone())))?;
    insert_rule(conn, &allow_all_egress(&sg))?;
    Ok(NewVpc {
        vpc_id,
        route_table_id: rtb,
        acl_id: acl,
        default_group_id: sg,
    })
}

/// The rule every new group starts with: all traffic to 0.0.0.0/0.
pub fn allow_all_egress(group_id: &str) -> SecurityGroupRule {
    let everywhere = Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0");
    allow_all(group_id, true, RuleSource::Cidr(everywhere))
}

/// A new rule (with a fresh id) of `group_id` that lets all traffic in (or, with `egress`,
/// out) from (to) `source`.
fn allow_all(group_id: &str, egress: bool, source: RuleSource) -> SecurityGroupRule {
    SecurityGroupRule {
        seq: 0,
        rule_id: ids::new_id(IdKind::SecurityGroupRule),
        group_id: group_id.to_string(),
        egress,
        protocol: Protocol::All,
        from_port: -1,
        to_port: -1,
        source,
        description: String::new(),
        tags: Vec::new(),
    }
}

pub fn set_vpc_attribute(conn: &Connection, vpc_id: &str, column: VpcFlag, on: bool) -> Result<()> {
    let sql = match column {
        VpcFlag::DnsSupport => "UPDATE vpcs SET dns_support = ?2 WHERE vpc_id = ?1",
        VpcFlag::DnsHostnames => "UPDATE vpcs SET dns_hostnames = ?2 WHERE vpc_id = ?1",
    };
    conn.execute(sql, params![vpc_id, on])?;
    Ok(())
}

/// The VPC attributes ModifyVpcAttribute changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VpcFlag {
    DnsSupport,
    DnsHostnames,
}

/// Deletes a VPC that holds nothing but its own main route table, ACL and default group.
pub fn delete_vpc(conn: &Connection, vpc_id: &str) -> Result<()> {
    for g in &ids_in_vpc(conn, "security_groups", "group_id", vpc_id)? {
        delete_group(conn, g)?;
    }
    let tables = ids_in_vpc(conn, "route_tables", "rtb_id", vpc_id)?;
    conn.execute("DELETE FROM rtb_associations WHERE vpc_id = ?1", [vpc_id])?;
    for t in &tables {
        delete_route_table(conn, t)?;
    }
    for a in &ids_in_vpc(conn, "network_acls", "acl_id", vpc_id)? {
        delete_tags(conn, a)?;
    }
    conn.execute("DELETE FROM network_acls WHERE vpc_id = ?1", [vpc_id])?;
    conn.execute("DELETE FROM vpcs WHERE vpc_id = ?1", [vpc_id])?;
    delete_tags(conn, vpc_id)
}

/// The `id_column` of the rows of `table` (both names fixed in this file, never input) that
/// belong to the VPC.
fn ids_in_vpc(
    conn: &Connection,
    table: &str,
    id_column: &str,
    vpc_id: &str,
) -> Result<Vec<String>> {
    let mut st = conn.prepare(&format!(
        "SELECT {id_column} FROM {table} WHERE vpc_id = ?1"
    ))?;
    let rows = st.query_map([vpc_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes the tags of a record that is being deleted.
fn delete_tags(conn: &Connection, resource_id: &str) -> Result<()> {
    conn.execute("DELETE FROM tags WHERE resource_id = ?1", [resource_id])?;
    Ok(())
}

pub fn insert_subnet(conn: &Connection, s: &Subnet) -> Result<()> {
    conn.execute(
        "INSERT INTO subnets(subnet_id, vpc_id, cidr, availability_zone, default_for_az, map_public_ip)
         VALUES(?1,?2,?3,?4,?5,?6)",
        params![
            s.subnet_id,
            s.vpc_id,
            s.cidr.to_string(),
            s.availability_zone,
            s.default_for_az,
            s.map_public_ip_on_launch
        ],
    )?;
    put_tags(conn, &s.subnet_id, &s.tags)
}

pub fn set_map_public_ip(conn: &Connection, subnet_id: &str, on: bool) -> Result<()> {
    conn.execute(
        "UPDATE subnets SET map_public_ip = ?2 WHERE subnet_id = ?1",
        params![subnet_id, on],
    )?;
    Ok(())
}

pub fn delete_subnet(conn: &Connection, subnet_id: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM rtb_associations WHERE subnet_id = ?1",
        [subnet_id],
    )?;
    conn.execute("DELETE FROM subnets WHERE subnet_id = ?1", [subnet_id])?;
    delete_tags(conn, subnet_id)
}

pub fn insert_group(
    conn: &Connection,
    group_id: &str,
    vpc_id: &str,
    name: &str,
    description: &str,
) -> Result<()> {
    conn.execute(
        "INSERT INTO security_groups(group_id, vpc_id, name, description) VALUES(?1,?2,?3,?4)",
        [group_id, vpc_id, name, description],
    )?;
    Ok(())
}

/// Deletes a group and its rules (the caller has checked nothing else refers to it).
pub fn delete_group(conn: &Connection, group_id: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM tags WHERE resource_id IN (SELECT rule_id FROM sg_rules WHERE group_id = ?1)",
        [group_id],
    )?;
    conn.execute("DELETE FROM sg_rules WHERE group_id = ?1", [group_id])?;
    conn.execute(
        "DELETE FROM security_groups WHERE group_id = ?1",
        [group_id],
    )?;
    delete_tags(conn, group_id)
}

/// A rule's source as its `cidr` and `ref_group_id` columns hold it (one of them is NULL).
fn source_columns(source: &RuleSource) -> (Option<String>, Option<&str>) {
    match source {
        RuleSource::Cidr(c) => (Some(c.to_string()), None),
        RuleSource::Group(g) => (None, Some(g.as_str())),
    }
}

pub fn insert_rule(conn: &Connection, r: &SecurityGroupRule) -> Result<()> {
    let (cidr, group) = source_columns(&r.source);
    conn.execute(
        "INSERT INTO sg_rules(rule_id, group_id, egress, protocol, from_port, to_port, cidr,
             ref_group_id, description) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9)",
        params![
            r.rule_id,
            r.group_id,
            r.egress,
            r.protocol.to_string(),
            r.from_port,
            r.to_port,
            cidr,
            group,
            r.description
        ],
    )?;
    put_tags(conn, &r.rule_id, &r.tags)
}

/// Rewrites a rule in place (ModifySecurityGroupRules, the description updates): its id,
/// group, direction, position and tags stay.
pub fn update_rule(conn: &Connection, r: &SecurityGroupRule) -> Result<()> {
    let (cidr, group) = source_columns(&r.source);
    conn.execute(
        "UPDATE sg_rules SET protocol = ?2, from_port = ?3, to_port = ?4, cidr = ?5,
             ref_group_id = ?6, description = ?7 WHERE rule_id = ?1",
        params![
            r.rule_id,
            r.protocol.to_string(),
            r.from_port,
            r.to_port,
            cidr,
            group,
            r.description
        ],
    )?;
    Ok(())
}

/// A route's target as its `gateway_id` column holds it.
fn gateway_column(target: &RouteTarget) -> &str {
    match target {
        RouteTarget::Local => "local",
        RouteTarget::Gateway(g) => g.as_str(),
    }
}

/// Points an existing route at another target (ReplaceRoute).
pub fn replace_route(
    conn: &Connection,
    rtb_id: &str,
    destination: Ipv4Cidr,
    target: &RouteTarget,
) -> Result<()> {
    let gw = gateway_column(target);
    conn.execute(
        "UPDATE routes SET gateway_id = ?3 WHERE rtb_id = ?1 AND destination = ?2",
        params![rtb_id, destination.to_string(), gw],
    )?;
    Ok(())
}

pub fn delete_rule(conn: &Connection, rule_id: &str) -> Result<()> {
    conn.execute("DELETE FROM sg_rules WHERE rule_id = ?1", [rule_id])?;
    delete_tags(conn, rule_id)
}

pub fn insert_interface(conn: &Connection, e: &NetworkInterface) -> Result<()> {
    let a = e.attachment.as_ref();
    conn.execute(
        "INSERT INTO network_interfaces(eni_id, subnet_id, vpc_id, mac, private_ip, description,
             source_dest_check, attachment_id, instance_id, device_index, delete_on_termination,
             attach_time) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)",
        params![
            e.eni_id,
            e.subnet_id,
            e.vpc_id,
            e.mac,
            e.private_ip.to_string(),
            e.description,
            e.source_dest_check,
            a.map(|a| &a.attachment_id),
            a.map(|a| &a.instance_id),
            a.map(|a| a.device_index),
            a.map(|a| a.delete_on_termination),
            a.map(|a| &a.attach_time),
        ],
    )?;
    set_interface_groups(conn, &e.eni_id, &e.groups)?;
    put_tags(conn, &e.eni_id, &e.tags)
}

pub fn set_interface_groups(conn: &Connection, eni_id: &str, groups: &[String]) -> Result<()> {
    conn.execute("DELETE FROM eni_groups WHERE eni_id = ?1", [eni_id])?;
    for (n, g) in groups.iter().enumerate() {
        conn.execute(
            "INSERT INTO eni_groups(eni_id, group_id, position) VALUES(?1,?2,?3)",
            params![eni_id, g, n as i64],
        )?;
    }
    Ok(())
}

/// Deletes an interface and its launch-time public address; an Elastic IP on it is
/// disassociated (it stays allocated).
pub fn delete_interface(conn: &Connection, eni_id: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM public_addresses WHERE eni_id = ?1 AND allocation_id IS NULL",
        [eni_id],
    )?;
    conn.execute(
        "UPDATE public_addresses SET eni_id = NULL, association_id = NULL WHERE eni_id = ?1",
        [eni_id],
    )?;
    conn.execute("DELETE FROM network_interfaces WHERE eni_id = ?1", [eni_id])?;
    delete_tags(conn, eni_id)
}

pub fn insert_gateway(conn: &Connection, igw_id: &str, tags: &[Tag]) -> Result<()> {
    conn.execute(
        "INSERT INTO internet_gateways(igw_id, vpc_id) VALUES(?1, NULL)",
        [igw_id],
    )?;
    put_tags(conn, igw_id, tags)
}

pub fn set_gateway_vpc(conn: &Connection, igw_id: &str, vpc_id: Option<&str>) -> Result<()> {
    conn.execute(
        "UPDATE internet_gateways SET vpc_id = ?2 WHERE igw_id = ?1",
        params![igw_id, vpc_id],
    )?;
    Ok(())
}

pub fn delete_gateway(conn: &Connection, igw_id: &str) -> Result<()> {
    conn.execute("DELETE FROM internet_gateways WHERE igw_id = ?1", [igw_id])?;
    delete_tags(conn, igw_id)
}

pub fn insert_route_table(conn: &Connection, rtb_id: &str, vpc_id: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO route_tables(rtb_id, vpc_id) VALUES(?1, ?2)",
        [rtb_id, vpc_id],
    )?;
    Ok(())
}

pub fn delete_route_table(conn: &Connection, rtb_id: &str) -> Result<()> {
    conn.execute("DELETE FROM routes WHERE rtb_id = ?1", [rtb_id])?;
    conn.execute("DELETE FROM route_tables WHERE rtb_id = ?1", [rtb_id])?;
    delete_tags(conn, rtb_id)
}

pub fn insert_route(
    conn: &Connection,
    rtb_id: &str,
    destination: Ipv4Cidr,
    target: &RouteTarget,
) -> Result<()> {
    let gw = gateway_column(target);
    conn.execute(
        "INSERT INTO routes(rtb_id, destination, gateway_id) VALUES(?1,?2,?3)",
        params![rtb_id, destination.to_string(), gw],
    )?;
    Ok(())
}

pub fn delete_route(conn: &Connection, rtb_id: &str, destination: Ipv4Cidr) -> Result<()> {
    conn.execute(
        "DELETE FROM routes WHERE rtb_id = ?1 AND destination = ?2",
        params![rtb_id, destination.to_string()],
    )?;
    Ok(())
}

pub fn insert_rtb_association(
    conn: &Connection,
    association_id: &str,
    rtb_id: &str,
    vpc_id: &str,
    subnet_id: Option<&str>,
) -> Result<()> {
    conn.execute(
        "INSERT INTO rtb_associations(association_id, rtb_id, vpc_id, subnet_id) VALUES(?1,?2,?3,?4)",
        params![association_id, rtb_id, vpc_id, subnet_id],
    )?;
    Ok(())
}

pub fn delete_rtb_association(conn: &Connection, association_id: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM rtb_associations WHERE association_id = ?1",
        [association_id],
    )?;
    Ok(())
}

pub fn insert_address(conn: &Connection, a: &PublicAddress) -> Result<()> {
    conn.execute(
        "INSERT INTO public_addresses(public_ip, allocation_id, association_id, eni_id)
         VALUES(?1,?2,?3,?4)",
        params![
            a.public_ip.to_string(),
            a.allocation_id,
            a.association_id,
            a.eni_id
        ],
    )?;
    if let Some(id) = &a.allocation_id {
        put_tags(conn, id, &a.tags)?;
    }
    Ok(())
}

pub fn associate_address(
    conn: &Connection,
    public_ip: Ipv4Addr,
    association_id: Option<&str>,
    eni_id: Option<&str>,
) -> Result<()> {
    conn.execute(
        "UPDATE public_addresses SET association_id = ?2, eni_id = ?3 WHERE public_ip = ?1",
        params![public_ip.to_string(), association_id, eni_id],
    )?;
    Ok(())
}

pub fn delete_address(conn: &Connection, public_ip: Ipv4Addr) -> Result<()> {
    let alloc: Option<String> = conn
        .query_row(
            "SELECT allocation_id FROM public_addresses WHERE public_ip = ?1",
            [public_ip.to_string()],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    if let Some(a) = alloc {
        delete_tags(conn, &a)?;
    }
    conn.execute(
        "DELETE FROM public_addresses WHERE public_ip = ?1",
        [public_ip.to_string()],
    )?;
    Ok(())
}

pub fn put_tags(conn: &Connection, resource: &str, tags: &[Tag]) -> Result<()> {
    for t in tags {
        crate::db::put_tag(conn, resource, &t.key, &t.value)?;
    }
    Ok(())
}
