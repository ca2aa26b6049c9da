//! Why a storage operation failed: [`StoreError`], and one classification of database
//! errors, [`Fault`], for both backends.
//!
//! A fault is read from what the database and sqlx report — sqlx's error variant, the
//! database error's [`kind`](sqlx::error::DatabaseError::kind) and its code (Postgres:
//! the SQLSTATE; SQLite: the extended result code) — never from message text, which
//! changes with versions and locales. Everything that depends on the cause of an error
//! reads the same [`Fault`]: the hint shown to operators, the retry of idempotent
//! operations on Postgres ([`Fault::is_transient`]) and the group-commit writer's "the
//! database is unreachable" ([`Fault::is_unreachable`]).

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use sqlx::error::ErrorKind;

/// Why a storage operation failed. The message names the operation and what to do; it
/// never contains SQL text or connection secrets. The database error, when there is one,
/// is the [`source`](std::error::Error::source) (for logs).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL: {reason}")]
    InvalidUrl { reason: String },

    #[error("cannot create the folder {path} for the SQLite database: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot open the database {location}: {hint}")]
    Open {
        location: String,
        hint: Cow<'static, str>,
        #[source]
        source: sqlx::Error,
    },

    #[error("cannot apply the database migrations to {location}: {hint}")]
    Migrate {
        location: String,
        hint: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    #[error("database error during {op}: {hint}")]
    Database {
        op: &'static str,
        hint: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// A grouped write failed: every caller of the batch gets the same error.
    #[error("database error during {op} (batched write): {hint}")]
    Batch {
        op: &'static str,
        hint: &'static str,
        #[source]
        source: Arc<sqlx::Error>,
    },

    #[error("{what} {id:?} already exists")]
    Conflict { what: &'static str, id: String },

    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },

    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    #[error("the storage writer stopped; the locator must be restarted")]
    WriterStopped,
}

impl StoreError {
    /// Wraps a database error of operation `op`, with the hint of its [`Fault`].
    pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Database {
            op,
            hint: Fault::of(&source).hint(),
            source,
        }
    }

    pub(super) fn invalid(what: &'static str, reason: impl Into<String>) -> StoreError {
        StoreError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// A session id that is taken (by another creation, or by a room of another key).
    pub(super) fn session_conflict(id: &str) -> StoreError {
        StoreError::Conflict {
            what: "session id",
            id: id.to_string(),
        }
    }
}

/// What went wrong with a database call, as far as the locator and its operator care.
/// Each variant has one hint ([`Fault::hint`]); the variants a backend cannot produce
/// say which backend reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// No connection within the acquire timeout.
    PoolTimedOut,
    /// The store was closed.
    PoolClosed,
    /// The connection could not be made or was lost (refused, reset).
    Io,
    Tls,
    /// The connection broke mid-conversation.
    Protocol,
    WorkerCrashed,
    /// Any constraint of the schema (unique, foreign key, not null, check…): sqlx's
    /// [`ErrorKind`], SQLite's `SQLITE_CONSTRAINT` family, Postgres' class 23.
    Constraint,
    /// SQLite `SQLITE_BUSY` / `SQLITE_LOCKED` (5, 6): another process holds the file.
    Busy,
    /// SQLite `SQLITE_READONLY` (8).
    ReadOnlyFile,
    /// SQLite `SQLITE_IOERR` (10).
    DiskIo,
    /// SQLite `SQLITE_CORRUPT` (11).
    Corrupt,
    /// SQLite `SQLITE_FULL` (13).
    DiskFull,
    /// SQLite `SQLITE_CANTOPEN` (14).
    CannotOpen,
    /// SQLite `SQLITE_NOTADB` (26).
    NotADatabase,
    /// Postgres 28000, 28P01.
    AuthFailed,
    /// Postgres 3D000.
    NoSuchDatabase,
    /// Postgres 42501.
    Privilege,
    /// Postgres 53300 too_many_connections.
    NoConnectionSlot,
    /// Postgres 53100 disk_full.
    ServerDiskFull,
    /// Postgres 57014 query_canceled (`statement_timeout`).
    StatementTimeout,
    /// Postgres 55P03 lock_not_available (`lock_timeout`).
    LockTimeout,
    /// Postgres 40001 serialization_failure, 40P01 deadlock_detected: the server rolled
    /// the transaction back.
    TxConflict,
    /// Postgres 25006 read_only_sql_transaction (a standby).
    ReadOnlyServer,
    /// Postgres 57P01, 57P02, 57P03: the server is shutting down or starting.
    ServerGoingAway,
    /// Postgres class 08: connection exception.
    ConnectionFailed,
    /// Postgres class 42 (but 42501): a table or column missing or different.
    SchemaMismatch,
    /// Any other error the database reported.
    Refused,
    /// Any other error of sqlx.
    Unexpected,
}

impl Fault {
    pub(crate) fn of(err: &sqlx::Error) -> Fault {
        match err {
            sqlx::Error::PoolTimedOut => Fault::PoolTimedOut,
            sqlx::Error::PoolClosed => Fault::PoolClosed,
            sqlx::Error::Io(_) => Fault::Io,
            sqlx::Error::Tls(_) => Fault::Tls,
            sqlx::Error::Protocol(_) => Fault::Protocol,
            sqlx::Error::WorkerCrashed => Fault::WorkerCrashed,
            sqlx::Error::Database(db) => {
                if db.kind() != ErrorKind::Other {
                    return Fault::Constraint;
                }
                let code = db.code().unwrap_or_default();
                if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                {
                    Fault::of_sqlstate(&code)
                } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    code.parse().map_or(Fault::Refused, Fault::of_sqlite_code)
                } else {
                    Fault::Refused
                }
            }
            _ => Fault::Unexpected,
        }
    }

    /// A SQLite extended result code: its primary code is the low byte.
    fn of_sqlite_code(code: i32) -> Fault {
        match code & 0xff {
            5 | 6 => Fault::Busy,
            8 => Fault::ReadOnlyFile,
            10 => Fault::DiskIo,
            11 => Fault::Corrupt,
            13 => Fault::DiskFull,
            14 => Fault::CannotOpen,
            19 => Fault::Constraint,
            26 => Fault::NotADatabase,
            _ => Fault::Refused,
        }
    }

    /// A Postgres SQLSTATE.
    fn of_sqlstate(code: &str) -> Fault {
        match code {
            "28P01" | "28000" => Fault::AuthFailed,
            "3D000" => Fault::NoSuchDatabase,
            "42501" => Fault::Privilege,
            "53300" => Fault::NoConnectionSlot,
            "53100" => Fault::ServerDiskFull,
            "57014" => Fault::StatementTimeout,
            "55P03" => Fault::LockTimeout,
            "40P01" | "40001" => Fault::TxConflict,
            "25006" => Fault::ReadOnlyServer,
            "57P01" | "57P02" | "57P03" => Fault::ServerGoingAway,
            c if c.starts_with("08") => Fault::ConnectionFailed,
            c if c.starts_with("23") => Fault::Constraint,
            c if c.starts_with("42") => Fault::SchemaMismatch,
            _ => Fault::Refused,
        }
    }

    /// The database cannot be reached at all (as opposed to refusing one operation):
    /// the group-commit writer then fails the queued creations at once.
    pub(crate) fn is_unreachable(self) -> bool {
        matches!(
            self,
            Fault::PoolTimedOut
                | Fault::PoolClosed
                | Fault::Io
                | Fault::ConnectionFailed
                | Fault::ServerGoingAway
        )
    }

    /// Running an idempotent operation once more is safe and may succeed: the
    /// connection broke (the server restarted, the pool had a dead connection), or the
    /// server rolled the transaction back because of a deadlock or serialization failure.
    pub(crate) fn is_transient(self) -> bool {
        matches!(
            self,
            Fault::Io
                | Fault::Protocol
                | Fault::ConnectionFailed
                | Fault::ServerGoingAway
                | Fault::TxConflict
        )
    }

    /// What to tell an operator (no SQL, no secrets).
    pub(crate) fn hint(self) -> &'static str {
        match self {
            Fault::PoolTimedOut => {
                "timed out waiting for a database connection (database unreachable, \
                 overloaded or stuck)"
            }
            Fault::PoolClosed => "the store is closed",
            Fault::Io => {
                "I/O error talking to the database (Postgres: connection refused or lost; \
                 the locator reconnects by itself)"
            }
            Fault::Tls => "TLS error talking to the database",
            Fault::Protocol => "the database connection broke (protocol error)",
            Fault::WorkerCrashed => "the database worker thread crashed",
            Fault::Constraint => "a constraint of the schema was violated",
            Fault::Busy => {
                "the database is locked: another process holds it (only one locator may \
                 use a SQLite file; use Postgres for several)"
            }
            Fault::ReadOnlyFile => {
                "the database file or its folder is read-only: fix its permissions"
            }
            Fault::DiskIo => "disk I/O error: check the disk and the file system",
            Fault::Corrupt => {
                "the database file is corrupt: restore it from a backup or start a new file"
            }
            Fault::DiskFull => "the disk is full: free space",
            Fault::CannotOpen => {
                "cannot open the file: check the path and the permissions of its folder"
            }
            Fault::NotADatabase => "the file is not a SQLite database: check the path",
            Fault::AuthFailed => {
                "authentication failed: check the user and password of the database URL \
                 (or PGPASSWORD) and the server's pg_hba.conf"
            }
            Fault::NoSuchDatabase => {
                "the database does not exist: create it (createdb NAME) or fix the database \
                 name in the URL"
            }
            Fault::Privilege => {
                "the database user lacks a privilege: the locator creates its tables on \
                 first start, then reads and writes them"
            }
            Fault::NoConnectionSlot => {
                "the database server has no free connection slot: lower the locators' pool \
                 size or raise the server's max_connections"
            }
            Fault::ServerDiskFull => "the database server's disk is full: free space",
            Fault::StatementTimeout => {
                "a statement ran longer than the statement timeout (database overloaded, \
                 or blocked by a long transaction)"
            }
            Fault::LockTimeout => {
                "timed out waiting for a lock held by another connection (another locator, \
                 or a long transaction)"
            }
            Fault::TxConflict => {
                "the transaction conflicted with a concurrent one (deadlock or \
                 serialization failure) twice: try again"
            }
            Fault::ReadOnlyServer => {
                "the database is read-only (a standby?): point the URL at the primary"
            }
            Fault::ServerGoingAway => {
                "the database server is shutting down or starting: the locator reconnects \
                 by itself"
            }
            Fault::ConnectionFailed => {
                "the connection to the database failed or broke: the locator reconnects by \
                 itself"
            }
            Fault::SchemaMismatch => {
                "the database schema does not match this locator (a table or column is \
                 missing or differs)"
            }
            Fault::Refused => "the database refused the operation",
            Fault::Unexpected => "unexpected database error",
        }
    }

    /// Says nothing the operator can act on: the backends' open hints then explain
    /// what the URL or path must name instead.
    pub(super) fn is_unspecific(self) -> bool {
        matches!(self, Fault::Refused | Fault::Unexpected)
    }
}

/// What to tell an operator when the migrations cannot be applied; `file`: the database
/// is a SQLite file (the hints say "database file").
pub(super) fn migrate_hint(err: &sqlx::migrate::MigrateError, file: bool) -> &'static str {
    use sqlx::migrate::MigrateError as M;
    match (err, file) {
        (M::VersionMissing(_) | M::VersionNotPresent(_) | M::VersionTooNew(..), true) => {
            "the database was migrated by a newer locator: run that version, or use another \
             database file"
        }
        (M::VersionMissing(_) | M::VersionNotPresent(_) | M::VersionTooNew(..), false) => {
            "the database was migrated by a newer locator: run that version, or use another \
             database"
        }
        (M::VersionMismatch(_), true) => {
            "a migration already applied to this database has been modified: run the \
             locator version that created the database, or use another database file"
        }
        (M::VersionMismatch(_), false) => {
            "a migration already applied to this database has been modified: run the \
             locator version that created the database, or use another database"
        }
        (M::Dirty(_), _) => "a migration was interrupted: restore the database from a backup",
        (M::Execute(e) | M::ExecuteMigration(e, _), _) => match Fault::of(e) {
            // Postgres: the migrations wait for sqlx's advisory lock with a lock timeout.
            Fault::LockTimeout => {
                "timed out waiting for the migration lock or a table lock: another locator \
                 is migrating this database (or hangs doing so), or a long transaction holds \
                 a table"
            }
            fault => fault.hint(),
        },
        (_, true) => {
            "the migrations could not be applied: check the database file and the locator \
             version"
        }
        (_, false) => {
            "the migrations could not be applied: check the database and the locator version"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_classify_without_message_text() {
        // SQLite extended codes: the primary code is the low byte.
        assert_eq!(Fault::of_sqlite_code(5), Fault::Busy);
        assert_eq!(Fault::of_sqlite_code(517), Fault::Busy); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(Fault::of_sqlite_code(2067), Fault::Constraint); // CONSTRAINT_UNIQUE
        assert_eq!(Fault::of_sqlite_code(1032), Fault::ReadOnlyFile); // READONLY_DBMOVED
        assert_eq!(Fault::of_sqlite_code(1), Fault::Refused);
        // Postgres SQLSTATEs, with their classes.
        assert_eq!(Fault::of_sqlstate("23505"), Fault::Constraint);
        assert_eq!(Fault::of_sqlstate("40P01"), Fault::TxConflict);
        assert_eq!(Fault::of_sqlstate("08006"), Fault::ConnectionFailed);
        assert_eq!(Fault::of_sqlstate("57P01"), Fault::ServerGoingAway);
        assert_eq!(Fault::of_sqlstate("42P01"), Fault::SchemaMismatch);
        assert_eq!(Fault::of_sqlstate("42501"), Fault::Privilege);
        assert_eq!(Fault::of_sqlstate("XX000"), Fault::Refused);
        // What the writer and the retry read from them.
        assert!(Fault::TxConflict.is_transient() && !Fault::TxConflict.is_unreachable());
        assert!(Fault::ConnectionFailed.is_transient() && Fault::ConnectionFailed.is_unreachable());
        assert!(Fault::PoolTimedOut.is_unreachable() && !Fault::PoolTimedOut.is_transient());
        assert!(!Fault::Busy.is_transient() && !Fault::Constraint.is_unreachable());
        assert_eq!(Fault::of(&sqlx::Error::PoolTimedOut), Fault::PoolTimedOut);
    }
}
