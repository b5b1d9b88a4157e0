//! VPC networking in the state database: the schema (migration 3), reading every network
//! record at once ([`NetState`]), and (in [`write`]) the writes the service makes inside its
//! transactions.
//!
//! Foreign keys (on for every connection) back the service's own dependency checks: a subnet
//! cannot outlive its VPC, an interface its subnet, a rule its group.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use rusqlite::{Connection, Row};
use vireo_ec2_api::ids::{self, IdKind};

use super::{Db, DbError, Result};
use crate::cidr::Ipv4Cidr;
use crate::model::Tag;
use crate::netmodel::{
    EniAttachment, InternetGateway, NetworkAcl, NetworkInterface, Protocol, PublicAddress, Route,
    RouteTable, RouteTableAssociation, RouteTarget, RuleSource, SecurityGroup, SecurityGroupRule,
    Subnet, Vpc,
};

mod write;
pub use write::*;

/// Migration 3: VPC networking.
pub(super) const SCHEMA: &str = "
CREATE TABLE vpcs(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    vpc_id TEXT NOT NULL UNIQUE,
    cidr TEXT NOT NULL,
    is_default INTEGER NOT NULL,
    dns_support INTEGER NOT NULL,
    dns_hostnames INTEGER NOT NULL);
CREATE TABLE subnets(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subnet_id TEXT NOT NULL UNIQUE,
    vpc_id TEXT NOT NULL REFERENCES vpcs(vpc_id),
    cidr TEXT NOT NULL,
    availability_zone TEXT NOT NULL,
    default_for_az INTEGER NOT NULL,
    map_public_ip INTEGER NOT NULL);
CREATE TABLE security_groups(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL UNIQUE,
    vpc_id TEXT NOT NULL REFERENCES vpcs(vpc_id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    UNIQUE(vpc_id, name));
CREATE TABLE sg_rules(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id TEXT NOT NULL UNIQUE,
    group_id TEXT NOT NULL REFERENCES security_groups(group_id),
    egress INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    from_port INTEGER NOT NULL,
    to_port INTEGER NOT NULL,
    cidr TEXT,
    ref_group_id TEXT REFERENCES security_groups(group_id),
    description TEXT NOT NULL);
CREATE TABLE network_interfaces(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    eni_id TEXT NOT NULL UNIQUE,
    subnet_id TEXT NOT NULL REFERENCES subnets(subnet_id),
    vpc_id TEXT NOT NULL REFERENCES vpcs(vpc_id),
    mac TEXT NOT NULL UNIQUE,
    private_ip TEXT NOT NULL,
    description TEXT NOT NULL,
    source_dest_check INTEGER NOT NULL,
    attachment_id TEXT UNIQUE,
    instance_id TEXT,
    device_index INTEGER,
    delete_on_termination INTEGER,
    attach_time TEXT,
    UNIQUE(subnet_id, private_ip),
    UNIQUE(instance_id, device_index));
CREATE TABLE eni_groups(
    eni_id TEXT NOT NULL REFERENCES network_interfaces(eni_id) ON DELETE CASCADE,
    group_id TEXT NOT NULL REFERENCES security_groups(group_id),
    position INTEGER NOT NULL,
    PRIMARY KEY(eni_id, group_id));
CREATE TABLE internet_gateways(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    igw_id TEXT NOT NULL UNIQUE,
    vpc_id TEXT UNIQUE REFERENCES vpcs(vpc_id));
CREATE TABLE route_tables(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rtb_id TEXT NOT NULL UNIQUE,
    vpc_id TEXT NOT NULL REFERENCES vpcs(vpc_id));
CREATE TABLE routes(
    rtb_id TEXT NOT NULL REFERENCES route_tables(rtb_id) ON DELETE CASCADE,
    destination TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    PRIMARY KEY(rtb_id, destination));
CREATE TABLE rtb_associations(
    association_id TEXT PRIMARY KEY,
    rtb_id TEXT NOT NULL REFERENCES route_tables(rtb_id),
    vpc_id TEXT NOT NULL REFERENCES vpcs(vpc_id),
    subnet_id TEXT UNIQUE REFERENCES subnets(subnet_id));
CREATE UNIQUE INDEX rtb_main ON rtb_associations(vpc_id) WHERE subnet_id IS NULL;
CREATE TABLE network_acls(
    acl_id TEXT PRIMARY KEY,
    vpc_id TEXT NOT NULL UNIQUE REFERENCES vpcs(vpc_id));
CREATE TABLE public_addresses(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    public_ip TEXT NOT NULL UNIQUE,
    allocation_id TEXT UNIQUE,
    association_id TEXT UNIQUE,
    eni_id TEXT UNIQUE REFERENCES network_interfaces(eni_id));
";

/// Every network record, read in one go: the service validates and describes against it.
#[derive(Debug, Clone, Default)]
pub struct NetState {
    pub vpcs: Vec<Vpc>,
    pub subnets: Vec<Subnet>,
    pub groups: Vec<SecurityGroup>,
    pub rules: Vec<SecurityGroupRule>,
    pub interfaces: Vec<NetworkInterface>,
    pub gateways: Vec<InternetGateway>,
    pub route_tables: Vec<RouteTable>,
    pub acls: Vec<NetworkAcl>,
    pub addresses: Vec<PublicAddress>,
}

impl NetState {
    pub fn vpc(&self, id: &str) -> Option<&Vpc> {
        self.vpcs.iter().find(|v| v.vpc_id == id)
    }
    pub fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.subnet_id == id)
    }
    pub fn group(&self, id: &str) -> Option<&SecurityGroup> {
        self.groups.iter().find(|g| g.group_id == id)
    }
    pub fn interface(&self, id: &str) -> Option<&NetworkInterface> {
        self.interfaces.iter().find(|e| e.eni_id == id)
    }
    pub fn gateway(&self, id: &str) -> Option<&InternetGateway> {
        self.gateways.iter().find(|g| g.igw_id == id)
    }
    pub fn route_table(&self, id: &str) -> Option<&RouteTable> {
        self.route_tables.iter().find(|r| r.route_table_id == id)
    }
    /// The public address of an interface (launch-time or Elastic).
    pub fn public_ip_of(&self, eni_id: &str) -> Option<&PublicAddress> {
        self.addresses
            .iter()
            .find(|a| a.eni_id.as_deref() == Some(eni_id))
    }
    /// Private addresses in use in a subnet.
    pub fn used_ips(&self, subnet_id: &str) -> Vec<Ipv4Addr> {
        self.interfaces
            .iter()
            .filter(|e| e.subnet_id == subnet_id)
            .map(|e| e.private_ip)
            .collect()
    }
    /// The interfaces attached to an instance, by device index.
    pub fn interfaces_of(&self, instance_id: &str) -> Vec<&NetworkInterface> {
        let mut v: Vec<&NetworkInterface> = self
            .interfaces
            .iter()
            .filter(|e| {
                e.attachment
                    .as_ref()
                    .is_some_and(|a| a.instance_id == instance_id)
            })
            .collect();
        v.sort_by_key(|e| e.attachment.as_ref().map(|a| a.device_index));
        v
    }
    /// The VPC's default security group.
    pub fn default_group(&self, vpc_id: &str) -> Option<&SecurityGroup> {
        self.groups
            .iter()
            .find(|g| g.vpc_id == vpc_id && g.name == "default")
    }
    /// The route table a subnet uses: its own association, else the VPC's main table.
    pub fn route_table_of_subnet(&self, subnet: &Subnet) -> Option<&RouteTable> {
        self.route_tables
            .iter()
            .find(|t| {
                t.associations
                    .iter()
                    .any(|a| a.subnet_id.as_deref() == Some(&subnet.subnet_id))
            })
            .or_else(|| {
                self.route_tables
                    .iter()
                    .find(|t| t.vpc_id == subnet.vpc_id && t.is_main())
            })
    }
}

fn conversion(col: usize, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        e.to_string().into(),
    )
}

fn cidr_at(r: &Row<'_>, col: usize) -> rusqlite::Result<Ipv4Cidr> {
    r.get::<_, String>(col)?
        .parse()
        .map_err(|e| conversion(col, e))
}

fn ip_at(r: &Row<'_>, col: usize) -> rusqlite::Result<Ipv4Addr> {
    r.get::<_, String>(col)?
        .parse()
        .map_err(|e| conversion(col, e))
}

fn query<T>(
    conn: &Connection,
    sql: &str,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut st = conn.prepare_cached(sql)?;
    let rows = st.query_map([], f)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Db {
    /// Every network record, tags included.
    pub fn net_state(&self) -> Result<NetState> {
        let c = &self.conn;
        let mut tags: HashMap<String, Vec<Tag>> = HashMap::new();
        for (id, t) in self.all_tags()? {
            tags.entry(id).or_default().push(t);
        }
        let mut tags_of = |id: &str| tags.remove(id).unwrap_or_default();
        let mut s = NetState {
            vpcs: query(
                c,
                "SELECT seq, vpc_id, cidr, is_default, dns_support, dns_hostnames FROM vpcs ORDER BY seq",
                |r| {
                    Ok(Vpc {
                        seq: r.get(0)?,
                        vpc_id: r.get(1)?,
                        cidr: cidr_at(r, 2)?,
                        is_default: r.get(3)?,
                        enable_dns_support: r.get(4)?,
                        enable_dns_hostnames: r.get(5)?,
                        tags: Vec::new(),
                    })
                },
            )?,
            subnets: query(
                c,
                "SELECT seq, subnet_id, vpc_id, cidr, availability_zone, default_for_az, map_public_ip
                 FROM subnets ORDER BY seq",
                |r| {
                    Ok(Subnet {
                        seq: r.get(0)?,
                        subnet_id: r.get(1)?,
                        vpc_id: r.get(2)?,
                        cidr: cidr_at(r, 3)?,
                        availability_zone: r.get(4)?,
                        default_for_az: r.get(5)?,
                        map_public_ip_on_launch: r.get(6)?,
                        tags: Vec::new(),
                    })
                },
            )?,
            groups: query(
                c,
                "SELECT seq, group_id, vpc_id, name, description FROM security_groups ORDER BY seq",
                |r| {
                    Ok(SecurityGroup {
                        seq: r.get(0)?,
                        group_id: r.get(1)?,
                        vpc_id: r.get(2)?,
                        name: r.get(3)?,
                        description: r.get(4)?,
                        tags: Vec::new(),
                    })
                },
            )?,
            rules: query(
                c,
                "SELECT rule_id, group_id, egress, protocol, from_port, to_port, cidr, ref_group_id,
                        description, seq FROM sg_rules ORDER BY seq",
                |r| {
                    let proto: String = r.get(3)?;
                    let protocol = Protocol::parse(&proto)
                        .ok_or_else(|| conversion(3, format!("bad protocol {proto}")))?;
                    let source = match (r.get::<_, Option<String>>(6)?, r.get::<_, Option<String>>(7)?) {
                        (Some(_), None) => RuleSource::Cidr(cidr_at(r, 6)?),
                        (None, Some(g)) => RuleSource::Group(g),
                        _ => return Err(conversion(6, "a rule needs a CIDR or a group")),
                    };
                    Ok(SecurityGroupRule {
                        seq: r.get(9)?,
                        rule_id: r.get(0)?,
                        group_id: r.get(1)?,
                        egress: r.get(2)?,
                        protocol,
                        from_port: r.get(4)?,
                        to_port: r.get(5)?,
                        source,
                        description: r.get(8)?,
                        tags: Vec::new(),
                    })
                },
            )?,
            interfaces: query(
                c,
                "SELECT n.seq, n.eni_id, n.subnet_id, n.vpc_id, s.availability_zone, n.mac,
                        n.private_ip, n.description, n.source_dest_check, n.attachment_id,
                        n.instance_id, n.device_index, n.delete_on_termination, n.attach_time
                 FROM network_interfaces n JOIN subnets s ON s.subnet_id = n.subnet_id
                 ORDER BY n.seq",
                |r| {
                    let attachment = match r.get::<_, Option<String>>(9)? {
                        Some(attachment_id) => Some(EniAttachment {
                            attachment_id,
                            instance_id: r.get(10)?,
                            device_index: r.get(11)?,
                            delete_on_termination: r.get(12)?,
                            attach_time: r.get(13)?,
                        }),
                        None => None,
                    };
                    Ok(NetworkInterface {
                        seq: r.get(0)?,
                        eni_id: r.get(1)?,
                        subnet_id: r.get(2)?,
                        vpc_id: r.get(3)?,
                        availability_zone: r.get(4)?,
                        mac: r.get(5)?,
                        private_ip: ip_at(r, 6)?,
                        description: r.get(7)?,
                        source_dest_check: r.get(8)?,
                        attachment,
                        groups: Vec::new(),
                        tags: Vec::new(),
                    })
                },
            )?,
            gateways: query(
                c,
                "SELECT seq, igw_id, vpc_id FROM internet_gateways ORDER BY seq",
                |r| {
                    Ok(InternetGateway {
                        seq: r.get(0)?,
                        igw_id: r.get(1)?,
                        vpc_id: r.get(2)?,
                        tags: Vec::new(),
                    })
                },
            )?,
            route_tables: query(
                c,
                "SELECT seq, rtb_id, vpc_id FROM route_tables ORDER BY seq",
                |r| {
                    Ok(RouteTable {
                        seq: r.get(0)?,
                        route_table_id: r.get(1)?,
                        vpc_id: r.get(2)?,
                        routes: Vec::new(),
                        associations: Vec::new(),
                        tags: Vec::new(),
                    })
                },
            )?,
            acls: query(c, "SELECT acl_id, vpc_id, rowid FROM network_acls ORDER BY rowid", |r| {
                Ok(NetworkAcl {
                    seq: r.get(2)?,
                    acl_id: r.get(0)?,
                    vpc_id: r.get(1)?,
                    tags: Vec::new(),
                })
            })?,
            addresses: query(
                c,
                "SELECT seq, public_ip, allocation_id, association_id, eni_id FROM public_addresses
                 ORDER BY seq",
                |r| {
                    Ok(PublicAddress {
                        seq: r.get(0)?,
                        public_ip: ip_at(r, 1)?,
                        allocation_id: r.get(2)?,
                        association_id: r.get(3)?,
                        eni_id: r.get(4)?,
                        tags: Vec::new(),
                    })
                },
            )?,
        };
        let members: Vec<(String, String)> = query(
            c,
            "SELECT eni_id, group_id FROM eni_groups ORDER BY eni_id, position",
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        for (eni, group) in members {
            if let Some(e) = s.interfaces.iter_mut().find(|e| e.eni_id == eni) {
                e.groups.push(group);
            }
        }
        let routes: Vec<(String, Route)> = query(
            c,
            "SELECT rtb_id, destination, gateway_id FROM routes ORDER BY rtb_id, rowid",
            |r| {
                let gw: String = r.get(2)?;
                Ok((
                    r.get(0)?,
                    Route {
                        destination: cidr_at(r, 1)?,
                        target: if gw == "local" {
                            RouteTarget::Local
                        } else {
                            RouteTarget::Gateway(gw)
                        },
                    },
                ))
            },
        )?;
        for (rtb, route) in routes {
            if let Some(t) = s.route_tables.iter_mut().find(|t| t.route_table_id == rtb) {
                t.routes.push(route);
            }
        }
        let assocs: Vec<RouteTableAssociation> = query(
            c,
            "SELECT association_id, rtb_id, subnet_id FROM rtb_associations ORDER BY rowid",
            |r| {
                Ok(RouteTableAssociation {
                    association_id: r.get(0)?,
                    route_table_id: r.get(1)?,
                    subnet_id: r.get(2)?,
                })
            },
        )?;
        for a in assocs {
            if let Some(t) = s
                .route_tables
                .iter_mut()
                .find(|t| t.route_table_id == a.route_table_id)
            {
                t.associations.push(a);
            }
        }
        for v in &mut s.vpcs {
            v.tags = tags_of(&v.vpc_id);
        }
        for x in &mut s.subnets {
            x.tags = tags_of(&x.subnet_id);
        }
        for x in &mut s.groups {
            x.tags = tags_of(&x.group_id);
        }
        for x in &mut s.rules {
            x.tags = tags_of(&x.rule_id);
        }
        for x in &mut s.interfaces {
            x.tags = tags_of(&x.eni_id);
        }
        for x in &mut s.gateways {
            x.tags = tags_of(&x.igw_id);
        }
        for x in &mut s.route_tables {
            x.tags = tags_of(&x.route_table_id);
        }
        for x in &mut s.acls {
            x.tags = tags_of(&x.acl_id);
        }
        for x in &mut s.addresses {
            if let Some(a) = &x.allocation_id {
                x.tags = tags_of(a);
            }
        }
        Ok(s)
    }

    /// Makes the default VPC (172.31.0.0/16) with a default subnet in `zone` (172.31.0.0/20),
    /// once per data directory: a default VPC the user deletes is not made again.
    pub fn ensure_default_vpc(&mut self, zone: &str) -> Result<Option<String>> {
        if self.setting("default_vpc")?.is_some() {
            return Ok(None);
        }
        let tx = self.transaction()?;
        let cidr: Ipv4Cidr = "172.31.0.0/16"
            .parse()
            .map_err(|e| DbError::Corrupt(format!("{e}")))?;
        let vpc = create_vpc(&tx, cidr, true)?;
        let subnet = Subnet {
            seq: 0,
            subnet_id: ids::new_id(IdKind::Subnet),
            vpc_id: vpc.vpc_id.clone(),
            cidr: "172.31.0.0/20"
                .parse()
                .map_err(|e| DbError::Corrupt(format!("{e}")))?,
            availability_zone: zone.to_string(),
            default_for_az: true,
            map_public_ip_on_launch: true,
            tags: Vec::new(),
        };
        insert_subnet(&tx, &subnet)?;
        tx.execute(
            "INSERT INTO settings(key, value) VALUES('default_vpc', ?1)",
            [&vpc.vpc_id],
        )?;
        tx.commit()?;
        Ok(Some(vpc.vpc_id))
    }
}
