//! The parameters the VPC networking actions share: one id of a kind, the ids and filters of a
//! Describe call with its pages, a `Name.Value` boolean.

use vireo_ec2_api::ids::{self, IdKind};
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::params::{allow, dry_run};
use crate::error::ApiResult;
use crate::model::Tag;
use crate::service::DescribeQuery;

/// A required id of `kind` (`MissingParameter`, then the kind's `.Malformed`).
pub(super) fn one_id(p: &Params, name: &str, kind: IdKind) -> Result<String, Ec2Error> {
    let id = p.required(name)?.to_string();
    ids::validate(kind, &id)?;
    Ok(id)
}

/// An optional id of `kind`.
pub(super) fn opt_id(p: &Params, name: &str, kind: IdKind) -> Result<Option<String>, Ec2Error> {
    match p.get(name) {
        Some(id) => {
            ids::validate(kind, id)?;
            Ok(Some(id.to_string()))
        }
        None => Ok(None),
    }
}

/// The list `name.N` of ids of `kind`.
pub(super) fn id_list(p: &Params, name: &str, kind: IdKind) -> Result<Vec<String>, Ec2Error> {
    let ids: Vec<String> = p.list(name)?.into_iter().map(str::to_string).collect();
    for id in &ids {
        ids::validate(kind, id)?;
    }
    Ok(ids)
}

/// A Describe call's `ID.N` (of `kind`), filters, MaxResults (5-1000) and NextToken.
pub(super) fn describe_query(
    p: &Params,
    id_param: &str,
    kind: IdKind,
) -> Result<DescribeQuery, Ec2Error> {
    Ok(DescribeQuery {
        ids: id_list(p, id_param, kind)?,
        filters: p.filters()?,
        max_results: p.int("MaxResults", 5..=1000)?.map(|m| m as u32),
        next_token: p.get("NextToken").map(str::to_string),
    })
}

/// A paged Describe call's query, once its parameters are known (the ids `id_param` of `kind`,
/// Filter, MaxResults, NextToken, DryRun and the call's own `extra` ones) and DryRun is answered.
pub(super) fn paged_describe(
    p: &Params,
    id_param: &str,
    kind: IdKind,
    extra: &[&str],
) -> Result<DescribeQuery, Ec2Error> {
    let common = [id_param, "Filter", "MaxResults", "NextToken", "DryRun"];
    allow(p, &[&common[..], extra].concat())?;
    dry_run(p)?;
    describe_query(p, id_param, kind)
}

/// An action on the one resource that the id parameter `param` (of `kind`) names, which takes
/// nothing else but DryRun and answers `return` true: DeleteVpc, DeleteSubnet and the like.
pub(super) fn on_one_id(
    p: &Params,
    r: &mut Response,
    param: &str,
    kind: IdKind,
    action: impl FnOnce(&str) -> ApiResult<()>,
) -> Result<(), Ec2Error> {
    allow(p, &[param, "DryRun"])?;
    dry_run(p)?;
    action(&one_id(p, param, kind)?)?;
    r.bool_elem("return", true);
    Ok(())
}

/// `Name.Value` (EC2's AttributeBooleanValue), if given.
pub(super) fn attr_bool(p: &Params, name: &str) -> Result<Option<bool>, Ec2Error> {
    p.bool(&format!("{name}.Value"))
}

/// An IPv4 address parameter.
pub(super) fn ipv4(p: &Params, name: &str) -> Result<Option<std::net::Ipv4Addr>, Ec2Error> {
    match p.get(name) {
        Some(v) => v.parse().map(Some).map_err(|_| {
            Ec2Error::invalid_parameter_value(format!(
                "Invalid value '{v}' for {}: not an IPv4 address",
                p.full_name(name)
            ))
        }),
        None => Ok(None),
    }
}

pub(super) fn tags_xml(r: &mut Response, tags: &[Tag]) {
    r.tag_set(tags.iter().map(|t| (t.key.as_str(), t.value.as_str())));
}
