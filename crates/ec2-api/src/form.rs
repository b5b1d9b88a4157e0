//! The one decoding of `application/x-www-form-urlencoded` text (`a=1&b=x+y%2Bz`): `&` separates
//! pairs, the first `=` separates a name from its value, `+` is a space and `%XY` a byte, and the
//! result must be UTF-8.
//!
//! SigV4 ([`crate::sigv4`]) and the query parser ([`crate::query`]) both read a request's query
//! string through [`pairs`]. They must: if the signature read `+` one way and the parameters
//! another, a signed or presigned GET could be changed (`%2B` rewritten as `+`) without breaking
//! its signature, and the server would act on parameters nobody signed.

use percent_encoding::percent_decode;

/// A name or value that is not UTF-8 once decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a parameter is not valid UTF-8 once decoded")]
pub struct NotUtf8;

/// Decodes one name or value: `+` is a space, `%XY` the byte XY.
pub fn decode(raw: &[u8]) -> Result<String, NotUtf8> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_decode(&plus_as_space)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| NotUtf8)
}

/// The raw (still encoded) name and value of each non-empty `&`-separated segment of `raw`,
/// in order. A segment without `=` is a name with an empty value.
pub fn raw_pairs(raw: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    raw.split(|&b| b == b'&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| match segment.iter().position(|&b| b == b'=') {
            Some(i) => (&segment[..i], &segment[i + 1..]),
            None => (segment, &b""[..]),
        })
}

/// The decoded (name, value) pairs of `raw`, in order.
pub fn pairs(raw: &[u8]) -> impl Iterator<Item = Result<(String, String), NotUtf8>> + '_ {
    raw_pairs(raw).map(|(name, value)| Ok((decode(name)?, decode(value)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_is_a_space_and_percent_2b_a_plus() {
        assert_eq!(decode(b"a+b%2Bc%20d").unwrap(), "a b+c d");
        assert_eq!(decode(b"%E2%9C%93").unwrap(), "\u{2713}");
        assert_eq!(decode(b"%FF"), Err(NotUtf8));
        // A stray `%` is kept as it is, as browsers and botocore's parser do.
        assert_eq!(decode(b"100%").unwrap(), "100%");
    }

    #[test]
    fn pairs_split_on_the_first_equals_and_skip_empty_segments() {
        let got: Vec<_> = pairs(b"&a=1=2&&b&c=&=v").collect::<Result<_, _>>().unwrap();
        let want: Vec<(String, String)> = [("a", "1=2"), ("b", ""), ("c", ""), ("", "v")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(pairs(b"a=%C3").next(), Some(Err(NotUtf8)));
    }
}
