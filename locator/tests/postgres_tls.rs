//! The locator's Postgres connections over TLS, against a real Postgres with `ssl=on`
//! serving a certificate a test CA signed: `sslmode=prefer` (the default) and `require`
//! encrypt every pooled connection (seen from the server, `pg_stat_ssl`), `verify-full`
//! with `sslrootcert=` that CA opens, and `verify-full` with a CA that did not sign the
//! server's certificate is refused with the reason.

#[path = "support/postgres.rs"]
mod postgres_support;

use locus_locator::store::Store;
use locus_serve::test_certs::TestCa;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// How many of the locator's connections the server sees, and how many of them are TLS.
async fn locator_connections(server: &str) -> (i64, i64) {
    let mut observer = PgConnection::connect(&format!("{server}?sslmode=disable"))
        .await
        .expect("an observer connection");
    let row: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.application_name = 'locus-locator'",
    )
    .fetch_one(&mut observer)
    .await
    .expect("pg_stat_ssl");
    let _ = observer.close().await;
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_is_honoured_and_verify_full_refuses_a_certificate_its_ca_did_not_sign() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Locus Postgres test CA");
    let ca_file = ca.write_cert(dir.path(), "ca.crt");
    let stranger = TestCa::new("Some other CA");
    let stranger_file = stranger.write_cert(dir.path(), "other-ca.crt");
    let Some(server) =
        postgres_support::PrivatePostgres::start_tls("postgres_tls", &ca.leaf(&["127.0.0.1"]))
    else {
        return;
    };
    let url = server.url();

    for params in [
        String::new(),
        "?sslmode=prefer".to_string(),
        "?sslmode=require".to_string(),
        format!("?sslmode=verify-full&sslrootcert={}", ca_file.display()),
    ] {
        let store = Store::open(&format!("{url}{params}"))
            .await
            .unwrap_or_else(|e| panic!("{params:?}: {e}"));
        let (connections, encrypted) = locator_connections(&url).await;
        assert!(connections > 0, "{params:?}: the pool holds a connection");
        assert_eq!(
            encrypted, connections,
            "{params:?}: every connection is TLS"
        );
        store.close().await;
    }

    let refused = Store::open(&format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        stranger_file.display()
    ))
    .await
    .expect_err("a certificate the given CA did not sign is refused")
    .to_string();
    assert!(refused.contains("TLS"), "{refused}");
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    assert!(refused.contains("sslrootcert"), "{refused}");
}
