//! The locator's OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! Generated from the code so it cannot drift: every route is registered through
//! utoipa-axum's `routes!` (the router and the document are built by the same calls, see
//! [`crate::api::router`]), each handler carries its `#[utoipa::path]` (statuses,
//! headers, security), and the answer types derive their schemas. What is declared here
//! is what no handler owns: every problem `type` URI (the answer and its schema are
//! `locus_serve::problem`'s), the refusals many routes share ([`AdminRefusals`],
//! [`RateLimited`]), the security schemes and the `Retry-After` header.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, OpenApi as Document};
use utoipa::{Modify, OpenApi};

/// Every problem `type` this server sends (`urn:locus:problem:<kind>`), besides axum's
/// refusals (`locus_serve::problem::REJECTION_KINDS`). The test in `tests/openapi.rs`
/// checks the source's `Problem` constructors against this list.
pub const PROBLEM_KINDS: &[&str] = &[
    "admin-disabled",
    "bad-audit-query",
    "bad-body",
    "bad-forwarded-header",
    "bad-ip",
    "bad-query",
    "bad-room-key",
    "cross-site",
    "csrf-header-missing",
    "database-unavailable",
    "edge-not-connected",
    "edge-not-found",
    "edge-reconnecting",
    "internal",
    "no-edge-available",
    "no-such-action",
    "no-such-asset",
    "no-such-route",
    "rate-limited",
    "session-ended",
    "session-not-found",
    "unauthorized",
    "unknown-region",
    "websocket-required",
];

pub use locus_serve::problem::{BodyTooLarge, ProblemDoc, ProblemTypeDoc};

/// The refusals every admin API route can answer before it looks at the request: the
/// token or the page session is checked first (`crate::admin::require_admin`).
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)] // Describes what `require_admin` answers.
pub enum AdminRefusals {
    #[response(
        status = 401,
        description = "No or wrong admin token (`unauthorized`)",
        content_type = "application/problem+json"
    )]
    Unauthorized(ProblemDoc),
    #[response(
        status = 403,
        description = "The admin API is disabled (`admin-disabled`), or a change made with the page's cookie lacks its CSRF header (`csrf-header-missing`)",
        content_type = "application/problem+json"
    )]
    Forbidden(ProblemDoc),
    #[response(
        status = 429,
        description = "Too many wrong admin tokens from this address (`rate-limited`): even the right one is refused until `Retry-After`",
        content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
    )]
    TooManyFailures(ProblemDoc),
    #[response(
        status = 503,
        description = "The sign-in or the database cannot be reached now, or the edge acted on is not connected here",
        content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
    )]
    Unavailable(ProblemDoc),
}

/// A client over its request limit (`limits:` in regions.yaml).
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)] // Describes what `crate::rate_limit` answers.
pub enum RateLimited {
    #[response(
        status = 429,
        description = "Too many requests from this address (`rate-limited`, `limits:` in regions.yaml)",
        content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
    )]
    TooMany(ProblemDoc),
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Locus locator",
        description = "Sends each client of a real-time session to a good edge near it: \
            locate, sessions, TURN credentials, the admin API and operations routes. \
            Errors are `application/problem+json`; 503s carry `Retry-After`.",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(ProblemDoc, ProblemTypeDoc)),
    tags(
        (name = "client", description = "What clients call"),
        (name = "admin", description = "Admin API and page (`LOCATOR_ADMIN_TOKEN`)"),
        (name = "edge", description = "The edges' link (`LOCATOR_EDGE_TOKEN`)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "pages", description = "HTML pages and their assets")
    )
)]
pub struct ApiDoc;

/// Security schemes and the problem types, which no derive can express.
struct Additions;

/// Completes the document built from the routes: the schemas the handlers' types bring
/// are in by then, so the problem types set here are not overwritten.
pub fn finish(mut openapi: Document) -> Document {
    Additions.modify(&mut openapi);
    openapi
}

impl Modify for Additions {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi
            .components
            .take()
            .unwrap_or_else(|| ComponentsBuilder::new().build());
        let mut components = components;
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "edge_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        openapi.components = Some(components);
        locus_serve::problem::document_problem_types(openapi, PROBLEM_KINDS);
    }
}

/// The document as served: serialized once, when the router is built.
#[derive(Debug, Clone)]
pub struct Served(axum::body::Bytes);

impl Served {
    pub fn new(openapi: &Document) -> Served {
        // A document of strings and maps always serializes.
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
pub async fn openapi_json(
    axum::Extension(Served(body)): axum::Extension<Served>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
