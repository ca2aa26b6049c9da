-- Locator storage, Postgres flavour: the same tables, columns and semantics as
-- ../sqlite/0001_initial.sql (keep them in step). Times are Unix milliseconds (BIGINT).
-- Several locators share one database: every rule that must hold across them (one room
-- per key, each spool entry stored once) is a constraint here, not a check in a process.

-- Sessions. An ad-hoc session (room_key NULL) is 'open' until it ends. A keyed session
-- (a persistent "room") has exactly one row per key, forever, and never ends: when its
-- edge fails it is reassigned to another edge on the next join. The UNIQUE constraint on
-- room_key is what makes concurrent creations of one key (from any number of locators)
-- give one row: INSERT … ON CONFLICT DO NOTHING, then read the winner.
CREATE TABLE sessions (
    id            TEXT   NOT NULL PRIMARY KEY,
    room_key      TEXT   NULL UNIQUE,
    region        TEXT   NOT NULL,
    edge_id       TEXT   NOT NULL,
    state         TEXT   NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'ended')),
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    ended_at_ms   BIGINT NULL,
    end_reason    TEXT   NULL,
    CHECK (room_key IS NULL OR state = 'open'),
    CHECK ((state = 'open') = (ended_at_ms IS NULL))
);

-- Open sessions of one edge (failure handling, drain, re-announce).
CREATE INDEX sessions_open_by_edge ON sessions (edge_id) WHERE state = 'open';

-- Edges as last registered, with their admin suspension (which survives restarts).
-- capacity is BIGINT because the locator's capacity is a u32.
CREATE TABLE edges (
    id              TEXT    NOT NULL PRIMARY KEY,
    region          TEXT    NOT NULL,
    public_url      TEXT    NOT NULL,
    capacity        BIGINT  NOT NULL CHECK (capacity >= 0),
    version         TEXT    NOT NULL,
    suspended       BOOLEAN NOT NULL DEFAULT FALSE,
    suspended_by    TEXT    NULL,
    suspended_at_ms BIGINT  NULL,
    first_seen_ms   BIGINT  NOT NULL,
    last_seen_ms    BIGINT  NOT NULL
);

-- Audit trail: entries relayed from edges (source 'edge', idempotency key (edge_id, seq)),
-- admin actions (source 'admin', with the actor) and the locators' own decisions.
-- An identity column: ids are never reused, so an id cursor stays valid across pruning.
-- (With several writers ids are handed out at insert, not at commit: a page read while
-- another transaction is in flight may miss its row until the next read.)
CREATE TABLE audit (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      TEXT   NOT NULL CHECK (source IN ('edge', 'admin', 'locator')),
    edge_id     TEXT   NULL,
    seq         BIGINT NULL CHECK (seq IS NULL OR seq >= 1),
    at_ms       BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    session_id  TEXT   NULL,
    participant TEXT   NULL,
    actor       TEXT   NULL,
    detail      TEXT   NULL,
    CHECK (source <> 'edge' OR (edge_id IS NOT NULL AND seq IS NOT NULL)),
    UNIQUE (edge_id, seq)
);

CREATE INDEX audit_by_edge ON audit (edge_id, id);
CREATE INDEX audit_by_session ON audit (session_id, id);
CREATE INDEX audit_by_time ON audit (at_ms);

-- Load samples relayed from edges, idempotency key (edge_id, seq).
CREATE TABLE metrics (
    edge_id     TEXT             NOT NULL,
    seq         BIGINT           NOT NULL CHECK (seq >= 1),
    at_ms       BIGINT           NOT NULL,
    cpu         DOUBLE PRECISION NOT NULL,
    lag_ms      DOUBLE PRECISION NOT NULL,
    connections BIGINT           NOT NULL,
    sessions    BIGINT           NOT NULL,
    PRIMARY KEY (edge_id, seq)
);

CREATE INDEX metrics_by_time ON metrics (edge_id, at_ms);

-- Highest spool sequence stored for each edge: what the locator acknowledges. Its row is
-- also the per-edge lock that orders concurrent relays of one edge's spool (an edge that
-- reconnected to another locator while its old link was still being served).
CREATE TABLE spool_progress (
    edge_id   TEXT   NOT NULL PRIMARY KEY,
    acked_seq BIGINT NOT NULL CHECK (acked_seq >= 0)
);
