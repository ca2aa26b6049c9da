-- Signed-in admin page sessions (same table as ../sqlite/0002_admin_sessions.sql): in
-- the database, so a sign-in holds across a restart and, with Postgres, on every locator
-- behind a load balancer; signing out ends it everywhere. The cookie's value is never
-- stored: only its SHA-256, so reading this table does not let anyone sign in.
CREATE TABLE admin_sessions (
    token_sha256  TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    expires_at_ms BIGINT  NOT NULL
);

CREATE INDEX admin_sessions_by_expiry ON admin_sessions (expires_at_ms);
