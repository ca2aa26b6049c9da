//! `locus-edge`: the edge server. It hosts the users' sessions (client websockets whose
//! messages are relayed between the participants), keeps a websocket link to the
//! locator (register, load reports, audit and metrics relay) and drains on SIGTERM.
//!
//! Layout:
//!
//! - [`config`]: the `edge` command line and the validated [`config::Settings`]; the
//!   edge token read from `LOCATOR_EDGE_TOKEN` (never logged).
//! - [`server`]: the top: the HTTP routes (`/healthz`, `/readyz`, `/v1/status`, the
//!   session websocket) and `run(listener, state, shutdown)`, which takes a bound
//!   listener so tests bind `127.0.0.1:0` and starts the tasks.
//! - [`state`]: the shared [`state::EdgeState`]: settings, token and one handle per
//!   component; it imports only the modules defining those handles.
//! - [`hub`]: sessions: join-token checks, participants with bounded send queues,
//!   relay in order per sender, presence, linger, slow-consumer eviction.
//! - [`media`]: the media plane: one WebRTC peer per participant that asks (signalled
//!   with `{"locus":"rtc",…}` frames on its websocket), RTP forwarded between a
//!   session's peers (SFU), the `locus` data channel, ports and peer bounds.
//! - [`spool`]: the durable local spool (SQLite) of audit entries and metrics samples,
//!   with group commit, idempotency keys (edge id + sequence) and a size bound.
//! - [`link`]: the locator link (tokio-tungstenite client): register, reports, spool
//!   relay with acknowledgements, reconnection with jittered back-off over several
//!   locator URLs; [`link_handle`]: what the rest of the edge sees of it (outbox,
//!   connected, flushed).
//! - [`load`]: real load figures of the process (CPU from `/proc/self/stat`, event-loop
//!   lag from a ticking task) and the sampler that reports and spools them.
//! - [`drain`]: the drain on SIGTERM or on the locator's request: no new sessions,
//!   deadline, rooms moved to other edges, clients told where to go.
//! - [`openapi`]: the OpenAPI document of the routes.
//!
//! The binary (`src/main.rs`) only parses flags, reads the token, binds the listener and
//! turns the first SIGTERM into a drain and the second into an immediate exit.
//!
//! Layering (no import cycle, checked by `loadtest/tests/import_graph.rs`): `server`
//! imports anything; `link` (the task) imports `state`; `state` imports only the
//! component modules (`config`, `hub`, `media`, `spool`, `load`, `drain`, `link_handle`);
//! the drain and the load sampler take the narrow handles they use, not the state; `media`
//! and `link_handle` import no sibling. Clocks live here at the root.
//!
//! Invariants: link trouble never touches sessions (the hub never waits on the link);
//! every queue a client drives is bounded; an audit entry is committed to the spool
//! before it is sent, and deleted only after the locator acknowledged it.

pub mod config;
pub mod drain;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod link;
pub mod link_handle;
pub mod load;
pub mod media;
pub mod openapi;
pub mod server;
pub mod spool;
pub mod state;

/// Milliseconds since the Unix epoch, as the locator counts them (`i64`, the type of the
/// protocol's and the databases' timestamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch (join-token expiry), as the locator counts them.
pub fn now_unix() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or_default()
}
