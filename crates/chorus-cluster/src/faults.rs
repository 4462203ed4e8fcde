//! Test-only fault injection, so that the chaos suite can break the cluster on purpose.
//!
//! Two switches, both off unless an environment variable turns them on at start:
//!
//! - [`FAULT_INJECTION_ENV`] enables a network partition switch: while a node is *isolated*,
//!   every node-to-node call it makes fails as if the peer were unreachable, and every call
//!   it receives is refused as unavailable, so it can reach no peer and no peer can reach it.
//!   Clients can still connect to it, as with a real partition between the nodes.
//!   The HTTP API exposes the switch (`PUT /test/isolation`) only when this is set.
//! - [`UNSAFE_ACK_BEFORE_COMMIT_ENV`] deliberately breaks durability: publishes are
//!   acknowledged as soon as they are received, before Raft commits them. It exists only so
//!   that the chaos suite's checker can be shown to catch lost writes; never set it in
//!   production.
//!
//! ```text
//!   node 2 isolated:   node 1 ──X──► node 2 ──X──► node 3     (clients ──► node 2 still work)
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

/// Set (to anything) to enable the partition switch.
pub const FAULT_INJECTION_ENV: &str = "CHORUS_TEST_FAULT_INJECTION";

/// Set (to anything) to acknowledge publishes before they commit. Breaks durability.
pub const UNSAFE_ACK_BEFORE_COMMIT_ENV: &str = "CHORUS_UNSAFE_ACK_BEFORE_COMMIT_FOR_TESTS";

/// The state of the fault-injection switches of one node.
#[derive(Debug, Default)]
pub struct Faults {
    enabled: bool,
    ack_before_commit: bool,
    isolated: AtomicBool,
}

impl Faults {
    /// The switches as the environment sets them.
    pub fn from_env() -> Faults {
        let faults = Faults {
            enabled: std::env::var_os(FAULT_INJECTION_ENV).is_some(),
            ack_before_commit: std::env::var_os(UNSAFE_ACK_BEFORE_COMMIT_ENV).is_some(),
            isolated: AtomicBool::new(false),
        };
        if faults.enabled {
            tracing::warn!("{FAULT_INJECTION_ENV} is set: the partition switch is enabled (test-only)");
        }
        if faults.ack_before_commit {
            tracing::error!(
                "{UNSAFE_ACK_BEFORE_COMMIT_ENV} is set: publishes are acknowledged BEFORE they commit (test-only switch)"
            );
        }
        faults
    }

    /// Whether the partition switch may be used.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether publishes are acknowledged before commit.
    pub fn ack_before_commit(&self) -> bool {
        self.ack_before_commit
    }

    /// Whether this node is cut off from its peers now.
    pub fn isolated(&self) -> bool {
        self.isolated.load(Ordering::Relaxed)
    }

    /// Cuts this node off from its peers, or heals it. Returns `false` (and changes nothing)
    /// when the switch is not enabled.
    pub fn set_isolated(&self, isolated: bool) -> bool {
        if !self.enabled {
            return false;
        }
        let before = self.isolated.swap(isolated, Ordering::Relaxed);
        if before != isolated {
            tracing::warn!(
                isolated,
                "fault injection: node-to-node traffic {}",
                if isolated { "cut" } else { "restored" }
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_needs_the_switch() {
        let off = Faults::default();
        assert!(!off.set_isolated(true));
        assert!(!off.isolated());
        let on = Faults {
            enabled: true,
            ..Faults::default()
        };
        assert!(on.set_isolated(true));
        assert!(on.isolated());
        assert!(on.set_isolated(false));
        assert!(!on.isolated());
    }
}
