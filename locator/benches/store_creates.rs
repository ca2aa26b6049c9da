//! Durable session creations per second on a real SQLite file: group commit (the
//! default, up to 256 creations per transaction) against one transaction per creation
//! (`create_batch_max = 1`), measured in the same run on the same disk.
//!
//! `cargo bench -p locus-locator --bench store_creates`
//!
//! Both modes use `synchronous = FULL` (every commit is synced to disk), so the figures
//! depend on the disk's sync latency. `STORE_BENCH_DIR` chooses where the database files
//! go (default: the system temporary folder); put it on the disk the locator will use.
//! `STORE_BENCH_ROUNDS` sets how many interleaved rounds the medians are taken over.

use std::time::{Duration, Instant};

use locus_locator::store::{NewSession, Store, StoreOptions};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Creations measured per (mode, concurrency) point.
const CREATES: usize = 2_000;
const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];

fn main() -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> BenchResult<()> {
    let base = std::env::var_os("STORE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!(
        "durable session creations (SQLite, WAL, synchronous=FULL) in {}",
        base.display()
    );
    let rounds: usize = std::env::var("STORE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .max(1);
    println!("median of {rounds} interleaved rounds (STORE_BENCH_ROUNDS)");
    println!(
        "{:>12} {:>14} {:>14} {:>8}",
        "concurrency", "1 tx/create/s", "group/s", "ratio"
    );
    for concurrency in CONCURRENCY {
        // Fewer creations when nothing can overlap anyway.
        let creates = if concurrency == 1 {
            CREATES / 4
        } else {
            CREATES
        };
        // Interleaved rounds, median of each: the machine's load drifts during a run.
        let (mut single, mut grouped) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            single.push(measure(&base, 1, concurrency, creates).await?);
            grouped.push(measure(&base, 256, concurrency, creates).await?);
        }
        let (single, grouped) = (median(&mut single), median(&mut grouped));
        println!(
            "{concurrency:>12} {:>14.0} {:>14.0} {:>7.1}x",
            single,
            grouped,
            grouped / single
        );
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Creations per second with `batch` as the group-commit limit.
async fn measure(
    base: &std::path::Path,
    batch: usize,
    concurrency: usize,
    creates: usize,
) -> BenchResult<f64> {
    let dir = tempfile::tempdir_in(base)?;
    let url = dir.path().join("bench.db").display().to_string();
    let store = Store::open_with(
        &url,
        StoreOptions {
            create_batch_max: batch,
            ..StoreOptions::default()
        },
    )
    .await?;
    // Warm up: file growth, statement caches.
    run_creates(&store, "warm", 4, 64).await?;
    let started = Instant::now();
    run_creates(&store, "run", concurrency, creates).await?;
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    store.close().await;
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
