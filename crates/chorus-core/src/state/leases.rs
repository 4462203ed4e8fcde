//! Presence and node leases: devices online per user, taken offline when their connection
//! goes, when their node's lease lapses or when the node restarts.

use super::*;

impl ShardState {
    /// Changes a user's presence with `change` and appends the event it makes visible.
    pub(super) fn change_presence(
        &mut self,
        ctx: ApplyContext,
        user: &str,
        time_ms: u64,
        out: &mut Vec<AppliedOutput>,
        change: impl FnOnce(&mut UserPresence),
    ) -> PresenceStatus {
        let entry = self.presence.entry(user.to_string()).or_default();
        let before = entry.clone();
        change(entry);
        let after = entry.clone();
        if let Some(event_type) = change_event_type(&before, &after)
            && let Ok(channel) = ChannelName::new(format!("{PRESENCE_CHANNEL_PREFIX}{user}"))
        {
            let data = after.to_json(user).to_string();
            let event = ClusterEvent {
                event_type,
                data,
                publisher: user,
                time_ms,
            };
            self.append_event(ctx, &channel, event, out);
        }
        after.status()
    }

    /// Accepts a sign of life from `incarnation` of `node` at `now`: extends its lease, and
    /// when the node restarted, takes its earlier connections' devices and memberships away.
    /// False (nothing done) for a late write of a replaced process: an older incarnation
    /// while the newer one's lease is live. (Once that lease lapsed, an older incarnation
    /// number is accepted: a node whose clock went back on restart still comes online.)
    pub(super) fn node_alive(
        &mut self,
        ctx: ApplyContext,
        node: u64,
        incarnation: u64,
        lease_ms: u64,
        now: u64,
        out: &mut Vec<AppliedOutput>,
    ) -> bool {
        let expires_ms = now.saturating_add(lease_ms);
        let lease = self.leases.entry(node).or_insert(NodeLease {
            incarnation,
            expires_ms,
            expirations: 0,
        });
        if incarnation < lease.incarnation && lease.expires_ms > now {
            return false;
        }
        let restarted = lease.incarnation != incarnation;
        lease.incarnation = incarnation;
        lease.expires_ms = if restarted {
            expires_ms
        } else {
            lease.expires_ms.max(expires_ms)
        };
        if restarted {
            let users: Vec<String> = self
                .presence
                .iter()
                .filter(|(_, p)| {
                    p.devices.values().any(|d| {
                        d.conn
                            .is_some_and(|c| c.node == node && c.incarnation != incarnation)
                    })
                })
                .map(|(user, _)| user.clone())
                .collect();
            let earlier = |c: &crate::presence::ConnRef| c.node == node && c.incarnation != incarnation;
            self.devices_offline(ctx, users, now, out, earlier);
            self.rosters.drop_where(earlier, now, out);
        }
        true
    }

    /// Every device whose connection matches `gone` goes offline; returns how many.
    pub(super) fn devices_offline(
        &mut self,
        ctx: ApplyContext,
        users: Vec<String>,
        time_ms: u64,
        out: &mut Vec<AppliedOutput>,
        gone: impl Fn(&crate::presence::ConnRef) -> bool,
    ) -> u32 {
        let mut count = 0;
        for user in users {
            self.change_presence(ctx, &user, time_ms, out, |p| {
                for device in p.devices.values_mut() {
                    if device.conn.as_ref().is_some_and(&gone) {
                        device.conn = None;
                        device.status = PresenceStatus::Offline;
                        device.last_seen_ms = time_ms;
                        count += 1;
                    }
                }
            });
        }
        count
    }

    pub(super) fn set_presence(
        &mut self,
        ctx: ApplyContext,
        cmd: &SetPresenceCommand,
        out: &mut Vec<AppliedOutput>,
    ) -> PresenceStatus {
        let now = self.advance_clock(cmd.time_ms);
        let current = |state: &Self| {
            state
                .presence
                .get(&cmd.user)
                .map_or(PresenceStatus::Offline, UserPresence::status)
        };
        // A status change (not a connect) from a connection the device has left since: the
        // device belongs to its newer connection.
        if !cmd.connect
            && self
                .presence
                .get(&cmd.user)
                .and_then(|p| p.devices.get(&cmd.device))
                .and_then(|d| d.conn)
                .is_some_and(|c| c != cmd.conn)
        {
            return current(self);
        }
        if !self.node_alive(ctx, cmd.conn.node, cmd.conn.incarnation, cmd.lease_ms, now, out) {
            return current(self);
        }
        self.change_presence(ctx, &cmd.user, cmd.time_ms, out, |p| {
            p.devices.insert(
                cmd.device.clone(),
                DevicePresence {
                    status: cmd.status,
                    custom_status: cmd.custom_status.clone(),
                    last_seen_ms: cmd.time_ms,
                    conn: Some(cmd.conn),
                },
            );
        })
    }

    pub(super) fn device_gone(
        &mut self,
        ctx: ApplyContext,
        cmd: &DeviceGoneCommand,
        out: &mut Vec<AppliedOutput>,
    ) -> PresenceStatus {
        self.advance_clock(cmd.time_ms);
        if !self.presence.contains_key(&cmd.user) {
            return PresenceStatus::Offline;
        }
        self.change_presence(ctx, &cmd.user, cmd.time_ms, out, |p| {
            if let Some(device) = p.devices.get_mut(&cmd.device)
                && device.conn == Some(cmd.conn)
            {
                device.conn = None;
                device.status = PresenceStatus::Offline;
                device.last_seen_ms = cmd.time_ms;
            }
        })
    }

    /// A renewal: returns how many times the node's lease has lapsed so far (the node
    /// compares it with what it saw last, and writes its connections' presence again when
    /// it grew), or `None` for a late renewal of a replaced process.
    pub(super) fn renew_lease(
        &mut self,
        ctx: ApplyContext,
        cmd: &RenewLeaseCommand,
        out: &mut Vec<AppliedOutput>,
    ) -> Option<u64> {
        let now = self.advance_clock(cmd.time_ms);
        if !self.node_alive(ctx, cmd.node, cmd.incarnation, cmd.lease_ms, now, out) {
            return None;
        }
        self.leases.get(&cmd.node).map(|lease| lease.expirations)
    }

    pub(super) fn expire_lease(
        &mut self,
        ctx: ApplyContext,
        node: u64,
        time_ms: u64,
        out: &mut Vec<AppliedOutput>,
    ) -> u32 {
        let now = self.advance_clock(time_ms);
        match self.leases.get_mut(&node) {
            // Kept, marked: the node's next renewal learns that its devices were taken offline.
            Some(lease) if lease.expires_ms <= now => lease.expirations += 1,
            _ => return 0, // Renewed meanwhile.
        }
        let users: Vec<String> = self
            .presence
            .iter()
            .filter(|(_, p)| p.devices.values().any(|d| d.conn.is_some_and(|c| c.node == node)))
            .map(|(user, _)| user.clone())
            .collect();
        self.rosters.drop_where(|c| c.node == node, now, out);
        self.devices_offline(ctx, users, now, out, |c| c.node == node)
    }

    /// Nodes whose lease in this shard lapsed at `now_ms` while devices still count on it:
    /// the shard leader proposes [`Command::ExpireLease`] for each.
    pub fn lapsed_leases(&self, now_ms: u64) -> Vec<u64> {
        self.leases
            .iter()
            .filter(|(_, lease)| lease.expires_ms <= now_ms)
            .map(|(node, _)| *node)
            .filter(|node| {
                self.rosters.has_node(*node)
                    || self.presence.values().any(|p| {
                        p.devices
                            .values()
                            .any(|d| d.conn.is_some_and(|c| c.node == *node))
                    })
            })
            .collect()
    }

    /// A user's presence, if this shard has any for them.
    pub fn presence(&self, user: &str) -> Option<&UserPresence> {
        self.presence.get(user)
    }
}
