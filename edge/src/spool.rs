//! The durable local spool of audit entries and metrics samples.
//!
//! Every session start and end, every participant join and leave, and a load sample every
//! report interval become a [`SpoolEntry`] with a sequence number. The sequence, with the
//! edge id, is the entry's idempotency key at the locator. An entry is committed here
//! *before* it is sent; the link relays committed entries in order and deletes them when
//! the locator acknowledges them (which it does only after its own database commit). So
//! while the locator is unreachable the spool grows, and on reconnect it drains in order;
//! a crash of the edge loses nothing committed, and the locator stores each key once.
//!
//! # Storage
//!
//! A SQLite file (`spool.sqlite` in the spool folder) in WAL mode with
//! `synchronous = FULL`: a committed entry survives a crash of the process and a power
//! loss. Table `spool (seq INTEGER PRIMARY KEY, at_ms, body)` holds the entries (`body`
//! is the JSON of [`SpoolBody`]); table `meta` keeps the highest sequence ever assigned
//! (so numbering continues after every entry was acknowledged and deleted) and whether
//! the numbering is *anchored* to a locator (see below).
//!
//! One writer task owns all writes. It takes commands from a bounded channel and commits
//! every append waiting in the channel in one transaction (*group commit*): one fsync
//! for a burst of joins instead of one each. Reads (`pending`) use their own connections
//! and never wait for the writer (WAL).
//!
//! # Sequence numbers
//!
//! Sequences are monotonic and never reused: the next one follows the highest ever
//! assigned (kept in `meta`, not just the highest still in the table). A brand-new spool
//! (first start, or the folder was wiped) does not know what a locator already stored
//! from an earlier life of this edge id, so its numbering is provisional until the first
//! `Welcome`: if the locator's `acked_seq` reaches into the pending entries, they are
//! renumbered to follow it (the locator would otherwise take them for duplicates and
//! drop them). The same happens, with a warning, when an anchored spool finds the
//! locator ahead of everything it ever assigned (a spool file restored from a backup).
//! Otherwise `Welcome` deletes what the locator already has and the rest is relayed.
//!
//! # Bound
//!
//! The spool holds at most `max_entries` (default 1,000,000) before it refuses work,
//! rather than losing audit entries or growing without limit:
//!
//! - at 50% metrics samples are no longer spooled (they are the bulk and the least
//!   valuable; the locator still gets live load reports when the link is up);
//! - at 80% a warning is logged, once per crossing, with what happens at 100%;
//! - at 100% the edge refuses *new participants* (with a close reason saying so). Audit
//!   entries of what is already running (leaves, session ends) are still written, so the
//!   bound can be exceeded by at most what the running sessions produce, and nothing
//!   already admitted goes unrecorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use locus_protocol::{LoadReport, SpoolBody, SpoolEntry};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot, watch};

/// File name of the spool inside the spool folder.
pub const SPOOL_FILE: &str = "spool.sqlite";

/// Version of the spool's tables (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// Tuning of a [`Spool`].
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Entries kept before new participants are refused (see the module docs).
    pub max_entries: u64,
    /// Most appends committed in one transaction.
    pub batch_max: usize,
    /// Commands waiting for the writer before callers wait.
    pub queue: usize,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_entries: 1_000_000,
            batch_max: 512,
            queue: 4096,
        }
    }
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create the spool folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot open the spool {path}: {source} (check the folder's permissions and free space, or pass another --spool-dir)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the spool {path} was written by a newer edge (schema {found}, this edge knows {SCHEMA_VERSION}): upgrade the edge or move the file away"
    )]
    Newer { path: PathBuf, found: i64 },
    #[error("spool database error during {op}: {source}")]
    Database {
        op: &'static str,
        #[source]
        source: Arc<sqlx::Error>,
    },
    #[error("spool entry {seq} is unreadable: {source}")]
    Corrupt {
        seq: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("the spool writer stopped")]
    Stopped,
}

fn db(op: &'static str) -> impl Fn(sqlx::Error) -> SpoolError {
    move |source| SpoolError::Database {
        op,
        source: Arc::new(source),
    }
}

/// What the spool holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    /// Entries in the file (not yet acknowledged).
    pub len: u64,
    /// Highest sequence assigned so far (0: none).
    pub last_seq: u64,
}

/// What [`Spool::on_welcome`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WelcomeOutcome {
    /// Entries deleted because the locator already had them.
    pub deleted: u64,
    /// Pending entries given new sequences after the locator's `acked_seq`.
    pub renumbered: u64,
}

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

enum Command {
    Append {
        at_ms: i64,
        body: String,
        done: Option<Reply<u64>>,
    },
    DeleteThrough {
        seq: u64,
        done: Reply<u64>,
    },
    Welcome {
        acked: u64,
        done: Reply<WelcomeOutcome>,
    },
}

/// How full the spool is, for warnings on crossings; each level is fuller than the one
/// before (the order is what "crossing up" means).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Level {
    Ok = 0,
    /// At half its bound: metrics samples are no longer spooled.
    NoMetrics = 1,
    /// Above 80% of its bound.
    Warn = 2,
    /// At its bound: new participants are refused.
    Full = 3,
}

impl Level {
    /// The level of `len` entries against a bound of `max`.
    fn of(len: u64, max: u64) -> Level {
        if len >= max {
            Level::Full
        } else if len.saturating_mul(5) >= max.saturating_mul(4) {
            Level::Warn
        } else if len.saturating_mul(2) >= max {
            Level::NoMetrics
        } else {
            Level::Ok
        }
    }

    /// Back from its `u8` (kept in an atomic).
    fn from_u8(n: u8) -> Level {
        match n {
            0 => Level::Ok,
            1 => Level::NoMetrics,
            2 => Level::Warn,
            _ => Level::Full,
        }
    }
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    max_entries: u64,
    status: watch::Sender<SpoolStatus>,
    /// The last [`Level`] published, as its `u8`.
    level: AtomicU8,
}

impl Shared {
    /// Publishes a new status and logs level crossings.
    fn publish(&self, status: SpoolStatus) {
        self.status.send_replace(status);
        let level = Level::of(status.len, self.max_entries);
        let old = Level::from_u8(self.level.swap(level as u8, Ordering::Relaxed));
        if level == old {
            return;
        }
        let (len, max, path) = (status.len, self.max_entries, self.path.display());
        if level > old {
            match level {
                Level::Full => tracing::error!(
                    spool = %path, len, max,
                    "spool FULL: new participants are refused until the locator acknowledges entries (audit entries of running sessions are still written)"
                ),
                Level::Warn => tracing::warn!(
                    spool = %path, len, max,
                    "spool above 80% of its bound: the locator has not acknowledged entries for a while; at {max} entries new participants are refused"
                ),
                _ => tracing::warn!(
                    spool = %path, len, max,
                    "spool at half its bound: metrics samples are no longer spooled (audit entries still are)"
                ),
            }
        } else {
            tracing::info!(spool = %path, len, max, "spool draining: back under a bound level");
        }
    }
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    reader: SqlitePool,
    commands: mpsc::Sender<Command>,
}

/// Handle to the spool; cheap to clone. The writer task stops when every handle is gone.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and starts its writer task.
    pub async fn open(dir: &Path, options: SpoolOptions) -> Result<Spool, SpoolError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| SpoolError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        let path = dir.join(SPOOL_FILE);
        let connect = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            // A small page cache: the spool appends at one end and reads the other.
            .pragma("cache_size", "-512");
        let open_error = |source| SpoolError::Open {
            path: path.clone(),
            source,
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None::<Duration>)
            .max_lifetime(None::<Duration>)
            .connect_with(connect.clone())
            .await
            .map_err(open_error)?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&writer)
            .await
            .map_err(open_error)?;
        if version > SCHEMA_VERSION {
            return Err(SpoolError::Newer {
                path,
                found: version,
            });
        }
        for statement in [
            "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, body TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            "PRAGMA user_version = 1",
        ] {
            sqlx::query(statement)
                .execute(&writer)
                .await
                .map_err(open_error)?;
        }
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(MAX(seq), 0), \
             COALESCE((SELECT value FROM meta WHERE key = 'last_seq'), 0), \
             COALESCE((SELECT value FROM meta WHERE key = 'anchored'), 0) FROM spool",
        )
        .fetch_one(&writer)
        .await
        .map_err(open_error)?;
        let len = row.get::<i64, _>(0).max(0) as u64;
        let max_seq = row.get::<i64, _>(1).max(0) as u64;
        let meta_last = row.get::<i64, _>(2).max(0) as u64;
        let anchored = row.get::<i64, _>(3) != 0;
        let reader = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(connect)
            .await
            .map_err(open_error)?;
        let last_seq = max_seq.max(meta_last);
        let shared = Arc::new(Shared {
            path: path.clone(),
            max_entries: options.max_entries.max(1),
            status: watch::channel(SpoolStatus { len, last_seq }).0,
            level: AtomicU8::new(Level::Ok as u8),
        });
        shared.publish(SpoolStatus { len, last_seq });
        if len > 0 {
            tracing::info!(spool = %path.display(), len, last_seq, "spool opened with entries not yet acknowledged: they are relayed when the locator link is up");
        }
        let (commands, rx) = mpsc::channel(options.queue.max(1));
        let writer_task = Writer {
            pool: writer,
            shared: shared.clone(),
            next_seq: last_seq + 1,
            len,
            anchored,
            batch_max: options.batch_max.max(1),
        };
        tokio::spawn(writer_task.run(rx));
        Ok(Spool {
            inner: Arc::new(Inner {
                shared,
                reader,
                commands,
            }),
        })
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Appends an entry and waits until it is committed; returns its sequence.
    pub async fn append(&self, body: SpoolBody) -> Result<u64, SpoolError> {
        let (done, answer) = oneshot::channel();
        self.send(Command::Append {
            at_ms: crate::now_ms(),
            body: body_json(&body),
            done: Some(done),
        })
        .await?;
        answer.await.map_err(|_| SpoolError::Stopped)?
    }

    /// Spools a metrics sample without waiting. False when it was not spooled: the spool
    /// is at half its bound, or the writer is busy (a sample is worth no back-pressure).
    pub fn record_metrics(&self, report: LoadReport) -> bool {
        if !self.accepts_metrics() {
            return false;
        }
        self.inner
            .commands
            .try_send(Command::Append {
                at_ms: crate::now_ms(),
                body: body_json(&SpoolBody::Metrics(report)),
                done: None,
            })
            .is_ok()
    }

    /// Up to `limit` entries with a sequence above `after_seq`, in order.
    pub async fn pending(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<SpoolEntry>, SpoolError> {
        let rows =
            sqlx::query("SELECT seq, at_ms, body FROM spool WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .bind(after_seq.min(i64::MAX as u64) as i64)
                .bind(limit.min(i64::MAX as usize) as i64)
                .fetch_all(&self.inner.reader)
                .await
                .map_err(db("read pending entries"))?;
        rows.into_iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                let body: String = row.get(2);
                Ok(SpoolEntry {
                    seq: seq as u64,
                    at_unix_ms: row.get(1),
                    body: serde_json::from_str(&body)
                        .map_err(|source| SpoolError::Corrupt { seq, source })?,
                })
            })
            .collect()
    }

    /// Deletes every entry up to `seq` (acknowledged by the locator); returns how many.
    pub async fn delete_through(&self, seq: u64) -> Result<u64, SpoolError> {
        let (done, answer) = oneshot::channel();
        self.send(Command::DeleteThrough { seq, done }).await?;
        answer.await.map_err(|_| SpoolError::Stopped)?
    }

    /// Aligns the spool with the locator's `acked_seq` from `Welcome` (see the module
    /// docs): deletes what it already has, or renumbers a provisional numbering after it.
    pub async fn on_welcome(&self, acked_seq: u64) -> Result<WelcomeOutcome, SpoolError> {
        let (done, answer) = oneshot::channel();
        self.send(Command::Welcome {
            acked: acked_seq,
            done,
        })
        .await?;
        answer.await.map_err(|_| SpoolError::Stopped)?
    }

    async fn send(&self, command: Command) -> Result<(), SpoolError> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| SpoolError::Stopped)
    }

    /// Entries not yet acknowledged.
    pub fn len(&self) -> u64 {
        self.inner.shared.status.borrow().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound.
    pub fn max_entries(&self) -> u64 {
        self.inner.shared.max_entries
    }

    fn level(&self) -> Level {
        Level::of(self.len(), self.inner.shared.max_entries)
    }

    /// At the bound: new participants are refused.
    pub fn is_full(&self) -> bool {
        self.level() == Level::Full
    }

    /// Below half the bound: metrics samples are still spooled.
    pub fn accepts_metrics(&self) -> bool {
        self.level() < Level::NoMetrics
    }

    pub fn status(&self) -> SpoolStatus {
        *self.inner.shared.status.borrow()
    }

    /// Changes whenever entries are committed or deleted.
    pub fn subscribe(&self) -> watch::Receiver<SpoolStatus> {
        self.inner.shared.status.subscribe()
    }
}

fn body_json(body: &SpoolBody) -> String {
    // Serialising plain strings and numbers cannot fail.
    serde_json::to_string(body).unwrap_or_default()
}

struct Writer {
    pool: SqlitePool,
    shared: Arc<Shared>,
    next_seq: u64,
    len: u64,
    anchored: bool,
    batch_max: usize,
}

struct PendingAppend {
    at_ms: i64,
    body: String,
    done: Option<Reply<u64>>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut appends: Vec<PendingAppend> = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut commands = vec![first];
            while commands.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            for command in commands {
                match command {
                    Command::Append { at_ms, body, done } => {
                        appends.push(PendingAppend { at_ms, body, done })
                    }
                    Command::DeleteThrough { seq, done } => {
                        self.commit_appends(&mut appends).await;
                        let _ = done.send(self.delete_through(seq).await);
                    }
                    Command::Welcome { acked, done } => {
                        self.commit_appends(&mut appends).await;
                        let _ = done.send(self.welcome(acked).await);
                    }
                }
            }
            self.commit_appends(&mut appends).await;
        }
    }

    fn publish(&self) {
        self.shared.publish(SpoolStatus {
            len: self.len,
            last_seq: self.next_seq - 1,
        });
    }

    async fn commit_appends(&mut self, appends: &mut Vec<PendingAppend>) {
        if appends.is_empty() {
            return;
        }
        let batch = std::mem::take(appends);
        let first = self.next_seq;
        let last = first + batch.len() as u64 - 1;
        let result = async {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO spool (seq, at_ms, body) ");
            insert.push_values(batch.iter().enumerate(), |mut row, (i, append)| {
                row.push_bind((first + i as u64) as i64)
                    .push_bind(append.at_ms)
                    .push_bind(append.body.as_str());
            });
            insert.build().execute(&mut *tx).await?;
            set_meta(&mut tx, "last_seq", last as i64).await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => {
                self.next_seq = last + 1;
                self.len += batch.len() as u64;
                self.publish();
                for (i, append) in batch.into_iter().enumerate() {
                    if let Some(done) = append.done {
                        let _ = done.send(Ok(first + i as u64));
                    }
                }
            }
            Err(error) => {
                let source = Arc::new(error);
                tracing::error!(spool = %self.shared.path.display(), error = %source, entries = batch.len(), "could not commit spool entries");
                for append in batch {
                    if let Some(done) = append.done {
                        let _ = done.send(Err(SpoolError::Database {
                            op: "append",
                            source: source.clone(),
                        }));
                    }
                }
            }
        }
    }

    async fn delete_through(&mut self, seq: u64) -> Result<u64, SpoolError> {
        let deleted = sqlx::query("DELETE FROM spool WHERE seq <= ?1")
            .bind(seq.min(i64::MAX as u64) as i64)
            .execute(&self.pool)
            .await
            .map_err(db("delete acknowledged entries"))?
            .rows_affected();
        self.len = self.len.saturating_sub(deleted);
        self.publish();
        Ok(deleted)
    }

    async fn welcome(&mut self, acked: u64) -> Result<WelcomeOutcome, SpoolError> {
        let highest = self.next_seq - 1;
        let acked_i = acked.min(i64::MAX as u64 / 2) as i64;
        let renumber = !self.anchored || acked > highest;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("align with the locator"))?;
        let mut outcome = WelcomeOutcome::default();
        if renumber {
            let row = sqlx::query("SELECT COUNT(*), MIN(seq) FROM spool")
                .fetch_one(&mut *tx)
                .await
                .map_err(db("align with the locator"))?;
            let count: i64 = row.get(0);
            let min: Option<i64> = row.get(1);
            if let Some(min) = min
                && min <= acked_i
            {
                let offset = acked_i + 1 - min;
                // Two steps so no intermediate row collides with another's key.
                sqlx::query("UPDATE spool SET seq = -seq")
                    .execute(&mut *tx)
                    .await
                    .map_err(db("renumber pending entries"))?;
                sqlx::query("UPDATE spool SET seq = -seq + ?1")
                    .bind(offset)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("renumber pending entries"))?;
                outcome.renumbered = count as u64;
            }
            let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM spool")
                .fetch_one(&mut *tx)
                .await
                .map_err(db("align with the locator"))?;
            let next = self
                .next_seq
                .max(acked + 1)
                .max(max.unwrap_or(0) as u64 + 1);
            set_meta(&mut tx, "last_seq", (next - 1) as i64)
                .await
                .map_err(db("align with the locator"))?;
            set_meta(&mut tx, "anchored", 1)
                .await
                .map_err(db("align with the locator"))?;
            tx.commit().await.map_err(db("align with the locator"))?;
            if self.anchored && outcome.renumbered > 0 {
                tracing::warn!(
                    spool = %self.shared.path.display(),
                    acked, highest,
                    renumbered = outcome.renumbered,
                    "the locator has stored spool sequences this spool never assigned (was the spool file restored or replaced?): pending entries were renumbered after {acked} so none is taken for a duplicate"
                );
            } else if outcome.renumbered > 0 {
                tracing::info!(
                    acked,
                    renumbered = outcome.renumbered,
                    "new spool aligned with the locator: pending entries renumbered after its acknowledged sequence"
                );
            }
            self.next_seq = next;
            self.anchored = true;
        } else {
            outcome.deleted = sqlx::query("DELETE FROM spool WHERE seq <= ?1")
                .bind(acked_i)
                .execute(&mut *tx)
                .await
                .map_err(db("delete acknowledged entries"))?
                .rows_affected();
            tx.commit()
                .await
                .map_err(db("delete acknowledged entries"))?;
            self.len = self.len.saturating_sub(outcome.deleted);
        }
        self.align(acked, &mut outcome).await?;
        self.publish();
        Ok(outcome)
    }

    /// After a welcome, the pending entries must follow `acked` without a gap (the
    /// locator refuses a gap): `acked + 1 ..= acked + pending`, and the next sequence
    /// right after them. They already do unless the locator is *behind* what this spool
    /// assigned (its database restored from a backup, or wiped): then the pending entries
    /// are renumbered down, since the locator never stored those numbers.
    async fn align(&mut self, acked: u64, outcome: &mut WelcomeOutcome) -> Result<(), SpoolError> {
        let acked_i = acked.min(i64::MAX as u64 / 2) as i64;
        let op = "align with the locator";
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db(op))?;
        let row = sqlx::query("SELECT COUNT(*), MIN(seq) FROM spool")
            .fetch_one(&mut *tx)
            .await
            .map_err(db(op))?;
        let count: i64 = row.get(0);
        let min: Option<i64> = row.get(1);
        let next = acked_i as u64 + count.max(0) as u64 + 1;
        let shift = min.is_some_and(|min| min != acked_i + 1);
        if !shift && next == self.next_seq {
            return Ok(());
        }
        if let Some(min) = min.filter(|_| shift) {
            let offset = acked_i + 1 - min;
            // Two steps so no intermediate row collides with another's key.
            sqlx::query("UPDATE spool SET seq = -seq")
                .execute(&mut *tx)
                .await
                .map_err(db(op))?;
            sqlx::query("UPDATE spool SET seq = -seq + ?1")
                .bind(offset)
                .execute(&mut *tx)
                .await
                .map_err(db(op))?;
            outcome.renumbered = count as u64;
        }
        set_meta(&mut tx, "last_seq", next as i64 - 1)
            .await
            .map_err(db(op))?;
        tx.commit().await.map_err(db(op))?;
        tracing::warn!(
            spool = %self.shared.path.display(),
            acked,
            previous_next = self.next_seq,
            next,
            renumbered = outcome.renumbered,
            "the locator has stored fewer spool sequences than this spool assigned (was its database restored?): numbering continues right after its acknowledged sequence"
        );
        self.next_seq = next;
        Ok(())
    }
}

async fn set_meta(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    key: &str,
    value: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(p: &str) -> SpoolBody {
        SpoolBody::ParticipantJoined {
            session_id: "s".into(),
            participant: p.into(),
        }
    }

    fn report() -> LoadReport {
        LoadReport {
            cpu: 0.1,
            lag_ms: 1.0,
            connections: 1,
            sessions: 1,
            ..Default::default()
        }
    }

    fn small(max_entries: u64) -> SpoolOptions {
        SpoolOptions {
            max_entries,
            ..SpoolOptions::default()
        }
    }

    #[tokio::test]
    async fn numbering_survives_deletion_and_reopening() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), SpoolOptions::default()).await?;
        for (i, p) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(spool.append(joined(p)).await?, i as u64 + 1);
        }
        let pending = spool.pending(1, 10).await?;
        assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(pending[0].body, joined("b"));
        assert_eq!(spool.delete_through(3).await?, 3);
        assert!(spool.is_empty());
        drop(spool);
        let spool = Spool::open(dir.path(), SpoolOptions::default()).await?;
        assert_eq!(
            spool.append(joined("d")).await?,
            4,
            "sequences are never reused"
        );
        assert_eq!(
            spool.status(),
            SpoolStatus {
                len: 1,
                last_seq: 4
            }
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_new_spool_follows_the_locators_acknowledged_sequence() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), SpoolOptions::default()).await?;
        for p in ["a", "b", "c"] {
            spool.append(joined(p)).await?;
        }
        // The locator stored up to 10 from an earlier life of this edge id.
        let outcome = spool.on_welcome(10).await?;
        assert_eq!(outcome.renumbered, 3);
        let seqs: Vec<u64> = spool.pending(0, 10).await?.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [11, 12, 13]);
        assert_eq!(
            spool.pending(10, 10).await?[0].body,
            joined("a"),
            "order kept"
        );
        assert_eq!(spool.append(joined("d")).await?, 14);
        // Anchored now: a later Welcome deletes what the locator has.
        let outcome = spool.on_welcome(12).await?;
        assert_eq!(
            outcome,
            WelcomeOutcome {
                deleted: 2,
                renumbered: 0
            }
        );
        assert_eq!(spool.len(), 2);
        drop(spool);
        let spool = Spool::open(dir.path(), SpoolOptions::default()).await?;
        let outcome = spool.on_welcome(12).await?;
        assert_eq!(
            outcome,
            WelcomeOutcome {
                deleted: 0,
                renumbered: 0
            },
            "anchoring persists"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_locator_ahead_of_an_anchored_spool_gets_renumbered_entries() -> Result<(), SpoolError>
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), SpoolOptions::default()).await?;
        spool.on_welcome(0).await?;
        spool.append(joined("a")).await?;
        let outcome = spool.on_welcome(5).await?;
        assert_eq!(outcome.renumbered, 1);
        assert_eq!(spool.pending(0, 10).await?[0].seq, 6);
        Ok(())
    }

    #[tokio::test]
    async fn bounds_drop_metrics_at_half_and_report_full() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), small(100)).await?;
        let mut status = spool.subscribe();
        assert!(spool.record_metrics(report()));
        status
            .wait_for(|s| s.len == 1)
            .await
            .map_err(|_| SpoolError::Stopped)?;
        for i in 0..49 {
            spool.append(joined(&i.to_string())).await?;
        }
        assert_eq!(spool.len(), 50);
        assert!(!spool.accepts_metrics());
        assert!(
            !spool.record_metrics(report()),
            "metrics stop at half the bound"
        );
        for i in 0..50 {
            spool.append(joined(&format!("x{i}"))).await?;
        }
        assert!(spool.is_full());
        // Audit entries are still written beyond the bound.
        spool.append(joined("late")).await?;
        assert_eq!(spool.len(), 101);
        spool.delete_through(60).await?;
        assert!(!spool.is_full());
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_appends_get_distinct_consecutive_sequences() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), SpoolOptions::default()).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let spool = spool.clone();
            tasks.spawn(async move { spool.append(joined(&i.to_string())).await });
        }
        let mut seqs = Vec::new();
        while let Some(result) = tasks.join_next().await {
            seqs.push(result.expect("task")?);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
        assert_eq!(spool.pending(0, 1000).await?.len(), 200);
        Ok(())
    }
}
