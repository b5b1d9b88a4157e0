//! Security groups: Create/Delete/DescribeSecurityGroups, Authorize/Revoke
//! SecurityGroupIngress/Egress and DescribeSecurityGroupRules.

use vireo_ec2_api::ids::{self, IdKind};
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::netparams::{id_list, opt_id, paged_describe, tags_xml};
use super::params::{allow, dry_run, tag_specifications};
use crate::netmodel::{Protocol, RuleSource, SecurityGroup, SecurityGroupRule};
use crate::service::{GroupRef, GroupSelector, PermissionSpec, RuleChange, Service};

/// GroupId, or GroupName (in the default VPC).
pub(super) fn selector(p: &Params) -> Result<GroupSelector, Ec2Error> {
    match (
        opt_id(p, "GroupId", IdKind::SecurityGroup)?,
        p.get("GroupName"),
    ) {
        (Some(id), None) => Ok(GroupSelector::Id(id)),
        (None, Some(name)) if !name.is_empty() => Ok(GroupSelector::Name(name.to_string())),
        (Some(_), Some(_)) => Err(Ec2Error::invalid_parameter_combination(
            "GroupId and GroupName cannot be given together",
        )),
        _ => Err(Ec2Error::missing_parameter("GroupId")),
    }
}

fn port(p: &Params, name: &str) -> Result<Option<i64>, Ec2Error> {
    p.int(name, -1..=65535)
}

/// The IpPermissions.N members, or the older top-level form (IpProtocol, FromPort, ToPort,
/// CidrIp, SourceSecurityGroupName).
pub(super) fn permissions(p: &Params) -> Result<Vec<PermissionSpec>, Ec2Error> {
    let mut out = Vec::new();
    for m in p.structs("IpPermissions")? {
        for unsupported in ["Ipv6Ranges", "PrefixListIds"] {
            if !m.structs(unsupported)?.is_empty() {
                return Err(Ec2Error::unsupported_operation(format!(
                    "{}: vireod's groups have IPv4 CIDR and group rules only",
                    m.full_name(unsupported)
                )));
            }
        }
        let mut spec = PermissionSpec {
            protocol: m.required("IpProtocol")?.to_string(),
            from_port: port(&m, "FromPort")?,
            to_port: port(&m, "ToPort")?,
            ..Default::default()
        };
        for range in m.structs("IpRanges")? {
            spec.cidrs.push((
                range.required("CidrIp")?.to_string(),
                range.get("Description").unwrap_or("").to_string(),
            ));
        }
        for g in m.structs("Groups")? {
            spec.groups.push(GroupRef {
                group_id: opt_id(&g, "GroupId", IdKind::SecurityGroup)?,
                group_name: g.get("GroupName").map(str::to_string),
                description: g.get("Description").unwrap_or("").to_string(),
            });
        }
        out.push(spec);
    }
    let legacy = ["IpProtocol", "CidrIp", "SourceSecurityGroupName"]
        .iter()
        .any(|n| p.get(n).is_some());
    if legacy {
        if !out.is_empty() {
            return Err(Ec2Error::invalid_parameter_combination(
                "IpPermissions cannot be combined with IpProtocol, CidrIp or SourceSecurityGroupName",
            ));
        }
        let mut spec = PermissionSpec {
            protocol: p.get("IpProtocol").unwrap_or("-1").to_string(),
            from_port: port(p, "FromPort")?,
            to_port: port(p, "ToPort")?,
            ..Default::default()
        };
        if let Some(c) = p.get("CidrIp") {
            spec.cidrs.push((c.to_string(), String::new()));
        }
        if let Some(g) = p.get("SourceSecurityGroupName") {
            spec.groups.push(GroupRef {
                group_id: None,
                group_name: Some(g.to_string()),
                description: String::new(),
            });
        }
        out.push(spec);
    }
    Ok(out)
}

/// EC2's IpPermissions view of rules: one item per protocol and port range.
fn permissions_xml(r: &mut Response, name: &str, rules: &[&SecurityGroupRule], owner: &str) {
    let mut keys: Vec<(Protocol, i32, i32)> = Vec::new();
    for x in rules {
        let k = (x.protocol, x.from_port, x.to_port);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    r.list(name, keys, |r, (proto, from, to)| {
        let of_key: Vec<&&SecurityGroupRule> = rules
            .iter()
            .filter(|x| (x.protocol, x.from_port, x.to_port) == (proto, from, to))
            .collect();
        r.elem("ipProtocol", proto);
        if proto != Protocol::All {
            r.elem("fromPort", from).elem("toPort", to);
        }
        r.list(
            "groups",
            of_key.iter().filter_map(|x| match &x.source {
                RuleSource::Group(g) => Some((g, &x.description)),
                RuleSource::Cidr(_) => None,
            }),
            |r, (g, d)| {
                r.elem("userId", owner).elem("groupId", g);
                if !d.is_empty() {
                    r.elem("description", d);
                }
            },
        );
        r.list(
            "ipRanges",
            of_key.iter().filter_map(|x| match &x.source {
                RuleSource::Cidr(c) => Some((c, &x.description)),
                RuleSource::Group(_) => None,
            }),
            |r, (c, d)| {
                r.elem("cidrIp", c);
                if !d.is_empty() {
                    r.elem("description", d);
                }
            },
        );
        r.list("ipv6Ranges", std::iter::empty::<()>(), |_, _| {})
            .list("prefixListIds", std::iter::empty::<()>(), |_, _| {});
    });
}

fn group_xml(r: &mut Response, svc: &Service, g: &SecurityGroup, rules: &[SecurityGroupRule]) {
    let owner = svc.owner_id();
    let of = |egress: bool| -> Vec<&SecurityGroupRule> {
        rules
            .iter()
            .filter(|x| x.group_id == g.group_id && x.egress == egress)
            .collect()
    };
    r.elem("ownerId", owner)
        .elem("groupId", &g.group_id)
        .elem("groupName", &g.name)
        .elem("groupDescription", &g.description)
        .elem("vpcId", &g.vpc_id)
        .elem(
            "securityGroupArn",
            format!(
                "arn:aws:ec2:{}:{owner}:security-group/{}",
                svc.config().region,
                g.group_id
            ),
        );
    permissions_xml(r, "ipPermissions", &of(false), owner);
    permissions_xml(r, "ipPermissionsEgress", &of(true), owner);
    tags_xml(r, &g.tags);
}

fn rule_xml(r: &mut Response, svc: &Service, x: &SecurityGroupRule) {
    let owner = svc.owner_id();
    r.elem("securityGroupRuleId", &x.rule_id)
        .elem("groupId", &x.group_id)
        .elem("groupOwnerId", owner)
        .bool_elem("isEgress", x.egress)
        .elem("ipProtocol", x.protocol)
        .elem("fromPort", x.from_port)
        .elem("toPort", x.to_port);
    match &x.source {
        RuleSource::Cidr(c) => {
            r.elem("cidrIpv4", c);
        }
        RuleSource::Group(g) => {
            r.nest("referencedGroupInfo", |r| {
                r.elem("groupId", g).elem("userId", owner);
            });
        }
    }
    r.elem("description", &x.description).elem(
        "securityGroupRuleArn",
        format!(
            "arn:aws:ec2:{}:{owner}:security-group-rule/{}",
            svc.config().region,
            x.rule_id
        ),
    );
    tags_xml(r, &x.tags);
}

pub(super) fn create(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "GroupName",
            "GroupDescription",
            "VpcId",
            "TagSpecification",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let name = p.required("GroupName")?;
    let description = p.required("GroupDescription")?;
    let vpc = opt_id(p, "VpcId", IdKind::Vpc)?;
    let tags = tag_specifications(p, "security-group")?;
    let g = svc.create_security_group(name, description, vpc.as_deref(), &tags)?;
    r.elem("groupId", &g.group_id);
    tags_xml(r, &g.tags);
    Ok(())
}

pub(super) async fn delete(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["GroupId", "GroupName", "DryRun"])?;
    dry_run(p)?;
    svc.delete_security_group(&selector(p)?).await?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let q = paged_describe(p, "GroupId", IdKind::SecurityGroup, &["GroupName"])?;
    let names: Vec<String> = p
        .list("GroupName")?
        .into_iter()
        .map(str::to_string)
        .collect();
    let (page, rules, next) = svc.describe_security_groups(&q, &names)?;
    r.list("securityGroupInfo", &page, |r, g| {
        group_xml(r, svc, g, &rules)
    });
    r.opt_elem("nextToken", next);
    Ok(())
}

/// The parameters Authorize and Revoke both take: the group, its permissions (as IpPermissions
/// or in the older top-level form) and DryRun.
const RULE_CHANGE_PARAMS: [&str; 10] = [
    "GroupId",
    "GroupName",
    "IpPermissions",
    "IpProtocol",
    "FromPort",
    "ToPort",
    "CidrIp",
    "SourceSecurityGroupName",
    "SourceSecurityGroupOwnerId",
    "DryRun",
];

/// The group an Authorize or Revoke call changes, once its parameters are known (the
/// RULE_CHANGE_PARAMS and the call's own `extra` one) and DryRun is answered.
fn rule_change_group(p: &Params, extra: &str) -> Result<GroupSelector, Ec2Error> {
    allow(p, &[&RULE_CHANGE_PARAMS[..], &[extra]].concat())?;
    dry_run(p)?;
    selector(p)
}

/// Which rules a Revoke or UpdateSecurityGroupRuleDescriptions call changes: those named by id
/// (parameter `id_param`, made into `C` by `by_id`) or those that match `perms` (by
/// `by_permissions`), exactly one of the two.
pub(super) fn ids_or_permissions<T, C>(
    ids: Vec<T>,
    perms: Vec<PermissionSpec>,
    id_param: &str,
    by_id: impl FnOnce(Vec<T>) -> C,
    by_permissions: impl FnOnce(Vec<PermissionSpec>) -> C,
) -> Result<C, Ec2Error> {
    match (ids.is_empty(), perms.is_empty()) {
        (false, true) => Ok(by_id(ids)),
        (true, false) => Ok(by_permissions(perms)),
        (true, true) => Err(Ec2Error::missing_parameter("IpPermissions")),
        (false, false) => Err(Ec2Error::invalid_parameter_combination(format!(
            "{id_param} cannot be combined with IpPermissions"
        ))),
    }
}

/// AuthorizeSecurityGroupIngress / AuthorizeSecurityGroupEgress: answers once the rules are in
/// force.
pub(super) async fn authorize(
    svc: &Service,
    p: &Params,
    r: &mut Response,
    egress: bool,
) -> Result<(), Ec2Error> {
    let sel = rule_change_group(p, "TagSpecification")?;
    let perms = permissions(p)?;
    if perms.is_empty() {
        return Err(Ec2Error::missing_parameter("IpPermissions"));
    }
    let tags = tag_specifications(p, "security-group-rule")?;
    let rules = svc.authorize(&sel, egress, &perms, &tags).await?;
    r.bool_elem("return", true);
    r.list("securityGroupRuleSet", &rules, |r, x| rule_xml(r, svc, x));
    Ok(())
}

/// RevokeSecurityGroupIngress / RevokeSecurityGroupEgress: answers once the revoke is in force.
pub(super) async fn revoke(
    svc: &Service,
    p: &Params,
    r: &mut Response,
    egress: bool,
) -> Result<(), Ec2Error> {
    let sel = rule_change_group(p, "SecurityGroupRuleId")?;
    let rule_ids = id_list(p, "SecurityGroupRuleId", IdKind::SecurityGroupRule)?;
    let change = ids_or_permissions(
        rule_ids,
        permissions(p)?,
        "SecurityGroupRuleId",
        RuleChange::RuleIds,
        RuleChange::Permissions,
    )?;
    let gone = svc.revoke(&sel, egress, &change).await?;
    r.bool_elem("return", true);
    r.list("revokedSecurityGroupRuleSet", &gone, |r, x| {
        r.elem("securityGroupRuleId", &x.rule_id)
            .elem("groupId", &x.group_id)
            .bool_elem("isEgress", x.egress)
            .elem("ipProtocol", x.protocol)
            .elem("fromPort", x.from_port)
            .elem("toPort", x.to_port);
        match &x.source {
            RuleSource::Cidr(c) => r.elem("cidrIpv4", c),
            RuleSource::Group(g) => r.elem("referencedGroupId", g),
        };
    });
    Ok(())
}

pub(super) fn describe_rules(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let q = paged_describe(p, "SecurityGroupRuleId", IdKind::SecurityGroupRule, &[])?;
    for f in &q.filters {
        if f.name == "group-id" {
            for v in &f.values {
                if !v.contains(['*', '?']) {
                    ids::validate(IdKind::SecurityGroup, v)?;
                }
            }
        }
    }
    let (page, next) = svc.describe_security_group_rules(&q)?;
    r.list("securityGroupRuleSet", &page, |r, x| rule_xml(r, svc, x));
    r.opt_elem("nextToken", next);
    Ok(())
}
