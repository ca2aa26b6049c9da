//! Special-purpose address ranges (IANA IPv4 and IPv6 special-purpose registries) that no
//! GeoIP database can place: private, loopback, link-local, documentation, reserved…
//! Clients from these ranges go to the default region (unless a CIDR override says
//! otherwise), and the answer says why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not globally routable, in words an operator recognises.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let n = u32::from(ip);
    // (network, prefix length, label): RFC 6890 and the IANA registry.
    const RANGES: &[(u32, u32, &str)] = &[
        (0x0000_0000, 8, "\"this network\" (0.0.0.0/8)"),
        (0x0A00_0000, 8, "private (10.0.0.0/8)"),
        (0x6440_0000, 10, "carrier-grade NAT (100.64.0.0/10)"),
        (0x7F00_0000, 8, "loopback (127.0.0.0/8)"),
        (0xA9FE_0000, 16, "link-local (169.254.0.0/16)"),
        (0xAC10_0000, 12, "private (172.16.0.0/12)"),
        (0xC000_0000, 24, "IETF protocol assignments (192.0.0.0/24)"),
        (0xC000_0200, 24, "documentation (192.0.2.0/24)"),
        (0xC0A8_0000, 16, "private (192.168.0.0/16)"),
        (0xC612_0000, 15, "benchmarking (198.18.0.0/15)"),
        (0xC633_6400, 24, "documentation (198.51.100.0/24)"),
        (0xCB00_7100, 24, "documentation (203.0.113.0/24)"),
        (0xE000_0000, 4, "multicast (224.0.0.0/4)"),
        (0xF000_0000, 4, "reserved (240.0.0.0/4)"),
    ];
    RANGES
        .iter()
        .find(|(net, len, _)| n >> (32 - len) == net >> (32 - len))
        .map(|(_, _, label)| *label)
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let n = u128::from(ip);
    if n == 0 {
        return Some("unspecified (::)");
    }
    if n == 1 {
        return Some("loopback (::1)");
    }
    const RANGES: &[(u128, u32, &str)] = &[
        (
            0x0100_0000_0000_0000_0000_0000_0000_0000,
            64,
            "discard-only (100::/64)",
        ),
        (
            0x2001_0db8_0000_0000_0000_0000_0000_0000,
            32,
            "documentation (2001:db8::/32)",
        ),
        (
            0xfc00_0000_0000_0000_0000_0000_0000_0000,
            7,
            "unique local (fc00::/7)",
        ),
        (
            0xfe80_0000_0000_0000_0000_0000_0000_0000,
            10,
            "link-local (fe80::/10)",
        ),
        (
            0xff00_0000_0000_0000_0000_0000_0000_0000,
            8,
            "multicast (ff00::/8)",
        ),
    ];
    RANGES
        .iter()
        .find(|(net, len, _)| n >> (128 - len) == net >> (128 - len))
        .map(|(_, _, label)| *label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str) -> Option<&'static str> {
        special_purpose(s.parse().expect("test address"))
    }

    #[test]
    fn private_and_reserved_ranges_are_recognised() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(label(ip).is_some(), "{ip} should be special-purpose");
        }
    }

    #[test]
    fn public_addresses_are_not_special() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "81.2.69.142",
            "172.32.0.1",
            "100.128.0.1",
            "2001:4860::1",
            "2a02:1::1",
        ] {
            assert_eq!(label(ip), None, "{ip} is public");
        }
    }
}
