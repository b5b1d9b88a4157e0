//! The web console vireod serves at `/console` on its API listener (docs/console.md).
//!
//! Three parts:
//!
//! - the page itself: plain HTML, CSS and JavaScript built into the binary (`assets/`), served
//!   with a strict Content-Security-Policy (scripts and styles from this origin only, no inline
//!   code, nothing from elsewhere);
//! - [`session`]: sign-in with an access key id and its secret, checked against the same key
//!   store SigV4 verifies requests with, a session cookie (HttpOnly, SameSite=Strict, Secure
//!   under TLS, an expiry) and the CSRF checks every change passes (a per-session token in a
//!   header and the request's Origin);
//! - [`views`]: a small JSON API under `/console/api/`, with typed requests and answers, whose
//!   handlers call [`Service`]: the console has no rules of its own about what an action may do.
//!
//! Everything a tenant or a guest controls (tag values, names, console output) is sent as JSON
//! strings and put into the page with `textContent`, never as markup.

mod session;
mod views;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::service::Service;

pub use session::Sessions;

/// The console's settings.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// How long a session lasts after sign-in.
    pub session_ttl: Duration,
    /// Whether the console is reached over TLS: session cookies get `Secure` and the Origin a
    /// change must come from is `https://HOST`. vireod serves plain HTTP today, so `false`.
    pub tls: bool,
    /// The most sessions kept at once; a sign-in beyond it first drops expired ones, then the
    /// oldest.
    pub max_sessions: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(8 * 3600),
            tls: false,
            max_sessions: 10_000,
        }
    }
}

/// What every console handler gets: the service, the sessions and the settings.
#[derive(Clone)]
pub struct Console {
    svc: Service,
    sessions: Arc<Sessions>,
    cfg: Arc<ConsoleConfig>,
}

/// The console's routes (`/console`, its assets and `/console/api/...`), for merging into the
/// API's router.
pub fn router<S>(svc: Service, cfg: ConsoleConfig) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let console = Console {
        svc,
        sessions: Arc::new(Sessions::new(cfg.session_ttl, cfg.max_sessions)),
        cfg: Arc::new(cfg),
    };
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/app.js", get(app_js))
        .route("/console/style.css", get(style_css))
        .route("/console/api/signin", post(session::sign_in))
        .route("/console/api/signout", post(session::sign_out))
        .route("/console/api/session", get(session::current))
        .route(
            "/console/api/instances",
            get(views::list_instances).post(views::launch),
        )
        .route(
            "/console/api/instances/action",
            post(views::instance_action),
        )
        .route("/console/api/instances/{id}", get(views::instance_detail))
        .route(
            "/console/api/instances/{id}/console",
            get(views::console_output),
        )
        .route("/console/api/tags", post(views::set_tags))
        .route("/console/api/tags/delete", post(views::delete_tags))
        .route("/console/api/images", get(views::list_images))
        .route(
            "/console/api/instance-types",
            get(views::list_instance_types),
        )
        .route(
            "/console/api/key-pairs",
            get(views::list_key_pairs).post(views::create_key_pair),
        )
        .route(
            "/console/api/key-pairs/delete",
            post(views::delete_key_pair),
        )
        .route("/console/api/vpcs", get(views::list_vpcs))
        .route("/console/api/subnets", get(views::list_subnets))
        .route(
            "/console/api/security-groups",
            get(views::list_security_groups),
        )
        .route("/console/{*rest}", axum::routing::any(not_found))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// The page's policy: everything from this origin only, no inline script or style, no plugins,
/// no framing, forms and requests to this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        // Sessions, CSRF tokens and private keys must not be kept in any cache.
        ("cache-control", "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn not_found() -> Response {
    ConsoleError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "there is no such console page",
    )
    .into_response()
}

/// An error the console's API answers with: an HTTP status and a JSON body `{code, message}`
/// (the service's EC2 error code and message where the service refused).
#[derive(Debug, Clone)]
pub struct ConsoleError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ConsoleError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status,
            code: e.code.to_string(),
            message: e.message,
        }
    }
}

impl From<vireo_ec2_api::Ec2Error> for ConsoleError {
    fn from(e: vireo_ec2_api::Ec2Error) -> Self {
        let status = StatusCode::from_u16(e.http_status).unwrap_or(StatusCode::BAD_REQUEST);
        Self {
            status,
            code: e.code,
            message: e.message,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            code: &'a str,
            message: &'a str,
        }
        let body = Body {
            code: &self.code,
            message: &self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}
