//! Checks of every pool's TURN and STUN servers, and what they decide.
//!
//! Each server of each pool is checked on its own schedule (`turn.check_interval`, moved
//! by up to ±10% at random so that servers and locators do not fall into step), each check
//! bounded by `turn.check_timeout`: a STUN Binding for `stun:` URLs, an authenticated TURN
//! Allocate followed by a Refresh with lifetime 0 for `turn:`/`turns:` URLs ([`probe`]).
//!
//! The decision is pure ([`ServerHealth::record`]): a server is `unchecked` (handed out)
//! until its first check, which makes it `up` or `down`; an `up` server is `down` after
//! `turn.down_after` failed checks in a row, a `down` one `up` again after `turn.up_after`
//! successes in a row. After every result the pools' choice is recomputed
//! ([`super::TurnPools::apply_health`]), so answers follow within one check.
//!
//! The loop ([`run_checks`]) talks to the rest of the program through [`CheckerEnv`]: the
//! locator's implementation (`AppChecker`, in [`crate::server`]) probes for real, exports metrics and writes an
//! audit entry on a state change; the tests drive it with scripted results under paused
//! time. Several locators each check on their own (nothing is shared): they agree within a
//! check interval because they look at the same servers.

pub mod probe;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use locus_geo::TurnChecks;
use rand::Rng;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::CheckTarget;

/// A server of a region's pool (the same URL in two pools is two servers: each is
/// checked with its own pool's credential).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServerKey {
    pub region: String,
    pub url: String,
}

impl ServerKey {
    pub fn new(region: &str, url: &str) -> ServerKey {
        ServerKey {
            region: region.to_string(),
            url: url.to_string(),
        }
    }
}

/// Whether a server is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ServerState {
    /// Not checked yet: handed out (a new locator or a new server is not held back).
    #[default]
    Unchecked,
    Up,
    Down,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Unchecked => "unchecked",
            ServerState::Up => "up",
            ServerState::Down => "down",
        }
    }

    /// True when answers may list the server.
    pub fn hands_out(self) -> bool {
        self != ServerState::Down
    }
}

/// What went wrong, by the operator problem it points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// No answer within `turn.check_timeout` (server down, packets dropped).
    Timeout,
    /// Name not resolved, connection refused, port unreachable.
    Unreachable,
    /// 401/441: the pool's secret is not one the server accepts (or the clocks differ by
    /// more than the credential lifetime).
    Auth,
    /// 403: the server forbids it (e.g. a denied peer or client address).
    Forbidden,
    /// 486/508: allocation quota or capacity reached.
    Capacity,
    /// Another STUN error code.
    ServerError,
    /// An answer that is not the STUN the check expects.
    Protocol,
    /// The TLS handshake of a `turns:` server failed.
    Tls,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Auth => "auth",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Capacity => "capacity",
            ErrorKind::ServerError => "server-error",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Tls => "tls",
        }
    }
}

/// A failed check: its kind and, for people, what happened and what to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CheckError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CheckError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CheckError {
        CheckError {
            kind,
            message: message.into(),
        }
    }

    pub fn timeout(after: Duration) -> CheckError {
        CheckError::new(
            ErrorKind::Timeout,
            format!(
                "timeout: no answer within {} ms (turn.check_timeout)",
                after.as_millis()
            ),
        )
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The result of one check: the round-trip time of its first exchange, or the error.
pub type CheckResult = Result<Duration, CheckError>;

/// One server's record: its state and its last check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerHealth {
    pub state: ServerState,
    /// Unix time (ms) since which it is in `state`.
    pub since_ms: Option<i64>,
    pub fails_in_row: u32,
    pub oks_in_row: u32,
    pub checks: u64,
    pub last_check_ms: Option<i64>,
    /// Round-trip time of the last successful check.
    pub rtt: Option<Duration>,
    /// The last failure, kept after later successes (with its time) so people can see
    /// what a flapping server does.
    pub last_error: Option<CheckError>,
    pub last_error_ms: Option<i64>,
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: ServerState,
    pub to: ServerState,
}

impl ServerHealth {
    /// Takes one check's result at `at_ms` (Unix ms); returns the change of state, if any.
    pub fn record(
        &mut self,
        result: &CheckResult,
        at_ms: i64,
        policy: &TurnChecks,
    ) -> Option<Transition> {
        use ServerState::*;
        self.checks += 1;
        self.last_check_ms = Some(at_ms);
        let from = self.state;
        let to = match result {
            Ok(rtt) => {
                self.rtt = Some(*rtt);
                self.oks_in_row = self.oks_in_row.saturating_add(1);
                self.fails_in_row = 0;
                match from {
                    Unchecked | Up => Up,
                    Down if self.oks_in_row >= policy.up_after => Up,
                    Down => Down,
                }
            }
            Err(error) => {
                self.last_error = Some(error.clone());
                self.last_error_ms = Some(at_ms);
                self.fails_in_row = self.fails_in_row.saturating_add(1);
                self.oks_in_row = 0;
                match from {
                    // Never seen working: not handed out on the strength of "unchecked".
                    Unchecked => Down,
                    Up if self.fails_in_row >= policy.down_after => Down,
                    Up => Up,
                    Down => Down,
                }
            }
        };
        if self.since_ms.is_none() || to != from {
            self.since_ms = Some(at_ms);
        }
        self.state = to;
        (to != from).then_some(Transition { from, to })
    }
}

/// Every server's record, shared by the checker (writes) and the pools' choice (reads).
#[derive(Debug, Default)]
pub struct TurnHealth {
    /// A std mutex held for a few map operations, never across `.await`.
    book: Mutex<BTreeMap<ServerKey, ServerHealth>>,
}

impl TurnHealth {
    fn book(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServerKey, ServerHealth>> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a result; returns the change of state and the record after it.
    pub fn record(
        &self,
        key: &ServerKey,
        result: &CheckResult,
        at_ms: i64,
        policy: &TurnChecks,
    ) -> (Option<Transition>, ServerHealth) {
        let mut book = self.book();
        let health = book.entry(key.clone()).or_default();
        let transition = health.record(result, at_ms, policy);
        (transition, health.clone())
    }

    /// Forgets servers no longer configured; returns them.
    pub fn retain(&self, keep: &HashSet<ServerKey>) -> Vec<ServerKey> {
        let mut book = self.book();
        let gone: Vec<ServerKey> = book
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in &gone {
            book.remove(key);
        }
        gone
    }

    pub fn get(&self, key: &ServerKey) -> Option<ServerHealth> {
        self.book().get(key).cloned()
    }

    /// Recomputes what the pools hand out from the records.
    pub fn apply(&self, pools: &super::TurnPools) {
        pools.apply_health(&self.book());
    }
}

/// What the check loop needs from the program (the locator, or a test).
pub trait CheckerEnv: Send + Sync + 'static {
    /// The current settings and servers (they change on a config reload).
    fn targets(&self) -> (TurnChecks, Vec<CheckTarget>);
    /// One check, without its timeout (the loop applies it).
    fn probe(&self, target: &CheckTarget) -> BoxFuture<'static, CheckResult>;
    /// After a result is recorded (`elapsed`: the whole check).
    fn checked(
        &self,
        target: &CheckTarget,
        result: &CheckResult,
        elapsed: Duration,
        transition: Option<Transition>,
        health: &ServerHealth,
    );
    /// A server left the configuration.
    fn removed(&self, key: &ServerKey);
    /// The records changed: recompute what is handed out.
    fn apply(&self, health: &TurnHealth);
    /// Unix time in ms (the records' timestamps).
    fn now_ms(&self) -> i64;
}

/// How often the loop looks for servers added by a config reload, at the latest.
const RESCAN: Duration = Duration::from_secs(1);

/// `interval` moved by up to ±10%.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// When a server seen for the first time is checked: soon, spread over up to a second
/// (or the interval, if shorter) so a start does not send every check at once.
fn first_delay(interval: Duration) -> Duration {
    interval
        .min(RESCAN)
        .mul_f64(rand::rng().random_range(0.0..1.0))
}

/// Checks every target on its schedule, forever.
pub async fn run_checks<E: CheckerEnv>(health: Arc<TurnHealth>, env: Arc<E>) {
    let mut due: HashMap<ServerKey, Instant> = HashMap::new();
    let mut running: JoinSet<(CheckTarget, CheckResult, Duration)> = JoinSet::new();
    let mut busy: HashMap<tokio::task::Id, ServerKey> = HashMap::new();
    loop {
        let (policy, targets) = env.targets();
        let now = Instant::now();
        let keys: HashSet<ServerKey> = targets.iter().map(|t| t.key.clone()).collect();
        due.retain(|k, _| keys.contains(k));
        let gone = health.retain(&keys);
        for key in &gone {
            env.removed(key);
        }
        if !gone.is_empty() {
            env.apply(&health);
        }
        for target in &targets {
            let at = *due
                .entry(target.key.clone())
                .or_insert_with(|| now + first_delay(policy.check_interval));
            if at > now || busy.values().any(|k| *k == target.key) {
                continue;
            }
            due.insert(target.key.clone(), now + jittered(policy.check_interval));
            let probe = env.probe(target);
            let timeout = policy.check_timeout;
            let target = target.clone();
            let key = target.key.clone();
            let handle = running.spawn(async move {
                let started = Instant::now();
                let result = match tokio::time::timeout(timeout, probe).await {
                    Ok(result) => result,
                    Err(_) => Err(CheckError::timeout(timeout)),
                };
                (target, result, started.elapsed())
            });
            busy.insert(handle.id(), key);
        }
        let next = due
            .values()
            .min()
            .copied()
            .unwrap_or(now + RESCAN)
            .min(now + RESCAN);
        tokio::select! {
            Some(done) = running.join_next_with_id(), if !running.is_empty() => match done {
                Ok((id, (target, result, elapsed))) => {
                    busy.remove(&id);
                    if keys.contains(&target.key) {
                        let (transition, record) =
                            health.record(&target.key, &result, env.now_ms(), &policy);
                        env.checked(&target, &result, elapsed, transition, &record);
                        env.apply(&health);
                    }
                }
                Err(error) => {
                    busy.remove(&error.id());
                    tracing::error!(%error, "a TURN server check panicked");
                }
            },
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn policy() -> TurnChecks {
        TurnChecks {
            check_interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(3),
            down_after: 3,
            up_after: 2,
        }
    }

    fn ok() -> CheckResult {
        Ok(Duration::from_millis(5))
    }

    fn fail() -> CheckResult {
        Err(CheckError::timeout(Duration::from_secs(3)))
    }

    #[test]
    fn states_change_after_n_failures_and_m_successes() {
        use ServerState::*;
        // (results in order, state after each, transitions reported)
        let table: &[(&[bool], &[ServerState])] = &[
            (&[true], &[Up]),
            (&[false], &[Down]),
            (&[true, false, false, false], &[Up, Up, Up, Down]),
            (&[true, false, false, true, false], &[Up, Up, Up, Up, Up]),
            (&[false, true, true], &[Down, Down, Up]),
            (
                &[false, true, false, true, true],
                &[Down, Down, Down, Down, Up],
            ),
            (
                &[true, false, false, false, true, true, false],
                &[Up, Up, Up, Down, Down, Up, Up],
            ),
        ];
        for (results, states) in table {
            let mut h = ServerHealth::default();
            assert_eq!(h.state, Unchecked);
            assert!(h.state.hands_out());
            let mut last = Unchecked;
            for (i, (&good, &want)) in results.iter().zip(states.iter()).enumerate() {
                let result = if good { ok() } else { fail() };
                let t = h.record(&result, i as i64, &policy());
                assert_eq!(h.state, want, "{results:?} at {i}");
                assert_eq!(t.is_some(), want != last, "{results:?} at {i}");
                if let Some(t) = t {
                    assert_eq!((t.from, t.to), (last, want));
                    assert_eq!(h.since_ms, Some(i as i64));
                }
                last = want;
            }
        }
    }

    #[test]
    fn a_record_keeps_rtt_and_the_last_error() {
        let mut h = ServerHealth::default();
        h.record(&Ok(Duration::from_millis(7)), 1, &policy());
        h.record(&fail(), 2, &policy());
        assert_eq!(h.rtt, Some(Duration::from_millis(7)));
        assert_eq!(
            h.last_error.as_ref().map(|e| e.kind),
            Some(ErrorKind::Timeout)
        );
        h.record(&Ok(Duration::from_millis(9)), 3, &policy());
        assert_eq!(h.rtt, Some(Duration::from_millis(9)));
        assert_eq!(h.last_error_ms, Some(2));
        assert_eq!((h.checks, h.last_check_ms), (3, Some(3)));
    }

    /// Two scripted servers; a test flips whether `b` answers.
    struct Fake {
        b_up: AtomicBool,
        log: Mutex<Vec<(Instant, String, Option<Transition>)>>,
        policy: TurnChecks,
    }

    impl CheckerEnv for Fake {
        fn targets(&self) -> (TurnChecks, Vec<CheckTarget>) {
            let t = |url: &str| CheckTarget {
                key: ServerKey::new("r", url),
                minter: None,
            };
            (self.policy.clone(), vec![t("stun:a"), t("stun:b")])
        }
        fn probe(&self, target: &CheckTarget) -> BoxFuture<'static, CheckResult> {
            let up = target.key.url == "stun:a" || self.b_up.load(Ordering::SeqCst);
            Box::pin(async move {
                if up {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(Duration::from_millis(20))
                } else {
                    // A dead server: no answer; the loop's timeout ends the check.
                    std::future::pending().await
                }
            })
        }
        fn checked(
            &self,
            target: &CheckTarget,
            _: &CheckResult,
            _: Duration,
            transition: Option<Transition>,
            _: &ServerHealth,
        ) {
            self.log.lock().expect("log").push((
                Instant::now(),
                target.key.url.clone(),
                transition,
            ));
        }
        fn removed(&self, _: &ServerKey) {}
        fn apply(&self, _: &TurnHealth) {}
        fn now_ms(&self) -> i64 {
            0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_server_is_down_within_interval_times_n_plus_timeout_and_comes_back() {
        let policy = policy();
        let fake = Arc::new(Fake {
            b_up: AtomicBool::new(true),
            log: Mutex::new(Vec::new()),
            policy: policy.clone(),
        });
        let health = Arc::new(TurnHealth::default());
        let task = tokio::spawn(run_checks(health.clone(), fake.clone()));
        let b = ServerKey::new("r", "stun:b");
        let state_of = |h: &TurnHealth| h.get(&b).map(|h| h.state);

        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(state_of(&health), Some(ServerState::Up));

        let stopped = Instant::now();
        fake.b_up.store(false, Ordering::SeqCst);
        let bound = policy.check_interval.mul_f64(1.1) * policy.down_after + policy.check_timeout;
        while state_of(&health) != Some(ServerState::Down) {
            assert!(stopped.elapsed() <= bound, "not down within {bound:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let down_after = stopped.elapsed();
        // Three failures in a row were needed: not before two intervals had passed.
        assert!(
            down_after >= policy.check_interval.mul_f64(0.9) * 2,
            "{down_after:?}"
        );
        assert_eq!(
            health.get(&b).and_then(|h| h.last_error).map(|e| e.kind),
            Some(ErrorKind::Timeout)
        );

        let started = Instant::now();
        fake.b_up.store(true, Ordering::SeqCst);
        let bound = policy.check_interval.mul_f64(1.1) * (policy.up_after + 1);
        while state_of(&health) != Some(ServerState::Up) {
            assert!(started.elapsed() <= bound, "not up within {bound:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // `a` never changed: its only transition was the first check.
        let log = fake.log.lock().expect("log").clone();
        let a_changes = log
            .iter()
            .filter(|(_, url, t)| url == "stun:a" && t.is_some())
            .count();
        assert_eq!(a_changes, 1);
        // Checks of one server are about one interval apart (±10%), never overlapping.
        let a_times: Vec<Instant> = log
            .iter()
            .filter(|(_, url, _)| url == "stun:a")
            .map(|(at, _, _)| *at)
            .collect();
        for pair in a_times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= policy.check_interval.mul_f64(0.89)
                    && gap <= policy.check_interval.mul_f64(1.11),
                "{gap:?}"
            );
        }
        task.abort();
    }
}
