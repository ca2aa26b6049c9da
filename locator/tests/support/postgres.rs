//! Postgres for tests: the server the tests use (`LOCUS_TEST_POSTGRES`, set by
//! `./scripts/test`), and a throwaway database per test, dropped with it.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// The Postgres server the tests use.
pub fn postgres_server_url() -> String {
    std::env::var("LOCUS_TEST_POSTGRES")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// The server's URL when it answers; otherwise fails under CI, or says SKIPPED.
pub async fn postgres_server(test: &str) -> Option<String> {
    let url = postgres_server_url();
    let why = match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&url)).await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Some(url);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 10 s".to_string(),
    };
    let shown = without_password(&url);
    let in_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
    assert!(
        !in_ci,
        "postgres::{test}: the Postgres server {shown} cannot be reached ({why}) and CI is set: \
         CI must not pass by skipping the Postgres half of the storage tests (./scripts/test \
         starts or installs a server; or set LOCUS_TEST_POSTGRES)"
    );
    // Straight to the terminal: the test harness captures println!/eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED postgres::{test}: Postgres server {shown} unreachable ({why}); run \
         ./scripts/test or set LOCUS_TEST_POSTGRES"
    );
    None
}

/// A database of one test; dropped (with `WITH (FORCE)`, closing leftover connections)
/// when the value is dropped, also when the test panicked.
pub struct Scratch {
    pub server: String,
    pub name: String,
}

/// Databases of earlier runs that did not get dropped (a killed test run) are dropped by
/// the first test of a later run, after an hour.
static STALE_DROPPED: AtomicBool = AtomicBool::new(false);
const STALE_AFTER_SECS: u64 = 3600;

impl Scratch {
    pub async fn create(server: &str) -> Result<Scratch, Box<dyn std::error::Error>> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let name = format!("locus_test_{now}_{:08x}", rand::random::<u32>());
        let mut admin = PgConnection::connect(server).await?;
        if !STALE_DROPPED.swap(true, Ordering::SeqCst) {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT datname FROM pg_database WHERE datname LIKE 'locus\\_test\\_%'",
            )
            .fetch_all(&mut admin)
            .await?;
            for stale in names {
                let created = stale.split('_').nth(2).and_then(|t| t.parse::<u64>().ok());
                if created.is_some_and(|t| t + STALE_AFTER_SECS < now) {
                    let _ = ddl(format!("DROP DATABASE IF EXISTS \"{stale}\" WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            }
        }
        ddl(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        Ok(Scratch {
            server: server.to_string(),
            name,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop may run inside the test's runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&server)
                    .await
                    .map_err(|e| e.to_string())?;
                ddl(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = admin.close().await;
                Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "could not drop the test database {}: {dropped:?}",
                self.name
            );
        }
    }
}

/// A statement naming a database (names are generated here, never from input).
pub fn ddl(sql: String) -> sqlx::RawSql {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
}

/// `url` with its database (path) replaced by `database`, query kept.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `url` with the password (if any) replaced by `***`, for messages.
pub fn without_password(url: &str) -> String {
    match password_of(url) {
        Some(password) if !password.is_empty() => url.replacen(password, "***", 1),
        _ => url.to_string(),
    }
}

pub fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, password)| password)
}

/// A Postgres server of one test's own (`initdb` in a temporary folder, a free port on
/// 127.0.0.1), for tests that stop and start the server: the shared one serves other
/// tests meanwhile. Stopped (immediately) when dropped.
pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    /// Commands run as the `postgres` user when the tests run as root (Postgres refuses
    /// to run as root).
    as_postgres: bool,
    /// Server settings beyond the common ones (`-c name=value …`).
    settings: String,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// `None` when no Postgres installation is found (outside CI: the test is skipped,
    /// loudly; under CI it fails).
    pub fn start(test: &str) -> Option<PrivatePostgres> {
        PrivatePostgres::start_with(test, None)
    }

    /// The same with `ssl=on`, serving `leaf` (its files written in the server's folder).
    pub fn start_tls(
        test: &str,
        leaf: &locus_serve::test_certs::TestLeaf,
    ) -> Option<PrivatePostgres> {
        PrivatePostgres::start_with(test, Some(leaf))
    }

    fn start_with(
        test: &str,
        tls: Option<&locus_serve::test_certs::TestLeaf>,
    ) -> Option<PrivatePostgres> {
        let Some(bin) = postgres_bin_dir() else {
            let in_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
            assert!(
                !in_ci,
                "{test}: no Postgres installation (initdb) found and CI is set: ./scripts/test installs it"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: no Postgres installation (initdb); run ./scripts/test"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temporary folder");
        let settings = match tls {
            None => String::new(),
            Some(leaf) => {
                let (cert, key) = leaf.write(dir.path(), "server");
                format!(
                    " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                    cert.display(),
                    key.display()
                )
            }
        };
        let as_postgres = is_root();
        if as_postgres {
            run(std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let data = dir.path().join("data");
        let server = PrivatePostgres {
            port: free_port(),
            bin,
            data,
            as_postgres,
            settings,
            _dir: dir,
        };
        run(server
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&server.data));
        server.pg_ctl_start();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            std::process::Command::new(path)
        }
    }

    fn pg_ctl_start(&self) {
        let socket_dir = self.data.parent().expect("parent").to_path_buf();
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(socket_dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60{}",
                self.port,
                socket_dir.display(),
                self.settings
            ))
            .args(["-w", "-t", "30", "start"]));
    }

    /// Stops the server (`fast`: connections are closed, as in a restart).
    pub fn stop(&self) {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]));
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// Runs a set-up command; panics with its output when it fails.
fn run(command: &mut std::process::Command) {
    let output = command.output().expect("run a Postgres command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` (Debian's layout), or
/// the folder of `initdb` on the PATH.
fn postgres_bin_dir() -> Option<PathBuf> {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max();
    if let Some((_, bin)) = debian {
        return Some(bin);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|p| p.join("initdb").exists()))
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
