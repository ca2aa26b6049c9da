//! Storage: sessions, edges and their suspension, the audit trail, metrics samples and
//! each edge's spool progress.
//!
//! One interface, [`Store`], in front of one backend per database, chosen by the URL
//! given to [`Store::open`]: SQLite (the embedded default, one locator, zero set-up; see
//! [`sqlite`]) or Postgres (`postgres://…`, several locators on one database; see
//! [`postgres`]). Both have the same tables and the same semantics (`migrations/sqlite/`,
//! `migrations/postgres/`), and one test suite (`tests/store.rs`) runs against both.
//! Every rule that must hold across locators is enforced by the database (unique
//! indexes, compare-and-set updates, idempotency keys), never only in a process.
//!
//! # Written once, per dialect only where the dialects differ
//!
//! - **SQL** both dialects accept is written once, in `sql.rs` (`$N` parameters, which
//!   SQLite reads too), with the column list of each record.
//! - **Operations** are written once, here: each method of [`Store`] runs its statements
//!   through `shared!`, which compiles the body once per driver (so each is checked
//!   against that driver's types) and applies the backend's policy: on Postgres an
//!   idempotent operation runs once more after a transient fault (a broken connection,
//!   a deadlock); SQLite has nothing to retry.
//! - **Rows** become records in one place, `rows.rs`, for both drivers' rows.
//! - **Errors** are classified once, by code, in `error.rs` ([`StoreError`], the hints).
//! - **Per dialect** (`sqlite.rs`, `postgres.rs`): opening and tuning connections,
//!   migrations, how a write transaction starts, the group commit of session creations
//!   (row by row on SQLite, one `UNNEST` statement on Postgres) and forgetting an edge
//!   (Postgres also drops its published row).
//! - **Several locators** (`edge_live`, notifications) exist only on Postgres: their
//!   operations are methods of [`ClusterStore`], which only a Postgres store gives
//!   ([`Store::cluster`]), so they cannot be called on SQLite.
//! - **Reads only tests make** are not methods: the tests write that SQL themselves and
//!   run it through [`Store::select`] and [`Store::count`].
//!
//! Queries are runtime queries (`sqlx::query` with binds), never the compile-time
//! `query!` macros: the build needs no database. Migrations are embedded in the binary and
//! applied by [`Store::open`].
//!
//! # Durability
//!
//! Every method that writes returns only after the database committed the write durably:
//! a session handed to a client, or a spool sequence acknowledged to an edge, survives a
//! crash of the locator *and* a power loss (see [`sqlite`] for the `synchronous` choice;
//! Postgres relies on the server's `synchronous_commit`, see [`postgres`]). Session
//! creations and the edges' spool batches are the hot write paths; each goes through a
//! *group commit* writer that commits every pending creation (every pending batch) in
//! one transaction (see [`Store::create_session`], [`Store::store_spool`]).
//!
//! # Several locators (Postgres)
//!
//! Nothing a locator must agree on with the others is kept only in its memory: rooms,
//! suspensions, spool progress and the audit trail are rows, and every write that races
//! with another locator is decided by the database (see [`postgres`] for each case). The
//! state of each edge (liveness, load) is published by the locator holding its link in
//! `edge_live`, with a `NOTIFY` in the same transaction, and followed by the others
//! through a [`ChangeFeed`] (see `crate::cluster`).
//!
//! # Sessions
//!
//! An ad-hoc session (no room key) is `open` until it ends (ended by the edge's report,
//! by the failure of its edge, or by the locator); a lookup of an ended session still
//! finds it, with state `ended`, so the API can answer 410 instead of 404. A keyed session
//! (a persistent room) has exactly one row per key, forever, enforced by the database,
//! and never ends: when its edge fails it is reassigned ([`Store::reassign_session`]).

mod cluster;
mod error;
mod postgres;
mod rows;
mod sql;
mod sqlite;

pub use cluster::{ChangeFeed, Channel, ClusterStore, LiveEdge, PublishedEdge, PublishedLiveness};
use error::Fault;
pub use error::StoreError;
pub use rows::Record;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use locus_protocol::{SpoolBody, SpoolEntry};
use sqlx::QueryBuilder;

use rows::{audit_from_row, edge_from_row, session_from_row};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Most audit rows one [`Store::audit`] call returns.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// Audit rows returned when [`AuditFilter::limit`] is 0.
pub const DEFAULT_AUDIT_PAGE: u32 = 100;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Open,
    Ended,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Open => "open",
            SessionState::Ended => "ended",
        }
    }

    fn from_db(s: &str) -> Option<Self> {
        match s {
            "open" => Some(SessionState::Open),
            "ended" => Some(SessionState::Ended),
            _ => None,
        }
    }
}

/// A session to create.
#[derive(Debug, Clone, Serialize)]
pub struct NewSession {
    /// The id to use when the session is created (ignored when `room_key` names an
    /// existing room: the room's id is returned).
    pub id: String,
    /// Stable key of a persistent room: the same key always gives the same session.
    pub room_key: Option<String>,
    pub region: String,
    pub edge_id: String,
    pub now_ms: i64,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRecord {
    pub id: String,
    pub room_key: Option<String>,
    pub region: String,
    pub edge_id: String,
    pub state: SessionState,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub end_reason: Option<String>,
}

impl SessionRecord {
    /// A persistent room (has a key) rather than an ad-hoc session.
    pub fn is_room(&self) -> bool {
        self.room_key.is_some()
    }
}

/// An edge as last registered, with its admin suspension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeRecord {
    pub id: String,
    pub region: String,
    pub public_url: String,
    pub capacity: u32,
    pub version: String,
    /// Ignored by [`Store::upsert_edge`]: only [`Store::set_suspended`] changes it.
    pub suspended: bool,
    pub suspended_by: Option<String>,
    pub suspended_at_ms: Option<i64>,
    /// Kept from the first registration by [`Store::upsert_edge`].
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// Who wrote an audit row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditSource {
    /// Relayed from an edge's spool (has `edge_id` and `seq`).
    Edge,
    /// An admin action (has `actor`).
    Admin,
    /// A decision of the locator itself.
    Locator,
}

impl AuditSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditSource::Edge => "edge",
            AuditSource::Admin => "admin",
            AuditSource::Locator => "locator",
        }
    }

    fn from_db(s: &str) -> Option<Self> {
        match s {
            "edge" => Some(AuditSource::Edge),
            "admin" => Some(AuditSource::Admin),
            "locator" => Some(AuditSource::Locator),
            _ => None,
        }
    }
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Increasing, never reused: the pagination cursor.
    pub id: i64,
    pub source: AuditSource,
    pub edge_id: Option<String>,
    /// The edge's spool sequence (edge rows only).
    pub seq: Option<u64>,
    /// When it happened (Unix ms; the edge's clock for edge rows).
    pub at_ms: i64,
    /// `session_started`, `participant_joined`, `edge_suspended`, `edge_drained`…
    pub kind: String,
    pub session_id: Option<String>,
    pub participant: Option<String>,
    /// Who did it (admin rows).
    pub actor: Option<String>,
    pub detail: Option<String>,
}

/// Which audit rows to list, newest first. Every field narrows the result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditFilter {
    pub edge_id: Option<String>,
    pub session_id: Option<String>,
    /// `at_ms >= since_ms`.
    pub since_ms: Option<i64>,
    /// `at_ms < until_ms`.
    pub until_ms: Option<i64>,
    /// Cursor: only rows with `id < before_id` (pass the last id of the previous page).
    pub before_id: Option<i64>,
    /// Page size; 0 means [`DEFAULT_AUDIT_PAGE`], capped at [`MAX_AUDIT_PAGE`].
    pub limit: u32,
}

impl AuditFilter {
    fn page_size(&self) -> u32 {
        match self.limit {
            0 => DEFAULT_AUDIT_PAGE,
            n => n.min(MAX_AUDIT_PAGE),
        }
    }
}

/// One stored load sample of an edge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricRecord {
    pub edge_id: String,
    pub seq: u64,
    pub at_ms: i64,
    pub cpu: f64,
    pub lag_ms: f64,
    pub connections: u32,
    pub sessions: u32,
}

/// What the store is, for readiness and the admin page (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreInfo {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The database file (SQLite) or `host:port/database` (Postgres; `socket-folder/database`
    /// over a Unix socket), never credentials.
    pub location: String,
}

/// Tuning of a [`Store`]; [`Default`] is what the locator uses.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most session creations committed in one transaction by the group-commit writer.
    /// 1 gives one transaction per creation (the benchmark's baseline).
    pub create_batch_max: usize,
    /// Session creations that may wait for the writer before callers are held back.
    pub create_queue: usize,
    /// Most spool batches (of any edges) committed in one transaction by the spool
    /// writer. 1 gives one transaction per batch.
    pub spool_batch_max: usize,
    /// SQLite: connections for reads (writes use one connection: SQLite has one writer
    /// anyway).
    pub read_connections: u32,
    /// Postgres: most connections of the pool, shared by reads, writes and the
    /// group-commit writer. Every locator opens up to this many: keep
    /// `locators × max_connections` below the server's `max_connections`.
    pub max_connections: u32,
    /// How long a statement waits for a lock held by another connection or process
    /// (SQLite's busy timeout; Postgres' `lock_timeout`).
    pub busy_timeout: Duration,
    /// Postgres: longest a statement may run (`statement_timeout`). A stuck statement
    /// fails instead of holding a pooled connection, and the locks it took, forever.
    pub statement_timeout: Duration,
    /// Postgres: how long a call waits for a connection, including reconnecting after
    /// the server restarted, before it fails. [`Store::ping`] waits at most this long.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            create_batch_max: 256,
            create_queue: 4096,
            // Up to 500 entries each (`MAX_SPOOL_BATCH`): at most 32,000 rows a commit.
            spool_batch_max: 64,
            read_connections: 4,
            max_connections: 10,
            busy_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// The locator's storage. Cheap to clone (shared); every clone uses the same database and
/// the same group-commit writer.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    creates: mpsc::Sender<CreateJob>,
    spools: mpsc::Sender<SpoolJob>,
    info: StoreInfo,
}

/// One variant per database; each method of [`Store`] dispatches on it. Cheap to clone
/// (the pools inside are shared).
#[derive(Debug, Clone)]
enum Backend {
    Sqlite(sqlite::SqliteBackend),
    Postgres(postgres::PostgresBackend),
}

/// Calls the same method on whichever backend the store has.
macro_rules! dispatch {
    ($backend:expr, $db:ident => $call:expr) => {
        match $backend {
            Backend::Sqlite($db) => $call,
            Backend::Postgres($db) => $call,
        }
    };
}

/// Runs an operation written once for both dialects: `$body`, a block yielding
/// `Result<_, sqlx::Error>` with `$db` bound to the store's backend, whose `reader()`,
/// `writer()` and `begin_write()` give the connections for it; a database error becomes
/// [`StoreError::Database`] of operation `$op`. The block is compiled once per backend, so
/// the statements are checked against each driver's types.
///
/// - `retried`: the operation is idempotent; on Postgres it runs once more after a
///   transient fault (a broken connection, a deadlock; see [`postgres::retry_once`]).
///   SQLite has no connection to lose and one writer, so nothing there to retry.
/// - `once`: each run writes anew (an audit row), or the caller handles a failure.
macro_rules! shared {
    // On a backend (the writer tasks hold one, not a store), keeping sqlx's error for
    // the writer to classify.
    (backend $backend:expr, $op:expr, $policy:ident, |$db:ident| $body:block) => {
        match $backend {
            Backend::Sqlite($db) => shared!(@run once, $op, $body),
            Backend::Postgres($db) => shared!(@run $policy, $op, $body),
        }
    };
    ($store:expr, $op:expr, $policy:ident, |$db:ident| $body:block) => {
        shared!(backend &$store.inner.backend, $op, $policy, |$db| $body)
            .map_err(StoreError::db($op))
    };
    (@run once, $op:expr, $body:block) => {{
        // Annotated: the body's `?` converts into sqlx's error.
        let result: Result<_, sqlx::Error> = async { $body }.await;
        result
    }};
    (@run retried, $op:expr, $body:block) => {
        postgres::retry_once!($op, |_retry| async { $body }.await)
    };
}

impl Backend {
    /// One group-commit batch (see [`Store::create_session`]).
    async fn create_sessions(&self, news: &[&NewSession]) -> Result<Vec<CreateReply>, sqlx::Error> {
        dispatch!(self, db => db.create_sessions(news).await)
    }
}

type CreateReply = Result<(SessionRecord, bool), StoreError>;

/// A spool batch of one edge waiting for the spool writer (see [`Store::store_spool`]).
#[derive(Debug)]
struct SpoolJob {
    edge_id: String,
    entries: Vec<SpoolEntry>,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// A session creation waiting for the group-commit writer.
#[derive(Debug)]
struct CreateJob {
    new: NewSession,
    reply: oneshot::Sender<CreateReply>,
}

/// The database a URL names.
#[derive(Clone, PartialEq, Eq)]
enum Target {
    SqliteFile(PathBuf),
    /// The URL as given (parsed by the Postgres backend); may hold a password.
    Postgres(String),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::SqliteFile(path) => f.debug_tuple("SqliteFile").field(path).finish(),
            Target::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

fn parse_url(url: &str) -> Result<Target, StoreError> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        // Checked by the backend; never echo the URL: it may hold a password.
        return Ok(Target::Postgres(url.to_string()));
    }
    let (path, had_scheme) = if let Some(rest) = url.strip_prefix("sqlite://") {
        (rest, true)
    } else if let Some(rest) = url.strip_prefix("sqlite:") {
        (rest, true)
    } else if let Some((scheme, _)) = url.split_once("://") {
        let scheme: String = scheme.chars().take(20).collect();
        return Err(StoreError::InvalidUrl {
            reason: format!(
                "unsupported scheme {scheme:?}: use a SQLite file path, sqlite://PATH, \
                 sqlite:PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            ),
        });
    } else {
        (url, false)
    };
    if path.is_empty() {
        return Err(StoreError::InvalidUrl {
            reason: "no database file given: use a path such as locator.db".into(),
        });
    }
    if path.starts_with(":memory:") || path.contains("mode=memory") {
        return Err(StoreError::InvalidUrl {
            reason: "in-memory SQLite is not supported (sessions and suspensions must survive \
                     a restart): give a file path"
                .into(),
        });
    }
    if had_scheme && path.contains('?') {
        return Err(StoreError::InvalidUrl {
            reason: "SQLite URL options (?…) are not supported: the locator sets the journal \
                     mode, synchronous level and busy timeout itself; give only the path"
                .into(),
        });
    }
    Ok(Target::SqliteFile(PathBuf::from(path)))
}

impl Store {
    /// Opens (creating it if needed) the database `url` names and applies the migrations.
    ///
    /// Accepted:
    /// - SQLite: `sqlite://PATH` (`sqlite:///abs/path` for an absolute path),
    ///   `sqlite:PATH`, or a plain file path. The file and its folder are created when
    ///   absent.
    /// - Postgres: `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?PARAMS]` (or
    ///   `postgresql://`), with libpq's parameters (`sslmode`, `options`, `host=/socket`…)
    ///   and environment (`PGPASSWORD`…). The database must exist; its tables are created
    ///   by the migrations, which several locators starting at once apply exactly once
    ///   (see [`postgres`]).
    ///
    /// Errors name the database by [`StoreInfo::location`], never with the password.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, StoreOptions::default()).await
    }

    /// [`Store::open`] with explicit tuning.
    pub async fn open_with(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        if options.create_batch_max == 0
            || options.create_queue == 0
            || options.spool_batch_max == 0
        {
            return Err(StoreError::invalid(
                "store options",
                "create_batch_max, create_queue and spool_batch_max must be at least 1",
            ));
        }
        let (backend, info) = match parse_url(url)? {
            Target::SqliteFile(path) => {
                let db = sqlite::SqliteBackend::open(&path, &options).await?;
                let info = StoreInfo {
                    backend: "sqlite",
                    location: db.location().to_string(),
                };
                (Backend::Sqlite(db), info)
            }
            Target::Postgres(url) => {
                let db = postgres::PostgresBackend::open(&url, &options).await?;
                let info = StoreInfo {
                    backend: "postgres",
                    location: db.location().to_string(),
                };
                (Backend::Postgres(db), info)
            }
        };
        let (tx, rx) = mpsc::channel(options.create_queue);
        tokio::spawn(create_writer(backend.clone(), rx, options.create_batch_max));
        // Every link waits for its batch's ack before it relays the next: at most one
        // batch a link is queued, so the queue is as long as the fleet it serves.
        let (spools, spool_rx) = mpsc::channel(options.create_queue);
        tokio::spawn(spool_writer(
            backend.clone(),
            spool_rx,
            options.spool_batch_max,
        ));
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                creates: tx,
                spools,
                info,
            }),
        })
    }

    /// Checks that the database answers (for `/readyz`). Fails while the database is
    /// unreachable (Postgres: within [`StoreOptions::acquire_timeout`]); succeeds again
    /// once it is back, without a restart of the locator.
    pub async fn ping(&self) -> Result<(), StoreError> {
        shared!(self, "ping", once, |db| {
            sqlx::query("SELECT 1").execute(db.reader()).await.map(drop)
        })
    }

    /// The backend and where its data lives (no secrets).
    pub fn describe(&self) -> StoreInfo {
        self.inner.info.clone()
    }

    /// Closes the connections (the SQLite write-ahead log is checkpointed). Later calls
    /// fail; other clones are closed too.
    pub async fn close(&self) {
        dispatch!(&self.inner.backend, db => db.close().await)
    }

    /// Creates a session, or for a room key joins the key's room: returns the stored
    /// session and whether this call created it. Durable when it returns.
    ///
    /// The database enforces one row per key, so any number of concurrent calls with one
    /// key (from one locator or several) give one row, created by exactly one of them.
    ///
    /// Group commit: the call hands the creation to the store's writer task, which
    /// commits every pending creation (up to [`StoreOptions::create_batch_max`]) in one
    /// transaction, and answers each caller after COMMIT. Creations within one batch are
    /// applied in order, so two of one key in one batch also give one row. A creation
    /// whose caller gave up (dropped the future) may still be committed.
    ///
    /// A failed batch (database unreachable, timeout…) fails every creation of the batch
    /// with [`StoreError::Batch`] and nothing of it is committed; the writer goes on with
    /// the next batch. When the database is unreachable, the creations already queued
    /// behind the failed batch fail at once with the same error instead of each waiting
    /// for a connection in turn.
    ///
    /// An ad-hoc session whose id already exists fails with [`StoreError::Conflict`];
    /// so does a room creation whose id is taken by another session.
    pub async fn create_session(
        &self,
        new: NewSession,
    ) -> Result<(SessionRecord, bool), StoreError> {
        if new.id.is_empty() {
            return Err(StoreError::invalid("session", "empty session id"));
        }
        if new.room_key.as_deref() == Some("") {
            return Err(StoreError::invalid("session", "empty room key"));
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .creates
            .send(CreateJob { new, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// A session by id, open or ended; `None` when unknown.
    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        shared!(self, "get_session", retried, |db| {
            let row = sqlx::query(sql::SESSION_BY_ID)
                .bind(id)
                .fetch_optional(db.reader())
                .await?;
            row.as_ref().map(session_from_row).transpose()
        })
    }

    /// Ends an open ad-hoc session; returns whether it changed. Rooms never end: for a
    /// room (or an unknown or already ended session) this returns `false`.
    pub async fn end_session(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        shared!(self, "end_session", retried, |db| {
            let done = sqlx::query(sql::END_SESSION)
                .bind(id)
                .bind(reason)
                .bind(now_ms)
                .execute(db.writer())
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Moves an open session (typically a room) from `from_edge` to `to_edge`, only if it
    /// is still on `from_edge` (compare-and-set: of several locators re-placing one room,
    /// one wins; the others re-read it). Returns whether it changed.
    pub async fn reassign_session(
        &self,
        id: &str,
        from_edge: &str,
        to_edge: &str,
        region: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        shared!(self, "reassign_session", retried, |db| {
            let done = sqlx::query(sql::REASSIGN_SESSION)
                .bind(id)
                .bind(from_edge)
                .bind(to_edge)
                .bind(region)
                .bind(now_ms)
                .execute(db.writer())
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Ends the open ad-hoc sessions on an edge (the edge failed); its rooms stay open on
    /// it until they are reassigned. Returns the ids of those that ended.
    pub async fn end_ad_hoc_sessions_on_edge(
        &self,
        edge_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        // A retry after an unacknowledged commit returns no ids: those sessions ended
        // all the same (their edge is told when it registers again).
        shared!(self, "end_ad_hoc_sessions_on_edge", retried, |db| {
            sqlx::query_scalar(sql::END_AD_HOC_ON_EDGE)
                .bind(edge_id)
                .bind(reason)
                .bind(now_ms)
                .fetch_all(db.writer())
                .await
        })
    }

    /// Open ad-hoc sessions nobody joined (no `session_started` or `participant_joined`
    /// from their edge's spool yet) created before `created_before_ms`, oldest first, at
    /// most `limit`: `(session id, edge id)`.
    pub async fn unjoined_sessions(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        shared!(self, "unjoined_sessions", retried, |db| {
            sqlx::query_as(sql::UNJOINED_SESSIONS)
                .bind(created_before_ms)
                .bind(i64::from(limit))
                .fetch_all(db.reader())
                .await
        })
    }

    /// Ends those of `ids` still open, ad-hoc and unjoined, in one transaction (a join
    /// recorded meanwhile keeps its session; of several locators expiring one session,
    /// one ends it). Returns the ids it ended.
    pub async fn expire_unjoined(
        &self,
        ids: &[&str],
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        shared!(self, "expire_unjoined", once, |db| {
            let mut tx = db.begin_write().await?;
            let mut ended = Vec::new();
            for id in ids {
                let done = sqlx::query(sql::EXPIRE_UNJOINED)
                    .bind(id)
                    .bind(now_ms)
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() > 0 {
                    ended.push(id.to_string());
                }
            }
            tx.commit().await?;
            Ok(ended)
        })
    }

    /// Forgets a failed edge's records (its published state, and its registration unless
    /// suspended); its audit trail and spool progress stay. `claim_rev` is the failed
    /// claim (Postgres): false when the edge was claimed anew since (it came back).
    pub async fn forget_edge(&self, edge_id: &str, claim_rev: i64) -> Result<bool, StoreError> {
        dispatch!(&self.inner.backend, db => db.forget_edge(edge_id, claim_rev).await)
    }

    /// Whether the edge's own record says the session is running there: its latest
    /// `session_started` / `session_ended` audit entry for the session is a start. A
    /// draining edge admits joins only of the sessions it still runs, so a room it no
    /// longer runs must move (see `api::join_existing`).
    pub async fn session_running_on_edge(
        &self,
        session_id: &str,
        edge_id: &str,
    ) -> Result<bool, StoreError> {
        shared!(self, "session_running_on_edge", retried, |db| {
            let kind: Option<String> = sqlx::query_scalar(sql::LAST_START_OR_END)
                .bind(session_id)
                .bind(edge_id)
                .fetch_optional(db.reader())
                .await?;
            Ok(kind.as_deref() == Some("session_started"))
        })
    }

    /// Inserts or updates an edge's registration (region, URL, capacity, version,
    /// last seen). The suspension columns and `first_seen_ms` of an existing edge are
    /// kept. Returns the stored edge, with its suspension.
    pub async fn upsert_edge(&self, edge: &EdgeRecord) -> Result<EdgeRecord, StoreError> {
        shared!(self, "upsert_edge", retried, |db| {
            let row = sqlx::query(sql::UPSERT_EDGE)
                .bind(&edge.id)
                .bind(&edge.region)
                .bind(&edge.public_url)
                .bind(i64::from(edge.capacity))
                .bind(&edge.version)
                .bind(edge.first_seen_ms)
                .bind(edge.last_seen_ms)
                .fetch_one(db.writer())
                .await?;
            edge_from_row(&row)
        })
    }

    /// Suspends or resumes an edge; returns whether it changed. A real change writes an
    /// admin audit row (`edge_suspended` / `edge_resumed`, with the actor) in the same
    /// transaction; a repeated call changes nothing and writes nothing (also when two
    /// locators make the same change at once: one of them changes it). Unknown edge:
    /// [`StoreError::NotFound`].
    pub async fn set_suspended(
        &self,
        edge_id: &str,
        suspended: bool,
        actor: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let changed = shared!(self, "set_suspended", retried, |db| {
            let mut tx = db.begin_write().await?;
            let changed = sqlx::query(sql::SET_SUSPENDED)
                .bind(edge_id)
                .bind(suspended)
                .bind(suspended.then_some(actor))
                .bind(suspended.then_some(now_ms))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if !changed {
                let known = sqlx::query(sql::EDGE_EXISTS)
                    .bind(edge_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                // Nothing written: dropping the transaction rolls it back.
                return Ok(known.then_some(false));
            }
            let kind = if suspended {
                "edge_suspended"
            } else {
                "edge_resumed"
            };
            sqlx::query(sql::INSERT_ADMIN_AUDIT)
                .bind(edge_id)
                .bind(now_ms)
                .bind(kind)
                .bind(actor)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(true))
        })?;
        changed.ok_or_else(|| StoreError::NotFound {
            what: "edge",
            id: edge_id.to_string(),
        })
    }

    /// One edge, with its suspension.
    pub async fn edge(&self, edge_id: &str) -> Result<Option<EdgeRecord>, StoreError> {
        shared!(self, "edge", retried, |db| {
            let row = sqlx::query(sql::EDGE_BY_ID)
                .bind(edge_id)
                .fetch_optional(db.reader())
                .await?;
            row.as_ref().map(edge_from_row).transpose()
        })
    }

    /// Records an admin action (e.g. `edge_drained`); returns the audit row id.
    pub async fn record_admin_action(
        &self,
        kind: &str,
        edge_id: Option<&str>,
        actor: &str,
        detail: Option<&str>,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        self.record_audit(
            AuditSource::Admin,
            kind,
            edge_id,
            None,
            Some(actor),
            detail,
            now_ms,
        )
        .await
    }

    /// Records a decision of the locator (e.g. `room_reassigned`, `edge_failed`); returns
    /// the audit row id.
    pub async fn record_locator_event(
        &self,
        kind: &str,
        edge_id: Option<&str>,
        session_id: Option<&str>,
        detail: Option<&str>,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        self.record_audit(
            AuditSource::Locator,
            kind,
            edge_id,
            session_id,
            None,
            detail,
            now_ms,
        )
        .await
    }

    /// Stores spool entries relayed by an edge, in one transaction, and returns the
    /// sequence to acknowledge (the highest stored for the edge).
    ///
    /// - Each `(edge_id, seq)` is stored once: entries at or below the acknowledged
    ///   sequence, and repeats, are skipped (not an error), so a batch relayed twice
    ///   changes nothing, also when two locators receive it at once. The acknowledged
    ///   sequence is a high-water mark: the protocol sends entries in increasing order,
    ///   and an entry older than one already acknowledged is taken to be a duplicate.
    /// - Audit kinds go to the audit trail, [`SpoolBody::Metrics`] to the metrics table.
    /// - Effects on sessions, applied only for newly stored entries: `session_ended` ends
    ///   the session when it is ad-hoc, open, and hosted by this edge (an edge cannot end
    ///   another edge's session); a room stays open on its edge and is re-placed on its
    ///   next join. Other kinds have no effect on sessions (the locator created them).
    ///   The end time is the entry's time (the edge's clock).
    /// - Sequence 0 and sequences above `i64::MAX` are refused ([`StoreError::Invalid`]),
    ///   as are non-finite metrics; nothing of the batch is stored then.
    /// - Group commit, as for [`Store::create_session`]: the batch goes to the store's
    ///   spool writer, which commits every pending batch (of any edges, up to
    ///   [`StoreOptions::spool_batch_max`]) in one transaction and answers each after
    ///   COMMIT, so the acknowledged sequence is durable when it returns. With one sync a
    ///   commit (SQLite, `synchronous = FULL`), one transaction per batch made 5,000
    ///   spooling edges more commits than the disk could sync. A failed transaction fails
    ///   every batch in it with [`StoreError::Batch`] (nothing of it is stored; each edge
    ///   relays again).
    ///
    /// [`SpoolBody::Metrics`]: locus_protocol::SpoolBody::Metrics
    pub async fn store_spool(
        &self,
        edge_id: &str,
        entries: &[SpoolEntry],
    ) -> Result<u64, StoreError> {
        validate_spool(edge_id, entries)?;
        if entries.is_empty() {
            return self.acked_seq(edge_id).await;
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .spools
            .send(SpoolJob {
                edge_id: edge_id.to_string(),
                entries: entries.to_vec(),
                reply,
            })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// The highest spool sequence stored for an edge (0: none).
    pub async fn acked_seq(&self, edge_id: &str) -> Result<u64, StoreError> {
        let acked: Option<i64> = shared!(self, "acked_seq", retried, |db| {
            sqlx::query_scalar(sql::ACKED_SEQ)
                .bind(edge_id)
                .fetch_optional(db.reader())
                .await
        })?;
        Ok(acked.map_or(0, seq_u64))
    }

    /// Audit rows matching the filter, newest first (by id). For the next page, pass the
    /// last returned id as `before_id`.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        shared!(self, "audit", retried, |db| {
            let rows = audit_query(filter).build().fetch_all(db.reader()).await?;
            rows.iter().map(audit_from_row).collect()
        })
    }

    /// Signs an admin in: stores the page session by the SHA-256 of its cookie value
    /// (never the value), in the same transaction ending expired sessions and, beyond
    /// `max_sessions`, the oldest ones.
    pub async fn create_admin_session(
        &self,
        token_sha256: &str,
        name: &str,
        now_ms: i64,
        expires_at_ms: i64,
        max_sessions: u32,
    ) -> Result<(), StoreError> {
        shared!(self, "create_admin_session", once, |db| {
            let mut tx = db.begin_write().await?;
            sqlx::query(sql::DELETE_EXPIRED_ADMIN_SESSIONS)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::INSERT_ADMIN_SESSION)
                .bind(token_sha256)
                .bind(name)
                .bind(now_ms)
                .bind(expires_at_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::TRIM_ADMIN_SESSIONS)
                .bind(i64::from(max_sessions))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
    }

    /// The name of the admin whose live session has this cookie hash.
    pub async fn admin_session(
        &self,
        token_sha256: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        shared!(self, "admin_session", retried, |db| {
            sqlx::query_scalar(sql::ADMIN_SESSION)
                .bind(token_sha256)
                .bind(now_ms)
                .fetch_optional(db.reader())
                .await
        })
    }

    /// Signs out: the session ends on every locator.
    pub async fn delete_admin_session(&self, token_sha256: &str) -> Result<(), StoreError> {
        shared!(self, "delete_admin_session", retried, |db| {
            sqlx::query(sql::DELETE_ADMIN_SESSION)
                .bind(token_sha256)
                .execute(db.writer())
                .await
                .map(drop)
        })
    }

    /// Not retried: every call inserts a new row, and a retry after an unacknowledged
    /// commit would store it twice.
    #[allow(clippy::too_many_arguments)]
    async fn record_audit(
        &self,
        source: AuditSource,
        kind: &str,
        edge_id: Option<&str>,
        session_id: Option<&str>,
        actor: Option<&str>,
        detail: Option<&str>,
        at_ms: i64,
    ) -> Result<i64, StoreError> {
        if kind.is_empty() {
            return Err(StoreError::invalid("audit entry", "empty kind"));
        }
        shared!(self, "record_audit", once, |db| {
            sqlx::query_scalar(sql::INSERT_AUDIT)
                .bind(source.as_str())
                .bind(edge_id)
                .bind(at_ms)
                .bind(kind)
                .bind(session_id)
                .bind(actor)
                .bind(detail)
                .fetch_one(db.writer())
                .await
        })
    }

    /// Reads records with SQL of the caller's: `SELECT <R::COLUMNS> <from>`, where
    /// `from` is the rest of the statement (`FROM sessions WHERE room_key = $1`) in the
    /// SQL both dialects share, with text parameters `binds`. For tests and diagnostics:
    /// the locator's own queries are methods of the store. `from` is a literal, so no
    /// input can become SQL.
    pub async fn select<R: Record>(
        &self,
        from: &'static str,
        binds: &[&str],
    ) -> Result<Vec<R>, StoreError> {
        let statement = format!("SELECT {} {from}", R::COLUMNS);
        shared!(self, "select", retried, |db| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(statement.as_str()));
            for value in binds {
                query = query.bind(*value);
            }
            let rows = query.fetch_all(db.reader()).await?;
            rows.iter().map(R::from_row).collect()
        })
    }

    /// `SELECT COUNT(*) <from>`, as [`Store::select`].
    pub async fn count(&self, from: &'static str, binds: &[&str]) -> Result<u64, StoreError> {
        let statement = format!("SELECT COUNT(*) {from}");
        let count: i64 = shared!(self, "count", retried, |db| {
            let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(statement.as_str()));
            for value in binds {
                query = query.bind(*value);
            }
            query.fetch_one(db.reader()).await
        })?;
        Ok(seq_u64(count))
    }

    /// The operations of several locators sharing the database (`edge_live`, change
    /// notifications): `Some` only on Postgres. SQLite has one locator and none of it, so
    /// these operations cannot be called there.
    pub fn cluster(&self) -> Option<ClusterStore> {
        match &self.inner.backend {
            Backend::Postgres(db) => Some(ClusterStore::new(db.clone())),
            Backend::Sqlite(_) => None,
        }
    }
}

/// The answer to a creation whose INSERT did nothing, given the rows with its id or its
/// room key (in this transaction's view): the room of its key (joined), or a conflict on
/// its id. On a retry, a row with its id, room key and creation time is its own first
/// attempt, committed before the connection broke: created (see the module
/// documentation).
fn answer_without_insert(new: &NewSession, existing: &[SessionRecord], retry: bool) -> CreateReply {
    if retry
        && let Some(own) = existing
            .iter()
            .find(|s| s.id == new.id && s.room_key == new.room_key && s.created_at_ms == new.now_ms)
    {
        return Ok((own.clone(), true));
    }
    match &new.room_key {
        Some(key) => existing
            .iter()
            .find(|s| s.room_key.as_ref() == Some(key))
            .map(|s| (s.clone(), false))
            .ok_or_else(|| StoreError::session_conflict(&new.id)),
        None => Err(StoreError::session_conflict(&new.id)),
    }
}

/// Why a session ended when its edge reported the end.
const ENDED_BY_EDGE: &str = "ended_on_edge";

/// The audit page a filter asks for, in either dialect (the builder numbers the
/// parameters as the dialect wants).
fn audit_query<DB: sqlx::Database>(filter: &AuditFilter) -> QueryBuilder<DB>
where
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut q = QueryBuilder::new(sql::AUDIT_PAGE);
    if let Some(edge_id) = &filter.edge_id {
        q.push(" AND edge_id = ").push_bind(edge_id.clone());
    }
    if let Some(session_id) = &filter.session_id {
        q.push(" AND session_id = ").push_bind(session_id.clone());
    }
    if let Some(since) = filter.since_ms {
        q.push(" AND at_ms >= ").push_bind(since);
    }
    if let Some(until) = filter.until_ms {
        q.push(" AND at_ms < ").push_bind(until);
    }
    if let Some(before) = filter.before_id {
        q.push(" AND id < ").push_bind(before);
    }
    q.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(filter.page_size()));
    q
}

fn validate_spool(edge_id: &str, entries: &[SpoolEntry]) -> Result<(), StoreError> {
    if edge_id.is_empty() {
        return Err(StoreError::invalid("spool batch", "empty edge id"));
    }
    for entry in entries {
        if entry.seq == 0 || i64::try_from(entry.seq).is_err() {
            return Err(StoreError::invalid(
                "spool batch",
                format!("sequence {} out of range (1..=2^63-1)", entry.seq),
            ));
        }
        if let locus_protocol::SpoolBody::Metrics(m) = &entry.body
            && !(m.cpu.is_finite() && m.lag_ms.is_finite())
        {
            return Err(StoreError::invalid(
                "spool batch",
                format!("metrics entry {} has a non-finite value", entry.seq),
            ));
        }
    }
    Ok(())
}

/// Seq as stored (validated by [`validate_spool`]).
fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Seq as read back (never negative by the schema's CHECK).
fn seq_u64(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// The spool writer: takes every pending spool batch (up to `max_batch`, of any edges),
/// stores them in one transaction, answers each after COMMIT (see [`Store::store_spool`]).
/// Ends when every [`Store`] is dropped; never stops on a database error (as
/// [`create_writer`]).
async fn spool_writer(backend: Backend, mut rx: mpsc::Receiver<SpoolJob>, max_batch: usize) {
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        if rx.recv_many(&mut jobs, max_batch).await == 0 {
            break;
        }
        // One lock order for every transaction (by edge; a stable sort keeps one edge's
        // batches in arrival order): two locators' transactions never wait on each
        // other's progress rows in a cycle.
        jobs.sort_by(|a, b| a.edge_id.cmp(&b.edge_id));
        match store_spool_batches(&backend, &jobs).await {
            Ok(acked) => {
                debug_assert_eq!(acked.len(), jobs.len());
                for (job, acked) in jobs.drain(..).zip(acked) {
                    let _ = job.reply.send(Ok(acked));
                }
            }
            Err(source) => {
                if Fault::of(&source).is_unreachable() {
                    while let Ok(job) = rx.try_recv() {
                        jobs.push(job);
                    }
                }
                tracing::error!(error = %source, batch = jobs.len(), "spool batch failed");
                let hint = Fault::of(&source).hint();
                let source = Arc::new(source);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(StoreError::Batch {
                        op: "store_spool",
                        hint,
                        source: Arc::clone(&source),
                    }));
                }
            }
        }
    }
}

/// Stores spool batches in one transaction; returns each one's sequence to acknowledge.
async fn store_spool_batches(
    backend: &Backend,
    jobs: &[SpoolJob],
) -> Result<Vec<u64>, sqlx::Error> {
    shared!(backend backend, "store_spool", retried, |db| {
        let mut tx = db.begin_write().await?;
        let mut acks = Vec::with_capacity(jobs.len());
        for SpoolJob { edge_id, entries, .. } in jobs {
            let acked: i64 = sqlx::query_scalar(sql::LOCK_SPOOL_PROGRESS)
                .bind(edge_id)
                .fetch_one(&mut *tx)
                .await?;
            let mut high = acked;
            for entry in entries {
                let seq = seq_i64(entry.seq);
                if seq <= acked {
                    continue; // Relayed again: stored before.
                }
                high = high.max(seq);
                if let SpoolBody::Metrics(m) = &entry.body {
                    sqlx::query(sql::INSERT_METRIC)
                        .bind(edge_id)
                        .bind(seq)
                        .bind(entry.at_unix_ms)
                        .bind(f64::from(m.cpu))
                        .bind(f64::from(m.lag_ms))
                        .bind(i64::from(m.connections))
                        .bind(i64::from(m.sessions))
                        .execute(&mut *tx)
                        .await?;
                    continue;
                }
                let inserted = sqlx::query(sql::INSERT_EDGE_AUDIT)
                    .bind(edge_id)
                    .bind(seq)
                    .bind(entry.at_unix_ms)
                    .bind(entry.body.audit_kind().unwrap_or("unknown"))
                    .bind(entry.body.session_id())
                    .bind(entry.body.participant())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
                if let (true, SpoolBody::SessionStarted { session_id })
                | (true, SpoolBody::ParticipantJoined { session_id, .. }) =
                    (inserted, &entry.body)
                {
                    sqlx::query(sql::NOTE_FIRST_JOIN)
                        .bind(session_id)
                        .bind(edge_id)
                        .bind(entry.at_unix_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                if let (true, SpoolBody::SessionEnded { session_id }) = (inserted, &entry.body) {
                    sqlx::query(sql::END_REPORTED_SESSION)
                        .bind(session_id)
                        .bind(edge_id)
                        .bind(entry.at_unix_ms)
                        .bind(ENDED_BY_EDGE)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            if high > acked {
                sqlx::query(sql::ADVANCE_SPOOL_PROGRESS)
                    .bind(edge_id)
                    .bind(high)
                    .execute(&mut *tx)
                    .await?;
            }
            acks.push(seq_u64(high));
        }
        tx.commit().await?;
        Ok(acks)
    })
}

/// The group-commit writer: takes every pending creation (up to `max_batch`), commits
/// them in one transaction, answers each caller. Ends when every [`Store`] is dropped.
///
/// It never stops on a database error: a failed batch is reported to each of its callers
/// (and, when the database is unreachable, to the creations queued behind it), then the
/// writer waits for the next creations. After a database restart the next batch gets a
/// fresh connection from the pool.
async fn create_writer(backend: Backend, mut rx: mpsc::Receiver<CreateJob>, max_batch: usize) {
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        if rx.recv_many(&mut jobs, max_batch).await == 0 {
            break;
        }
        let news: Vec<&NewSession> = jobs.iter().map(|job| &job.new).collect();
        match backend.create_sessions(&news).await {
            Ok(results) => {
                debug_assert_eq!(results.len(), jobs.len());
                for (job, result) in jobs.drain(..).zip(results) {
                    // The caller may have given up: nothing to do.
                    let _ = job.reply.send(result);
                }
            }
            Err(source) => {
                if Fault::of(&source).is_unreachable() {
                    // They would each wait for the same unreachable database in turn.
                    while let Ok(job) = rx.try_recv() {
                        jobs.push(job);
                    }
                }
                tracing::error!(error = %source, batch = jobs.len(), "session creation batch failed");
                let hint = Fault::of(&source).hint();
                let source = Arc::new(source);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(StoreError::Batch {
                        op: "create_session",
                        hint,
                        source: Arc::clone(&source),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_name_a_sqlite_file() {
        let file = |s: &str| Target::SqliteFile(PathBuf::from(s));
        assert_eq!(
            parse_url("sqlite://data/l.db").ok(),
            Some(file("data/l.db"))
        );
        assert_eq!(
            parse_url("sqlite:///var/l.db").ok(),
            Some(file("/var/l.db"))
        );
        assert_eq!(parse_url("sqlite:l.db").ok(), Some(file("l.db")));
        assert_eq!(
            parse_url("/var/lib/locator/l.db").ok(),
            Some(file("/var/lib/locator/l.db"))
        );
        assert_eq!(parse_url(" l.db ").ok(), Some(file("l.db")));
    }

    #[test]
    fn postgres_urls_go_to_the_postgres_backend_and_never_show_in_debug() {
        for url in [
            "postgres://u:hunter2@db:5432/locator",
            "postgresql://db/locator",
            "POSTGRES://db/locator",
        ] {
            let target = parse_url(url).expect(url);
            assert_eq!(target, Target::Postgres(url.to_string()));
            assert!(!format!("{target:?}").contains("hunter2"));
        }
    }

    #[test]
    fn unusable_urls_are_refused_without_echoing_secrets() {
        for bad in [
            "",
            "sqlite://",
            "sqlite::memory:",
            "sqlite://l.db?mode=rwc",
            "mysql://u:pw@h/db",
        ] {
            let err = parse_url(bad).expect_err(bad).to_string();
            assert!(!err.contains("hunter2") && !err.contains("pw@"), "{err}");
        }
    }
}
