//! Rows to records, once for both backends: the tables have the same columns with the
//! same types on both (see `migrations/`), so only the reading of one column differs,
//! and [`Columns`] hides it. Each mapper reads the column list of its record in
//! `sql.rs`; [`Record`] pairs the two for reads written outside the store (tests).

use sqlx::Row;

use super::sql::{audit_columns, edge_columns, metric_columns, session_columns};
use super::{
    AuditRecord, AuditSource, EdgeRecord, MetricRecord, SessionRecord, SessionState, seq_u64,
};

/// A stored record: the columns it is read from and how (the same on both backends).
/// [`Store::select`](super::Store::select) reads any of them with SQL of the caller's.
pub trait Record: Sized {
    /// The select list, in the order of the table.
    const COLUMNS: &'static str;

    /// Reads one row of either backend.
    fn from_row(row: &impl Columns) -> Result<Self, sqlx::Error>;
}

/// Pairs each record with its column list and mapper.
macro_rules! records {
    ($($record:ty => $columns:ident, $mapper:ident;)*) => {$(
        impl Record for $record {
            const COLUMNS: &'static str = $columns!();

            fn from_row(row: &impl Columns) -> Result<Self, sqlx::Error> {
                $mapper(row)
            }
        }
    )*};
}

records! {
    SessionRecord => session_columns, session_from_row;
    EdgeRecord => edge_columns, edge_from_row;
    AuditRecord => audit_columns, audit_from_row;
    MetricRecord => metric_columns, metric_from_row;
}

/// The column reads the mappers need, on either backend's rows.
pub trait Columns {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn text_opt(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn int_opt(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn float(&self, column: &str) -> Result<f64, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
}

macro_rules! columns_of {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                self.try_get(column)
            }
            fn text_opt(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(column)
            }
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                self.try_get(column)
            }
            fn int_opt(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(column)
            }
            fn float(&self, column: &str) -> Result<f64, sqlx::Error> {
                self.try_get(column)
            }
            fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
                self.try_get(column)
            }
        }
    };
}

columns_of!(sqlx::sqlite::SqliteRow);
columns_of!(sqlx::postgres::PgRow);

pub(super) fn session_from_row(row: &impl Columns) -> Result<SessionRecord, sqlx::Error> {
    let state = row.text("state")?;
    Ok(SessionRecord {
        id: row.text("id")?,
        room_key: row.text_opt("room_key")?,
        region: row.text("region")?,
        edge_id: row.text("edge_id")?,
        state: SessionState::from_db(&state)
            .ok_or_else(|| sqlx::Error::decode(format!("unknown session state {state:?}")))?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        ended_at_ms: row.int_opt("ended_at_ms")?,
        end_reason: row.text_opt("end_reason")?,
    })
}

pub(super) fn edge_from_row(row: &impl Columns) -> Result<EdgeRecord, sqlx::Error> {
    let capacity = row.int("capacity")?;
    Ok(EdgeRecord {
        id: row.text("id")?,
        region: row.text("region")?,
        public_url: row.text("public_url")?,
        capacity: u32::try_from(capacity)
            .map_err(|_| sqlx::Error::decode(format!("edge capacity {capacity} out of range")))?,
        version: row.text("version")?,
        suspended: row.flag("suspended")?,
        suspended_by: row.text_opt("suspended_by")?,
        suspended_at_ms: row.int_opt("suspended_at_ms")?,
        first_seen_ms: row.int("first_seen_ms")?,
        last_seen_ms: row.int("last_seen_ms")?,
    })
}

pub(super) fn audit_from_row(row: &impl Columns) -> Result<AuditRecord, sqlx::Error> {
    let source = row.text("source")?;
    Ok(AuditRecord {
        id: row.int("id")?,
        source: AuditSource::from_db(&source)
            .ok_or_else(|| sqlx::Error::decode(format!("unknown audit source {source:?}")))?,
        edge_id: row.text_opt("edge_id")?,
        seq: row.int_opt("seq")?.map(seq_u64),
        at_ms: row.int("at_ms")?,
        kind: row.text("kind")?,
        session_id: row.text_opt("session_id")?,
        participant: row.text_opt("participant")?,
        actor: row.text_opt("actor")?,
        detail: row.text_opt("detail")?,
    })
}

pub(super) fn metric_from_row(row: &impl Columns) -> Result<MetricRecord, sqlx::Error> {
    let count = |column: &str| -> Result<u32, sqlx::Error> {
        let value = row.int(column)?;
        u32::try_from(value)
            .map_err(|_| sqlx::Error::decode(format!("metrics {column} {value} out of range")))
    };
    Ok(MetricRecord {
        edge_id: row.text("edge_id")?,
        seq: seq_u64(row.int("seq")?),
        at_ms: row.int("at_ms")?,
        cpu: row.float("cpu")?,
        lag_ms: row.float("lag_ms")?,
        connections: count("connections")?,
        sessions: count("sessions")?,
    })
}
