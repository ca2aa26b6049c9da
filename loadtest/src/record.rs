//! What the simulated clients saw, recorded as they go: one short `std` mutex around
//! plain vectors (never held across `.await`), turned into figures by [`crate::report`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// What a session request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A new ad-hoc session.
    Create,
    /// A room by key, or a session by id.
    Join,
    /// After a disconnect.
    Rejoin,
    /// A new session of the burst phase (created at once, many together).
    Burst,
}

impl Op {
    /// The name in the report (the latency table's rows).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Join => "join",
            Op::Rejoin => "rejoin",
            Op::Burst => "burst",
        }
    }
}

/// One answer of the locator to a session request (any HTTP status).
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// When the request was sent, ms since the start of the run.
    pub t_ms: u64,
    pub latency_us: u64,
    pub op: Op,
    pub status: u16,
    /// Serving region and edge (successful answers).
    pub region: Option<String>,
    pub edge: Option<String>,
    pub fallback: bool,
    /// The answer's `reason_code` reduced to its kind (see [`reason_class`]).
    pub reason: Option<&'static str>,
    pub created: bool,
}

/// One error a client met.
#[derive(Debug, Clone, Serialize)]
pub struct ClientError {
    pub t_ms: u64,
    /// `http-503`, `connect`, `timeout`, `ws-close-1001`…
    pub kind: String,
    /// Whether a client should retry (and does).
    pub retriable: bool,
}

/// One participant admitted by an edge (it received its presence with its own id).
#[derive(Debug, Clone, Serialize)]
pub struct Join {
    pub t_ms: u64,
    pub session_id: String,
    pub participant: String,
    pub edge: String,
    /// The client closed this connection itself (a `participant_left` is due).
    pub left: bool,
}

/// How one session went, seen from its clients.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionOutcome {
    pub t_ms: u64,
    pub session_id: String,
    pub keyed: bool,
    pub edge: String,
    pub participants: usize,
    /// Why the session was disrupted (connection closed or silent), and when.
    pub disrupted: Option<String>,
    pub disrupted_ms: Option<u64>,
    /// A participant got back into the session after the disruption, and when.
    pub recovered: bool,
    pub recovered_ms: Option<u64>,
    /// The locator answered 410 (an ad-hoc session on a failed or drained edge ended).
    pub ended_by_edge: bool,
    /// Disrupted and neither recovered nor ended within the re-join bound.
    pub lost: bool,
    /// A participant disconnected and re-joined on purpose.
    pub rejoined: bool,
    /// Frames sent by participants, deliveries due to the others, deliveries seen.
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    /// Frames a participant received that were not due to it: another session's or
    /// round's, its own, or a repeat.
    pub misdelivered: u64,
}

/// Everything recorded during a run.
#[derive(Debug, Default)]
pub struct Records {
    pub answers: Vec<Answer>,
    pub errors: Vec<ClientError>,
    pub joins: Vec<Join>,
    pub sessions: Vec<SessionOutcome>,
}

/// The shared recorder.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    inner: Mutex<Records>,
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            inner: Mutex::new(Records::default()),
            requests: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Milliseconds since the start of the run.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn ms_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn answer(&self, answer: Answer) {
        if (200..300).contains(&answer.status) {
            self.ok.fetch_add(1, Ordering::Relaxed);
        }
        self.lock().answers.push(answer);
    }

    pub fn error(&self, kind: impl Into<String>, retriable: bool) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let t_ms = self.now_ms();
        self.lock().errors.push(ClientError {
            t_ms,
            kind: kind.into(),
            retriable,
        });
    }

    pub fn join(&self, join: Join) {
        self.lock().joins.push(join);
    }

    pub fn mark_left(&self, session_id: &str, participant: &str) {
        let mut inner = self.lock();
        if let Some(j) = inner
            .joins
            .iter_mut()
            .rev()
            .find(|j| j.participant == participant && j.session_id == session_id)
        {
            j.left = true;
        }
    }

    pub fn session(&self, outcome: SessionOutcome) {
        self.lock().sessions.push(outcome);
    }

    /// Successful answers naming `edge` since `since_ms` (for choosing a victim).
    pub fn answers_by_edge_since(&self, since_ms: u64) -> Vec<(String, u64)> {
        let inner = self.lock();
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        for a in inner.answers.iter().filter(|a| a.t_ms >= since_ms) {
            if let Some(edge) = &a.edge {
                *counts.entry(edge.clone()).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }

    /// Takes the records (at the end of the run).
    pub fn take(&self) -> Records {
        std::mem::take(&mut *self.lock())
    }
}

/// The kind of a session answer's reason, from its `reason_code` alone: the `reason`
/// text is for people and may change. A locator older than `reason_code` (or a code this
/// loadtest does not know) is classed by the `fallback` flag.
pub fn reason_class(code: Option<&str>, fallback: bool) -> &'static str {
    match code {
        Some("in-region") => "in-region",
        Some("region-unavailable") => "region-unavailable",
        Some("region-saturated") => "region-saturated",
        Some("all-saturated") => "all-saturated",
        Some("only-suspended" | "only-draining") => "only-suspended-or-draining",
        Some("existing-session") => "existing-session",
        Some("room-moved") => "room-moved",
        _ if fallback => "fallback-other",
        _ => "in-region",
    }
}

/// Sessions each edge reported, sampled once a second from the locator's admin status:
/// `(second of the run, [(edge, region, sessions)])`.
pub type EdgeSamples = Vec<(u64, Vec<(String, String, u64)>)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_classed_by_their_code_not_their_text() {
        assert_eq!(
            reason_class(Some("region-saturated"), true),
            "region-saturated"
        );
        assert_eq!(
            reason_class(Some("only-draining"), true),
            "only-suspended-or-draining"
        );
        assert_eq!(
            reason_class(Some("only-suspended"), false),
            "only-suspended-or-draining"
        );
        assert_eq!(reason_class(Some("room-moved"), false), "room-moved");
        assert_eq!(reason_class(None, true), "fallback-other");
        assert_eq!(reason_class(Some("a-future-code"), false), "in-region");
    }
}
