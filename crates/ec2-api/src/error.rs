//! EC2 error responses.
//!
//! EC2 answers every failed call with an HTTP status and a small XML document:
//!
//! ```xml
//! <?xml version="1.0" encoding="UTF-8"?>
//! <Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors><RequestID>…</RequestID></Response>
//! ```
//!
//! The root is `Response` (not `ErrorResponse` as in the other Query services) and the request id
//! element is spelled `RequestID`. botocore's EC2 parser reads `Errors/Error/Code` and
//! `Errors/Error/Message` from it and raises `ClientError` with that code, so the code strings
//! below are the ones EC2 itself returns: scripts written against EC2 match on them.
//!
//! Client errors use 400, the authentication failures 401, and the server-side codes
//! (`InternalError`, `InsufficientInstanceCapacity`, `Unavailable`) the 500 series, as EC2 does.

use crate::xml::escape_text;

/// One EC2 error: the code clients match on, a one-line message for people, and the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub code: String,
    pub message: String,
    pub http_status: u16,
}

impl Ec2Error {
    /// Any code; prefer the named constructors so codes stay spelled as EC2 spells them.
    pub fn new(code: impl Into<String>, message: impl Into<String>, http_status: u16) -> Self {
        Ec2Error {
            code: code.into(),
            message: one_line(message.into()),
            http_status,
        }
    }

    fn client(code: &str, message: impl Into<String>) -> Self {
        Self::new(code, message, 400)
    }

    // --- authentication (see `sigv4::AuthError` for when each is used) ---

    /// Bad signature, unknown access key, wrong scope: EC2 says only this, on purpose, so a
    /// caller cannot tell an unknown key from a wrong secret.
    pub fn auth_failure() -> Self {
        Self::new(
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
            401,
        )
    }
    pub fn request_expired(message: impl Into<String>) -> Self {
        Self::client("RequestExpired", message)
    }
    pub fn missing_authentication_token() -> Self {
        Self::new(
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
            401,
        )
    }
    /// The Authorization header or presigned parameters are present but malformed.
    pub fn incomplete_signature(message: impl Into<String>) -> Self {
        Self::client("IncompleteSignature", message)
    }

    // --- request shape ---

    pub fn invalid_action(action: &str) -> Self {
        Self::client(
            "InvalidAction",
            format!("The action {action} is not valid for this web service."),
        )
    }
    pub fn missing_action() -> Self {
        Self::client(
            "MissingAction",
            "The request must contain the parameter Action",
        )
    }
    pub fn malformed_query_string(message: impl Into<String>) -> Self {
        Self::client("MalformedQueryString", message)
    }
    pub fn missing_parameter(name: &str) -> Self {
        Self::client(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }
    pub fn invalid_parameter_value(message: impl Into<String>) -> Self {
        Self::client("InvalidParameterValue", message)
    }
    pub fn invalid_parameter_combination(message: impl Into<String>) -> Self {
        Self::client("InvalidParameterCombination", message)
    }
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::client("InvalidParameter", message)
    }
    pub fn unsupported_operation(message: impl Into<String>) -> Self {
        Self::client("UnsupportedOperation", message)
    }
    pub fn invalid_pagination_token(token: &str) -> Self {
        Self::client(
            "InvalidPaginationToken",
            format!("Invalid pagination token: {token}"),
        )
    }
    pub fn idempotent_parameter_mismatch(client_token: &str) -> Self {
        Self::client(
            "IdempotentParameterMismatch",
            format!(
                "Arguments on this idempotent request are inconsistent with arguments used in previous request(s) with client token {client_token}"
            ),
        )
    }
    /// EC2 has no `InvalidInstanceType` code: an unknown type is an `InvalidParameterValue`.
    pub fn invalid_instance_type(instance_type: &str) -> Self {
        Self::invalid_parameter_value(format!("Invalid value '{instance_type}' for InstanceType."))
    }
    /// EC2 limits user data to 16 KiB (before base64) and reports it as `InvalidParameterValue`.
    pub fn user_data_too_large(len: usize, limit: usize) -> Self {
        Self::invalid_parameter_value(format!(
            "User data is limited to {limit} bytes; got {len} bytes."
        ))
    }

    // --- resources ---

    /// `InvalidID`: a resource id of a kind without its own `.Malformed` code.
    pub fn invalid_id(id: &str) -> Self {
        Self::client("InvalidID", format!("The ID '{id}' is not valid"))
    }
    pub fn invalid_instance_id_malformed(id: &str) -> Self {
        Self::client(
            "InvalidInstanceID.Malformed",
            format!("Invalid id: \"{id}\""),
        )
    }
    pub fn invalid_instance_id_not_found(id: &str) -> Self {
        Self::client(
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{id}' does not exist"),
        )
    }
    pub fn invalid_ami_id_malformed(id: &str) -> Self {
        Self::client("InvalidAMIID.Malformed", format!("Invalid id: \"{id}\""))
    }
    pub fn invalid_ami_id_not_found(id: &str) -> Self {
        Self::client(
            "InvalidAMIID.NotFound",
            format!("The image id '[{id}]' does not exist"),
        )
    }
    pub fn invalid_ami_id_unavailable(id: &str) -> Self {
        Self::client(
            "InvalidAMIID.Unavailable",
            format!("The image id '[{id}]' is no longer available"),
        )
    }
    pub fn incorrect_instance_state(message: impl Into<String>) -> Self {
        Self::client("IncorrectInstanceState", message)
    }

    // --- server side ---

    /// EC2 lists `InsufficientInstanceCapacity` among its server errors, with a 500 status.
    pub fn insufficient_instance_capacity(message: impl Into<String>) -> Self {
        Self::new("InsufficientInstanceCapacity", message, 500)
    }
    pub fn internal_error() -> Self {
        Self::new(
            "InternalError",
            "An internal error has occurred. Please try again later.",
            500,
        )
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new("Unavailable", message, 503)
    }

    /// The error document EC2 sends, as botocore and the AWS CLI parse it.
    pub fn to_xml(&self, request_id: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
            escape_text(&self.code),
            escape_text(&self.message),
            escape_text(request_id)
        )
    }
}

/// Messages are shown as one line by the CLI and logged as one line by the server; a value quoted
/// into a message (a bad id, a bad parameter) must not break that.
fn one_line(s: String) -> String {
    if s.contains(['\n', '\r']) {
        s.replace(['\n', '\r'], " ")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_document_has_the_ec2_shape() {
        let e = Ec2Error::invalid_instance_id_not_found("i-0123456789abcdef0");
        assert_eq!(e.http_status, 400);
        assert_eq!(
            e.to_xml("req-1"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>The instance ID 'i-0123456789abcdef0' does not exist</Message></Error></Errors><RequestID>req-1</RequestID></Response>"
        );
    }

    #[test]
    fn messages_are_escaped_and_kept_on_one_line() {
        let e = Ec2Error::invalid_instance_id_malformed("<i-&>\nx");
        assert_eq!(e.message, "Invalid id: \"<i-&> x\"");
        let xml = e.to_xml("r");
        assert!(
            xml.contains("<Message>Invalid id: \"&lt;i-&amp;&gt; x\"</Message>"),
            "{xml}"
        );
    }

    #[test]
    fn statuses_follow_ec2() {
        assert_eq!(Ec2Error::auth_failure().http_status, 401);
        assert_eq!(Ec2Error::missing_authentication_token().http_status, 401);
        assert_eq!(Ec2Error::request_expired("x").http_status, 400);
        assert_eq!(Ec2Error::internal_error().http_status, 500);
        assert_eq!(
            Ec2Error::insufficient_instance_capacity("x").http_status,
            500
        );
        assert_eq!(
            Ec2Error::invalid_instance_type("t9.huge").code,
            "InvalidParameterValue"
        );
        assert_eq!(
            Ec2Error::user_data_too_large(20000, 16384).code,
            "InvalidParameterValue"
        );
        assert_eq!(
            Ec2Error::invalid_ami_id_malformed("ami-x").to_string(),
            "InvalidAMIID.Malformed: Invalid id: \"ami-x\""
        );
    }
}
