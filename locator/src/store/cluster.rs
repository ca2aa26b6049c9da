//! What several locators sharing one Postgres database tell each other: the published
//! state of the edges each holds (`edge_live`, claimed and written with compare-and-set
//! on claim revs) and change notifications (`LISTEN`/`NOTIFY`). See `crate::cluster` for
//! how the locators use them.
//!
//! These exist only on Postgres (`edge_live` is in `migrations/postgres/` alone), so they
//! are methods of [`ClusterStore`], which only a Postgres store gives
//! ([`Store::cluster`](super::Store::cluster)): on SQLite they cannot be called, instead
//! of failing when called.

use sqlx::Row;

use super::EdgeRecord;
use super::StoreError;
use super::postgres::{PostgresBackend, retry_once};
use super::rows::edge_from_row;

/// The store of a locator among several on one Postgres database. Cheap to clone (the
/// pool inside is shared).
#[derive(Debug, Clone)]
pub struct ClusterStore {
    db: PostgresBackend,
}

/// `edge_live.liveness` and `fail_reason` as written by `publish_edges`. A value this
/// locator does not know (written by a newer one) reads as failed: never routed to.
fn published_liveness(liveness: String, fail_reason: Option<String>) -> PublishedLiveness {
    use crate::edge_state::FailReason;
    match liveness.as_str() {
        "connected" => PublishedLiveness::Connected,
        "suspect" => PublishedLiveness::Suspect,
        "link-lost" => PublishedLiveness::LinkLost,
        _ => PublishedLiveness::Failed(
            fail_reason
                .as_deref()
                .and_then(FailReason::from_name)
                .unwrap_or(FailReason::GraceExpired),
        ),
    }
}

/// Most edge ids named in one notification (its payload stays far below Postgres's
/// 8,000-byte limit: ids are at most 64 characters).
const EDGES_PER_NOTIFICATION: usize = 100;

impl ClusterStore {
    pub(super) fn new(db: PostgresBackend) -> ClusterStore {
        ClusterStore { db }
    }

    /// Records that locator `holder` now holds the edge's link: returns the claim's rev
    /// (newer claims have larger revs; the newest wins). The others are notified.
    pub async fn claim_edge(
        &self,
        edge_id: &str,
        holder: &str,
        draining: bool,
    ) -> Result<i64, StoreError> {
        let op = "claim_edge";
        // A retried claim makes a newer claim by the same holder: harmless.
        retry_once!(op, |_retry| sqlx::query_scalar::<_, i64>(
            "WITH claimed AS (
               INSERT INTO edge_live (edge_id, holder, claim_rev, rev, liveness, draining,
                                      load, report_seq, updated_at_ms)
               SELECT $1, $2, r, r, 'connected', $3, NULL, 0, (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
               FROM (SELECT nextval('edge_live_rev') AS r) AS next
               ON CONFLICT (edge_id) DO UPDATE SET holder = excluded.holder,
                 claim_rev = excluded.claim_rev, rev = excluded.rev, liveness = 'connected',
                 fail_reason = NULL, draining = excluded.draining, load = NULL,
                 report_seq = 0, updated_at_ms = excluded.updated_at_ms
               RETURNING claim_rev)
             SELECT claim_rev FROM claimed, LATERAL pg_notify('locus_edges', $2 || ' ' || $1) AS n",
        )
        .bind(edge_id)
        .bind(holder)
        .bind(draining)
        .fetch_one(self.db.pool())
        .await)
        .map_err(StoreError::db(op))
    }

    /// Writes the state of edges `holder` holds (rows whose newest claim is not
    /// `holder`'s are left alone) and notifies the others. Returns the ids written.
    pub async fn publish_edges(
        &self,
        holder: &str,
        edges: &[PublishedEdge],
    ) -> Result<Vec<String>, StoreError> {
        let op = "publish_edges";
        if edges.is_empty() {
            return Ok(Vec::new());
        }
        let mut written = Vec::with_capacity(edges.len());
        for chunk in edges.chunks(EDGES_PER_NOTIFICATION) {
            let mut ids = Vec::with_capacity(chunk.len());
            let mut claims = Vec::with_capacity(chunk.len());
            let mut liveness = Vec::with_capacity(chunk.len());
            let mut reasons: Vec<Option<&str>> = Vec::with_capacity(chunk.len());
            let mut draining = Vec::with_capacity(chunk.len());
            let mut loads: Vec<Option<String>> = Vec::with_capacity(chunk.len());
            let mut report_seqs = Vec::with_capacity(chunk.len());
            for edge in chunk {
                ids.push(edge.edge_id.as_str());
                claims.push(edge.claim_rev);
                let (state, reason) = match edge.liveness {
                    PublishedLiveness::Connected => ("connected", None),
                    PublishedLiveness::Suspect => ("suspect", None),
                    PublishedLiveness::LinkLost => ("link-lost", None),
                    PublishedLiveness::Failed(why) => ("failed", Some(why.as_str())),
                };
                liveness.push(state);
                reasons.push(reason);
                draining.push(edge.draining);
                // JSON text: only locators read it back.
                loads.push(edge.load.and_then(|l| serde_json::to_string(&l).ok()));
                report_seqs.push(edge.report_seq);
            }
            // Only rows whose newest claim is this holder's: a locator whose claim was
            // overtaken (the edge reconnected elsewhere) writes nothing.
            let ids_written: Vec<String> = retry_once!(op, |_retry| sqlx::query_scalar(
                "WITH updated AS (
                   UPDATE edge_live AS l SET rev = nextval('edge_live_rev'),
                     liveness = u.liveness, fail_reason = u.fail_reason,
                     draining = u.draining, load = u.load, report_seq = u.report_seq,
                     updated_at_ms = (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
                   FROM UNNEST($2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[],
                               $6::BOOLEAN[], $7::TEXT[], $8::BIGINT[])
                     AS u(edge_id, claim_rev, liveness, fail_reason, draining, load, report_seq)
                   WHERE l.edge_id = u.edge_id AND l.holder = $1 AND l.claim_rev = u.claim_rev
                   RETURNING l.edge_id),
                 notified AS (
                   SELECT pg_notify('locus_edges', $1 || ' ' || string_agg(edge_id, ',')) AS n
                   FROM updated HAVING count(*) > 0)
                 SELECT edge_id FROM updated, (SELECT count(*) FROM notified) AS n",
            )
            .bind(holder)
            .bind(&ids)
            .bind(&claims)
            .bind(&liveness)
            .bind(&reasons)
            .bind(&draining)
            .bind(&loads)
            .bind(&report_seqs)
            .fetch_all(self.db.pool())
            .await)
            .map_err(StoreError::db(op))?;
            written.extend(ids_written);
        }
        Ok(written)
    }

    /// Takes on handling the failure of claim `claim_rev` of an edge: true for exactly
    /// one caller across all locators (it ends the edge's ad-hoc sessions and records the
    /// failure); false when another did, or the edge was claimed again since.
    pub async fn claim_edge_failure(
        &self,
        edge_id: &str,
        claim_rev: i64,
    ) -> Result<bool, StoreError> {
        let op = "claim_edge_failure";
        // A retry after an unacknowledged commit answers false: the failure is then not
        // handled by anyone; the next locator to notice the failure (or a join of one of
        // its sessions) handles it.
        let claimed = retry_once!(op, |_retry| sqlx::query(
            "UPDATE edge_live SET failure_handled_claim = claim_rev \
             WHERE edge_id = $1 AND claim_rev = $2 \
             AND failure_handled_claim IS DISTINCT FROM claim_rev",
        )
        .bind(edge_id)
        .bind(claim_rev)
        .execute(self.db.pool())
        .await)
        .map_err(StoreError::db(op))?;
        Ok(claimed.rows_affected() == 1)
    }

    /// The published state of the edges named (all of them for `None`).
    pub async fn live_edges(&self, ids: Option<&[String]>) -> Result<Vec<LiveEdge>, StoreError> {
        let op = "live_edges";
        let rows = retry_once!(op, |_retry| sqlx::query(
            "SELECT e.id, e.region, e.public_url, e.capacity, e.version, e.suspended,
                    e.suspended_by, e.suspended_at_ms, e.first_seen_ms, e.last_seen_ms,
                    l.holder, l.claim_rev, l.rev, l.liveness, l.fail_reason, l.draining,
                    l.load, l.report_seq, (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT - l.updated_at_ms AS age_ms
             FROM edge_live AS l JOIN edges AS e ON e.id = l.edge_id
             WHERE $1::TEXT[] IS NULL OR l.edge_id = ANY($1)
             ORDER BY l.edge_id",
        )
        .bind(ids)
        .fetch_all(self.db.pool())
        .await)
        .map_err(StoreError::db(op))?;
        rows.iter()
            .map(|row| {
                Ok(LiveEdge {
                    edge: edge_from_row(row)?,
                    holder: row.try_get("holder")?,
                    claim_rev: row.try_get("claim_rev")?,
                    rev: row.try_get("rev")?,
                    liveness: published_liveness(
                        row.try_get("liveness")?,
                        row.try_get("fail_reason")?,
                    ),
                    draining: row.try_get("draining")?,
                    // An unreadable report counts as none: the next report replaces it.
                    load: row
                        .try_get::<Option<String>, _>("load")?
                        .and_then(|l| serde_json::from_str(&l).ok()),
                    report_seq: row.try_get("report_seq")?,
                    age_ms: row.try_get("age_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::db(op))
    }

    /// Sends a change notification to every locator on the database.
    pub async fn notify(&self, channel: Channel, payload: &str) -> Result<(), StoreError> {
        let op = "notify";
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel.name())
            .bind(payload)
            .execute(self.db.pool())
            .await
            .map_err(StoreError::db(op))?;
        Ok(())
    }

    /// Starts following the change notifications of every locator on the database.
    pub async fn change_feed(&self) -> Result<ChangeFeed, StoreError> {
        let op = "change_feed";
        let mut listener = sqlx::postgres::PgListener::connect_with(self.db.pool())
            .await
            .map_err(StoreError::db(op))?;
        listener
            .listen_all(Channel::ALL.map(Channel::name))
            .await
            .map_err(StoreError::db(op))?;
        Ok(ChangeFeed { listener })
    }
}

/// The notification channels between locators sharing a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `<holder> <edge id>,…`: edges whose published state changed.
    Edges,
    /// `<locator> <edge id>=<n>,…`: sessions a locator just assigned to edges.
    Assignments,
    /// JSON: an admin action for every locator (and the holder of the edge's link).
    Admin,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Edges, Channel::Assignments, Channel::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Channel::Edges => "locus_edges",
            Channel::Assignments => "locus_assignments",
            Channel::Admin => "locus_admin",
        }
    }

    fn from_name(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Liveness of an edge as published by the locator holding its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishedLiveness {
    Connected,
    Suspect,
    LinkLost,
    Failed(crate::edge_state::FailReason),
}

/// What a locator publishes about an edge it holds.
#[derive(Debug, Clone)]
pub struct PublishedEdge {
    pub edge_id: String,
    pub claim_rev: i64,
    pub liveness: PublishedLiveness,
    pub draining: bool,
    /// The last load report.
    pub load: Option<locus_protocol::LoadReport>,
    pub report_seq: i64,
}

/// An edge's published state, with its registration.
#[derive(Debug, Clone)]
pub struct LiveEdge {
    pub edge: EdgeRecord,
    pub holder: String,
    pub claim_rev: i64,
    pub rev: i64,
    pub liveness: PublishedLiveness,
    pub draining: bool,
    pub load: Option<locus_protocol::LoadReport>,
    pub report_seq: i64,
    /// How long ago it was written, by the database's clock (no skew between locators).
    pub age_ms: i64,
}

/// The change notifications of the locators sharing a database
/// ([`ClusterStore::change_feed`]).
pub struct ChangeFeed {
    listener: sqlx::postgres::PgListener,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed").finish_non_exhaustive()
    }
}

impl ChangeFeed {
    /// The next notification. `Ok(None)`: the connection was lost and is being
    /// re-established: notifications sent meanwhile are lost, so re-read what matters.
    pub async fn next(&mut self) -> Result<Option<(Channel, String)>, StoreError> {
        loop {
            match self.listener.try_recv().await {
                Ok(Some(n)) => {
                    if let Some(channel) = Channel::from_name(n.channel()) {
                        return Ok(Some((channel, n.payload().to_string())));
                    }
                }
                Ok(None) => return Ok(None),
                Err(source) => return Err(StoreError::db("change_feed")(source)),
            }
        }
    }
}
