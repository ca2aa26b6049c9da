//! The health of every region, as the admin page and `GET /v1/admin/status` show it: a
//! pure function of the registry snapshot, the config, the TURN pools and the traffic
//! window (no I/O, no clock read: `now` is passed in).
//!
//! # Region states
//!
//! Edges that drained and disconnected on purpose ("retired") are listed but do not count.
//!
//! - **healthy**: the region has edges and every one of them is active with headroom.
//! - **degraded**: something still serves the region (an active edge, even a saturated
//!   one, or a link-lost edge that keeps serving its sessions) but not every edge is
//!   active with headroom: one is suspended, draining, link-lost, failed or saturated.
//! - **down**: nothing serves the region: no edges, or all failed, suspended or draining.
//! - **fallback** ("served by fallback"): the region has no edge taking new sessions and
//!   [`select_edge`] sends its clients' new sessions to another region right now. This
//!   overrides the state of its own edges, which stays visible as `own_state`.
//!
//! The choice made for "served by" uses a fixed random seed, so the page does not flicker
//! between two fallback regions that selection would both use (spill by headroom).

use std::collections::BTreeMap;

use locus_geo::Config;
use locus_protocol::LoadReport;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tokio::time::Instant;

use crate::edge_state::{EdgeState, FailReason, Liveness};
use crate::metrics::traffic::Window;
use crate::selection::{Bottleneck, RegionPlan, select_edge, utilisation};
use crate::snapshot::{EdgeView, RegistrySnapshot};
use crate::turn::PoolStatus;

/// A region's state on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RegionState {
    Healthy,
    Degraded,
    Down,
    /// Its clients' new sessions currently go to another region.
    Fallback,
}

impl RegionState {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Healthy => "healthy",
            RegionState::Degraded => "degraded",
            RegionState::Down => "down",
            RegionState::Fallback => "fallback",
        }
    }
}

/// One edge row.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EdgeRow {
    pub id: String,
    pub state: EdgeState,
    /// Why a failed edge failed: a code, and in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_reason: Option<FailReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_because: Option<&'static str>,
    /// Drained and disconnected on purpose: listed, not counted in the region's state.
    pub retired: bool,
    /// Suspended by an admin (also when another state shows, e.g. draining).
    pub suspended: bool,
    pub draining: bool,
    pub url: String,
    pub version: String,
    /// Sessions the edge says it can host.
    pub capacity: u32,
    /// The last load report (`None` until the first one arrives).
    pub load: Option<LoadReport>,
    /// Sessions assigned since that report.
    pub pending_assignments: u32,
    /// Selection's score: the bottleneck of sessions, CPU, lag, connections and (with a
    /// `max_bitrate`) forwarded WebRTC bitrate against what counts as full (1.0 =
    /// saturated). Capped at 10 for display.
    pub utilisation: f64,
    /// Which of those sets it.
    pub bottleneck: Bottleneck,
    /// Active with headroom: selection may send it new sessions.
    pub takes_new_sessions: bool,
    /// Time since the last report (or the registration, before any report).
    pub report_age_ms: u64,
}

/// Where new sessions of a region's clients go when not home.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServedBy {
    pub region: String,
    pub edge: String,
    pub reason_code: &'static str,
    pub reason: String,
}

/// Answers to a region's clients over the traffic window.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegionTraffic {
    /// Answers that placed a client of this region.
    pub answers: u64,
    /// Of those, served by another region.
    pub elsewhere: u64,
    /// `elsewhere / answers` (`None` when there were no answers).
    pub share_elsewhere: Option<f64>,
    /// Where the others went, most first.
    pub to: Vec<Flow>,
    /// Answers this region served for clients of other regions.
    pub absorbed: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Flow {
    pub region: String,
    pub answers: u64,
}

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

/// One region card.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegionStatus {
    pub id: String,
    pub name: String,
    pub location: Location,
    /// What the page shows first (colour and label).
    pub state: RegionState,
    /// The state of its own edges (differs from `state` when served by fallback).
    pub own_state: RegionState,
    /// One line for people: "1 of 2 edges take new sessions: eu-west-2 suspended".
    pub summary: String,
    /// Edges counted (retired ones excluded).
    pub edges_counted: u32,
    /// Of those, active with headroom.
    pub edges_taking: u32,
    /// Sessions on its serving edges (reported plus assigned since) and their capacity.
    pub sessions: u64,
    pub capacity: u64,
    /// Configured fallback regions, in order.
    pub fallback_order: Vec<String>,
    /// Set when new sessions of its clients currently go to another region.
    pub served_by: Option<ServedBy>,
    pub traffic: RegionTraffic,
    pub turn: Option<PoolStatus>,
    pub edges: Vec<EdgeRow>,
}

/// Counts for the page header.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub regions: BTreeMap<&'static str, u32>,
    pub edges: BTreeMap<&'static str, u32>,
}

fn is_retired(edge: &EdgeView) -> bool {
    matches!(
        edge.status.liveness,
        Liveness::Failed {
            why: FailReason::Drained
        }
    )
}

fn edge_row(edge: &EdgeView, now: Instant) -> EdgeRow {
    let state = edge.status.state();
    let dimensions = utilisation(edge);
    let utilisation = dimensions.score();
    let failed_reason = match edge.status.liveness {
        Liveness::Failed { why } => Some(why),
        _ => None,
    };
    EdgeRow {
        id: edge.id.to_string(),
        state,
        failed_reason,
        failed_because: failed_reason.map(FailReason::describe),
        retired: is_retired(edge),
        suspended: edge.status.suspended,
        draining: edge.status.draining,
        url: edge.public_url.to_string(),
        version: edge.version.to_string(),
        capacity: edge.capacity,
        load: edge.load(),
        pending_assignments: edge.pending_assignments(),
        utilisation: if utilisation.is_finite() {
            utilisation.clamp(0.0, 10.0)
        } else {
            10.0
        },
        bottleneck: dimensions.bottleneck(),
        takes_new_sessions: state == EdgeState::Active && utilisation < 1.0,
        report_age_ms: edge.report_age(now).as_millis() as u64,
    }
}

/// Why an edge does not take new sessions, in a few words.
fn why_not(row: &EdgeRow) -> String {
    match row.state {
        EdgeState::Active if row.bottleneck == Bottleneck::Bitrate => {
            format!("{} saturated (bitrate)", row.id)
        }
        EdgeState::Active => format!("{} saturated", row.id),
        state => format!("{} {}", row.id, state.as_str()),
    }
}

fn summary_line(rows: &[EdgeRow], own: RegionState) -> String {
    let counted: Vec<&EdgeRow> = rows.iter().filter(|r| !r.retired).collect();
    if counted.is_empty() {
        return "no edges registered".to_string();
    }
    let taking = counted.iter().filter(|r| r.takes_new_sessions).count();
    let n = counted.len();
    if own == RegionState::Healthy {
        return if n == 1 {
            "1 edge, taking new sessions".to_string()
        } else {
            format!("{n} edges, all taking new sessions")
        };
    }
    let mut problems: Vec<String> = counted
        .iter()
        .filter(|r| !r.takes_new_sessions)
        .map(|r| why_not(r))
        .collect();
    const SHOWN: usize = 4;
    if problems.len() > SHOWN {
        let more = problems.len() - SHOWN;
        problems.truncate(SHOWN);
        problems.push(format!("{more} more"));
    }
    let of = if n == 1 {
        format!("{taking} of 1 edge takes new sessions")
    } else if taking == 1 {
        format!("1 of {n} edges takes new sessions")
    } else {
        format!("{taking} of {n} edges take new sessions")
    };
    format!("{of}: {}", problems.join(", "))
}

/// Every region's status, in config order.
pub fn regions(
    snapshot: &RegistrySnapshot,
    config: &Config,
    plan: &RegionPlan,
    pools: &[PoolStatus],
    window: &Window,
    now: Instant,
) -> Vec<RegionStatus> {
    config
        .indexed_regions()
        .map(|(r, region)| {
            let edges: Vec<&EdgeView> = snapshot
                .in_region(r)
                .iter()
                .map(|&i| &snapshot.edges[i])
                .collect();
            let rows: Vec<EdgeRow> = edges.iter().map(|e| edge_row(e, now)).collect();
            let counted = rows.iter().filter(|row| !row.retired);
            let (mut n, mut taking, mut serving) = (0u32, 0u32, 0u32);
            for row in counted {
                n += 1;
                taking += u32::from(row.takes_new_sessions);
                serving += u32::from(matches!(
                    row.state,
                    EdgeState::Active | EdgeState::Suspect | EdgeState::LinkLost
                ));
            }
            let own_state = if n > 0 && taking == n {
                RegionState::Healthy
            } else if serving > 0 {
                RegionState::Degraded
            } else {
                RegionState::Down
            };
            let served_by = if taking == 0 {
                select_edge(snapshot, plan, r, &mut StdRng::seed_from_u64(0))
                    .filter(|s| s.region != r)
                    .map(|s| ServedBy {
                        region: config
                            .region_at(s.region)
                            .map(|x| x.id.clone())
                            .unwrap_or_default(),
                        edge: snapshot.edges[s.edge].id.to_string(),
                        reason_code: s.reason.as_str(),
                        reason: s.detail(snapshot, config),
                    })
            } else {
                None
            };
            let state = if served_by.is_some() {
                RegionState::Fallback
            } else {
                own_state
            };
            let (mut sessions, mut capacity) = (0u64, 0u64);
            for (edge, row) in edges.iter().zip(&rows) {
                if row.state != EdgeState::Failed {
                    sessions += u64::from(edge.load().map_or(0, |l| l.sessions))
                        + u64::from(row.pending_assignments);
                    capacity += u64::from(edge.capacity);
                }
            }
            // The traffic window is kept in the order of this config's regions.
            let w = r.get();
            let answers = window.answers_for(w);
            let here = window.get(w, w);
            let mut to: Vec<Flow> = (0..window.regions.len())
                .filter(|&s| s != w)
                .map(|s| Flow {
                    region: window.regions[s].clone(),
                    answers: window.get(w, s),
                })
                .filter(|f| f.answers > 0)
                .collect();
            to.sort_by_key(|f| std::cmp::Reverse(f.answers));
            RegionStatus {
                id: region.id.clone(),
                name: region.name.clone(),
                location: Location {
                    lat: region.location.lat,
                    lon: region.location.lon,
                },
                state,
                own_state,
                summary: summary_line(&rows, own_state),
                edges_counted: n,
                edges_taking: taking,
                sessions,
                capacity,
                fallback_order: region
                    .fallback
                    .iter()
                    .filter_map(|&f| config.region_at(f).map(|x| x.id.clone()))
                    .collect(),
                served_by,
                traffic: RegionTraffic {
                    answers,
                    elsewhere: answers - here,
                    share_elsewhere: (answers > 0)
                        .then(|| (answers - here) as f64 / answers as f64),
                    to,
                    absorbed: window.absorbed_by(w),
                },
                turn: pools.iter().find(|p| p.region == region.id).cloned(),
                edges: rows,
            }
        })
        .collect()
}

/// Regions by state and edges by state.
pub fn summary(regions: &[RegionStatus]) -> Summary {
    let mut out = Summary::default();
    for state in [
        RegionState::Healthy,
        RegionState::Degraded,
        RegionState::Down,
        RegionState::Fallback,
    ] {
        out.regions.insert(state.as_str(), 0);
    }
    for state in EdgeState::ALL {
        out.edges.insert(state.as_str(), 0);
    }
    for region in regions {
        *out.regions.entry(region.state.as_str()).or_default() += 1;
        for edge in &region.edges {
            *out.edges.entry(edge.state.as_str()).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    const YAML: &str = r#"
default_region: eu-west
regions:
  - id: eu-west
    name: Europe West
    location: { lat: 53.35, lon: -6.26 }
    fallback: [eu-central]
  - id: eu-central
    location: { lat: 50.11, lon: 8.68 }
    fallback: [eu-west]
  - id: us-east
    location: { lat: 39.0, lon: -77.5 }
"#;

    fn config() -> Config {
        Config::parse(YAML, Path::new("t.yaml")).expect("config")
    }

    fn edge(id: &str, region: usize, state: EdgeState, sessions: u32) -> EdgeView {
        let now = Instant::now();
        let mut status = crate::edge_state::EdgeStatus::registered(
            now,
            state == EdgeState::Suspended,
            state == EdgeState::Draining,
        );
        match state {
            EdgeState::LinkLost => {
                status.on_link_closed(now);
            }
            EdgeState::Failed => {
                status.on_link_closed(now);
                status.on_probe(crate::edge_state::Probe::Dead);
            }
            _ => {}
        }
        EdgeView {
            id: id.into(),
            region: locus_geo::RegionIndex::for_tests(region),
            public_url: format!("http://{id}.example").into(),
            capacity: 100,
            version: "1.2.3".into(),
            status,
            live: crate::load::Live::new(
                Some(LoadReport {
                    cpu: 0.1,
                    lag_ms: 1.0,
                    connections: sessions,
                    sessions,
                    ..Default::default()
                }),
                0,
            ),
        }
    }

    fn build(edges: Vec<EdgeView>) -> Vec<RegionStatus> {
        build_with(
            edges,
            &Window {
                regions: vec!["eu-west".into(), "eu-central".into(), "us-east".into()],
                length: Duration::from_secs(300),
                cells: vec![0; 9],
            },
        )
    }

    fn build_with(edges: Vec<EdgeView>, window: &Window) -> Vec<RegionStatus> {
        let config = config();
        let snapshot = RegistrySnapshot::new(edges);
        regions(
            &snapshot,
            &config,
            &RegionPlan::new(&config),
            &[],
            window,
            Instant::now(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn every_edge_active_with_headroom_is_healthy() {
        let out = build(vec![
            edge("a", 0, EdgeState::Active, 10),
            edge("b", 0, EdgeState::Active, 20),
        ]);
        assert_eq!(out[0].state, RegionState::Healthy);
        assert_eq!(out[0].summary, "2 edges, all taking new sessions");
        assert_eq!(out[0].sessions, 30);
        assert_eq!(out[0].capacity, 200);
        assert_eq!(out[0].name, "Europe West");
        assert_eq!(out[0].fallback_order, vec!["eu-central"]);
        assert!(out[0].served_by.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_suspended_or_saturated_edge_degrades_its_region() {
        for (state, sessions, words) in [
            (EdgeState::Failed, 0, "b failed"),
            (EdgeState::Suspended, 0, "b suspended"),
            (EdgeState::Draining, 0, "b draining"),
            (EdgeState::LinkLost, 0, "b link-lost"),
            (EdgeState::Active, 100, "b saturated"),
        ] {
            let out = build(vec![
                edge("a", 0, EdgeState::Active, 10),
                edge("b", 0, state, sessions),
            ]);
            assert_eq!(out[0].state, RegionState::Degraded, "{state:?}");
            assert_eq!(
                out[0].summary,
                format!("1 of 2 edges takes new sessions: {words}")
            );
            assert!(out[0].served_by.is_none(), "its other edge serves it");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_region_whose_new_sessions_go_elsewhere_is_served_by_fallback() {
        let out = build(vec![
            edge("a", 0, EdgeState::Failed, 0),
            edge("c", 1, EdgeState::Active, 5),
        ]);
        assert_eq!(out[0].state, RegionState::Fallback);
        assert_eq!(out[0].own_state, RegionState::Down);
        let served = out[0].served_by.as_ref().expect("served by");
        assert_eq!(served.region, "eu-central");
        assert_eq!(served.edge, "c");
        assert_eq!(served.reason_code, "region-unavailable");
        // A region without any edge is served by fallback too, and says why.
        assert_eq!(out[2].state, RegionState::Fallback);
        assert_eq!(out[2].summary, "no edges registered");
        // Saturated: degraded edges, fallback for new sessions.
        let out = build(vec![
            edge("a", 0, EdgeState::Active, 100),
            edge("c", 1, EdgeState::Active, 5),
        ]);
        assert_eq!(out[0].own_state, RegionState::Degraded);
        assert_eq!(out[0].state, RegionState::Fallback);
        assert_eq!(
            out[0].served_by.as_ref().map(|s| s.reason_code),
            Some("region-saturated")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_anywhere_is_down_and_link_lost_edges_still_serve() {
        let out = build(vec![edge("a", 0, EdgeState::Failed, 0)]);
        assert_eq!(out[0].state, RegionState::Down);
        assert_eq!(out[0].summary, "0 of 1 edge takes new sessions: a failed");
        assert_eq!(out[0].sessions, 0, "a failed edge hosts nothing");
        let out = build(vec![edge("a", 0, EdgeState::LinkLost, 3)]);
        assert_eq!(out[0].own_state, RegionState::Degraded);
        assert_eq!(out[0].state, RegionState::Degraded, "nowhere else to go");
    }

    #[tokio::test(start_paused = true)]
    async fn retired_edges_are_listed_but_do_not_degrade() {
        let mut gone = edge("old", 0, EdgeState::Active, 0);
        gone.status.on_drained();
        let out = build(vec![gone, edge("new", 0, EdgeState::Active, 1)]);
        assert_eq!(out[0].state, RegionState::Healthy);
        assert_eq!(out[0].edges.len(), 2);
        assert!(out[0].edges[0].retired);
        assert_eq!(
            out[0].edges[0].failed_because,
            Some("drained and disconnected")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_shares_come_from_the_window() {
        let window = Window {
            regions: vec!["eu-west".into(), "eu-central".into(), "us-east".into()],
            length: Duration::from_secs(300),
            // eu-west clients: 1 at home, 3 to eu-central, 1 to us-east.
            cells: vec![1, 3, 1, 0, 2, 0, 0, 0, 0],
        };
        let out = build_with(vec![edge("c", 1, EdgeState::Active, 0)], &window);
        let t = &out[0].traffic;
        assert_eq!((t.answers, t.elsewhere), (5, 4));
        assert_eq!(t.share_elsewhere, Some(0.8));
        assert_eq!(t.to[0].region, "eu-central");
        assert_eq!(t.to[0].answers, 3);
        assert_eq!(out[1].traffic.absorbed, 3);
        assert_eq!(out[2].traffic.share_elsewhere, None);
        let summary = summary(&out);
        assert_eq!(summary.regions["healthy"], 1);
        assert_eq!(summary.regions["fallback"], 2);
        assert_eq!(summary.edges["active"], 1);
    }
}
