//! HTTP errors as `application/problem+json` (RFC 9457). The client sees a title and a
//! detail written for it; internal causes are logged with the request, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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
struct Body<'a> {
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

    /// A client over its request limit (`limits:` in regions.yaml).
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
            format!("the locator could not {operation}; retry shortly"),
            1,
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Body {
            kind: format!("urn:locus:problem:{}", self.kind),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
