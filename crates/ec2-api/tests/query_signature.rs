//! The parameters the server acts on must be exactly those the signature covered. SigV4 and the
//! query parser read the same query string, so they must decode it the same way: a `+`, `%20`
//! or `%2B` swapped for another in a signed or presigned GET either breaks the signature or
//! leaves the parameters as they were signed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vireo_ec2_api::query::{Limits, Params};
use vireo_ec2_api::sigv4::{self, Credentials, RequestParts, SignInput};

const HOST: &str = "127.0.0.1:8787";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn creds() -> Credentials {
    Credentials {
        access_key_id: "AKIAVIREOTEST0000001".into(),
        secret_access_key: "s3cr3t/with+odd=chars".into(),
    }
}

fn lookup(id: &str) -> Option<String> {
    (id == "AKIAVIREOTEST0000001").then(|| creds().secret_access_key)
}

fn input(query: &str) -> SignInput<'_> {
    SignInput {
        method: "GET",
        host: HOST,
        path: "/",
        query,
        headers: &[],
        body: b"",
        region: "vireo-local",
        service: "ec2",
        time: now(),
        content_sha256_header: false,
    }
}

/// What the server acts on for a GET: `Some(params)` when it verifies, `None` when refused.
fn served(query: &str, headers: &[(String, String)]) -> Option<Vec<(String, String)>> {
    let parts = RequestParts {
        method: "GET",
        path: "/",
        query,
        headers,
        body: b"",
    };
    sigv4::verify(&parts, lookup, now()).ok()?;
    let p = Params::parse("GET", None, query, b"", &Limits::default()).unwrap();
    Some(p.iter().map(|(k, v)| (k.into(), v.into())).collect())
}

/// Every way of writing each `+`, `%20` and `%2B` of `query` as one of the others.
fn variants(query: &str) -> Vec<String> {
    const FORMS: [&str; 3] = ["+", "%20", "%2B"];
    let mut out = vec![String::new()];
    let mut rest = query;
    while !rest.is_empty() {
        if let Some(form) = FORMS.iter().find(|f| rest.starts_with(**f)) {
            out = out
                .iter()
                .flat_map(|o| FORMS.iter().map(move |g| format!("{o}{g}")))
                .collect();
            rest = &rest[form.len()..];
        } else {
            let c = rest.chars().next().unwrap();
            for o in &mut out {
                o.push(c);
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

const SIGNED_QUERIES: [&str; 3] = [
    "Action=DescribeTags&Version=2016-11-15&Filter.1.Name=value&Filter.1.Value.1=a%20b%2Bc",
    "Action=DescribeTags&Version=2016-11-15&Filter.1.Name=value&Filter.1.Value.1=a+b%2Bc",
    "Action=DescribeTags&Version=2016-11-15&Filter.1.Name=key&Filter.1.Value.1=x%2By%20z+",
];

#[test]
fn a_header_signed_get_cannot_be_changed_by_swapping_spaces_and_pluses() {
    for signed in SIGNED_QUERIES {
        let mut headers = sigv4::sign(&creds(), &input(signed));
        headers.push(("Host".into(), HOST.into()));
        let meant = served(signed, &headers).expect("the request as signed verifies");
        for v in variants(signed) {
            if let Some(got) = served(&v, &headers) {
                assert_eq!(got, meant, "{signed} was signed, {v} was served");
            }
        }
    }
}

#[test]
fn a_presigned_get_cannot_be_changed_by_swapping_spaces_and_pluses() {
    for signed in SIGNED_QUERIES {
        let url = sigv4::presign(&creds(), &input(signed), 300);
        let headers = vec![("Host".to_string(), HOST.to_string())];
        let meant = served(&url, &headers).expect("the presigned request verifies");
        for v in variants(&url) {
            if let Some(got) = served(&v, &headers) {
                assert_eq!(got, meant, "{url} was presigned, {v} was served");
            }
        }
    }
}

#[test]
fn a_plus_in_a_query_string_is_a_space_to_both() {
    // As in a form: `+` is a space, `%2B` a plus, for the signature and the parameters alike.
    let signed =
        "Action=DescribeTags&Version=2016-11-15&Filter.1.Name=value&Filter.1.Value.1=a+b%2Bc";
    let mut headers = sigv4::sign(&creds(), &input(signed));
    headers.push(("Host".into(), HOST.into()));
    let got = served(signed, &headers).unwrap();
    assert!(got.contains(&("Filter.1.Value.1".into(), "a b+c".into())));
    let same = signed.replace("a+b", "a%20b");
    assert_eq!(served(&same, &headers), Some(got));
    let other = signed.replace("a+b", "a%2Bb");
    assert_eq!(served(&other, &headers), None);
}
