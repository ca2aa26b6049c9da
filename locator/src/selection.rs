//! Edge selection: functions over a [`RegistrySnapshot`] and its edges' live loads.
//!
//! No I/O, no clock, no global randomness: the random source is passed in, so a given
//! snapshot, plan, preferred region and seed always give the same answer while the
//! edges' loads stay as they are.
//!
//! An answer reads no more than it needs: the snapshot's counts of each region's edges
//! by state, each region's live tally of its active edges with headroom (how many, how
//! much headroom; see [`crate::load`]) and the loads of the edges it draws. Its cost
//! does not grow with the edges of a region (measured: `benches/selection.rs`), except
//! in the two cases that read a whole region: drawing from a region whose active edges
//! have less than 1/16 headroom on average, and rules 5 and 6 (nothing has headroom).
//!
//! # How an edge is chosen
//!
//! 1. **Score** every edge: its utilisation, the bottleneck of sessions (reported plus
//!    assigned since the last report), CPU, event-loop lag, connections and, for an edge
//!    that names a `--max-bitrate`, its forwarded WebRTC bitrate, each against what
//!    counts as "full" ([`score`]). Saturated means score >= 1.0: no headroom, so an edge
//!    at its bitrate cap gets no new session even with few sessions, exactly like an
//!    edge at its session capacity.
//! 2. **In the preferred region**, among edges that take new sessions (active) and have
//!    headroom, draw two distinct ones at random (weighted by headroom) and take the
//!    less loaded ("power of two choices"). Several locators and bursts act on the same stale
//!    reports: pure "pick the minimum" sends them all to the same edge, while two random
//!    choices plus the live count of assignments since the last report spread them. The
//!    caller must call [`EdgeView::note_assignment`] on the chosen edge.
//! 3. **Region unavailable** (no active edge): the first region with headroom in
//!    [`RegionPlan::order`]: the configured fallback list in order, then the remaining
//!    regions by great-circle distance.
//! 4. **Region saturated** (active edges, none with headroom): spill over the region's
//!    configured fallbacks that have headroom, each drawn with probability proportional
//!    to its total headroom, so the overflow is spread rather than tipped onto the first
//!    fallback; when none of them has headroom, the nearest other region with headroom.
//! 5. **Nothing has headroom anywhere**: the least-loaded active edge, preferred region
//!    first, then plan order.
//! 6. **No active edge anywhere**: a suspended edge (it still serves), then a draining
//!    one, each least-loaded, preferred region first. Failed and link-lost edges never
//!    receive a new session.
//!
//! Every [`Selection`] says which rule applied and why as data, not text: a [`Why`]
//! holds the [`Rule`] with the figures that decided it (the preferred region's edges by
//! state, how the fallback or spill region was reached with the regions weighed and their
//! headroom, how the edge was picked and its load), and [`SelectReason`] is the rule's
//! stable code. Words are written only when an answer needs them:
//! [`Selection::explain`] renders the sentence of the answers' `reason`, naming regions
//! and edges. [`candidates`] lists every edge considered for the admin "explain"
//! endpoint, with a [`NotEligible`] for each one that may not be chosen.

use locus_geo::{Config, RegionIndex, great_circle_km};
use rand::Rng;
use serde::Serialize;

use crate::edge_state::EdgeState;
pub use crate::load::{
    Bottleneck, CONNECTIONS_PER_SESSION, CPU_FULL, LAG_FULL_MS, Utilisation, headroom_of,
};
use crate::load::{Figures, utilisation_of};
use crate::snapshot::{EdgeView, RegistrySnapshot};

/// Candidate regions for each region, in order of preference. Built once per [`Config`]
/// (rebuild it on reload, together with the snapshot's region indices).
#[derive(Debug, Clone)]
pub struct RegionPlan {
    /// Per region: the region itself, its configured fallbacks in order, then the others
    /// by great-circle distance (ties: file order).
    orders: Vec<Vec<RegionIndex>>,
    /// Per region: the number of configured fallbacks (`orders[r][1..=n]`).
    explicit: Vec<usize>,
}

impl RegionPlan {
    pub fn new(config: &Config) -> RegionPlan {
        let n = config.regions.len();
        let mut orders = Vec::with_capacity(n);
        let mut explicit = Vec::with_capacity(n);
        for (r, region) in config.indexed_regions() {
            let mut order = Vec::with_capacity(n);
            order.push(r);
            // A validated config has no self-reference, duplicate or unknown index in a
            // fallback list; a hand-built one might, and the plan must stay a permutation.
            for &f in &region.fallback {
                if f.get() < n && !order.contains(&f) {
                    order.push(f);
                }
            }
            explicit.push(order.len() - 1);
            let mut rest: Vec<(f64, RegionIndex)> = config
                .indexed_regions()
                .filter(|(i, _)| !order.contains(i))
                .map(|(i, other)| (great_circle_km(region.location, other.location), i))
                .collect();
            // Stable sort: equal distances keep file order.
            rest.sort_by(|a, b| a.0.total_cmp(&b.0));
            order.extend(rest.into_iter().map(|(_, i)| i));
            orders.push(order);
        }
        RegionPlan { orders, explicit }
    }

    /// Candidate regions for `region`, most preferred first (starts with `region`
    /// itself). Empty for an unknown index.
    pub fn order(&self, region: RegionIndex) -> &[RegionIndex] {
        self.orders.get(region.get()).map_or(&[], Vec::as_slice)
    }

    /// The configured fallback list of `region`, in order. Empty for an unknown index.
    pub fn explicit_fallbacks(&self, region: RegionIndex) -> &[RegionIndex] {
        match (
            self.orders.get(region.get()),
            self.explicit.get(region.get()),
        ) {
            (Some(order), Some(&n)) => &order[1..=n],
            _ => &[],
        }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }
}

/// Why the answer is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectReason {
    /// An edge of the preferred region with headroom.
    InRegion,
    /// The preferred region has no active edge.
    RegionUnavailable,
    /// The preferred region has active edges but none with headroom: spilled.
    RegionSaturated,
    /// No headroom anywhere: the least-loaded active edge, preferred region first.
    AllSaturated,
    /// No active edge anywhere: a suspended edge (it still serves).
    OnlySuspended,
    /// No active or suspended edge anywhere: a draining edge.
    OnlyDraining,
}

impl SelectReason {
    pub const ALL: [SelectReason; 6] = [
        SelectReason::InRegion,
        SelectReason::RegionUnavailable,
        SelectReason::RegionSaturated,
        SelectReason::AllSaturated,
        SelectReason::OnlySuspended,
        SelectReason::OnlyDraining,
    ];

    /// The kebab-case name, as serialized (metrics labels, JSON answers).
    pub fn as_str(self) -> &'static str {
        match self {
            SelectReason::InRegion => "in-region",
            SelectReason::RegionUnavailable => "region-unavailable",
            SelectReason::RegionSaturated => "region-saturated",
            SelectReason::AllSaturated => "all-saturated",
            SelectReason::OnlySuspended => "only-suspended",
            SelectReason::OnlyDraining => "only-draining",
        }
    }
}

impl std::fmt::Display for SelectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The chosen edge and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Index into `snapshot.edges`.
    pub edge: usize,
    /// The chosen edge's region (in the config of the snapshot and plan).
    pub region: RegionIndex,
    /// `region != why.preferred`.
    pub fallback: bool,
    /// The code of `why.rule` ([`Rule::reason`]).
    pub reason: SelectReason,
    /// The rule and the figures that decided; [`Selection::explain`] puts it in words.
    pub why: Why,
}

/// Why an edge may not be chosen in normal operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotEligible {
    /// Active, but no headroom; the dimension that sets its score.
    Saturated(Bottleneck),
    /// Not active: the state says what it still takes.
    State(EdgeState),
}

impl NotEligible {
    /// The sentence of the "explain" endpoint's `why_not`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotEligible::Saturated(Bottleneck::Sessions) => {
                "saturated: no headroom (sessions at its capacity)"
            }
            NotEligible::Saturated(Bottleneck::Cpu) => {
                "saturated: no headroom (CPU at 90% or more)"
            }
            NotEligible::Saturated(Bottleneck::Lag) => {
                "saturated: no headroom (event-loop lag at 200 ms or more)"
            }
            NotEligible::Saturated(Bottleneck::Connections) => {
                "saturated: no headroom (connections at 10 per unit of capacity)"
            }
            NotEligible::Saturated(Bottleneck::Bitrate) => {
                "saturated: no headroom (forwarded bitrate at or above its --max-bitrate)"
            }
            NotEligible::State(EdgeState::Suspended) => {
                "suspended: new sessions only when no active edge exists anywhere"
            }
            NotEligible::State(EdgeState::Draining) => {
                "draining: new sessions only when nothing else is left"
            }
            NotEligible::State(EdgeState::Suspect) => {
                "suspect: heartbeats late; only joins of its existing sessions"
            }
            NotEligible::State(EdgeState::LinkLost) => {
                "link lost: only joins of its existing sessions"
            }
            NotEligible::State(EdgeState::Failed) => "failed: no sessions at all",
            // Never built: an active edge is either eligible or saturated.
            NotEligible::State(EdgeState::Active) => "active",
        }
    }
}

/// Serialized as its sentence, as the "explain" endpoint shows it.
impl Serialize for NotEligible {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for NotEligible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One edge as the "explain" endpoint shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// Index into `snapshot.edges`.
    pub edge: usize,
    pub region: RegionIndex,
    pub state: EdgeState,
    pub score: f64,
    /// What sets the score.
    pub bottleneck: Bottleneck,
    pub headroom: f64,
    /// Active with headroom: may be chosen in normal operation.
    pub eligible: bool,
    /// Why not eligible (`None` when eligible).
    pub why_not: Option<NotEligible>,
}

/// Utilisation of an edge: 0.0 idle, 1.0 at capacity; the bottleneck (maximum) of
/// sessions (reported + assigned since the report) against capacity, CPU against
/// [`CPU_FULL`], lag against [`LAG_FULL_MS`], connections against
/// `capacity * CONNECTIONS_PER_SESSION` and the busier direction of the forwarded WebRTC
/// bitrate (`max(bitrate_in, bitrate_out)`) against the edge's `max_bitrate` (none: no
/// bitrate dimension). Without a report yet, the load counts as zero (sessions =
/// assignments since registration). Capacity 0 counts as 1.
///
/// Sessions assigned since the last report add to the session count but not to the
/// bitrate: what a new session will send is unknown until it sends it, and the next
/// report (every 2 s by default) carries it.
pub fn score(edge: &EdgeView) -> f64 {
    utilisation(edge).score()
}

/// Every dimension of [`score`].
pub fn utilisation(edge: &EdgeView) -> Utilisation {
    let figures = edge.figures();
    utilisation_of(edge.capacity, figures.load.as_ref(), figures.pending)
}

/// `1.0 - score`, floored at 0.
pub fn headroom(edge: &EdgeView) -> f64 {
    headroom_of(score(edge))
}

/// Lists the edges of every region in `plan.order(preferred_region)`, region by region
/// (edges in snapshot order within a region), with their score and eligibility.
pub fn candidates(
    snapshot: &RegistrySnapshot,
    plan: &RegionPlan,
    preferred_region: RegionIndex,
) -> Vec<Candidate> {
    let mut out = Vec::with_capacity(snapshot.edges.len());
    for &region in plan.order(preferred_region) {
        for &i in snapshot.in_region(region) {
            let edge = &snapshot.edges[i];
            let state = edge.status.state();
            let utilisation = utilisation(edge);
            let score = utilisation.score();
            let bottleneck = utilisation.bottleneck();
            let headroom = headroom_of(score);
            let why_not = match state {
                EdgeState::Active if headroom > 0.0 => None,
                EdgeState::Active => Some(NotEligible::Saturated(bottleneck)),
                other => Some(NotEligible::State(other)),
            };
            out.push(Candidate {
                edge: i,
                region,
                state,
                score,
                bottleneck,
                headroom,
                eligible: why_not.is_none(),
                why_not,
            });
        }
    }
    out
}

/// One edge as read by one call of [`select_edge`]: its figures read once, so a
/// concurrent report or assignment cannot make the same call see two different loads.
#[derive(Debug, Clone, Copy)]
struct Seen {
    score: f64,
    pending: u32,
}

impl Seen {
    fn headroom(&self) -> f64 {
        headroom_of(self.score)
    }

    /// Ordering key: lower is better. Ties on score go to fewer pending assignments, then
    /// the lower index, so equal edges give a deterministic answer.
    fn better_than(&self, self_index: usize, other: &Seen, other_index: usize) -> bool {
        self.score
            .total_cmp(&other.score)
            .then(self.pending.cmp(&other.pending))
            .then(self_index.cmp(&other_index))
            .is_lt()
    }
}

/// A draw in proportion to headroom tries edges of the region's active ones at random,
/// keeping each with probability its headroom, while that costs at most this many reads
/// on average (active edges / their total headroom); past it, or when that many tries
/// found nothing, the region's edges with headroom are read and one drawn from them.
const MAX_EXPECTED_TRIES: f64 = 16.0;
const MAX_TRIES: u32 = 128;

/// What one call of [`select_edge`] reads: the snapshot's regions (their counts by state,
/// their live tallies) and the live loads of the edges it draws.
struct Survey<'a> {
    snapshot: &'a RegistrySnapshot,
}

impl Survey<'_> {
    fn read(&self, i: usize) -> Seen {
        let edge = &self.snapshot.edges[i];
        let Figures { load, pending } = edge.figures();
        Seen {
            score: utilisation_of(edge.capacity, load.as_ref(), pending).score(),
            pending,
        }
    }

    /// The edges of `region` by state.
    fn states(&self, region: RegionIndex) -> StateCounts {
        let r = self.snapshot.region(region);
        StateCounts {
            active: r.count(EdgeState::Active),
            suspended: r.count(EdgeState::Suspended),
            draining: r.count(EdgeState::Draining),
            suspect: r.count(EdgeState::Suspect),
            link_lost: r.count(EdgeState::LinkLost),
            failed: r.count(EdgeState::Failed),
        }
    }

    /// Active edges of `region` with headroom.
    fn with_headroom(&self, region: RegionIndex) -> u32 {
        self.snapshot.region(region).tally.with_headroom()
    }

    /// Whether `region` has an active edge with headroom.
    fn has_headroom(&self, region: RegionIndex) -> bool {
        self.with_headroom(region) > 0
    }

    /// The total headroom of `region`'s active edges.
    fn headroom(&self, region: RegionIndex) -> f64 {
        self.snapshot.region(region).tally.headroom()
    }

    /// Power of two choices among the eligible edges of `region` (which has at least
    /// one): two distinct edges drawn at random, each with probability proportional to
    /// its headroom, and the less loaded of the two. Returns the edge, what was read of
    /// it and how it was picked; `None` when the draws found no edge with headroom (a
    /// concurrent assignment took the last of it).
    ///
    /// Why weighted draws rather than uniform ones: with uniform draws an edge can only
    /// win when it is in the pair (2/n of the time), so a freshly started edge among
    /// loaded ones catches up slowly (measured in `tests/selection.rs`: 1,000 creates
    /// over four half-full edges and an empty one leave it at 384 sessions against 654,
    /// max/mean 1.09; weighted: 548 against 613, 1.02). Equal edges are drawn uniformly
    /// either way, and the rule stays proportional rather than "everyone picks the
    /// minimum", so replicas acting on the same stale figures do not herd.
    fn two_choices(&self, region: RegionIndex, rng: &mut impl Rng) -> Option<(usize, Seen, How)> {
        let n = self.with_headroom(region);
        let a = self.draw(region, None, rng)?;
        if n <= 1 {
            return Some((a.0, a.1, How::Only));
        }
        let Some(b) = self.draw(region, Some(a.0), rng) else {
            return Some((a.0, a.1, How::Only));
        };
        let chosen = if b.1.better_than(b.0, &a.1, a.0) {
            b
        } else {
            a
        };
        Some((chosen.0, chosen.1, How::TwoOf(n)))
    }

    /// One active edge of `region` with headroom other than `exclude`, drawn with
    /// probability proportional to its headroom; `None` when there is none.
    ///
    /// Drawing an active edge uniformly and keeping it with probability its headroom
    /// (at most 1) gives each edge exactly its share of the total headroom, at a cost
    /// independent of the region's size while the edges have headroom; a region nearly
    /// full is read whole instead ([`MAX_EXPECTED_TRIES`]).
    fn draw(
        &self,
        region: RegionIndex,
        exclude: Option<usize>,
        rng: &mut impl Rng,
    ) -> Option<(usize, Seen)> {
        let active = &self.snapshot.region(region).active;
        let total = self.headroom(region);
        if !active.is_empty() && active.len() as f64 <= total * MAX_EXPECTED_TRIES {
            for _ in 0..MAX_TRIES {
                let i = active[rng.random_range(0..active.len())];
                if Some(i) == exclude {
                    continue;
                }
                let seen = self.read(i);
                if rng.random::<f64>() < seen.headroom() {
                    return Some((i, seen));
                }
            }
        }
        let open: Vec<(usize, Seen)> = active
            .iter()
            .filter(|&&i| Some(i) != exclude)
            .map(|&i| (i, self.read(i)))
            .filter(|(_, seen)| seen.headroom() > 0.0)
            .collect();
        let total: f64 = open.iter().map(|(_, seen)| seen.headroom()).sum();
        let mut x = rng.random::<f64>() * total;
        for &(i, seen) in &open {
            if x < seen.headroom() {
                return Some((i, seen));
            }
            x -= seen.headroom();
        }
        // Rounding left `x` past the end: the last candidate.
        open.last().copied()
    }

    /// The least-loaded edge in `state` of the first region of `order` that has one (its
    /// edges are read: this serves only when no region has headroom).
    fn least_loaded(&self, order: &[RegionIndex], state: EdgeState) -> Option<(usize, Seen)> {
        let region = *order
            .iter()
            .find(|&&r| self.snapshot.region(r).count(state) > 0)?;
        let mut best: Option<(usize, Seen)> = None;
        for &i in &self.snapshot.region(region).all {
            if self.snapshot.edges[i].status.state() != state {
                continue;
            }
            let seen = self.read(i);
            match best {
                Some((b, best_seen)) if !seen.better_than(i, &best_seen, b) => {}
                _ => best = Some((i, seen)),
            }
        }
        best
    }
}

fn region_id(config: &Config, region: RegionIndex) -> &str {
    config
        .region_at(region)
        .map_or("(unknown region)", |r| r.id.as_str())
}

/// How an edge was picked within its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The region's only edge with headroom.
    Only,
    /// The less loaded of two edges drawn by headroom among this many with headroom.
    TwoOf(u32),
}

/// A region's edges by state, as one selection saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub active: u32,
    pub suspended: u32,
    pub draining: u32,
    pub suspect: u32,
    pub link_lost: u32,
    pub failed: u32,
}

impl StateCounts {
    pub fn count(&self, state: EdgeState) -> u32 {
        match state {
            EdgeState::Active => self.active,
            EdgeState::Suspended => self.suspended,
            EdgeState::Draining => self.draining,
            EdgeState::Suspect => self.suspect,
            EdgeState::LinkLost => self.link_lost,
            EdgeState::Failed => self.failed,
        }
    }
}

/// How an unavailable region's client reached another region.
#[derive(Debug, Clone, PartialEq)]
pub enum Fallback {
    /// The first of the region's configured fallbacks with headroom.
    FirstConfigured,
    /// None of the configured fallbacks (listed; empty when it has none) has headroom:
    /// the nearest region that has.
    Nearest { fallbacks: Vec<RegionIndex> },
}

/// How a saturated region's overflow region was chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Spill {
    /// The only configured fallback with headroom.
    OnlyFallback,
    /// Drawn with probability proportional to headroom among the configured fallbacks
    /// that have some: `(region, its total headroom)`, in fallback order.
    Drawn { among: Vec<(RegionIndex, f64)> },
    /// None of the configured fallbacks (listed; empty when it has none) has headroom:
    /// the nearest region that has.
    Nearest { fallbacks: Vec<RegionIndex> },
}

/// The rule that chose the edge, with the figures that decided it. `preferred` counts
/// are the client's region's edges as this selection saw them.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// An edge of the preferred region with headroom.
    InRegion { how: How },
    /// The preferred region has no active edge: a fallback region with headroom.
    RegionUnavailable {
        preferred: StateCounts,
        fallback: Fallback,
        how: How,
    },
    /// The preferred region has active edges (`active`), none with headroom: spilled.
    RegionSaturated { active: u32, spill: Spill, how: How },
    /// No headroom anywhere: the least-loaded active edge of the preferred region, or of
    /// the first region in plan order that has an active edge.
    AllSaturated { preferred: StateCounts },
    /// No active edge anywhere: the least-loaded edge in `state` (suspended, else
    /// draining), which still serves sessions.
    LastResort {
        state: EdgeState,
        preferred: StateCounts,
    },
}

impl Rule {
    /// The rule's stable code.
    pub fn reason(&self) -> SelectReason {
        match self {
            Rule::InRegion { .. } => SelectReason::InRegion,
            Rule::RegionUnavailable { .. } => SelectReason::RegionUnavailable,
            Rule::RegionSaturated { .. } => SelectReason::RegionSaturated,
            Rule::AllSaturated { .. } => SelectReason::AllSaturated,
            Rule::LastResort {
                state: EdgeState::Suspended,
                ..
            } => SelectReason::OnlySuspended,
            Rule::LastResort { .. } => SelectReason::OnlyDraining,
        }
    }
}

/// Why a [`Selection`] is what it is: codes and figures, no text. [`Selection::explain`]
/// renders it for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Why {
    /// The client's region.
    pub preferred: RegionIndex,
    /// The chosen edge's score (load) as this selection saw it.
    pub load: f64,
    pub rule: Rule,
}

impl Selection {
    fn new(snapshot: &RegistrySnapshot, edge: usize, why: Why) -> Selection {
        let region = snapshot.edges[edge].region;
        Selection {
            edge,
            region,
            fallback: region != why.preferred,
            reason: why.rule.reason(),
            why,
        }
    }

    /// The selection in words, for the answers' `reason` and logs: names regions and
    /// edges by id (from the snapshot and config it was made with), nothing secret.
    pub fn explain<'a>(
        &'a self,
        snapshot: &'a RegistrySnapshot,
        config: &'a Config,
    ) -> Explained<'a> {
        Explained {
            selection: self,
            snapshot,
            config,
        }
    }

    /// [`Selection::explain`] as a `String`, sized for the common answer.
    pub fn detail(&self, snapshot: &RegistrySnapshot, config: &Config) -> String {
        // The common answer ("in <region>: picked <edge> (load 42%), the less loaded of
        // two picks …") is about 130 bytes with short ids.
        let mut text = String::with_capacity(192);
        // Writing to a String cannot fail.
        let _ = std::fmt::Write::write_fmt(
            &mut text,
            format_args!("{}", self.explain(snapshot, config)),
        );
        text
    }
}

/// A [`Selection`] with the names it is rendered with; `Display` writes the sentence.
/// Only `write_str` pieces and `itoa` numbers: this text is built for every answer.
#[derive(Debug, Clone, Copy)]
pub struct Explained<'a> {
    selection: &'a Selection,
    snapshot: &'a RegistrySnapshot,
    config: &'a Config,
}

impl Explained<'_> {
    fn region(&self, region: RegionIndex) -> &str {
        region_id(self.config, region)
    }

    fn edge(&self) -> &str {
        self.snapshot
            .edges
            .get(self.selection.edge)
            .map_or("(unknown edge)", |e| &e.id)
    }

    /// "picked e1 (load 42%), " and how.
    fn picked(&self, f: &mut impl std::fmt::Write, how: How) -> std::fmt::Result {
        self.picked_load(f)?;
        f.write_str(", ")?;
        match how {
            How::Only => f.write_str("its only edge with headroom"),
            How::TwoOf(n) => {
                f.write_str("the less loaded of two picks drawn by headroom among its ")?;
                f.write_str(itoa::Buffer::new().format(n))?;
                f.write_str(" edges with headroom")
            }
        }
    }

    /// "picked e1 (load 42%)".
    fn picked_load(&self, f: &mut impl std::fmt::Write) -> std::fmt::Result {
        f.write_str("picked ")?;
        f.write_str(self.edge())?;
        f.write_str(" (load ")?;
        percent(f, self.selection.why.load)?;
        f.write_str(")")
    }

    /// "none of its fallbacks (a, b) has headroom", or "it has no configured fallback".
    fn no_fallback(
        &self,
        f: &mut impl std::fmt::Write,
        fallbacks: &[RegionIndex],
    ) -> std::fmt::Result {
        if fallbacks.is_empty() {
            return f.write_str("it has no configured fallback");
        }
        f.write_str("none of its fallbacks (")?;
        for (i, &r) in fallbacks.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(self.region(r))?;
        }
        f.write_str(") has headroom")
    }
}

/// A score as a load percentage: "42%".
fn percent(f: &mut impl std::fmt::Write, score: f64) -> std::fmt::Result {
    let p = (score * 100.0).round();
    if p.is_finite() && (0.0..1e12).contains(&p) {
        f.write_str(itoa::Buffer::new().format(p as u64))?;
    } else {
        write!(f, "{p}")?;
    }
    f.write_str("%")
}

/// "1 failed, 1 suspended", or "no edges registered".
impl std::fmt::Display for StateCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (n, what) in [
            (self.active, "active"),
            (self.failed, "failed"),
            (self.link_lost, "link-lost"),
            (self.suspect, "suspect"),
            (self.draining, "draining"),
            (self.suspended, "suspended"),
        ] {
            if n > 0 {
                if !first {
                    f.write_str(", ")?;
                }
                f.write_str(itoa::Buffer::new().format(n))?;
                f.write_str(" ")?;
                f.write_str(what)?;
                first = false;
            }
        }
        if first {
            f.write_str("no edges registered")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Explained<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.render(f)
    }
}

impl Explained<'_> {
    /// The sentence, written into any `fmt::Write`: monomorphised for the `String` of
    /// [`Selection::detail`], so the common answer's text costs plain appends.
    fn render(&self, f: &mut impl std::fmt::Write) -> std::fmt::Result {
        let why = &self.selection.why;
        let pref = self.region(why.preferred);
        let rid = self.region(self.selection.region);
        match &why.rule {
            Rule::InRegion { how } => {
                f.write_str("in ")?;
                f.write_str(pref)?;
                f.write_str(": ")?;
                self.picked(f, *how)
            }
            Rule::RegionUnavailable {
                preferred,
                fallback,
                how,
            } => {
                write!(f, "{pref} has no active edge ({preferred}); ")?;
                match fallback {
                    Fallback::FirstConfigured => {
                        f.write_str(rid)?;
                        f.write_str(" is its first fallback with headroom")?;
                    }
                    Fallback::Nearest { fallbacks } => {
                        self.no_fallback(f, fallbacks)?;
                        f.write_str("; ")?;
                        f.write_str(rid)?;
                        f.write_str(" is the nearest region with headroom")?;
                    }
                }
                f.write_str("; ")?;
                self.picked(f, *how)
            }
            Rule::RegionSaturated { active, spill, how } => {
                f.write_str(pref)?;
                f.write_str(" is saturated (")?;
                f.write_str(itoa::Buffer::new().format(*active))?;
                f.write_str(if *active == 1 {
                    " active edge"
                } else {
                    " active edges"
                })?;
                f.write_str(", none with headroom); ")?;
                match spill {
                    Spill::Nearest { fallbacks } => {
                        self.no_fallback(f, fallbacks)?;
                        write!(f, "; spilled to {rid}, the nearest region with headroom")?;
                    }
                    Spill::OnlyFallback => {
                        write!(f, "spilled to {rid}, its only fallback with headroom")?;
                    }
                    Spill::Drawn { among } => {
                        write!(
                            f,
                            "spilled to {rid}, drawn in proportion to headroom among its fallbacks ("
                        )?;
                        for (i, &(r, headroom)) in among.iter().enumerate() {
                            if i > 0 {
                                f.write_str(", ")?;
                            }
                            write!(f, "{} {headroom:.2}", self.region(r))?;
                        }
                        f.write_str(")")?;
                    }
                }
                f.write_str("; ")?;
                self.picked(f, *how)
            }
            Rule::AllSaturated { preferred } => {
                if self.selection.region == why.preferred {
                    write!(f, "no region has headroom ({pref}: {preferred})")?;
                } else {
                    write!(
                        f,
                        "no region has headroom and {pref} has no active edge ({preferred}); {rid} is the first region in fallback order with one"
                    )?;
                }
                f.write_str("; ")?;
                self.picked_load(f)?;
                f.write_str(", the least loaded active edge of ")?;
                f.write_str(rid)
            }
            Rule::LastResort { state, preferred } => {
                write!(
                    f,
                    "no edge anywhere takes new sessions ({pref}: {preferred}); "
                )?;
                self.picked_load(f)?;
                f.write_str(", the least loaded ")?;
                f.write_str(state.as_str())?;
                f.write_str(" edge of ")?;
                f.write_str(rid)?;
                f.write_str(", which still serves sessions")
            }
        }
    }
}

/// Chooses the edge for a new session of a client whose region is `preferred_region`.
///
/// `plan` must be built from the same config as the snapshot's region indices. `None`
/// when no edge anywhere can take a session (or `preferred_region` is not a region of
/// the plan). The caller then calls `snapshot.edges[sel.edge].note_assignment()`.
///
/// The rules are tried in order (see the module docs), each a function of the survey:
/// [`in_region`], [`elsewhere`], [`least_loaded_active`], [`last_resort`]. The regions'
/// counts and tallies decide which rule applies; only the edges drawn are read, so the
/// cost of an answer does not grow with the edges of a region, except when no region
/// has headroom (the least loaded edge is looked for) or the region drawn from is nearly
/// full ([`Survey::draw`]).
pub fn select_edge(
    snapshot: &RegistrySnapshot,
    plan: &RegionPlan,
    preferred_region: RegionIndex,
    rng: &mut impl Rng,
) -> Option<Selection> {
    let order = plan.order(preferred_region);
    if order.is_empty() {
        return None;
    }
    let survey = Survey { snapshot };
    let (edge, seen, rule) = in_region(&survey, preferred_region, rng)
        .or_else(|| elsewhere(&survey, plan, preferred_region, rng))
        .or_else(|| least_loaded_active(&survey, order, preferred_region))
        .or_else(|| last_resort(&survey, order, preferred_region))?;
    let why = Why {
        preferred: preferred_region,
        load: seen.score,
        rule,
    };
    Some(Selection::new(snapshot, edge, why))
}

/// Rule 2: the preferred region has headroom.
fn in_region(
    survey: &Survey,
    preferred: RegionIndex,
    rng: &mut impl Rng,
) -> Option<(usize, Seen, Rule)> {
    if !survey.has_headroom(preferred) {
        return None;
    }
    let (edge, seen, how) = survey.two_choices(preferred, rng)?;
    Some((edge, seen, Rule::InRegion { how }))
}

/// Rules 3 and 4: another region with headroom, for a region without active edges (the
/// first in plan order) or a saturated one (spilled).
fn elsewhere(
    survey: &Survey,
    plan: &RegionPlan,
    preferred: RegionIndex,
    rng: &mut impl Rng,
) -> Option<(usize, Seen, Rule)> {
    let order = plan.order(preferred);
    let explicit = plan.explicit_fallbacks(preferred);
    let counts = survey.states(preferred);
    if counts.active == 0 {
        let region = *order[1..].iter().find(|&&r| survey.has_headroom(r))?;
        let fallback = if explicit.contains(&region) {
            Fallback::FirstConfigured
        } else {
            Fallback::Nearest {
                fallbacks: explicit.to_vec(),
            }
        };
        let (edge, seen, how) = survey.two_choices(region, rng)?;
        let rule = Rule::RegionUnavailable {
            preferred: counts,
            fallback,
            how,
        };
        return Some((edge, seen, rule));
    }
    let (region, spill) = spill_region(survey, explicit, &order[1 + explicit.len()..], rng)?;
    let (edge, seen, how) = survey.two_choices(region, rng)?;
    let rule = Rule::RegionSaturated {
        active: counts.active,
        spill,
        how,
    };
    Some((edge, seen, rule))
}

/// The region a saturated region's overflow goes to: among its configured fallbacks with
/// headroom, in proportion to headroom; when none has any, the nearest region (of
/// `by_distance`) that has.
fn spill_region(
    survey: &Survey,
    explicit: &[RegionIndex],
    by_distance: &[RegionIndex],
    rng: &mut impl Rng,
) -> Option<(RegionIndex, Spill)> {
    let open: Vec<RegionIndex> = explicit
        .iter()
        .copied()
        .filter(|&r| survey.has_headroom(r))
        .collect();
    match open.as_slice() {
        [] => by_distance
            .iter()
            .copied()
            .find(|&r| survey.has_headroom(r))
            .map(|r| {
                let fallbacks = explicit.to_vec();
                (r, Spill::Nearest { fallbacks })
            }),
        [only] => Some((*only, Spill::OnlyFallback)),
        several => {
            let among: Vec<(RegionIndex, f64)> =
                several.iter().map(|&r| (r, survey.headroom(r))).collect();
            let total: f64 = among.iter().map(|(_, h)| h).sum();
            let mut x = rng.random::<f64>() * total;
            let mut region = several[several.len() - 1];
            for &(r, h) in &among {
                if x < h {
                    region = r;
                    break;
                }
                x -= h;
            }
            Some((region, Spill::Drawn { among }))
        }
    }
}

/// Rule 5: no headroom anywhere: the least-loaded active edge, preferred region first.
fn least_loaded_active(
    survey: &Survey,
    order: &[RegionIndex],
    preferred: RegionIndex,
) -> Option<(usize, Seen, Rule)> {
    let (edge, seen) = survey.least_loaded(order, EdgeState::Active)?;
    let preferred = survey.states(preferred);
    Some((edge, seen, Rule::AllSaturated { preferred }))
}

/// Rule 6: no active edge anywhere: a suspended edge, else a draining one.
fn last_resort(
    survey: &Survey,
    order: &[RegionIndex],
    preferred: RegionIndex,
) -> Option<(usize, Seen, Rule)> {
    let preferred = survey.states(preferred);
    [EdgeState::Suspended, EdgeState::Draining]
        .into_iter()
        .find_map(|state| {
            let (edge, seen) = survey.least_loaded(order, state)?;
            Some((edge, seen, Rule::LastResort { state, preferred }))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_protocol::LoadReport;
    use std::path::Path;
    use tokio::time::Instant;

    use crate::edge_state::EdgeStatus;
    use crate::load::Live;

    fn edge(capacity: u32, load: Option<LoadReport>, pending: u32) -> EdgeView {
        EdgeView {
            id: "e".into(),
            region: RegionIndex::for_tests(0),
            public_url: "http://e".into(),
            capacity,
            version: "1".into(),
            status: EdgeStatus::registered(Instant::now(), false, false),
            live: Live::new(load, pending),
        }
    }

    fn report(cpu: f32, lag_ms: f32, connections: u32, sessions: u32) -> Option<LoadReport> {
        Some(LoadReport {
            cpu,
            lag_ms,
            connections,
            sessions,
            ..Default::default()
        })
    }

    #[test]
    fn the_score_is_the_bottleneck_dimension() {
        assert_eq!(score(&edge(100, None, 0)), 0.0);
        assert_eq!(
            score(&edge(100, None, 25)),
            0.25,
            "pending counts without a report"
        );
        assert_eq!(score(&edge(100, report(0.0, 0.0, 0, 40), 10)), 0.5);
        // f32 figures: 0.45 is not exact.
        let cpu = score(&edge(100, report(0.45, 0.0, 0, 10), 0));
        assert!((cpu - 0.5).abs() < 1e-6, "cpu / 0.9: {cpu}");
        assert_eq!(
            score(&edge(100, report(0.0, 150.0, 0, 10), 0)),
            0.75,
            "lag / 200"
        );
        assert_eq!(
            score(&edge(10, report(0.0, 0.0, 80, 1), 0)),
            0.8,
            "conns / cap*10"
        );
        assert_eq!(score(&edge(0, None, 1)), 1.0, "capacity 0 counts as 1");
        assert_eq!(headroom(&edge(0, None, 3)), 0.0, "floored");
        assert_eq!(headroom(&edge(100, None, 25)), 0.75);
        assert_eq!(score(&edge(100, report(f32::NAN, -5.0, 0, 0), 0)), 0.0);
        assert_eq!(
            headroom(&edge(100, report(0.0, f32::INFINITY, 0, 0), 0)),
            0.0
        );
    }

    #[test]
    fn bitrate_against_max_bitrate_is_a_dimension() {
        let rtc = |bitrate_in: u64, bitrate_out: u64, max_bitrate: Option<u64>| {
            Some(LoadReport {
                cpu: 0.0,
                lag_ms: 1.0,
                connections: 3,
                sessions: 1,
                rtc_peers: 3,
                bitrate_in,
                bitrate_out,
                max_bitrate,
                ..Default::default()
            })
        };
        // No cap: bitrate does not count, however high.
        let uncapped = edge(100, rtc(10_000_000_000, 0, None), 0);
        assert_eq!(score(&uncapped), 0.01);
        assert_eq!(utilisation(&uncapped).bottleneck(), Bottleneck::Sessions);
        // The busier direction against the cap: one session, yet 90% loaded.
        let near = edge(100, rtc(20_000_000, 180_000_000, Some(200_000_000)), 0);
        assert!((score(&near) - 0.9).abs() < 1e-9, "{}", score(&near));
        assert_eq!(utilisation(&near).bottleneck(), Bottleneck::Bitrate);
        let near_in = edge(100, rtc(150_000_000, 0, Some(200_000_000)), 0);
        assert!((score(&near_in) - 0.75).abs() < 1e-9);
        // Over the cap: saturated, no headroom, like sessions over capacity.
        let over = edge(100, rtc(0, 250_000_000, Some(200_000_000)), 0);
        assert!(score(&over) > 1.0);
        assert_eq!(headroom(&over), 0.0);
        // A cap of 0 (a buggy edge) means no cap rather than a division by zero.
        assert_eq!(score(&edge(100, rtc(1, 1, Some(0)), 0)), 0.01);
    }

    #[test]
    fn an_edge_over_its_bitrate_is_passed_over_and_explained() {
        let mut busy = edge(100, None, 0);
        busy.id = "busy".into();
        busy.live = Live::new(
            Some(LoadReport {
                sessions: 2,
                connections: 4,
                rtc_peers: 4,
                bitrate_in: 100_000_000,
                bitrate_out: 210_000_000,
                max_bitrate: Some(200_000_000),
                ..Default::default()
            }),
            0,
        );
        let mut calm = edge(100, report(0.2, 5.0, 200, 60), 0);
        calm.id = "calm".into();
        let snapshot = RegistrySnapshot::new(vec![busy, calm]);
        let text = r#"
default_region: a
regions:
  - id: a
    location: { lat: 0.0, lon: 0.0 }
"#;
        let config = Config::parse(text, Path::new("t.yaml")).expect("config");
        let plan = RegionPlan::new(&config);
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        for _ in 0..50 {
            let chosen = select_edge(&snapshot, &plan, RegionIndex::for_tests(0), &mut rng)
                .expect("an edge");
            assert_eq!(
                &*snapshot.edges[chosen.edge].id,
                "calm",
                "{}",
                chosen.explain(&snapshot, &config)
            );
            assert_eq!(chosen.reason, SelectReason::InRegion);
        }
        let listed = candidates(&snapshot, &plan, RegionIndex::for_tests(0));
        let busy = listed.iter().find(|c| c.edge == 0).expect("busy listed");
        assert!(!busy.eligible);
        assert_eq!(busy.bottleneck, Bottleneck::Bitrate);
        assert_eq!(
            busy.why_not,
            Some(NotEligible::Saturated(Bottleneck::Bitrate)),
            "{busy:?}"
        );
        assert!(
            busy.why_not
                .is_some_and(|w| w.as_str().contains("--max-bitrate"))
        );
        let calm = listed.iter().find(|c| c.edge == 1).expect("calm listed");
        assert!(calm.eligible);
        assert_eq!(calm.bottleneck, Bottleneck::Sessions);
    }

    #[test]
    fn the_plan_is_self_then_fallbacks_then_distance_with_file_order_ties() {
        let text = r#"
default_region: a
regions:
  - id: a
    location: { lat: 0.0, lon: 0.0 }
    fallback: [d]
  - id: b
    location: { lat: 0.0, lon: 20.0 }
  - id: c
    location: { lat: 0.0, lon: -20.0 }
  - id: d
    location: { lat: 0.0, lon: 100.0 }
  - id: e
    location: { lat: 0.0, lon: 10.0 }
"#;
        let config = Config::parse(text, Path::new("t.yaml")).expect("config");
        let plan = RegionPlan::new(&config);
        let ids = |order: &[RegionIndex]| -> Vec<usize> { order.iter().map(|r| r.get()).collect() };
        let at = RegionIndex::for_tests;
        assert_eq!(
            ids(plan.order(at(0))),
            [0, 3, 4, 1, 2],
            "b and c tie: file order"
        );
        assert_eq!(ids(plan.explicit_fallbacks(at(0))), [3]);
        assert_eq!(ids(plan.order(at(3))), [3, 1, 4, 0, 2]);
        assert!(plan.explicit_fallbacks(at(3)).is_empty());
        assert!(plan.order(at(9)).is_empty());
        assert!(plan.explicit_fallbacks(at(9)).is_empty());
    }

    #[test]
    fn reasons_serialize_as_their_names() {
        for r in SelectReason::ALL {
            let json = serde_json::to_string(&r).expect("serialize");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }
}
