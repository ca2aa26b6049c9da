-- Locator storage, SQLite flavour. The Postgres flavour in ../postgres must keep the same
-- tables, columns and semantics. Times are Unix milliseconds (INTEGER). Tables are STRICT
-- so a wrongly typed value is an error instead of being silently stored.

-- Sessions. An ad-hoc session (room_key NULL) is 'open' until it ends. A keyed session
-- (a persistent "room") has exactly one row per key, forever, and never ends: when its
-- edge fails it is reassigned to another edge on the next join.
CREATE TABLE sessions (
    id            TEXT    NOT NULL PRIMARY KEY,
    room_key      TEXT    NULL UNIQUE,
    region        TEXT    NOT NULL,
    edge_id       TEXT    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'ended')),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    ended_at_ms   INTEGER NULL,
    end_reason    TEXT    NULL,
    CHECK (room_key IS NULL OR state = 'open'),
    CHECK ((state = 'open') = (ended_at_ms IS NULL))
) STRICT;

-- Open sessions of one edge (failure handling, drain, re-announce).
CREATE INDEX sessions_open_by_edge ON sessions (edge_id) WHERE state = 'open';

-- Edges as last registered, with their admin suspension (which survives restarts).
CREATE TABLE edges (
    id              TEXT    NOT NULL PRIMARY KEY,
    region          TEXT    NOT NULL,
    public_url      TEXT    NOT NULL,
    capacity        INTEGER NOT NULL CHECK (capacity >= 0),
    version         TEXT    NOT NULL,
    suspended       INTEGER NOT NULL DEFAULT 0 CHECK (suspended IN (0, 1)),
    suspended_by    TEXT    NULL,
    suspended_at_ms INTEGER NULL,
    first_seen_ms   INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL
) STRICT;

-- Audit trail: entries relayed from edges (source 'edge', idempotency key (edge_id, seq)),
-- admin actions (source 'admin', with the actor) and the locator's own decisions.
-- AUTOINCREMENT: ids are never reused, so an id cursor stays valid across pruning.
CREATE TABLE audit (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    source      TEXT    NOT NULL CHECK (source IN ('edge', 'admin', 'locator')),
    edge_id     TEXT    NULL,
    seq         INTEGER NULL CHECK (seq IS NULL OR seq >= 1),
    at_ms       INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    session_id  TEXT    NULL,
    participant TEXT    NULL,
    actor       TEXT    NULL,
    detail      TEXT    NULL,
    CHECK (source <> 'edge' OR (edge_id IS NOT NULL AND seq IS NOT NULL)),
    UNIQUE (edge_id, seq)
) STRICT;

CREATE INDEX audit_by_edge ON audit (edge_id, id);
CREATE INDEX audit_by_session ON audit (session_id, id);
CREATE INDEX audit_by_time ON audit (at_ms);

-- Load samples relayed from edges, idempotency key (edge_id, seq).
CREATE TABLE metrics (
    edge_id     TEXT    NOT NULL,
    seq         INTEGER NOT NULL CHECK (seq >= 1),
    at_ms       INTEGER NOT NULL,
    cpu         REAL    NOT NULL,
    lag_ms      REAL    NOT NULL,
    connections INTEGER NOT NULL,
    sessions    INTEGER NOT NULL,
    PRIMARY KEY (edge_id, seq)
) STRICT;

CREATE INDEX metrics_by_time ON metrics (edge_id, at_ms);

-- Highest spool sequence stored for each edge: what the locator acknowledges.
CREATE TABLE spool_progress (
    edge_id   TEXT    NOT NULL PRIMARY KEY,
    acked_seq INTEGER NOT NULL CHECK (acked_seq >= 0)
) STRICT;
