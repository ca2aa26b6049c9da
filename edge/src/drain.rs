//! The drain: how an edge stops without dropping its users.
//!
//! Started by the first SIGTERM (deadline `--drain-deadline` from now) or by the
//! locator's `Drain` message (its deadline). Then:
//!
//! 1. the edge announces `Draining { deadline }` to the locator and refuses new sessions
//!    ([`crate::hub::DRAINING`]); joins of the sessions it hosts are still admitted, and
//!    `/readyz` answers 503 while `/healthz` keeps answering 200;
//! 2. it waits until every session has ended or the deadline passes;
//! 3. at the deadline it sends `DrainDeadline { sessions }` and waits (at most
//!    [`MOVES_WAIT`]) for `RoomsMoved`: the locator moves the keyed rooms to other edges;
//! 4. participants of a moved room receive
//!    `{"locus":"moved","session":…,"edge":…,"url":…}` and a close `4000 moved to <edge>`;
//!    the others a close `1001` [`crate::hub::SHUTTING_DOWN`];
//! 5. it waits (at most [`CLOSE_WAIT`]) for those connections to close, then (at most
//!    [`SPOOL_FLUSH_WAIT`]) for the spool to be acknowledged (entries left over stay in
//!    the spool file and are relayed at the next start);
//! 6. the server stops and the process exits.
//!
//! A second SIGTERM exits at once (handled by the binary).

use std::sync::Arc;
use std::time::Duration;

use locus_protocol::{EdgeMessage, RoomMove};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::hub::Hub;
use crate::link_handle::LinkHandle;
use crate::spool::Spool;

/// How long the edge waits for `RoomsMoved` after `DrainDeadline`.
pub const MOVES_WAIT: Duration = Duration::from_secs(5);

/// How long the edge waits for its clients to complete their close handshakes.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long the edge waits for the locator to acknowledge the last spool entries.
pub const SPOOL_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Where the drain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Draining {
        deadline_unix_ms: u64,
    },
    /// Everything is closed: the server stops.
    Finished,
}

/// The drain's state, shared by the signal handler, the link and the supervisor.
#[derive(Debug)]
pub struct Drain {
    phase: watch::Sender<Phase>,
    moves: watch::Sender<Option<Vec<RoomMove>>>,
    deadline: Duration,
}

impl Drain {
    /// `deadline`: how long a drain started by a signal lasts.
    pub fn new(deadline: Duration) -> Drain {
        Drain {
            phase: watch::channel(Phase::Serving).0,
            moves: watch::channel(None).0,
            deadline,
        }
    }

    /// Starts draining with the configured deadline (SIGTERM). False if already started.
    pub fn start(&self) -> bool {
        self.start_until(now_unix_ms() + self.deadline.as_millis() as u64)
    }

    /// Starts draining until `deadline_unix_ms` (the locator's `Drain`). False if
    /// already started.
    pub fn start_until(&self, deadline_unix_ms: u64) -> bool {
        self.phase.send_if_modified(|phase| {
            if *phase == Phase::Serving {
                *phase = Phase::Draining { deadline_unix_ms };
                true
            } else {
                false
            }
        })
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Draining or finished.
    pub fn is_draining(&self) -> bool {
        self.phase() != Phase::Serving
    }

    /// The locator's answer to `DrainDeadline`.
    pub fn rooms_moved(&self, moves: Vec<RoomMove>) {
        self.moves.send_replace(Some(moves));
    }

    /// Completes when the drain is over.
    pub async fn finished(&self) {
        let mut phase = self.phase.subscribe();
        let _ = phase.wait_for(|p| *p == Phase::Finished).await;
    }

    pub(crate) fn finish(&self) {
        self.phase.send_replace(Phase::Finished);
    }
}

/// [`crate::now_ms`] in the protocol's unsigned deadline type.
fn now_unix_ms() -> u64 {
    u64::try_from(crate::now_ms()).unwrap_or_default()
}

/// Waits for a drain to start, then carries it out (see the module docs) over the
/// sessions (`hub`), the link to the locator and the spool.
pub async fn supervise(drain: Arc<Drain>, hub: Arc<Hub>, link: Arc<LinkHandle>, spool: Spool) {
    let mut phase = drain.phase.subscribe();
    let deadline_unix_ms = match phase
        .wait_for(|p| matches!(p, Phase::Draining { .. }))
        .await
        .map(|p| *p)
    {
        Ok(Phase::Draining { deadline_unix_ms }) => deadline_unix_ms,
        _ => return,
    };
    hub.set_draining();
    let remaining = Duration::from_millis(deadline_unix_ms.saturating_sub(now_unix_ms()));
    tracing::info!(
        sessions = hub.session_count(),
        deadline_in_s = remaining.as_secs_f32(),
        "draining: no new sessions; existing ones go on until they end or the deadline"
    );
    link.send(EdgeMessage::Draining { deadline_unix_ms });

    let mut sessions = hub.subscribe_sessions();
    let deadline = Instant::now() + remaining;
    let _ = tokio::time::timeout_at(deadline, sessions.wait_for(|n| *n == 0)).await;

    let open = hub.session_ids();
    let mut moves = Vec::new();
    if !open.is_empty() {
        tracing::info!(
            sessions = open.len(),
            "drain deadline passed: asking the locator to move the rooms"
        );
        let mut answer = drain.moves.subscribe();
        link.send(EdgeMessage::DrainDeadline { sessions: open });
        match tokio::time::timeout(MOVES_WAIT, answer.wait_for(Option::is_some)).await {
            Ok(Ok(m)) => moves = m.clone().unwrap_or_default(),
            _ => tracing::warn!(
                "no answer from the locator about moving rooms: every client is told to start a new session"
            ),
        }
    }
    hub.close_all(&moves).await;
    tracing::info!(moved = moves.len(), "sessions closed");

    // Let the connections finish their close handshakes.
    let mut connections = hub.subscribe_connections();
    let _ = tokio::time::timeout(CLOSE_WAIT, connections.wait_for(|n| *n == 0)).await;
    // Relay the last audit entries if the locator is there.
    if link.is_connected() {
        let mut progress = spool.subscribe();
        let _ = tokio::time::timeout(SPOOL_FLUSH_WAIT, progress.wait_for(|s| s.len == 0)).await;
    }
    // An edge with nothing left to do gets here within microseconds of the signal: make
    // sure the locator got `Draining`, so it sees a drained edge leave, not a failure.
    if link.is_connected() && !link.flushed(SPOOL_FLUSH_WAIT).await {
        tracing::warn!("the locator may not have received the drain announcement");
    }
    let left = spool.len();
    if left > 0 {
        tracing::warn!(
            entries = left,
            spool = %spool.path().display(),
            "spool entries not yet acknowledged stay in the spool: they are relayed at the next start"
        );
    }
    tracing::info!("drain finished: exiting");
    drain.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_once_and_keeps_the_first_deadline() {
        let drain = Drain::new(Duration::from_secs(60));
        assert!(!drain.is_draining());
        assert!(drain.start_until(1_000));
        assert!(!drain.start(), "a second start changes nothing");
        assert_eq!(
            drain.phase(),
            Phase::Draining {
                deadline_unix_ms: 1_000
            }
        );
        drain.finish();
        assert!(drain.is_draining());
    }
}
