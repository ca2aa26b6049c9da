//! The Postgres backend: several locators on one database.
//!
//! Same tables and same semantics as the SQLite backend. Most operations are written
//! once for both in the facade (`store.rs`, SQL in `sql.rs`); this file keeps what only
//! Postgres does or says differently: its connections and session settings, migrations
//! under an advisory lock, the retry of idempotent operations ([`retry_once!`]), the
//! group commit as one `UNNEST` statement, and forgetting an edge's published row. The
//! operations of several locators on one database (`edge_live`, notifications) are in
//! `cluster.rs`, on a type only a Postgres store gives.
//!
//! # Connections and timeouts
//!
//! One pool of [`StoreOptions::max_connections`] connections serves reads, writes and
//! the group-commit writer, which keeps one of them between batches (so the hot path
//! skips the pool's check of a connection before use, a round trip) and gives it back
//! after any error. Every connection is set up with
//!
//! - `statement_timeout` = [`StoreOptions::statement_timeout`] (10 s by default): a stuck
//!   statement fails instead of holding a pooled connection and its locks forever;
//! - `lock_timeout` = [`StoreOptions::busy_timeout`] (5 s): waiting for a row another
//!   locator holds is bounded, like SQLite's busy timeout;
//! - `idle_in_transaction_session_timeout` = 60 s: a transaction abandoned half-way
//!   (a bug, a hung task) cannot keep its locks;
//! - `application_name` = `locus-locator` (visible in `pg_stat_activity`).
//!
//! A setting already given in the URL's `options` parameter (or `PGOPTIONS`) is kept.
//!
//! # Surviving a restart of the database
//!
//! The pool checks a connection before handing it out and replaces a dead one; while the
//! server is down, taking a connection retries (connection refused) until
//! [`StoreOptions::acquire_timeout`] and then fails: calls return an error,
//! [`Store::ping`](super::Store::ping) fails (so `/readyz` says not ready), the
//! group-commit writer reports the error to the waiting callers and keeps serving later
//! batches. Nothing panics and nothing needs a restart of the locator.
//!
//! An operation that fails on a broken connection (the server restarted under it), on a
//! deadlock or on a serialization failure is retried once, when it is idempotent:
//!
//! - reads, [`upsert_edge`](super::Store::upsert_edge), the ending and moving of
//!   sessions (conditional updates: a second run changes nothing; it may then report
//!   "not changed" although the first, unacknowledged, run changed it);
//! - spool batches: idempotent by `(edge_id, seq)`;
//! - suspension changes: conditional update, audit row only on a real change;
//! - session creations: idempotent *by id*. The locator draws a 128-bit random id per
//!   creation, so a row with that id is this very creation. A retry runs the same
//!   `INSERT … ON CONFLICT DO NOTHING` and, for a creation that did not insert, reads the
//!   row with its id: when it is there with the same room key and creation time, the
//!   first attempt committed before the connection broke and the creation is answered as
//!   created (not as a conflict, nor as a join of the room it created itself).
//!
//! Audit rows ([`record_admin_action`](super::Store::record_admin_action) and
//! [`record_locator_event`](super::Store::record_locator_event)) are not retried:
//! each call inserts a new row, and a retry after an unacknowledged commit would store it
//! twice.
//!
//! # Migrations with several locators starting at once
//!
//! `sqlx::migrate!("../migrations/postgres")` is embedded and applied by `open`. sqlx
//! 0.9's migrator takes a session-level advisory lock for the whole run
//! (`pg_advisory_lock(0x3d32ad9e * crc32(current_database()))`, see
//! `sqlx-postgres/src/migrate.rs`) and reads the applied versions only once it holds it:
//! of several locators starting together, one applies the migrations and the others
//! wait, then find them applied. Each migration runs in its own transaction. The lock is
//! released by an explicit unlock on success only, so the migrations run on a connection
//! taken out of the pool and closed afterwards: a failed run cannot leave the lock held
//! by a pooled connection. That connection has no statement timeout (a migration may be
//! long) but a 60 s `lock_timeout`, so a locator waiting behind a hung one, or behind a
//! long transaction for a table lock, fails with a clear error instead of hanging.
//!
//! # Concurrency between locators
//!
//! - One room per key: the UNIQUE index on `room_key`; `INSERT … ON CONFLICT DO NOTHING`
//!   waits for a concurrent insert of the key to commit, then the read sees its row.
//! - Group commit: a batch is one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING
//!   RETURNING` statement, hence one transaction and one round trip (plus one read for
//!   the creations that inserted nothing: joins and conflicts), rows in a fixed order
//!   (rooms by key, then ad-hoc sessions by id) so two locators' batches take their index
//!   locks in the same order; a deadlock that still happens is retried once (nothing was
//!   committed).
//! - Moving a room: compare-and-set `UPDATE … WHERE edge_id = from`; under READ
//!   COMMITTED a concurrent second update re-checks the condition on the new row version
//!   and changes nothing.
//! - Spool: the edge's `spool_progress` row is locked first (upsert), so concurrent relays
//!   of one edge's spool through two locators are applied one after the other.
//! - Suspension: `UPDATE … WHERE suspended <> new` plus the audit row in one
//!   transaction, so two admins on two locators write one audit row.
//!
//! # Durability
//!
//! A commit is durable when the server's `synchronous_commit` is `on` (the default) or
//! stronger; `open` warns in the log when it is `off`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use super::error::{Fault, migrate_hint};
use super::rows::session_from_row;
use super::sql::{self, session_columns};
use super::{
    CreateReply, NewSession, SessionRecord, StoreError, StoreOptions, answer_without_insert,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// `$1` ids, `$2` room keys, `$3` regions, `$4` edges, `$5` times: a whole group-commit
/// batch in one statement, inserted in the order given (SQLite, without arrays, inserts
/// row by row).
const INSERT_SESSIONS: &str = concat!(
    "INSERT INTO sessions (id, room_key, region, edge_id, state, created_at_ms, \
     updated_at_ms) \
     SELECT id, room_key, region, edge_id, 'open', at_ms, at_ms \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) \
     WITH ORDINALITY AS t (id, room_key, region, edge_id, at_ms, ord) \
     ORDER BY ord \
     ON CONFLICT DO NOTHING RETURNING ",
    session_columns!()
);

/// `$1` ids, `$2` room keys: the rows of the creations of a batch that inserted nothing.
const SESSIONS_BY_IDS_OR_ROOMS: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE id = ANY($1::text[]) OR room_key = ANY($2::text[])"
);

/// Longest a transaction may sit idle with locks held before the server ends it.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest the migrations wait for a lock (the migration lock of another locator, or a
/// table lock).
const MIGRATION_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `$body` (an expression yielding `Result<_, sqlx::Error>`) and, when it fails
/// with a transient fault ([`Fault::is_transient`]: a second run is safe and may
/// succeed), runs it once more with `$retry` set. Only for idempotent operations (see
/// the module documentation). A macro, not a function taking a closure: the body borrows
/// the caller's arguments across `.await`s, and the futures must stay `Send`.
macro_rules! retry_once {
    ($op:expr, |$retry:ident| $body:expr) => {{
        let mut $retry = false;
        loop {
            let result: Result<_, sqlx::Error> = $body;
            match result {
                Err(error)
                    if !$retry && $crate::store::error::Fault::of(&error).is_transient() =>
                {
                    tracing::warn!(
                        op = $op,
                        %error,
                        "database connection lost or transaction aborted by a conflict: \
                         retrying once"
                    );
                    $retry = true;
                }
                other => break other,
            }
        }
    }};
}
pub(super) use retry_once;

#[derive(Debug, Clone)]
pub(super) struct PostgresBackend {
    pool: PgPool,
    /// The group-commit writer's connection, kept between batches (no check before each
    /// batch on the hot path); dropped after an error, so the next batch takes a fresh,
    /// checked one from the pool. Only the writer task locks it (and `close`).
    writer: Arc<tokio::sync::Mutex<Option<PoolConnection<Postgres>>>>,
    location: String,
}

impl PostgresBackend {
    pub(super) async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl {
            reason: url_problem(url, &e),
        })?;
        let location = location_of(&connect);
        let connect = session_settings(connect.application_name("locus-locator"), options);
        let open_error = |source: sqlx::Error| StoreError::Open {
            location: location.clone(),
            hint: open_hint(&source),
            source,
        };
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(options.acquire_timeout)
            // Every connection is checked (a round trip) before use: after a restart of
            // the server the pool is full of dead connections, and each must be found
            // before a call gets it, not by the call failing.
            .test_before_acquire(true)
            .connect_with(connect)
            .await
            .map_err(open_error)?;
        let migrated = migrate(&pool).await;
        if let Err(source) = migrated {
            pool.close().await;
            return Err(StoreError::Migrate {
                location,
                hint: migrate_hint(&source, false),
                source,
            });
        }
        match sqlx::query_scalar::<_, String>("SELECT current_setting('synchronous_commit')")
            .fetch_one(&pool)
            .await
        {
            Ok(setting) if setting == "off" => tracing::warn!(
                database = %location,
                "synchronous_commit is off on this database: a session or spool entry \
                 acknowledged by the locator may be lost if the database server crashes"
            ),
            Ok(_) => {}
            Err(source) => return Err(open_error(source)),
        }
        Ok(PostgresBackend {
            pool,
            writer: Arc::default(),
            location,
        })
    }

    pub(super) fn location(&self) -> &str {
        &self.location
    }

    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Reads and single-statement writes share the pool.
    pub(super) fn reader(&self) -> &PgPool {
        &self.pool
    }

    pub(super) fn writer(&self) -> &PgPool {
        &self.pool
    }

    /// A write transaction (READ COMMITTED; row locks and conditions decide races).
    pub(super) async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    pub(super) async fn close(&self) {
        // The pool's close waits for every connection to come back: give back the
        // writer's first (a later batch fails: the pool is closed).
        self.writer.lock().await.take();
        self.pool.close().await;
    }

    /// Creates (or joins, for a room key) each session in order, in one transaction.
    /// `Err` when the transaction failed (nothing committed); otherwise one answer per
    /// session, in order.
    pub(super) async fn create_sessions(
        &self,
        news: &[&NewSession],
    ) -> Result<Vec<CreateReply>, sqlx::Error> {
        retry_once!("create_session", |retry| self
            .create_batch(news, retry)
            .await)
    }

    /// One statement inserts the whole batch: it is one transaction (committed, and
    /// synced, before the statement returns), so no BEGIN/COMMIT round trips are needed.
    /// The reads that follow for creations that inserted nothing see every committed row,
    /// this batch's included.
    async fn create_batch(
        &self,
        news: &[&NewSession],
        retry: bool,
    ) -> Result<Vec<CreateReply>, sqlx::Error> {
        let mut slot = self.writer.lock().await;
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(self.pool.acquire().await?),
        };
        let answered = Self::create_batch_on(conn, news, retry).await;
        if answered.is_err()
            && let Some(mut broken) = slot.take()
        {
            // Whatever went wrong, the next batch starts on a checked connection.
            broken.close_on_drop();
        }
        answered
    }

    async fn create_batch_on(
        conn: &mut PgConnection,
        news: &[&NewSession],
        retry: bool,
    ) -> Result<Vec<CreateReply>, sqlx::Error> {
        // Rooms by key, then ad-hoc sessions by id: two locators' batches take their
        // index locks in one order. Stable: creations of one key stay in arrival order,
        // so the first of them creates the room.
        let mut order: Vec<usize> = (0..news.len()).collect();
        order.sort_by_key(|&i| {
            let new = news[i];
            (
                new.room_key.is_none(),
                new.room_key.as_deref().unwrap_or(&new.id),
            )
        });
        let ids: Vec<&str> = order.iter().map(|&i| news[i].id.as_str()).collect();
        let keys: Vec<Option<&str>> = order.iter().map(|&i| news[i].room_key.as_deref()).collect();
        let regions: Vec<&str> = order.iter().map(|&i| news[i].region.as_str()).collect();
        let edges: Vec<&str> = order.iter().map(|&i| news[i].edge_id.as_str()).collect();
        let times: Vec<i64> = order.iter().map(|&i| news[i].now_ms).collect();

        let inserted = sqlx::query(INSERT_SESSIONS)
            .bind(&ids)
            .bind(&keys)
            .bind(&regions)
            .bind(&edges)
            .bind(&times)
            .fetch_all(&mut *conn)
            .await?;
        let mut inserted: std::collections::HashMap<String, SessionRecord> = inserted
            .iter()
            .map(|row| session_from_row(row).map(|s| (s.id.clone(), s)))
            .collect::<Result<_, _>>()?;

        // Creations that inserted nothing: a room that exists (join it), an id that is
        // taken (conflict), or on a retry possibly this creation's own first attempt.
        let mut replies: Vec<Option<CreateReply>> = (0..news.len()).map(|_| None).collect();
        let mut pending = Vec::new();
        for &i in &order {
            match inserted.remove(&news[i].id) {
                Some(record) => replies[i] = Some(Ok((record, true))),
                None => pending.push(i),
            }
        }
        if !pending.is_empty() {
            let ids: Vec<&str> = pending.iter().map(|&i| news[i].id.as_str()).collect();
            let keys: Vec<&str> = pending
                .iter()
                .filter_map(|&i| news[i].room_key.as_deref())
                .collect();
            let rows = sqlx::query(SESSIONS_BY_IDS_OR_ROOMS)
                .bind(&ids)
                .bind(&keys)
                .fetch_all(&mut *conn)
                .await?;
            let existing = rows
                .iter()
                .map(session_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            for i in pending {
                replies[i] = Some(answer_without_insert(news[i], &existing, retry));
            }
        }
        Ok(replies
            .into_iter()
            .map(|reply| reply.unwrap_or_else(|| Err(StoreError::WriterStopped)))
            .collect())
    }

    /// The published row goes only while it is still the failed claim `claim_rev` (an
    /// edge that registered again meanwhile is kept), then the registration row.
    pub(super) async fn forget_edge(
        &self,
        edge_id: &str,
        claim_rev: i64,
    ) -> Result<bool, StoreError> {
        let op = "forget_edge";
        let db = StoreError::db;
        let mut tx = self.pool.begin().await.map_err(db(op))?;
        sqlx::query(
            "DELETE FROM edge_live WHERE edge_id = $1 AND claim_rev = $2 AND liveness = 'failed'",
        )
        .bind(edge_id)
        .bind(claim_rev)
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
        let claimed: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM edge_live WHERE edge_id = $1)")
                .bind(edge_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db(op))?;
        if !claimed {
            sqlx::query(sql::FORGET_EDGE)
                .bind(edge_id)
                .execute(&mut *tx)
                .await
                .map_err(db(op))?;
        }
        tx.commit().await.map_err(db(op))?;
        Ok(!claimed)
    }
}

/// Applies the session settings of every pooled connection (see the module
/// documentation), keeping any the URL or `PGOPTIONS` already sets.
fn session_settings(connect: PgConnectOptions, options: &StoreOptions) -> PgConnectOptions {
    // `-c name=value` or `--name=value`, separated by spaces.
    let given: Vec<String> = connect
        .get_options()
        .unwrap_or_default()
        .split_whitespace()
        .filter(|word| *word != "-c")
        .map(|word| {
            word.trim_start_matches("-c")
                .trim_start_matches("--")
                .to_string()
        })
        .collect();
    let is_given = |name: &str| {
        given
            .iter()
            .any(|word| word.split_once('=').is_some_and(|(key, _)| key == name))
    };
    let settings = [
        ("statement_timeout", options.statement_timeout),
        ("lock_timeout", options.busy_timeout),
        (
            "idle_in_transaction_session_timeout",
            IDLE_IN_TRANSACTION_TIMEOUT,
        ),
    ];
    let missing: Vec<(&str, String)> = settings
        .into_iter()
        .filter(|(name, _)| !is_given(name))
        .map(|(name, value)| (name, millis(value)))
        .collect();
    if missing.is_empty() {
        connect
    } else {
        connect.options(missing)
    }
}

/// A duration as a Postgres setting in milliseconds (0 would mean "no limit": at least 1).
fn millis(d: Duration) -> String {
    d.as_millis().clamp(1, i32::MAX as u128).to_string()
}

/// Applies the embedded migrations under sqlx's advisory lock, on a connection of their
/// own that is closed afterwards (see the module documentation).
async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::query(
        "SELECT set_config('statement_timeout', '0', false), \
         set_config('lock_timeout', $1, false)",
    )
    .bind(millis(MIGRATION_LOCK_TIMEOUT))
    .execute(&mut conn)
    .await?;
    let applied = MIGRATOR.run(&mut conn).await;
    // Closing ends the session: the advisory lock goes with it, also after a failure.
    let _ = conn.close().await;
    applied
}

/// `host:port/database` (or `socket-folder/database`): what errors and `describe` show.
fn location_of(connect: &PgConnectOptions) -> String {
    let database = connect
        .get_database()
        .unwrap_or_else(|| connect.get_username());
    match connect.get_socket() {
        Some(folder) => format!("{}/{database}", folder.display()),
        None => format!("{}:{}/{database}", connect.get_host(), connect.get_port()),
    }
}

/// Why a Postgres URL does not parse, without the password (the parser's message could
/// quote a piece of the URL).
fn url_problem(url: &str, err: &sqlx::Error) -> String {
    let mut detail = match err {
        sqlx::Error::Configuration(e) => e.to_string(),
        other => other.to_string(),
    };
    if let Some(password) = password_in(url)
        && !password.is_empty()
    {
        detail = detail.replace(password, "***");
    }
    format!(
        "{detail}: expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (percent-encode \
         special characters of the password)"
    )
}

/// The password part of a URL's authority, as written.
fn password_in(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, password)| password)
}

/// What to tell an operator when the database cannot be opened. A failed TLS handshake
/// (rustls' error comes wrapped in an I/O error) says why, and which URL parameters
/// decide it.
fn open_hint(err: &sqlx::Error) -> std::borrow::Cow<'static, str> {
    use locus_serve::tls::rustls;
    let tls_failure = match err {
        sqlx::Error::Tls(e) => Some(e.to_string()),
        sqlx::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(ToString::to_string),
        _ => None,
    };
    if let Some(why) = tls_failure {
        return format!(
            "TLS with the database failed ({why}): check sslmode (disable, prefer, require, \
             verify-ca, verify-full) and sslrootcert (the CA that signed the server's \
             certificate) in the URL"
        )
        .into();
    }
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
            "cannot connect: check the host and port of the URL, that the server runs and \
             accepts TCP connections from this host (listen_addresses, pg_hba.conf)"
        }
        other => match Fault::of(other) {
            fault if fault.is_unspecific() => {
                "check the database URL: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            }
            fault => fault.hint(),
        },
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SessionState;

    #[test]
    fn locations_never_carry_credentials() {
        let location = |url: &str| location_of(&PgConnectOptions::from_str(url).expect(url));
        assert_eq!(
            location("postgres://locator:hunter2@db.internal:6432/locus"),
            "db.internal:6432/locus"
        );
        assert_eq!(
            location("postgresql://u@10.0.0.5/locus"),
            "10.0.0.5:5432/locus"
        );
        assert_eq!(
            location("postgres://u:pw@[::1]:5433/locus"),
            "[::1]:5433/locus"
        );
        assert_eq!(
            location("postgres://u@%2Fvar%2Frun%2Fpostgresql/locus"),
            "/var/run/postgresql/locus"
        );
    }

    #[test]
    fn passwords_are_found_and_scrubbed_from_parse_errors() {
        assert_eq!(password_in("postgres://u:hunter2@h/db"), Some("hunter2"));
        assert_eq!(password_in("postgres://u:p@ss@h/db"), Some("p@ss"));
        assert_eq!(password_in("postgres://u@h/db"), None);
        assert_eq!(password_in("postgres://h/db?x=a:b@c"), None);
        for bad in [
            "postgres://u:hunter2@host:notaport/db",
            "postgres://u:hunter2@host/db?sslmode=hunter2",
        ] {
            let err = PgConnectOptions::from_str(bad).expect_err(bad);
            let text = url_problem(bad, &err);
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("expected postgres://"), "{text}");
        }
    }

    fn record(id: &str, key: Option<&str>, created_at_ms: i64) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            room_key: key.map(Into::into),
            region: "eu-west".into(),
            edge_id: "e1".into(),
            state: SessionState::Open,
            created_at_ms,
            updated_at_ms: created_at_ms,
            ended_at_ms: None,
            end_reason: None,
        }
    }

    fn new(id: &str, key: Option<&str>, now_ms: i64) -> NewSession {
        NewSession {
            id: id.into(),
            room_key: key.map(Into::into),
            region: "eu-west".into(),
            edge_id: "e1".into(),
            now_ms,
        }
    }

    #[test]
    fn a_retried_creation_recognises_its_own_committed_first_attempt() {
        let created = |reply: CreateReply| reply.map(|(s, created)| (s.id, created)).ok();
        // The first attempt of an ad-hoc creation committed, then the connection broke.
        let rows = [record("s1", None, 100)];
        assert_eq!(
            created(answer_without_insert(&new("s1", None, 100), &rows, true)),
            Some(("s1".into(), true))
        );
        // Not a retry: the id is taken.
        assert!(matches!(
            answer_without_insert(&new("s1", None, 100), &rows, false),
            Err(StoreError::Conflict { .. })
        ));
        // A retry whose id is taken by something else (another time or key): a conflict.
        for other in [new("s1", None, 101), new("s1", Some("k"), 100)] {
            assert!(matches!(
                answer_without_insert(&other, &rows, true),
                Err(StoreError::Conflict { .. })
            ));
        }
        // A room this creation made on its first attempt: created, not joined.
        let rows = [record("r1", Some("k"), 100)];
        assert_eq!(
            created(answer_without_insert(
                &new("r1", Some("k"), 100),
                &rows,
                true
            )),
            Some(("r1".into(), true))
        );
        // A room someone else made: joined, retry or not.
        for retry in [false, true] {
            assert_eq!(
                created(answer_without_insert(
                    &new("r2", Some("k"), 100),
                    &rows,
                    retry
                )),
                Some(("r1".into(), false))
            );
        }
        // A room key whose id is taken by another session: a conflict.
        let rows = [record("x", None, 5)];
        assert!(matches!(
            answer_without_insert(&new("x", Some("k2"), 6), &rows, true),
            Err(StoreError::Conflict { .. })
        ));
    }

    #[test]
    fn settings_given_in_the_url_are_kept() {
        let options = StoreOptions::default();
        let connect =
            PgConnectOptions::from_str("postgres://h/db?options=-c%20statement_timeout%3D1234")
                .expect("url");
        let given = session_settings(connect, &options);
        let text = given.get_options().unwrap_or_default();
        assert!(text.contains("statement_timeout=1234"), "{text}");
        assert!(!text.contains("statement_timeout=10000"), "{text}");
        assert!(text.contains("lock_timeout=5000"), "{text}");
        assert!(
            text.contains("idle_in_transaction_session_timeout=60000"),
            "{text}"
        );
    }
}
