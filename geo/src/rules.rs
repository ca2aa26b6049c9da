//! The region rules of `regions.yaml` as a pure function: (address, GeoIP record) → region.
//!
//! First match wins: CIDR override (longest prefix) → special-purpose address (default) →
//! country → continent → nearest region by great-circle distance → default. The answer
//! says which rule matched and carries the location it used.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::config::{Config, LatLon, RegionIndex};
use crate::countries::CountryInfo;
use crate::database::{GeoRecord, LocationSource};
use crate::special::special_purpose;

/// Which rule placed the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// A `networks:` entry of a region (longest prefix).
    CidrOverride,
    /// The country is listed in a region.
    Country,
    /// The continent is listed in a region.
    Continent,
    /// No list matched; the region nearest to the client's coordinates.
    Nearest,
    /// Nothing placed the client (see [`DefaultReason`]).
    Default,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::CidrOverride => "cidr-override",
            Rule::Country => "country",
            Rule::Continent => "continent",
            Rule::Nearest => "nearest",
            Rule::Default => "default",
        }
    }
}

/// Why a client landed in the default region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultReason {
    /// Private, loopback, documentation…: the label says which.
    SpecialPurpose(&'static str),
    /// GeoIP is off (no database configured).
    NoDatabase,
    /// The database has no record for the address.
    NotInDatabase,
    /// The database failed on this address (logged; the client is still served).
    LookupFailed,
    /// The record has neither a known country nor coordinates.
    NoLocation,
}

impl DefaultReason {
    pub fn describe(self) -> String {
        match self {
            DefaultReason::SpecialPurpose(label) => format!("{label} address"),
            DefaultReason::NoDatabase => "GeoIP is off (no database configured)".into(),
            DefaultReason::NotInDatabase => "address not in the GeoIP database".into(),
            DefaultReason::LookupFailed => "GeoIP lookup failed".into(),
            DefaultReason::NoLocation => "GeoIP record has no country or location".into(),
        }
    }
}

/// Where a client goes, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolution {
    /// The normalised address (IPv4-mapped IPv6 becomes IPv4).
    pub ip: IpAddr,
    /// The region, in the [`Config`] these rules were compiled from.
    pub region: RegionIndex,
    pub rule: Rule,
    /// The override network that matched ([`Rule::CidrOverride`]).
    pub network: Option<IpNet>,
    pub default_reason: Option<DefaultReason>,
    pub country: Option<&'static CountryInfo>,
    pub continent: Option<&'static str>,
    pub location: Option<(LatLon, LocationSource)>,
}

/// A resolution as printed by `locator resolve` and shown by explain.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResolutionView {
    pub ip: String,
    pub country: Option<&'static str>,
    pub country_name: Option<&'static str>,
    pub continent: Option<&'static str>,
    pub region: String,
    pub rule: Rule,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LocationView {
    pub lat: f64,
    pub lon: f64,
    /// `database` or `country` (the country's representative point).
    pub source: &'static str,
}

impl Resolution {
    /// The printable form; `config` must be the one this resolution was made with.
    pub fn view(&self, config: &Config) -> ResolutionView {
        ResolutionView {
            ip: self.ip.to_string(),
            country: self.country.map(|c| c.code),
            country_name: self.country.map(|c| c.name),
            continent: self.continent,
            region: config
                .region_at(self.region)
                .map(|r| r.id.clone())
                .unwrap_or_default(),
            rule: self.rule,
            network: self.network.map(|n| n.to_string()),
            detail: self.default_reason.map(DefaultReason::describe),
            location: self.location.map(|(l, source)| LocationView {
                lat: l.lat,
                lon: l.lon,
                source: match source {
                    LocationSource::Database => "database",
                    LocationSource::Country => "country",
                },
            }),
        }
    }
}

const NONE: u16 = u16::MAX;

/// The rules compiled for fast matching: arrays indexed by code instead of maps.
#[derive(Debug, Clone)]
pub struct RegionRules {
    /// Overrides, longest prefix first, so the first containing network wins.
    overrides: Vec<(IpNet, u16)>,
    /// Region by country: index `(first letter - 'A') * 26 + (second - 'A')`.
    by_country: Vec<u16>,
    /// Region by continent code, in the order of [`crate::countries::CONTINENTS`].
    by_continent: [u16; 7],
    locations: Vec<LatLon>,
    default_region: RegionIndex,
}

fn country_slot(code: &str) -> Option<usize> {
    match code.as_bytes() {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => Some((a - b'A') as usize * 26 + (b - b'A') as usize),
        _ => None,
    }
}

fn continent_slot(code: &str) -> Option<usize> {
    crate::countries::CONTINENTS
        .iter()
        .position(|(c, _)| *c == code)
}

impl RegionRules {
    /// Compiles a validated config.
    pub fn new(config: &Config) -> RegionRules {
        let mut overrides = Vec::new();
        let mut by_country = vec![NONE; 26 * 26];
        let mut by_continent = [NONE; 7];
        for (i, region) in config.regions.iter().enumerate() {
            let i = i as u16;
            overrides.extend(region.networks.iter().map(|n| (*n, i)));
            for slot in region.countries.iter().filter_map(|c| country_slot(c)) {
                by_country[slot] = i;
            }
            for slot in region.continents.iter().filter_map(|c| continent_slot(c)) {
                by_continent[slot] = i;
            }
        }
        overrides.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        RegionRules {
            overrides,
            by_country,
            by_continent,
            locations: config.regions.iter().map(|r| r.location).collect(),
            default_region: config.default_region,
        }
    }

    /// The longest override network containing `ip`.
    pub fn cidr_override(&self, ip: IpAddr) -> Option<(IpNet, RegionIndex)> {
        self.overrides
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(net, region)| (*net, RegionIndex::new(*region as usize)))
    }

    /// The region nearest to `point` (ties: the first in the file).
    pub fn nearest(&self, point: LatLon) -> RegionIndex {
        let mut best = (f64::INFINITY, self.default_region);
        for (i, location) in self.locations.iter().enumerate() {
            let d = great_circle_km(point, *location);
            if d < best.0 {
                best = (d, RegionIndex::new(i));
            }
        }
        best.1
    }

    /// Applies the rules. `lookup` is the GeoIP answer: `Err` when there is none, with
    /// the reason; it is only called when no override or special range decides first.
    pub fn resolve(
        &self,
        ip: IpAddr,
        lookup: impl FnOnce(IpAddr) -> Result<GeoRecord, DefaultReason>,
    ) -> Resolution {
        let ip = ip.to_canonical();
        let mut answer = Resolution {
            ip,
            region: self.default_region,
            rule: Rule::Default,
            network: None,
            default_reason: None,
            country: None,
            continent: None,
            location: None,
        };
        if let Some((net, region)) = self.cidr_override(ip) {
            answer.region = region;
            answer.rule = Rule::CidrOverride;
            answer.network = Some(net);
            return answer;
        }
        if let Some(label) = special_purpose(ip) {
            answer.default_reason = Some(DefaultReason::SpecialPurpose(label));
            return answer;
        }
        let record = match lookup(ip) {
            Ok(record) => record,
            Err(reason) => {
                answer.default_reason = Some(reason);
                return answer;
            }
        };
        answer.country = record.country;
        answer.continent = record.continent;
        answer.location = record.location;

        if let Some(region) = record
            .country
            .and_then(|c| country_slot(c.code))
            .map(|slot| self.by_country[slot])
            .filter(|r| *r != NONE)
        {
            answer.region = RegionIndex::new(region as usize);
            answer.rule = Rule::Country;
        } else if let Some(region) = record
            .continent
            .and_then(continent_slot)
            .map(|slot| self.by_continent[slot])
            .filter(|r| *r != NONE)
        {
            answer.region = RegionIndex::new(region as usize);
            answer.rule = Rule::Continent;
        } else if let Some((point, _)) = record.location {
            answer.region = self.nearest(point);
            answer.rule = Rule::Nearest;
        } else {
            answer.default_reason = Some(DefaultReason::NoLocation);
        }
        answer
    }
}

/// Great-circle distance in kilometres (haversine, mean Earth radius).
pub fn great_circle_km(a: LatLon, b: LatLon) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0088;
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}
