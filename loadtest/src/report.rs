//! Figures and invariants of a run, from what the clients recorded, the faults injected
//! and the audit log read back from the locator; written as JSON and as a terminal table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::record::{EdgeSamples, Op, Records};
use crate::scenario::{Fault, PhaseRun};

/// Where the load went.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub locators: Vec<String>,
    /// `(id, region)` of every edge of the local topology (empty with `--url`).
    pub edges: Vec<(String, String)>,
    pub database: String,
    pub geoip: String,
    pub addresses: usize,
    pub address_source: String,
    pub clients: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Requests {
    pub total: u64,
    pub per_s: f64,
    /// Answers by HTTP status (connection failures are errors, not answers).
    pub by_status: BTreeMap<u16, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub kind: String,
    pub retriable: bool,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultResult {
    #[serde(flatten)]
    pub fault: Fault,
    /// From the fault to when new sessions avoided its edges: for the failure detector's
    /// faults (watched on the locators), the later of every locator showing the edge out
    /// of new sessions and the last answer naming it; for the others, the first answer
    /// after which no answer names a dead edge (a locator restart: to the first
    /// successful answer). `None`: not avoided before the fault was healed.
    pub avoided_after_ms: Option<u64>,
    /// From the fault to when every locator showed the edge out of new sessions (watched
    /// faults only; `None` otherwise, or when that did not happen before the heal).
    pub detected_after_ms: Option<u64>,
    /// Answers that named a dead edge after the fault.
    pub answers_to_dead_edges: u64,
    /// Sessions hosted by the fault's edges that were disrupted in its window.
    pub sessions_disrupted: u64,
    /// Disruptions that should not have happened: sessions of a fault that requires
    /// them to survive (a stall, a slow or cut link), plus the edge marked failed by a
    /// locator during a fault that must not fail it over (those two only when no
    /// overlapping fault of the same edge explains them).
    pub false_disruptions: u64,
    /// Of those, the edge marked failed.
    pub false_failures: u64,
    /// `edge_failed` entries of the fault's edges in its window (audit log).
    pub marked_failed: u64,
    /// Joins (not creates) answered with one of the fault's edges in its window: a
    /// suspect or link-lost edge still takes joins of its sessions.
    pub joins_to_edge: u64,
    /// Rooms disrupted during the fault, and the longest time from a room's disruption
    /// to a participant back in it (through the locator, possibly on another edge).
    pub rooms_disrupted: u64,
    pub max_room_recovery_ms: Option<u64>,
    pub ok: bool,
}

/// Detection times of the faults of one kind (`edge-hang`: one per hang).
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub faults: u64,
    /// `avoided_after_ms` of each, in order (p50 and max are of these).
    pub avoided_after_ms: Vec<Option<u64>>,
    /// `detected_after_ms` of each, in order (empty when the locators were not watched).
    pub detected_after_ms: Vec<Option<u64>>,
    pub p50_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub bound_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fallback {
    pub answers: u64,
    pub fallback: u64,
    pub share: f64,
    /// Fallback answers by reason.
    pub reasons: BTreeMap<String, u64>,
    /// Every answer by reason (in-region, existing-session, room-moved…).
    pub all_reasons: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionBalance {
    pub sessions: BTreeMap<String, u64>,
    pub max_over_mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Balance {
    /// Regions of the burst with at least [`BALANCE_MIN_MEAN`] sessions per edge.
    pub regions: BTreeMap<String, RegionBalance>,
    pub worst: Option<f64>,
    pub limit: f64,
}

/// A region's balance is judged only with at least this many burst sessions per edge.
pub const BALANCE_MIN_MEAN: f64 = 20.0;

/// What the audit log says about the entries the clients caused.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    pub checked: bool,
    pub note: String,
    /// One `participant_joined` per admitted participant.
    pub expected_joined: u64,
    pub stored_joined: u64,
    pub lost_joined: u64,
    pub duplicated_joined: u64,
    /// One `participant_left` per participant that left an edge that ran on.
    pub expected_left: u64,
    pub stored_left: u64,
    pub lost_left: u64,
    pub duplicated_left: u64,
    /// Rows relayed by edges during the run (all kinds).
    pub edge_rows_stored: u64,
    /// Spool entries not yet acknowledged when the audit was read, by edge.
    pub unacknowledged: BTreeMap<String, u64>,
    pub lost_examples: Vec<String>,
}

/// Rows of the audit log the report needs.
#[derive(Debug, Clone, Default)]
pub struct AuditRows {
    /// `(kind, session, participant)` of edge rows.
    pub rows: Vec<(String, String, String)>,
    /// `(edge, Unix ms)` of the locators' `edge_failed` rows.
    pub edge_failures: Vec<(String, i64)>,
    pub unacknowledged: BTreeMap<String, u64>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Sessions {
    pub started: u64,
    pub keyed: u64,
    pub ad_hoc: u64,
    pub disrupted: u64,
    /// Disrupted while no fault explains it.
    pub disrupted_without_fault: u64,
    pub recovered: u64,
    /// Ad-hoc sessions the locator ended (410) after their edge failed or drained.
    pub ended_by_edge: u64,
    pub lost: u64,
    pub rejoins: u64,
    pub admitted_participants: u64,
    pub disruptions: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Messages {
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    /// In sessions no fault disrupted: every due delivery must arrive.
    pub undisrupted_expected: u64,
    pub undisrupted_delivered: u64,
    /// Frames received that were not due to their reader (any session).
    pub misdelivered: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Per-second series for the charts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    pub answers: Vec<u64>,
    pub p50_ms: Vec<f64>,
    pub p99_ms: Vec<f64>,
    pub max_ms: Vec<f64>,
    pub errors: Vec<u64>,
    pub fallback: Vec<u64>,
    pub by_region: BTreeMap<String, Vec<u64>>,
    /// Sessions each edge reported to the locator (live ones, lingering included), per
    /// second; the edge's region.
    pub sessions_by_edge: BTreeMap<String, Vec<u64>>,
    pub edge_regions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub started_unix_ms: i64,
    pub duration_s: f64,
    pub target: Target,
    pub phases: Vec<PhaseRun>,
    pub requests: Requests,
    pub latency_ms: BTreeMap<String, Percentiles>,
    pub errors: Vec<ErrorCount>,
    pub faults: Vec<FaultResult>,
    /// Detection time by fault kind, over the faults a kind has.
    pub detection: BTreeMap<String, Detection>,
    pub fallback: Fallback,
    /// Successful answers by serving region.
    pub regions: BTreeMap<String, u64>,
    /// New sessions by edge (creates and bursts).
    pub sessions_per_edge: BTreeMap<String, u64>,
    pub balance: Option<Balance>,
    pub audit: Audit,
    pub sessions: Sessions,
    pub messages: Messages,
    pub invariants: Vec<Invariant>,
    pub ok: bool,
    pub notes: Vec<String>,
    pub timeline: Timeline,
}

/// Everything [`build`] needs.
#[derive(Debug)]
pub struct Inputs {
    pub scenario: String,
    pub started_unix_ms: i64,
    pub duration_ms: u64,
    pub target: Target,
    pub phases: Vec<PhaseRun>,
    pub faults: Vec<Fault>,
    pub records: Records,
    pub requests: u64,
    pub audit: Option<AuditRows>,
    pub balance_limit: f64,
    pub burst_ran: bool,
    /// `(id, region)` of the edges running during the burst (empty: the edges its
    /// answers named).
    pub burst_edges: Vec<(String, String)>,
    /// Sessions each edge reported, once a second (see [`EdgeSamples`]).
    pub edge_sessions: EdgeSamples,
    /// How long after a fault is healed a disruption still counts as caused by it.
    pub disruption_slack_ms: u64,
    pub notes: Vec<String>,
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits. The bounds are constants that are valid.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Computes the figures and checks the invariants.
pub fn build(inputs: Inputs) -> Report {
    let Inputs {
        scenario,
        started_unix_ms,
        duration_ms,
        target,
        phases,
        faults,
        records,
        requests,
        audit,
        balance_limit,
        burst_ran,
        burst_edges,
        edge_sessions,
        disruption_slack_ms,
        notes,
    } = inputs;
    let mut invariants = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        invariants.push(Invariant {
            name: name.to_string(),
            ok,
            detail,
        })
    };

    // Latency and statuses.
    let mut by_op: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut all = histogram();
    let mut by_status = BTreeMap::new();
    for a in &records.answers {
        let v = a.latency_us.max(1);
        let _ = all.record(v);
        let _ = by_op
            .entry(a.op.as_str().to_string())
            .or_insert_with(histogram)
            .record(v);
        *by_status.entry(a.status).or_insert(0u64) += 1;
    }
    let mut latency_ms = BTreeMap::new();
    latency_ms.insert("all".to_string(), percentiles(&all));
    for (op, h) in &by_op {
        latency_ms.insert(op.clone(), percentiles(h));
    }
    let duration_s = duration_ms as f64 / 1000.0;

    // Errors by kind.
    let mut errors: BTreeMap<(String, bool), u64> = BTreeMap::new();
    for e in &records.errors {
        *errors.entry((e.kind.clone(), e.retriable)).or_default() += 1;
    }
    let errors: Vec<ErrorCount> = errors
        .into_iter()
        .map(|((kind, retriable), count)| ErrorCount {
            kind,
            retriable,
            count,
        })
        .collect();
    let server_errors: u64 = records
        .answers
        .iter()
        .filter(|a| a.status >= 500 && a.status != 503)
        .count() as u64;
    check(
        "no server errors",
        server_errors == 0,
        format!("{server_errors} answers with a 5xx status other than 503"),
    );
    let client_errors: u64 = records
        .answers
        .iter()
        .filter(|a| (400..500).contains(&a.status) && a.status != 410)
        .count() as u64;
    check(
        "no refused requests",
        client_errors == 0,
        format!("{client_errors} answers with a 4xx status other than 410"),
    );

    // Regions, fallback, sessions per edge.
    let ok_answers: Vec<_> = records
        .answers
        .iter()
        .filter(|a| (200..300).contains(&a.status))
        .collect();
    let mut regions = BTreeMap::new();
    let mut reasons = BTreeMap::new();
    let mut all_reasons = BTreeMap::new();
    let mut fallback = 0u64;
    let mut sessions_per_edge = BTreeMap::new();
    for (id, _) in &target.edges {
        sessions_per_edge.insert(id.clone(), 0u64);
    }
    for a in &ok_answers {
        if let Some(region) = &a.region {
            *regions.entry(region.clone()).or_insert(0u64) += 1;
        }
        let reason = a.reason.unwrap_or("unknown").to_string();
        *all_reasons.entry(reason.clone()).or_insert(0u64) += 1;
        if a.fallback {
            fallback += 1;
            *reasons.entry(reason).or_insert(0u64) += 1;
        }
        if (a.created || a.op == Op::Burst)
            && let Some(edge) = &a.edge
        {
            *sessions_per_edge.entry(edge.clone()).or_insert(0) += 1;
        }
    }
    let fallback = Fallback {
        answers: ok_answers.len() as u64,
        fallback,
        share: if ok_answers.is_empty() {
            0.0
        } else {
            fallback as f64 / ok_answers.len() as f64
        },
        reasons,
        all_reasons,
    };

    // Faults: time to avoid the dead edges.
    let end_ms = duration_ms;
    let mut fault_results = Vec::new();
    for fault in &faults {
        let until = fault.healing_ms.unwrap_or(end_ms);
        let (avoided_after_ms, dead_answers) = if fault.edges.is_empty() {
            let first = ok_answers
                .iter()
                .filter(|a| a.t_ms >= fault.at_ms)
                .map(|a| a.t_ms + a.latency_us / 1000)
                .min();
            (first.map(|t| t.saturating_sub(fault.at_ms)), 0)
        } else {
            let mut window: Vec<_> = ok_answers
                .iter()
                .filter(|a| a.t_ms >= fault.at_ms && a.t_ms < until)
                .filter(|a| !fault.new_sessions_only || a.created || a.op == Op::Burst)
                .collect();
            window.sort_by_key(|a| a.t_ms);
            let dead = |a: &&&crate::record::Answer| {
                a.edge.as_ref().is_some_and(|e| fault.edges.contains(e))
            };
            let dead_count = window.iter().filter(|a| dead(a)).count() as u64;
            let last_dead = window.iter().rposition(dead);
            let after = match &fault.watch {
                // The locators were watched: avoided from when every one of them stopped
                // offering the edge, or after the last answer that still named it if that
                // came later. Never earlier than the locators noticed, however few new
                // sessions happened to go its way.
                Some(watch) => watch.detected_ms.filter(|&t| t < until).map(|detected| {
                    last_dead
                        .map(|last| window[last].t_ms + window[last].latency_us / 1000)
                        .map_or(detected, |t| t.max(detected))
                }),
                None => match last_dead {
                    Some(last) => window.get(last + 1).map(|a| a.t_ms),
                    None => window.first().map(|a| a.t_ms),
                },
            };
            (after.map(|t| t.saturating_sub(fault.at_ms)), dead_count)
        };
        let detected_after_ms = fault
            .watch
            .as_ref()
            .and_then(|w| w.detected_ms)
            .filter(|&t| t < until)
            .map(|t| t.saturating_sub(fault.at_ms));
        let avoided_ok = avoided_after_ms.is_some_and(|ms| ms <= fault.bound_ms);
        let ok = avoided_ok || !fault.must_avoid;
        check(
            &format!(
                "{} avoided within its bound{}",
                fault.kind,
                if fault.must_avoid {
                    ""
                } else {
                    " (reported, not required)"
                }
            ),
            ok,
            match avoided_after_ms {
                Some(ms) => format!(
                    "{}: {} ms after the fault (bound {} ms)",
                    fault.action, ms, fault.bound_ms
                ),
                None => format!(
                    "{}: no answer avoided it before it was healed",
                    fault.action
                ),
            },
        );
        // Rooms this fault disrupted must come back within its recovery bound.
        let window_end = fault.healing_ms.unwrap_or(end_ms) + disruption_slack_ms;
        let rooms: Vec<_> = records
            .sessions
            .iter()
            .filter(|s| s.keyed)
            .filter(|s| {
                s.disrupted_ms
                    .is_some_and(|t| t + 1_000 >= fault.at_ms && t <= window_end)
            })
            .collect();
        let max_room_recovery_ms = rooms
            .iter()
            .filter_map(|s| Some(s.recovered_ms?.saturating_sub(s.disrupted_ms?)))
            .max();
        // Every disrupted room back within the bound (a room that never came back fails).
        let rooms_ok = rooms.iter().all(|s| {
            s.recovered_ms
                .zip(s.disrupted_ms)
                .is_some_and(|(r, d)| r.saturating_sub(d) <= fault.recover_bound_ms)
        });
        if !rooms.is_empty() {
            check(
                &format!("{}: disrupted rooms back within the bound", fault.kind),
                rooms_ok,
                format!(
                    "{}: {} rooms disrupted, the slowest back after {} ms (bound {} ms)",
                    fault.action,
                    rooms.len(),
                    max_room_recovery_ms.map_or_else(|| "-".into(), |m| m.to_string()),
                    fault.recover_bound_ms
                ),
            );
        }
        // Sessions of the fault's edges disrupted in its window, and failures marked.
        let in_window = |t: u64| t + 1_000 >= fault.at_ms && t <= window_end;
        // What another fault of the same edge explains (windows overlap: a short hang's
        // slack covers the long hang after it, which fails the edge by design).
        let explained_by = |edge: &str, t: u64, by: &dyn Fn(&Fault) -> bool| {
            faults.iter().any(|other| {
                !std::ptr::eq(other, fault)
                    && by(other)
                    && other.edges.iter().any(|e| e == edge)
                    && t + 1_000 >= other.at_ms
                    && t <= other.healing_ms.unwrap_or(end_ms) + disruption_slack_ms
            })
        };
        let disrupted: Vec<_> = records
            .sessions
            .iter()
            .filter(|s| fault.edges.contains(&s.edge))
            .filter(|s| s.disrupted_ms.is_some_and(in_window))
            .collect();
        let sessions_disrupted = disrupted.len() as u64;
        let failures: Vec<(&String, u64)> = audit
            .as_ref()
            .map(|rows| {
                rows.edge_failures
                    .iter()
                    .map(|(edge, at)| (edge, u64::try_from(at - started_unix_ms).unwrap_or(0)))
                    .filter(|(edge, at)| fault.edges.contains(edge) && in_window(*at))
                    .collect()
            })
            .unwrap_or_default();
        let marked_failed = failures.len() as u64;
        // A disruption is false when the fault requires its sessions to survive and no
        // overlapping fault of the edge that may disrupt explains it; a failure marked is
        // false when the fault must not fail the edge over and no overlapping one that may
        // explains it.
        let false_sessions = if fault.sessions_must_survive {
            disrupted
                .iter()
                .filter(|s| {
                    let t = s.disrupted_ms.unwrap_or_default();
                    !explained_by(&s.edge, t, &|f| !f.sessions_must_survive)
                })
                .count() as u64
        } else {
            0
        };
        let false_failures = if fault.failover_expected {
            0
        } else {
            failures
                .iter()
                .filter(|(edge, t)| !explained_by(edge, *t, &|f| f.failover_expected))
                .count() as u64
        };
        let false_disruptions = false_sessions + false_failures;
        let joins_to_edge = ok_answers
            .iter()
            .filter(|a| a.t_ms >= fault.at_ms && a.t_ms < until && !a.created && a.op != Op::Burst)
            .filter(|a| a.edge.as_ref().is_some_and(|e| fault.edges.contains(e)))
            .count() as u64;
        fault_results.push(FaultResult {
            fault: fault.clone(),
            avoided_after_ms,
            detected_after_ms,
            answers_to_dead_edges: dead_answers,
            rooms_disrupted: rooms.len() as u64,
            max_room_recovery_ms,
            sessions_disrupted,
            false_disruptions,
            false_failures,
            marked_failed,
            joins_to_edge,
            ok: ok && rooms_ok && false_disruptions == 0,
        });
    }
    let no_failover: Vec<&FaultResult> = fault_results
        .iter()
        .filter(|f| !f.fault.failover_expected)
        .collect();
    if !no_failover.is_empty() {
        let false_total: u64 = no_failover.iter().map(|f| f.false_disruptions).sum();
        let marked: u64 = no_failover.iter().map(|f| f.false_failures).sum();
        let survive = no_failover
            .iter()
            .filter(|f| f.fault.sessions_must_survive)
            .count();
        check(
            "no false failover",
            false_total == 0,
            format!(
                "{} faults that must fail nothing over (stalls, slow or cut links, short hangs), {survive} of them keeping every session: {} of those sessions disrupted, {} edge_failed entries of their own{}",
                no_failover.len(),
                false_total - marked,
                marked,
                if audit.as_ref().is_some_and(|a| a.note.is_none()) {
                    ""
                } else {
                    " (audit log not read: failures not checked)"
                }
            ),
        );
    }
    let mut detection: BTreeMap<String, Detection> = BTreeMap::new();
    for f in &fault_results {
        if f.fault.edges.is_empty() {
            continue;
        }
        let d = detection
            .entry(f.fault.kind.to_string())
            .or_insert_with(|| Detection {
                faults: 0,
                avoided_after_ms: Vec::new(),
                detected_after_ms: Vec::new(),
                p50_ms: None,
                max_ms: None,
                bound_ms: f.fault.bound_ms,
            });
        d.faults += 1;
        d.avoided_after_ms.push(f.avoided_after_ms);
        if f.fault.watch.is_some() {
            d.detected_after_ms.push(f.detected_after_ms);
        }
    }
    for d in detection.values_mut() {
        let mut seen: Vec<u64> = d.avoided_after_ms.iter().flatten().copied().collect();
        seen.sort_unstable();
        d.max_ms = seen.last().copied();
        // The median of the faults (an undetected one counts as the slowest).
        if seen.len() == d.avoided_after_ms.len() && !seen.is_empty() {
            d.p50_ms = Some(seen[(seen.len() - 1) / 2]);
        }
    }

    // Balance of the burst, per region.
    let balance = burst_ran.then(|| {
        let mut per_region: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (id, region) in &burst_edges {
            per_region
                .entry(region.clone())
                .or_default()
                .insert(id.clone(), 0);
        }
        for a in ok_answers.iter().filter(|a| a.op == Op::Burst) {
            if let (Some(region), Some(edge)) = (&a.region, &a.edge) {
                *per_region
                    .entry(region.clone())
                    .or_default()
                    .entry(edge.clone())
                    .or_insert(0) += 1;
            }
        }
        let mut regions = BTreeMap::new();
        for (region, sessions) in per_region {
            let total: u64 = sessions.values().sum();
            let mean = total as f64 / sessions.len().max(1) as f64;
            if sessions.len() < 2 || mean < BALANCE_MIN_MEAN {
                continue;
            }
            let max = sessions.values().copied().max().unwrap_or(0) as f64;
            regions.insert(
                region,
                RegionBalance {
                    sessions,
                    max_over_mean: max / mean,
                },
            );
        }
        let worst = regions
            .values()
            .map(|r| r.max_over_mean)
            .fold(None, |w: Option<f64>, x| Some(w.map_or(x, |w| w.max(x))));
        Balance {
            regions,
            worst,
            limit: balance_limit,
        }
    });
    if let Some(b) = &balance {
        // A burst that no region took enough of to judge is a failure, not a pass.
        let ok = b.worst.is_some_and(|w| w <= b.limit);
        check(
            "burst balanced",
            ok,
            match b.worst {
                Some(w) => format!(
                    "worst max/mean sessions per edge {w:.3} over {} regions (limit {})",
                    b.regions.len(),
                    b.limit
                ),
                None => format!(
                    "no region had two edges and {BALANCE_MIN_MEAN} burst sessions per edge"
                ),
            },
        );
    }

    // Sessions.
    // Only a fault allowed to disrupt sessions explains a disruption: during a stall or a
    // cut link nothing may be disrupted.
    let explained = |t: u64| {
        faults.iter().filter(|f| !f.sessions_must_survive).any(|f| {
            t + 1_000 >= f.at_ms
                && t <= f.healed_ms.unwrap_or(end_ms).max(f.at_ms + f.bound_ms)
                    + disruption_slack_ms
        })
    };
    let mut sessions = Sessions {
        admitted_participants: records.joins.len() as u64,
        ..Sessions::default()
    };
    let mut messages = Messages::default();
    for s in &records.sessions {
        sessions.started += 1;
        if s.keyed {
            sessions.keyed += 1;
        } else {
            sessions.ad_hoc += 1;
        }
        messages.sent += s.sent;
        messages.expected += s.expected;
        messages.delivered += s.delivered;
        messages.misdelivered += s.misdelivered;
        if let Some(kind) = &s.disrupted {
            sessions.disrupted += 1;
            *sessions.disruptions.entry(kind.clone()).or_default() += 1;
            if !s.disrupted_ms.is_some_and(explained) {
                sessions.disrupted_without_fault += 1;
            }
        } else {
            messages.undisrupted_expected += s.expected;
            messages.undisrupted_delivered += s.delivered;
        }
        sessions.recovered += u64::from(s.recovered);
        sessions.ended_by_edge += u64::from(s.ended_by_edge && !s.keyed);
        sessions.lost += u64::from(s.lost);
        sessions.rejoins += u64::from(s.rejoined);
    }
    check(
        "no session lost",
        sessions.lost == 0,
        format!(
            "{} of {} sessions lost ({} disrupted, {} recovered, {} ad-hoc ended by the locator)",
            sessions.lost,
            sessions.started,
            sessions.disrupted,
            sessions.recovered,
            sessions.ended_by_edge
        ),
    );
    check(
        "no disruption without a fault",
        sessions.disrupted_without_fault == 0,
        format!(
            "{} sessions disrupted outside every fault window",
            sessions.disrupted_without_fault
        ),
    );
    check(
        "every message delivered, to whom it was due",
        messages.undisrupted_delivered == messages.undisrupted_expected
            && messages.misdelivered == 0,
        format!(
            "{} of {} deliveries due in undisrupted sessions arrived; {} frames reached a participant they were not due to",
            messages.undisrupted_delivered, messages.undisrupted_expected, messages.misdelivered
        ),
    );
    check(
        "sessions ran",
        sessions.started > 0 && sessions.admitted_participants > 0,
        format!(
            "{} sessions, {} participants admitted",
            sessions.started, sessions.admitted_participants
        ),
    );

    // Audit.
    let audit = audit_figures(&records, &faults, audit);
    if audit.checked {
        check(
            "no audit entry lost or duplicated",
            audit.lost_joined + audit.lost_left + audit.duplicated_joined + audit.duplicated_left
                == 0,
            format!(
                "participant_joined: {} expected, {} stored, {} lost, {} duplicated; participant_left: {} expected, {} stored, {} lost, {} duplicated",
                audit.expected_joined,
                audit.stored_joined,
                audit.lost_joined,
                audit.duplicated_joined,
                audit.expected_left,
                audit.stored_left,
                audit.lost_left,
                audit.duplicated_left
            ),
        );
    }

    let mut timeline = timeline(&records, duration_ms);
    let seconds = timeline.answers.len();
    for (second, row) in &edge_sessions {
        let s = (*second as usize).min(seconds - 1);
        for (edge, region, sessions) in row {
            timeline.edge_regions.insert(edge.clone(), region.clone());
            timeline
                .sessions_by_edge
                .entry(edge.clone())
                .or_insert_with(|| vec![0; seconds])[s] = *sessions;
        }
    }
    let ok = invariants.iter().all(|i| i.ok);
    // Requests per second over the phases: after the last one, the clients only finish
    // and re-join.
    let load_s = match (phases.first(), phases.last()) {
        (Some(first), Some(last)) if last.end_ms > first.start_ms => {
            (last.end_ms - first.start_ms) as f64 / 1000.0
        }
        _ => duration_s,
    };
    let per_s = if load_s > 0.0 {
        requests as f64 / load_s
    } else {
        0.0
    };
    Report {
        scenario,
        started_unix_ms,
        duration_s,
        target,
        phases,
        requests: Requests {
            total: requests,
            per_s,
            by_status,
        },
        latency_ms,
        errors,
        faults: fault_results,
        detection,
        fallback,
        regions,
        sessions_per_edge,
        balance,
        audit,
        sessions,
        messages,
        invariants,
        ok,
        notes,
        timeline,
    }
}

fn audit_figures(records: &Records, faults: &[Fault], rows: Option<AuditRows>) -> Audit {
    let Some(rows) = rows else {
        return Audit {
            checked: false,
            note: "not checked: no admin token (set LOCATOR_ADMIN_TOKEN with --url)".into(),
            ..Audit::default()
        };
    };
    if let Some(note) = rows.note {
        return Audit {
            checked: false,
            note,
            ..Audit::default()
        };
    }
    // Edges that were killed, hung past failure or drained: a leave they saw may not have
    // been spooled. An edge whose link was cut, slowed or stalled must store every entry.
    let faulted: BTreeSet<&str> = faults
        .iter()
        .filter(|f| f.failover_expected)
        .flat_map(|f| f.edges.iter().map(String::as_str))
        .collect();
    let mut stored: HashMap<(&str, &str, &str), u64> = HashMap::new();
    for (kind, session, participant) in &rows.rows {
        *stored
            .entry((kind.as_str(), session.as_str(), participant.as_str()))
            .or_default() += 1;
    }
    let mut audit = Audit {
        checked: true,
        note: "entries the clients caused: one participant_joined per admitted participant, one participant_left per participant that left an edge never faulted during the run".into(),
        edge_rows_stored: rows.rows.len() as u64,
        unacknowledged: rows.unacknowledged.clone(),
        ..Audit::default()
    };
    for join in &records.joins {
        let n = stored
            .get(&(
                "participant_joined",
                join.session_id.as_str(),
                join.participant.as_str(),
            ))
            .copied()
            .unwrap_or(0);
        audit.expected_joined += 1;
        audit.stored_joined += n.min(1);
        if n == 0 {
            audit.lost_joined += 1;
            if audit.lost_examples.len() < 5 {
                audit.lost_examples.push(format!(
                    "participant_joined {} in {} on {}",
                    join.participant, join.session_id, join.edge
                ));
            }
        }
        audit.duplicated_joined += n.saturating_sub(1);
        let left = stored
            .get(&(
                "participant_left",
                join.session_id.as_str(),
                join.participant.as_str(),
            ))
            .copied()
            .unwrap_or(0);
        audit.duplicated_left += left.saturating_sub(1);
        if join.left && !faulted.contains(join.edge.as_str()) {
            audit.expected_left += 1;
            audit.stored_left += left.min(1);
            if left == 0 {
                audit.lost_left += 1;
                if audit.lost_examples.len() < 5 {
                    audit.lost_examples.push(format!(
                        "participant_left {} in {} on {}",
                        join.participant, join.session_id, join.edge
                    ));
                }
            }
        }
    }
    audit
}

fn timeline(records: &Records, duration_ms: u64) -> Timeline {
    let seconds = (duration_ms / 1000 + 1) as usize;
    let mut t = Timeline {
        answers: vec![0; seconds],
        p50_ms: vec![0.0; seconds],
        p99_ms: vec![0.0; seconds],
        max_ms: vec![0.0; seconds],
        errors: vec![0; seconds],
        fallback: vec![0; seconds],
        by_region: BTreeMap::new(),
        sessions_by_edge: BTreeMap::new(),
        edge_regions: BTreeMap::new(),
    };
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); seconds];
    for a in &records.answers {
        let s = ((a.t_ms / 1000) as usize).min(seconds - 1);
        t.answers[s] += 1;
        latencies[s].push(a.latency_us);
        if (200..300).contains(&a.status) {
            if a.fallback {
                t.fallback[s] += 1;
            }
            if let Some(region) = &a.region {
                t.by_region
                    .entry(region.clone())
                    .or_insert_with(|| vec![0; seconds])[s] += 1;
            }
        }
    }
    for e in &records.errors {
        let s = ((e.t_ms / 1000) as usize).min(seconds - 1);
        t.errors[s] += 1;
    }
    for (s, mut l) in latencies.into_iter().enumerate() {
        l.sort_unstable();
        t.p50_ms[s] = quantile(&l, 0.5);
        t.p99_ms[s] = quantile(&l, 0.99);
        t.max_ms[s] = quantile(&l, 1.0);
    }
    t
}

/// The report as a terminal table.
pub fn terminal(report: &Report) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "\nloadtest {}: {:.1} s, {} locator(s), {} edges, {} clients, {} addresses ({})",
        report.scenario,
        report.duration_s,
        report.target.locators.len(),
        report.target.edges.len(),
        report.target.clients,
        report.target.addresses,
        report.target.address_source
    );
    let _ = writeln!(
        w,
        "requests {} ({:.1}/s)  answers by status {:?}",
        report.requests.total, report.requests.per_s, report.requests.by_status
    );
    let _ = writeln!(
        w,
        "\n{:<10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency", "count", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms"
    );
    for (op, p) in &report.latency_ms {
        let _ = writeln!(
            w,
            "{:<10} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            op, p.count, p.p50, p.p90, p.p99, p.p999, p.max
        );
    }
    if !report.errors.is_empty() {
        let _ = writeln!(w, "\n{:<32} {:>10} {:>8}", "error", "retriable", "count");
        for e in &report.errors {
            let _ = writeln!(
                w,
                "{:<32} {:>10} {:>8}",
                e.kind,
                if e.retriable { "yes" } else { "no" },
                e.count
            );
        }
    }
    if !report.faults.is_empty() {
        let _ = writeln!(
            w,
            "\n{:<16} {:>7} {:>9} {:>10} {:>7} {:>9} {:>6} {:>6} {:>12} {:>9} {:>6} {:>6}  action",
            "fault",
            "at s",
            "detect ms",
            "avoided ms",
            "out ms",
            "bound ms",
            "dead",
            "rooms",
            "room back ms",
            "disrupted",
            "false",
            "joins"
        );
        for f in &report.faults {
            let _ = writeln!(
                w,
                "{:<16} {:>7.1} {:>9} {:>10} {:>7} {:>9} {:>6} {:>6} {:>12} {:>9} {:>6} {:>6}  {}",
                f.fault.kind,
                f.fault.at_ms as f64 / 1000.0,
                match &f.fault.watch {
                    Some(_) => f
                        .detected_after_ms
                        .map_or_else(|| "never".to_string(), |m| m.to_string()),
                    None => "-".to_string(),
                },
                f.avoided_after_ms
                    .map_or_else(|| "never".to_string(), |m| m.to_string()),
                f.fault
                    .watch
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |w| w.out_ms.to_string()),
                if f.fault.must_avoid {
                    f.fault.bound_ms.to_string()
                } else {
                    "-".to_string()
                },
                f.answers_to_dead_edges,
                f.rooms_disrupted,
                f.max_room_recovery_ms
                    .map_or_else(|| "-".to_string(), |m| m.to_string()),
                f.sessions_disrupted,
                f.false_disruptions,
                f.joins_to_edge,
                f.fault.action
            );
        }
        for (kind, d) in &report.detection {
            let ms = |m: Option<u64>| m.map_or_else(|| "-".to_string(), |m| m.to_string());
            let _ = writeln!(
                w,
                "detection {kind}: {} faults, p50 {} ms, max {} ms (bound {} ms)",
                d.faults,
                ms(d.p50_ms),
                ms(d.max_ms),
                d.bound_ms
            );
        }
    }
    let _ = writeln!(
        w,
        "\nfallback {} of {} answers ({:.1}%): {:?}",
        report.fallback.fallback,
        report.fallback.answers,
        report.fallback.share * 100.0,
        report.fallback.reasons
    );
    let _ = writeln!(w, "answers by region: {:?}", report.regions);
    let _ = writeln!(w, "new sessions by edge: {:?}", report.sessions_per_edge);
    if let Some(b) = &report.balance {
        let _ = writeln!(
            w,
            "balance (burst, max/mean sessions per edge): worst {} (limit {}) {}",
            b.worst.map_or_else(|| "n/a".into(), |x| format!("{x:.3}")),
            b.limit,
            b.regions
                .iter()
                .map(|(r, x)| format!("{r} {:.3}", x.max_over_mean))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let s = &report.sessions;
    let _ = writeln!(
        w,
        "sessions {} ({} rooms, {} ad-hoc), participants {}, re-joins {}, disrupted {} ({} without a fault), recovered {}, ended by the locator {}, lost {}",
        s.started,
        s.keyed,
        s.ad_hoc,
        s.admitted_participants,
        s.rejoins,
        s.disrupted,
        s.disrupted_without_fault,
        s.recovered,
        s.ended_by_edge,
        s.lost
    );
    let m = &report.messages;
    let _ = writeln!(
        w,
        "messages sent {}, deliveries due {}, delivered {} (undisrupted sessions: {} of {}), not due {}",
        m.sent,
        m.expected,
        m.delivered,
        m.undisrupted_delivered,
        m.undisrupted_expected,
        m.misdelivered
    );
    let a = &report.audit;
    if a.checked {
        let _ = writeln!(
            w,
            "audit: participant_joined {}/{} stored (lost {}, duplicated {}), participant_left {}/{} (lost {}, duplicated {}), {} edge rows stored",
            a.stored_joined,
            a.expected_joined,
            a.lost_joined,
            a.duplicated_joined,
            a.stored_left,
            a.expected_left,
            a.lost_left,
            a.duplicated_left,
            a.edge_rows_stored
        );
    } else {
        let _ = writeln!(w, "audit: {}", a.note);
    }
    for note in &report.notes {
        let _ = writeln!(w, "note: {note}");
    }
    let _ = writeln!(w, "\ninvariants:");
    for i in &report.invariants {
        let _ = writeln!(
            w,
            "  [{}] {}: {}",
            if i.ok { "ok" } else { "FAIL" },
            i.name,
            i.detail
        );
    }
    out
}
