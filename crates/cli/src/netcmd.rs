//! The VPC networking commands: `vpcs`, `vpc create|delete`, `subnets`, `subnet create|delete`
//! and `sg` (list, show with the rules as a table, create, delete, allow, revoke); and `call`,
//! any action with its parameters as given, for what no command covers (internet gateways,
//! routes, Elastic IPs).

use serde::Serialize;

use crate::client::{Client, Params};
use crate::commands::{expect_true, paginate, print_json, print_list, CliError, Result};
use crate::netmodel::{self, Rule, SecurityGroup, Subnet, Vpc};
use crate::output::table;
use crate::xmltree::Element;
use crate::{PermissionArgs, SgCommand, SubnetCommand, VpcCommand};

/// `TagSpecification.1` with a `Name` tag, for a resource type.
fn name_tag(p: &mut Params, resource_type: &str, name: Option<&str>) {
    if let Some(n) = name {
        p.set("TagSpecification.1.ResourceType", resource_type)
            .set("TagSpecification.1.Tag.1.Key", "Name")
            .set("TagSpecification.1.Tag.1.Value", n);
    }
}

/// The id an answer carries at `path`, or a clear failure.
fn answered_id(root: &Element, path: &str, action: &str) -> Result<String> {
    root.text_at(path)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| CliError::Failed(format!("{action} answered without {path}")))
}

/// Prints an id people read on its own line, or `{"<key>": id}` with `--json`.
fn show_id(json: bool, key: &str, id: &str, note: &str) -> Result<()> {
    if json {
        let mut m = std::collections::BTreeMap::new();
        m.insert(key, id);
        print_json(&m)
    } else {
        if note.is_empty() {
            println!("{id}");
        } else {
            println!("{id}  {note}");
        }
        Ok(())
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

// --- VPCs and subnets ---------------------------------------------------------------------------

fn all_subnets(client: &Client, vpc: Option<&str>) -> Result<Vec<Subnet>> {
    let mut p = Params::new();
    if let Some(v) = vpc {
        p.filter("vpc-id", &[v]);
    }
    Ok(paginate(client, "DescribeSubnets", &p)?
        .iter()
        .flat_map(netmodel::subnets)
        .collect())
}

/// A VPC as `vireo vpcs` lists it.
#[derive(Serialize)]
struct VpcRow {
    #[serde(flatten)]
    vpc: Vpc,
    subnets: usize,
}

pub fn vpcs(client: &Client, json: bool) -> Result<()> {
    let vpcs: Vec<Vpc> = paginate(client, "DescribeVpcs", &Params::new())?
        .iter()
        .flat_map(netmodel::vpcs)
        .collect();
    let subnets = all_subnets(client, None)?;
    let rows: Vec<VpcRow> = vpcs
        .into_iter()
        .map(|vpc| VpcRow {
            subnets: subnets.iter().filter(|s| s.vpc_id == vpc.vpc_id).count(),
            vpc,
        })
        .collect();
    let headers = ["VPC", "CIDR", "DEFAULT", "SUBNETS", "NAME"];
    print_list(json, &rows, &headers, |r| {
        vec![
            r.vpc.vpc_id.clone(),
            r.vpc.cidr_block.clone(),
            yes(r.vpc.is_default).into(),
            r.subnets.to_string(),
            r.vpc.name().into(),
        ]
    })
}

pub fn vpc_params(cmd: &VpcCommand) -> (&'static str, Params) {
    let mut p = Params::new();
    match cmd {
        VpcCommand::Create { cidr, name } => {
            p.set("CidrBlock", cidr.clone());
            name_tag(&mut p, "vpc", name.as_deref());
            ("CreateVpc", p)
        }
        VpcCommand::Delete { id } => {
            p.set("VpcId", id.clone());
            ("DeleteVpc", p)
        }
    }
}

pub fn vpc(client: &Client, json: bool, cmd: &VpcCommand) -> Result<()> {
    let (action, p) = vpc_params(cmd);
    let root = client.call(action, &p)?;
    match cmd {
        VpcCommand::Create { .. } => show_id(
            json,
            "vpc_id",
            &answered_id(&root, "vpc/vpcId", action)?,
            "",
        ),
        VpcCommand::Delete { id } => {
            expect_true(&root, action)?;
            show_id(json, "vpc_id", id, "deleted")
        }
    }
}

pub fn subnets(client: &Client, json: bool, vpc: Option<&str>) -> Result<()> {
    let all = all_subnets(client, vpc)?;
    let headers = ["SUBNET", "VPC", "CIDR", "ZONE", "FREE", "PUBLIC", "NAME"];
    print_list(json, &all, &headers, |s| {
        vec![
            s.subnet_id.clone(),
            s.vpc_id.clone(),
            s.cidr_block.clone(),
            s.availability_zone.clone(),
            s.available_ip_address_count
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            yes(s.map_public_ip_on_launch).into(),
            s.name().into(),
        ]
    })
}

pub fn subnet(client: &Client, json: bool, cmd: &SubnetCommand) -> Result<()> {
    match cmd {
        SubnetCommand::Create {
            vpc,
            cidr,
            az,
            public,
            name,
        } => {
            let mut p = Params::new();
            p.set("VpcId", vpc.clone()).set("CidrBlock", cidr.clone());
            if let Some(z) = az {
                p.set("AvailabilityZone", z.clone());
            }
            name_tag(&mut p, "subnet", name.as_deref());
            let root = client.call("CreateSubnet", &p)?;
            let id = answered_id(&root, "subnet/subnetId", "CreateSubnet")?;
            if *public {
                let mut m = Params::new();
                m.set("SubnetId", id.clone())
                    .set("MapPublicIpOnLaunch.Value", "true");
                // All or nothing, as vireod's own calls are: a subnet that could not be made
                // public is removed again.
                let made_public = client
                    .call("ModifySubnetAttribute", &m)
                    .map_err(CliError::from)
                    .and_then(|r| expect_true(&r, "ModifySubnetAttribute"));
                if let Err(e) = made_public {
                    let mut d = Params::new();
                    d.set("SubnetId", id.clone());
                    let _ = client.call("DeleteSubnet", &d);
                    return Err(e);
                }
            }
            show_id(json, "subnet_id", &id, "")
        }
        SubnetCommand::Delete { id } => {
            let mut p = Params::new();
            p.set("SubnetId", id.clone());
            expect_true(&client.call("DeleteSubnet", &p)?, "DeleteSubnet")?;
            show_id(json, "subnet_id", id, "deleted")
        }
    }
}

// --- security groups ----------------------------------------------------------------------------

pub fn groups(client: &Client, json: bool, vpc: Option<&str>) -> Result<()> {
    let mut p = Params::new();
    if let Some(v) = vpc {
        p.filter("vpc-id", &[v]);
    }
    let all: Vec<SecurityGroup> = paginate(client, "DescribeSecurityGroups", &p)?
        .iter()
        .flat_map(netmodel::security_groups)
        .collect();
    let headers = ["GROUP", "VPC", "NAME", "INGRESS", "EGRESS", "DESCRIPTION"];
    print_list(json, &all, &headers, |g| {
        vec![
            g.group_id.clone(),
            g.vpc_id.clone(),
            g.group_name.clone(),
            g.ingress_rules.to_string(),
            g.egress_rules.to_string(),
            g.description.clone(),
        ]
    })
}

/// The rules as a table: ingress first, each direction in the order vireod keeps them.
pub fn rule_table(rules: &[Rule]) -> String {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by_key(|r| r.egress);
    let cells: Vec<Vec<String>> = sorted
        .iter()
        .map(|r| {
            vec![
                if r.egress { "egress" } else { "ingress" }.to_string(),
                r.protocol_text().to_string(),
                r.ports_text(),
                r.peer().to_string(),
                r.rule_id.clone(),
                r.description.clone(),
            ]
        })
        .collect();
    table(
        &[
            "DIRECTION",
            "PROTOCOL",
            "PORTS",
            "SOURCE/DESTINATION",
            "RULE",
            "DESCRIPTION",
        ],
        &cells,
    )
}

/// A group and its rules, as `vireo sg show` prints them with `--json`.
#[derive(Serialize)]
struct GroupDetail {
    #[serde(flatten)]
    group: SecurityGroup,
    rules: Vec<Rule>,
}

fn show_group(client: &Client, json: bool, id: &str) -> Result<()> {
    let mut p = Params::new();
    p.set("GroupId.1", id);
    let group = netmodel::security_groups(&client.call("DescribeSecurityGroups", &p)?)
        .into_iter()
        .next()
        .ok_or_else(|| CliError::Failed(format!("DescribeSecurityGroups did not list {id}")))?;
    let mut p = Params::new();
    p.filter("group-id", &[id]);
    let rules: Vec<Rule> = paginate(client, "DescribeSecurityGroupRules", &p)?
        .iter()
        .flat_map(netmodel::rules)
        .collect();
    if json {
        return print_json(&GroupDetail { group, rules });
    }
    println!("{}  {}", group.group_id, group.group_name);
    println!("  {:<13} {}", "vpc:", group.vpc_id);
    if !group.description.is_empty() {
        println!("  {:<13} {}", "description:", group.description);
    }
    println!();
    print!("{}", rule_table(&rules));
    Ok(())
}

/// `--port 22` or `--port 8000-8080` as (from, to).
fn port_range(s: &str) -> Result<(i64, i64)> {
    let bad = || CliError::Usage(format!("--port {s}: expected PORT or FROM-TO"));
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let from: i64 = a.trim().parse().map_err(|_| bad())?;
    let to: i64 = b.trim().parse().map_err(|_| bad())?;
    Ok((from, to))
}

/// The `IpPermissions.1` of an allow or revoke: protocol, ports (tcp/udp need them; ICMP's
/// `--port` is the type), and the one peer.
pub fn permission_params(group: &str, a: &PermissionArgs) -> Result<Params> {
    let proto = a
        .proto
        .as_deref()
        .ok_or_else(|| CliError::Usage("--proto is required (tcp, udp, icmp or all)".into()))?;
    let proto = match proto {
        "all" => "-1",
        other => other,
    };
    let mut p = Params::new();
    p.set("GroupId", group)
        .set("IpPermissions.1.IpProtocol", proto);
    let ports = match (proto, &a.port) {
        ("tcp" | "udp" | "6" | "17", Some(s)) => Some(port_range(s)?),
        ("tcp" | "udp" | "6" | "17", None) => {
            return Err(CliError::Usage(format!("--proto {proto} needs --port")))
        }
        ("icmp" | "1", Some(s)) => Some((port_range(s)?.0, -1)),
        ("icmp" | "1", None) => Some((-1, -1)),
        (_, Some(_)) => {
            return Err(CliError::Usage(format!(
                "--port applies to tcp, udp and icmp, not --proto {proto}"
            )))
        }
        (_, None) => None,
    };
    if let Some((from, to)) = ports {
        p.set("IpPermissions.1.FromPort", from.to_string())
            .set("IpPermissions.1.ToPort", to.to_string());
    }
    let (kind, field, value) = match (&a.cidr, &a.group) {
        (Some(c), None) => ("IpRanges", "CidrIp", c),
        (None, Some(g)) => ("Groups", "GroupId", g),
        _ => {
            return Err(CliError::Usage(
                "give one of --cidr CIDR or --group SG_ID".into(),
            ))
        }
    };
    p.set(format!("IpPermissions.1.{kind}.1.{field}"), value.clone());
    if let Some(d) = &a.description {
        p.set(format!("IpPermissions.1.{kind}.1.Description"), d.clone());
    }
    Ok(p)
}

/// Whether any of the permission flags was given (a revoke by rule id takes none).
fn any_permission(a: &PermissionArgs) -> bool {
    a.proto.is_some()
        || a.port.is_some()
        || a.cidr.is_some()
        || a.group.is_some()
        || a.description.is_some()
}

pub fn sg(client: &Client, json: bool, cmd: &SgCommand) -> Result<()> {
    match cmd {
        SgCommand::Show { id } => show_group(client, json, id),
        SgCommand::Create {
            name,
            vpc,
            description,
        } => {
            let mut p = Params::new();
            p.set("GroupName", name.clone())
                .set(
                    "GroupDescription",
                    description.clone().unwrap_or_else(|| name.clone()),
                )
                .set("VpcId", vpc.clone());
            let root = client.call("CreateSecurityGroup", &p)?;
            show_id(
                json,
                "group_id",
                &answered_id(&root, "groupId", "CreateSecurityGroup")?,
                "",
            )
        }
        SgCommand::Delete { id } => {
            let mut p = Params::new();
            p.set("GroupId", id.clone());
            expect_true(
                &client.call("DeleteSecurityGroup", &p)?,
                "DeleteSecurityGroup",
            )?;
            show_id(json, "group_id", id, "deleted")
        }
        SgCommand::Allow { id, egress, perm } => {
            let action = if *egress {
                "AuthorizeSecurityGroupEgress"
            } else {
                "AuthorizeSecurityGroupIngress"
            };
            let root = client.call(action, &permission_params(id, perm)?)?;
            expect_true(&root, action)?;
            let rules = netmodel::rules(&root);
            if json {
                return print_json(&rules);
            }
            print!("{}", rule_table(&rules));
            Ok(())
        }
        SgCommand::Revoke {
            id,
            egress,
            rules,
            perm,
        } => {
            let action = if *egress {
                "RevokeSecurityGroupEgress"
            } else {
                "RevokeSecurityGroupIngress"
            };
            let p = match (rules.is_empty(), any_permission(perm)) {
                (false, false) => {
                    let mut p = Params::new();
                    p.set("GroupId", id.clone());
                    p.list("SecurityGroupRuleId", rules);
                    p
                }
                (true, _) => permission_params(id, perm)?,
                (false, true) => {
                    return Err(CliError::Usage(
                        "--rule cannot be combined with --proto, --port, --cidr or --group".into(),
                    ))
                }
            };
            let root = client.call(action, &p)?;
            expect_true(&root, action)?;
            let gone: Vec<String> = root
                .items("revokedSecurityGroupRuleSet")
                .map(|r| r.str("securityGroupRuleId"))
                .collect();
            if json {
                return print_json(&gone);
            }
            for r in &gone {
                println!("{r}  revoked");
            }
            Ok(())
        }
    }
}

// --- Any action --------------------------------------------------------------------------------

/// `vireo call ACTION NAME=VALUE...`: the answer as indented XML, or as JSON with `--json`.
pub fn call(client: &Client, json: bool, action: &str, params: &[(String, String)]) -> Result<()> {
    if action.is_empty() || !action.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(CliError::Usage(format!(
            "'{action}' is not an EC2 action name (letters and digits, e.g. DescribeVpcs)"
        )));
    }
    let mut p = Params::new();
    for (k, v) in params {
        p.set(k.clone(), v.clone());
    }
    let root = client.call(action, &p)?;
    if json {
        return print_json(&to_json(&root));
    }
    let mut out = String::new();
    to_xml(&root, 0, &mut out);
    print!("{out}");
    Ok(())
}

/// An answer as JSON: a leaf is its text, a list (`item` children) an array, else an object.
fn to_json(e: &Element) -> serde_json::Value {
    use serde_json::Value;
    if e.children.is_empty() {
        return Value::String(e.text.trim().to_string());
    }
    if e.children.iter().all(|c| c.name == "item") {
        return Value::Array(e.children.iter().map(to_json).collect());
    }
    Value::Object(
        e.children
            .iter()
            .map(|c| (c.name.clone(), to_json(c)))
            .collect(),
    )
}

/// An answer as XML again, two spaces per level, the text of leaves escaped.
fn to_xml(e: &Element, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    if e.children.is_empty() {
        let text = quick_xml::escape::escape(e.text.trim());
        out.push_str(&format!("{pad}<{0}>{text}</{0}>\n", e.name));
        return;
    }
    out.push_str(&format!("{pad}<{}>\n", e.name));
    for c in &e.children {
        to_xml(c, depth + 1, out);
    }
    out.push_str(&format!("{pad}</{}>\n", e.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(
        proto: &str,
        port: Option<&str>,
        cidr: Option<&str>,
        group: Option<&str>,
    ) -> PermissionArgs {
        PermissionArgs {
            proto: Some(proto.into()),
            port: port.map(str::to_string),
            cidr: cidr.map(str::to_string),
            group: group.map(str::to_string),
            description: None,
        }
    }

    #[test]
    fn any_answer_as_xml_and_json() {
        let root = Element::parse(
            "<AllocateAddressResponse xmlns=\"x\"><publicIp>198.51.100.5</publicIp>\
             <tagSet><item><key>a&amp;b</key></item><item><key>c</key></item></tagSet>\
             </AllocateAddressResponse>",
        )
        .unwrap();
        let mut out = String::new();
        to_xml(&root, 0, &mut out);
        assert_eq!(
            out,
            "<AllocateAddressResponse>\n  <publicIp>198.51.100.5</publicIp>\n  <tagSet>\n    \
             <item>\n      <key>a&amp;b</key>\n    </item>\n    <item>\n      <key>c</key>\n    \
             </item>\n  </tagSet>\n</AllocateAddressResponse>\n"
        );
        assert_eq!(
            to_json(&root),
            serde_json::json!({"publicIp": "198.51.100.5", "tagSet": [{"key": "a&b"}, {"key": "c"}]})
        );
    }

    #[test]
    fn permissions_as_ec2_reads_them() {
        let p = permission_params(
            "sg-1",
            &perm("tcp", Some("22-23"), Some("10.0.0.0/8"), None),
        )
        .unwrap();
        let parsed = vireo_ec2_api::query::Params::parse(
            "POST",
            None,
            "",
            Client::body("AuthorizeSecurityGroupIngress", &p).as_bytes(),
            &Default::default(),
        )
        .unwrap();
        let m = &parsed.structs("IpPermissions").unwrap()[0];
        assert_eq!(m.get("IpProtocol"), Some("tcp"));
        assert_eq!(
            (m.get("FromPort"), m.get("ToPort")),
            (Some("22"), Some("23"))
        );
        assert_eq!(
            m.structs("IpRanges").unwrap()[0].get("CidrIp"),
            Some("10.0.0.0/8")
        );
        let p = permission_params("sg-1", &perm("all", None, None, Some("sg-2"))).unwrap();
        assert_eq!(p.get("IpPermissions.1.IpProtocol"), Some("-1"));
        assert_eq!(p.get("IpPermissions.1.FromPort"), None);
        assert_eq!(p.get("IpPermissions.1.Groups.1.GroupId"), Some("sg-2"));
        let p =
            permission_params("sg-1", &perm("icmp", Some("8"), Some("0.0.0.0/0"), None)).unwrap();
        assert_eq!(
            (
                p.get("IpPermissions.1.FromPort"),
                p.get("IpPermissions.1.ToPort")
            ),
            (Some("8"), Some("-1"))
        );
        for bad in [
            perm("tcp", None, Some("1.0.0.0/8"), None),
            perm("tcp", Some("x"), Some("1.0.0.0/8"), None),
            perm("all", Some("22"), Some("1.0.0.0/8"), None),
            perm("tcp", Some("22"), None, None),
            perm("tcp", Some("22"), Some("1.0.0.0/8"), Some("sg-2")),
        ] {
            assert_eq!(permission_params("sg-1", &bad).unwrap_err().exit_code(), 2);
        }
    }
}
