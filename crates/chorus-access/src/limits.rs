//! How often a client may do things: token buckets (GCRA, the `governor` crate) per IP address
//! before its token is checked, and per user, per operation class and per device after, with
//! the origin document's defaults (1,000 a minute per user, 500 per device, 2,000 per IP,
//! bursts of 50). Every refusal says when to try again and is counted in
//! `chorus_rate_limited_total{limit}`.
//!
//! Limits are per node: a user connected to three nodes may go up to three times a rate in
//! total. That bounds what one careless or hostile client costs every node (one user
//! published about 47,000 messages a minute before, every one replicated three times).

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A rate: `per_minute` sustained, `burst` at once after a quiet spell. `per_minute` 0:
/// unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate {
    /// Requests a minute, sustained (0: no limit).
    pub per_minute: u32,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate {
        per_minute: 0,
        burst: 0,
    };

    /// `per_minute` sustained after a burst of 50 (the origin document's burst).
    pub const fn per_minute(per_minute: u32) -> Rate {
        Rate {
            per_minute,
            burst: 50,
        }
    }
}

impl Default for Rate {
    /// The origin document's rate per user: 1,000 a minute, bursts of 50.
    fn default() -> Self {
        Rate::per_minute(1000)
    }
}

/// What a request counts against besides its device's overall rate: each class has its own
/// bucket per user, so a client that floods typing indicators can still publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperationClass {
    /// Publishing an event.
    Publish,
    /// Subscribing, and reading a channel's history (both read a page of the log).
    Subscribe,
    /// Typing indicators: starting, stopping, asking who types.
    Typing,
    /// Collaborative sessions: creating one, applying an operation, reading one.
    Collab,
    /// Opening a QUIC or WebSocket connection (after its token is checked; the address's
    /// own connect rate is counted before).
    Connect,
}

impl OperationClass {
    /// Every class.
    pub const ALL: [OperationClass; 5] = [
        OperationClass::Publish,
        OperationClass::Subscribe,
        OperationClass::Typing,
        OperationClass::Collab,
        OperationClass::Connect,
    ];

    /// The class's name in configuration and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationClass::Publish => "publish",
            OperationClass::Subscribe => "subscribe",
            OperationClass::Typing => "typing",
            OperationClass::Collab => "collab",
            OperationClass::Connect => "connect",
        }
    }
}

/// A request refused for its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// Which limit: an operation class's name, `device`, `connects_per_ip` or
    /// `http_requests_per_ip` (the label of `chorus_rate_limited_total`).
    pub limit: &'static str,
    /// When the next request would be allowed.
    pub retry_after: Duration,
}

/// After this many checks, keys idle long enough to have a full bucket are forgotten.
const FORGET_EVERY: u64 = 4096;

/// Token buckets keyed by `K`, one limiter per distinct rate.
pub struct KeyedLimits<K: Hash + Eq + Clone> {
    limiters: BTreeMap<Rate, DefaultKeyedRateLimiter<K>>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedLimits<K> {
    /// Limiters for every rate in `rates`.
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
        KeyedLimits {
            limiters,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one request of `key` at `rate` (one of the rates given to `new`; others are
    /// unlimited); refused, in the name of `limit`, when its bucket is empty.
    pub fn check(&self, limit: &'static str, key: &K, rate: Rate) -> Result<(), RateLimited> {
        let Some(limiter) = self.limiters.get(&rate) else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            for limiter in self.limiters.values() {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
        // The refusal's wait is measured on the limiter's own clock: building a new clock
        // calibrates it (cpuid and a timing loop, costly in a VM), which under a flood of
        // refused requests cost more than the requests themselves.
        limiter.check_key(key).map_err(|not_until| RateLimited {
            limit,
            retry_after: not_until.wait_time_from(limiter.clock().now()),
        })
    }
}

/// The label of `chorus_rate_limited_total`: which limit refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

/// Every rate of a node, and the counter of its refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateSettings {
    /// Per user and class, for users whose roles set none.
    pub classes: BTreeMap<OperationClass, Rate>,
    /// Requests of every kind per device (the user and its token's `device` claim).
    pub device: Rate,
    /// QUIC and WebSocket connects per IP address, counted before the token is checked.
    pub connects_per_ip: Rate,
    /// HTTP API requests per IP address, counted before the token is checked.
    pub http_requests_per_ip: Rate,
}

/// Requests one device may make by default: the origin document's 500 a minute per device,
/// after a burst of 50.
pub const DEFAULT_DEVICE_RATE: Rate = Rate::per_minute(500);

/// Requests one IP address may make by default: the origin document's 2,000 a minute.
pub const DEFAULT_IP_RATE: Rate = Rate::per_minute(2000);

impl Default for RateSettings {
    fn default() -> Self {
        RateSettings {
            classes: OperationClass::ALL
                .into_iter()
                .map(|c| (c, Rate::default()))
                .collect(),
            device: DEFAULT_DEVICE_RATE,
            connects_per_ip: DEFAULT_IP_RATE,
            http_requests_per_ip: DEFAULT_IP_RATE,
        }
    }
}

/// The bucket an address counts against: an IPv4 address (also when written as IPv6), or the
/// /64 network of an IPv6 address, which one host holds whole (it could otherwise rotate
/// through 2^64 addresses, each with a full bucket).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// The buckets of a node: per user and class, per device, per IP address.
pub(crate) struct Limits {
    pub(crate) settings: RateSettings,
    users: KeyedLimits<(OperationClass, String)>,
    devices: KeyedLimits<String>,
    connects: KeyedLimits<IpAddr>,
    http_requests: KeyedLimits<IpAddr>,
    refusals: Family<LimitLabel, Counter>,
}

impl Limits {
    /// Buckets for `settings` and the roles' own rates (`role_rates`).
    pub(crate) fn new(settings: RateSettings, role_rates: impl IntoIterator<Item = Rate>) -> Self {
        Limits {
            users: KeyedLimits::new(settings.classes.values().copied().chain(role_rates)),
            devices: KeyedLimits::new([settings.device]),
            connects: KeyedLimits::new([settings.connects_per_ip]),
            http_requests: KeyedLimits::new([settings.http_requests_per_ip]),
            settings,
            refusals: Family::default(),
        }
    }

    /// Counts a refusal and passes it on.
    fn counted(&self, result: Result<(), RateLimited>) -> Result<(), RateLimited> {
        if let Err(refused) = &result {
            self.refusals
                .get_or_create(&LimitLabel { limit: refused.limit })
                .inc();
        }
        result
    }

    pub(crate) fn check_user(
        &self,
        class: OperationClass,
        user: &str,
        rate: Rate,
    ) -> Result<(), RateLimited> {
        self.counted(self.users.check(class.as_str(), &(class, user.to_string()), rate))
    }

    pub(crate) fn check_device(&self, device: String) -> Result<(), RateLimited> {
        self.counted(self.devices.check("device", &device, self.settings.device))
    }

    pub(crate) fn check_connect(&self, ip: IpAddr) -> Result<(), RateLimited> {
        self.counted(
            self.connects
                .check("connects_per_ip", &address_key(ip), self.settings.connects_per_ip),
        )
    }

    pub(crate) fn check_http_request(&self, ip: IpAddr) -> Result<(), RateLimited> {
        self.counted(self.http_requests.check(
            "http_requests_per_ip",
            &address_key(ip),
            self.settings.http_requests_per_ip,
        ))
    }

    /// Registers `chorus_rate_limited_total{limit}`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "chorus_rate_limited",
            "Requests refused for a rate, by limit (publish, subscribe, typing, collab, connect, device, connects_per_ip, http_requests_per_ip)",
            self.refusals.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_key() {
        let rate = Rate {
            per_minute: 60,
            burst: 5,
        };
        let limits = KeyedLimits::new([rate]);
        for _ in 0..5 {
            assert!(limits.check("test", &"mallory", rate).is_ok());
        }
        let refused = limits.check("test", &"mallory", rate).unwrap_err();
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1),
            "one a second: {refused:?}"
        );
        assert!(
            limits.check("test", &"alice", rate).is_ok(),
            "another key has its own bucket"
        );
        for _ in 0..10_000 {
            assert!(limits.check("test", &"mallory", Rate::UNLIMITED).is_ok());
        }
    }

    #[test]
    fn each_class_and_address_has_its_own_bucket_and_refusals_are_counted() {
        let tight = Rate {
            per_minute: 60,
            burst: 3,
        };
        let settings = RateSettings {
            classes: OperationClass::ALL.into_iter().map(|c| (c, tight)).collect(),
            device: Rate::UNLIMITED,
            connects_per_ip: tight,
            http_requests_per_ip: tight,
        };
        let limits = Limits::new(settings, []);
        for _ in 0..3 {
            assert!(
                limits
                    .check_user(OperationClass::Typing, "mallory", tight)
                    .is_ok()
            );
        }
        assert!(
            limits
                .check_user(OperationClass::Typing, "mallory", tight)
                .is_err()
        );
        assert!(
            limits
                .check_user(OperationClass::Publish, "mallory", tight)
                .is_ok(),
            "a typing flood leaves publishing alone"
        );
        let mallory: IpAddr = [10, 0, 0, 66].into();
        for _ in 0..3 {
            assert!(limits.check_connect(mallory).is_ok());
            assert!(limits.check_http_request(mallory).is_ok());
        }
        assert!(limits.check_connect(mallory).is_err());
        assert!(limits.check_http_request(mallory).is_err());
        assert!(
            limits.check_connect([10, 0, 0, 1].into()).is_ok(),
            "another address has its own bucket"
        );
        // An IPv6 host holds a whole /64: rotating through it does not refill the bucket.
        let host: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.check_connect(host).is_ok());
        }
        let same_network: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(limits.check_connect(same_network).is_err());
        assert!(limits.check_connect("2001:db8:1:3::1".parse().unwrap()).is_ok());
        assert!(
            limits.check_connect("::ffff:10.0.0.66".parse().unwrap()).is_err(),
            "an IPv4 address written as IPv6 is the same address"
        );
        let mut registry = Registry::default();
        limits.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (limit, refused) in [("typing", 1), ("connects_per_ip", 3), ("http_requests_per_ip", 1)] {
            assert!(
                text.contains(&format!(
                    "chorus_rate_limited_total{{limit=\"{limit}\"}} {refused}"
                )),
                "{limit}: {text}"
            );
        }
    }
}
