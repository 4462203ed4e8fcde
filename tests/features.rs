//! Typing indicators, presence, collaborative sessions and read receipts on a real 3-node
//! cluster, with clients on different nodes (SDK over QUIC, WebSocket, HTTP).

mod common;

use anyhow::{Context, Result, bail, ensure};
use chorus_client::{Client, Notice, SessionOp, SessionOpOutcome, SubscribeOptions};
use chorus_core::collab::{ConflictPolicy, SessionDoc, parse_op};
use chorus_proto::client::{self as wire, client_frame, server_frame};
use common::wire::WsClient;
use common::{device_token, shard_of, take, token, wait_for};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// The next notice of `event_type` from `user`, failing after `timeout`.
async fn next_notice(
    notices: &mut chorus_client::Notices,
    event_type: &str,
    user: &str,
    timeout: Duration,
) -> Result<Notice> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, notices.next()).await {
            Ok(Some(n)) if n.event_type == event_type && n.json()?["user"] == user => return Ok(n),
            Ok(Some(_)) => continue,
            Ok(None) => bail!("the notice stream ended"),
            Err(_) => bail!("no {event_type} notice from {user} within {timeout:?}"),
        }
    }
}

/// The next WebSocket notice of `event_type` from `user`.
async fn ws_notice(ws: &mut WsClient, event_type: &str, user: &str) -> Result<wire::Notice> {
    ws.recv_until(WAIT, |f| match &f.kind {
        Some(server_frame::Kind::Notice(n)) if n.event_type == event_type && n.data.contains(user) => {
            Some(n.clone())
        }
        _ => None,
    })
    .await
}

async fn typists(client: &Client, channel: &str) -> Vec<(String, String)> {
    client.typists(channel).await.unwrap_or_default()
}

#[tokio::test]
async fn typing_crosses_nodes_and_stops_on_request_disconnect_and_node_death() -> Result<()> {
    // A time to live far beyond the waits below: every stop seen here has another cause.
    let cluster = common::builder()
        .env("CHORUS_TYPING_TTL_MS", "120000")
        .start()
        .await?;
    let channel = "room.typing";
    // The observer is a WebSocket (JSON) client on node 1.
    let mut ws = WsClient::connect(cluster.node(1), true).await?;
    ws.handshake(&token("watcher", &["admin"])).await?;
    let subscribe = wire::Subscribe {
        sub: 1,
        channel: channel.into(),
        ..Default::default()
    };
    ws.send(2, client_frame::Kind::Subscribe(subscribe)).await?;
    ws.recv_until(WAIT, |f| {
        matches!(f.kind, Some(server_frame::Kind::SubscribeOk(_))).then_some(())
    })
    .await?;

    let ann = cluster
        .sdk(&[2], &device_token("ann", "laptop", &["admin"]))
        .connect()
        .await?;
    let carl = cluster.sdk(&[3], &token("carl", &["admin"])).connect().await?;
    ann.typing(channel).await?;
    let started = ws_notice(&mut ws, "typing.started", "ann").await?;
    assert_eq!(
        serde_json::from_str::<Value>(&started.data)?,
        json!({"user": "ann", "device": "laptop"})
    );
    wait_for("node 3 to list ann as typing", WAIT, || async {
        (typists(&carl, channel).await == vec![("ann".to_string(), "laptop".to_string())]).then_some(())
    })
    .await?;

    // An explicit stop.
    ann.stop_typing(channel).await?;
    ws_notice(&mut ws, "typing.stopped", "ann").await?;
    // A closed connection stops its typists at once.
    ann.typing(channel).await?;
    ws_notice(&mut ws, "typing.started", "ann").await?;
    ann.close();
    ws_notice(&mut ws, "typing.stopped", "ann").await?;

    // A killed node's typists disappear from the other nodes.
    let bea = cluster.sdk(&[3], &token("bea", &["admin"])).connect().await?;
    bea.typing(channel).await?;
    ws_notice(&mut ws, "typing.started", "bea").await?;
    let watcher2 = cluster.sdk(&[2], &token("dan", &["admin"])).connect().await?;
    wait_for("node 2 to list bea", WAIT, || async {
        typists(&watcher2, channel)
            .await
            .iter()
            .any(|(u, _)| u == "bea")
            .then_some(())
    })
    .await?;
    let killed = Instant::now();
    cluster.signal(3, libc::SIGKILL);
    ws_notice(&mut ws, "typing.stopped", "bea").await?;
    wait_for("node 2 to drop bea", WAIT, || async {
        typists(&watcher2, channel).await.is_empty().then_some(())
    })
    .await?;
    println!("a killed node's typist stopped after {:?}", killed.elapsed());
    Ok(())
}

#[tokio::test]
async fn a_typist_stops_by_itself_after_the_time_to_live() -> Result<()> {
    let cluster = common::builder()
        .env("CHORUS_TYPING_TTL_MS", "1500")
        .start()
        .await?;
    let channel = "room.ttl";
    let observer = cluster.sdk(&[1], &token("watcher", &["admin"])).connect().await?;
    let _sub = observer.subscribe(channel, SubscribeOptions::default()).await?;
    let mut notices = observer.notices();
    let ann = cluster.sdk(&[2], &token("ann", &["admin"])).connect().await?;
    ann.typing(channel).await?;
    // Throttled: a second call within the repeat interval sends nothing, and is no error.
    ann.typing(channel).await?;
    next_notice(&mut notices, "typing.started", "ann", WAIT).await?;
    next_notice(&mut notices, "typing.stopped", "ann", WAIT).await?;
    // Ann is still connected: the stop came from the time to live (on her node as well).
    wait_for("ann's node to expire her", WAIT, || async {
        typists(&ann, channel).await.is_empty().then_some(())
    })
    .await?;
    // Typing needs publish permission on the channel.
    let reader = cluster.sdk(&[1], &token("rex", &[])).connect().await?;
    let refused = reader.typing(channel).await.unwrap_err();
    assert_eq!(refused.code(), Some("forbidden"), "{refused}");
    Ok(())
}

async fn http_presence(cluster: &common::TestCluster, node: u64, user: &str) -> Option<Value> {
    match cluster
        .call(node, "GET", &format!("/api/v1/presence/{user}"), None)
        .await
    {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

#[tokio::test]
async fn presence_follows_devices_and_a_killed_nodes_lease() -> Result<()> {
    let cluster = common::builder().start().await?;
    let watcher = cluster.sdk(&[1], &token("watcher", &["admin"])).connect().await?;
    let mut events = watcher
        .subscribe("presence.bob", SubscribeOptions::default())
        .await?;
    let phone = cluster
        .sdk(&[2], &device_token("bob", "phone", &["admin"]))
        .connect()
        .await?;
    let laptop = cluster
        .sdk(&[3], &device_token("bob", "laptop", &["admin"]))
        .connect()
        .await?;
    let status_of = |body: &Value, device: &str| body["devices"][device]["status"].as_str().map(String::from);
    wait_for("both devices online", WAIT, || async {
        let p = http_presence(&cluster, 1, "bob").await?;
        (status_of(&p, "phone")? == "online" && status_of(&p, "laptop")? == "online").then_some(())
    })
    .await?;
    phone.set_presence("busy", Some("in a meeting")).await?;
    let seen = watcher.presence("bob").await?;
    assert_eq!(seen.status, "online", "the laptop is still online: {seen:?}");

    phone.close();
    wait_for("the phone offline, bob still online", WAIT, || async {
        let p = http_presence(&cluster, 2, "bob").await?;
        (status_of(&p, "phone")? == "offline" && p["status"] == "online").then_some(())
    })
    .await?;
    laptop.close();
    wait_for("bob offline", WAIT, || async {
        let p = http_presence(&cluster, 3, "bob").await?;
        (p["status"] == "offline").then_some(())
    })
    .await?;
    // The presence channel told the story in order: online, changes, offline.
    let mut types = Vec::new();
    while types.last().map(String::as_str) != Some("presence.offline") {
        let event = take(&mut events, 1, WAIT).await?.remove(0);
        types.push(event.event_type.unwrap_or_default());
    }
    assert_eq!(
        types.first().map(String::as_str),
        Some("presence.online"),
        "{types:?}"
    );
    assert!(
        types[1..types.len() - 1].iter().all(|t| t == "presence.changed"),
        "{types:?}"
    );

    // A device on a node that dies goes offline everywhere once the node's lease lapses.
    let laptop = cluster
        .sdk(&[3], &device_token("bob", "laptop", &["admin"]))
        .reconnect_attempts(1)
        .connect()
        .await?;
    wait_for("bob online again", WAIT, || async {
        (http_presence(&cluster, 1, "bob").await?["status"] == "online").then_some(())
    })
    .await?;
    let killed = Instant::now();
    cluster.signal(3, libc::SIGKILL);
    // Lease 10 s, renewed every 3.3 s; an election when node 3 led the presence shard.
    for node in [1, 2] {
        wait_for(
            "bob offline after node 3 died",
            Duration::from_secs(25),
            || async { (http_presence(&cluster, node, "bob").await?["status"] == "offline").then_some(()) },
        )
        .await?;
    }
    println!("offline everywhere {:?} after the SIGKILL", killed.elapsed());
    drop(laptop);
    Ok(())
}

/// Runs 100 operations from one client, based on the newest version it has seen; returns
/// (applied, refused).
async fn run_ops(client: Client, session: String, who: usize) -> Result<(u64, u64)> {
    let (mut seen, mut applied, mut refused) = (0, 0, 0);
    for k in 0..100 {
        let tag = json!(format!("c{who}-{k}"));
        let op = match k % 4 {
            0 => SessionOp::Set(format!("/k{}", k % 5), tag),
            1 => SessionOp::Increment("/n".into(), json!(1)),
            2 => SessionOp::Append("/log".into(), tag),
            _ => SessionOp::Set("/title".into(), tag),
        };
        // Op 51 sets /title based on version 0: a guaranteed conflict (op 3 changed it).
        let base = if k == 51 { 0 } else { seen };
        match client.session_op(&session, op, base).await? {
            SessionOpOutcome::Applied { version, .. } => {
                applied += 1;
                seen = seen.max(version);
            }
            SessionOpOutcome::Conflict { version, .. } => {
                refused += 1;
                seen = seen.max(version);
            }
        }
    }
    Ok((applied, refused))
}

/// Applies `session.operation_applied` events to `doc`, checking their versions follow on.
fn replay(doc: &mut SessionDoc, events: &[chorus_client::Event]) -> Result<()> {
    for event in events {
        ensure!(
            event.event_type.as_deref() == Some("session.operation_applied"),
            "{event:?}"
        );
        let data = event.json()?;
        ensure!(data["version"] == doc.version() + 1, "version gap at {data}");
        let (path, kind) = parse_op(
            data["op"].as_str().context("op")?,
            data["path"].as_str().context("path")?,
            data.get("value").cloned(),
        )
        .map_err(anyhow::Error::msg)?;
        let base = data["base_version"].as_u64().context("base_version")?;
        doc.apply(&path, &kind, base)
            .map_err(|e| anyhow::anyhow!("replaying {data}: {e}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn sessions_apply_concurrent_ops_identically_on_every_replica() -> Result<()> {
    let cluster = common::builder().start().await?;
    let admin = |n: usize| token(&format!("user{n}"), &["admin"]);
    let mut clients = Vec::new();
    for n in 1..=3u64 {
        clients.push(cluster.sdk(&[n], &admin(n as usize)).connect().await?);
    }
    let initial = json!({"title": "", "n": 0, "log": []});
    for (policy_name, policy) in [("lww", ConflictPolicy::Lww), ("reject", ConflictPolicy::Reject)] {
        let session = format!("doc.{policy_name}");
        clients[0].create_session(&session, policy_name, &initial).await?;
        // An observer follows every operation from the snapshot on.
        let observer = cluster.sdk(&[1], &admin(9)).connect().await?;
        let snapshot = observer.session(&session).await?;
        assert_eq!((snapshot.version, &snapshot.document), (0, &initial));
        let options = SubscribeOptions {
            since: Some(snapshot.position),
            ..Default::default()
        };
        let mut ops = observer.subscribe(&session, options).await?;

        let runs: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(who, c)| tokio::spawn(run_ops(c.clone(), session.clone(), who)))
            .collect();
        let (mut applied, mut refused) = (0, 0);
        for run in runs {
            let (a, r) = run.await??;
            applied += a;
            refused += r;
        }
        assert_eq!(applied + refused, 300);
        match policy {
            ConflictPolicy::Lww => assert_eq!(refused, 0, "lww applies everything"),
            ConflictPolicy::Reject => assert!(refused >= 3, "each client's op 51 conflicts: {refused}"),
        }

        // Every replica holds the same document at the same version.
        let mut documents = Vec::new();
        for node in 1..=3 {
            let (status, body) = cluster
                .call(node, "GET", &format!("/api/v1/sessions/{session}"), None)
                .await?;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["version"], applied, "node {node}: {body}");
            documents.push(body["document"].clone());
        }
        assert!(documents.iter().all(|d| *d == documents[0]), "{documents:?}");
        assert_eq!(
            documents[0]["n"],
            json!(75),
            "every increment commutes and applies"
        );

        // Replaying the applied operations in version order gives the same document.
        let events = take(&mut ops, applied as usize, WAIT).await?;
        let mut copy = SessionDoc::new(policy, initial.clone())?;
        replay(&mut copy, &events)?;
        assert_eq!(copy.document(), &documents[0]);

        // A late joiner: snapshot, then the operations after it, converges.
        let joiner = cluster.sdk(&[2], &admin(8)).connect().await?;
        let late = joiner.session(&session).await?;
        let mut doc = SessionDoc::new(policy, late.document.clone())?;
        let options = SubscribeOptions {
            since: Some(late.position),
            ..Default::default()
        };
        let mut follow = joiner.subscribe(&session, options).await?;
        let mut base = late.version;
        for i in 0..10 {
            let op = match i % 4 {
                0 => SessionOp::Increment("/n".into(), json!(2)),
                1 => SessionOp::Set("/title".into(), json!(format!("late {i}"))),
                2 => SessionOp::Append("/log".into(), json!(i)),
                _ => SessionOp::Delete("/log/0".into()),
            };
            match clients[2].session_op(&session, op, base).await? {
                SessionOpOutcome::Applied { version, .. } => base = version,
                other => bail!("op {i} based on the newest version was refused: {other:?}"),
            }
        }
        let more = take(&mut follow, 10, WAIT).await?;
        for event in &more {
            let data = event.json()?;
            let (path, kind) = parse_op(
                data["op"].as_str().context("op")?,
                data["path"].as_str().context("path")?,
                data.get("value").cloned(),
            )
            .map_err(anyhow::Error::msg)?;
            // The copy counts its own versions from the snapshot: base it on its newest.
            let newest = doc.version();
            doc.apply(&path, &kind, newest)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let (_, body) = cluster
            .call(3, "GET", &format!("/api/v1/sessions/{session}"), None)
            .await?;
        assert_eq!(doc.document(), &body["document"], "the late joiner converged");
    }
    Ok(())
}

#[tokio::test]
async fn read_positions_survive_a_node_kill_and_count_unread() -> Result<()> {
    let mut cluster = common::builder().start().await?;
    let channel = "chat.reads";
    for i in 0..10 {
        cluster.publish(1, channel, json!({"i": i}), None).await?;
    }
    let rita = token("rita", &["admin"]);
    let watcher = cluster.sdk(&[3], &token("watcher", &["admin"])).connect().await?;
    let _sub = watcher.subscribe(channel, SubscribeOptions::default()).await?;
    let mut notices = watcher.notices();

    let reader = cluster.sdk(&[2], &rita).connect().await?;
    let read = reader.mark_read(channel, 4).await?;
    assert_eq!((read.read_offset, read.last_offset, read.unread), (4, 10, 6));
    let notice = next_notice(&mut notices, "message.read", "rita", WAIT).await?;
    assert_eq!(notice.json()?, json!({"user": "rita", "offset": 4}));
    // Positions never move back.
    assert_eq!(reader.mark_read(channel, 2).await?.read_offset, 4);
    reader.close();

    // Kill the leader of the channel's shard: the position must come from the others' logs.
    let shard = shard_of(channel, cluster.shards);
    let leader = wait_for("a leader of the channel's shard", WAIT, || async {
        cluster.leader_of(1, shard).await.ok().flatten()
    })
    .await?;
    cluster.kill(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    let survivor = cluster.sdk(&survivors, &rita).connect().await?;
    let positions = wait_for("unread counts after the kill", WAIT, || async {
        survivor.unread(&[channel]).await.ok()
    })
    .await?;
    assert_eq!((positions[0].read_offset, positions[0].unread), (4, 6));
    cluster
        .publish(survivors[0], channel, json!({"i": 10}), None)
        .await?;
    let all = survivor.unread(&[]).await?;
    let mine = all
        .iter()
        .find(|p| p.channel == channel)
        .context("chat.reads listed")?;
    assert_eq!((mine.read_offset, mine.last_offset, mine.unread), (4, 11, 7));

    // The killed node comes back with the same positions.
    cluster.start_node(leader)?;
    cluster.wait_ready(leader, WAIT).await?;
    let back = cluster.sdk(&[leader], &rita).connect().await?;
    let positions = back.unread(&[channel]).await?;
    assert_eq!((positions[0].read_offset, positions[0].unread), (4, 7));
    Ok(())
}

#[tokio::test]
async fn rosters_list_subscribers_across_nodes_with_join_and_leave_notices() -> Result<()> {
    let mut cluster = common::builder()
        .config("[presence]\nroster_channels = [\"room.>\"]\n")
        .start()
        .await?;
    let room = "room.lobby";
    let watcher = cluster
        .sdk(&[1], &device_token("wat", "w", &["admin"]))
        .connect()
        .await?;
    let mut notices = watcher.notices();
    let _watching = watcher.subscribe(room, SubscribeOptions::default()).await?;
    // A subscriber hears its own join: the membership is written once the subscription is in
    // place (docs/protocol.md, section 15).
    next_notice(&mut notices, "presence.join", "wat", WAIT).await?;
    let pair = |u: &str, d: &str| (u.to_string(), d.to_string());
    let asker = cluster.sdk(&[3], &token("asker", &["admin"])).connect().await?;
    wait_for("the watcher in the roster", WAIT, || async {
        (asker.roster(room).await.ok()? == vec![pair("wat", "w")]).then_some(())
    })
    .await?;

    let ann = cluster
        .sdk(&[2], &device_token("ann", "phone", &["admin"]))
        .reconnect_attempts(1)
        .connect()
        .await?;
    let first = ann.subscribe(room, SubscribeOptions::default()).await?;
    next_notice(&mut notices, "presence.join", "ann", WAIT).await?;
    assert_eq!(
        asker.roster(room).await?,
        vec![pair("ann", "phone"), pair("wat", "w")]
    );
    // A second subscription of the same connection changes nothing; the last one leaving does.
    let second = ann.subscribe(room, SubscribeOptions::default()).await?;
    drop(first);
    drop(second);
    next_notice(&mut notices, "presence.leave", "ann", WAIT).await?;
    assert_eq!(asker.roster(room).await?, vec![pair("wat", "w")]);

    // Unsubscribing and subscribing again at once: the leave and the join are written in that
    // order (one writer per connection and channel), so ann ends up listed.
    let third = ann.subscribe(room, SubscribeOptions::default()).await?;
    next_notice(&mut notices, "presence.join", "ann", WAIT).await?;
    drop(third);
    let _again = ann.subscribe(room, SubscribeOptions::default()).await?;
    next_notice(&mut notices, "presence.leave", "ann", WAIT).await?;
    next_notice(&mut notices, "presence.join", "ann", WAIT).await?;
    assert_eq!(
        asker.roster(room).await?,
        vec![pair("ann", "phone"), pair("wat", "w")]
    );

    // A member on a node that dies leaves once the node's lease lapses.
    cluster.kill(2);
    next_notice(&mut notices, "presence.leave", "ann", Duration::from_secs(25)).await?;
    let (status, body) = cluster
        .call(1, "GET", &format!("/api/v1/channels/{room}/roster"), None)
        .await?;
    assert_eq!(
        (status, &body["members"]),
        (200, &json!([{"user": "wat", "device": "w"}]))
    );
    // Channels without a roster say so.
    let refused = watcher.roster("chat.none").await.unwrap_err();
    assert_eq!(refused.code(), Some("bad_request"), "{refused}");
    Ok(())
}

fn ws_error(frame: &wire::ServerFrame) -> Option<wire::Error> {
    match &frame.kind {
        Some(server_frame::Kind::Error(e)) => Some(e.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn bad_session_and_presence_input_gets_clear_errors_and_changes_nothing() -> Result<()> {
    let cluster = common::builder().start().await?;
    let put = |body: Value| cluster.call(1, "PUT", "/api/v1/sessions/doc.bad", Some(body));
    let (status, body) = put(json!({"policy": "reject", "document": {"n": 1, "s": "x", "l": []}})).await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = put(json!({"policy": "reject"})).await?;
    assert_eq!((status, body["code"].as_str()), (409, Some("conflict")), "{body}");
    let (status, body) = cluster
        .call(
            1,
            "PUT",
            "/api/v1/sessions/doc.x",
            Some(json!({"policy": "maybe"})),
        )
        .await?;
    assert!(
        status == 400 && body["message"].as_str().unwrap().contains("policy"),
        "{body}"
    );
    let (status, body) = cluster
        .call(
            1,
            "PUT",
            "/api/v1/sessions/doc.x",
            Some(json!({"policy": "lww", "document": [1]})),
        )
        .await?;
    assert!(
        status == 400 && body["message"].as_str().unwrap().contains("JSON object"),
        "{body}"
    );

    let op = |node: u64, session: &str, body: Value| {
        let path = format!("/api/v1/sessions/{session}/ops");
        let cluster = &cluster;
        async move { cluster.call(node, "POST", &path, Some(body)).await }
    };
    let cases = [
        (
            json!({"op": "set", "path": "n", "value": 1, "base_version": 0}),
            400,
            "JSON Pointer",
        ),
        (
            json!({"op": "set", "path": "/a~2", "value": 1, "base_version": 0}),
            400,
            "~",
        ),
        (
            json!({"op": "increment", "path": "/s", "value": 1, "base_version": 0}),
            400,
            "needs a number",
        ),
        (
            json!({"op": "increment", "path": "/n", "value": "x", "base_version": 0}),
            400,
            "needs a number",
        ),
        (
            json!({"op": "append", "path": "/n", "value": 1, "base_version": 0}),
            400,
            "needs a list",
        ),
        (
            json!({"op": "set", "path": "/s/deeper", "value": 1, "base_version": 0}),
            400,
            "holds a string",
        ),
        (
            json!({"op": "delete", "path": "/missing", "base_version": 0}),
            404,
            "no value at /missing",
        ),
        (
            json!({"op": "move", "path": "/n", "base_version": 0}),
            400,
            "set, delete",
        ),
        (
            json!({"op": "set", "path": "/n", "value": 1, "base_version": 99}),
            400,
            "ahead",
        ),
        (json!({"op": "set", "path": "/n"}), 400, "base_version"),
    ];
    for (body, want_status, want_text) in cases {
        let (status, reply) = op(2, "doc.bad", body.clone()).await?;
        assert_eq!(status, want_status, "{body} -> {reply}");
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(message.contains(want_text), "{body} -> {reply}");
    }
    let (status, reply) = op(
        3,
        "doc.none",
        json!({"op": "delete", "path": "/a", "base_version": 0}),
    )
    .await?;
    assert!(
        status == 404 && reply["message"].as_str().unwrap().contains("create it first"),
        "{reply}"
    );
    let (_, doc) = cluster.call(3, "GET", "/api/v1/sessions/doc.bad", None).await?;
    assert_eq!(doc["version"], 0, "nothing applied: {doc}");
    assert_eq!(doc["document"], json!({"n": 1, "s": "x", "l": []}));

    // The reject policy: a second write based on version 0 is refused with the current value.
    let (status, _) = op(
        1,
        "doc.bad",
        json!({"op": "set", "path": "/n", "value": 5, "base_version": 0}),
    )
    .await?;
    assert_eq!(status, 200);
    let (status, reply) = op(
        1,
        "doc.bad",
        json!({"op": "set", "path": "/n", "value": 6, "base_version": 0}),
    )
    .await?;
    assert_eq!(
        (status, &reply["current"], &reply["version"]),
        (409, &json!(5), &json!(1)),
        "{reply}"
    );

    // The same rules over WebSocket (protobuf).
    let mut ws = WsClient::connect(cluster.node(2), false).await?;
    ws.handshake(&token("wes", &["admin"])).await?;
    let bad_path = wire::SessionOp {
        session: "doc.bad".into(),
        op: "set".into(),
        path: "n".into(),
        value: "1".into(),
        base_version: 1,
    };
    ws.send(2, client_frame::Kind::SessionOp(bad_path)).await?;
    let error = ws.recv_until(WAIT, ws_error).await?;
    assert_eq!(error.code, "bad_request", "{error:?}");
    let bad_value = wire::SessionOp {
        session: "doc.bad".into(),
        op: "set".into(),
        path: "/n".into(),
        value: "{not json".into(),
        base_version: 1,
    };
    ws.send(3, client_frame::Kind::SessionOp(bad_value)).await?;
    let error = ws.recv_until(WAIT, ws_error).await?;
    assert!(error.message.contains("not JSON"), "{error:?}");
    let asleep = wire::SetPresence {
        status: "asleep".into(),
        custom_status: String::new(),
    };
    ws.send(4, client_frame::Kind::SetPresence(asleep)).await?;
    let error = ws.recv_until(WAIT, ws_error).await?;
    assert!(
        error.message.contains("online, away, busy or offline"),
        "{error:?}"
    );
    let applied = wire::SessionOp {
        session: "doc.bad".into(),
        op: "increment".into(),
        path: "/n".into(),
        value: "2".into(),
        base_version: 1,
    };
    ws.send(5, client_frame::Kind::SessionOp(applied)).await?;
    let result = ws
        .recv_until(WAIT, |f| match &f.kind {
            Some(server_frame::Kind::SessionOpResult(r)) => Some(r.clone()),
            _ => None,
        })
        .await?;
    assert!(result.applied && result.version == 2, "{result:?}");

    // Nobody publishes into presence channels.
    let refused = cluster
        .publish(1, "presence.bob", json!({"status": "online"}), None)
        .await;
    assert!(format!("{refused:?}").contains("presence channel"), "{refused:?}");
    let (status, _) = cluster.call(1, "GET", "/api/v1/presence/bad..name", None).await?;
    assert_eq!(status, 400);
    Ok(())
}

#[tokio::test]
async fn cli_drives_sessions_presence_typing_and_receipts() -> Result<()> {
    let cluster = common::builder().start().await?;
    let admin = token("cli", &["admin"]);
    let run = |args: &[&str]| -> Result<Value> {
        let mut full: Vec<String> = vec!["client".into()];
        full.extend(args.iter().map(|a| a.to_string()));
        full.extend([
            "--node".into(),
            cluster.node(2).quic.to_string(),
            "--token".into(),
            admin.clone(),
        ]);
        full.extend(["--ca".into(), cluster.cert_path(2).display().to_string()]);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let (ok, out) = cluster.cli(&refs);
        ensure!(ok, "chorus {args:?} failed: {out}");
        let line = out.lines().find(|l| l.starts_with('{')).context("a JSON line")?;
        Ok(serde_json::from_str(line)?)
    };
    let created = run(&[
        "session-create",
        "doc.cli",
        "--policy",
        "reject",
        "--document",
        r#"{"a":1}"#,
    ])?;
    assert_eq!(created["version"], 0);
    let applied = run(&["session-op", "doc.cli", "increment", "/a", "41"])?;
    assert_eq!(
        (applied["applied"].as_bool(), &applied["version"]),
        (Some(true), &json!(1))
    );
    let refused = run(&["session-op", "doc.cli", "set", "/a", "0", "--base-version", "0"])?;
    assert_eq!(
        (refused["conflict"].as_bool(), &refused["current"]),
        (Some(true), &json!(42))
    );
    let got = run(&["session-get", "doc.cli"])?;
    assert_eq!(got["document"], json!({"a": 42}));
    cluster.publish(1, "chat.cli", json!(1), None).await?;
    cluster.publish(1, "chat.cli", json!(2), None).await?;
    assert_eq!(run(&["read", "chat.cli", "1"])?["unread"], 1);
    assert_eq!(run(&["unread", "chat.cli"])?["channels"][0]["read_offset"], 1);
    assert_eq!(run(&["typing", "room.cli"])?["typing"], true);
    assert_eq!(run(&["presence", "nobody"])?["status"], "offline");
    Ok(())
}

/// Found by a new user: retention ran only when a channel was written, so a channel nobody
/// wrote to again kept its events past `max_age_secs` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_channels_expired_events_are_swept() -> Result<()> {
    let cluster = common::builder()
        .shards(2)
        .config("[history]\nmax_age_secs = 1\nsweep_interval_secs = 1\n")
        .start()
        .await?;
    let first = cluster.publish(1, "sweep.idle", json!("old"), None).await?;
    assert_eq!(cluster.history(2, "sweep.idle").await?.len(), 1);
    for node in 1..=3 {
        wait_for(
            &format!("node {node} to have swept the idle channel"),
            Duration::from_secs(15),
            || async {
                let (status, page) = cluster
                    .call(node, "GET", "/api/v1/channels/sweep.idle/history?since=0", None)
                    .await
                    .ok()?;
                (status == 200 && page["messages"] == json!([])).then_some(page)
            },
        )
        .await
        .map(|page| {
            // Emptied, not forgotten: its subscribers go on from the same epoch and offset.
            assert_eq!(
                (&page["epoch"], &page["last_offset"]),
                (&first["epoch"], &json!(1))
            );
        })?;
    }
    let reply = cluster.publish(2, "sweep.idle", json!("new"), None).await?;
    assert_eq!((&reply["epoch"], &reply["offset"]), (&first["epoch"], &json!(2)));
    Ok(())
}
