//! Requests exactly as botocore (the library under the AWS CLI and boto3) signs and serializes
//! them, recorded by `fixtures/gen_botocore.py`: the server side must accept each one, read its
//! parameters as botocore meant them, and reject it once changed or too old.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use vireo_ec2_api::query::{Filter, Limits, Params};
use vireo_ec2_api::sigv4::{verify, AuthError, RequestParts};

struct Recorded {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn parts(&self) -> RequestParts<'_> {
        RequestParts {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            body: &self.body,
        }
    }

    /// The X-Amz-Date the request was signed with (header, or presigned parameter).
    fn signed_at(&self) -> SystemTime {
        let from_header = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-date"))
            .map(|(_, v)| v.clone());
        let from_query = self
            .query
            .split('&')
            .find_map(|p| p.strip_prefix("X-Amz-Date="))
            .map(str::to_string);
        let s = from_header.or(from_query).expect("a signing date");
        let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
        // Days from civil date (proleptic Gregorian), enough for a test's clock.
        let (y, m, d) = (n(0..4), n(4..6), n(6..8));
        let y2 = if m <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146097 + doe - 719468;
        let secs = days * 86400 + n(9..11) * 3600 + n(11..13) * 60 + n(13..15);
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }
}

fn fixture() -> (String, String, Vec<Recorded>) {
    let text = include_str!("fixtures/botocore.json");
    let v: Value = serde_json::from_str(text).unwrap();
    let reqs = v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Recorded {
            method: r["method"].as_str().unwrap().into(),
            path: r["path"].as_str().unwrap().into(),
            query: r["query"].as_str().unwrap().into(),
            headers: r["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h[0].as_str().unwrap().to_string(),
                        h[1].as_str().unwrap().to_string(),
                    )
                })
                .collect(),
            body: r["body"].as_str().unwrap().as_bytes().to_vec(),
        })
        .collect();
    (
        v["access_key_id"].as_str().unwrap().into(),
        v["secret_access_key"].as_str().unwrap().into(),
        reqs,
    )
}

#[test]
fn botocore_signed_requests_verify() {
    let (akid, secret, reqs) = fixture();
    assert_eq!(reqs.len(), 4);
    let lookup = |k: &str| (k == akid).then(|| secret.clone());
    for r in &reqs {
        let caller = verify(&r.parts(), lookup, r.signed_at() + Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{} {}?{}: {e}", r.method, r.path, r.query));
        assert_eq!(caller.access_key_id, akid);
        assert_eq!(caller.region, "vireo-local");
    }
}

#[test]
fn botocore_requests_fail_once_changed_or_stale() {
    let (akid, secret, reqs) = fixture();
    let lookup = |k: &str| (k == akid).then(|| secret.clone());
    for r in reqs.iter().filter(|r| r.method == "POST") {
        let now = r.signed_at();
        let mut changed = Recorded {
            method: r.method.clone(),
            path: r.path.clone(),
            query: r.query.clone(),
            headers: r.headers.clone(),
            body: r.body.clone(),
        };
        changed.body.extend_from_slice(b"&DryRun=true");
        assert_eq!(
            verify(&changed.parts(), lookup, now),
            Err(AuthError::SignatureMismatch)
        );
        assert!(matches!(
            verify(&r.parts(), lookup, now + Duration::from_secs(301)),
            Err(AuthError::Expired(_))
        ));
        let wrong = |_: &str| Some("another-secret".to_string());
        assert_eq!(
            verify(&r.parts(), wrong, now),
            Err(AuthError::SignatureMismatch)
        );
    }
    let presigned = reqs.iter().find(|r| r.method == "GET").unwrap();
    assert!(verify(
        &presigned.parts(),
        lookup,
        presigned.signed_at() + Duration::from_secs(300)
    )
    .is_ok());
    assert!(matches!(
        verify(
            &presigned.parts(),
            lookup,
            presigned.signed_at() + Duration::from_secs(301)
        ),
        Err(AuthError::Expired(_))
    ));
}

fn params(r: &Recorded) -> Params {
    let ct = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str());
    Params::parse(&r.method, ct, &r.query, &r.body, &Limits::default()).unwrap()
}

#[test]
fn botocore_parameters_read_back() {
    let (_, _, reqs) = fixture();
    let describe = params(&reqs[0]);
    assert_eq!(describe.action().unwrap(), "DescribeInstances");
    assert_eq!(describe.version(), Some("2016-11-15"));
    assert_eq!(
        describe.list("InstanceId").unwrap(),
        ["i-0123456789abcdef0", "i-0123456789abcdef1"]
    );
    assert_eq!(describe.int("MaxResults", 5..=1000).unwrap(), Some(5));
    assert_eq!(
        describe.filters().unwrap(),
        vec![
            Filter {
                name: "tag:Name".into(),
                values: vec!["a b/c+✓".into(), "*&=".into()]
            },
            Filter {
                name: "instance-state-name".into(),
                values: vec!["running".into()]
            }
        ]
    );

    let run = params(&reqs[1]);
    assert_eq!(run.action().unwrap(), "RunInstances");
    assert_eq!(run.required("ImageId").unwrap(), "ami-0123456789abcdef0");
    assert_eq!(run.get("UserData"), Some("IyEvYmluL3NoCmVjaG8gaGVsbG8K"));
    assert_eq!(run.int("MaxCount", 1..=100).unwrap(), Some(2));
    let specs = run.structs("TagSpecification").unwrap();
    assert_eq!(specs[0].get("ResourceType"), Some("instance"));
    assert_eq!(
        specs[0].tags("Tag").unwrap(),
        vec![
            ("Name".to_string(), "web 1".to_string()),
            ("env".to_string(), String::new())
        ]
    );

    let presigned = params(&reqs[3]);
    assert_eq!(presigned.action().unwrap(), "DescribeInstances");
    assert_eq!(
        presigned.list("InstanceId").unwrap(),
        ["i-0123456789abcdef0"]
    );
    assert!(presigned.iter().all(|(k, _)| !k.starts_with("X-Amz-")));
}
