//! The SQLite backend: the embedded default (one locator, zero set-up).
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
//! [`Store::create_session`](super::Store::create_session)) and by storing each spool
//! batch in one transaction.

use std::path::Path;
use std::time::Duration;

use locus_protocol::{SpoolBody, SpoolEntry};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use super::error::{Fault, migrate_hint};
use super::rows::{audit_from_row, edge_from_row, metric_from_row, session_from_row};
use super::{
    AuditFilter, AuditRecord, AuditSource, CreateReply, EdgeRecord, MetricRecord, NewSession,
    SessionRecord, StoreError, StoreOptions, seq_i64, seq_u64, sql,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Why a session ended when its edge reported the end.
const ENDED_BY_EDGE: &str = "ended_on_edge";

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

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(StoreError::db("ping"))?;
        Ok(())
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut replies = Vec::with_capacity(news.len());
        for new in news {
            let inserted = sqlx::query(
                "INSERT INTO sessions (id, room_key, region, edge_id, state, created_at_ms, \
                 updated_at_ms) VALUES (?1, ?2, ?3, ?4, 'open', ?5, ?5) ON CONFLICT DO NOTHING \
                 RETURNING id, room_key, region, edge_id, state, created_at_ms, updated_at_ms, \
                 ended_at_ms, end_reason",
            )
            .bind(&new.id)
            .bind(&new.room_key)
            .bind(&new.region)
            .bind(&new.edge_id)
            .bind(new.now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            let reply = match (inserted, &new.room_key) {
                (Some(row), _) => (session_from_row(&row)?, true),
                (None, Some(key)) => {
                    // The key's room exists (or the id is taken): join the room.
                    let existing = sqlx::query(
                        "SELECT id, room_key, region, edge_id, state, created_at_ms, \
                         updated_at_ms, ended_at_ms, end_reason FROM sessions WHERE room_key = ?1",
                    )
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match existing {
                        Some(row) => (session_from_row(&row)?, false),
                        None => {
                            replies.push(Err(StoreError::session_conflict(&new.id)));
                            continue;
                        }
                    }
                }
                (None, None) => {
                    replies.push(Err(StoreError::session_conflict(&new.id)));
                    continue;
                }
            };
            replies.push(Ok(reply));
        }
        tx.commit().await?;
        Ok(replies)
    }

    pub(super) async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let op = "get_session";
        let row = sqlx::query(
            "SELECT id, room_key, region, edge_id, state, created_at_ms, updated_at_ms, \
             ended_at_ms, end_reason FROM sessions WHERE id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(StoreError::db(op))?;
        row.map(|row| session_from_row(&row))
            .transpose()
            .map_err(StoreError::db(op))
    }

    pub(super) async fn get_room(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
        let op = "get_room";
        let row = sqlx::query(
            "SELECT id, room_key, region, edge_id, state, created_at_ms, updated_at_ms, \
             ended_at_ms, end_reason FROM sessions WHERE room_key = ?1",
        )
        .bind(key)
        .fetch_optional(&self.reader)
        .await
        .map_err(StoreError::db(op))?;
        row.map(|row| session_from_row(&row))
            .transpose()
            .map_err(StoreError::db(op))
    }

    pub(super) async fn end_session(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET state = 'ended', ended_at_ms = ?3, updated_at_ms = ?3, \
             end_reason = ?2 WHERE id = ?1 AND state = 'open' AND room_key IS NULL",
        )
        .bind(id)
        .bind(reason)
        .bind(now_ms)
        .execute(&self.writer)
        .await
        .map_err(StoreError::db("end_session"))?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn reassign_session(
        &self,
        id: &str,
        from_edge: &str,
        to_edge: &str,
        region: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET edge_id = ?3, region = ?4, updated_at_ms = ?5 \
             WHERE id = ?1 AND edge_id = ?2 AND state = 'open'",
        )
        .bind(id)
        .bind(from_edge)
        .bind(to_edge)
        .bind(region)
        .bind(now_ms)
        .execute(&self.writer)
        .await
        .map_err(StoreError::db("reassign_session"))?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn end_ad_hoc_sessions_on_edge(
        &self,
        edge_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(sql::END_AD_HOC_ON_EDGE)
            .bind(edge_id)
            .bind(reason)
            .bind(now_ms)
            .fetch_all(&self.writer)
            .await
            .map_err(StoreError::db("end_ad_hoc_sessions_on_edge"))
    }

    pub(super) async fn unjoined_sessions(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query_as(sql::UNJOINED_SESSIONS)
            .bind(created_before_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(StoreError::db("unjoined_sessions"))
    }

    pub(super) async fn expire_unjoined(
        &self,
        ids: &[&str],
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let op = "expire_unjoined";
        let db = StoreError::db;
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db(op))?;
        let mut ended = Vec::new();
        for id in ids {
            let done = sqlx::query(sql::EXPIRE_UNJOINED)
                .bind(id)
                .bind(now_ms)
                .bind(reason)
                .execute(&mut *tx)
                .await
                .map_err(db(op))?;
            if done.rows_affected() > 0 {
                ended.push(id.to_string());
            }
        }
        tx.commit().await.map_err(db(op))?;
        Ok(ended)
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

    pub(super) async fn open_sessions_on_edge(
        &self,
        edge_id: &str,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let op = "open_sessions_on_edge";
        let rows = sqlx::query(
            "SELECT id, room_key, region, edge_id, state, created_at_ms, updated_at_ms, \
             ended_at_ms, end_reason FROM sessions WHERE edge_id = ?1 AND state = 'open' \
             ORDER BY created_at_ms, id",
        )
        .bind(edge_id)
        .fetch_all(&self.reader)
        .await
        .map_err(StoreError::db(op))?;
        rows.iter()
            .map(session_from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::db(op))
    }

    pub(super) async fn upsert_edge(&self, edge: &EdgeRecord) -> Result<EdgeRecord, StoreError> {
        let op = "upsert_edge";
        let row = sqlx::query(
            "INSERT INTO edges (id, region, public_url, capacity, version, suspended, \
             first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7) \
             ON CONFLICT (id) DO UPDATE SET region = excluded.region, \
             public_url = excluded.public_url, capacity = excluded.capacity, \
             version = excluded.version, last_seen_ms = excluded.last_seen_ms \
             RETURNING id, region, public_url, capacity, version, suspended, suspended_by, \
             suspended_at_ms, first_seen_ms, last_seen_ms",
        )
        .bind(&edge.id)
        .bind(&edge.region)
        .bind(&edge.public_url)
        .bind(i64::from(edge.capacity))
        .bind(&edge.version)
        .bind(edge.first_seen_ms)
        .bind(edge.last_seen_ms)
        .fetch_one(&self.writer)
        .await
        .map_err(StoreError::db(op))?;
        edge_from_row(&row).map_err(StoreError::db(op))
    }

    pub(super) async fn set_suspended(
        &self,
        edge_id: &str,
        suspended: bool,
        actor: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let op = "set_suspended";
        let db = StoreError::db;
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db(op))?;
        let changed = sqlx::query(
            "UPDATE edges SET suspended = ?2, suspended_by = ?3, suspended_at_ms = ?4 \
             WHERE id = ?1 AND suspended <> ?2",
        )
        .bind(edge_id)
        .bind(i64::from(suspended))
        .bind(suspended.then_some(actor))
        .bind(suspended.then_some(now_ms))
        .execute(&mut *tx)
        .await
        .map_err(db(op))?
        .rows_affected()
            > 0;
        if !changed {
            let known = sqlx::query("SELECT 1 FROM edges WHERE id = ?1")
                .bind(edge_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(op))?
                .is_some();
            // Nothing written: dropping the transaction rolls it back.
            return if known {
                Ok(false)
            } else {
                Err(StoreError::NotFound {
                    what: "edge",
                    id: edge_id.to_string(),
                })
            };
        }
        let kind = if suspended {
            "edge_suspended"
        } else {
            "edge_resumed"
        };
        sqlx::query(
            "INSERT INTO audit (source, edge_id, at_ms, kind, actor) \
             VALUES ('admin', ?1, ?2, ?3, ?4)",
        )
        .bind(edge_id)
        .bind(now_ms)
        .bind(kind)
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
        tx.commit().await.map_err(db(op))?;
        Ok(true)
    }

    pub(super) async fn edge(&self, edge_id: &str) -> Result<Option<EdgeRecord>, StoreError> {
        let op = "edge";
        let row = sqlx::query(
            "SELECT id, region, public_url, capacity, version, suspended, suspended_by, \
             suspended_at_ms, first_seen_ms, last_seen_ms FROM edges WHERE id = ?1",
        )
        .bind(edge_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(StoreError::db(op))?;
        row.map(|row| edge_from_row(&row))
            .transpose()
            .map_err(StoreError::db(op))
    }

    pub(super) async fn edges(&self) -> Result<Vec<EdgeRecord>, StoreError> {
        let op = "edges";
        let rows = sqlx::query(
            "SELECT id, region, public_url, capacity, version, suspended, suspended_by, \
             suspended_at_ms, first_seen_ms, last_seen_ms FROM edges ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(StoreError::db(op))?;
        rows.iter()
            .map(edge_from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::db(op))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record_audit(
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
            return Err(StoreError::Invalid {
                what: "audit entry",
                reason: "empty kind".into(),
            });
        }
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO audit (source, edge_id, at_ms, kind, session_id, actor, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        )
        .bind(source.as_str())
        .bind(edge_id)
        .bind(at_ms)
        .bind(kind)
        .bind(session_id)
        .bind(actor)
        .bind(detail)
        .fetch_one(&self.writer)
        .await
        .map_err(StoreError::db("record_audit"))
    }

    pub(super) async fn store_spool(
        &self,
        edge_id: &str,
        entries: &[SpoolEntry],
    ) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return self.acked_seq(edge_id).await;
        }
        self.store_spool_tx(edge_id, entries)
            .await
            .map_err(StoreError::db("store_spool"))
    }

    async fn store_spool_tx(
        &self,
        edge_id: &str,
        entries: &[SpoolEntry],
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let acked: i64 =
            sqlx::query_scalar("SELECT acked_seq FROM spool_progress WHERE edge_id = ?1")
                .bind(edge_id)
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(0);
        let mut high = acked;
        for entry in entries {
            let seq = seq_i64(entry.seq);
            if seq <= acked {
                continue; // Relayed again: stored before.
            }
            high = high.max(seq);
            if let SpoolBody::Metrics(m) = &entry.body {
                sqlx::query(
                    "INSERT INTO metrics (edge_id, seq, at_ms, cpu, lag_ms, connections, \
                     sessions) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                )
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
            let kind = entry.body.audit_kind().unwrap_or("unknown");
            let inserted = sqlx::query(
                "INSERT INTO audit (source, edge_id, seq, at_ms, kind, session_id, participant) \
                 VALUES ('edge', ?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            )
            .bind(edge_id)
            .bind(seq)
            .bind(entry.at_unix_ms)
            .bind(kind)
            .bind(entry.body.session_id())
            .bind(entry.body.participant())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if let (true, SpoolBody::SessionStarted { session_id })
            | (true, SpoolBody::ParticipantJoined { session_id, .. }) = (inserted, &entry.body)
            {
                sqlx::query(sql::NOTE_FIRST_JOIN)
                    .bind(session_id)
                    .bind(edge_id)
                    .bind(entry.at_unix_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            if let (true, SpoolBody::SessionEnded { session_id }) = (inserted, &entry.body) {
                // Only an open ad-hoc session hosted by the reporting edge; rooms stay.
                sqlx::query(
                    "UPDATE sessions SET state = 'ended', ended_at_ms = ?3, \
                     updated_at_ms = max(updated_at_ms, ?3), end_reason = ?4 \
                     WHERE id = ?1 AND edge_id = ?2 AND state = 'open' AND room_key IS NULL",
                )
                .bind(session_id)
                .bind(edge_id)
                .bind(entry.at_unix_ms)
                .bind(ENDED_BY_EDGE)
                .execute(&mut *tx)
                .await?;
            }
        }
        if high > acked {
            sqlx::query(
                "INSERT INTO spool_progress (edge_id, acked_seq) VALUES (?1, ?2) \
                 ON CONFLICT (edge_id) DO UPDATE \
                 SET acked_seq = max(spool_progress.acked_seq, excluded.acked_seq)",
            )
            .bind(edge_id)
            .bind(high)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(seq_u64(high))
    }

    pub(super) async fn acked_seq(&self, edge_id: &str) -> Result<u64, StoreError> {
        let acked: Option<i64> =
            sqlx::query_scalar("SELECT acked_seq FROM spool_progress WHERE edge_id = ?1")
                .bind(edge_id)
                .fetch_optional(&self.reader)
                .await
                .map_err(StoreError::db("acked_seq"))?;
        Ok(acked.map_or(0, seq_u64))
    }

    pub(super) async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let op = "audit";
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, source, edge_id, seq, at_ms, kind, session_id, participant, actor, \
             detail FROM audit WHERE 1 = 1",
        );
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
        let rows = q
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(StoreError::db(op))?;
        rows.iter()
            .map(audit_from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::db(op))
    }

    pub(super) async fn count_audit(&self, edge_id: Option<&str>) -> Result<u64, StoreError> {
        let count: i64 = match edge_id {
            Some(edge_id) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit WHERE edge_id = ?1")
                    .bind(edge_id)
                    .fetch_one(&self.reader)
                    .await
            }
            None => {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit")
                    .fetch_one(&self.reader)
                    .await
            }
        }
        .map_err(StoreError::db("count_audit"))?;
        Ok(seq_u64(count))
    }

    pub(super) async fn recent_metrics(
        &self,
        edge_id: &str,
        limit: u32,
    ) -> Result<Vec<MetricRecord>, StoreError> {
        let op = "recent_metrics";
        let rows = sqlx::query(
            "SELECT edge_id, seq, at_ms, cpu, lag_ms, connections, sessions FROM metrics \
             WHERE edge_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )
        .bind(edge_id)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(StoreError::db(op))?;
        rows.iter()
            .map(metric_from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::db(op))
    }

    pub(super) async fn session_running_on_edge(
        &self,
        session_id: &str,
        edge_id: &str,
    ) -> Result<bool, StoreError> {
        let kind: Option<String> = sqlx::query_scalar(
            "SELECT kind FROM audit WHERE session_id = ?1 AND edge_id = ?2 AND source = 'edge' \
             AND kind IN ('session_started', 'session_ended') ORDER BY seq DESC LIMIT 1",
        )
        .bind(session_id)
        .bind(edge_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(StoreError::db("session_running_on_edge"))?;
        Ok(kind.as_deref() == Some("session_started"))
    }

    pub(super) async fn create_admin_session(
        &self,
        token_sha256: &str,
        name: &str,
        now_ms: i64,
        expires_at_ms: i64,
        max_sessions: u32,
    ) -> Result<(), StoreError> {
        let op = "create_admin_session";
        let mut tx = self.writer.begin().await.map_err(StoreError::db(op))?;
        sqlx::query("DELETE FROM admin_sessions WHERE expires_at_ms <= ?1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(op))?;
        sqlx::query(
            "INSERT INTO admin_sessions (token_sha256, name, created_at_ms, expires_at_ms) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(token_sha256)
        .bind(name)
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db(op))?;
        sqlx::query(
            "DELETE FROM admin_sessions WHERE token_sha256 IN (SELECT token_sha256 FROM \
             admin_sessions ORDER BY created_at_ms DESC, token_sha256 LIMIT -1 OFFSET ?1)",
        )
        .bind(i64::from(max_sessions))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db(op))?;
        tx.commit().await.map_err(StoreError::db(op))
    }

    pub(super) async fn admin_session(
        &self,
        token_sha256: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT name FROM admin_sessions WHERE token_sha256 = ?1 AND expires_at_ms > ?2",
        )
        .bind(token_sha256)
        .bind(now_ms)
        .fetch_optional(&self.reader)
        .await
        .map_err(StoreError::db("admin_session"))
    }

    pub(super) async fn delete_admin_session(&self, token_sha256: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE token_sha256 = ?1")
            .bind(token_sha256)
            .execute(&self.writer)
            .await
            .map_err(StoreError::db("delete_admin_session"))?;
        Ok(())
    }

    pub(super) async fn count_metrics(&self, edge_id: Option<&str>) -> Result<u64, StoreError> {
        let count: i64 = match edge_id {
            Some(edge_id) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM metrics WHERE edge_id = ?1")
                    .bind(edge_id)
                    .fetch_one(&self.reader)
                    .await
            }
            None => {
                sqlx::query_scalar("SELECT COUNT(*) FROM metrics")
                    .fetch_one(&self.reader)
                    .await
            }
        }
        .map_err(StoreError::db("count_metrics"))?;
        Ok(seq_u64(count))
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
