//! The state of one edge as a small pure state machine: events in, status out, time
//! passed in explicitly (`tokio::time::Instant`, so tests pause and advance it).
//!
//! Two independent axes:
//! - **liveness**, driven by the link: `Connected` → (heartbeats late) → `Suspect` →
//!   (silence for `report_interval × missed_reports`, or socket closed) → `LinkLost` →
//!   (grace period over, or the edge's own `/healthz` does not answer) → `Failed`. A
//!   `/healthz` connection refused or reset fails a suspect edge at once (the process is
//!   dead); one that connects but does not answer (a stalled process) leaves it suspect.
//!   Any frame heard on the link, or a new registration, brings each of them back to
//!   `Connected` (a drained edge stays gone).
//!
//!   `Suspect` is the fast, reversible step: no new sessions, but its sessions, rooms and
//!   joins are untouched, so a stall of a second costs new sessions elsewhere for a
//!   moment and nothing else. Its timeout adapts to the heartbeats' observed jitter
//!   ([`Heartbeats`]) between `suspect_after` and `suspect_after_max`.
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
    /// Heartbeats are late: no new sessions; sessions, rooms and joins untouched.
    Suspect {
        since: Instant,
    },
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeState {
    Active,
    Suspended,
    Draining,
    Suspect,
    LinkLost,
    Failed,
}

impl EdgeState {
    pub const ALL: [EdgeState; 6] = [
        EdgeState::Active,
        EdgeState::Suspended,
        EdgeState::Draining,
        EdgeState::Suspect,
        EdgeState::LinkLost,
        EdgeState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EdgeState::Active => "active",
            EdgeState::Suspended => "suspended",
            EdgeState::Draining => "draining",
            EdgeState::Suspect => "suspect",
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
    /// When the last frame of any kind (report, heartbeat…) arrived.
    pub last_heard_at: Instant,
    /// The heartbeats of the current link (none for a mirror).
    pub heartbeats: Heartbeats,
}

/// Inter-arrival statistics of a link's heartbeats, kept as TCP keeps its round-trip
/// estimate (RFC 6298): a smoothed mean gap (gain 1/8) and a smoothed mean deviation
/// (gain 1/4), in microseconds. The suspect timeout is `mean + 4 × deviation`, clamped
/// to `[suspect_after, suspect_after_max]`: regular heartbeats get the floor, a busy or
/// jittery edge more time. A link whose heartbeats come too seldom to judge by (an edge
/// pinging only once a report interval) is judged by its reports alone.
///
/// A gap longer than `suspect_after_max` is an outage (a hang, a cut link), not jitter:
/// it restarts the rhythm without being measured. Measured, one 3 s hang would lift the
/// mean gap past half the floor, and the next hang soon after would be judged by the
/// long silence alone (seen in a load test: a hang avoided after 5.7 s instead of ~1 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Heartbeats {
    last: Option<Instant>,
    /// Gaps measured so far.
    pub count: u32,
    pub mean_gap_us: u64,
    pub deviation_us: u64,
}

/// Gaps measured before the heartbeats are trusted for suspicion.
const HEARTBEATS_TO_JUDGE: u32 = 3;

impl Heartbeats {
    /// One heartbeat arrived at `now`; a gap longer than `outage` is not measured.
    pub fn on_beat(&mut self, now: Instant, outage: Duration) {
        if let Some(last) = self.last
            && now.saturating_duration_since(last) <= outage
        {
            let gap = now.saturating_duration_since(last).as_micros() as i64;
            if self.count == 0 {
                self.mean_gap_us = gap as u64;
                self.deviation_us = gap as u64 / 2;
            } else {
                let mean = self.mean_gap_us as i64;
                let dev = self.deviation_us as i64;
                self.deviation_us = (dev + ((gap - mean).abs() - dev) / 4).max(0) as u64;
                self.mean_gap_us = (mean + (gap - mean) / 8).max(0) as u64;
            }
            self.count = self.count.saturating_add(1);
        }
        self.last = Some(now);
    }

    /// The silence after which the edge is suspect, or `None` when the heartbeats cannot
    /// judge it (too few yet, or slower than half the floor).
    pub fn suspect_timeout(&self, timing: &EdgeTiming) -> Option<Duration> {
        let mean = Duration::from_micros(self.mean_gap_us);
        if self.count < HEARTBEATS_TO_JUDGE || mean > timing.suspect_after / 2 {
            return None;
        }
        let adaptive = Duration::from_micros(self.mean_gap_us + 4 * self.deviation_us);
        Some(adaptive.clamp(timing.suspect_after, timing.suspect_after_max))
    }
}

/// What a `/healthz` probe of the edge found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Probe {
    /// It answered 200: the process serves (only the link is in trouble).
    Healthy,
    /// A connection was made but no answer came in time (or not a 200): a stalled or
    /// overloaded process, or a slow network. Not proof of death.
    Unresponsive,
    /// Connection refused or reset, or no route: nothing serves there.
    Dead,
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
            last_heard_at: now,
            heartbeats: Heartbeats::default(),
        }
    }

    /// The derived state.
    pub fn state(&self) -> EdgeState {
        match self.liveness {
            Liveness::Failed { .. } => EdgeState::Failed,
            Liveness::LinkLost { .. } => EdgeState::LinkLost,
            Liveness::Suspect { .. } => EdgeState::Suspect,
            Liveness::Connected if self.draining => EdgeState::Draining,
            Liveness::Connected if self.suspended => EdgeState::Suspended,
            Liveness::Connected => EdgeState::Active,
        }
    }

    /// May new sessions go here in normal operation?
    pub fn takes_new_sessions(&self) -> bool {
        self.state() == EdgeState::Active
    }

    /// May joins of sessions it already hosts go here? (Suspended, draining, suspect and
    /// link-lost edges keep serving their sessions; failed ones do not.)
    pub fn serves_existing_sessions(&self) -> bool {
        !matches!(self.liveness, Liveness::Failed { .. })
    }

    /// The edge registered again (a new link): connected, reports start over.
    pub fn on_register(&mut self, now: Instant, draining: bool) -> Effect {
        self.liveness = Liveness::Connected;
        self.draining = draining;
        self.last_report_at = now;
        self.last_heard_at = now;
        self.heartbeats = Heartbeats::default();
        Effect::None
    }

    /// A load report arrived over the link.
    pub fn on_report(&mut self, now: Instant) -> Effect {
        self.last_report_at = now;
        self.on_heard(now)
    }

    /// A heartbeat (websocket ping of the edge) arrived over the link.
    pub fn on_heartbeat(&mut self, now: Instant, timing: &EdgeTiming) -> Effect {
        self.heartbeats.on_beat(now, timing.suspect_after_max);
        self.on_heard(now)
    }

    /// A frame of any kind arrived over the link. Frames only come over a live link: an
    /// edge that was suspect, or thought lost (silence, then a probe timed out), is back.
    /// A drained edge stays gone.
    pub fn on_heard(&mut self, now: Instant) -> Effect {
        self.last_heard_at = now;
        match self.liveness {
            Liveness::Suspect { .. }
            | Liveness::LinkLost { .. }
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
            Liveness::Connected | Liveness::Suspect { .. } => {
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

    /// Time passes: late heartbeats make the edge suspect (and ask for a probe); silence
    /// for `report_interval × missed_reports` makes the link lost; a lost link past the
    /// grace period makes the edge failed. The grace period counts from when the loss was
    /// noticed, so a silent edge fails after `report_interval × missed_reports` + grace
    /// unless a probe finds it dead or stalled first.
    pub fn on_tick(&mut self, now: Instant, timing: &EdgeTiming) -> Effect {
        let silence = now.saturating_duration_since(self.last_heard_at);
        let lost_after = timing.report_interval.saturating_mul(timing.missed_reports);
        match self.liveness {
            Liveness::Connected | Liveness::Suspect { .. } if silence > lost_after => {
                self.liveness = Liveness::LinkLost { since: now };
                Effect::ProbeHealth
            }
            Liveness::Connected => match self.heartbeats.suspect_timeout(timing) {
                Some(timeout) if silence > timeout => {
                    self.liveness = Liveness::Suspect { since: now };
                    Effect::ProbeHealth
                }
                _ => Effect::None,
            },
            Liveness::Suspect { .. } => Effect::None,
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

    /// Result of probing `/healthz` of a suspect or link-lost edge. A dead one (refused,
    /// reset) fails now. A suspect one that answers, or connects but does not answer (a
    /// stalled process keeps accepting), stays suspect: only the longer silence makes it
    /// link-lost. A link-lost one that does not answer fails; one that answers stays
    /// `LinkLost` (it serves its clients; only the link is cut) for the grace period.
    pub fn on_probe(&mut self, probe: Probe) -> Effect {
        let fails = matches!(
            (self.liveness, probe),
            (Liveness::Suspect { .. }, Probe::Dead)
                | (Liveness::LinkLost { .. }, Probe::Dead | Probe::Unresponsive)
        );
        if !fails {
            return Effect::None;
        }
        // A draining edge whose process is gone finished its drain and exited on purpose
        // (an upgrade): retired, not failed.
        if self.draining {
            return self.on_drained();
        }
        self.liveness = Liveness::Failed {
            why: FailReason::HealthProbeFailed,
        };
        Effect::Failed(FailReason::HealthProbeFailed)
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
            (Liveness::Suspect { .. }, Liveness::Suspect { since }) => Liveness::Suspect { since },
            (Liveness::Suspect { .. }, _) => Liveness::Suspect { since: written },
            (other, _) => other,
        };
        self.suspended = published.suspended;
        self.draining = published.draining;
        self.last_report_at = written;
        self.last_heard_at = written;
        // A mirror has no heartbeats of its own: its holder judges them and publishes.
        self.heartbeats = Heartbeats::default();
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
            heartbeat_interval: Duration::from_millis(250),
            suspect_after: Duration::from_secs(1),
            suspect_after_max: Duration::from_millis(1_500),
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

    /// Registers an edge and lets `n` heartbeats arrive every `gap`.
    async fn beating(n: u32, gap: Duration) -> EdgeStatus {
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        for _ in 0..n {
            advance(gap).await;
            s.on_heartbeat(Instant::now(), &timing());
        }
        s
    }

    /// Ticks every 100 ms (as the locator does) until `within`; the silence at which the
    /// effect `want` came, if it did.
    async fn tick_until(
        s: &mut EdgeStatus,
        t: &EdgeTiming,
        within: Duration,
        want: Effect,
    ) -> Option<Duration> {
        let from = Instant::now();
        while Instant::now() - from <= within {
            advance(Duration::from_millis(100)).await;
            if s.on_tick(Instant::now(), t) == want {
                return Some(Instant::now() - s.last_heard_at);
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn late_heartbeats_make_an_edge_suspect_fast_and_one_heartbeat_clears_it() {
        let t = timing();
        let mut s = beating(12, Duration::from_millis(250)).await;
        assert_eq!(
            s.heartbeats.suspect_timeout(&t),
            Some(t.suspect_after),
            "regular heartbeats get the floor"
        );
        let at = tick_until(&mut s, &t, Duration::from_secs(3), Effect::ProbeHealth).await;
        let at = at.expect("suspect");
        assert!(at > t.suspect_after && at <= t.suspect_after + Duration::from_millis(100));
        assert_eq!(s.state(), EdgeState::Suspect);
        assert!(!s.takes_new_sessions(), "no new sessions while suspect");
        assert!(
            s.serves_existing_sessions(),
            "joins of its sessions still go there"
        );
        assert_eq!(s.on_tick(Instant::now(), &t), Effect::None, "suspect once");
        // The stall ends: the next heartbeat makes it active again, nothing failed.
        s.on_heartbeat(Instant::now(), &t);
        assert_eq!(s.state(), EdgeState::Active);
    }

    /// A hang's gap is an outage, not jitter: after a 3 s hang the next hang is
    /// suspected as fast as the first (measured, the gap would lift the mean past half the
    /// floor and leave the edge to the long silence).
    #[tokio::test(start_paused = true)]
    async fn a_hangs_gap_is_not_jitter_and_the_next_hang_is_suspected_as_fast() {
        let t = timing();
        let mut s = beating(12, Duration::from_millis(250)).await;
        let before = s.heartbeats;
        tick_until(&mut s, &t, Duration::from_secs(2), Effect::ProbeHealth)
            .await
            .expect("suspect");
        advance(Duration::from_secs(3) - (Instant::now() - s.last_heard_at)).await;
        s.on_heartbeat(Instant::now(), &t);
        assert_eq!(s.state(), EdgeState::Active, "back after the hang");
        assert_eq!(
            (s.heartbeats.mean_gap_us, s.heartbeats.deviation_us),
            (before.mean_gap_us, before.deviation_us),
            "the hang's gap was not measured"
        );
        // Two beats, then it hangs again at once.
        for _ in 0..2 {
            advance(Duration::from_millis(250)).await;
            s.on_heartbeat(Instant::now(), &t);
        }
        assert_eq!(s.heartbeats.suspect_timeout(&t), Some(t.suspect_after));
        let at = tick_until(&mut s, &t, Duration::from_secs(3), Effect::ProbeHealth).await;
        let at = at.expect("the second hang is suspected too");
        assert!(at <= t.suspect_after + Duration::from_millis(100), "{at:?}");
    }

    /// A healed partition delivers the held heartbeats at once: the cut's gap is not
    /// measured, the burst after it keeps the timeout within its bounds, and the next cut
    /// is suspected within the ceiling.
    #[tokio::test(start_paused = true)]
    async fn a_healed_cuts_held_heartbeats_keep_the_detector_judging() {
        let t = timing();
        let mut s = beating(12, Duration::from_millis(250)).await;
        for _cut in 0..3 {
            tick_until(&mut s, &t, Duration::from_secs(2), Effect::ProbeHealth)
                .await
                .expect("suspect");
            advance(Duration::from_millis(2_200) - (Instant::now() - s.last_heard_at)).await;
            // Nine heartbeats held by the cut arrive together.
            for _ in 0..9 {
                advance(Duration::from_millis(1)).await;
                s.on_heartbeat(Instant::now(), &t);
            }
            assert_eq!(s.state(), EdgeState::Active);
            let timeout = s.heartbeats.suspect_timeout(&t).expect("still judged");
            assert!(
                timeout >= t.suspect_after && timeout <= t.suspect_after_max,
                "{timeout:?}"
            );
            // Regular again until the next cut.
            for _ in 0..8 {
                advance(Duration::from_millis(250)).await;
                s.on_heartbeat(Instant::now(), &t);
            }
        }
        let at = tick_until(&mut s, &t, Duration::from_secs(3), Effect::ProbeHealth).await;
        assert!(
            at.expect("suspect") <= t.suspect_after_max + Duration::from_millis(100),
            "{at:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jittery_heartbeats_get_more_time_up_to_the_ceiling() {
        let t = timing();
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        for i in 0..40 {
            // A busy edge: its timer fires late every other time.
            advance(Duration::from_millis(if i % 2 == 0 { 150 } else { 650 })).await;
            s.on_heartbeat(Instant::now(), &t);
        }
        let timeout = s.heartbeats.suspect_timeout(&t).expect("judged");
        assert!(
            timeout > t.suspect_after && timeout <= t.suspect_after_max,
            "{timeout:?}"
        );
        let at = tick_until(&mut s, &t, Duration::from_secs(3), Effect::ProbeHealth).await;
        assert!(at.expect("suspect") > timeout);
        // Wild gaps never push it past the ceiling.
        let mut wild = EdgeStatus::registered(Instant::now(), false, false);
        for i in 0..40 {
            advance(Duration::from_millis(if i % 2 == 0 { 10 } else { 900 })).await;
            wild.on_heartbeat(Instant::now(), &t);
        }
        assert_eq!(
            wild.heartbeats.suspect_timeout(&t),
            Some(t.suspect_after_max)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_too_seldom_or_too_few_judge_nothing() {
        let t = timing();
        // An edge pinging once a report interval: judged by its reports, as before.
        let mut slow = beating(5, Duration::from_secs(2)).await;
        assert_eq!(slow.heartbeats.suspect_timeout(&t), None);
        assert_eq!(
            tick_until(
                &mut slow,
                &t,
                Duration::from_millis(5_900),
                Effect::ProbeHealth
            )
            .await,
            None
        );
        assert_eq!(slow.state(), EdgeState::Active);
        // Two heartbeats are not yet a rhythm.
        let few = beating(2, Duration::from_millis(250)).await;
        assert_eq!(few.heartbeats.suspect_timeout(&t), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspect_edge_found_dead_fails_at_once() {
        let t = timing();
        let mut s = beating(8, Duration::from_millis(250)).await;
        tick_until(&mut s, &t, Duration::from_secs(2), Effect::ProbeHealth)
            .await
            .expect("suspect");
        assert_eq!(
            s.on_probe(Probe::Dead),
            Effect::Failed(FailReason::HealthProbeFailed)
        );
        assert_eq!(s.state(), EdgeState::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_edge_stays_suspect_until_the_long_silence_then_fails() {
        let t = timing();
        let mut s = beating(8, Duration::from_millis(250)).await;
        tick_until(&mut s, &t, Duration::from_secs(2), Effect::ProbeHealth)
            .await
            .expect("suspect");
        // A stopped process: its port accepts, nothing answers. Not proof of death.
        assert_eq!(s.on_probe(Probe::Unresponsive), Effect::None);
        assert_eq!(s.on_probe(Probe::Healthy), Effect::None);
        assert_eq!(s.state(), EdgeState::Suspect);
        // Silence for report_interval × missed_reports: the link is lost, probe again.
        let at = tick_until(&mut s, &t, Duration::from_secs(6), Effect::ProbeHealth).await;
        assert!(at.expect("link lost") > Duration::from_secs(6));
        assert_eq!(s.state(), EdgeState::LinkLost);
        assert_eq!(
            s.on_probe(Probe::Unresponsive),
            Effect::Failed(FailReason::HealthProbeFailed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_link_to_a_live_edge_is_suspect_then_link_lost_for_the_grace_period() {
        let t = timing();
        let mut s = beating(8, Duration::from_millis(250)).await;
        tick_until(&mut s, &t, Duration::from_secs(2), Effect::ProbeHealth)
            .await
            .expect("suspect");
        assert_eq!(s.on_probe(Probe::Healthy), Effect::None);
        tick_until(&mut s, &t, Duration::from_secs(6), Effect::ProbeHealth)
            .await
            .expect("link lost");
        assert_eq!(s.on_probe(Probe::Healthy), Effect::None);
        assert_eq!(s.state(), EdgeState::LinkLost);
        assert!(s.serves_existing_sessions());
        // The link heals before the grace period ends: everything it held comes through.
        advance(Duration::from_secs(10)).await;
        assert_eq!(s.on_tick(Instant::now(), &t), Effect::None);
        s.on_heartbeat(Instant::now(), &t);
        assert_eq!(s.state(), EdgeState::Active);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_socket_of_a_suspect_edge_loses_the_link() {
        let t = timing();
        let mut s = beating(8, Duration::from_millis(250)).await;
        tick_until(&mut s, &t, Duration::from_secs(2), Effect::ProbeHealth)
            .await
            .expect("suspect");
        assert_eq!(s.on_link_closed(Instant::now()), Effect::ProbeHealth);
        assert_eq!(s.state(), EdgeState::LinkLost);
        // A new link starts its heartbeats over: nothing to judge until they come.
        s.on_register(Instant::now(), false);
        assert_eq!(s.heartbeats.suspect_timeout(&t), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_published_suspicion_is_mirrored_with_its_first_time() {
        let t = timing();
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        let suspect = PublishedStatus {
            liveness: Liveness::Suspect {
                since: Instant::now(),
            },
            suspended: false,
            draining: false,
            age: Duration::ZERO,
        };
        s.on_published(&suspect, Instant::now());
        let since = Instant::now();
        assert_eq!(s.state(), EdgeState::Suspect);
        advance(Duration::from_millis(500)).await;
        s.on_published(&suspect, Instant::now());
        assert_eq!(s.liveness, Liveness::Suspect { since });
        // A mirror never judges heartbeats itself, only its holder's silence.
        assert_eq!(s.heartbeats.suspect_timeout(&t), None);
        assert_eq!(s.on_tick(Instant::now(), &t), Effect::None);
        let connected = PublishedStatus {
            liveness: Liveness::Connected,
            ..suspect
        };
        s.on_published(&connected, Instant::now());
        assert_eq!(s.state(), EdgeState::Active);
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
            s.on_probe(Probe::Healthy),
            Effect::None,
            "alive edge: a cut link, keep grace"
        );
        assert_eq!(s.state(), EdgeState::LinkLost);
        assert_eq!(
            s.on_probe(Probe::Dead),
            Effect::Failed(FailReason::HealthProbeFailed)
        );
        assert_eq!(s.state(), EdgeState::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_only_matter_while_the_link_is_lost() {
        let mut s = EdgeStatus::registered(Instant::now(), false, false);
        assert_eq!(s.on_probe(Probe::Dead), Effect::None);
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
            s.on_probe(Probe::Dead),
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
        assert_eq!(
            gone.on_probe(Probe::Dead),
            Effect::Failed(FailReason::Drained)
        );
        assert_eq!(
            gone.liveness,
            Liveness::Failed {
                why: FailReason::Drained
            }
        );

        let mut cut = EdgeStatus::registered(Instant::now(), false, true);
        assert_eq!(cut.on_link_closed(Instant::now()), Effect::ProbeHealth);
        assert_eq!(cut.on_probe(Probe::Healthy), Effect::None);
        assert_eq!(cut.state(), EdgeState::LinkLost);

        let mut crashed = EdgeStatus::registered(Instant::now(), false, false);
        crashed.on_link_closed(Instant::now());
        assert_eq!(
            crashed.on_probe(Probe::Dead),
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
