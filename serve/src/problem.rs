//! HTTP errors as `application/problem+json` (RFC 9457), shared by the locator and the
//! edge: the answer ([`Problem`]), its OpenAPI schema ([`ProblemDoc`], [`ProblemTypeDoc`],
//! completed by [`document_problem_types`] from each server's list of kinds), and the one
//! place where axum's own refusals become problems ([`rejections_as_problems`]).
//!
//! The client sees a title and a detail written for it; internal causes are logged with
//! the request, never sent.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::OpenApi as Document;

/// An HTTP error answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// Short, stable identifier, e.g. `session-ended` (becomes `urn:locus:problem:…`).
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Seconds the client should wait before retrying (429s and 503s).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// A problem titled with the status's reason phrase (`Conflict`, `Gone`…).
    pub fn with_status(
        status: StatusCode,
        kind: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem::new(
            status,
            kind,
            status.canonical_reason().unwrap_or("Error"),
            detail,
        )
    }

    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, kind, "Bad request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    pub fn not_found(kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, kind, "Not found", detail)
    }

    pub fn unavailable(kind: &'static str, detail: impl Into<String>, retry_after: u64) -> Problem {
        Problem {
            retry_after: Some(retry_after),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                kind,
                "Service unavailable",
                detail,
            )
        }
    }

    /// A client over its request limit.
    pub fn too_many_requests(detail: impl Into<String>, retry_after: u64) -> Problem {
        Problem {
            retry_after: Some(retry_after),
            ..Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                detail,
            )
        }
    }

    /// An internal failure: logs `cause` and tells the client only that it may retry.
    pub fn internal(operation: &str, cause: &dyn std::fmt::Display) -> Problem {
        tracing::error!(%cause, operation, "request failed");
        Problem::unavailable(
            "internal",
            format!("the server could not {operation}; retry shortly"),
            1,
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Wire {
            kind: format!("urn:locus:problem:{}", self.kind),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The problem media type.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The problem kinds of axum's own refusals ([`rejections_as_problems`]): every server
/// lists them among its kinds.
pub const REJECTION_KINDS: &[&str] = &[
    "body-too-large",
    "method-not-allowed",
    "unprocessable-body",
    "unsupported-media-type",
];

/// Middleware (`axum::middleware::map_response`) that turns the answers axum writes
/// itself (a method the route does not have: 405 with an empty body; a body over the
/// limit: 413 in plain text; an extractor's 415/422) into problems, keeping their headers
/// (`Allow`). Answers already written as problems pass unchanged. Hyper answers 414
/// (URI too long) and 431 (headers too large) before any of this runs; they cannot be
/// changed and have no body.
pub async fn rejections_as_problems(response: Response) -> Response {
    let status = response.status();
    let (kind, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            "this route does not take that method: the Allow header lists the ones it takes",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body-too-large",
            "the request body is over the limit (2 MB): send a smaller one",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported-media-type",
            "the body's Content-Type is not one this route takes",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => (
            "unprocessable-body",
            "the body does not have the fields this route takes",
        ),
        _ => return response,
    };
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if is_problem {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let problem = Problem::with_status(status, kind, detail).into_response();
    let (problem_parts, body) = problem.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(problem_parts.headers);
    Response::from_parts(parts, Body::new(body))
}

/// An error answer (`application/problem+json`, RFC 9457). 429s and 503s carry
/// `Retry-After`. Describes what [`Problem`] writes.
#[derive(Debug, ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)]
pub struct ProblemDoc {
    /// `urn:locus:problem:<kind>`: one of the `ProblemType` values.
    #[schema(rename = "type", value_type = ProblemTypeDoc)]
    kind: String,
    /// Short summary of the status (`Bad request`, `Not found`…).
    title: String,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong and what to do, for people.
    detail: String,
}

/// Problem type URIs (the values are set by [`document_problem_types`]).
#[derive(Debug, ToSchema)]
#[schema(as = ProblemType)]
#[allow(dead_code)]
pub struct ProblemTypeDoc(String);

/// Sets the `ProblemType` schema of `openapi` to the `type` URIs of `kinds` and of
/// [`REJECTION_KINDS`]. Call it once the routes' schemas are in, so nothing overwrites it.
pub fn document_problem_types(openapi: &mut Document, kinds: &[&str]) {
    let mut all: Vec<&str> = kinds.iter().chain(REJECTION_KINDS).copied().collect();
    all.sort_unstable();
    all.dedup();
    let uris: Vec<String> = all
        .iter()
        .map(|k| format!("urn:locus:problem:{k}"))
        .collect();
    let components = openapi.components.get_or_insert_with(Default::default);
    components.schemas.insert(
        "ProblemType".into(),
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(uris))
            .description(Some("The problem's `type`: `urn:locus:problem:<kind>`."))
            .into(),
    );
}

/// The answer to a request whose body is over the limit (413), for the `responses` of
/// every operation that takes a body.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum BodyTooLarge {
    #[response(
        status = 413,
        description = "The body is over the limit (`body-too-large`)",
        content_type = "application/problem+json"
    )]
    TooLarge(ProblemDoc),
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("problem json")
    }

    #[tokio::test]
    async fn axum_refusals_become_problems_and_keep_their_headers() {
        let refused = Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET,HEAD")
            .body(Body::empty())
            .expect("response");
        let answer = rejections_as_problems(refused).await;
        assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.headers()[header::ALLOW], "GET,HEAD");
        assert_eq!(answer.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = body_of(answer).await;
        assert_eq!(body["type"], "urn:locus:problem:method-not-allowed");
        assert_eq!(body["status"], 405);
    }

    #[tokio::test]
    async fn problems_and_other_answers_pass_unchanged() {
        let own = Problem::with_status(StatusCode::UNPROCESSABLE_ENTITY, "custom", "x");
        let body = body_of(rejections_as_problems(own.into_response()).await).await;
        assert_eq!(body["type"], "urn:locus:problem:custom");
        let ok = rejections_as_problems("fine".into_response()).await;
        assert_eq!(ok.status(), StatusCode::OK);
    }

    #[test]
    fn problem_types_list_the_rejections_too() {
        let mut doc = Document::default();
        document_problem_types(&mut doc, &["zeta", "alpha", "zeta"]);
        let json = serde_json::to_value(&doc).expect("json");
        let values = &json["components"]["schemas"]["ProblemType"]["enum"];
        let values: Vec<&str> = values
            .as_array()
            .expect("enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(values.first(), Some(&"urn:locus:problem:alpha"));
        assert!(values.contains(&"urn:locus:problem:method-not-allowed"));
        assert_eq!(values.iter().filter(|v| v.ends_with(":zeta")).count(), 1);
    }
}
