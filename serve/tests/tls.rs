//! The serve loop over TLS, with a real rustls client: answers over TLS, a renewed
//! certificate is served from the next connection on (a broken renewal keeps the old
//! one), and a client that never finishes its handshake is closed by the header-read
//! timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use locus_serve::test_certs::TestCa;
use locus_serve::{Counters, Limits, ServerTls};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(10);

struct Server {
    address: SocketAddr,
    counters: Arc<Counters>,
    _stop: oneshot::Sender<()>,
}

async fn start(tls: ServerTls, limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let router = Router::new().route("/hello", get(|| async { "hello over TLS" }));
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(locus_serve::serve_tls(
        listener,
        router,
        limits,
        counters.clone(),
        Some(Arc::new(tls)),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        address,
        counters,
        _stop: stop,
    }
}

/// GETs `/hello` over TLS trusting only `ca_file`; returns the answer and the
/// certificate the server presented.
async fn get_hello(address: SocketAddr, ca_file: &Path) -> (String, Vec<u8>) {
    let config = locus_serve::tls::client_config(Some(ca_file)).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(config);
    let exchange = async {
        let tcp = TcpStream::connect(address).await.expect("connect");
        let mut tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake");
        let presented = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
        tls.write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        // The server closes without close_notify after `Connection: close` on some
        // paths; what was read by then is the answer.
        let _ = tls.read_to_string(&mut answer).await;
        (answer, presented)
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("the TLS exchange finished in time")
}

#[tokio::test]
async fn answers_over_tls_and_serves_a_renewed_certificate_from_the_next_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Locus serve test CA");
    let ca_file = ca.write_cert(dir.path(), "ca.crt");
    let first = ca.leaf(&["localhost", "127.0.0.1"]);
    let (cert, key) = first.write(dir.path(), "server");
    let tls = ServerTls::load(&cert, &key).expect("the pair loads");
    let server = start(tls, Limits::default()).await;

    let (answer, presented) = get_hello(server.address, &ca_file).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello over TLS"), "{answer}");
    assert_eq!(presented, first.cert_der);

    // Renewed: the next connection gets the new certificate, no restart.
    let second = ca.leaf(&["localhost", "127.0.0.1"]);
    second.write(dir.path(), "server");
    let (answer, presented) = get_hello(server.address, &ca_file).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        presented, second.cert_der,
        "the renewed certificate is served"
    );

    // A broken renewal (the new certificate with a key that is not its own) is refused
    // and the previous pair stays in service.
    let third = ca.leaf(&["localhost"]);
    std::fs::write(&cert, &third.cert_pem).expect("write");
    let (answer, presented) = get_hello(server.address, &ca_file).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(presented, second.cert_der, "the last good pair stays");
    assert_eq!(server.counters.refused(), 0);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_closed_by_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Locus serve test CA");
    let (cert, key) = ca.leaf(&["localhost"]).write(dir.path(), "server");
    let timeout = Duration::from_millis(300);
    let server = start(
        ServerTls::load(&cert, &key).expect("the pair loads"),
        Limits {
            max_connections: 100,
            header_read_timeout: timeout,
        },
    )
    .await;

    // Silent: connects and sends nothing. Stalled: sends the first bytes of a TLS
    // record (a ClientHello's header) and then nothing.
    let began = Instant::now();
    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    let mut stalled = TcpStream::connect(server.address).await.expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .expect("write");
    for stream in [&mut silent, &mut stalled] {
        let mut buffer = [0u8; 64];
        match tokio::time::timeout(DEADLINE, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("the server sent {n} bytes to a client that said nothing"),
            Err(_) => panic!("the server kept a handshake open past {DEADLINE:?}"),
        }
    }
    assert!(
        began.elapsed() >= timeout,
        "closed after {:?}, before the timeout",
        began.elapsed()
    );
    // Their places under the cap are free again.
    let freed = Instant::now();
    while server.counters.open() != 0 {
        assert!(freed.elapsed() < DEADLINE, "places still held");
        tokio::task::yield_now().await;
    }
}

#[test]
fn bad_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Locus serve test CA");
    let (cert, key) = ca.leaf(&["localhost"]).write(dir.path(), "server");
    let missing = dir.path().join("missing.pem");
    let error = ServerTls::load(&missing, &key).expect_err("no such file");
    assert!(
        error.contains("missing.pem") && error.contains("cannot read"),
        "{error}"
    );
    let error = ServerTls::load(&key, &key).expect_err("a key is not a certificate");
    assert!(
        error.contains("server.key") && error.contains("no certificate"),
        "{error}"
    );
    let error = ServerTls::load(&cert, &cert).expect_err("a certificate is not a key");
    assert!(
        error.contains("server.crt") && error.contains("private key"),
        "{error}"
    );
    let other = ca.leaf(&["localhost"]).write(dir.path(), "other").1;
    let error = ServerTls::load(&cert, &other).expect_err("mismatched pair");
    assert!(error.contains("does not go with"), "{error}");
    let error = locus_serve::tls::client_config(Some(&key)).expect_err("not a CA file");
    assert!(
        error.contains("server.key") && error.contains("no certificate"),
        "{error}"
    );
}
