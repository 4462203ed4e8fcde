//! Presence: per user and device, replicated through the shard of the user's presence channel
//! (`presence.<user>`), kept honest by node leases.
//!
//! ```text
//!  device connects to node 2 ──► SetPresence{online, conn: (node 2, incarnation, conn id)}
//!  node 2, every lease/3     ──► RenewLease{node 2, incarnation, lease_ms}
//!  device disconnects        ──► DeviceGone{conn}           (offline only if conn still matches)
//!  node 2 dies: no renewals  ──► leader: ExpireLease{node 2}  (its devices go offline)
//!  node 2 restarts           ──► RenewLease with a new incarnation (old connections offline)
//! ```
//!
//! A user is online while any device is online; otherwise busy, then away, if any device is;
//! otherwise offline. Everything here is decided by the commands' times (stamped by the shard
//! leader), never by a clock, so every replica reaches the same state.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The prefix of presence channels: `presence.<user>` carries a user's presence events.
pub const PRESENCE_CHANNEL_PREFIX: &str = "presence.";
/// Longest custom status text, bytes.
pub const MAX_CUSTOM_STATUS_LEN: usize = 256;

/// A device's or user's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Not connected (or invisible).
    Offline,
    /// Connected, idle.
    Away,
    /// Connected, do not disturb.
    Busy,
    /// Connected and active.
    Online,
}

impl PresenceStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Offline => "offline",
            PresenceStatus::Away => "away",
            PresenceStatus::Busy => "busy",
            PresenceStatus::Online => "online",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "online" => Ok(PresenceStatus::Online),
            "away" => Ok(PresenceStatus::Away),
            "busy" => Ok(PresenceStatus::Busy),
            "offline" => Ok(PresenceStatus::Offline),
            other => Err(format!(
                "status must be online, away, busy or offline, not {other:?}"
            )),
        }
    }

    /// The order in which a user's status is chosen from their devices' (online first).
    fn rank(self) -> u8 {
        match self {
            PresenceStatus::Online => 3,
            PresenceStatus::Busy => 2,
            PresenceStatus::Away => 1,
            PresenceStatus::Offline => 0,
        }
    }
}

/// Which connection a device's presence belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnRef {
    /// The node holding the connection.
    pub node: u64,
    /// The node process's incarnation (its start time in ms: a restart has a higher one).
    pub incarnation: u64,
    /// The connection's id on that node.
    pub conn: u64,
}

/// One device's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePresence {
    /// Its status.
    pub status: PresenceStatus,
    /// Free text ("in a meeting").
    pub custom_status: Option<String>,
    /// When it was last seen connected, ms since the Unix epoch.
    pub last_seen_ms: u64,
    /// The connection it is on (`None`: disconnected).
    pub conn: Option<ConnRef>,
}

/// A user's presence: their devices and the status that follows from them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPresence {
    /// Devices by name.
    pub devices: BTreeMap<String, DevicePresence>,
}

impl UserPresence {
    /// The user's status: the highest-ranked of their devices'.
    pub fn status(&self) -> PresenceStatus {
        self.devices
            .values()
            .map(|d| d.status)
            .max_by_key(|s| s.rank())
            .unwrap_or(PresenceStatus::Offline)
    }

    /// The custom status of the most recently seen device that is not offline (or of any
    /// device when all are offline).
    pub fn custom_status(&self) -> Option<&str> {
        let status = self.status();
        self.devices
            .values()
            .filter(|d| d.status == status)
            .max_by_key(|d| d.last_seen_ms)
            .and_then(|d| d.custom_status.as_deref())
    }

    /// When any device was last seen.
    pub fn last_seen_ms(&self) -> u64 {
        self.devices.values().map(|d| d.last_seen_ms).max().unwrap_or(0)
    }

    /// The JSON of a presence event or query answer.
    pub fn to_json(&self, user: &str) -> serde_json::Value {
        let devices: serde_json::Map<String, serde_json::Value> = self
            .devices
            .iter()
            .map(|(name, d)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "status": d.status.as_str(),
                        "custom_status": d.custom_status,
                        "last_seen_ms": d.last_seen_ms,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "user": user,
            "status": self.status().as_str(),
            "custom_status": self.custom_status(),
            "last_seen_ms": self.last_seen_ms(),
            "devices": devices,
        })
    }
}

/// A node's lease in one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLease {
    /// The incarnation that renewed it last.
    pub incarnation: u64,
    /// Its devices go offline when a command at or after this time finds it not renewed.
    pub expires_ms: u64,
    /// How many times it lapsed and the node's devices and memberships were taken away;
    /// renewals report it, so the node can tell it must write its presence again.
    pub expirations: u64,
}

/// The presence event type for a change from `before` to `after` (`None`: nothing visible
/// changed).
pub fn change_event_type(before: &UserPresence, after: &UserPresence) -> Option<&'static str> {
    if before == after {
        return None;
    }
    let visible = |p: &UserPresence| {
        p.devices
            .iter()
            .map(|(n, d)| (n.clone(), d.status, d.custom_status.clone()))
            .collect::<Vec<_>>()
    };
    if visible(before) == visible(after) {
        return None; // Only last-seen times or connection ids moved.
    }
    match (before.status(), after.status()) {
        (PresenceStatus::Offline, s) if s != PresenceStatus::Offline => Some("presence.online"),
        (s, PresenceStatus::Offline) if s != PresenceStatus::Offline => Some("presence.offline"),
        _ => Some("presence.changed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(status: PresenceStatus, seen: u64) -> DevicePresence {
        DevicePresence {
            status,
            custom_status: None,
            last_seen_ms: seen,
            conn: None,
        }
    }

    #[test]
    fn a_user_is_online_while_any_device_is() {
        let mut user = UserPresence::default();
        assert_eq!(user.status(), PresenceStatus::Offline);
        user.devices
            .insert("phone".into(), device(PresenceStatus::Away, 1));
        user.devices
            .insert("laptop".into(), device(PresenceStatus::Online, 2));
        assert_eq!(user.status(), PresenceStatus::Online);
        user.devices.get_mut("laptop").unwrap().status = PresenceStatus::Offline;
        assert_eq!(user.status(), PresenceStatus::Away);
        assert_eq!(user.last_seen_ms(), 2);
    }

    #[test]
    fn event_types_follow_the_users_status() {
        let offline = UserPresence::default();
        let mut online = UserPresence::default();
        online
            .devices
            .insert("a".into(), device(PresenceStatus::Online, 1));
        let mut busy = online.clone();
        busy.devices.get_mut("a").unwrap().status = PresenceStatus::Busy;
        let mut seen_later = online.clone();
        seen_later.devices.get_mut("a").unwrap().last_seen_ms = 9;
        assert_eq!(change_event_type(&offline, &online), Some("presence.online"));
        assert_eq!(change_event_type(&online, &busy), Some("presence.changed"));
        assert_eq!(change_event_type(&busy, &offline), Some("presence.offline"));
        assert_eq!(change_event_type(&online, &seen_later), None);
        assert_eq!(PresenceStatus::parse("busy"), Ok(PresenceStatus::Busy));
        assert!(PresenceStatus::parse("gone").is_err());
    }
}
