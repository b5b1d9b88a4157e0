//! The errors vireod's operations end in, each one an EC2 error code with a message a user can act
//! on. The API layer turns them into EC2's XML error responses.

use crate::db::DbError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_value(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterValue", message)
    }
    pub fn missing(name: &str) -> Self {
        Self::new(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }
    pub fn instance_not_found(id: &str) -> Self {
        Self::new(
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{id}' does not exist"),
        )
    }
    pub fn image_not_found(id: &str) -> Self {
        Self::new(
            "InvalidAMIID.NotFound",
            format!("The image id '[{id}]' does not exist"),
        )
    }
    pub fn incorrect_state(id: &str, state: &str, op: &str) -> Self {
        Self::new(
            "IncorrectInstanceState",
            format!(
                "The instance '{id}' is not in a state from which it can be {op}: it is {state}."
            ),
        )
    }
    pub fn capacity(message: impl Into<String>) -> Self {
        Self::new("InsufficientInstanceCapacity", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("InternalError", message)
    }
    /// The HTTP status EC2 answers this code with.
    pub fn http_status(&self) -> u16 {
        match self.code {
            "AuthFailure" | "MissingAuthenticationToken" => 401,
            "UnauthorizedOperation" => 403,
            "InternalError" | "InsufficientInstanceCapacity" => 500,
            "Unavailable" => 503,
            _ => 400,
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        tracing::error!("{e}");
        ApiError::internal(format!("vireod could not use its state database: {e}"))
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!("{e}");
        ApiError::internal(format!("vireod hit a host I/O error: {e}"))
    }
}
