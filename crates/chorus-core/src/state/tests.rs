use super::*;

fn publish(channel: &str, data: &str, key: Option<&str>, time_ms: u64) -> Command {
    Command::Publish(PublishCommand {
        channel: ChannelName::new(channel).unwrap(),
        event_type: Some("message".into()),
        data: data.into(),
        publisher: "alice".into(),
        idempotency_key: key.map(String::from),
        time_ms,
    })
}

fn published(result: CommandResult) -> Published {
    match result {
        CommandResult::Published(p) => p,
        other => panic!("expected Published, got {other:?}"),
    }
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

#[test]
fn offsets_are_gapless_per_channel_from_one() {
    let mut state = ShardState::default();
    let mut offsets = Vec::new();
    for (i, channel) in ["a", "b", "a", "a", "b"].iter().enumerate() {
        let ctx = ApplyContext {
            log_index: i as u64 + 1,
        };
        offsets.push(published(state.apply(ctx, &publish(channel, "1", None, 10))).offset);
    }
    assert_eq!(offsets, vec![1, 1, 2, 3, 2]);
    let page = state.history(&ch("a"), 0, 100);
    assert_eq!(
        page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(page.epoch, 1, "epoch is the log index that created the channel");
    assert_eq!(state.history(&ch("b"), 0, 100).epoch, 2);
}

#[test]
fn idempotency_key_returns_original_offset_and_appends_nothing() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    let first = published(state.apply(ctx, &publish("a", "1", Some("k"), 10)));
    published(state.apply(ctx, &publish("a", "2", None, 11)));
    let retry = published(state.apply(ctx, &publish("a", "1", Some("k"), 12)));
    assert_eq!(retry.offset, first.offset);
    assert!(retry.duplicate && !first.duplicate);
    assert_eq!(state.history(&ch("a"), 0, 10).messages.len(), 2);
    // The same key on another channel is a different write.
    let other = published(state.apply(ctx, &publish("b", "1", Some("k"), 13)));
    assert!(!other.duplicate);
}

/// Found by probing: a publish by mallory with key `order-42` made alice's later publish
/// with the same key answer `duplicate: true`, and alice's message was lost. The edges
/// scope a client's key to its publisher before proposing.
#[test]
fn another_publishers_key_does_not_swallow_a_publish() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    let by = |publisher: &str, data: &str, time_ms: u64| {
        let key = crate::scoped_idempotency_key(publisher, "order-42");
        let mut command = publish("orders", data, Some(&key), time_ms);
        if let Command::Publish(p) = &mut command {
            p.publisher = publisher.into();
        }
        command
    };
    let squatted = published(state.apply(ctx, &by("mallory", "\"fake\"", 10)));
    let real = published(state.apply(ctx, &by("alice", "\"real\"", 11)));
    assert!(!real.duplicate, "alice's publish was taken for mallory's");
    assert_eq!(real.offset, squatted.offset + 1);
    let retry = published(state.apply(ctx, &by("alice", "\"real\"", 12)));
    assert!(
        retry.duplicate && retry.offset == real.offset,
        "alice's own retry is one"
    );
    // Publisher and key are told apart whatever they contain.
    assert_ne!(
        crate::scoped_idempotency_key("ab", "c"),
        crate::scoped_idempotency_key("a", "bc")
    );
}

#[test]
fn idempotency_key_expires_after_window() {
    let limits = HistoryLimits {
        dedupe_window_ms: 100,
        ..Default::default()
    };
    let mut state = ShardState::new(limits);
    let ctx = ApplyContext { log_index: 1 };
    published(state.apply(ctx, &publish("a", "1", Some("k"), 1_000)));
    let within = published(state.apply(ctx, &publish("a", "1", Some("k"), 1_100)));
    assert!(within.duplicate);
    let after = published(state.apply(ctx, &publish("a", "1", Some("k"), 1_101)));
    assert!(!after.duplicate);
    assert_eq!(after.offset, 2);
}

#[test]
fn history_is_bounded_by_entries_and_age() {
    let limits = HistoryLimits {
        max_entries: 3,
        max_age_ms: 1_000,
        dedupe_window_ms: 0,
    };
    let mut state = ShardState::new(limits);
    let ctx = ApplyContext { log_index: 1 };
    for t in 0..5 {
        state.apply(ctx, &publish("a", "1", None, 100 + t));
    }
    let page = state.history(&ch("a"), 0, 10);
    assert_eq!(
        page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(page.first_retained, 3);
    // A write 2 s later ages out everything older than 1 s.
    state.apply(ctx, &publish("a", "1", None, 2_200));
    let page = state.history(&ch("a"), 0, 10);
    assert_eq!(
        page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![6]
    );
    assert_eq!(page.last_offset, 6);
}

/// Retention used to run only when a channel was written: an idle channel kept its events
/// and idempotency keys for ever.
#[test]
fn a_sweep_expires_the_events_and_keys_of_idle_channels() {
    let limits = HistoryLimits {
        max_entries: 100,
        max_age_ms: 1_000,
        dedupe_window_ms: 5_000,
    };
    let mut state = ShardState::new(limits);
    let sweep = |time_ms| Command::Sweep(crate::command::SweepCommand { time_ms });
    state.apply(ApplyContext { log_index: 1 }, &publish("idle", "1", None, 100));
    state.apply(
        ApplyContext { log_index: 2 },
        &publish("keyed", "1", Some("k"), 100),
    );
    state.apply(ApplyContext { log_index: 3 }, &publish("keyed", "2", None, 900));
    assert!(!state.sweep_due(1_000), "nothing is old yet");
    assert!(state.sweep_due(1_200));
    assert_eq!(
        state.apply(ApplyContext { log_index: 4 }, &sweep(1_200)),
        CommandResult::Swept { events: 2, keys: 0 }
    );
    let page = state.history(&ch("idle"), 0, 10);
    assert_eq!((page.epoch, page.last_offset, page.first_retained), (1, 1, 2));
    assert!(page.messages.is_empty());
    let page = state.history(&ch("keyed"), 0, 10);
    assert_eq!(
        page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![2]
    );
    assert!(!state.sweep_due(1_300), "a sweep leaves nothing due");
    // The key is remembered for its window, then forgotten: the same key appends again.
    let retry = published(state.apply(
        ApplyContext { log_index: 5 },
        &publish("keyed", "1", Some("k"), 1_400),
    ));
    assert_eq!((retry.offset, retry.duplicate), (1, true));
    assert_eq!(
        state.apply(ApplyContext { log_index: 6 }, &sweep(5_200)),
        CommandResult::Swept { events: 1, keys: 1 }
    );
    let again = published(state.apply(
        ApplyContext { log_index: 7 },
        &publish("keyed", "3", Some("k"), 5_300),
    ));
    assert_eq!((again.epoch, again.offset, again.duplicate), (2, 3, false));
    // An emptied channel goes on from its last offset under the same epoch.
    let idle = published(state.apply(ApplyContext { log_index: 8 }, &publish("idle", "2", None, 5_300)));
    assert_eq!((idle.epoch, idle.offset), (1, 2));
}

#[test]
fn history_reads_after_since_with_limit() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    for t in 0..10 {
        state.apply(ctx, &publish("a", &t.to_string(), None, t));
    }
    let page = state.history(&ch("a"), 4, 3);
    assert_eq!(
        page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    assert!(state.history(&ch("a"), 10, 3).messages.is_empty());
    assert!(state.history(&ch("a"), u64::MAX, 3).messages.is_empty());
    let unknown = state.history(&ch("nope"), 0, 3);
    assert_eq!((unknown.epoch, unknown.last_offset), (0, 0));
}

#[test]
fn replicas_fed_the_same_commands_are_identical() {
    let commands: Vec<Command> = (0..200)
        .map(|i| publish(&format!("c{}", i % 7), "{}", (i % 3 == 0).then_some("k"), i))
        .collect();
    let run = || {
        let mut s = ShardState::default();
        for (i, c) in commands.iter().enumerate() {
            s.apply(ApplyContext { log_index: i as u64 }, c);
        }
        s
    };
    assert_eq!(run(), run());
}

#[test]
fn first_cluster_id_wins() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    let first = state.apply(ctx, &Command::SetClusterId("a".into()));
    let second = state.apply(ctx, &Command::SetClusterId("b".into()));
    assert_eq!(first, CommandResult::ClusterId("a".into()));
    assert_eq!(second, CommandResult::ClusterId("a".into()));
    assert_eq!(state.cluster_id(), Some("a"));
}

fn conn(node: u64, incarnation: u64, conn: u64) -> crate::ConnRef {
    crate::ConnRef {
        node,
        incarnation,
        conn,
    }
}

fn online(user: &str, device: &str, c: crate::ConnRef, time_ms: u64) -> Command {
    Command::SetPresence(SetPresenceCommand {
        user: user.into(),
        device: device.into(),
        status: PresenceStatus::Online,
        custom_status: None,
        conn: c,
        lease_ms: 10_000,
        connect: true,
        time_ms,
    })
}

fn gone(user: &str, device: &str, c: crate::ConnRef, time_ms: u64) -> Command {
    Command::DeviceGone(DeviceGoneCommand {
        user: user.into(),
        device: device.into(),
        conn: c,
        time_ms,
    })
}

fn event_types(out: &[AppliedOutput]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            AppliedOutput::Event { message, .. } => message.event_type.as_deref().map(String::from),
            AppliedOutput::Notice { event_type, .. } => Some(event_type.clone()),
            AppliedOutput::Revoked(_) => None,
        })
        .collect()
}

#[test]
fn presence_follows_devices_and_node_leases() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    let mut out = Vec::new();
    let (phone, laptop) = (conn(1, 11, 1), conn(2, 22, 1));
    state.apply_with_output(ctx, &online("al", "phone", phone, 100), &mut out);
    state.apply_with_output(ctx, &online("al", "laptop", laptop, 200), &mut out);
    // A stale disconnect (another connection of the device) changes nothing.
    state.apply_with_output(ctx, &gone("al", "phone", conn(1, 11, 99), 300), &mut out);
    assert_eq!(
        state.apply_with_output(ctx, &gone("al", "phone", phone, 400), &mut out),
        CommandResult::Presence(PresenceStatus::Online)
    );
    assert_eq!(
        event_types(&out),
        vec!["presence.online", "presence.changed", "presence.changed"]
    );
    // Node 2 renews until 5_000 + 10_000; an expiry before that does nothing.
    let renew = |time_ms| {
        Command::RenewLease(RenewLeaseCommand {
            node: 2,
            incarnation: 22,
            lease_ms: 10_000,
            time_ms,
        })
    };
    state.apply(ctx, &renew(5_000));
    assert!(state.lapsed_leases(14_999).is_empty());
    assert_eq!(state.lapsed_leases(15_000), vec![2]);
    let expire = |time_ms| Command::ExpireLease(crate::command::ExpireLeaseCommand { node: 2, time_ms });
    assert_eq!(
        state.apply(ctx, &expire(14_000)),
        CommandResult::Expired { offline: 0 }
    );
    out.clear();
    assert_eq!(
        state.apply_with_output(ctx, &expire(15_000), &mut out),
        CommandResult::Expired { offline: 1 }
    );
    assert_eq!(event_types(&out), vec!["presence.offline"]);
    let al = state.presence("al").unwrap();
    assert_eq!(al.status(), PresenceStatus::Offline);
    assert_eq!(al.last_seen_ms(), 15_000);
    assert!(state.lapsed_leases(u64::MAX).is_empty());
    // Presence events land in the user's presence channel, in order.
    let page = state.history(&ch("presence.al"), 0, 10);
    assert_eq!(page.messages.len(), 4);
}

#[test]
fn a_restarted_node_takes_its_old_connections_offline() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    state.apply(ctx, &online("bo", "d", conn(3, 1, 1), 100));
    let renewed = Command::RenewLease(RenewLeaseCommand {
        node: 3,
        incarnation: 2,
        lease_ms: 10_000,
        time_ms: 200,
    });
    assert_eq!(
        state.apply(ctx, &renewed),
        CommandResult::Renewed { expirations: Some(0) }
    );
    assert_eq!(state.presence("bo").unwrap().status(), PresenceStatus::Offline);
    // After an expiry, renewals count it.
    let expire = Command::ExpireLease(crate::command::ExpireLeaseCommand {
        node: 3,
        time_ms: 60_000,
    });
    state.apply(ctx, &expire);
    let late = Command::RenewLease(RenewLeaseCommand {
        node: 3,
        incarnation: 2,
        lease_ms: 10_000,
        time_ms: 61_000,
    });
    assert_eq!(
        state.apply(ctx, &late),
        CommandResult::Renewed { expirations: Some(1) }
    );
    // A late write of the first process (incarnation 1) while incarnation 2's lease is
    // live is ignored...
    let late_old = Command::RenewLease(RenewLeaseCommand {
        node: 3,
        incarnation: 1,
        lease_ms: 10_000,
        time_ms: 62_000,
    });
    assert_eq!(
        state.apply(ctx, &late_old),
        CommandResult::Renewed { expirations: None }
    );
    // ...but once that lease lapsed, a lower incarnation (a clock that went back on
    // restart) is a new process like any other.
    state.apply(ctx, &online("bo", "d", conn(3, 1, 5), 80_000));
    assert_eq!(state.presence("bo").unwrap().status(), PresenceStatus::Online);
}

#[test]
fn renewals_report_lapsed_leases_even_after_a_status_write() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    state.apply(ctx, &online("cy", "a", conn(4, 7, 1), 0));
    state.apply(
        ctx,
        &Command::ExpireLease(crate::command::ExpireLeaseCommand {
            node: 4,
            time_ms: 20_000,
        }),
    );
    assert_eq!(state.presence("cy").unwrap().status(), PresenceStatus::Offline);
    // A write of the node lands first (a retry after a partition healed)...
    state.apply(ctx, &online("cy", "b", conn(4, 7, 2), 20_100));
    let renew = |time_ms| {
        Command::RenewLease(RenewLeaseCommand {
            node: 4,
            incarnation: 7,
            lease_ms: 10_000,
            time_ms,
        })
    };
    // ...renewals still report the expiry (every one: a node that missed a reply learns
    // it from the next).
    for time_ms in [20_200, 20_300] {
        assert_eq!(
            state.apply(ctx, &renew(time_ms)),
            CommandResult::Renewed { expirations: Some(1) }
        );
    }
}

#[test]
fn late_writes_of_replaced_connections_and_processes_change_nothing() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    let (old, new) = (conn(5, 1, 1), conn(5, 1, 2));
    state.apply(ctx, &online("di", "d", old, 0));
    state.apply(ctx, &online("di", "d", new, 10));
    // A status change of the old connection, applied late, does not take the device back.
    let mut late = online("di", "d", old, 20);
    if let Command::SetPresence(set) = &mut late {
        set.connect = false;
        set.status = PresenceStatus::Away;
    }
    state.apply(ctx, &late);
    state.apply(ctx, &gone("di", "d", old, 30));
    let di = state.presence("di").unwrap();
    assert_eq!(
        (di.status(), di.devices["d"].conn),
        (PresenceStatus::Online, Some(new))
    );
    // A write of an earlier process of the node (incarnation 0 < 1) is ignored.
    state.apply(ctx, &online("di", "e", conn(5, 0, 9), 40));
    assert!(!state.presence("di").unwrap().devices.contains_key("e"));
}

#[test]
fn roster_members_leave_with_their_nodes_lease_or_restart() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    let join = |c: crate::ConnRef, user: &str, time_ms| {
        Command::RosterJoin(RosterCommand {
            channel: ch("room.a"),
            user: user.into(),
            device: "d".into(),
            conn: c,
            lease_ms: 10_000,
            time_ms,
        })
    };
    let mut out = Vec::new();
    state.apply_with_output(ctx, &join(conn(1, 5, 1), "ann", 0), &mut out);
    state.apply_with_output(ctx, &join(conn(2, 5, 1), "bo", 0), &mut out);
    // A roster member alone keeps its node's lease checked.
    assert_eq!(state.lapsed_leases(10_000), vec![1, 2]);
    let expire = Command::ExpireLease(crate::command::ExpireLeaseCommand {
        node: 1,
        time_ms: 10_000,
    });
    state.apply_with_output(ctx, &expire, &mut out);
    // Node 2 restarts (incarnation 6): its earlier members leave.
    state.apply_with_output(ctx, &join(conn(2, 6, 3), "cy", 10_500), &mut out);
    assert_eq!(
        event_types(&out),
        vec![
            "presence.join",
            "presence.join",
            "presence.leave",
            "presence.leave",
            "presence.join"
        ]
    );
    let members: Vec<String> = state.roster(&ch("room.a")).into_iter().map(|m| m.user).collect();
    assert_eq!(members, vec!["cy"]);
}

#[test]
fn read_positions_only_move_forward_and_count_unread() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    for t in 0..5 {
        state.apply(ctx, &publish("a", "1", None, t));
    }
    let read = |offset| {
        Command::MarkRead(MarkReadCommand {
            channel: ch("a"),
            user: "al".into(),
            offset,
            time_ms: 10,
        })
    };
    let mut out = Vec::new();
    let CommandResult::Read(position) = state.apply_with_output(ctx, &read(3), &mut out) else {
        panic!("a read position")
    };
    assert_eq!(
        (position.read_offset, position.unread(), position.moved),
        (3, 2, true)
    );
    assert_eq!(event_types(&out), vec!["message.read"]);
    let CommandResult::Read(back) = state.apply(ctx, &read(1)) else {
        panic!()
    };
    assert_eq!((back.read_offset, back.moved), (3, false));
    let CommandResult::Read(beyond) = state.apply(ctx, &read(99)) else {
        panic!()
    };
    assert_eq!((beyond.read_offset, beyond.unread()), (5, 0));
    assert_eq!(state.read_positions_of("al").len(), 1);
    assert_eq!(state.read_position(&ch("a"), "bo").unread(), 5);
}

#[test]
fn session_operations_append_events_and_refuse_without_change() {
    use crate::collab::{ConflictPolicy, DocPath, OpKind};
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    let op = |path: &str, kind: OpKind, base_version| {
        Command::SessionOp(SessionOpCommand {
            channel: ch("doc"),
            path: DocPath::parse(path).unwrap(),
            kind,
            base_version,
            author: "al".into(),
            time_ms: 1,
        })
    };
    let missing = state.apply(ctx, &op("/a", OpKind::Delete, 0));
    assert!(matches!(
        missing,
        CommandResult::SessionOp(Err(OpError::NoSession { .. }))
    ));
    let create = Command::CreateSession(CreateSessionCommand {
        channel: ch("doc"),
        policy: ConflictPolicy::Reject,
        document: serde_json::json!({"n": 1}),
        creator: "al".into(),
        time_ms: 1,
    });
    assert!(matches!(
        state.apply(ctx, &create),
        CommandResult::SessionCreated(Ok(_))
    ));
    assert!(matches!(
        state.apply(ctx, &create),
        CommandResult::SessionCreated(Err(OpError::Exists { .. }))
    ));
    let CommandResult::SessionOp(Ok(applied)) =
        state.apply(ctx, &op("/n", OpKind::Increment(serde_json::json!(2)), 0))
    else {
        panic!("applied")
    };
    assert_eq!((applied.applied.version, applied.offset), (1, 2));
    let refused = state.apply(ctx, &op("/n", OpKind::Set(serde_json::json!(0)), 0));
    assert!(matches!(
        refused,
        CommandResult::SessionOp(Err(OpError::Conflict { .. }))
    ));
    let (doc, position) = state.session(&ch("doc")).unwrap();
    assert_eq!(doc.document(), &serde_json::json!({"n": 3}));
    assert_eq!((position.version, position.offset), (1, 2));
}

#[test]
fn set_limits_applies_retention_at_once() {
    let mut state = ShardState::default();
    let ctx = ApplyContext { log_index: 1 };
    for t in 0..5 {
        state.apply(ctx, &publish("a", "1", None, t));
    }
    let limits = HistoryLimits {
        max_entries: 2,
        ..Default::default()
    };
    assert_eq!(
        state.apply(ctx, &Command::SetLimits(limits)),
        CommandResult::LimitsSet
    );
    assert_eq!(state.limits(), limits);
    assert_eq!(state.history(&ch("a"), 0, 10).messages.len(), 2);
}
