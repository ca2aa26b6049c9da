//! Cost of choosing an edge, against the cheapest possible choice measured in the same
//! run: a bare scan for the least-loaded active edge of the region (no fallback, no
//! explanation, no randomness).
//!
//! `cargo bench -p locus-locator --bench selection`
//!
//! Registry: 7 regions (the example `regions.yaml` layout) with 8 edges each, and the
//! same with 1,250 edges each (a region of the 5,000-edge fleet of `loadtest fleet`). Cases: the common one (the preferred region has headroom), a
//! saturated region spilling over its fallbacks, everything saturated, and the
//! `candidates` listing of the admin "explain" endpoint. Selection returns a structured
//! why; the "+ reason text" cases add the sentence an answer carries, so they compare
//! with what selection cost when it wrote that sentence itself.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use locus_geo::{Config, RegionIndex};
use locus_locator::edge_state::EdgeStatus;
use locus_locator::load::Live;
use locus_locator::selection::{RegionPlan, candidates, score, select_edge};
use locus_locator::snapshot::{EdgeView, RegistrySnapshot};
use locus_protocol::LoadReport;
use tokio::time::Instant;

const REGIONS: &str = r#"
default_region: us-east
regions:
  - { id: us-east, location: { lat: 39.0, lon: -77.5 }, fallback: [us-west, eu-west] }
  - { id: us-west, location: { lat: 45.6, lon: -121.2 }, fallback: [us-east] }
  - { id: eu-west, location: { lat: 53.35, lon: -6.26 }, fallback: [eu-central, us-east] }
  - { id: eu-central, location: { lat: 50.11, lon: 8.68 }, fallback: [eu-west] }
  - { id: ap-south, location: { lat: 19.08, lon: 72.88 }, fallback: [ap-southeast] }
  - { id: ap-southeast, location: { lat: 1.35, lon: 103.82 }, fallback: [ap-south] }
  - { id: sa-east, location: { lat: -23.55, lon: -46.63 }, fallback: [us-east] }
"#;

const EDGES_PER_REGION: u32 = 8;
/// The edges per region of a fleet of 5,000 edges over 4 regions (`loadtest fleet`).
const FLEET_EDGES_PER_REGION: u32 = 1_250;

/// Every edge at `sessions` of 1000, except eu-west's at `eu_west_sessions`.
fn snapshot(config: &Config, sessions: u32, eu_west_sessions: u32) -> RegistrySnapshot {
    sized(config, EDGES_PER_REGION, sessions, eu_west_sessions)
}

/// [`snapshot`] with `per_region` edges in each region.
fn sized(
    config: &Config,
    per_region: u32,
    sessions: u32,
    eu_west_sessions: u32,
) -> RegistrySnapshot {
    let now = Instant::now();
    let mut edges = Vec::new();
    for (region, r) in config.indexed_regions() {
        for i in 0..per_region {
            let base = if r.id == "eu-west" {
                eu_west_sessions
            } else {
                sessions
            };
            edges.push(EdgeView {
                id: format!("{}-e{i}", r.id).into(),
                region,
                public_url: format!("https://{}-e{i}.example.net", r.id).into(),
                capacity: 1000,
                version: "1.0.0".into(),
                status: EdgeStatus::registered(now, false, false),
                live: Live::new(
                    Some(LoadReport {
                        cpu: 0.3,
                        lag_ms: 3.0,
                        connections: base * 3,
                        sessions: base + (i % 8) * 7,
                        ..Default::default()
                    }),
                    i % 3,
                ),
            });
        }
    }
    RegistrySnapshot::new(edges)
}

/// The baseline: least-loaded active edge of the region, nothing else.
fn min_scan(snapshot: &RegistrySnapshot, region: RegionIndex) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (i, e) in snapshot.edges.iter().enumerate() {
        if e.region == region && e.status.takes_new_sessions() {
            let s = score(e);
            if best.is_none_or(|(b, _)| s < b) {
                best = Some((s, i));
            }
        }
    }
    best.map(|(_, i)| i)
}

fn bench(c: &mut Criterion) {
    let config = Config::parse(REGIONS, Path::new("bench.yaml")).expect("bench config");
    let plan = RegionPlan::new(&config);
    let normal = snapshot(&config, 400, 400);
    let spill = snapshot(&config, 400, 1000);
    let saturated = snapshot(&config, 1000, 1000);
    #[allow(non_snake_case)]
    let EU_WEST = config.region_index("eu-west").expect("eu-west");
    let mut rng = rand::rng();

    let mut g = c.benchmark_group("selection");
    g.bench_function("baseline: min scan of the region", |b| {
        b.iter(|| min_scan(black_box(&normal), black_box(EU_WEST)))
    });
    g.bench_function("select_edge: in region", |b| {
        b.iter(|| select_edge(black_box(&normal), &plan, EU_WEST, &mut rng))
    });
    // What an answer pays: the choice and its sentence (the `reason` of the answers).
    g.bench_function("select_edge + reason text: in region", |b| {
        b.iter(|| {
            select_edge(black_box(&normal), &plan, EU_WEST, &mut rng)
                .map(|s| s.detail(&normal, &config))
        })
    });
    g.bench_function("select_edge: region saturated, spill", |b| {
        b.iter(|| select_edge(black_box(&spill), &plan, EU_WEST, &mut rng))
    });
    g.bench_function("select_edge + reason text: region saturated, spill", |b| {
        b.iter(|| {
            select_edge(black_box(&spill), &plan, EU_WEST, &mut rng)
                .map(|s| s.detail(&spill, &config))
        })
    });
    g.bench_function("select_edge: all saturated", |b| {
        b.iter(|| select_edge(black_box(&saturated), &plan, EU_WEST, &mut rng))
    });
    // The per-answer cost must not grow with the edges of the region.
    let fleet = sized(&config, FLEET_EDGES_PER_REGION, 400, 400);
    g.bench_function("select_edge: in region, 1,250 edges per region", |b| {
        b.iter(|| select_edge(black_box(&fleet), &plan, EU_WEST, &mut rng))
    });
    g.bench_function(
        "baseline: min scan of the region, 1,250 edges per region",
        |b| b.iter(|| min_scan(black_box(&fleet), black_box(EU_WEST))),
    );
    g.bench_function("candidates (explain)", |b| {
        b.iter(|| candidates(black_box(&normal), &plan, EU_WEST))
    });
    g.bench_function("RegionPlan::new", |b| {
        b.iter(|| RegionPlan::new(black_box(&config)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
