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
//! entries arrive in increasing sequence, the new ones continuing the locator's
//! `acked_seq` without a gap (a gap or a number above [`MAX_SPOOL_SEQ`] closes the link;
//! the edge realigns its numbering on the next `Welcome`); the locator acknowledges a
//! sequence only after its database committed every entry up to it.
//!
//! # Adding fields (compatibility rule)
//!
//! Both sides refuse unknown fields (`deny_unknown_fields`: a typo must not pass as an
//! absent figure), and [`PROTOCOL_VERSION`] must match exactly, so it is bumped only for
//! a change an older peer cannot read at all. A field is added compatibly instead:
//!
//! - it has a serde default that means what an older peer means by leaving it out
//!   (`0`, `None`: "not reported"), so a newer reader accepts an older writer;
//! - a writer omits it while it carries nothing (`skip_serializing_if`), so a message
//!   without the new information is exactly what an older reader accepts.
//!
//! A message that does carry a new field is refused by an older reader (the locator
//! closes the link naming the unknown field), so **upgrade locators before edges**: a
//! newer edge links to an older locator only while its new fields are empty. For
//! [`LoadReport`]'s WebRTC figures (`rtc_peers`, `bitrate_in`, …, `max_bitrate`) that means
//! an edge with no `--max-bitrate` and no WebRTC peer since its previous report.
//!
//! # Adding messages (compatibility rule)
//!
//! An unknown message type is refused like an unknown field (an edge that cannot read a
//! locator message closes the link as malformed). So a new [`LocatorMessage`] is sent only
//! to an edge that announced it in [`Register::features`] (one [`features`] name per
//! message); an older edge announces none and never receives it. The list is left out of
//! the register frame while empty; a newer edge announcing features links to a locator
//! that knows them (upgrade locators before edges, as for fields).
//!
//! A field added to [`LocatorMessage::Welcome`] goes the same way: named by a feature,
//! sent only to an edge announcing it (`pong_heartbeats`).

use serde::{Deserialize, Serialize};

pub mod edge_credential;
#[doc(hidden)]
pub mod fuzzing;
pub mod join_token;

/// Version of the edge link protocol. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts on the edge link.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Most spool entries in one [`EdgeMessage::Spool`] batch.
pub const MAX_SPOOL_BATCH: usize = 500;

/// Highest spool sequence number: 2^53 - 1, exact in any JSON reader and far from the
/// database's i64 limit, so numbering can never overflow. At one entry a microsecond it
/// lasts 285 years.
pub const MAX_SPOOL_SEQ: u64 = (1 << 53) - 1;

/// Most session ids in one [`LocatorMessage::SessionsEnded`] (well under the frame limit).
pub const MAX_SESSIONS_ENDED: usize = 1_000;

/// Path of the locator's edge websocket.
pub const EDGE_LINK_PATH: &str = "/v1/edge/link";

/// The edge's heartbeat rules, followed by the edge and by the load test's simulated
/// edges.
pub mod heartbeat {
    use std::time::Duration;

    /// Silence of the locator after which an edge gives its link up and reconnects:
    /// three report intervals and 5 s.
    pub fn silent_limit(report_interval: Duration) -> Duration {
        report_interval * 3 + Duration::from_secs(5)
    }

    /// With pong heartbeats (see [`crate::LocatorMessage::Welcome`]), how often the edge
    /// still sends a ping instead: the locator's answers are what the edge hears of a
    /// locator with nothing else to say, so four pings fit in [`silent_limit`].
    pub fn ping_every(report_interval: Duration) -> Duration {
        silent_limit(report_interval) / 4
    }
}

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
    /// Locator messages (and `Welcome` fields) added after the first release that this
    /// edge understands (names
    /// from [`features`]); see "Adding messages" in the crate docs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// Names an edge lists in [`Register::features`].
pub mod features {
    /// The edge understands [`LocatorMessage::SessionsEnded`](crate::LocatorMessage::SessionsEnded).
    pub const SESSIONS_ENDED: &str = "sessions_ended";

    /// The edge reads [`LocatorMessage::Welcome`]'s `pong_heartbeats` (and then sends most
    /// heartbeats as unsolicited pongs).
    pub const PONG_HEARTBEATS: &str = "pong_heartbeats";

    /// Everything this build understands (what its edge announces).
    pub const ALL: &[&str] = &[SESSIONS_ENDED, PONG_HEARTBEATS];
}

/// Load of an edge, read from the running process.
///
/// The WebRTC figures (from `rtc_peers` on) were added after the first release: each is
/// optional and left out while zero or unset (see "Adding fields" in the crate docs).
/// Rates are averages over the report interval; bits count payload (RTP payloads and
/// data-channel messages), not packet headers or SRTP/SCTP overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    /// CPU used by the edge process since the last report, as a fraction of the machine
    /// (0.0 idle .. 1.0 all cores busy).
    #[serde(deserialize_with = "finite_f32")]
    pub cpu: f32,
    /// Event-loop lag: the overshoot of a ticking task, in milliseconds.
    #[serde(deserialize_with = "finite_f32")]
    pub lag_ms: f32,
    /// Open client websockets.
    pub connections: u32,
    /// Sessions with at least one participant (or lingering).
    pub sessions: u32,
    /// WebRTC peer connections open.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rtc_peers: u32,
    /// Bits per second the edge received from WebRTC participants to forward (published
    /// RTP and `locus` data-channel messages).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bitrate_in: u64,
    /// Bits per second the edge forwarded to WebRTC participants.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bitrate_out: u64,
    /// RTP packets and data-channel messages received per second.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packets_in_per_s: u32,
    /// RTP packets and data-channel messages forwarded per second.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packets_out_per_s: u32,
    /// The edge's bitrate capacity in bits per second (`--max-bitrate`), against which the
    /// locator weighs the busier direction of `bitrate_in` / `bitrate_out`. Sent with
    /// every report rather than in [`Register`] so that locators mirroring the edge
    /// through the database (which stores the last report) know it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bitrate: Option<u64>,
}

fn is_zero<T: Default + PartialEq>(x: &T) -> bool {
    *x == T::default()
}

/// An `f32` that is finite. JSON numbers beyond `f32::MAX` (`1e39`) would become
/// infinity, which serializes as `null`: a report that could not be stored or shown as it
/// came (an input that breaks the round trip the `edge_link_messages` fuzz target checks).
fn finite_f32<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f32, D::Error> {
    let value = f32::deserialize(deserializer)?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(
            "a load figure must be a finite number",
        ))
    }
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
        /// The locator counts an unsolicited websocket pong as a heartbeat (RFC 6455
        /// §5.5.3 allows one as a unidirectional heartbeat): the edge may send pongs
        /// instead of pings, which spares the locator a pong to write per heartbeat. The
        /// edge still pings now and then, to hear that the locator is there. Sent (true)
        /// only to an edge announcing [`features::PONG_HEARTBEATS`]; absent (an older
        /// locator, or an older edge): pings.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pong_heartbeats: bool,
    },
    /// Every spool entry up to `seq` is committed to the locator's database.
    Ack { seq: u64 },
    /// Admin drain: behave as on SIGTERM.
    Drain { deadline_unix_ms: u64 },
    /// Where the rooms of a draining edge went (answer to `DrainDeadline`).
    RoomsMoved { moves: Vec<RoomMove> },
    /// Why the locator is closing the link.
    Error { reason: String },
    /// The locator ended these sessions (their edge failed meanwhile, or nobody joined
    /// them in time): the edge closes their participants (close code 4410 with the
    /// reason) and refuses the join tokens issued before now (410 `session-ended`). At
    /// most [`MAX_SESSIONS_ENDED`] ids a message; sent only to edges announcing
    /// [`features::SESSIONS_ENDED`].
    SessionsEnded {
        sessions: Vec<String>,
        /// Why, in a few words (`expired-unjoined`, `edge-failed`…).
        reason: String,
    },
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

/// Checks an edge's public URL (`Register::public_url`, the edge's `--public-url`): the
/// locator hands it to clients and probes it, so both sides apply the same rule.
/// `http://` or `https://`, a host name or IP address (IPv6 in brackets), an optional
/// port, an optional path; no user info, query, fragment, spaces, quotes or control
/// characters; at most 512 bytes.
pub fn check_public_url(url: &str) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "public_url must be an http:// or https:// URL of the edge ({why})"
        ))
    };
    if url.len() > 512 {
        return refuse("at most 512 characters");
    }
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return refuse("scheme http:// or https://");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return refuse("no user info");
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((v6, after)) = bracketed.split_once(']') else {
            return refuse("an IPv6 address in brackets");
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return refuse("an IPv6 address in brackets");
        }
        (v6, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.contains(':')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !host_ok {
        return refuse("a host name or IP address");
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return refuse("a port between 1 and 65535");
    }
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~%!$&()*+,;=:".contains(&b));
    if !path_ok {
        return refuse("a path without spaces, quotes, query or fragment");
    }
    Ok(())
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

    /// Regression (fuzz target `edge_link_messages`): `1e39` became an infinite `cpu`,
    /// which encodes as `null` and never decodes again.
    #[test]
    fn load_figures_beyond_f32_are_refused() {
        for text in [
            r#"{"type":"report","cpu":1e39,"lag_ms":1,"connections":1,"sessions":1}"#,
            r#"{"type":"report","cpu":0.5,"lag_ms":-4e38,"connections":1,"sessions":1}"#,
        ] {
            let error = serde_json::from_str::<EdgeMessage>(text).expect_err(text);
            assert!(error.to_string().contains("finite"), "{error}");
        }
        let max = format!(
            r#"{{"type":"report","cpu":{},"lag_ms":0,"connections":1,"sessions":1}}"#,
            f32::MAX
        );
        assert!(serde_json::from_str::<EdgeMessage>(&max).is_ok());
    }

    #[test]
    fn webrtc_figures_are_optional_both_ways() {
        // An older edge's report (no WebRTC figures) reads as zero / no bitrate cap.
        let old = r#"{"type":"report","cpu":0.1,"lag_ms":1.0,"connections":1,"sessions":1}"#;
        let EdgeMessage::Report(report) = serde_json::from_str(old).expect("parse") else {
            panic!("not a report");
        };
        assert_eq!(report.rtc_peers, 0);
        assert_eq!(report.max_bitrate, None);
        // A report without WebRTC figures is exactly what an older locator accepts.
        let text = serde_json::to_string(&EdgeMessage::Report(report)).expect("serialize");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).expect("json"),
            serde_json::from_str::<serde_json::Value>(old).expect("json")
        );
        // With figures, they round-trip under their names.
        let full = LoadReport {
            rtc_peers: 3,
            bitrate_in: 64_000,
            bitrate_out: 128_000,
            packets_in_per_s: 50,
            packets_out_per_s: 100,
            max_bitrate: Some(200_000_000),
            ..report
        };
        let text = serde_json::to_string(&full).expect("serialize");
        for key in [
            "\"rtc_peers\":3",
            "\"bitrate_in\":64000",
            "\"bitrate_out\":128000",
            "\"packets_in_per_s\":50",
            "\"packets_out_per_s\":100",
            "\"max_bitrate\":200000000",
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }
        assert_eq!(
            serde_json::from_str::<LoadReport>(&text).expect("parse"),
            full
        );
    }

    #[test]
    fn features_are_announced_only_when_there_are_some() {
        // An older edge's register (no features) reads as announcing none…
        let old = r#"{"type":"register","protocol":1,"edge_id":"e","region":"r","public_url":"http://e","capacity":1,"version":"1"}"#;
        let EdgeMessage::Register(register) = serde_json::from_str(old).expect("parse") else {
            panic!("not a register");
        };
        assert!(register.features.is_empty());
        // …and a register without features is exactly what an older locator accepts.
        let text = serde_json::to_string(&EdgeMessage::Register(register.clone())).expect("json");
        assert!(!text.contains("features"), "{text}");
        let newer = Register {
            features: features::ALL.iter().map(|f| f.to_string()).collect(),
            ..register
        };
        let text = serde_json::to_string(&EdgeMessage::Register(newer)).expect("json");
        assert!(
            text.contains(r#""features":["sessions_ended","pong_heartbeats"]"#),
            "{text}"
        );
        // The message those features name round-trips; an older edge's parser refuses an
        // unknown type, which is why it is sent only to edges that announce it.
        let ended = LocatorMessage::SessionsEnded {
            sessions: vec!["s1".into()],
            reason: "expired-unjoined".into(),
        };
        let text = serde_json::to_string(&ended).expect("json");
        assert!(text.contains(r#""type":"sessions_ended""#), "{text}");
        assert_eq!(
            serde_json::from_str::<LocatorMessage>(&text).expect("parse"),
            ended
        );
        assert!(serde_json::from_str::<LocatorMessage>(r#"{"type":"later_message"}"#).is_err());
    }

    #[test]
    fn pong_heartbeats_are_offered_only_in_a_welcome_that_says_so() {
        // An older locator's welcome reads as "no pong heartbeats": the edge pings.
        let old = r#"{"type":"welcome","protocol":1,"report_interval_ms":1000,"acked_seq":0,"suspended":false,"heartbeat_interval_ms":250}"#;
        let welcome: LocatorMessage = serde_json::from_str(old).expect("parse");
        assert!(matches!(
            welcome,
            LocatorMessage::Welcome {
                pong_heartbeats: false,
                ..
            }
        ));
        // A welcome without them is exactly what an older edge accepts…
        let text = serde_json::to_string(&welcome).expect("json");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).expect("json"),
            serde_json::from_str::<serde_json::Value>(old).expect("json")
        );
        // …and one offering them round-trips (an older edge would refuse the field,
        // which is why it goes only to edges announcing `pong_heartbeats`).
        let offered = LocatorMessage::Welcome {
            protocol: 1,
            report_interval_ms: 1000,
            acked_seq: 0,
            suspended: false,
            heartbeat_interval_ms: 250,
            pong_heartbeats: true,
        };
        let text = serde_json::to_string(&offered).expect("json");
        assert!(text.contains(r#""pong_heartbeats":true"#), "{text}");
        assert_eq!(
            serde_json::from_str::<LocatorMessage>(&text).expect("parse"),
            offered
        );
    }

    #[test]
    fn public_urls_are_checked_the_same_way_everywhere() {
        for good in [
            "http://127.0.0.1:9000",
            "https://edge1.example.net/",
            "https://edge1.example.net/base/path",
            "http://[::1]:9000",
        ] {
            assert_eq!(check_public_url(good), Ok(()), "{good}");
        }
        for bad in [
            "http://",
            "ftp://edge.example.net",
            "http://user:pw@edge.example.net",
            "http://edge.example.net@attacker.example",
            "http://edge.example.net/\"onmouseover=\"x",
            "http://edge.example.net/a b",
            "http://edge.example.net/?q=1",
            "http://edge.example.net:0",
            "http://edge.example.net:99999",
            "http://[::1",
            "http://ed ge",
        ] {
            assert!(check_public_url(bad).is_err(), "{bad}");
        }
        assert!(check_public_url(&format!("http://a/{}", "x".repeat(600))).is_err());
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
