//! Tags: CreateTags, DeleteTags and DescribeTags, on instances, images, key pairs and the network
//! resources (VPCs, subnets, groups and rules, interfaces, gateways, route tables, ACLs, Elastic
//! IPs). A tag operation
//! changes all of its resources or none.

use super::Service;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::filter::{Filter, FilterMatch};
use crate::model::{ResourceTag, Tag};

/// One tag DeleteTags removes: the key, and with a value only when the tag has that value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagToDelete {
    pub key: String,
    pub value: Option<String>,
}

impl Service {
    /// Whether a taggable resource exists (for the ID checks of tag operations).
    pub fn resource_exists(&self, id: &str) -> ApiResult<bool> {
        let db = self.db();
        if id.starts_with("i-") {
            Ok(db.instance(id)?.is_some())
        } else if id.starts_with("ami-") {
            Ok(db.image(id)?.is_some())
        } else if id.starts_with("key-") {
            Ok(db.key_pair_by_id(id)?.is_some())
        } else {
            let net = db.net_state()?;
            Ok(match resource_type(id) {
                "vpc" => net.vpc(id).is_some(),
                "subnet" => net.subnet(id).is_some(),
                "security-group" => net.group(id).is_some(),
                "security-group-rule" => net.rules.iter().any(|r| r.rule_id == id),
                "network-interface" => net.interface(id).is_some(),
                "internet-gateway" => net.gateway(id).is_some(),
                "route-table" => net.route_table(id).is_some(),
                "network-acl" => net.acls.iter().any(|a| a.acl_id == id),
                "elastic-ip" => net
                    .addresses
                    .iter()
                    .any(|a| a.allocation_id.as_deref() == Some(id)),
                _ => false,
            })
        }
    }

    /// Every id names an existing instance or image (tag operations change all or nothing).
    pub(super) fn require_resources(&self, resources: &[String]) -> ApiResult<()> {
        for r in resources {
            if !self.resource_exists(r)? {
                return Err(not_found_for(r));
            }
        }
        Ok(())
    }

    pub fn create_tags(&self, resources: &[String], tags: &[Tag]) -> ApiResult<()> {
        self.require_resources(resources)?;
        let mut db = self.db();
        let tx = db.transaction()?;
        for r in resources {
            for t in tags {
                db::put_tag(&tx, r, &t.key, &t.value)?;
            }
        }
        tx.commit().map_err(db::DbError::from)?;
        Ok(())
    }

    pub fn delete_tags(&self, resources: &[String], tags: &[TagToDelete]) -> ApiResult<()> {
        self.require_resources(resources)?;
        let mut db = self.db();
        let tx = db.transaction()?;
        for r in resources {
            if tags.is_empty() {
                tx.execute("DELETE FROM tags WHERE resource_id = ?1", [r])
                    .map_err(db::DbError::from)?;
            }
            for t in tags {
                db::delete_tag(&tx, r, &t.key, t.value.as_deref())?;
            }
        }
        tx.commit().map_err(db::DbError::from)?;
        Ok(())
    }

    /// DescribeTags: every tag matching `filters`, by resource and key.
    pub fn describe_tags(&self, filters: &[Filter]) -> ApiResult<Vec<ResourceTag>> {
        for f in filters {
            if !matches!(
                f.name.as_str(),
                "resource-id" | "resource-type" | "key" | "value"
            ) {
                return Err(ApiError::invalid_value(format!(
                    "The filter '{}' is invalid",
                    f.name
                )));
            }
        }
        let rows = self.db().all_tags()?;
        Ok(rows
            .into_iter()
            .map(|(resource_id, tag)| {
                let resource_type = resource_type(&resource_id);
                ResourceTag {
                    resource_id,
                    resource_type,
                    tag,
                }
            })
            .filter(|t| {
                filters.iter().all(|f| match f.name.as_str() {
                    "resource-id" => f.matches_any([t.resource_id.as_str()]),
                    "resource-type" => f.matches_any([t.resource_type]),
                    "key" => f.matches_any([t.tag.key.as_str()]),
                    _ => f.matches_any([t.tag.value.as_str()]),
                })
            })
            .collect())
    }
}

/// EC2's resource type of an id, by its prefix (longest prefixes first: `sgr-` before `sg-`).
pub(super) fn resource_type(id: &str) -> &'static str {
    const TYPES: [(&str, &str); 12] = [
        ("sgr-", "security-group-rule"),
        ("sg-", "security-group"),
        ("i-", "instance"),
        ("ami-", "image"),
        ("vpc-", "vpc"),
        ("subnet-", "subnet"),
        ("eni-", "network-interface"),
        ("igw-", "internet-gateway"),
        ("rtb-", "route-table"),
        ("acl-", "network-acl"),
        ("eipalloc-", "elastic-ip"),
        ("key-", "key-pair"),
    ];
    TYPES
        .iter()
        .find(|(p, _)| id.starts_with(p))
        .map(|(_, t)| *t)
        .unwrap_or("image")
}

pub(super) fn not_found_for(id: &str) -> ApiError {
    let not_found = |code: &'static str, noun: &str| {
        ApiError::new(code, format!("The {noun} ID '{id}' does not exist"))
    };
    match resource_type(id) {
        _ if id.starts_with("ami-") => ApiError::image_not_found(id),
        "instance" => ApiError::instance_not_found(id),
        "vpc" => not_found("InvalidVpcID.NotFound", "vpc"),
        "subnet" => not_found("InvalidSubnetID.NotFound", "subnet"),
        "security-group" => ApiError::new(
            "InvalidGroup.NotFound",
            format!("The security group '{id}' does not exist"),
        ),
        "security-group-rule" => {
            not_found("InvalidSecurityGroupRuleId.NotFound", "security group rule")
        }
        "network-interface" => not_found("InvalidNetworkInterfaceID.NotFound", "networkInterface"),
        "internet-gateway" => not_found("InvalidInternetGatewayID.NotFound", "internetGateway"),
        "route-table" => not_found("InvalidRouteTableID.NotFound", "routeTable"),
        "network-acl" => not_found("InvalidNetworkAclID.NotFound", "network ACL"),
        "elastic-ip" => not_found("InvalidAllocationID.NotFound", "allocation"),
        "key-pair" => super::key_pairs::key_pair_not_found(id),
        _ => ApiError::new("InvalidID", format!("The ID '{id}' is not valid")),
    }
}
