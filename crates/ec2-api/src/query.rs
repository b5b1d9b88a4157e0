//! EC2 Query requests: `Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-…`.
//!
//! The AWS CLI and boto3 send the parameters as an `application/x-www-form-urlencoded` POST body;
//! other clients (and presigned URLs) put them in the query string of a GET. Both are read, and
//! both are form-encoded (`+` is a space, `%2B` a plus), and the query string is decoded by
//! [`crate::form`], the same decoding SigV4 signs.
//!
//! EC2 flattens lists and structures into numbered names: `InstanceId.1`, `InstanceId.2`, …;
//! `Filter.1.Name`, `Filter.1.Value.1`; `TagSpecification.1.Tag.2.Key`. Numbering starts at 1,
//! gaps are allowed and order follows the number, not the position in the request.
//!
//! This is client-facing parsing, so it is bounded: body size, number of parameters, length of a
//! name and the largest list index are all limited, and every violation is an [`Ec2Error`].

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use crate::error::Ec2Error;
use crate::form;

/// Bounds on what a request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest body read. EC2's own largest routine input is 16 KiB of user data, base64'd.
    pub max_body_bytes: usize,
    /// The most parameters in one request, query string and body together.
    pub max_params: usize,
    /// The longest parameter name.
    pub max_name_len: usize,
    /// The largest `.N` index accepted in a list or structure name.
    pub max_index: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_params: 2000,
            max_name_len: 256,
            max_index: 10_000,
        }
    }
}

/// A `Filter.N` of a Describe call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// The parameters of a request (or of one member of a numbered structure), by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Params {
    map: BTreeMap<String, String>,
    /// The full name of this map's position in the request (`""` at the top,
    /// `"TagSpecification.1."` in a member), so errors name the parameter as the client wrote it.
    prefix: String,
    max_index: u32,
}

/// Names that carry presigned-URL authentication, not action parameters; `sigv4` reads them.
fn is_auth_param(name: &str) -> bool {
    name.starts_with("X-Amz-")
}

impl Params {
    /// Parses a request. `content_type` is the request's Content-Type header, if any.
    pub fn parse(
        method: &str,
        content_type: Option<&str>,
        raw_query: &str,
        body: &[u8],
        limits: &Limits,
    ) -> Result<Params, Ec2Error> {
        if body.len() > limits.max_body_bytes {
            return Err(Ec2Error::new(
                "RequestEntityTooLarge",
                format!(
                    "The request body is {} bytes; the limit is {} bytes",
                    body.len(),
                    limits.max_body_bytes
                ),
                413,
            ));
        }
        let mut pairs = Vec::new();
        decode_form(raw_query.as_bytes(), limits, &mut pairs)?;
        if !body.is_empty() {
            if !method.eq_ignore_ascii_case("POST") {
                return Err(Ec2Error::malformed_query_string(format!(
                    "A {method} request must not carry a body; send parameters in the query string"
                )));
            }
            let media_type = content_type.map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
            match media_type.as_deref() {
                None | Some("application/x-www-form-urlencoded") => {}
                Some(other) => {
                    return Err(Ec2Error::malformed_query_string(format!(
                        "Unsupported Content-Type '{other}'; EC2 Query requests are application/x-www-form-urlencoded"
                    )))
                }
            }
            decode_form(body, limits, &mut pairs)?;
        }
        Params::from_pairs(pairs, limits)
    }

    /// Builds parameters from decoded name/value pairs (authentication parameters are dropped).
    pub fn from_pairs(
        pairs: impl IntoIterator<Item = (String, String)>,
        limits: &Limits,
    ) -> Result<Params, Ec2Error> {
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            if is_auth_param(&name) {
                continue;
            }
            if name.is_empty() {
                return Err(Ec2Error::malformed_query_string(
                    "A parameter has an empty name",
                ));
            }
            if name.len() > limits.max_name_len {
                return Err(Ec2Error::invalid_parameter(format!(
                    "A parameter name is {} bytes long; the limit is {}",
                    name.len(),
                    limits.max_name_len
                )));
            }
            if map.len() >= limits.max_params {
                return Err(Ec2Error::invalid_parameter(format!(
                    "The request has more than {} parameters",
                    limits.max_params
                )));
            }
            if map.contains_key(&name) {
                return Err(Ec2Error::invalid_parameter(format!(
                    "The parameter {name} is specified more than once"
                )));
            }
            map.insert(name, value);
        }
        Ok(Params {
            map,
            prefix: String::new(),
            max_index: limits.max_index,
        })
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All parameters, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The full name of `name` as the client sent it (with this member's prefix).
    pub fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The `Action` parameter; `MissingAction` when there is none.
    pub fn action(&self) -> Result<&str, Ec2Error> {
        match self.get("Action") {
            Some(a) if !a.is_empty() => Ok(a),
            _ => Err(Ec2Error::missing_action()),
        }
    }

    /// The `Version` parameter (`2016-11-15` from current SDKs).
    pub fn version(&self) -> Option<&str> {
        self.get("Version")
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// A parameter that must be present and non-empty; `MissingParameter` otherwise.
    pub fn required(&self, name: &str) -> Result<&str, Ec2Error> {
        match self.get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Ec2Error::missing_parameter(&self.full_name(name))),
        }
    }

    /// An optional integer within `range`; `InvalidParameterValue` when it is not one.
    pub fn int(&self, name: &str, range: RangeInclusive<i64>) -> Result<Option<i64>, Ec2Error> {
        let Some(raw) = self.get(name) else {
            return Ok(None);
        };
        match raw.parse::<i64>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(Ec2Error::invalid_parameter_value(format!(
                "Invalid value '{raw}' for {}: expected an integer from {} to {}",
                self.full_name(name),
                range.start(),
                range.end()
            ))),
        }
    }

    /// An optional boolean (`true` / `false`, as the SDKs send them).
    pub fn bool(&self, name: &str) -> Result<Option<bool>, Ec2Error> {
        let Some(raw) = self.get(name) else {
            return Ok(None);
        };
        if raw.eq_ignore_ascii_case("true") {
            Ok(Some(true))
        } else if raw.eq_ignore_ascii_case("false") {
            Ok(Some(false))
        } else {
            Err(Ec2Error::invalid_parameter_value(format!(
                "Invalid value '{raw}' for {}: expected true or false",
                self.full_name(name)
            )))
        }
    }

    /// The index in `Name.N`, checked: decimal, no leading zero, 1 to `max_index`.
    fn index(&self, full: &str, digits: &str) -> Result<u32, Ec2Error> {
        let ok = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        match digits.parse::<u32>() {
            Ok(n) if ok && n <= self.max_index => Ok(n),
            _ => Err(Ec2Error::invalid_parameter(format!(
                "The parameter name {}{full} has an invalid index '{digits}': expected 1 to {}",
                self.prefix, self.max_index
            ))),
        }
    }

    /// Parameters whose name starts with `prefix.`, with the rest of the name.
    fn under<'a>(&'a self, prefix: &str) -> impl Iterator<Item = (&'a str, &'a str, &'a str)> + 'a {
        let start = format!("{prefix}.");
        let skip = start.len();
        self.map
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
            .map(move |(k, v)| (k.as_str(), &k[skip..], v.as_str()))
    }

    /// The list `prefix.1`, `prefix.2`, … in index order (`InstanceId` → `InstanceId.N`).
    pub fn list<'a>(&'a self, prefix: &str) -> Result<Vec<&'a str>, Ec2Error> {
        let mut items = Vec::new();
        for (full, rest, value) in self.under(prefix) {
            if rest.contains('.') {
                return Err(Ec2Error::invalid_parameter(format!(
                    "Unexpected parameter {}{full}: {prefix} is a list of values",
                    self.prefix
                )));
            }
            items.push((self.index(full, rest)?, value));
        }
        items.sort_by_key(|(n, _)| *n);
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }

    /// The members of the structure list `prefix.N.*`, in index order, each as its own
    /// [`Params`] keyed by the rest of the name (`TagSpecification.1.Tag.2.Key` → member 1 has
    /// `Tag.2.Key`).
    pub fn structs(&self, prefix: &str) -> Result<Vec<Params>, Ec2Error> {
        let mut members: BTreeMap<u32, Params> = BTreeMap::new();
        for (full, rest, value) in self.under(prefix) {
            let (digits, field) = match rest.split_once('.') {
                Some((d, f)) if !f.is_empty() => (d, f),
                _ => {
                    return Err(Ec2Error::invalid_parameter(format!(
                        "Unexpected parameter {}{full}: expected {prefix}.N.<field>",
                        self.prefix
                    )))
                }
            };
            let n = self.index(full, digits)?;
            let member = members.entry(n).or_insert_with(|| Params {
                map: BTreeMap::new(),
                prefix: format!("{}{prefix}.{n}.", self.prefix),
                max_index: self.max_index,
            });
            member.map.insert(field.to_string(), value.to_string());
        }
        Ok(members.into_values().collect())
    }

    /// The `Filter.N.Name` / `Filter.N.Value.M` filters of a Describe call.
    pub fn filters(&self) -> Result<Vec<Filter>, Ec2Error> {
        self.structs("Filter")?
            .into_iter()
            .map(|f| {
                f.only_fields(&["Name"], &["Value"])?;
                Ok(Filter {
                    name: f.required("Name")?.to_string(),
                    values: f.list("Value")?.into_iter().map(str::to_string).collect(),
                })
            })
            .collect()
    }

    /// The tags `prefix.N.Key` / `prefix.N.Value` as (key, value); a missing value is empty, as
    /// in EC2.
    pub fn tags(&self, prefix: &str) -> Result<Vec<(String, String)>, Ec2Error> {
        self.structs(prefix)?
            .into_iter()
            .map(|t| {
                t.only_fields(&["Key", "Value"], &[])?;
                Ok((
                    t.required("Key")?.to_string(),
                    t.get("Value").unwrap_or("").to_string(),
                ))
            })
            .collect()
    }

    /// Rejects any field other than `plain` names and `lists.N` names, so a misspelt member is an
    /// error instead of being ignored.
    fn only_fields(&self, plain: &[&str], lists: &[&str]) -> Result<(), Ec2Error> {
        for name in self.map.keys() {
            let known = plain.contains(&name.as_str())
                || lists.iter().any(|l| {
                    name.strip_prefix(l)
                        .is_some_and(|rest| rest.starts_with('.'))
                });
            if !known {
                return Err(Ec2Error::invalid_parameter(format!(
                    "Unknown parameter {}{name}",
                    self.prefix
                )));
            }
        }
        Ok(())
    }
}

/// Decodes one form-encoded string into `out`, strictly: the result must be UTF-8. The query
/// string goes through the same [`form`] decoding as SigV4's, so the parameters read here are
/// the ones the signature covered.
fn decode_form(
    raw: &[u8],
    limits: &Limits,
    out: &mut Vec<(String, String)>,
) -> Result<(), Ec2Error> {
    for pair in form::pairs(raw) {
        if out.len() >= limits.max_params {
            return Err(Ec2Error::invalid_parameter(format!(
                "The request has more than {} parameters",
                limits.max_params
            )));
        }
        out.push(pair.map_err(|_| {
            Ec2Error::malformed_query_string("A parameter is not valid UTF-8 once decoded")
        })?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &str) -> Result<Params, Ec2Error> {
        Params::parse(
            "POST",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            "",
            body.as_bytes(),
            &Limits::default(),
        )
    }

    #[test]
    fn parses_a_cli_body() {
        let p = post("Action=RunInstances&Version=2016-11-15&ImageId=ami-0123456789abcdef0&MinCount=1&MaxCount=1&UserData=IyEvYmluL3NoCmVjaG8gaGk%3D&TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=Name&TagSpecification.1.Tag.1.Value=web+1").unwrap();
        assert_eq!(p.action().unwrap(), "RunInstances");
        assert_eq!(p.version(), Some("2016-11-15"));
        assert_eq!(p.get("UserData"), Some("IyEvYmluL3NoCmVjaG8gaGk="));
        assert_eq!(p.int("MinCount", 1..=100).unwrap(), Some(1));
        let specs = p.structs("TagSpecification").unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].required("ResourceType").unwrap(), "instance");
        assert_eq!(
            specs[0].tags("Tag").unwrap(),
            vec![("Name".to_string(), "web 1".to_string())]
        );
    }

    #[test]
    fn get_query_string_and_body_together() {
        let p = Params::parse(
            "POST",
            None,
            "Action=DescribeInstances&X-Amz-Signature=abc",
            b"Version=2016-11-15",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(p.action().unwrap(), "DescribeInstances");
        assert_eq!(p.version(), Some("2016-11-15"));
        assert_eq!(
            p.get("X-Amz-Signature"),
            None,
            "auth parameters are not action parameters"
        );
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn rejects_bad_requests() {
        assert_eq!(
            post("Version=1").unwrap().action().unwrap_err().code,
            "MissingAction"
        );
        assert_eq!(
            post("Action=X&Action=Y").unwrap_err().code,
            "InvalidParameter"
        );
        assert_eq!(post("Action=%FF").unwrap_err().code, "MalformedQueryString");
        assert_eq!(post("=x").unwrap_err().code, "MalformedQueryString");
        let e = Params::parse(
            "POST",
            Some("application/json"),
            "",
            b"{}",
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.code, "MalformedQueryString");
        let e = Params::parse("GET", None, "", b"Action=X", &Limits::default()).unwrap_err();
        assert_eq!(e.code, "MalformedQueryString");
    }

    #[test]
    fn limits_hold() {
        let small = Limits {
            max_body_bytes: 10,
            max_params: 3,
            max_name_len: 8,
            max_index: 5,
        };
        let e = Params::parse("POST", None, "", b"Action=Describe", &small).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.http_status),
            ("RequestEntityTooLarge", 413)
        );
        let e = Params::parse("GET", None, "a=1&b=2&c=3&d=4", b"", &small).unwrap_err();
        assert_eq!(e.code, "InvalidParameter");
        let e = Params::parse("GET", None, "abcdefghi=1", b"", &small).unwrap_err();
        assert_eq!(e.code, "InvalidParameter");
        let p = Params::parse("GET", None, "Id.5=a&Id.6=b", b"", &small).unwrap();
        assert!(p
            .list("Id")
            .unwrap_err()
            .message
            .contains("invalid index '6'"));
    }

    #[test]
    fn required_int_bool() {
        let p = post("A=&B=12&C=x&D=true&E=FALSE&F=maybe&G=99999999999999999999").unwrap();
        assert_eq!(p.required("A").unwrap_err().code, "MissingParameter");
        assert_eq!(
            p.required("Z").unwrap_err().message,
            "The request must contain the parameter Z"
        );
        assert_eq!(p.int("B", 0..=20).unwrap(), Some(12));
        assert_eq!(p.int("B", 0..=5).unwrap_err().code, "InvalidParameterValue");
        assert_eq!(p.int("C", 0..=5).unwrap_err().code, "InvalidParameterValue");
        assert_eq!(p.int("G", 0..=5).unwrap_err().code, "InvalidParameterValue");
        assert_eq!(p.int("Missing", 0..=5).unwrap(), None);
        assert_eq!(p.bool("D").unwrap(), Some(true));
        assert_eq!(p.bool("E").unwrap(), Some(false));
        assert_eq!(p.bool("F").unwrap_err().code, "InvalidParameterValue");
        assert_eq!(p.bool("Missing").unwrap(), None);
    }

    #[test]
    fn lists_are_ordered_by_index_with_gaps() {
        let p =
            post("InstanceId.10=c&InstanceId.2=b&InstanceId.1=a&InstanceIds.1=z&Other=1").unwrap();
        assert_eq!(p.list("InstanceId").unwrap(), vec!["a", "b", "c"]);
        assert!(p.list("Nothing").unwrap().is_empty());
        for bad in [
            "InstanceId.0=a",
            "InstanceId.01=a",
            "InstanceId.x=a",
            "InstanceId.=a",
            "InstanceId.-1=a",
            "InstanceId.99999999999=a",
            "InstanceId.1.Extra=a",
        ] {
            let e = post(bad).unwrap().list("InstanceId").unwrap_err();
            assert_eq!(e.code, "InvalidParameter", "{bad}");
        }
    }

    #[test]
    fn filters() {
        let p = post("Filter.2.Name=tag%3AName&Filter.2.Value.1=web&Filter.1.Name=instance-state-name&Filter.1.Value.2=stopped&Filter.1.Value.1=running").unwrap();
        assert_eq!(
            p.filters().unwrap(),
            vec![
                Filter {
                    name: "instance-state-name".into(),
                    values: vec!["running".into(), "stopped".into()]
                },
                Filter {
                    name: "tag:Name".into(),
                    values: vec!["web".into()]
                },
            ]
        );
        let e = post("Filter.1.Value.1=x").unwrap().filters().unwrap_err();
        assert_eq!(e.code, "MissingParameter");
        assert_eq!(
            e.message,
            "The request must contain the parameter Filter.1.Name"
        );
        let e = post("Filter.1.Name=a&Filter.1.Valeu.1=x")
            .unwrap()
            .filters()
            .unwrap_err();
        assert_eq!(e.message, "Unknown parameter Filter.1.Valeu.1");
        let e = post("Filter.1=a").unwrap().filters().unwrap_err();
        assert_eq!(e.code, "InvalidParameter");
    }

    #[test]
    fn nested_structures_and_tags() {
        let p = post(concat!(
            "TagSpecification.2.ResourceType=volume&TagSpecification.2.Tag.1.Key=k",
            "&TagSpecification.1.ResourceType=instance",
            "&TagSpecification.1.Tag.2.Key=b&TagSpecification.1.Tag.2.Value=2",
            "&TagSpecification.1.Tag.1.Key=a&TagSpecification.1.Tag.1.Value=1"
        ))
        .unwrap();
        let specs = p.structs("TagSpecification").unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].get("ResourceType"), Some("instance"));
        assert_eq!(
            specs[0].tags("Tag").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(specs[1].tags("Tag").unwrap(), vec![("k".into(), "".into())]);
        let e = post("TagSpecification.1.Tag.1.Value=v")
            .unwrap()
            .structs("TagSpecification")
            .unwrap()[0]
            .tags("Tag")
            .unwrap_err();
        assert_eq!(
            e.message,
            "The request must contain the parameter TagSpecification.1.Tag.1.Key"
        );
        let e = post("Tag.1.Key=a&Tag.1.Colour=red")
            .unwrap()
            .tags("Tag")
            .unwrap_err();
        assert_eq!(e.message, "Unknown parameter Tag.1.Colour");
    }

    #[test]
    fn never_panics_on_odd_names() {
        for body in [
            "&&&", "a", "a.b.c.d", "X.1.=1", "X..1=2", "X.1..Y=3", ".=.", "%", "%zz=1",
        ] {
            if let Ok(p) = post(body) {
                let _ = p.list("X");
                let _ = p.structs("X");
                let _ = p.filters();
                let _ = p.tags("X");
            }
        }
    }
}
