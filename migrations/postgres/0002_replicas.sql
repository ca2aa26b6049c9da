-- Several locators on one database: what each publishes about the edges whose links it
-- holds, so that every locator routes with every edge's state and load (Postgres only;
-- a SQLite database has one locator, which knows everything it needs in memory).
--
-- One row per edge that ever registered with a locator on this database. The locator
-- holding the edge's websocket (`holder`, a random id per locator process) writes it on
-- registration (a *claim*) and after each report or state change, and sends
-- NOTIFY locus_edges '<holder> <edge id>,<edge id>…' in the same transaction; the others
-- re-read the rows named. A newer claim (`claim_rev`) wins: an update by a locator whose
-- claim was overtaken (the edge reconnected elsewhere) changes nothing.
CREATE SEQUENCE edge_live_rev;

CREATE TABLE edge_live (
    edge_id       TEXT    NOT NULL PRIMARY KEY REFERENCES edges (id),
    holder        TEXT    NOT NULL,
    -- The rev of the holder's claim; newer claims have larger revs.
    claim_rev     BIGINT  NOT NULL,
    -- From edge_live_rev on every write: per edge, larger is newer.
    rev           BIGINT  NOT NULL,
    liveness      TEXT    NOT NULL CHECK (liveness IN ('connected', 'link-lost', 'failed')),
    fail_reason   TEXT    NULL,
    draining      BOOLEAN NOT NULL,
    -- The last load report (JSON, the protocol's LoadReport) and how many reports the
    -- holder has had over this claim (a change resets assignments counted since).
    load          TEXT    NULL,
    report_seq    BIGINT  NOT NULL DEFAULT 0,
    updated_at_ms BIGINT  NOT NULL
);
