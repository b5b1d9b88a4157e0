//! Security groups: Create/Delete/DescribeSecurityGroups, Authorize/RevokeSecurityGroupIngress
//! and Egress (the IpPermissions form and the SecurityGroupRuleId form), and
//! DescribeSecurityGroupRules. Every CIDR or referenced group of a permission is one rule with
//! its own id, as in EC2; a new group starts with the allow-all egress rule.

use vireo_ec2_api::ids::{self, IdKind};

use super::netquery::{describe, group_not_found, vpc_not_found, DescribeQuery};
use super::Service;
use crate::cidr::Ipv4Cidr;
use crate::db;
use crate::db::network::{self as netdb, NetState};
use crate::error::{ApiError, ApiResult};
use crate::model::Tag;
use crate::netmodel::{Protocol, RuleSource, SecurityGroup, SecurityGroupRule};

/// One IpPermissions member as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct PermissionSpec {
    pub protocol: String,
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    /// (CIDR, description)
    pub cidrs: Vec<(String, String)>,
    /// (group id or, in the default VPC, group name; description)
    pub groups: Vec<GroupRef>,
}

/// A referenced group of a permission.
#[derive(Debug, Clone, Default)]
pub struct GroupRef {
    pub group_id: Option<String>,
    pub group_name: Option<String>,
    pub description: String,
}

/// Which group an action is on: by id, or by name in the default VPC.
#[derive(Debug, Clone)]
pub enum GroupSelector {
    Id(String),
    Name(String),
}

/// What Authorize/Revoke act on.
#[derive(Debug, Clone)]
pub enum RuleChange {
    Permissions(Vec<PermissionSpec>),
    /// SecurityGroupRuleId.N (revoke only).
    RuleIds(Vec<String>),
}

fn perm_error(msg: String) -> ApiError {
    ApiError::invalid_value(msg)
}

/// Checks a permission's protocol and ports the way EC2 does and returns (protocol, from, to).
pub fn normalize_ports(spec: &PermissionSpec) -> ApiResult<(Protocol, i32, i32)> {
    let proto = Protocol::parse(&spec.protocol).ok_or_else(|| {
        perm_error(format!(
            "Invalid value '{}' for IP protocol. Unknown protocol.",
            spec.protocol
        ))
    })?;
    let (from, to) = match proto {
        Protocol::Tcp | Protocol::Udp => {
            let (Some(f), Some(t)) = (spec.from_port, spec.to_port) else {
                return Err(perm_error(
                    "Invalid value 'Must specify both from and to ports with TCP/UDP.' for portRange."
                        .into(),
                ));
            };
            if !(0..=65535).contains(&f) || !(0..=65535).contains(&t) || f > t {
                return Err(perm_error(format!(
                    "Invalid TCP/UDP port range {f}-{t}: ports are 0 to 65535, from not above to"
                )));
            }
            (f, t)
        }
        Protocol::Icmp => {
            let f = spec.from_port.unwrap_or(-1);
            let t = spec.to_port.unwrap_or(-1);
            if !(-1..=255).contains(&f) || !(-1..=255).contains(&t) {
                return Err(perm_error(format!(
                    "Invalid ICMP type {f} or code {t}: each is -1 (any) or 0 to 255"
                )));
            }
            (f, t)
        }
        // EC2 ignores ports for every other protocol.
        Protocol::All | Protocol::Number(_) => (-1, -1),
    };
    Ok((proto, from as i32, to as i32))
}

/// A rule as EC2 describes it in a Duplicate error.
pub(super) fn describe_rule(r: &SecurityGroupRule) -> String {
    let peer = match &r.source {
        RuleSource::Cidr(c) => c.to_string(),
        RuleSource::Group(g) => g.clone(),
    };
    format!(
        "peer: {peer}, {}, from port: {}, to port: {}, ALLOW",
        r.protocol.to_string().to_uppercase(),
        r.from_port,
        r.to_port
    )
}

impl Service {
    /// The group a selector names (a name is looked up in the default VPC).
    pub(super) fn select_group<'a>(
        &self,
        net: &'a NetState,
        sel: &GroupSelector,
    ) -> ApiResult<&'a SecurityGroup> {
        match sel {
            GroupSelector::Id(id) => net.group(id).ok_or_else(|| group_not_found(id)),
            GroupSelector::Name(name) => {
                let default_vpc = net.vpcs.iter().find(|v| v.is_default);
                default_vpc
                    .and_then(|v| {
                        net.groups
                            .iter()
                            .find(|g| g.vpc_id == v.vpc_id && &g.name == name)
                    })
                    .ok_or_else(|| {
                        ApiError::new(
                            "InvalidGroup.NotFound",
                            format!(
                                "The security group '{name}' does not exist in the default VPC"
                            ),
                        )
                    })
            }
        }
    }

    pub fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: Option<&str>,
        tags: &[Tag],
    ) -> ApiResult<SecurityGroup> {
        for (what, v) in [("GroupName", name), ("GroupDescription", description)] {
            if v.chars().count() > 255 {
                return Err(ApiError::invalid_value(format!(
                    "{what} is longer than 255 characters"
                )));
            }
        }
        if name.starts_with("sg-") {
            return Err(ApiError::invalid_value(format!(
                "Group names may not be in the format sg-*: '{name}'"
            )));
        }
        if name.eq_ignore_ascii_case("default") {
            return Err(ApiError::new(
                "InvalidGroup.Reserved",
                "The security group 'default' is reserved",
            ));
        }
        let group_id = ids::new_id(IdKind::SecurityGroup);
        let vpc = {
            let mut db = self.db();
            let net = db.net_state()?;
            let vpc = match vpc_id {
                Some(v) => net.vpc(v).ok_or_else(|| vpc_not_found(v))?,
                None => net.vpcs.iter().find(|v| v.is_default).ok_or_else(|| {
                    ApiError::new("VPCIdNotSpecified", "No default VPC for this user")
                })?,
            }
            .vpc_id
            .clone();
            if net.groups.iter().any(|g| g.vpc_id == vpc && g.name == name) {
                return Err(ApiError::new(
                    "InvalidGroup.Duplicate",
                    format!("The security group '{name}' already exists for VPC '{vpc}'"),
                ));
            }
            let tx = db.transaction()?;
            netdb::insert_group(&tx, &group_id, &vpc, name, description)?;
            netdb::insert_rule(&tx, &netdb::allow_all_egress(&group_id))?;
            netdb::put_tags(&tx, &group_id, tags)?;
            tx.commit().map_err(db::DbError::from)?;
            vpc
        };
        self.network_changed(&[&vpc]);
        self.net()?
            .group(&group_id)
            .cloned()
            .ok_or_else(|| group_not_found(&group_id))
    }

    /// DeleteSecurityGroup; answers once the data plane no longer has the group.
    pub async fn delete_security_group(&self, sel: &GroupSelector) -> ApiResult<()> {
        let vpc = {
            let mut db = self.db();
            let net = db.net_state()?;
            let g = self.select_group(&net, sel)?.clone();
            if g.name == "default" {
                return Err(ApiError::new(
                    "CannotDelete",
                    format!(
                        "the specified group: \"{}\" name: \"default\" cannot be deleted by a user",
                        g.group_id
                    ),
                ));
            }
            let used = net
                .interfaces
                .iter()
                .any(|e| e.groups.contains(&g.group_id));
            let referenced = net.rules.iter().any(|r| {
                r.group_id != g.group_id && r.source == RuleSource::Group(g.group_id.clone())
            });
            if used || referenced {
                return Err(ApiError::new(
                    "DependencyViolation",
                    format!("resource {} has a dependent object", g.group_id),
                ));
            }
            let tx = db.transaction()?;
            netdb::delete_group(&tx, &g.group_id)?;
            tx.commit().map_err(db::DbError::from)?;
            g.vpc_id
        };
        self.network_in_force(&[vpc]).await
    }

    /// DescribeSecurityGroups: the page of groups, with all their rules.
    pub fn describe_security_groups(
        &self,
        q: &DescribeQuery,
        names: &[String],
    ) -> ApiResult<(Vec<SecurityGroup>, Vec<SecurityGroupRule>, Option<String>)> {
        let net = self.net()?;
        let mut q = q.clone();
        for n in names {
            let g = self.select_group(&net, &GroupSelector::Name(n.clone()))?;
            q.ids.push(g.group_id.clone());
        }
        let owner = self.owner_id().to_string();
        let rule_values = |g: &SecurityGroup, egress: bool, field: &str| -> Vec<String> {
            net.rules
                .iter()
                .filter(|r| r.group_id == g.group_id && r.egress == egress)
                .filter_map(|r| match (field, &r.source) {
                    ("protocol", _) => Some(r.protocol.to_string()),
                    ("from-port", _) => Some(r.from_port.to_string()),
                    ("to-port", _) => Some(r.to_port.to_string()),
                    ("cidr", RuleSource::Cidr(c)) => Some(c.to_string()),
                    ("group-id", RuleSource::Group(id)) => Some(id.clone()),
                    _ => None,
                })
                .collect()
        };
        let (page, next) = describe(
            net.groups.clone(),
            &q,
            &[
                "group-id",
                "group-name",
                "vpc-id",
                "description",
                "owner-id",
                "ip-permission.protocol",
                "ip-permission.from-port",
                "ip-permission.to-port",
                "ip-permission.cidr",
                "ip-permission.group-id",
                "egress.ip-permission.protocol",
                "egress.ip-permission.from-port",
                "egress.ip-permission.to-port",
                "egress.ip-permission.cidr",
                "egress.ip-permission.group-id",
            ],
            |g, name| match name {
                "group-id" => vec![g.group_id.clone()],
                "group-name" => vec![g.name.clone()],
                "vpc-id" => vec![g.vpc_id.clone()],
                "description" => vec![g.description.clone()],
                "owner-id" => vec![owner.clone()],
                n => match n.strip_prefix("egress.ip-permission.") {
                    Some(f) => rule_values(g, true, f),
                    None => rule_values(g, false, n.trim_start_matches("ip-permission.")),
                },
            },
            group_not_found,
        )?;
        let rules = net
            .rules
            .iter()
            .filter(|r| page.iter().any(|g| g.group_id == r.group_id))
            .cloned()
            .collect();
        Ok((page, rules, next))
    }

    /// DescribeSecurityGroupRules.
    pub fn describe_security_group_rules(
        &self,
        q: &DescribeQuery,
    ) -> ApiResult<(Vec<SecurityGroupRule>, Option<String>)> {
        describe(
            self.net()?.rules,
            q,
            &["group-id", "security-group-rule-id"],
            |r, name| match name {
                "group-id" => vec![r.group_id.clone()],
                _ => vec![r.rule_id.clone()],
            },
            |id| {
                ApiError::new(
                    "InvalidSecurityGroupRuleId.NotFound",
                    format!("The security group rule ID '{id}' does not exist"),
                )
            },
        )
    }

    /// The rules a list of permissions stands for, checked (protocols, ports, CIDRs, groups).
    pub(super) fn rules_of(
        &self,
        net: &NetState,
        group: &SecurityGroup,
        egress: bool,
        perms: &[PermissionSpec],
        tags: &[Tag],
    ) -> ApiResult<Vec<SecurityGroupRule>> {
        let mut rules = Vec::new();
        for p in perms {
            let (protocol, from_port, to_port) = normalize_ports(p)?;
            let mut sources = Vec::new();
            for (cidr, desc) in &p.cidrs {
                let c: Ipv4Cidr = cidr.parse().map_err(|_| {
                    ApiError::invalid_value(format!("CIDR block {cidr} is malformed"))
                })?;
                sources.push((RuleSource::Cidr(c), desc.clone()));
            }
            for g in &p.groups {
                let peer = match (&g.group_id, &g.group_name) {
                    (Some(id), _) => net.group(id).ok_or_else(|| group_not_found(id))?,
                    (None, Some(name)) => net
                        .groups
                        .iter()
                        .find(|x| x.vpc_id == group.vpc_id && &x.name == name)
                        .ok_or_else(|| group_not_found(name))?,
                    (None, None) => {
                        return Err(ApiError::missing("IpPermissions.N.Groups.M.GroupId"))
                    }
                };
                if peer.vpc_id != group.vpc_id {
                    return Err(ApiError::invalid_value(format!(
                        "You have specified two resources that belong to different networks: {} is in {}, {} in {}",
                        group.group_id, group.vpc_id, peer.group_id, peer.vpc_id
                    )));
                }
                sources.push((
                    RuleSource::Group(peer.group_id.clone()),
                    g.description.clone(),
                ));
            }
            if sources.is_empty() {
                return Err(ApiError::missing(
                    "IpPermissions.N.IpRanges or IpPermissions.N.Groups",
                ));
            }
            for (source, description) in sources {
                rules.push(SecurityGroupRule {
                    seq: 0,
                    rule_id: ids::new_id(IdKind::SecurityGroupRule),
                    group_id: group.group_id.clone(),
                    egress,
                    protocol,
                    from_port,
                    to_port,
                    source,
                    description,
                    tags: tags.to_vec(),
                });
            }
        }
        Ok(rules)
    }

    /// Authorize{Ingress,Egress}: adds the rules, all or none; returns them with their ids once
    /// they are in force.
    pub async fn authorize(
        &self,
        sel: &GroupSelector,
        egress: bool,
        perms: &[PermissionSpec],
        tags: &[Tag],
    ) -> ApiResult<Vec<SecurityGroupRule>> {
        let (rules, vpc) = {
            let mut db = self.db();
            let net = db.net_state()?;
            let group = self.select_group(&net, sel)?;
            let rules = self.rules_of(&net, group, egress, perms, tags)?;
            for (n, r) in rules.iter().enumerate() {
                let dup = net
                    .rules
                    .iter()
                    .chain(&rules[..n])
                    .find(|x| x.same_permission(r));
                if dup.is_some() {
                    return Err(ApiError::new(
                        "InvalidPermission.Duplicate",
                        format!("the specified rule \"{}\" already exists", describe_rule(r)),
                    ));
                }
            }
            let tx = db.transaction()?;
            for r in &rules {
                netdb::insert_rule(&tx, r)?;
            }
            tx.commit().map_err(db::DbError::from)?;
            (rules, group.vpc_id.clone())
        };
        self.network_in_force(&[vpc]).await?;
        let stored = self.net()?.rules;
        Ok(rules
            .iter()
            .filter_map(|r| stored.iter().find(|s| s.rule_id == r.rule_id).cloned())
            .collect())
    }

    /// Revoke{Ingress,Egress}: removes the rules, all or none; returns those removed once their
    /// removal is in force (new connections they allowed are refused).
    pub async fn revoke(
        &self,
        sel: &GroupSelector,
        egress: bool,
        change: &RuleChange,
    ) -> ApiResult<Vec<SecurityGroupRule>> {
        let (gone, vpc) = {
            let mut db = self.db();
            let net = db.net_state()?;
            let group = self.select_group(&net, sel)?;
            let mut gone: Vec<SecurityGroupRule> = Vec::new();
            match change {
                RuleChange::RuleIds(ids) => {
                    for id in ids {
                        let r = net
                            .rules
                            .iter()
                            .find(|r| {
                                &r.rule_id == id
                                    && r.group_id == group.group_id
                                    && r.egress == egress
                            })
                            .ok_or_else(|| {
                                ApiError::new(
                                    "InvalidSecurityGroupRuleId.NotFound",
                                    format!(
                                        "The security group rule ID '{id}' does not exist in {} ({})",
                                        group.group_id,
                                        if egress { "egress" } else { "ingress" }
                                    ),
                                )
                            })?;
                        gone.push(r.clone());
                    }
                }
                RuleChange::Permissions(perms) => {
                    for wanted in self.rules_of(&net, group, egress, perms, &[])? {
                        let r = net.rules.iter().find(|r| r.same_permission(&wanted)).ok_or_else(
                            || {
                                ApiError::new(
                                    "InvalidPermission.NotFound",
                                    format!(
                                        "The specified rule does not exist in this security group: \"{}\"",
                                        describe_rule(&wanted)
                                    ),
                                )
                            },
                        )?;
                        gone.push(r.clone());
                    }
                }
            }
            let tx = db.transaction()?;
            for r in &gone {
                netdb::delete_rule(&tx, &r.rule_id)?;
            }
            tx.commit().map_err(db::DbError::from)?;
            (gone, group.vpc_id.clone())
        };
        self.network_in_force(&[vpc]).await?;
        Ok(gone)
    }

    /// Checks the groups an interface is to have: they exist and are all of `vpc_id`.
    pub(super) fn check_groups(
        &self,
        net: &NetState,
        groups: &[String],
        vpc_id: &str,
    ) -> ApiResult<()> {
        for id in groups {
            let g = net.group(id).ok_or_else(|| group_not_found(id))?;
            if g.vpc_id != vpc_id {
                return Err(ApiError::invalid_value(format!(
                    "Security group {id} and subnet belong to different networks ({} and {vpc_id})",
                    g.vpc_id
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::service::network::{NetworkPlane, PlaneError, VpcNetwork};
    use crate::service::{Capacity, Config};

    /// A data plane that works in the background, as vireod's does: `apply` only queues the
    /// state; it is in force once `settle` has run (or `settle` fails, if told to).
    #[derive(Default)]
    struct Deferred {
        queued: Mutex<Option<VpcNetwork>>,
        in_force: Mutex<Option<VpcNetwork>>,
        fail: AtomicBool,
    }

    impl NetworkPlane for Deferred {
        fn apply(&self, desired: &VpcNetwork) -> Result<(), PlaneError> {
            *self.queued.lock().unwrap() = Some(desired.clone());
            Ok(())
        }
        fn remove(&self, _vpc_id: &str) -> Result<(), PlaneError> {
            Ok(())
        }
        fn settle(&self, _vpc_id: &str, _bound: std::time::Duration) -> Result<(), PlaneError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(PlaneError {
                    message: "`nft -f -` failed: no".into(),
                    source: None,
                });
            }
            if let Some(d) = self.queued.lock().unwrap().take() {
                *self.in_force.lock().unwrap() = Some(d);
            }
            Ok(())
        }
    }

    fn service(plane: Arc<Deferred>) -> (tempfile::TempDir, Service) {
        let data = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: data.path().to_path_buf(),
            vmm_bin: Default::default(),
            capacity: Capacity {
                vcpus: 0,
                memory_mib: 0,
            },
            shutdown_timeout: std::time::Duration::ZERO,
            region: "vireo-test-1".into(),
            hosts: Vec::new(),
            import_dirs: Vec::new(),
            public_cidr: None,
        };
        crate::db::Db::open(&cfg.db_path())
            .unwrap()
            .set_setting("owner_id", "123456789012")
            .unwrap();
        let svc = Service::open_with_plane(cfg, plane).unwrap();
        (data, svc)
    }

    /// The ingress rules of `group` in the state the plane has in force.
    fn in_force(plane: &Deferred, group: &str) -> Option<Vec<u16>> {
        let d = plane.in_force.lock().unwrap().clone()?;
        let g = d.groups.iter().find(|g| g.group_id == group)?;
        Some(g.ingress.iter().map(|r| r.from_port as u16).collect())
    }

    /// Authorize, revoke and delete answer once the data plane has the change in force; when
    /// the data plane fails, the call says so (the change is saved).
    #[tokio::test]
    async fn group_changes_answer_once_in_force() {
        let plane = Arc::new(Deferred::default());
        let (_dir, svc) = service(plane.clone());
        let g = svc
            .create_security_group("web", "web servers", None, &[])
            .unwrap();
        let sel = GroupSelector::Id(g.group_id.clone());
        let ssh = || PermissionSpec {
            protocol: "tcp".into(),
            from_port: Some(22),
            to_port: Some(22),
            cidrs: vec![("10.0.0.0/8".into(), String::new())],
            ..Default::default()
        };
        svc.authorize(&sel, false, &[ssh()], &[]).await.unwrap();
        assert_eq!(in_force(&plane, &g.group_id), Some(vec![22]));
        svc.revoke(&sel, false, &RuleChange::Permissions(vec![ssh()]))
            .await
            .unwrap();
        assert_eq!(in_force(&plane, &g.group_id), Some(vec![]));
        plane.fail.store(true, Ordering::SeqCst);
        let e = svc.authorize(&sel, false, &[ssh()], &[]).await.unwrap_err();
        assert_eq!(e.code, "InternalError");
        assert!(
            e.message.contains("saved but not in force") && e.message.contains("nft -f -"),
            "{}",
            e.message
        );
        plane.fail.store(false, Ordering::SeqCst);
        svc.revoke(&sel, false, &RuleChange::Permissions(vec![ssh()]))
            .await
            .unwrap();
        svc.delete_security_group(&sel).await.unwrap();
        assert_eq!(in_force(&plane, &g.group_id), None, "the group is gone");
    }
}
