//! The one place a node reads the time and draws random numbers.
//!
//! Everything that decides on time (deadlines, liveness, election jitter, the leader's stamp
//! on a publish, token expiry) asks here, so that a later in-process simulation of the whole
//! cluster can run it on a simulated clock and a seeded generator (with the node-to-node
//! seam of `crate::transport` and the log engine's `Disk`). `now` is tokio's clock, which such
//! a simulation already controls (a paused runtime advances it); the replicated state never
//! reads either (the shard leader stamps times into the commands it proposes).

use rand::Rng;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The monotonic time.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A random 64-bit number.
pub fn random_u64() -> u64 {
    rand::random()
}

/// A random duration from zero to `max`, in whole milliseconds.
pub fn random_delay(max: Duration) -> Duration {
    Duration::from_millis(rand::rng().random_range(0..=max.as_millis() as u64))
}
