//! The edge's `GET /openapi.json` over a real socket: OpenAPI 3.1, every route the router
//! answers documented, every documented operation routed.

mod common;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 request (no client library among the edge's dev-dependencies).
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    within("the answer", stream.read_to_end(&mut answer))
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, text)
}

#[tokio::test]
async fn the_document_is_served_and_covers_every_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = format!("http://127.0.0.1:{}", free_port().await);
    let edge = Edge::start("edge-a", vec![nowhere], dir.path(), |_| {}).await;
    let (status, text) = request(edge.addr, "GET", "/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{text}"
    );
    let body = text.split_once("\r\n\r\n").expect("body").1;
    let doc: Value = serde_json::from_str(body).expect("json");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1."))
    );
    assert_eq!(
        doc,
        serde_json::to_value(locus_edge::server::openapi()).expect("serializes")
    );
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/readyz",
            "/v1/sessions/{id}/ws",
            "/v1/status"
        ]
    );
    for path in paths {
        let concrete = path.replace("{id}", "s1");
        let (status, text) = request(edge.addr, "GET", &concrete).await;
        assert_ne!(status, 405, "{path}");
        assert!(
            !(status == 404 && text.contains("urn:locus:problem:no-such-route")),
            "{path} is documented but not routed"
        );
    }
    // Routes are registered only through `routes!` (so each is in the document).
    let server = include_str!("../src/server.rs");
    assert!(
        !server.contains(".route(\""),
        "a route without its operation"
    );
}

/// A method a route lacks is answered as a problem too (axum's own empty 405 is rewritten
/// in one place, locus_serve::problem::rejections_as_problems), keeping `Allow`.
#[tokio::test]
async fn a_wrong_method_is_a_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = format!("http://127.0.0.1:{}", free_port().await);
    let edge = Edge::start("edge-a", vec![nowhere], dir.path(), |_| {}).await;
    let (status, text) = request(edge.addr, "DELETE", "/healthz").await;
    assert_eq!(status, 405, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{text}"
    );
    assert!(lower.contains("allow: get,head"), "{text}");
    let body = text.split_once("\r\n\r\n").expect("body").1;
    let problem: Value = serde_json::from_str(body).expect("problem json");
    assert_eq!(problem["type"], "urn:locus:problem:method-not-allowed");
    assert_eq!(problem["status"], 405);
}
