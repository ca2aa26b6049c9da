//! The edge's OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! Generated from the code: every route of [`crate::server::router`] is registered with
//! utoipa-axum's `routes!`, so the router and the document are built by the same calls;
//! the answer types derive their schemas. What the session websocket carries once open
//! (JSON text frames, the `{"locus":…}` frames) is in the README, not here: OpenAPI
//! describes the upgrade request only.

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::hub::{Hub, JoinQuery};

/// Every problem `type` the edge sends (`urn:locus:problem:<kind>`).
pub const PROBLEM_KINDS: &[&str] = &[
    "edge-draining",
    "edge-spool-full",
    "edge-spool-unavailable",
    "join-token-expired",
    "join-token-in-use",
    "join-token-invalid",
    "join-token-malformed",
    "join-token-missing",
    "join-token-wrong-edge",
    "join-token-wrong-session",
    "no-such-route",
    "session-ended",
    "session-full",
    "websocket-required",
];

pub use locus_serve::problem::{ProblemDoc, ProblemTypeDoc};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Locus edge",
        description = "Hosts the sessions' websockets; health, readiness, status and metrics. \
            Errors are `application/problem+json`.",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(ProblemDoc, ProblemTypeDoc))
)]
pub struct ApiDoc;

struct Additions;

/// Completes the document built from the routes: the schemas the handlers' types bring
/// are in by then, so the problem types set here are not overwritten.
pub fn finish(mut openapi: Document) -> Document {
    Additions.modify(&mut openapi);
    openapi
}

impl Modify for Additions {
    fn modify(&self, openapi: &mut Document) {
        let mut components = openapi.components.take().unwrap_or_default();
        components.add_security_scheme(
            "join_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        openapi.components = Some(components);
        locus_serve::problem::document_problem_types(openapi, PROBLEM_KINDS);
    }
}

/// `GET /v1/sessions/{id}/ws`: documented here, handled by [`crate::hub::ws_handler`].
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/ws",
    tag = "sessions",
    summary = "Join a session: the participant's websocket",
    params(
        ("id" = String, Path, description = "The session id"),
        ("token" = Option<String>, Query, description = "The join token from the locator's answer (or `Authorization: Bearer`)"),
    ),
    security((), ("join_token" = [])),
    responses(
        (status = 101, description = "Joined: switched to the websocket"),
        (status = 400, description = "Not a websocket upgrade", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No join token, or a malformed, forged or expired one", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "A token for another session or edge", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The session is full, or the token is already in use", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 410, description = "The session has ended", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The edge is draining, or cannot record the join", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn session_ws(
    hub: State<Arc<Hub>>,
    id: Path<String>,
    query: Query<JoinQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    crate::hub::ws_handler(hub, id, query, headers, ws).await
}

/// The document as served: serialized once, when the router is built.
#[derive(Debug, Clone)]
pub struct Served(axum::body::Bytes);

impl Served {
    pub fn new(openapi: &Document) -> Served {
        Served(serde_json::to_vec(openapi).unwrap_or_default().into())
    }
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document (OpenAPI 3.1)",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json(axum::Extension(Served(body)): axum::Extension<Served>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
