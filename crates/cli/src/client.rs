//! A client of the EC2 Query API: form-encoded POSTs signed with SigV4, XML back.

use std::time::{Duration, SystemTime};

use vireo_ec2_api::sigv4::{self, Credentials, SignInput};

use crate::config::{Endpoint, Resolved};
use crate::xmltree::Element;

/// The EC2 API version the CLI speaks (the one the AWS CLI and boto3 send).
pub const API_VERSION: &str = "2016-11-15";
/// The largest response read; a DescribeInstances page or a console tail is far smaller.
const MAX_RESPONSE_BYTES: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// An EC2 error document: shown as `Code: Message`.
    #[error("{code}: {message}")]
    Api {
        code: String,
        message: String,
        status: u16,
    },
    #[error("cannot reach vireod at {url}: {reason} (is vireod running? see --endpoint / VIREO_ENDPOINT)")]
    Unreachable { url: String, reason: String },
    #[error("unexpected answer from {url} (HTTP {status}): {detail}")]
    BadResponse {
        url: String,
        status: u16,
        detail: String,
    },
}

/// Parameters of one call, in the EC2 flattened form (`InstanceId.1`, `Filter.1.Name`, …).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn new() -> Self {
        Params::default()
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.push((name.into(), value.into()));
        self
    }

    /// `prefix.1`, `prefix.2`, … (EC2 numbers from 1).
    pub fn list<S: AsRef<str>>(&mut self, prefix: &str, values: &[S]) -> &mut Self {
        for (i, v) in values.iter().enumerate() {
            self.set(format!("{prefix}.{}", i + 1), v.as_ref());
        }
        self
    }

    /// `Filter.N.Name` / `Filter.N.Value.M`, numbered after the filters already set.
    pub fn filter<S: AsRef<str>>(&mut self, name: &str, values: &[S]) -> &mut Self {
        let n = 1 + self
            .0
            .iter()
            .filter(|(k, _)| k.starts_with("Filter.") && k.ends_with(".Name"))
            .count();
        self.set(format!("Filter.{n}.Name"), name);
        self.list(&format!("Filter.{n}.Value"), values)
    }

    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Client {
    endpoint: Endpoint,
    credentials: Credentials,
    region: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(resolved: Resolved) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            // vireod is local; a proxy from the environment must not see its traffic.
            .proxy(None)
            .user_agent(concat!("vireo/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            endpoint: resolved.endpoint,
            credentials: resolved.credentials,
            region: resolved.region,
            agent,
        }
    }

    /// The form body of a call.
    pub fn body(action: &str, params: &Params) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.append_pair("Action", action);
        s.append_pair("Version", API_VERSION);
        for (k, v) in &params.0 {
            s.append_pair(k, v);
        }
        s.finish()
    }

    /// Calls `action` and returns the root of its response (`{action}Response`).
    pub fn call(&self, action: &str, params: &Params) -> Result<Element, CallError> {
        let body = Self::body(action, params);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let signed_extra = vec![("Content-Type".to_string(), content_type.to_string())];
        let auth = sigv4::sign(
            &self.credentials,
            &SignInput {
                method: "POST",
                host: &self.endpoint.host,
                path: &self.endpoint.path,
                query: "",
                headers: &signed_extra,
                body: body.as_bytes(),
                region: &self.region,
                service: sigv4::EC2_SERVICE,
                time: SystemTime::now(),
                content_sha256_header: false,
            },
        );
        let mut req = self
            .agent
            .post(&self.endpoint.url)
            .header("Host", &self.endpoint.host)
            .header("Content-Type", content_type);
        for (k, v) in &auth {
            req = req.header(k, v);
        }
        let url = self.endpoint.url.clone();
        let mut resp = req
            .send(body.as_bytes())
            .map_err(|e| CallError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string()
            .map_err(|e| CallError::BadResponse {
                url: url.clone(),
                status,
                detail: e.to_string(),
            })?;
        interpret(action, &url, status, &text)
    }
}

/// Turns an HTTP answer into the response root or the error it carries.
pub fn interpret(action: &str, url: &str, status: u16, text: &str) -> Result<Element, CallError> {
    let first_line = || {
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let line: String = line.chars().take(200).collect();
        if line.is_empty() {
            "empty body".to_string()
        } else {
            line
        }
    };
    let root = Element::parse(text).map_err(|e| CallError::BadResponse {
        url: url.into(),
        status,
        detail: if (200..300).contains(&status) {
            e.to_string()
        } else {
            first_line()
        },
    })?;
    if let Some(err) = root.path("Errors/Error") {
        return Err(CallError::Api {
            code: err.str("Code"),
            message: err.str("Message"),
            status,
        });
    }
    let expected = format!("{action}Response");
    if !(200..300).contains(&status) || root.name != expected {
        return Err(CallError::BadResponse {
            url: url.into(),
            status,
            detail: format!("expected <{expected}>, got <{}>", root.name),
        });
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_flatten_like_ec2() {
        let mut p = Params::new();
        p.list("InstanceId", &["i-1", "i-2"])
            .filter("instance-state-name", &["running", "stopped"])
            .filter("tag:Name", &["web"]);
        assert_eq!(
            Client::body("DescribeInstances", &p),
            "Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1&InstanceId.2=i-2&Filter.1.Name=instance-state-name&Filter.1.Value.1=running&Filter.1.Value.2=stopped&Filter.2.Name=tag%3AName&Filter.2.Value.1=web"
        );
    }

    #[test]
    fn errors_are_read_from_the_ec2_document() {
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>The instance ID 'i-1' does not exist</Message></Error></Errors><RequestID>abc</RequestID></Response>";
        match interpret("DescribeInstances", "u", 400, doc) {
            Err(CallError::Api {
                code,
                message,
                status,
            }) => {
                assert_eq!(code, "InvalidInstanceID.NotFound");
                assert_eq!(message, "The instance ID 'i-1' does not exist");
                assert_eq!(status, 400);
            }
            other => panic!("{other:?}"),
        }
        // An error document built by the server's own crate reads back the same.
        let e = vireo_ec2_api::Ec2Error::auth_failure();
        let got = interpret("X", "u", 401, &e.to_xml("r")).unwrap_err();
        assert_eq!(
            got.to_string(),
            "AuthFailure: AWS was not able to validate the provided access credentials"
        );
    }

    #[test]
    fn other_answers_are_reported_not_trusted() {
        let e = interpret("DescribeInstances", "u", 502, "<html>\nBad gateway</html>").unwrap_err();
        assert!(
            matches!(e, CallError::BadResponse { status: 502, .. }),
            "{e}"
        );
        let e = interpret("DescribeInstances", "u", 502, "upstream down\n").unwrap_err();
        assert!(e.to_string().contains("upstream down"), "{e}");
        let e = interpret(
            "DescribeInstances",
            "u",
            200,
            "<RunInstancesResponse></RunInstancesResponse>",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("expected <DescribeInstancesResponse>"),
            "{e}"
        );
        let ok = interpret(
            "RebootInstances",
            "u",
            200,
            "<RebootInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>1</requestId><return>true</return></RebootInstancesResponse>",
        )
        .unwrap();
        assert_eq!(ok.text_at("return"), Some("true"));
    }
}
