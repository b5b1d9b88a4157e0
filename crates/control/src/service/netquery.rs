//! The Describe calls of the network resources, written once: ids (every one must exist),
//! `Filter.N` (known names only; `tag:K`, `tag-key`, `tag-value` on all), and pages in creation
//! order (`MaxResults`, `NextToken`).

use super::filters::tag_filter;
use super::paging::{decode_token, encode_token};
use crate::error::{ApiError, ApiResult};
use crate::filter::{Filter, FilterMatch};
use crate::model::Tag;
use crate::netmodel::{
    InternetGateway, NetworkAcl, NetworkInterface, PublicAddress, RouteTable, SecurityGroup,
    SecurityGroupRule, Subnet, Vpc,
};

/// What a Describe call asks for.
#[derive(Debug, Clone, Default)]
pub struct DescribeQuery {
    pub ids: Vec<String>,
    pub filters: Vec<Filter>,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

/// One page of a Describe call and the token of the next.
pub type Page<T> = (Vec<T>, Option<String>);

/// A record a Describe call lists.
pub(super) trait Listed {
    fn id(&self) -> &str;
    fn seq(&self) -> i64;
    fn tags(&self) -> &[Tag];
}

macro_rules! listed {
    ($t:ty, $id:ident) => {
        impl Listed for $t {
            fn id(&self) -> &str {
                &self.$id
            }
            fn seq(&self) -> i64 {
                self.seq
            }
            fn tags(&self) -> &[Tag] {
                &self.tags
            }
        }
    };
}

listed!(Vpc, vpc_id);
listed!(Subnet, subnet_id);
listed!(SecurityGroup, group_id);
listed!(SecurityGroupRule, rule_id);
listed!(NetworkInterface, eni_id);
listed!(InternetGateway, igw_id);
listed!(RouteTable, route_table_id);

listed!(NetworkAcl, acl_id);

impl Listed for PublicAddress {
    fn id(&self) -> &str {
        self.allocation_id.as_deref().unwrap_or("")
    }
    fn seq(&self) -> i64 {
        self.seq
    }
    fn tags(&self) -> &[Tag] {
        &self.tags
    }
}

fn is_tag_filter(name: &str) -> bool {
    name.starts_with("tag:") || name == "tag-key" || name == "tag-value"
}

/// The records of `items` that `q` selects, one page of them, and the token of the next page.
/// `values` gives a record's values for a filter name in `allowed`; `not_found` is the error
/// for ids that name nothing (given them joined).
pub(super) fn describe<T: Listed>(
    items: Vec<T>,
    q: &DescribeQuery,
    allowed: &[&str],
    values: impl Fn(&T, &str) -> Vec<String>,
    not_found: impl Fn(&str) -> ApiError,
) -> ApiResult<(Vec<T>, Option<String>)> {
    for f in &q.filters {
        if !allowed.contains(&f.name.as_str()) && !is_tag_filter(&f.name) {
            return Err(ApiError::invalid_value(format!(
                "The filter '{}' is invalid",
                f.name
            )));
        }
    }
    let after = q.next_token.as_deref().map(decode_token).transpose()?;
    let missing: Vec<&str> = q
        .ids
        .iter()
        .filter(|id| !items.iter().any(|i| i.id() == id.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(not_found(&missing.join(", ")));
    }
    let mut matching = items
        .into_iter()
        .filter(|i| q.ids.is_empty() || q.ids.iter().any(|id| id == i.id()))
        .filter(|i| {
            q.filters.iter().all(|f| {
                if is_tag_filter(&f.name) {
                    tag_filter(&f.name, f, i.tags())
                } else {
                    let v = values(i, &f.name);
                    f.matches_any(v.iter().map(String::as_str))
                }
            })
        })
        .filter(|i| after.is_none_or(|a| i.seq() > a));
    let limit = q.max_results.map(|m| m as usize).unwrap_or(usize::MAX);
    let page: Vec<T> = matching.by_ref().take(limit).collect();
    let next = if matching.next().is_some() {
        page.last().map(|i| encode_token(i.seq()))
    } else {
        None
    };
    Ok((page, next))
}

/// A boolean as filters compare it.
pub(super) fn b(v: bool) -> String {
    if v { "true" } else { "false" }.to_string()
}

/// A not-found error of `code`: "The NOUN ID 'x' does not exist".
pub(super) fn not_found(code: &'static str, noun: &str, ids: &str) -> ApiError {
    ApiError::new(code, format!("The {noun} ID '{ids}' does not exist"))
}

pub(super) fn vpc_not_found(id: &str) -> ApiError {
    not_found("InvalidVpcID.NotFound", "vpc", id)
}

pub(super) fn subnet_not_found(id: &str) -> ApiError {
    not_found("InvalidSubnetID.NotFound", "subnet", id)
}

pub(super) fn group_not_found(id: &str) -> ApiError {
    ApiError::new(
        "InvalidGroup.NotFound",
        format!("The security group '{id}' does not exist"),
    )
}

pub(super) fn eni_not_found(id: &str) -> ApiError {
    not_found("InvalidNetworkInterfaceID.NotFound", "networkInterface", id)
}

pub(super) fn igw_not_found(id: &str) -> ApiError {
    not_found("InvalidInternetGatewayID.NotFound", "internetGateway", id)
}

pub(super) fn rtb_not_found(id: &str) -> ApiError {
    not_found("InvalidRouteTableID.NotFound", "routeTable", id)
}

pub(super) fn dependency(what: &str, id: &str) -> ApiError {
    ApiError::new(
        "DependencyViolation",
        format!("The {what} '{id}' has dependencies and cannot be deleted."),
    )
}
