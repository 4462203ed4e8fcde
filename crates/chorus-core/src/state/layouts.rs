//! [`ShardState`] as snapshots of earlier builds encoded it, read and converted at load.

use super::*;

/// [`ShardState`] as snapshots of builds before quotas encoded it.
#[derive(Deserialize)]
pub struct ShardStateWithoutQuotas {
    limits: HistoryLimits,
    cluster_id: Option<String>,
    clock_ms: u64,
    channels: BTreeMap<ChannelName, ChannelLog>,
    sessions: BTreeMap<ChannelName, SessionDoc>,
    presence: BTreeMap<String, UserPresence>,
    leases: BTreeMap<u64, NodeLease>,
    reads: BTreeMap<ChannelName, BTreeMap<String, u64>>,
    rosters: Rosters,
    revocations: crate::revocation::Revocations,
}

impl From<ShardStateWithoutQuotas> for ShardState {
    fn from(old: ShardStateWithoutQuotas) -> Self {
        ShardState {
            history_bytes: HistoryBytes::counted(
                old.channels
                    .iter()
                    .map(|(channel, log)| (channel, log.messages.iter().map(|m| &**m))),
            ),
            limits: old.limits,
            cluster_id: old.cluster_id,
            clock_ms: old.clock_ms,
            channels: old.channels,
            sessions: old.sessions,
            presence: old.presence,
            leases: old.leases,
            reads: old.reads,
            rosters: old.rosters,
            revocations: old.revocations,
            quotas: HistoryQuotas::default(),
        }
    }
}

/// [`ShardState`] as snapshots of builds before revocations encoded it (postcard has no
/// field names: a new field cannot be read as absent, so the old layout is read whole).
#[derive(Deserialize)]
pub struct ShardStateWithoutRevocations {
    limits: HistoryLimits,
    cluster_id: Option<String>,
    clock_ms: u64,
    channels: BTreeMap<ChannelName, ChannelLog>,
    sessions: BTreeMap<ChannelName, SessionDoc>,
    presence: BTreeMap<String, UserPresence>,
    leases: BTreeMap<u64, NodeLease>,
    reads: BTreeMap<ChannelName, BTreeMap<String, u64>>,
    rosters: Rosters,
}

impl From<ShardStateWithoutRevocations> for ShardState {
    fn from(old: ShardStateWithoutRevocations) -> Self {
        ShardStateWithoutQuotas {
            limits: old.limits,
            cluster_id: old.cluster_id,
            clock_ms: old.clock_ms,
            channels: old.channels,
            sessions: old.sessions,
            presence: old.presence,
            leases: old.leases,
            reads: old.reads,
            rosters: old.rosters,
            revocations: Default::default(),
        }
        .into()
    }
}
