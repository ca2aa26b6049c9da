//! Entry points of the coverage-guided fuzz targets (`fuzz/`), kept here so the stable
//! replay test (`edge/tests/fuzz_corpus.rs`) runs every corpus and crash input through
//! exactly the code the fuzzer ran. Not an API: each takes arbitrary bytes and panics
//! only when a property the locator relies on is broken.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use ipnet::IpNet;
use locus_geo::config::EdgeTiming;
use locus_protocol::EdgeMessage;
use tokio::time::Instant;

use crate::client_ip::client_ip;
use crate::edge_state::{EdgeState, EdgeStatus, Effect, Liveness, Probe, PublishedStatus};

/// `Forwarded` / `X-Forwarded-For` parsing. The first byte picks the peer (trusted or
/// not) and, bit by bit, which header each following line goes into. The answer is the
/// peer itself when the peer is not trusted, never an IPv4-mapped address, and an error
/// only for a trusted peer.
pub fn forwarded(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let proxies: Vec<IpNet> = ["127.0.0.0/8", "10.0.0.0/8", "::1/128", "fd00::/8"]
        .iter()
        .filter_map(|net| net.parse().ok())
        .collect();
    let peer: IpAddr = match control % 4 {
        0 => Ipv4Addr::new(203, 0, 113, 9).into(),
        1 => Ipv4Addr::LOCALHOST.into(),
        2 => Ipv4Addr::new(10, 9, 8, 7).into(),
        _ => "::ffff:10.0.0.1"
            .parse()
            .unwrap_or(Ipv4Addr::LOCALHOST.into()),
    };
    let x_forwarded_for = HeaderName::from_static("x-forwarded-for");
    let mut headers = HeaderMap::new();
    for (i, line) in rest.split(|&b| b == b'\n').enumerate().take(16) {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            continue;
        };
        let name = if (control >> (2 + i % 6)) & 1 == 1 {
            header::FORWARDED
        } else {
            x_forwarded_for.clone()
        };
        headers.append(name, value);
    }
    let trusted = crate::client_ip::is_trusted_proxy(peer, &proxies);
    // The header the proxies are said to set comes from the control byte too.
    let forwarded_header = if control & 0x80 == 0 {
        locus_geo::config::ForwardedHeader::XForwardedFor
    } else {
        locus_geo::config::ForwardedHeader::Forwarded
    };
    match client_ip(peer, &headers, &proxies, forwarded_header) {
        Ok(ip) => {
            assert_eq!(ip, ip.to_canonical(), "an IPv4-mapped client address");
            if !trusted {
                assert_eq!(ip, peer.to_canonical());
            }
        }
        Err(error) => {
            assert!(trusted, "headers from an untrusted peer were read");
            assert!(error.value.chars().count() <= 64);
            assert_eq!(
                error.header,
                forwarded_header.name(),
                "the other header was read"
            );
            drop(error.to_string());
        }
    }
}

/// The edge link's state handling on the locator: each input line is a frame decoded as
/// an [`EdgeMessage`] and applied as the link applies it, or (not JSON) an event of the
/// link's life (heartbeat, tick after some time, link closed, probe results, admin
/// suspend/resume/drain, a state published by another locator). After every step the
/// derived state must agree with the liveness and flags, and every effect with the state.
pub fn edge_link_states(data: &[u8]) {
    let timing = EdgeTiming::default();
    let start = Instant::now();
    let mut now = start;
    let mut status = EdgeStatus::registered(now, false, false);
    for line in data.split(|&b| b == b'\n').take(256) {
        let effect = match serde_json::from_slice::<EdgeMessage>(line) {
            Ok(EdgeMessage::Register(register)) => status.on_register(now, register.draining),
            Ok(EdgeMessage::Report(_)) => status.on_report(now),
            Ok(EdgeMessage::Spool { .. }) => status.on_heard(now),
            Ok(EdgeMessage::Draining { .. }) => {
                status.on_heard(now);
                status.on_draining()
            }
            Ok(EdgeMessage::DrainDeadline { .. }) => status.on_heard(now),
            Err(_) => {
                let Some((&op, arg)) = line.split_first() else {
                    continue;
                };
                let amount = u64::from(arg.first().copied().unwrap_or(1));
                match op % 12 {
                    0 => status.on_heartbeat(now, &timing),
                    1 | 2 => {
                        now += Duration::from_millis(amount * 40);
                        status.on_tick(now, &timing)
                    }
                    3 => {
                        now += Duration::from_secs(amount);
                        status.on_tick(now, &timing)
                    }
                    4 => status.on_link_closed(now),
                    5 => status.on_probe(Probe::Healthy),
                    6 => status.on_probe(Probe::Unresponsive),
                    7 => status.on_probe(Probe::Dead),
                    8 => status.on_suspend(),
                    9 => status.on_resume(),
                    10 => status.on_drained(),
                    _ => {
                        let liveness = match amount % 4 {
                            0 => Liveness::Connected,
                            1 => Liveness::Suspect { since: now },
                            2 => Liveness::LinkLost { since: now },
                            _ => status.liveness,
                        };
                        let published = PublishedStatus {
                            liveness,
                            suspended: amount & 4 != 0,
                            draining: amount & 8 != 0,
                            age: Duration::from_millis(amount * 100),
                        };
                        status.on_published(&published, now)
                    }
                }
            }
        };
        check(&status, effect, now);
    }
}

fn check(status: &EdgeStatus, effect: Effect, now: Instant) {
    let state = status.state();
    match effect {
        Effect::None => {}
        Effect::ProbeHealth => assert!(
            matches!(state, EdgeState::Suspect | EdgeState::LinkLost),
            "asked for a probe in state {state}"
        ),
        Effect::Failed(_) => assert_eq!(state, EdgeState::Failed),
    }
    if status.takes_new_sessions() {
        assert!(!status.suspended && !status.draining && status.serves_existing_sessions());
    }
    assert_eq!(
        status.serves_existing_sessions(),
        state != EdgeState::Failed
    );
    assert!(status.last_heard_at <= now && status.last_report_at <= now);
}
