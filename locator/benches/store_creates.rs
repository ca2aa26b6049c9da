//! Durable session creations per second, on both backends, in one run.
//!
//! `cargo bench -p locus-locator --bench store_creates`
//!
//! - **SQLite** (a real file, WAL, `synchronous = FULL`): group commit (the default, up to
//!   256 creations per transaction) against one transaction per creation
//!   (`create_batch_max = 1`).
//! - **Postgres** (a scratch database `locus_bench_…` on the server `LOCUS_BENCH_POSTGRES`
//!   names, else `LOCUS_TEST_POSTGRES`, else `postgres://postgres@127.0.0.1:5432/postgres`;
//!   dropped at the end): the same two modes of the store, and as the baseline `pgbench`
//!   on the same server in the same run: a single-row `INSERT … ON CONFLICT DO NOTHING
//!   RETURNING id` into the same `sessions` table, one transaction per insert, from as many
//!   connections as the store has callers (`pgbench -n -M prepared -f script.sql -c N -j 2
//!   -T 5`; at most 64 clients, below the server's default `max_connections` of 100).
//!   That is what the database does for N independent writers with its own commit
//!   grouping; the store's group commit puts up to 256 creations in one transaction over
//!   a pool of 10 connections. pgbench runs once per round, interleaved with the store's
//!   measurements; every figure is the median of its rounds. **Two replicas**: two
//!   stores (two pools, two group-commit writers) on the one database, each with half the
//!   callers, as two locators behind a load balancer write. When the server is unreachable, or `pgbench` is not
//!   installed (`postgresql-client`), the Postgres part says so and is left out.
//!
//! Every commit is synced to disk in both backends (`synchronous = FULL`;
//! `synchronous_commit` as the server has it, printed), so the figures depend on the
//! disk's sync latency. `STORE_BENCH_DIR` chooses where the SQLite files go (default: the
//! system temporary folder). `STORE_BENCH_ROUNDS` sets how many interleaved rounds the
//! medians are taken over; `PGBENCH_SECS` the length of each pgbench run.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use locus_locator::store::{NewSession, Store, StoreOptions};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

// The tests' Postgres helpers (URL handling, statements naming a database).
#[path = "../tests/support/postgres.rs"]
mod postgres_support;
use postgres_support::{ddl, with_database, without_password};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Creations measured per (mode, concurrency) point.
const CREATES: usize = 2_000;
const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];
/// The group-commit limit measured (the store's default).
const GROUP: usize = 256;
/// Most pgbench clients (one server connection each).
const PGBENCH_MAX_CLIENTS: usize = 64;

fn main() -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> BenchResult<()> {
    let rounds: usize = std::env::var("STORE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .max(1);
    println!(
        "durable session creations per second; median of {rounds} interleaved rounds (STORE_BENCH_ROUNDS)"
    );
    println!("one in ten creations is a room (create-or-join), the others ad-hoc sessions");
    sqlite(rounds).await?;
    postgres(rounds).await
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Fewer creations when nothing can overlap anyway.
fn creates_at(concurrency: usize) -> usize {
    if concurrency == 1 {
        CREATES / 4
    } else {
        CREATES
    }
}

fn options(batch: usize) -> StoreOptions {
    StoreOptions {
        create_batch_max: batch,
        ..StoreOptions::default()
    }
}

// ---------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------

async fn sqlite(rounds: usize) -> BenchResult<()> {
    let base = std::env::var_os("STORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!();
    println!("SQLite (WAL, synchronous=FULL) in {}", base.display());
    println!(
        "{:>12} {:>14} {:>14} {:>10}",
        "concurrency", "1 tx/create/s", "group/s", "group÷1tx"
    );
    for concurrency in CONCURRENCY {
        let creates = creates_at(concurrency);
        // Interleaved rounds, median of each: the machine's load drifts during a run.
        let (mut single, mut grouped) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            single.push(measure_sqlite(&base, 1, concurrency, creates).await?);
            grouped.push(measure_sqlite(&base, GROUP, concurrency, creates).await?);
        }
        let (single, grouped) = (median(&mut single), median(&mut grouped));
        println!(
            "{concurrency:>12} {single:>14.0} {grouped:>14.0} {:>9.1}x",
            grouped / single
        );
    }
    Ok(())
}

/// Creations per second with `batch` as the group-commit limit, on a new file.
async fn measure_sqlite(
    base: &Path,
    batch: usize,
    concurrency: usize,
    creates: usize,
) -> BenchResult<f64> {
    let dir = tempfile::tempdir_in(base)?;
    let url = dir.path().join("bench.db").display().to_string();
    let store = Store::open_with(&url, options(batch)).await?;
    let rate = measure(&store, concurrency, creates).await?;
    store.close().await;
    Ok(rate)
}

// ---------------------------------------------------------------------------------------
// Postgres
// ---------------------------------------------------------------------------------------

async fn postgres(rounds: usize) -> BenchResult<()> {
    let server = ["LOCUS_BENCH_POSTGRES", "LOCUS_TEST_POSTGRES"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let shown = without_password(&server);
    println!();
    let mut admin =
        match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&server)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                println!(
                    "Postgres: not measured: {shown} unreachable ({e}); set LOCUS_BENCH_POSTGRES"
                );
                return Ok(());
            }
            Err(_) => {
                println!(
                    "Postgres: not measured: {shown} did not answer; set LOCUS_BENCH_POSTGRES"
                );
                return Ok(());
            }
        };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let name = format!("locus_bench_{now}_{}", std::process::id());
    ddl(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await?;
    let url = with_database(&server, &name);
    let measured = postgres_points(&url, &name, rounds).await;
    ddl(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    let _ = admin.close().await;
    measured
}

async fn postgres_points(url: &str, name: &str, rounds: usize) -> BenchResult<()> {
    // Creates the tables (the migrations) before anything is measured.
    Store::open(url).await?.close().await;
    let mut db = PgConnection::connect(url).await?;
    let (version, sync, fsync): (String, String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit'), \
         current_setting('fsync')",
    )
    .fetch_one(&mut db)
    .await?;
    let connect = PgConnectOptions::from_str(url)?;
    println!(
        "Postgres {version} at {}:{}/{name} (synchronous_commit={sync}, fsync={fsync}); store pool \
         of {} connections",
        connect.get_host(),
        connect.get_port(),
        StoreOptions::default().max_connections
    );
    let pgbench = which("pgbench");
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(
        script.path(),
        "INSERT INTO sessions (id, room_key, region, edge_id, state, created_at_ms, \
         updated_at_ms) VALUES (gen_random_uuid()::text, NULL, 'eu-west', 'edge-1', 'open', \
         1700000000000, 1700000000000) ON CONFLICT DO NOTHING RETURNING id;\n",
    )?;
    let secs: u64 = std::env::var("PGBENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    match &pgbench {
        Some(path) => println!(
            "baseline: {} -n -M prepared -f insert.sql -c N -j 2 -T {secs} (one single-row \
             INSERT … ON CONFLICT DO NOTHING RETURNING per transaction, same table)",
            path.display()
        ),
        None => println!(
            "baseline: pgbench not found (apt-get install postgresql-client): not measured"
        ),
    }
    println!(
        "{:>12} {:>11} {:>8} {:>14} {:>10} {:>10} {:>10} {:>13} {:>10}",
        "concurrency",
        "pgbench/s",
        "clients",
        "1 tx/create/s",
        "group/s",
        "group÷pgb",
        "group÷1tx",
        "2 replicas/s",
        "2rep÷pgb"
    );
    for concurrency in CONCURRENCY {
        let creates = creates_at(concurrency);
        let clients = concurrency.min(PGBENCH_MAX_CLIENTS);
        // Interleaved rounds, median of each: the machine's load drifts during a run.
        let (mut baseline, mut single, mut grouped, mut two) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            if let Some(path) = &pgbench {
                truncate(&mut db).await?;
                baseline.push(run_pgbench(path, url, script.path(), clients, secs).await?);
            }
            truncate(&mut db).await?;
            single.push(measure_postgres(url, 1, concurrency, creates).await?);
            truncate(&mut db).await?;
            grouped.push(measure_postgres(url, GROUP, concurrency, creates).await?);
            truncate(&mut db).await?;
            two.push(measure_two_replicas(url, concurrency, creates).await?);
        }
        let baseline = (!baseline.is_empty()).then(|| median(&mut baseline));
        let (single, grouped, two) = (median(&mut single), median(&mut grouped), median(&mut two));
        let (baseline_text, ratio_text, two_ratio_text) = match baseline {
            Some(tps) => (
                format!("{tps:.0}"),
                format!("{:.2}x", grouped / tps),
                format!("{:.2}x", two / tps),
            ),
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        println!(
            "{concurrency:>12} {baseline_text:>11} {clients:>8} {single:>14.0} {grouped:>10.0} \
             {ratio_text:>10} {:>9.1}x {two:>13.0} {two_ratio_text:>10}",
            grouped / single
        );
        let _ = std::io::stdout().flush();
    }
    let _ = db.close().await;
    Ok(())
}

async fn measure_postgres(
    url: &str,
    batch: usize,
    concurrency: usize,
    creates: usize,
) -> BenchResult<f64> {
    let store = Store::open_with(url, options(batch)).await?;
    let rate = measure(&store, concurrency, creates).await?;
    store.close().await;
    Ok(rate)
}

/// Two locators' stores on one database (two pools, two group-commit writers), each with
/// half the callers: what two replicas behind a load balancer write.
async fn measure_two_replicas(url: &str, concurrency: usize, creates: usize) -> BenchResult<f64> {
    let (a, b) = (
        Store::open_with(url, options(GROUP)).await?,
        Store::open_with(url, options(GROUP)).await?,
    );
    run_creates(&a, "warm-a", 4, 64).await?;
    run_creates(&b, "warm-b", 4, 64).await?;
    let half = concurrency.div_ceil(2);
    let started = Instant::now();
    let (ra, rb) = tokio::join!(
        run_creates(&a, "run-a", half, creates / 2),
        run_creates(&b, "run-b", half, creates - creates / 2)
    );
    ra?;
    rb?;
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    a.close().await;
    b.close().await;
    Ok(creates as f64 / elapsed.as_secs_f64())
}

async fn truncate(db: &mut PgConnection) -> BenchResult<()> {
    sqlx::query("TRUNCATE sessions").execute(&mut *db).await?;
    sqlx::query("CHECKPOINT").execute(&mut *db).await?;
    Ok(())
}

/// pgbench's transactions per second.
async fn run_pgbench(
    pgbench: &Path,
    url: &str,
    script: &Path,
    clients: usize,
    secs: u64,
) -> BenchResult<f64> {
    let mut command = std::process::Command::new(pgbench);
    command
        .args(["-n", "-M", "prepared", "-f"])
        .arg(script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &secs.to_string()])
        .arg(url);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "pgbench failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    // "tps = 2350.656139 (without initial connection time)"
    stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no tps in pgbench's output: {stdout}").into())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

// ---------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------

/// Creations per second of `creates` creations by `concurrency` tasks, after a warm-up.
async fn measure(store: &Store, concurrency: usize, creates: usize) -> BenchResult<f64> {
    // Warm up: file growth, connections, statement caches.
    run_creates(store, "warm", 4, 64).await?;
    let started = Instant::now();
    run_creates(store, "run", concurrency, creates).await?;
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    Ok(creates as f64 / elapsed.as_secs_f64())
}

/// `creates` creations by `concurrency` tasks; one in ten is a room (create-or-join).
async fn run_creates(
    store: &Store,
    tag: &str,
    concurrency: usize,
    creates: usize,
) -> BenchResult<()> {
    let per_task = creates.div_ceil(concurrency);
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let store = store.clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let n = task * per_task + i;
                if n >= creates {
                    break;
                }
                let id = format!("{tag}-{n}");
                let room_key = n
                    .is_multiple_of(10)
                    .then(|| format!("{tag}-room-{}", n % 100));
                store
                    .create_session(NewSession {
                        id,
                        room_key,
                        region: "eu-west".into(),
                        edge_id: format!("edge-{}", n % 8),
                        now_ms: 1_700_000_000_000 + n as i64,
                    })
                    .await?;
            }
            Ok::<_, locus_locator::store::StoreError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
