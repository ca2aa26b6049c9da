//! `locus-protocol`: the wire types the locator and the edges share, in one place so they
//! can never drift apart.
//!
//! - [`EdgeMessage`] / [`LocatorMessage`]: the edge link, JSON text frames over a
//!   websocket, each side's first message carrying [`PROTOCOL_VERSION`].
//! - [`SpoolEntry`]: audit entries and metrics samples, each with an idempotency key
//!   (edge id + monotonic sequence), relayed in order and acknowledged cumulatively.
//! - [`join_token`]: signed, expiring join tokens bound to a session and an edge, which an
//!   edge verifies without calling the locator.
//!
//! Link rules (enforced by the locator, followed by the edge): the first edge message is
//! [`EdgeMessage::Register`]; frames above [`MAX_FRAME_BYTES`] close the link; spool
//! entries arrive in increasing sequence; the locator acknowledges a sequence only after
//! its database committed every entry up to it.

use serde::{Deserialize, Serialize};

pub mod join_token;

/// Version of the edge link protocol. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts on the edge link.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Most spool entries in one [`EdgeMessage::Spool`] batch.
pub const MAX_SPOOL_BATCH: usize = 500;

/// Path of the locator's edge websocket.
pub const EDGE_LINK_PATH: &str = "/v1/edge/link";

/// Everything an edge sends to the locator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EdgeMessage {
    /// First message on every connection.
    Register(Register),
    /// Load figures, every report interval.
    Report(LoadReport),
    /// Spool entries, in increasing `seq`.
    Spool { entries: Vec<SpoolEntry> },
    /// The edge is stopping: no new sessions; existing ones go on until the deadline.
    Draining { deadline_unix_ms: u64 },
    /// The drain deadline passed with these sessions still open: move their rooms.
    DrainDeadline { sessions: Vec<String> },
}

/// An edge introducing itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub protocol: u32,
    pub edge_id: String,
    pub region: String,
    /// Base URL clients use to reach the edge (`http://` or `https://`; the websocket
    /// path is appended).
    pub public_url: String,
    /// Sessions the edge can host; the load score is relative to it.
    pub capacity: u32,
    /// The edge's software version (shown on the admin page).
    pub version: String,
    /// Sessions currently hosted: re-announced after a locator restart.
    #[serde(default)]
    pub sessions: Vec<String>,
    /// True when the edge is already draining.
    #[serde(default)]
    pub draining: bool,
}

/// Load of an edge, read from the running process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    /// CPU used by the edge process since the last report, as a fraction of the machine
    /// (0.0 idle .. 1.0 all cores busy).
    pub cpu: f32,
    /// Event-loop lag: the overshoot of a ticking task, in milliseconds.
    pub lag_ms: f32,
    /// Open client websockets.
    pub connections: u32,
    /// Sessions with at least one participant (or lingering).
    pub sessions: u32,
}

/// One durable record produced by an edge: written to its spool before it is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolEntry {
    /// Monotonic per edge; with the edge id, the idempotency key.
    pub seq: u64,
    /// When it happened (Unix milliseconds, edge clock).
    pub at_unix_ms: i64,
    pub body: SpoolBody,
}

/// What a spool entry records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SpoolBody {
    SessionStarted {
        session_id: String,
    },
    SessionEnded {
        session_id: String,
    },
    ParticipantJoined {
        session_id: String,
        participant: String,
    },
    ParticipantLeft {
        session_id: String,
        participant: String,
    },
    /// A load sample kept for long-term metrics.
    Metrics(LoadReport),
}

impl SpoolBody {
    /// The audit kind (`session_started`…), or `None` for metrics.
    pub fn audit_kind(&self) -> Option<&'static str> {
        match self {
            SpoolBody::SessionStarted { .. } => Some("session_started"),
            SpoolBody::SessionEnded { .. } => Some("session_ended"),
            SpoolBody::ParticipantJoined { .. } => Some("participant_joined"),
            SpoolBody::ParticipantLeft { .. } => Some("participant_left"),
            SpoolBody::Metrics(_) => None,
        }
    }

    /// The session an audit entry is about.
    pub fn session_id(&self) -> Option<&str> {
        match self {
            SpoolBody::SessionStarted { session_id }
            | SpoolBody::SessionEnded { session_id }
            | SpoolBody::ParticipantJoined { session_id, .. }
            | SpoolBody::ParticipantLeft { session_id, .. } => Some(session_id),
            SpoolBody::Metrics(_) => None,
        }
    }

    /// The participant an audit entry is about.
    pub fn participant(&self) -> Option<&str> {
        match self {
            SpoolBody::ParticipantJoined { participant, .. }
            | SpoolBody::ParticipantLeft { participant, .. } => Some(participant),
            _ => None,
        }
    }
}

/// Everything the locator sends to an edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LocatorMessage {
    /// Answer to `Register`.
    Welcome {
        protocol: u32,
        /// Report interval the edge must use.
        report_interval_ms: u64,
        /// Highest spool sequence of this edge the locator has stored: the edge may drop
        /// everything up to it and relays the rest.
        acked_seq: u64,
        /// Admin suspension (shown by the edge in its logs; it still serves its sessions).
        suspended: bool,
        /// How often the edge pings the locator over the link (its heartbeat; the
        /// locator makes an edge whose heartbeats stop `suspect` within about a second).
        /// 0, or absent (an older locator): once a report interval.
        #[serde(default)]
        heartbeat_interval_ms: u64,
    },
    /// Every spool entry up to `seq` is committed to the locator's database.
    Ack { seq: u64 },
    /// Admin drain: behave as on SIGTERM.
    Drain { deadline_unix_ms: u64 },
    /// Where the rooms of a draining edge went (answer to `DrainDeadline`).
    RoomsMoved { moves: Vec<RoomMove> },
    /// Why the locator is closing the link.
    Error { reason: String },
}

/// One room moved off a draining edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomMove {
    pub session_id: String,
    /// The new edge's id and websocket URL for the session.
    pub edge_id: String,
    pub url: String,
}

/// The URL of a session's websocket on an edge.
pub fn session_ws_url(public_url: &str, session_id: &str) -> String {
    let base = public_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{base}/v1/sessions/{session_id}/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let m = EdgeMessage::Spool {
            entries: vec![SpoolEntry {
                seq: 7,
                at_unix_ms: 1,
                body: SpoolBody::ParticipantJoined {
                    session_id: "s1".into(),
                    participant: "p1".into(),
                },
            }],
        };
        let text = serde_json::to_string(&m).expect("serialize");
        assert!(text.contains("\"type\":\"spool\""), "{text}");
        assert!(text.contains("\"kind\":\"participant_joined\""), "{text}");
        assert_eq!(
            serde_json::from_str::<EdgeMessage>(&text).expect("parse"),
            m
        );
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        assert!(serde_json::from_str::<EdgeMessage>(r#"{"type":"hello"}"#).is_err());
        assert!(
            serde_json::from_str::<EdgeMessage>(
                r#"{"type":"report","cpu":0.1,"lag_ms":1,"connections":1,"sessions":1,"x":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn websocket_urls_follow_the_public_url_scheme() {
        assert_eq!(
            session_ws_url("https://edge1.example.net/", "abc"),
            "wss://edge1.example.net/v1/sessions/abc/ws"
        );
        assert_eq!(
            session_ws_url("http://127.0.0.1:9000", "abc"),
            "ws://127.0.0.1:9000/v1/sessions/abc/ws"
        );
    }
}
