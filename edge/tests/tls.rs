//! The edge's link over TLS, against an independent TLS server: nginx terminates TLS
//! with a certificate a test CA signed and proxies to a real locator. An edge given that
//! CA with `--ca-file` registers over wss:// and hosts a session the locator placed; the
//! same edge without `--ca-file` (public roots only) refuses the certificate, says so,
//! and never registers. And with no proxy: the locator and the edge serve TLS
//! themselves (`--tls-cert/--tls-key`), the link and the clients' websockets are wss://.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use locus_serve::ServerTls;
use locus_serve::test_certs::TestCa;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;

/// An nginx terminating TLS on `port` in front of `upstream`, websockets included.
struct Nginx {
    child: Child,
    error_log: PathBuf,
}

impl Nginx {
    async fn start(dir: &Path, port: u16, cert: &Path, key: &Path, upstream: &str) -> Nginx {
        let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is installed (scripts/test installs nginx-light)");
        let root = dir.join("nginx");
        std::fs::create_dir_all(root.join("tmp")).expect("nginx dir");
        let error_log = root.join("error.log");
        let conf = root.join("nginx.conf");
        let tmp = root.join("tmp");
        std::fs::write(
            &conf,
            format!(
                r#"daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {error_log} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 300s;
        }}
    }}
}}
"#,
                root = root.display(),
                error_log = error_log.display(),
                tmp = tmp.display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .expect("write nginx.conf");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&root)
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let server = Nginx { child, error_log };
        let address = format!("127.0.0.1:{port}");
        eventually("nginx to listen", || async {
            tokio::net::TcpStream::connect(&address).await.is_ok()
        })
        .await;
        server
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "nginx error log:\n{}",
                std::fs::read_to_string(&self.error_log).unwrap_or_default()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_trusting_the_ca_registers_over_wss_and_one_that_does_not_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locator = Locator::start(&dir.path().join("locator.sqlite"), 0).await;
    let ca = TestCa::new("Locus private test CA");
    let ca_file = ca.write_cert(dir.path(), "ca.crt");
    let (cert, key) = ca.leaf(&["localhost"]).write(dir.path(), "nginx");
    let port = free_port().await;
    let _nginx = Nginx::start(dir.path(), port, &cert, &key, &locator.addr.to_string()).await;
    let locator_url = format!("https://localhost:{port}");

    // With the CA: registers through nginx over wss://, and the locator places a session
    // on it that two clients then share.
    let ca_arg = ca_file.display().to_string();
    let trusting = RtcEdge::spawn_as(
        dir.path(),
        "edge-tls",
        &locator_url,
        &["--ca-file", &ca_arg],
    )
    .await;
    eventually("the edge to register over wss://", || async {
        trusting.status().await["locator"].is_string()
    })
    .await;
    let store = open_store(&locator.db).await;
    assert!(
        store.edge("edge-tls").await.expect("store").is_some(),
        "the locator recorded the edge"
    );
    let room = create_room(locator.addr, "tls-room").await;
    assert_eq!(room["edge"]["id"], "edge-tls", "{room}");
    let session = room["session_id"].as_str().expect("session id");
    let (status, again) = http(
        locator.addr,
        "GET",
        &format!("/v1/sessions/{session}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{again}");
    let again: serde_json::Value = serde_json::from_str(&again).expect("json");
    let mut first = connect(&with_token(&room)).await;
    let mut second = connect(&with_token(&again)).await;
    presence_of(&mut first, 2).await;
    presence_of(&mut second, 2).await;
    say(&mut first, "over a locator reached by TLS").await;
    assert_eq!(
        next_data(&mut second).await,
        Message::Text("over a locator reached by TLS".into())
    );

    // Without it: the public roots do not include the test CA; the link names the
    // refused certificate and the edge never registers.
    let untrusting = RtcEdge::spawn_as(dir.path(), "edge-untrusted", &locator_url, &[]).await;
    eventually("the untrusting edge to log the refused certificate", || {
        let log = untrusting.log();
        std::future::ready(log.contains("the locator's certificate is refused"))
    })
    .await;
    let log = untrusting.log();
    assert!(log.contains("UnknownIssuer"), "{log}");
    assert!(untrusting.status().await["locator"].is_null());
    assert!(
        store.edge("edge-untrusted").await.expect("store").is_none(),
        "the locator never saw the untrusting edge"
    );
}

/// Opens a client websocket over TLS trusting only `ca_file`.
async fn connect_tls(url: &str, ca_file: &Path) -> Client {
    let config = locus_serve::tls::client_config(Some(ca_file)).expect("client TLS config");
    let opening = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(Connector::Rustls(config)),
    );
    match within("a wss:// websocket to open", opening).await {
        Ok((client, _)) => client,
        Err(e) => panic!("cannot open {url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locator_and_the_edge_serve_tls_themselves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Locus private test CA");
    let ca_file = ca.write_cert(dir.path(), "ca.crt");
    let (locator_cert, locator_key) = ca.leaf(&["localhost"]).write(dir.path(), "locator");
    let locator = Locator::start_tls(
        &dir.path().join("locator.sqlite"),
        ServerTls::load(&locator_cert, &locator_key).expect("the locator's pair"),
    )
    .await;
    let (edge_cert, edge_key) = ca.leaf(&["127.0.0.1"]).write(dir.path(), "edge");
    let paths = [&ca_file, &edge_cert, &edge_key].map(|p| p.display().to_string());
    let edge = RtcEdge::spawn_as(
        dir.path(),
        "edge-serves-tls",
        &format!("https://localhost:{}", locator.addr.port()),
        &[
            "--ca-file",
            &paths[0],
            "--tls-cert",
            &paths[1],
            "--tls-key",
            &paths[2],
        ],
    )
    .await;
    let store = open_store(&locator.db).await;
    eventually("the edge to register with the TLS locator", || async {
        store
            .edge("edge-serves-tls")
            .await
            .expect("store")
            .is_some_and(|record| record.public_url.starts_with("https://"))
    })
    .await;

    // Clients reach the edge over wss:// only.
    let url = |pid: &str| {
        format!(
            "wss://{}/v1/sessions/s-tls/ws?token={}",
            edge.addr,
            mint(&edge.id, "s-tls", pid, 300)
        )
    };
    let mut first = connect_tls(&url("a"), &ca_file).await;
    let mut second = connect_tls(&url("b"), &ca_file).await;
    presence(&mut first, &["a", "b"]).await;
    say(&mut second, "end to end over TLS").await;
    assert_eq!(
        next_data(&mut first).await,
        Message::Text("end to end over TLS".into())
    );
    let plain = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/sessions/s-tls/ws?token={}",
        edge.addr,
        mint(&edge.id, "s-tls", "c", 300)
    ))
    .await;
    assert!(plain.is_err(), "a plain websocket to a TLS edge is refused");
    let log = edge.log();
    assert!(!log.contains("ERROR"), "{log}");
}
