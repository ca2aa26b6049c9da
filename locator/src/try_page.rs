//! The "try it" page: `GET /try` lets a person join a room, see who is there, chat, turn
//! on camera and microphone (tiles of everyone's, through the edge's WebRTC), and watch
//! the client library's state (edge, region, why, reconnecting…) while edges fail.
//!
//! Its files live in `locator/assets/` and are compiled in with `include_str!` like the
//! admin page's: no CDN, nothing from the internet. `locus-client.js` there is the built
//! client library (`clients/js`, `npm run build`, then `npm run page` copies it); a test
//! of `clients/js` fails when the committed copy differs from a fresh build, so the page
//! never runs a stale library. The page needs no sign-in: it does what any client of the
//! public API does (`POST /v1/sessions`, `GET /v1/sessions/{id}`, the edge websocket).
//!
//! Content-Security-Policy: scripts only from the locator; `connect-src` allows `ws:`
//! and `wss:` because the session websocket goes to the edge, another origin. Media
//! needs nothing more: the tiles show `MediaStream`s (`srcObject`), not fetched URLs.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use locus_serve::problem::Problem;

const PAGE_HTML: &str = include_str!("../assets/try.html");
const TRY_CSS: &str = include_str!("../assets/try.css");
const TRY_JS: &str = include_str!("../assets/try.js");
const CLIENT_JS: &str = include_str!("../assets/locus-client.js");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The page's routes (merged into [`crate::api::router`]).
pub fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(asset))
}

#[utoipa::path(
    get,
    path = "/try",
    operation_id = "try_page",
    tag = "pages",
    summary = "The try page: two browser tabs in one session",
    responses((status = 200, description = "The page", content_type = "text/html; charset=utf-8", body = String)),
)]

async fn page() -> Response {
    let mut response = (StatusCode::OK, PAGE_HTML).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[utoipa::path(
    get,
    path = "/try/assets/{name}",
    operation_id = "try_asset",
    tag = "pages",
    params(("name" = String, Path, description = "The file name")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/css; charset=utf-8"),
            (String = "text/javascript; charset=utf-8"),
            (String = "image/svg+xml"),
        )),
        (status = 404, description = "No such file", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn asset(Path(name): Path<String>) -> Response {
    let (content_type, body) = match name.as_str() {
        "try.css" => ("text/css; charset=utf-8", TRY_CSS),
        "try.js" => ("text/javascript; charset=utf-8", TRY_JS),
        "locus-client.js" => ("text/javascript; charset=utf-8", CLIENT_JS),
        "favicon.svg" => ("image/svg+xml", FAVICON_SVG),
        _ => {
            return Problem::not_found("no-such-asset", "no such file in the try page's assets")
                .into_response();
        }
    };
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{HeaderMap, Request};
    use tower_service::Service;

    use super::*;

    async fn get(path: &str) -> (StatusCode, HeaderMap, String) {
        let mut router = routes::<()>().split_for_parts().0;
        let response = router
            .call(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_page_loads_its_script_and_the_library_from_the_locator_only() {
        let (status, headers, body) = get("/try").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("/try/assets/try.js"));
        let csp = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii");
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self' ws: wss:"));

        let (status, headers, body) = get("/try/assets/try.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .starts_with("text/javascript")
        );
        assert!(body.contains("from \"./locus-client.js\""));

        let (status, _, body) = get("/try/assets/locus-client.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("export class LocusClient"));

        let (status, _, _) = get("/try/assets/../../etc/passwd").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, body) = get("/try/assets/nope.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no-such-asset"));
    }
}
