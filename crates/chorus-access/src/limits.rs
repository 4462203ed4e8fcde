//! How often a user may publish: a token bucket per user (GCRA, the `governor` crate), with
//! the origin document's defaults (1,000 a minute, bursts of 50) and a rate per role.
//!
//! Limits are per node: a user connected to three nodes may publish up to three times the
//! rate in total. That bounds what one careless or hostile client costs every node (one
//! user published about 47,000 messages a minute before, every one replicated three times).

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A rate (of publishes, of connects): `per_minute` sustained, `burst` at once. `per_minute`
/// 0: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate {
    /// Publishes a minute, sustained (0: no limit).
    pub per_minute: u32,
    /// Publishes allowed at once after a quiet spell.
    pub burst: u32,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            per_minute: 1000,
            burst: 50,
        }
    }
}

/// A publish refused for its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// When the next publish would be allowed.
    pub retry_after: Duration,
}

/// After this many checks, users idle long enough to have a full bucket are forgotten.
const FORGET_EVERY: u64 = 4096;

/// The publish limiters of a node, one per distinct rate.
pub struct PublishLimits {
    limiters: BTreeMap<Rate, DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
}

impl PublishLimits {
    /// Limiters for every rate in `rates` (the default and the roles' own).
    pub fn new(rates: impl IntoIterator<Item = Rate>) -> Self {
        let limiters = rates
            .into_iter()
            .filter_map(|rate| {
                let per_minute = NonZeroU32::new(rate.per_minute)?;
                let burst = NonZeroU32::new(rate.burst.max(1)).expect("at least 1");
                let quota = Quota::per_minute(per_minute).allow_burst(burst);
                Some((rate, RateLimiter::keyed(quota)))
            })
            .collect();
        PublishLimits {
            limiters,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one publish by `user` at `rate`; refused when the user's bucket is empty.
    pub fn check(&self, user: &str, rate: Rate) -> Result<(), RateLimited> {
        let Some(limiter) = self.limiters.get(&rate) else {
            return Ok(()); // unlimited
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            for limiter in self.limiters.values() {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
        // The refusal's wait is measured on the limiter's own clock: building a new clock
        // calibrates it (cpuid and a timing loop, costly in a VM), which under a flood of
        // refused publishes cost more than the publishes themselves.
        limiter
            .check_key(&user.to_string())
            .map_err(|not_until| RateLimited {
                retry_after: not_until.wait_time_from(limiter.clock().now()),
            })
    }
}

/// How often one IP address may open client connections (QUIC and WebSocket alike), counted
/// at the connect frame, before the token is checked: every accepted connection writes its
/// device's presence through Raft, so a connect-and-close loop would otherwise turn into
/// committed log entries as fast as it can loop (1,500 connects in 3.4 s made 2,062).
pub struct ConnectLimits {
    limiter: Option<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>,
    checks: AtomicU64,
}

impl ConnectLimits {
    /// At most `rate.per_minute` connects a minute per address after `rate.burst` at once
    /// (`per_minute` 0: no limit).
    pub fn new(rate: Rate) -> Self {
        let limiter = NonZeroU32::new(rate.per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(rate.burst.max(1)).expect("at least 1");
            RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        });
        ConnectLimits {
            limiter,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one connect from `ip`; refused when its bucket is empty.
    pub fn check(&self, ip: std::net::IpAddr) -> Result<(), RateLimited> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&ip).map_err(|not_until| RateLimited {
            retry_after: not_until.wait_time_from(limiter.clock().now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_user() {
        let rate = Rate {
            per_minute: 60,
            burst: 5,
        };
        let limits = PublishLimits::new([rate]);
        for _ in 0..5 {
            assert!(limits.check("mallory", rate).is_ok());
        }
        let refused = limits.check("mallory", rate).unwrap_err();
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1),
            "one a second: {refused:?}"
        );
        assert!(
            limits.check("alice", rate).is_ok(),
            "another user has their own bucket"
        );
        let unlimited = Rate {
            per_minute: 0,
            burst: 0,
        };
        for _ in 0..10_000 {
            assert!(limits.check("mallory", unlimited).is_ok());
        }
    }

    #[test]
    fn connects_are_limited_per_address() {
        let limits = ConnectLimits::new(Rate {
            per_minute: 60,
            burst: 3,
        });
        let mallory: std::net::IpAddr = [10, 0, 0, 66].into();
        for _ in 0..3 {
            assert!(limits.check(mallory).is_ok());
        }
        assert!(limits.check(mallory).is_err());
        assert!(
            limits.check([10, 0, 0, 1].into()).is_ok(),
            "another address has its own bucket"
        );
        let unlimited = ConnectLimits::new(Rate {
            per_minute: 0,
            burst: 0,
        });
        for _ in 0..10_000 {
            assert!(unlimited.check(mallory).is_ok());
        }
    }
}
