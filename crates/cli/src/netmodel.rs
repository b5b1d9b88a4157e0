//! The fields the CLI shows of VPC networking, picked out of EC2 response shapes: VPCs, subnets,
//! security groups and their rules (DescribeSecurityGroupRules' one-rule-per-item view).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{opt, tags};
use crate::xmltree::Element;

fn name(tags: &BTreeMap<String, String>) -> &str {
    tags.get("Name").map(String::as_str).unwrap_or("")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vpc {
    pub vpc_id: String,
    pub cidr_block: String,
    pub is_default: bool,
    pub state: String,
    pub tags: BTreeMap<String, String>,
}

impl Vpc {
    pub fn name(&self) -> &str {
        name(&self.tags)
    }
}

/// The VPCs of a DescribeVpcs page, or the one of a CreateVpc (`vpc` at the root).
pub fn vpcs(root: &Element) -> Vec<Vpc> {
    let one = |v: &Element| Vpc {
        vpc_id: v.str("vpcId"),
        cidr_block: v.str("cidrBlock"),
        is_default: v.text_at("isDefault") == Some("true"),
        state: v.str("state"),
        tags: tags(v),
    };
    match root.child("vpc") {
        Some(v) => vec![one(v)],
        None => root.items("vpcSet").map(one).collect(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subnet {
    pub subnet_id: String,
    pub vpc_id: String,
    pub cidr_block: String,
    pub availability_zone: String,
    pub available_ip_address_count: Option<u64>,
    pub default_for_az: bool,
    pub map_public_ip_on_launch: bool,
    pub tags: BTreeMap<String, String>,
}

impl Subnet {
    pub fn name(&self) -> &str {
        name(&self.tags)
    }
}

/// The subnets of a DescribeSubnets page, or the one of a CreateSubnet (`subnet` at the root).
pub fn subnets(root: &Element) -> Vec<Subnet> {
    let one = |s: &Element| Subnet {
        subnet_id: s.str("subnetId"),
        vpc_id: s.str("vpcId"),
        cidr_block: s.str("cidrBlock"),
        availability_zone: s.str("availabilityZone"),
        available_ip_address_count: s
            .text_at("availableIpAddressCount")
            .and_then(|n| n.parse().ok()),
        default_for_az: s.text_at("defaultForAz") == Some("true"),
        map_public_ip_on_launch: s.text_at("mapPublicIpOnLaunch") == Some("true"),
        tags: tags(s),
    };
    match root.child("subnet") {
        Some(s) => vec![one(s)],
        None => root.items("subnetSet").map(one).collect(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityGroup {
    pub group_id: String,
    pub group_name: String,
    pub description: String,
    pub vpc_id: String,
    /// How many rules (one per CIDR or referenced group) each direction has.
    pub ingress_rules: usize,
    pub egress_rules: usize,
    pub tags: BTreeMap<String, String>,
}

/// The rules an `ipPermissions` list stands for: one per CIDR and per referenced group.
fn rule_count(g: &Element, list: &str) -> usize {
    g.items(list)
        .map(|p| p.items("ipRanges").count() + p.items("groups").count())
        .sum()
}

pub fn security_groups(root: &Element) -> Vec<SecurityGroup> {
    root.items("securityGroupInfo")
        .map(|g| SecurityGroup {
            group_id: g.str("groupId"),
            group_name: g.str("groupName"),
            description: g.str("groupDescription"),
            vpc_id: g.str("vpcId"),
            ingress_rules: rule_count(g, "ipPermissions"),
            egress_rules: rule_count(g, "ipPermissionsEgress"),
            tags: tags(g),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub rule_id: String,
    pub group_id: String,
    pub egress: bool,
    /// EC2's spelling: `tcp`, `udp`, `icmp`, `-1` (all) or a number.
    pub protocol: String,
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referenced_group_id: Option<String>,
    pub description: String,
}

impl Rule {
    /// The protocol as people read it (`all` for EC2's `-1`).
    pub fn protocol_text(&self) -> &str {
        if self.protocol == "-1" {
            "all"
        } else {
            &self.protocol
        }
    }

    /// The ports: `22`, `8000-8080`, `all`; for ICMP `type 8` or `type 3 code 4`.
    pub fn ports_text(&self) -> String {
        let (from, to) = (self.from_port.unwrap_or(-1), self.to_port.unwrap_or(-1));
        match self.protocol.as_str() {
            "tcp" | "udp" if from == 0 && to == 65535 => "all".into(),
            "tcp" | "udp" if from == to => from.to_string(),
            "tcp" | "udp" => format!("{from}-{to}"),
            "icmp" if from == -1 => "all".into(),
            "icmp" if to == -1 => format!("type {from}"),
            "icmp" => format!("type {from} code {to}"),
            _ => "all".into(),
        }
    }

    /// Where the traffic comes from (ingress) or goes to (egress): a CIDR or a group.
    pub fn peer(&self) -> &str {
        self.cidr
            .as_deref()
            .or(self.referenced_group_id.as_deref())
            .unwrap_or("")
    }
}

/// The rules of a DescribeSecurityGroupRules page, or those Authorize answered with.
pub fn rules(root: &Element) -> Vec<Rule> {
    root.items("securityGroupRuleSet")
        .map(|r| Rule {
            rule_id: r.str("securityGroupRuleId"),
            group_id: r.str("groupId"),
            egress: r.text_at("isEgress") == Some("true"),
            protocol: r.str("ipProtocol"),
            from_port: r.text_at("fromPort").and_then(|n| n.parse().ok()),
            to_port: r.text_at("toPort").and_then(|n| n.parse().ok()),
            cidr: opt(r, "cidrIpv4"),
            referenced_group_id: opt(r, "referencedGroupInfo/groupId"),
            description: r.str("description"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        Element::parse(xml).unwrap()
    }

    #[test]
    fn vpcs_and_subnets() {
        let root = parse(
            r#"<DescribeVpcsResponse><vpcSet><item><vpcId>vpc-1</vpcId><state>available</state>
            <cidrBlock>10.0.0.0/16</cidrBlock><isDefault>true</isDefault>
            <tagSet><item><key>Name</key><value>main</value></item></tagSet></item></vpcSet>
            </DescribeVpcsResponse>"#,
        );
        let v = vpcs(&root);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (
                v[0].vpc_id.as_str(),
                v[0].cidr_block.as_str(),
                v[0].is_default,
                v[0].name()
            ),
            ("vpc-1", "10.0.0.0/16", true, "main")
        );
        let root = parse(
            r#"<CreateVpcResponse><vpc><vpcId>vpc-2</vpcId><cidrBlock>10.1.0.0/16</cidrBlock>
            <isDefault>false</isDefault></vpc></CreateVpcResponse>"#,
        );
        assert_eq!(vpcs(&root)[0].vpc_id, "vpc-2");
        let root = parse(
            r#"<CreateSubnetResponse><subnet><subnetId>subnet-1</subnetId><vpcId>vpc-2</vpcId>
            <cidrBlock>10.1.1.0/24</cidrBlock><availabilityZone>z-1a</availabilityZone>
            <availableIpAddressCount>251</availableIpAddressCount>
            <mapPublicIpOnLaunch>true</mapPublicIpOnLaunch></subnet></CreateSubnetResponse>"#,
        );
        let s = &subnets(&root)[0];
        assert_eq!(s.available_ip_address_count, Some(251));
        assert!(s.map_public_ip_on_launch && !s.default_for_az);
    }

    #[test]
    fn groups_count_rules_and_rules_read_both_sources() {
        let root = parse(
            r#"<DescribeSecurityGroupsResponse><securityGroupInfo><item><groupId>sg-1</groupId>
            <groupName>web</groupName><groupDescription>d</groupDescription><vpcId>vpc-1</vpcId>
            <ipPermissions><item><ipProtocol>tcp</ipProtocol><fromPort>22</fromPort><toPort>22</toPort>
            <groups><item><groupId>sg-2</groupId></item></groups>
            <ipRanges><item><cidrIp>10.0.0.0/8</cidrIp></item><item><cidrIp>1.0.0.0/8</cidrIp></item></ipRanges>
            </item></ipPermissions>
            <ipPermissionsEgress><item><ipProtocol>-1</ipProtocol><groups/>
            <ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges></item></ipPermissionsEgress>
            </item></securityGroupInfo></DescribeSecurityGroupsResponse>"#,
        );
        let g = &security_groups(&root)[0];
        assert_eq!((g.ingress_rules, g.egress_rules), (3, 1));
        let root = parse(
            r#"<DescribeSecurityGroupRulesResponse><securityGroupRuleSet>
            <item><securityGroupRuleId>sgr-1</securityGroupRuleId><groupId>sg-1</groupId>
            <isEgress>false</isEgress><ipProtocol>tcp</ipProtocol><fromPort>8000</fromPort>
            <toPort>8080</toPort><referencedGroupInfo><groupId>sg-2</groupId></referencedGroupInfo>
            <description>app</description></item>
            <item><securityGroupRuleId>sgr-2</securityGroupRuleId><groupId>sg-1</groupId>
            <isEgress>true</isEgress><ipProtocol>-1</ipProtocol><fromPort>-1</fromPort>
            <toPort>-1</toPort><cidrIpv4>0.0.0.0/0</cidrIpv4><description></description></item>
            <item><securityGroupRuleId>sgr-3</securityGroupRuleId><groupId>sg-1</groupId>
            <isEgress>false</isEgress><ipProtocol>icmp</ipProtocol><fromPort>8</fromPort>
            <toPort>-1</toPort><cidrIpv4>10.0.0.0/8</cidrIpv4></item>
            </securityGroupRuleSet></DescribeSecurityGroupRulesResponse>"#,
        );
        let r = rules(&root);
        assert_eq!(
            (r[0].peer(), r[0].ports_text(), r[0].egress),
            ("sg-2", "8000-8080".to_string(), false)
        );
        assert_eq!(
            (
                r[1].protocol_text(),
                r[1].ports_text(),
                r[1].peer(),
                r[1].egress
            ),
            ("all", "all".to_string(), "0.0.0.0/0", true)
        );
        assert_eq!(r[2].ports_text(), "type 8");
    }
}
