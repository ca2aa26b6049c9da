//! One generation of routing: everything derived from one `regions.yaml` (the config,
//! its compiled GeoIP rules, the fallback plan, the TURN pools, the answer counters),
//! built once and never changed.
//!
//! The rule for regions: a region is referred to by a [`RegionIndex`], its position in
//! `config.regions`, valid only within the generation that produced it: a reload may
//! reorder, add or remove regions. Only `locus-geo` makes one (from a config's region
//! list, or by resolving a client with that config's rules), so it cannot be confused
//! with an edge index or a count. An answer is computed from one
//! [`crate::registry::Generation`] (a `Routing` and the registry snapshot built for it,
//! published together), and a region index is turned into a region only through
//! [`Routing::region`] of that same generation (`None` out of range, never a panic). This module imports nothing of the locator but the pure pieces a
//! generation is made of.

use std::sync::Arc;

use locus_geo::{Config, Region, RegionIndex, RegionRules};

use crate::metrics::AnswerCounters;
use crate::metrics::traffic::Traffic;
use crate::selection::RegionPlan;
use crate::turn::TurnPools;

/// Everything derived from one `regions.yaml`, swapped whole on reload.
#[derive(Debug)]
pub struct Routing {
    pub config: Config,
    /// The GeoIP rules of `config` (their region indices are this generation's).
    pub rules: Arc<RegionRules>,
    pub plan: RegionPlan,
    pub turn: TurnPools,
    /// `locator_answers_total` handles for this config's regions.
    pub answers: AnswerCounters,
    /// Answers by (client region, serving region) of this config's regions, for the admin
    /// page; shared with the next generation when its region list is the same.
    pub traffic: Arc<Traffic>,
}

impl Routing {
    pub fn new(config: Config) -> Routing {
        let traffic = Arc::new(Traffic::new(
            config.regions.iter().map(|r| r.id.clone()).collect(),
        ));
        Routing::with_traffic(config, traffic)
    }

    /// The generation after `previous`: the traffic counts go on when the region list
    /// is the same, and start again when a region was added, removed or moved.
    pub fn after(config: Config, previous: &Routing) -> Routing {
        let same_regions = config.regions.len() == previous.config.regions.len()
            && config
                .regions
                .iter()
                .zip(&previous.config.regions)
                .all(|(a, b)| a.id == b.id);
        if same_regions {
            Routing::with_traffic(config, previous.traffic.clone())
        } else {
            Routing::new(config)
        }
    }

    fn with_traffic(config: Config, traffic: Arc<Traffic>) -> Routing {
        Routing {
            traffic,
            rules: Arc::new(RegionRules::new(&config)),
            plan: RegionPlan::new(&config),
            answers: AnswerCounters::new(config.regions.len()),
            turn: TurnPools::new(&config, |name| std::env::var(name).ok()),
            config,
        }
    }

    /// The region at `index` of this generation (`None` for an index of another one
    /// that is out of range here: never a panic).
    pub fn region(&self, index: RegionIndex) -> Option<&Region> {
        self.config.region_at(index)
    }

    /// The id of the region at `index` ("" when out of range, see [`Routing::region`]).
    pub fn region_id(&self, index: RegionIndex) -> &str {
        self.region(index).map_or("", |r| r.id.as_str())
    }

    /// The region ids in config order (the registry's index of edges by region).
    pub fn region_ids(&self) -> Vec<String> {
        self.config.regions.iter().map(|r| r.id.clone()).collect()
    }
}
