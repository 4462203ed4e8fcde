//! The stable map from channel name to shard.
//!
//! A channel belongs to shard `fnv1a_64(name) % shard_count`, where `fnv1a_64` is the 64-bit
//! FNV-1a hash of the name's UTF-8 bytes (offset basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`). The function is part of the on-disk contract: every node of a cluster,
//! of every version, must place a channel on the same shard, so it never changes. The shard
//! count is fixed when a cluster is created.

use serde::{Deserialize, Serialize};

/// The index of a shard, `0..shard_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The 64-bit FNV-1a hash of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The shard that owns `channel` in a cluster of `shard_count` shards.
///
/// # Panics
/// If `shard_count` is 0; configuration validation rules that out.
pub fn shard_for(channel: &str, shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "shard_count must be positive");
    ShardId((fnv1a_64(channel.as_bytes()) % u64::from(shard_count)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Reference values of the FNV-1a 64-bit specification.
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn placement_is_stable_and_spread() {
        // Pinned: changing the hash would move existing channels to other shards.
        assert_eq!(
            shard_for("chat.room-1", 12),
            ShardId((fnv1a_64(b"chat.room-1") % 12) as u32)
        );
        let mut counts = [0u32; 12];
        for i in 0..1200 {
            counts[shard_for(&format!("chan-{i}"), 12).0 as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50), "uneven spread: {counts:?}");
    }
}
