//! Channel rosters: who is subscribed to a channel, replicated in the channel's shard for the
//! channels a node's `[presence] roster_channels` names.
//!
//! ```text
//!  subscribe on node 2 ──► RosterJoin{channel, conn (node 2, incarnation, conn id)}
//!  unsubscribe / close ──► RosterLeave{channel, conn}
//!  node 2's lease lapses, or it restarts ──► its members leave
//!  first connection of a user joins ──► notice presence.join; last one leaves ──► presence.leave
//! ```
//!
//! Members are kept per connection, so a user with two devices, or two subscriptions on two
//! nodes, stays a member until the last one leaves. Join and leave notices are live-only
//! (not in the channel's history, so they never count as unread); the roster itself is
//! queried.

use crate::channel::ChannelName;
use crate::presence::ConnRef;
use crate::state::AppliedOutput;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A member of a roster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
}

/// The rosters of one shard's channels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rosters {
    channels: BTreeMap<ChannelName, BTreeMap<ConnRef, Member>>,
}

fn notice(channel: &ChannelName, event_type: &str, member: &Member, time_ms: u64) -> AppliedOutput {
    AppliedOutput::Notice {
        channel: channel.clone(),
        event_type: event_type.to_string(),
        data: serde_json::json!({"user": member.user, "device": member.device}).to_string(),
        publisher: member.user.clone(),
        time_ms,
    }
}

impl Rosters {
    fn has_user(members: &BTreeMap<ConnRef, Member>, user: &str) -> bool {
        members.values().any(|m| m.user == user)
    }

    /// Connection `conn` of `member` subscribed to `channel`. Returns the member count.
    pub fn join(
        &mut self,
        channel: &ChannelName,
        conn: ConnRef,
        member: Member,
        time_ms: u64,
        out: &mut Vec<AppliedOutput>,
    ) -> u32 {
        let members = self.channels.entry(channel.clone()).or_default();
        if !Self::has_user(members, &member.user) {
            out.push(notice(channel, "presence.join", &member, time_ms));
        }
        members.insert(conn, member);
        members.len() as u32
    }

    /// Connection `conn` left `channel`. Returns the member count.
    pub fn leave(
        &mut self,
        channel: &ChannelName,
        conn: ConnRef,
        time_ms: u64,
        out: &mut Vec<AppliedOutput>,
    ) -> u32 {
        let Some(members) = self.channels.get_mut(channel) else {
            return 0;
        };
        if let Some(member) = members.remove(&conn)
            && !Self::has_user(members, &member.user)
        {
            out.push(notice(channel, "presence.leave", &member, time_ms));
        }
        let count = members.len() as u32;
        if count == 0 {
            self.channels.remove(channel);
        }
        count
    }

    /// Removes every membership whose connection is `gone`; returns how many.
    pub fn drop_where(
        &mut self,
        gone: impl Fn(&ConnRef) -> bool,
        time_ms: u64,
        out: &mut Vec<AppliedOutput>,
    ) -> u32 {
        let doomed: Vec<(ChannelName, ConnRef)> = self
            .channels
            .iter()
            .flat_map(|(channel, members)| {
                members
                    .keys()
                    .filter(|c| gone(c))
                    .map(|c| (channel.clone(), *c))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (channel, conn) in &doomed {
            self.leave(channel, *conn, time_ms, out);
        }
        doomed.len() as u32
    }

    /// Whether any membership is on `node`.
    pub fn has_node(&self, node: u64) -> bool {
        self.channels
            .values()
            .any(|members| members.keys().any(|c| c.node == node))
    }

    /// The members of `channel`: each (user, device) once, sorted.
    pub fn members(&self, channel: &ChannelName) -> Vec<Member> {
        let unique: BTreeSet<&Member> = self
            .channels
            .get(channel)
            .into_iter()
            .flat_map(|m| m.values())
            .collect();
        unique.into_iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(node: u64, conn: u64) -> ConnRef {
        ConnRef {
            node,
            incarnation: 1,
            conn,
        }
    }

    fn member(user: &str, device: &str) -> Member {
        Member {
            user: user.into(),
            device: device.into(),
        }
    }

    fn kinds(out: &[AppliedOutput]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                AppliedOutput::Notice { event_type, data, .. } => format!("{event_type} {data}"),
                AppliedOutput::Event { .. } => "event".into(),
                AppliedOutput::Revoked(_) => "revoked".into(),
            })
            .collect()
    }

    #[test]
    fn a_user_joins_with_the_first_connection_and_leaves_with_the_last() {
        let room = ChannelName::new("room.1").unwrap();
        let mut rosters = Rosters::default();
        let mut out = Vec::new();
        rosters.join(&room, conn(1, 1), member("ann", "phone"), 0, &mut out);
        rosters.join(&room, conn(2, 1), member("ann", "laptop"), 0, &mut out);
        rosters.join(&room, conn(2, 2), member("bo", "d"), 0, &mut out);
        assert_eq!(
            rosters.members(&room),
            vec![member("ann", "laptop"), member("ann", "phone"), member("bo", "d")]
        );
        rosters.leave(&room, conn(1, 1), 0, &mut out);
        assert_eq!(rosters.drop_where(|c| c.node == 2, 0, &mut out), 2);
        assert_eq!(
            kinds(&out),
            vec![
                r#"presence.join {"device":"phone","user":"ann"}"#,
                r#"presence.join {"device":"d","user":"bo"}"#,
                r#"presence.leave {"device":"laptop","user":"ann"}"#,
                r#"presence.leave {"device":"d","user":"bo"}"#,
            ]
        );
        assert!(rosters.members(&room).is_empty() && !rosters.has_node(2));
        assert_eq!(
            rosters.leave(&room, conn(9, 9), 0, &mut out),
            0,
            "unknown: nothing"
        );
    }
}
