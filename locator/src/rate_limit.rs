//! Per-client request limits (the `limits:` section of regions.yaml): one token bucket per
//! client address and door, so one address cannot fill the store with sessions nobody
//! joins or mint TURN credentials without end.
//!
//! The client address is the one the trusted-proxy rules give (`client_ip`); an IPv6
//! client counts by its /64, since one subscriber gets a whole /64 to pick from. The
//! buckets live in a bounded cache: addresses idle for two minutes are forgotten (their
//! bucket would be full again anyway), and a flood of distinct addresses evicts old ones
//! rather than growing memory.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use locus_geo::config::RequestLimits;
use tokio::time::Instant;

use locus_serve::problem::Problem;

/// What a request asks for; each has its own limit and buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    /// `POST /v1/sessions`.
    Create,
    /// `GET /v1/locate`.
    Locate,
    /// A wrong admin token (bearer or sign-in form): not configurable, since no honest
    /// operator mistypes ten times in a row.
    AdminFailure,
}

/// Wrong admin tokens one client may send a minute (after a burst of ten).
pub const ADMIN_FAILURES_PER_MINUTE: u32 = 20;

impl Door {
    fn per_minute(self, limits: &RequestLimits) -> Option<u32> {
        match self {
            Door::Create => limits.creates_per_minute,
            Door::Locate => limits.locates_per_minute,
            Door::AdminFailure => Some(ADMIN_FAILURES_PER_MINUTE),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Door::Create => "session creates",
            Door::Locate => "locates",
            Door::AdminFailure => "wrong admin tokens",
        }
    }
}

/// The client a bucket belongs to: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Client {
    fn from(ip: IpAddr) -> Client {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Client::V4(u32::from(v4)),
            IpAddr::V6(v6) => Client::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Most client addresses remembered at once.
const MAX_CLIENTS: u64 = 100_000;

/// The buckets of every door.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: moka::sync::Cache<(Door, Client), Arc<Mutex<Bucket>>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_idle(Duration::from_secs(120))
                .build(),
        }
    }
}

impl RateLimiter {
    /// Takes one request from `ip`'s bucket at `door`, or answers 429 with the seconds
    /// until the next request is allowed.
    pub fn check(&self, door: Door, ip: IpAddr, limits: &RequestLimits) -> Result<(), Problem> {
        self.bucket(door, ip, limits, true)
    }

    /// Whether `ip` may try at `door` now, without taking from its bucket (a wrong admin
    /// token is counted by [`RateLimiter::check`] once it has failed).
    pub fn peek(&self, door: Door, ip: IpAddr, limits: &RequestLimits) -> Result<(), Problem> {
        self.bucket(door, ip, limits, false)
    }

    fn bucket(
        &self,
        door: Door,
        ip: IpAddr,
        limits: &RequestLimits,
        take: bool,
    ) -> Result<(), Problem> {
        let Some(per_minute) = door.per_minute(limits) else {
            return Ok(());
        };
        let rate = f64::from(per_minute) / 60.0; // tokens per second
        let burst = (f64::from(per_minute) / 2.0).max(5.0);
        let now = Instant::now();
        let bucket = self.buckets.get_with((door, Client::from(ip)), || {
            Arc::new(Mutex::new(Bucket {
                tokens: burst,
                updated: now,
            }))
        });
        let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64;
        Err(Problem::too_many_requests(
            format!(
                "too many {} from this address (limit {per_minute} a minute): retry in {wait} s",
                door.what()
            ),
            wait,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(creates: u32) -> RequestLimits {
        RequestLimits {
            creates_per_minute: Some(creates),
            locates_per_minute: None,
            ..RequestLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_allowed_then_requests_are_spread_out_per_address() {
        let limiter = RateLimiter::default();
        let a: IpAddr = "198.51.100.7".parse().expect("ip");
        let b: IpAddr = "198.51.100.8".parse().expect("ip");
        let limits = limits(60); // 1 a second, burst 30
        for _ in 0..30 {
            limiter
                .check(Door::Create, a, &limits)
                .expect("within the burst");
        }
        let refused = limiter.check(Door::Create, a, &limits).expect_err("over");
        assert_eq!(refused.status.as_u16(), 429);
        assert_eq!(refused.retry_after, Some(1));
        // Another address and another door have their own buckets.
        limiter
            .check(Door::Create, b, &limits)
            .expect("other address");
        limiter
            .check(Door::Locate, a, &limits)
            .expect("locates are off");
        tokio::time::advance(Duration::from_secs(1)).await;
        limiter.check(Door::Create, a, &limits).expect("refilled");
        limiter
            .check(Door::Create, a, &limits)
            .expect_err("one a second");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_subscriber_counts_once_for_its_whole_64() {
        let limiter = RateLimiter::default();
        let limits = limits(6); // burst 5
        for host in 1..=5 {
            let ip: IpAddr = format!("2001:db8:1:2::{host}").parse().expect("ip");
            limiter.check(Door::Create, ip, &limits).expect("burst");
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().expect("ip");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let refused = limiter
            .check(Door::Create, same_64, &limits)
            .expect_err("same /64");
        assert_eq!(refused.retry_after, Some(10));
        limiter
            .check(Door::Create, other_64, &limits)
            .expect("other /64");
    }
}
