//! DescribeInstances' pages: the opaque NextToken names the last instance shown (by insertion
//! order).

use crate::error::{ApiError, ApiResult};

pub(super) fn encode_token(seq: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("vireo-page:{seq}"))
}

pub(super) fn decode_token(t: &str) -> ApiResult<i64> {
    use base64::Engine;
    let bad = || ApiError::invalid_value(format!("Invalid NextToken '{t}'"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    s.strip_prefix("vireo-page:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode_token(&encode_token(42)).unwrap(), 42);
        assert_eq!(
            decode_token("garbage!").unwrap_err().code,
            "InvalidParameterValue"
        );
        assert!(decode_token(&encode_token(1)[1..]).is_err());
    }
}
