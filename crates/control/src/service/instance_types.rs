//! DescribeInstanceTypes: the catalogue, or the types asked for.

use crate::error::{ApiError, ApiResult};
use crate::types::{self, InstanceType};

/// The instance type of `name` (for the API layer's DescribeInstanceTypes).
pub fn instance_types(names: &[String]) -> ApiResult<Vec<&'static InstanceType>> {
    if names.is_empty() {
        return Ok(types::CATALOG.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            types::lookup(n).ok_or_else(|| {
                ApiError::invalid_value(format!(
                    "The following supplied instance types do not exist: [{n}]"
                ))
            })
        })
        .collect()
}
