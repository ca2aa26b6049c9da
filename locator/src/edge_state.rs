//! The state of one edge as a small pure state machine: events in, status out, time
//! passed in explicitly (`tokio::time::Instant`, so tests pause and advance it).
//!
//! Two independent axes:
//! - **liveness**, driven by the link: `Connected` → (socket closed, or reports missed)
//!   → `LinkLost` → (grace period over, or the edge's own `/healthz` does not answer) →
//!   `Failed`. A new registration brings any of them back to `Connected`.
//! - **admin and edge intent**: `suspended` (admin, persisted, survives restarts) and
//!   `draining` (announced by the edge, or asked by an admin).
//!
//! The state shown to people and used by selection is derived from both:
//! `failed` > `link-lost` > `draining` > `suspended` > `active`.

use std::fmt;
use std::time::Duration;

use locus_geo::config::EdgeTiming;
use serde::Serialize;
use tokio::time::Instant;

/// Whether the edge's link is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Connected,
    /// Socket gone or reports missed; joins of its sessions still route here until the
    /// grace period ends.
    LinkLost {
        since: Instant,
    },
    /// Unavailable: no joins, no new sessions; its ad-hoc sessions end.
    Failed {
        why: FailReason,
    },
}

/// Why an edge was declared failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailReason {
    /// The link stayed lost for the whole grace period.
    GraceExpired,
    /// The edge's own `/healthz` did not answer: the process is dead, not just the link.
    HealthProbeFailed,
    /// Drained and gone.
    Drained,
}

impl FailReason {
    pub const ALL: [FailReason; 3] = [
        FailReason::GraceExpired,
        FailReason::HealthProbeFailed,
        FailReason::Drained,
    ];

    /// The kebab-case name (as serialized, and as published for other locators).
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::GraceExpired => "grace-expired",
            FailReason::HealthProbeFailed => "health-probe-failed",
            FailReason::Drained => "drained",
        }
    }

    pub fn from_name(name: &str) -> Option<FailReason> {
        FailReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn describe(self) -> &'static str {
        match self {
            FailReason::GraceExpired => "link lost for the whole grace period",
            FailReason::HealthProbeFailed => "link lost and its /healthz does not answer",
            FailReason::Drained => "drained and disconnected",
        }
    }
}

/// The derived state, as shown on the admin page and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeState {
    Active,
    Suspended,
    Draining,
    LinkLost,
    Failed,
}

impl EdgeState {
    pub const ALL: [EdgeState; 5] = [
        EdgeState::Active,
        EdgeState::Suspended,
        EdgeState::Draining,
        EdgeState::LinkLost,
        EdgeState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EdgeState::Active => "active",
            EdgeState::Suspended => "suspended",
            EdgeState::Draining => "draining",
            EdgeState::LinkLost => "link-lost",
            EdgeState::Failed => "failed",
        }
    }
}

impl fmt::Display for EdgeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One edge's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeStatus {
    pub liveness: Liveness,
    pub suspended: bool,
    pub draining: bool,
    /// When the last report (or the registration) arrived.
    pub last_report_at: Instant,
}

/// An edge's state as published by the locator holding its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedStatus {
    /// `LinkLost`'s `since` is ignored (the loss counts from when it was written).
    pub liveness: Liveness,
    pub suspended: bool,
    pub draining: bool,
    /// How long ago it was written.
    pub age: Duration,
}

/// What the owner of the status should do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Liveness went to `LinkLost`: probe the edge's `/healthz` to tell a dead edge from
    /// a cut link.
    ProbeHealth,
    /// Liveness went to `Failed`: end its ad-hoc sessions; its rooms move on next join.
    Failed(FailReason),
}

impl EdgeStatus {
    /// A freshly registered edge. `suspended` comes from the database.
    pub fn registered(now: Instant, suspended: bool, draining: bool) -> EdgeStatus {
        EdgeStatus {
            liveness: Liveness::Connected,
            suspended,
            draining,
            last_report_at: now,
        }
    }

    /// The derived state.
    pub fn state(&self) -> EdgeState {
        match self.liveness {
            Liveness::Failed { .. } => EdgeState::Failed,
            Liveness::LinkLost { .. } => EdgeState::LinkLost,
            Liveness::Connected if self.draining => EdgeState::Draining,
            Liveness::Connected if self.suspended => EdgeState::Suspended,
            Liveness::Connected => EdgeState::Active,
        }
    }

    /// May new sessions go here in normal operation?
    pub fn takes_new_sessions(&self) -> bool {
        self.state() == EdgeState::Active
    }

    /// May joins of sessions it already hosts go here? (Suspended, draining and
    /// link-lost edges keep serving their sessions; failed ones do not.)
    pub fn serves_existing_sessions(&self) -> bool {
        !matches!(self.liveness, Liveness::Failed { .. })
    }

    /// The edge registered again (a new link): connected, reports start over.
    pub fn on_register(&mut self, now: Instant, draining: bool) -> Effect {
        self.liveness = Liveness::Connected;
        self.draining = draining;
        self.last_report_at = now;
        Effect::None
    }

    /// A load report arrived over the link.
    pub fn on_report(&mut self, now: Instant) -> Effect {
        self.last_report_at = now;
        // Reports only come over a live link: an edge that was thought lost (reports
        // stalled, then a probe timed out) is back. A drained edge stays gone.
        match self.liveness {
            Liveness::LinkLost { .. }
            | Liveness::Failed {
                why: FailReason::GraceExpired | FailReason::HealthProbeFailed,
            } => self.liveness = Liveness::Connected,
            _ => {}
        }
        Effect::None
    }

    /// The websocket closed (or errored).
    pub fn on_link_closed(&mut self, now: Instant) -> Effect {
        match self.liveness {
            Liveness::Connected => {
                self.liveness = Liveness::LinkLost { since: now };
                Effect::ProbeHealth
            }
            _ => Effect::None,
        }
    }

    /// The edge finished draining and closed its link on purpose.
    pub fn on_drained(&mut self) -> Effect {
        self.liveness = Liveness::Failed {
            why: FailReason::Drained,
        };
        Effect::Failed(FailReason::Drained)
    }

    /// Time passes: missed reports make the link lost; a lost link past the grace
    /// period makes the edge failed. The grace period counts from when the loss was
    /// noticed, so a silent edge fails after `report_interval × missed_reports` + grace.
    pub fn on_tick(&mut self, now: Instant, timing: &EdgeTiming) -> Effect {
        match self.liveness {
            Liveness::Connected => {
                let silence = timing.report_interval.saturating_mul(timing.missed_reports);
                if now.saturating_duration_since(self.last_report_at) > silence {
                    self.liveness = Liveness::LinkLost { since: now };
                    return Effect::ProbeHealth;
                }
                Effect::None
            }
            Liveness::LinkLost { since } => {
                if now.saturating_duration_since(since) >= timing.grace_period {
                    self.liveness = Liveness::Failed {
                        why: FailReason::GraceExpired,
                    };
                    return Effect::Failed(FailReason::GraceExpired);
                }
                Effect::None
            }
            Liveness::Failed { .. } => Effect::None,
        }
    }

    /// Result of probing `/healthz` while the link is lost. An answering edge stays
    /// `LinkLost` (it serves its clients; only the link is cut); a silent one fails now.
    pub fn on_probe(&mut self, healthy: bool) -> Effect {
        match (self.liveness, healthy) {
            // A draining edge whose link closed and whose process is gone finished its
            // drain and exited on purpose (an upgrade): retired, not failed. One whose
            // link was cut while its process still answers stays link-lost.
            (Liveness::LinkLost { .. }, false) if self.draining => self.on_drained(),
            (Liveness::LinkLost { .. }, false) => {
                self.liveness = Liveness::Failed {
                    why: FailReason::HealthProbeFailed,
                };
                Effect::Failed(FailReason::HealthProbeFailed)
            }
            _ => Effect::None,
        }
    }

    pub fn on_suspend(&mut self) -> Effect {
        self.suspended = true;
        Effect::None
    }

    pub fn on_resume(&mut self) -> Effect {
        self.suspended = false;
        Effect::None
    }

    pub fn on_draining(&mut self) -> Effect {
        self.draining = true;
        Effect::None
    }

    /// Another locator, which holds the edge's link, published the edge's state, written
    /// `age` ago (several locators on one database). The published liveness replaces
    /// this one; `last_report_at` becomes the time of writing, so a holder that stops
    /// publishing (it died with the edge) makes the edge link-lost here after the usual
    /// silence, as a silent link would.
    pub fn on_published(&mut self, published: &PublishedStatus, now: Instant) -> Effect {
        let written = now.checked_sub(published.age).unwrap_or(now);
        self.liveness = match (published.liveness, self.liveness) {
            (Liveness::LinkLost { .. }, Liveness::LinkLost { since }) => {
                Liveness::LinkLost { since }
            }
            (Liveness::LinkLost { .. }, _) => Liveness::LinkLost { since: written },
            (other, _) => other,
        };
        self.suspended = published.suspended;
        self.draining = published.draining;
        self.last_report_at = written;
        Effect::None
    }

    /// How long since the last report.
    pub fn report_age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_report_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn timing() -> EdgeTiming {
        EdgeTiming {
            report_interval: Duration::from_secs(2),
            missed_reports: 3,
            grace_period: Duration::from_secs(30),
            ..EdgeTiming::default()
        }
    }

    /// A mirror of an edge held by another locator follows what is published, and goes
    /// link-lost by itself (then failed after the grace period) when publishing stops.
    #[tokio::test(start_paused = true)]
    async fn a_published_state_is_mirrored_and_its_silence_noticed() {
        let t = timing();
        let start = Instant::now();
        let mut status = EdgeStatus::registered(start, false, false);
        let published = |liveness, age| PublishedStatus {
            liveness,
            suspended: true,
            draining: false,
            age: Duration::from_millis(age),
        };
        status.on_published(&published(Liveness::Connected, 0), Instant::now());
        assert_eq!(status.state(), EdgeState::Suspended);
        // Written 5 s ago by a holder that has said nothing since: lost after 6 s of
        // silence, i.e. 1 s from now.
        status.on_published(&published(Liveness::Connected, 5_000), Instant::now());
        assert_eq!(status.on_tick(Instant::now(), &t), Effect::None);
        advance(Duration::from_millis(1_001)).await;
        assert_eq!(status.on_tick(Instant::now(), &t), Effect::ProbeHealth);
        // The holder says the link is lost: the loss keeps its first time.
        let lost_at = Instant::now();
        advance(Duration::from_secs(10)).await;
        status.on_published(
            &published(Liveness::LinkLost { since: start }, 0),
            Instant::now(),
        );
        assert_eq!(status.liveness, Liveness::LinkLost { since: lost_at });
        advance(Duration::from_secs(20)).await;
        assert_eq!(
            status.on_tick(Instant::now(), &t),
            Effect::Failed(FailReason::GraceExpired)
        );
        // The edge reconnected to the holder, which publishes it connected again.
        status.on_published(&published(Liveness::Connected, 0), Instant::now());
        assert_eq!(status.state(), EdgeState::Suspended);
        assert!(status.serves_existing_sessions());
        for why in FailReason::ALL {
            assert_eq!(FailReason::from_name(why.as_str()), Some(why));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn registered_edges_are_active_and_admin_flags_derive_the_state() {
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        assert_eq!(s.state(), EdgeState::Active);
        assert!(s.takes_new_sessions());
        s.on_suspend();
        assert_eq!(s.state(), EdgeState::Suspended);
        assert!(!s.takes_new_sessions());
        assert!(s.serves_existing_sessions());
        s.on_draining();
        assert_eq!(
            s.state(),
            EdgeState::Draining,
            "draining shows over suspended"
        );
        s.on_resume();
        assert_eq!(s.state(), EdgeState::Draining);
        let mut s = EdgeStatus::registered(Instant::now(), true, false);
        assert_eq!(
            s.state(),
            EdgeState::Suspended,
            "suspension survives re-registration"
        );
        s.on_resume();
        assert_eq!(s.state(), EdgeState::Active);
    }

    #[tokio::test(start_paused = true)]
    async fn missed_reports_lose_the_link_then_the_grace_period_fails_it() {
        let t = timing();
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        advance(Duration::from_secs(6)).await;
        assert_eq!(
            s.on_tick(Instant::now(), &t),
            Effect::None,
            "exactly 3 intervals: not yet"
        );
        advance(Duration::from_millis(1)).await;
        assert_eq!(s.on_tick(Instant::now(), &t), Effect::ProbeHealth);
        assert_eq!(s.state(), EdgeState::LinkLost);
        assert!(
            s.serves_existing_sessions(),
            "joins still route to a link-lost edge"
        );
        assert!(!s.takes_new_sessions());
        advance(Duration::from_secs(29)).await;
        assert_eq!(s.on_tick(Instant::now(), &t), Effect::None);
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            s.on_tick(Instant::now(), &t),
            Effect::Failed(FailReason::GraceExpired)
        );
        assert_eq!(s.state(), EdgeState::Failed);
        assert!(!s.serves_existing_sessions());
        assert_eq!(
            s.on_tick(Instant::now(), &t),
            Effect::None,
            "failed stays failed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reports_keep_the_link_alive_and_bring_it_back() {
        let t = timing();
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        for _ in 0..10 {
            advance(Duration::from_secs(2)).await;
            s.on_report(Instant::now());
            assert_eq!(s.on_tick(Instant::now(), &t), Effect::None);
        }
        s.on_link_closed(Instant::now());
        assert_eq!(s.state(), EdgeState::LinkLost);
        s.on_report(Instant::now());
        assert_eq!(s.state(), EdgeState::Active);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_socket_loses_the_link_and_asks_for_a_probe() {
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        assert_eq!(s.on_link_closed(Instant::now()), Effect::ProbeHealth);
        assert_eq!(s.on_link_closed(Instant::now()), Effect::None, "only once");
        assert_eq!(
            s.on_probe(true),
            Effect::None,
            "alive edge: a cut link, keep grace"
        );
        assert_eq!(s.state(), EdgeState::LinkLost);
        assert_eq!(
            s.on_probe(false),
            Effect::Failed(FailReason::HealthProbeFailed)
        );
        assert_eq!(s.state(), EdgeState::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_only_matter_while_the_link_is_lost() {
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        assert_eq!(s.on_probe(false), Effect::None);
        assert_eq!(s.state(), EdgeState::Active);
    }

    #[tokio::test(start_paused = true)]
    async fn re_registration_revives_failed_and_link_lost_edges() {
        let t = timing();
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        s.on_link_closed(Instant::now());
        advance(Duration::from_secs(31)).await;
        s.on_tick(Instant::now(), &t);
        assert_eq!(s.state(), EdgeState::Failed);
        s.on_register(Instant::now(), false);
        assert_eq!(s.state(), EdgeState::Active);
        s.on_register(Instant::now(), true);
        assert_eq!(s.state(), EdgeState::Draining);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_edge_that_reports_again_is_back() {
        let t = timing();
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        advance(Duration::from_secs(7)).await;
        assert_eq!(s.on_tick(Instant::now(), &t), Effect::ProbeHealth);
        assert_eq!(
            s.on_probe(false),
            Effect::Failed(FailReason::HealthProbeFailed)
        );
        s.on_report(Instant::now());
        assert_eq!(s.state(), EdgeState::Active);
        let mut drained = EdgeStatus::registered(Instant::now(), false, true);
        drained.on_drained();
        drained.on_report(Instant::now());
        assert_eq!(
            drained.state(),
            EdgeState::Failed,
            "a drained edge stays gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_edge_that_exits_is_drained_and_one_still_answering_is_link_lost() {
        let mut gone = EdgeStatus::registered(Instant::now(), false, false);
        assert_eq!(gone.on_draining(), Effect::None);
        assert_eq!(gone.on_link_closed(Instant::now()), Effect::ProbeHealth);
        assert_eq!(gone.on_probe(false), Effect::Failed(FailReason::Drained));
        assert_eq!(
            gone.liveness,
            Liveness::Failed {
                why: FailReason::Drained
            }
        );

        let mut cut = EdgeStatus::registered(Instant::now(), false, true);
        assert_eq!(cut.on_link_closed(Instant::now()), Effect::ProbeHealth);
        assert_eq!(cut.on_probe(true), Effect::None);
        assert_eq!(cut.state(), EdgeState::LinkLost);

        let mut crashed = EdgeStatus::registered(Instant::now(), false, false);
        crashed.on_link_closed(Instant::now());
        assert_eq!(
            crashed.on_probe(false),
            Effect::Failed(FailReason::HealthProbeFailed),
            "an edge that was not draining failed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_edge_is_failed_for_routing() {
        let mut s = EdgeStatus::registered(Instant::now(), false, true);
        assert_eq!(s.on_drained(), Effect::Failed(FailReason::Drained));
        assert_eq!(s.state(), EdgeState::Failed);
    }
}
