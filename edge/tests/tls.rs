//! The edge's link over TLS, against an independent TLS server: nginx terminates TLS
//! with a certificate a test CA signed and proxies to a real locator. An edge given that
//! CA with `--ca-file` registers over wss:// and hosts a session the locator placed; the
//! same edge without `--ca-file` (public roots only) refuses the certificate, says so,
//! and never registers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use locus_serve::test_certs::TestCa;

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
        tokio_tungstenite::tungstenite::Message::Text("over a locator reached by TLS".into())
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
