//! Security group rules changed in place: ModifySecurityGroupRules and
//! UpdateSecurityGroupRuleDescriptionsIngress/Egress.

use vireo_ec2_api::ids::IdKind;
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::netparams::{one_id, opt_id};
use super::params::{allow, dry_run};
use super::security_groups::{ids_or_permissions, permissions, selector};
use crate::service::{DescriptionChange, RuleUpdate, Service};

/// The fields of a `SecurityGroupRule.N.SecurityGroupRule` (EC2's SecurityGroupRuleRequest).
const RULE_FIELDS: [&str; 8] = [
    "IpProtocol",
    "FromPort",
    "ToPort",
    "CidrIpv4",
    "CidrIpv6",
    "PrefixListId",
    "ReferencedGroupId",
    "Description",
];

/// One `SecurityGroupRule.N` member: its rule id and what the rule is to become.
fn rule_update(m: &Params) -> Result<RuleUpdate, Ec2Error> {
    for (name, _) in m.iter() {
        let known = name == "SecurityGroupRuleId"
            || name
                .strip_prefix("SecurityGroupRule.")
                .is_some_and(|f| RULE_FIELDS.contains(&f));
        if !known {
            return Err(Ec2Error::new(
                "UnknownParameter",
                format!("The parameter {} is not recognized", m.full_name(name)),
                400,
            ));
        }
    }
    for unsupported in ["CidrIpv6", "PrefixListId"] {
        let name = format!("SecurityGroupRule.{unsupported}");
        if m.get(&name).is_some() {
            return Err(Ec2Error::unsupported_operation(format!(
                "{}: vireod's groups have IPv4 CIDR and group rules only",
                m.full_name(&name)
            )));
        }
    }
    Ok(RuleUpdate {
        rule_id: one_id(m, "SecurityGroupRuleId", IdKind::SecurityGroupRule)?,
        protocol: m.required("SecurityGroupRule.IpProtocol")?.to_string(),
        from_port: m.int("SecurityGroupRule.FromPort", -1..=65535)?,
        to_port: m.int("SecurityGroupRule.ToPort", -1..=65535)?,
        cidr: m.get("SecurityGroupRule.CidrIpv4").map(str::to_string),
        referenced_group: opt_id(
            m,
            "SecurityGroupRule.ReferencedGroupId",
            IdKind::SecurityGroup,
        )?,
        description: m
            .get("SecurityGroupRule.Description")
            .unwrap_or("")
            .to_string(),
    })
}

/// ModifySecurityGroupRules.
pub(super) async fn modify_rules(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    allow(p, &["GroupId", "SecurityGroupRule", "DryRun"])?;
    dry_run(p)?;
    let group = one_id(p, "GroupId", IdKind::SecurityGroup)?;
    let updates = p
        .structs("SecurityGroupRule")?
        .iter()
        .map(rule_update)
        .collect::<Result<Vec<_>, _>>()?;
    if updates.is_empty() {
        return Err(Ec2Error::missing_parameter("SecurityGroupRule"));
    }
    svc.modify_security_group_rules(&group, &updates).await?;
    r.bool_elem("return", true);
    Ok(())
}

/// UpdateSecurityGroupRuleDescriptionsIngress / Egress.
pub(super) fn update_descriptions(
    svc: &Service,
    p: &Params,
    r: &mut Response,
    egress: bool,
) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "GroupId",
            "GroupName",
            "IpPermissions",
            "SecurityGroupRuleDescription",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let sel = selector(p)?;
    let mut pairs = Vec::new();
    for m in p.structs("SecurityGroupRuleDescription")? {
        pairs.push((
            one_id(&m, "SecurityGroupRuleId", IdKind::SecurityGroupRule)?,
            m.get("Description").unwrap_or("").to_string(),
        ));
    }
    let change = ids_or_permissions(
        pairs,
        permissions(p)?,
        "SecurityGroupRuleDescription",
        DescriptionChange::RuleIds,
        DescriptionChange::Permissions,
    )?;
    svc.update_rule_descriptions(&sel, egress, &change)?;
    r.bool_elem("return", true);
    Ok(())
}
