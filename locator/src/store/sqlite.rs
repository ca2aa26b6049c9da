//! The SQLite backend: the embedded default (one locator, zero set-up).
//!
//! Most operations are written once for both backends in the facade (`store.rs`, SQL in
//! `sql.rs`); this file keeps what only SQLite does: opening the file with its pragmas,
//! the two pools and `BEGIN IMMEDIATE` (see below), and the group commit row by row
//! (Postgres inserts a batch from arrays, which SQLite does not have). Nothing is
//! retried on SQLite: there is no connection to lose and one writer, so no deadlock.
//!
//! # Connections
//!
//! Writes go through one connection (a pool of size 1): SQLite has a single writer per
//! database anyway, and queueing writers in the process (in order, without polling) is
//! cheaper and fairer than letting several connections collide on the file lock. Write
//! transactions start with `BEGIN IMMEDIATE`, taking the write lock up front, so a
//! transaction never fails half-way on a lock upgrade. Reads use a small pool of their
//! own; in WAL mode they never wait for the writer.
//!
//! # Durability: WAL with `synchronous = FULL`
//!
//! The journal is a write-ahead log (readers and the writer do not block each other).
//! In WAL mode `synchronous = NORMAL` syncs only at checkpoints: a commit survives a
//! crash of the process but the last commits may be lost on a power loss or OS crash.
//! The locator acknowledges writes to others (a session handed to a client, a spool
//! sequence an edge then deletes), so a commit must survive power loss too:
//! `synchronous = FULL` syncs the log at every commit. The throughput this costs is won
//! back by the group commit of session creations (one sync per batch, see
//! [`Store::create_session`](super::Store::create_session)) and of spool batches (many
//! edges' batches in one transaction, see
//! [`Store::store_spool`](super::Store::store_spool)).

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::error::{Fault, migrate_hint};
use super::rows::session_from_row;
use super::sql::{self, session_columns};
use super::{CreateReply, NewSession, StoreError, StoreOptions, answer_without_insert};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// `$1` id, `$2` room key, `$3` region, `$4` edge, `$5` now: one creation of a batch
/// (Postgres inserts a batch in one statement, from arrays SQLite does not have).
const INSERT_SESSION: &str = concat!(
    "INSERT INTO sessions (id, room_key, region, edge_id, state, created_at_ms, \
     updated_at_ms) VALUES ($1, $2, $3, $4, 'open', $5, $5) ON CONFLICT DO NOTHING \
     RETURNING ",
    session_columns!()
);
#[derive(Debug, Clone)]
pub(super) struct SqliteBackend {
    writer: SqlitePool,
    reader: SqlitePool,
    location: String,
}

impl SqliteBackend {
    pub(super) async fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| StoreError::CreateDir {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL, not NORMAL: see the module documentation.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        let open_error = |source: sqlx::Error| StoreError::Open {
            location: location.clone(),
            hint: open_hint(&source).into(),
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
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|source| StoreError::Migrate {
                location: location.clone(),
                hint: migrate_hint(&source, true),
                source,
            })?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .connect_with(connect)
            .await
            .map_err(open_error)?;
        Ok(SqliteBackend {
            writer,
            reader,
            location,
        })
    }

    pub(super) fn location(&self) -> &str {
        &self.location
    }

    /// Reads: the read pool (WAL: never waits for the writer).
    pub(super) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Single-statement writes: the one write connection.
    pub(super) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// A write transaction, holding the write lock from its start.
    pub(super) async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    pub(super) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Creates (or joins, for a room key) each session in order, in one transaction.
    /// `Err` when the transaction failed (nothing committed); otherwise one answer per
    /// session, in order.
    pub(super) async fn create_sessions(
        &self,
        news: &[&NewSession],
    ) -> Result<Vec<CreateReply>, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        let mut replies = Vec::with_capacity(news.len());
        for new in news {
            let inserted = sqlx::query(INSERT_SESSION)
                .bind(&new.id)
                .bind(&new.room_key)
                .bind(&new.region)
                .bind(&new.edge_id)
                .bind(new.now_ms)
                .fetch_optional(&mut *tx)
                .await?;
            let reply = match (inserted, &new.room_key) {
                (Some(row), _) => Ok((session_from_row(&row)?, true)),
                (None, Some(key)) => {
                    // The key's room exists (or the id is taken): join the room.
                    let existing = sqlx::query(sql::SESSION_BY_ROOM)
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?
                        .as_ref()
                        .map(session_from_row)
                        .transpose()?;
                    answer_without_insert(new, existing.as_slice(), false)
                }
                (None, None) => Err(StoreError::session_conflict(&new.id)),
            };
            replies.push(reply);
        }
        tx.commit().await?;
        Ok(replies)
    }

    /// One locator: nothing is published, so only the registration row goes.
    pub(super) async fn forget_edge(
        &self,
        edge_id: &str,
        _claim_rev: i64,
    ) -> Result<bool, StoreError> {
        sqlx::query(sql::FORGET_EDGE)
            .bind(edge_id)
            .execute(&self.writer)
            .await
            .map_err(StoreError::db("forget_edge"))?;
        Ok(true)
    }
}

/// What to tell an operator when the database cannot be opened.
fn open_hint(err: &sqlx::Error) -> &'static str {
    let fault = Fault::of(err);
    if fault.is_unspecific() {
        "check that the path names a SQLite database file (or a new file) that the \
         locator may read and write, in a folder it may write (the write-ahead log \
         files are created beside it)"
    } else {
        fault.hint()
    }
}
