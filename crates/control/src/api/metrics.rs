//! `GET /metrics`: the unauthenticated, read-only Prometheus endpoint (scrapers cannot sign
//! requests with SigV4). What it serves is gathered by [`crate::metrics`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};

use crate::service::Service;

pub(super) async fn handler(State(svc): State<Service>) -> HttpResponse {
    match crate::metrics::collect(&svc).await {
        Ok(text) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain; charset=utf-8")],
            format!("vireod cannot read its state: {}\n", e.message),
        )
            .into_response(),
    }
}
