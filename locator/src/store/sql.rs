//! The SQL both backends run as written, and the column lists of the records.
//!
//! Statements here use `$N` parameters, which SQLite reads as numbered parameters too,
//! and only what both dialects have: `ON CONFLICT`, `RETURNING`, `TRUE`/`FALSE`, `CASE`
//! (not SQLite's two-argument `max` nor Postgres' `GREATEST`), `LIMIT` without SQLite's
//! `LIMIT -1`. New SQL goes here when it can be the same on both; a backend keeps SQL of
//! its own only where the dialects differ (see `sqlite.rs` and `postgres.rs`).
//!
//! The column lists are macros so that statements stay `&'static str` (`concat!`); each
//! list is what the matching mapper of [`rows`](super::rows) reads.

/// The columns [`session_from_row`](super::rows::session_from_row) reads.
macro_rules! session_columns {
    () => {
        "id, room_key, region, edge_id, state, created_at_ms, updated_at_ms, ended_at_ms, \
         end_reason"
    };
}

/// The columns [`edge_from_row`](super::rows::edge_from_row) reads.
macro_rules! edge_columns {
    () => {
        "id, region, public_url, capacity, version, suspended, suspended_by, \
         suspended_at_ms, first_seen_ms, last_seen_ms"
    };
}

/// The columns [`audit_from_row`](super::rows::audit_from_row) reads.
macro_rules! audit_columns {
    () => {
        "id, source, edge_id, seq, at_ms, kind, session_id, participant, actor, detail"
    };
}

/// The columns [`metric_from_row`](super::rows::metric_from_row) reads.
macro_rules! metric_columns {
    () => {
        "edge_id, seq, at_ms, cpu, lag_ms, connections, sessions"
    };
}

pub(super) use {audit_columns, edge_columns, metric_columns, session_columns};

// --- Sessions ---------------------------------------------------------------------------

/// `$1` id.
pub(super) const SESSION_BY_ID: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE id = $1"
);

/// `$1` room key.
pub(super) const SESSION_BY_ROOM: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE room_key = $1"
);

/// `$1` id, `$2` reason, `$3` now; only an open ad-hoc session.
pub(super) const END_SESSION: &str = "UPDATE sessions SET state = 'ended', ended_at_ms = $3, \
     updated_at_ms = $3, end_reason = $2 WHERE id = $1 AND state = 'open' AND room_key IS NULL";

/// `$1` id, `$2` from edge, `$3` to edge, `$4` region, `$5` now: compare-and-set.
pub(super) const REASSIGN_SESSION: &str = "UPDATE sessions SET edge_id = $3, region = $4, \
     updated_at_ms = $5 WHERE id = $1 AND edge_id = $2 AND state = 'open'";

/// `$1` session, `$2` the reporting edge, `$3` when (the edge's clock).
pub(super) const NOTE_FIRST_JOIN: &str = "UPDATE sessions SET first_joined_at_ms = $3 \
     WHERE id = $1 AND edge_id = $2 AND first_joined_at_ms IS NULL";

/// `$1` session, `$2` the reporting edge, `$3` when (the edge's clock), `$4` reason: only
/// an open ad-hoc session hosted by the reporting edge; rooms stay. `updated_at_ms` never
/// goes back.
pub(super) const END_REPORTED_SESSION: &str = "UPDATE sessions SET state = 'ended', \
     ended_at_ms = $3, \
     updated_at_ms = CASE WHEN updated_at_ms > $3 THEN updated_at_ms ELSE $3 END, \
     end_reason = $4 \
     WHERE id = $1 AND edge_id = $2 AND state = 'open' AND room_key IS NULL";

/// `$1` edge, `$2` reason, `$3` now: the ids ended.
pub(super) const END_AD_HOC_ON_EDGE: &str = "UPDATE sessions SET state = 'ended', \
     ended_at_ms = $3, updated_at_ms = $3, end_reason = $2 \
     WHERE edge_id = $1 AND state = 'open' AND room_key IS NULL RETURNING id";

/// `$1` created before (ms), `$2` limit: `(id, edge_id)`, oldest first.
pub(super) const UNJOINED_SESSIONS: &str = "SELECT id, edge_id FROM sessions \
     WHERE state = 'open' AND room_key IS NULL AND first_joined_at_ms IS NULL \
     AND created_at_ms < $1 ORDER BY created_at_ms, id LIMIT $2";

/// `$1` session, `$2` now, `$3` reason; changes nothing once joined or ended.
pub(super) const EXPIRE_UNJOINED: &str = "UPDATE sessions SET state = 'ended', \
     ended_at_ms = $2, updated_at_ms = $2, end_reason = $3 \
     WHERE id = $1 AND state = 'open' AND room_key IS NULL AND first_joined_at_ms IS NULL";

// --- Edges ------------------------------------------------------------------------------

/// `$1` id, `$2` region, `$3` URL, `$4` capacity, `$5` version, `$6` first seen, `$7` last
/// seen. The suspension and `first_seen_ms` of an existing edge are kept.
pub(super) const UPSERT_EDGE: &str = concat!(
    "INSERT INTO edges (id, region, public_url, capacity, version, suspended, \
     first_seen_ms, last_seen_ms) VALUES ($1, $2, $3, $4, $5, FALSE, $6, $7) \
     ON CONFLICT (id) DO UPDATE SET region = excluded.region, \
     public_url = excluded.public_url, capacity = excluded.capacity, \
     version = excluded.version, last_seen_ms = excluded.last_seen_ms RETURNING ",
    edge_columns!()
);

/// `$1` id.
pub(super) const EDGE_BY_ID: &str =
    concat!("SELECT ", edge_columns!(), " FROM edges WHERE id = $1");

/// `$1` id.
pub(super) const EDGE_EXISTS: &str = "SELECT 1 FROM edges WHERE id = $1";

/// `$1` id, `$2` suspended, `$3` by, `$4` when; changes nothing when already so.
pub(super) const SET_SUSPENDED: &str = "UPDATE edges SET suspended = $2, suspended_by = $3, \
     suspended_at_ms = $4 WHERE id = $1 AND suspended <> $2";

/// `$1` edge. A suspended edge keeps its row: its suspension holds if it comes back.
pub(super) const FORGET_EDGE: &str = "DELETE FROM edges WHERE id = $1 AND NOT suspended";

// --- Audit ------------------------------------------------------------------------------

/// `$1` edge, `$2` when, `$3` kind, `$4` actor.
pub(super) const INSERT_ADMIN_AUDIT: &str = "INSERT INTO audit (source, edge_id, at_ms, kind, \
     actor) VALUES ('admin', $1, $2, $3, $4)";

/// `$1` source, `$2` edge, `$3` when, `$4` kind, `$5` session, `$6` actor, `$7` detail: the
/// row's id.
pub(super) const INSERT_AUDIT: &str = "INSERT INTO audit (source, edge_id, at_ms, kind, \
     session_id, actor, detail) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";

/// The start of an audit page; the filter's conditions follow (`AND …`).
pub(super) const AUDIT_PAGE: &str = concat!("SELECT ", audit_columns!(), " FROM audit WHERE TRUE");

/// `$1` session, `$2` edge: the kind of the edge's latest start or end of the session.
pub(super) const LAST_START_OR_END: &str = "SELECT kind FROM audit WHERE session_id = $1 \
     AND edge_id = $2 AND source = 'edge' AND kind IN ('session_started', 'session_ended') \
     ORDER BY seq DESC LIMIT 1";

// --- Spool ------------------------------------------------------------------------------

/// `$1` edge: its acknowledged sequence, the row created (at 0) if need be and locked
/// until the transaction ends, so relays of one edge's spool through several locators
/// are applied one after the other (SQLite's `BEGIN IMMEDIATE` holds the whole database
/// already).
pub(super) const LOCK_SPOOL_PROGRESS: &str = "INSERT INTO spool_progress (edge_id, acked_seq) \
     VALUES ($1, 0) ON CONFLICT (edge_id) DO UPDATE SET acked_seq = spool_progress.acked_seq \
     RETURNING acked_seq";

/// `$1` edge, `$2` the new acknowledged sequence (the row is locked, see
/// [`LOCK_SPOOL_PROGRESS`]).
pub(super) const ADVANCE_SPOOL_PROGRESS: &str =
    "UPDATE spool_progress SET acked_seq = $2 WHERE edge_id = $1";

/// `$1` edge.
pub(super) const ACKED_SEQ: &str = "SELECT acked_seq FROM spool_progress WHERE edge_id = $1";

/// `$1` edge, `$2` seq, `$3` when, `$4` cpu, `$5` lag, `$6` connections, `$7` sessions.
pub(super) const INSERT_METRIC: &str = concat!(
    "INSERT INTO metrics (",
    metric_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
);

/// `$1` edge, `$2` seq, `$3` when, `$4` kind, `$5` session, `$6` participant: one row per
/// `(edge_id, seq)`.
pub(super) const INSERT_EDGE_AUDIT: &str = "INSERT INTO audit (source, edge_id, seq, at_ms, \
     kind, session_id, participant) VALUES ('edge', $1, $2, $3, $4, $5, $6) \
     ON CONFLICT DO NOTHING";

// --- Admin page sessions ----------------------------------------------------------------

/// `$1` now.
pub(super) const DELETE_EXPIRED_ADMIN_SESSIONS: &str =
    "DELETE FROM admin_sessions WHERE expires_at_ms <= $1";

/// `$1` token hash, `$2` name, `$3` now, `$4` expiry.
pub(super) const INSERT_ADMIN_SESSION: &str = "INSERT INTO admin_sessions (token_sha256, name, \
     created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4)";

/// `$1` how many to keep: all but the newest go.
pub(super) const TRIM_ADMIN_SESSIONS: &str = "DELETE FROM admin_sessions WHERE token_sha256 \
     NOT IN (SELECT token_sha256 FROM admin_sessions \
     ORDER BY created_at_ms DESC, token_sha256 LIMIT $1)";

/// `$1` token hash, `$2` now.
pub(super) const ADMIN_SESSION: &str =
    "SELECT name FROM admin_sessions WHERE token_sha256 = $1 AND expires_at_ms > $2";

/// `$1` token hash.
pub(super) const DELETE_ADMIN_SESSION: &str = "DELETE FROM admin_sessions WHERE token_sha256 = $1";
