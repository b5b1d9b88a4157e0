//! Tags: CreateTags, DeleteTags and DescribeTags, for instances and images.

use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::params::{allow, resource_ids, tags_of, validate_tags};
use crate::service::{Service, TagToDelete};

pub(super) fn create(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["ResourceId", "Tag", "DryRun"])?;
    let resources = resource_ids(p)?;
    let tags = tags_of(p)?;
    if tags.is_empty() {
        return Err(Ec2Error::missing_parameter("Tag"));
    }
    validate_tags(&tags)?;
    svc.create_tags(&resources, &tags)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn delete(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["ResourceId", "Tag", "DryRun"])?;
    let resources = resource_ids(p)?;
    let tags = p
        .structs("Tag")?
        .into_iter()
        .map(|t| {
            Ok(TagToDelete {
                key: t.required("Key")?.to_string(),
                value: t.get("Value").map(str::to_string),
            })
        })
        .collect::<Result<Vec<_>, Ec2Error>>()?;
    svc.delete_tags(&resources, &tags)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["Filter", "MaxResults", "NextToken", "DryRun"])?;
    let tags = svc.describe_tags(&p.filters()?)?;
    r.list("tagSet", tags, |r, t| {
        r.elem("resourceId", t.resource_id)
            .elem("resourceType", t.resource_type)
            .elem("key", t.tag.key)
            .elem("value", t.tag.value);
    });
    Ok(())
}
