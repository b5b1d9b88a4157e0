//! Changing security group rules in place: ModifySecurityGroupRules (Terraform's
//! aws_vpc_security_group_ingress_rule / _egress_rule update through it, keeping the rule id)
//! and UpdateSecurityGroupRuleDescriptionsIngress/Egress. A rule keeps its id, group,
//! direction, position and tags; every change of a call is checked before any is written, so a
//! refused call changes nothing.

use super::netquery::group_not_found;
use super::security_groups::describe_rule;
use super::{GroupRef, GroupSelector, PermissionSpec, Service};
use crate::db;
use crate::db::network::{self as netdb, NetState};
use crate::error::{ApiError, ApiResult};
use crate::netmodel::{SecurityGroup, SecurityGroupRule};

/// One `SecurityGroupRule.N` of ModifySecurityGroupRules: the rule and what it is to become.
#[derive(Debug, Clone, Default)]
pub struct RuleUpdate {
    pub rule_id: String,
    pub protocol: String,
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    pub cidr: Option<String>,
    pub referenced_group: Option<String>,
    pub description: String,
}

/// What UpdateSecurityGroupRuleDescriptions{Ingress,Egress} name: permissions (their rules'
/// descriptions are the new ones) or (rule id, description) pairs.
#[derive(Debug, Clone)]
pub enum DescriptionChange {
    Permissions(Vec<PermissionSpec>),
    RuleIds(Vec<(String, String)>),
}

fn rule_not_found(id: &str, group: &str) -> ApiError {
    ApiError::new(
        "InvalidSecurityGroupRuleId.NotFound",
        format!("The security group rule ID '{id}' does not exist in {group}"),
    )
}

fn duplicate(r: &SecurityGroupRule) -> ApiError {
    ApiError::new(
        "InvalidPermission.Duplicate",
        format!("the specified rule \"{}\" already exists", describe_rule(r)),
    )
}

/// The rule of `group` (in any direction, or only `egress` when given) with id `id`.
fn rule_of<'a>(
    net: &'a NetState,
    group: &SecurityGroup,
    id: &str,
    egress: Option<bool>,
) -> ApiResult<&'a SecurityGroupRule> {
    net.rules
        .iter()
        .find(|r| {
            r.rule_id == id && r.group_id == group.group_id && egress.is_none_or(|e| r.egress == e)
        })
        .ok_or_else(|| rule_not_found(id, &group.group_id))
}

/// The permission an update describes, with its one source.
fn update_spec(u: &RuleUpdate) -> ApiResult<PermissionSpec> {
    let mut spec = PermissionSpec {
        protocol: u.protocol.clone(),
        from_port: u.from_port,
        to_port: u.to_port,
        ..Default::default()
    };
    match (&u.cidr, &u.referenced_group) {
        (Some(c), None) => spec.cidrs.push((c.clone(), u.description.clone())),
        (None, Some(g)) => spec.groups.push(GroupRef {
            group_id: Some(g.clone()),
            group_name: None,
            description: u.description.clone(),
        }),
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                "InvalidParameterCombination",
                "A rule has one source: CidrIpv4 or ReferencedGroupId, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::missing(
                "SecurityGroupRule.N.SecurityGroupRule.CidrIpv4 or ReferencedGroupId",
            ))
        }
    }
    Ok(spec)
}

impl Service {
    /// The rules `updates` turn `group`'s into, checked: each exists, is named once, and no rule
    /// of the group ends up a duplicate of another.
    fn updated_rules(
        &self,
        net: &NetState,
        group: &SecurityGroup,
        updates: &[RuleUpdate],
    ) -> ApiResult<Vec<SecurityGroupRule>> {
        let mut changed: Vec<SecurityGroupRule> = Vec::new();
        for u in updates {
            let old = rule_of(net, group, &u.rule_id, None)?;
            if changed.iter().any(|c| c.rule_id == u.rule_id) {
                return Err(ApiError::invalid_value(format!(
                    "The security group rule ID '{}' is given more than once",
                    u.rule_id
                )));
            }
            let mut new = self
                .rules_of(net, group, old.egress, &[update_spec(u)?], &old.tags)?
                .pop()
                .ok_or_else(|| ApiError::internal("a rule update made no rule"))?;
            new.rule_id = old.rule_id.clone();
            new.seq = old.seq;
            changed.push(new);
        }
        // The rules as they will be: none may be another's duplicate.
        let after: Vec<&SecurityGroupRule> = net
            .rules
            .iter()
            .map(|r| changed.iter().find(|c| c.rule_id == r.rule_id).unwrap_or(r))
            .collect();
        for c in &changed {
            if after
                .iter()
                .any(|r| r.rule_id != c.rule_id && r.same_permission(c))
            {
                return Err(duplicate(c));
            }
        }
        Ok(changed)
    }

    /// ModifySecurityGroupRules: each named rule of `group_id` becomes what its update says
    /// (protocol, ports, one source, description), all or none; answers once in force.
    pub async fn modify_security_group_rules(
        &self,
        group_id: &str,
        updates: &[RuleUpdate],
    ) -> ApiResult<()> {
        let vpc = {
            let mut db = self.db();
            let net = db.net_state()?;
            let group = net
                .group(group_id)
                .ok_or_else(|| group_not_found(group_id))?;
            let changed = self.updated_rules(&net, group, updates)?;
            let tx = db.transaction()?;
            for c in &changed {
                netdb::update_rule(&tx, c)?;
            }
            tx.commit().map_err(db::DbError::from)?;
            group.vpc_id.clone()
        };
        self.network_in_force(&[vpc]).await
    }

    /// UpdateSecurityGroupRuleDescriptions{Ingress,Egress}: new descriptions for existing rules,
    /// all or none (descriptions do not change what the data plane enforces).
    pub fn update_rule_descriptions(
        &self,
        sel: &GroupSelector,
        egress: bool,
        change: &DescriptionChange,
    ) -> ApiResult<()> {
        let mut db = self.db();
        let net = db.net_state()?;
        let group = self.select_group(&net, sel)?;
        let mut changed: Vec<SecurityGroupRule> = Vec::new();
        match change {
            DescriptionChange::RuleIds(pairs) => {
                for (id, description) in pairs {
                    let mut r = rule_of(&net, group, id, Some(egress))?.clone();
                    r.description = description.clone();
                    changed.push(r);
                }
            }
            DescriptionChange::Permissions(perms) => {
                for wanted in self.rules_of(&net, group, egress, perms, &[])? {
                    let mut r = net
                        .rules
                        .iter()
                        .find(|r| r.same_permission(&wanted))
                        .ok_or_else(|| {
                            ApiError::new(
                                "InvalidPermission.NotFound",
                                format!(
                                    "The specified rule does not exist in this security group: \"{}\"",
                                    describe_rule(&wanted)
                                ),
                            )
                        })?
                        .clone();
                    r.description = wanted.description;
                    changed.push(r);
                }
            }
        }
        let tx = db.transaction()?;
        for c in &changed {
            netdb::update_rule(&tx, c)?;
        }
        tx.commit().map_err(db::DbError::from)?;
        Ok(())
    }
}
