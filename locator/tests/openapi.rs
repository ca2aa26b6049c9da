//! `GET /openapi.json` over a real socket: an OpenAPI 3.1 document that covers every
//! route the router answers (and only those), every problem type the source can send,
//! the security schemes, and `Retry-After` on every 503 problem.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use support::*;

/// Every `(method, path)` of the document.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete", "head", "options"] {
            if item.get(method).is_some() {
                out.push((method.to_string(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_document_is_served_and_is_openapi_3_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let response = http()
        .get(loc.url("/openapi.json"))
        .send()
        .await
        .expect("openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "content type"
    );
    let doc: Value = response.json().await.expect("json");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    // What is served is what the code builds.
    let built = serde_json::to_value(locus_locator::api::openapi()).expect("serializes");
    assert_eq!(doc, built);
    let schemes = &doc["components"]["securitySchemes"];
    for scheme in ["admin_token", "edge_token"] {
        assert_eq!(schemes[scheme]["scheme"], "bearer", "{scheme}");
    }
    loc.stop().await;
}

/// Every documented operation is routed (no `no-such-route` 404, no 405), and a path
/// that is not documented is not routed: with every route registered through
/// utoipa-axum's `routes!`, the two cannot drift; this checks it end to end.
#[tokio::test]
async fn the_document_covers_every_route_and_only_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let doc = serde_json::to_value(locus_locator::api::openapi()).expect("serializes");
    let client = raw_client();
    let ops = operations(&doc);
    assert!(ops.len() >= 20, "{ops:?}");
    for (method, path) in &ops {
        let concrete = path
            .replace("{id}", "x")
            .replace("{action}", "drain")
            .replace("{name}", "x");
        let request = match method.as_str() {
            "get" => client.get(loc.url(&concrete)),
            "post" => client.post(loc.url(&concrete)),
            other => panic!("undocumented method {other}"),
        };
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            !(status == 404 && body.contains("urn:locus:problem:no-such-route")),
            "{method} {path} is documented but not routed"
        );
    }
    // The source registers routes only through `routes!` (a plain `.route(` would be a
    // route the document does not know).
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in source_files(&src) {
        let text = std::fs::read_to_string(&file).expect("source");
        assert!(
            !text.contains(".route(\"") && !text.contains(".route(locus_protocol"),
            "{} registers a route without its OpenAPI operation: use `.routes(routes!(handler))`",
            file.display()
        );
    }
    loc.stop().await;
}

fn source_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(source_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Problem kinds the source can send: the string after `Problem::<constructor>(` (or
/// after the status of `Problem::new(`).
fn problem_kinds_in_source() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut kinds = BTreeSet::new();
    for file in source_files(&src) {
        let text = std::fs::read_to_string(&file).expect("source");
        for ctor in [
            "Problem::new(",
            "Problem::bad_request(",
            "Problem::not_found(",
            "Problem::unavailable(",
        ] {
            for (at, _) in text.match_indices(ctor) {
                let rest = &text[at + ctor.len()..];
                // The first string literal of the call is the kind.
                let Some(open) = rest.find('"') else { continue };
                let before = &rest[..open];
                if before.contains(')') && !before.contains("StatusCode::") {
                    continue; // a call without a literal kind (a variable)
                }
                let literal = &rest[open + 1..];
                let Some(close) = literal.find('"') else {
                    continue;
                };
                let kind = &literal[..close];
                if kind.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !kind.is_empty() {
                    kinds.insert(kind.to_string());
                }
            }
        }
    }
    // Sent by the shared constructors and middleware of locus_serve::problem.
    kinds.insert("unauthorized".into());
    kinds.insert("internal".into());
    kinds.insert("rate-limited".into());
    kinds.extend(
        locus_serve::problem::REJECTION_KINDS
            .iter()
            .map(|k| k.to_string()),
    );
    kinds
}

#[test]
fn every_problem_type_is_documented() {
    let doc = serde_json::to_value(locus_locator::api::openapi()).expect("serializes");
    let documented: BTreeSet<String> = doc["components"]["schemas"]["ProblemType"]["enum"]
        .as_array()
        .expect("ProblemType enum")
        .iter()
        .filter_map(|v| v.as_str())
        .map(|v| {
            v.strip_prefix("urn:locus:problem:")
                .expect("urn")
                .to_string()
        })
        .collect();
    let sent = problem_kinds_in_source();
    let missing: Vec<&String> = sent.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "problem types not documented: {missing:?}"
    );
    let stale: Vec<&String> = documented.difference(&sent).collect();
    assert!(
        stale.is_empty(),
        "documented problem types never sent: {stale:?}"
    );
}

#[test]
fn every_503_problem_documents_retry_after() {
    let doc = serde_json::to_value(locus_locator::api::openapi()).expect("serializes");
    for (method, path) in operations(&doc) {
        let response = &doc["paths"][&path][&method]["responses"]["503"];
        if response["content"]
            .get("application/problem+json")
            .is_some()
        {
            assert!(
                response["headers"].get("Retry-After").is_some(),
                "{method} {path}: 503 without Retry-After"
            );
        }
    }
}

/// Operation ids name generated client methods: two handlers of the same name in two
/// modules (the admin page's and the try page's `page`, `asset`) must not share one
/// (openapi-spec-validator refused the document for it).
#[test]
fn operation_ids_are_unique() {
    let doc = serde_json::to_value(locus_locator::api::openapi()).expect("serializes");
    let mut seen = BTreeSet::new();
    for (method, path) in operations(&doc) {
        let id = doc["paths"][&path][&method]["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no operationId"))
            .to_string();
        assert!(
            seen.insert(id.clone()),
            "{method} {path}: operationId {id} used twice"
        );
    }
}

/// With the request limits lifted in the other tests (NO_REQUEST_LIMITS), the 429 the
/// limited routes send is checked here: documented, as a problem, with `Retry-After`.
#[test]
fn rate_limited_routes_document_429_with_retry_after() {
    let doc = serde_json::to_value(locus_locator::api::openapi()).expect("serializes");
    for (method, path) in [("get", "/v1/locate"), ("post", "/v1/sessions")] {
        let response = &doc["paths"][path][method]["responses"]["429"];
        assert!(
            response["content"]
                .get("application/problem+json")
                .is_some(),
            "{method} {path}: 429 not documented as a problem: {response}"
        );
        assert!(
            response["headers"].get("Retry-After").is_some(),
            "{method} {path}: 429 without Retry-After"
        );
    }
}

/// axum's own refusals (a method the route lacks, a body over the limit) are problems
/// too, made in one place (locus_serve::problem::rejections_as_problems), and the 413 of
/// the routes that take a body is documented.
#[tokio::test]
async fn axum_refusals_are_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let client = raw_client();
    let response = client.put(loc.url("/v1/locate")).send().await.expect("put");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.expect("problem");
    assert_eq!(body["type"], "urn:locus:problem:method-not-allowed");
    let response = client
        .post(loc.url("/v1/sessions"))
        .header("content-type", "application/json")
        .body(vec![b' '; 3 << 20])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.expect("problem");
    assert_eq!(body["type"], "urn:locus:problem:body-too-large");
    let doc = serde_json::to_value(locus_locator::api::openapi()).expect("serializes");
    for path in ["/v1/sessions", "/v1/admin/edges/{id}/{action}"] {
        assert!(
            doc["paths"][path]["post"]["responses"]["413"]["content"]
                .get("application/problem+json")
                .is_some(),
            "POST {path}: 413 not documented"
        );
    }
    loc.stop().await;
}
