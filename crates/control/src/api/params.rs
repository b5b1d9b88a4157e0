//! The parameter rules the actions share: which parameters an action takes, DryRun, instance and
//! resource ids, tags and tag specifications, and the XML of state changes.

use vireo_ec2_api::ids::{self, IdKind};
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use crate::model::{InstanceState, Tag};
use crate::service::StateChange;

/// Rejects parameters the action does not take (EC2's UnknownParameter), so that a typo is an
/// error rather than silently ignored. `allowed` are top-level names; `Name.…` is allowed under
/// each.
pub(super) fn allow(p: &Params, allowed: &[&str]) -> Result<(), Ec2Error> {
    for (name, _) in p.iter() {
        if matches!(name, "Action" | "Version") {
            continue;
        }
        let top = name.split('.').next().unwrap_or(name);
        if !allowed.contains(&top) {
            return Err(Ec2Error::new(
                "UnknownParameter",
                format!("The parameter {name} is not recognized"),
                400,
            ));
        }
    }
    Ok(())
}

/// DryRun=true: the caller has permission (vireod has no IAM), so EC2's answer is DryRunOperation.
pub(super) fn dry_run(p: &Params) -> Result<(), Ec2Error> {
    if p.bool("DryRun")?.unwrap_or(false) {
        return Err(Ec2Error::new(
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
            412,
        ));
    }
    Ok(())
}

pub(super) fn instance_ids(p: &Params, required: bool) -> Result<Vec<String>, Ec2Error> {
    let ids: Vec<String> = p
        .list("InstanceId")?
        .into_iter()
        .map(str::to_string)
        .collect();
    if required && ids.is_empty() {
        return Err(Ec2Error::missing_parameter("InstanceId"));
    }
    for id in &ids {
        ids::validate(IdKind::Instance, id)?;
    }
    Ok(ids)
}

pub(super) fn one_instance_id(p: &Params) -> Result<String, Ec2Error> {
    let id = p.required("InstanceId")?.to_string();
    ids::validate(IdKind::Instance, &id)?;
    Ok(id)
}

/// The kinds of resource CreateTags, DeleteTags and DescribeTags know.
const TAGGABLE: [IdKind; 12] = [
    IdKind::Instance,
    IdKind::Image,
    IdKind::Vpc,
    IdKind::Subnet,
    IdKind::SecurityGroup,
    IdKind::SecurityGroupRule,
    IdKind::NetworkInterface,
    IdKind::InternetGateway,
    IdKind::RouteTable,
    IdKind::NetworkAcl,
    IdKind::Allocation,
    IdKind::KeyPair,
];

pub(super) fn resource_ids(p: &Params) -> Result<Vec<String>, Ec2Error> {
    let ids: Vec<String> = p
        .list("ResourceId")?
        .into_iter()
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Err(Ec2Error::missing_parameter("ResourceId"));
    }
    for id in &ids {
        match TAGGABLE
            .iter()
            .find(|k| id.starts_with(&format!("{}-", k.prefix())))
        {
            Some(kind) => ids::validate(*kind, id)?,
            None => return Err(Ec2Error::invalid_id(id)),
        }
    }
    Ok(ids)
}

/// EC2's tag rules: keys 1-128 characters, values up to 256, at most 50 tags, no `aws:` prefix.
pub(super) fn validate_tags(tags: &[Tag]) -> Result<(), Ec2Error> {
    if tags.len() > 50 {
        return Err(Ec2Error::new(
            "TagLimitExceeded",
            "A resource can have at most 50 tags",
            400,
        ));
    }
    for Tag { key: k, value: v } in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Tag key '{k}' must be 1 to 128 characters"
            )));
        }
        if v.chars().count() > 256 {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "The value of tag '{k}' is longer than 256 characters"
            )));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Tag keys starting with 'aws:' are reserved: '{k}'"
            )));
        }
    }
    Ok(())
}

/// The tags of `TagSpecification.N` members for `resource_type`.
pub(super) fn tag_specifications(p: &Params, resource_type: &str) -> Result<Vec<Tag>, Ec2Error> {
    let mut tags = Vec::new();
    for spec in p.structs("TagSpecification")? {
        let ty = spec.required("ResourceType")?;
        if ty != resource_type {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "'{ty}' is not a valid taggable resource type for this operation: use '{resource_type}'"
            )));
        }
        tags.extend(tags_of(&spec)?);
    }
    validate_tags(&tags)?;
    Ok(tags)
}

pub(super) fn state_changes(r: &mut Response, name: &str, changes: &[StateChange]) {
    r.list(name, changes, |r, c| {
        r.elem("instanceId", &c.instance_id);
        state(r, "currentState", c.current);
        state(r, "previousState", c.previous);
    });
}

pub(super) fn state(r: &mut Response, name: &str, s: InstanceState) {
    r.nest(name, |r| {
        r.elem("code", s.code()).elem("name", s.name());
    });
}

/// The `Tag.N.Key`/`Tag.N.Value` members of `p`.
pub(super) fn tags_of(p: &Params) -> Result<Vec<Tag>, Ec2Error> {
    Ok(p.tags("Tag")?
        .into_iter()
        .map(|(key, value)| Tag { key, value })
        .collect())
}
