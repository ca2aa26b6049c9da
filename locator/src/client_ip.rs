//! The client's address: the socket peer, unless the peer is a configured trusted proxy;
//! then the right-most address of the configured header (`X-Forwarded-For`, or
//! `Forwarded` (RFC 7239) `for=` values) that is not itself a trusted proxy. The other
//! header is never read: a proxy appends to its own header and passes the other one
//! through as the client wrote it. Headers from any other peer are ignored: they are
//! trivially spoofed.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderName, header};
use ipnet::IpNet;
use locus_geo::config::ForwardedHeader;

/// A forwarded-for header from a trusted proxy that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{header} contains \"{value}\", which is not an IP address")]
pub struct ForwardedError {
    pub header: &'static str,
    pub value: String,
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&ip))
}

/// Whether `peer` is one of the trusted proxies (whose forwarding headers are believed):
/// the one check behind [`client_ip`] and the admin page's HTTPS detection.
pub fn is_trusted_proxy(peer: IpAddr, proxies: &[IpNet]) -> bool {
    trusted(peer.to_canonical(), proxies)
}

/// Parses one hop: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:443`, quoted
/// or not.
fn parse_hop(raw: &str) -> Option<IpAddr> {
    let hop = raw.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = hop.parse::<SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    let inner = hop.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// `X-Forwarded-For` (not among `http`'s standard header names).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client address for a request from `peer` with these headers.
///
/// Walks the hops right to left straight from the header values: no allocation on this
/// path, which every locate and session request takes.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted_proxies: &[IpNet],
    forwarded_header: ForwardedHeader,
) -> Result<IpAddr, ForwardedError> {
    let peer = peer.to_canonical();
    if !trusted(peer, trusted_proxies) {
        return Ok(peer);
    }
    let header = forwarded_header.name();
    let use_forwarded = forwarded_header == ForwardedHeader::Forwarded;
    let values = headers.get_all(if use_forwarded {
        header::FORWARDED
    } else {
        X_FORWARDED_FOR
    });
    // Right to left: each trusted proxy vouches for the hop before it; the first hop no
    // trusted proxy added is the client. `step` takes one hop: `Ok(true)` when it is the
    // client.
    let mut client = peer;
    let mut step = |raw: &str| -> Result<bool, ForwardedError> {
        let ip = parse_hop(raw).ok_or_else(|| ForwardedError {
            header,
            value: raw.chars().take(64).collect(),
        })?;
        client = ip;
        Ok(!trusted(ip, trusted_proxies))
    };
    for value in values.iter().rev() {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for element in value.rsplit(',') {
            if use_forwarded {
                for pair in element.rsplit(';') {
                    if let Some((name, v)) = pair.split_once('=')
                        && name.trim().eq_ignore_ascii_case("for")
                        && step(v.trim())?
                    {
                        return Ok(client);
                    }
                }
            } else {
                let hop = element.trim();
                if !hop.is_empty() && step(hop)? {
                    return Ok(client);
                }
            }
        }
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;

    fn proxies() -> Vec<IpNet> {
        vec![
            "127.0.0.0/8".parse().expect("net"),
            "10.0.0.0/8".parse().expect("net"),
        ]
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn headers_from_untrusted_peers_are_ignored() {
        let h = headers(&[("x-forwarded-for", "8.8.8.8")]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, &proxies(), XFF),
            Ok(ip("203.0.113.9"))
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        // The client forged the first entry; our proxies appended the rest.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 81.2.69.142, 10.0.0.7")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &proxies(), XFF),
            Ok(ip("81.2.69.142"))
        );
        // Several headers are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "81.2.69.142"),
        ]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &proxies(), XFF),
            Ok(ip("81.2.69.142"))
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let h = headers(&[("x-forwarded-for", "[2001:4860::1]:443")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &proxies(), XFF),
            Ok(ip("2001:4860::1"))
        );
        let h = headers(&[("x-forwarded-for", "::ffff:81.2.69.142")]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &proxies(), XFF),
            Ok(ip("81.2.69.142"))
        );
    }

    #[test]
    fn forwarded_is_read_when_configured() {
        let h = headers(&[(
            "forwarded",
            r#"for=1.1.1.1;proto=https, for="[2001:db8:cafe::17]:4711", for=10.0.0.2"#,
        )]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &proxies(), ForwardedHeader::Forwarded),
            Ok(ip("2001:db8:cafe::17"))
        );
    }

    /// Issue 16, finding 7: a proxy that appends `X-Forwarded-For` passes a client's own
    /// `Forwarded` through; it used to win, so the client chose its address.
    #[test]
    fn the_header_the_proxy_does_not_set_is_never_read() {
        let h = headers(&[
            ("forwarded", "for=133.1.1.1"),
            ("x-forwarded-for", "81.2.69.142"),
        ]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &proxies(), XFF),
            Ok(ip("81.2.69.142"))
        );
        let h = headers(&[
            ("x-forwarded-for", "133.1.1.1"),
            ("forwarded", "for=81.2.69.142"),
        ]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &proxies(), ForwardedHeader::Forwarded),
            Ok(ip("81.2.69.142"))
        );
    }

    #[test]
    fn garbage_from_a_trusted_proxy_is_an_error_naming_the_header() {
        let h = headers(&[("x-forwarded-for", "81.2.69.142, not-an-ip")]);
        let err = client_ip(ip("127.0.0.1"), &h, &proxies(), XFF).expect_err("garbage");
        assert_eq!(err.header, "X-Forwarded-For");
        assert!(err.to_string().contains("not-an-ip"));
    }

    #[test]
    fn all_hops_trusted_means_the_left_most() {
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &proxies(), XFF),
            Ok(ip("10.1.1.1"))
        );
    }
}
