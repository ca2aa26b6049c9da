//! Client addresses drawn from a GeoIP database's networks (weighted by network, not by
//! size: a /8 and a /24 are equally likely, which keeps small countries in the mix), or
//! from a generated database when no file is given.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use locus_geo::GeoDatabase;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A uniformly random address inside `network/prefix`.
pub fn sample_in(network: IpAddr, prefix: u8, rng: &mut impl Rng) -> IpAddr {
    match network {
        IpAddr::V4(v4) => {
            let host_bits = 32 - u32::from(prefix.min(32));
            let mask = u32::MAX.checked_shr(32 - host_bits).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(
                (u32::from(v4) & !mask) | (rng.random::<u32>() & mask),
            ))
        }
        IpAddr::V6(v6) => {
            let host_bits = 128 - u32::from(prefix.min(128));
            let mask = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(v6) & !mask) | (rng.random::<u128>() & mask),
            ))
        }
    }
}

/// `count` addresses with country data in `database`, `v6_share` of them IPv6, from a
/// fixed `seed`. Special-purpose addresses are skipped.
pub fn sample_addresses(
    database: &Path,
    count: usize,
    v6_share: f64,
    seed: u64,
) -> Result<Vec<IpAddr>, String> {
    let db = GeoDatabase::open(database).map_err(|e| e.to_string())?;
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let walk = db
        .reader()
        .networks(maxminddb::WithinOptions::default())
        .map_err(|e| e.to_string())?;
    for item in walk {
        let Ok(result) = item else { continue };
        let Ok(network) = result.network() else {
            continue;
        };
        match network.ip() {
            IpAddr::V4(ip) => v4.push((IpAddr::V4(ip), network.prefix())),
            IpAddr::V6(ip) => v6.push((IpAddr::V6(ip), network.prefix())),
        }
    }
    if v4.is_empty() && v6.is_empty() {
        return Err(format!("{} has no networks", database.display()));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(count);
    let mut attempts = 0usize;
    while out.len() < count && attempts < count * 20 {
        attempts += 1;
        let pool = if (rng.random::<f64>() < v6_share && !v6.is_empty()) || v4.is_empty() {
            &v6
        } else {
            &v4
        };
        let (network, prefix) = pool[rng.random_range(0..pool.len())];
        let ip = sample_in(network, prefix, &mut rng);
        if locus_geo::special::special_purpose(ip).is_some() {
            continue;
        }
        if matches!(db.lookup(ip), Ok(Some(record)) if record.country.is_some()) {
            out.push(ip);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stay_inside_their_network() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let ip = sample_in("81.2.69.0".parse().expect("ip"), 24, &mut rng);
            assert!(ip.to_string().starts_with("81.2.69."), "{ip}");
            let ip = sample_in("2001:db8::".parse().expect("ip"), 32, &mut rng);
            assert!(ip.to_string().starts_with("2001:db8:"), "{ip}");
        }
        assert_eq!(
            sample_in("8.8.8.8".parse().expect("ip"), 32, &mut rng),
            "8.8.8.8".parse::<IpAddr>().expect("ip")
        );
        let any = sample_in("0.0.0.0".parse().expect("ip"), 0, &mut rng);
        assert!(any.is_ipv4());
    }
}
