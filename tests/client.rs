//! The client protocol end to end: SDK (QUIC) and WebSocket clients on real nodes.

mod common;

use anyhow::Result;
use chorus_client::{Error, Event, PublishOptions, SubscribeOptions};
use chorus_proto::client::{Subscribe, client_frame, server_frame};
use common::wire::{WsClient, connect, delimited, quic_connect, read_until};
use common::{shard_of, take, token, wait_for};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn offsets(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.offset).collect()
}

/// Events of a WebSocket subscription, in arrival order.
async fn ws_events(ws: &mut WsClient, n: usize) -> Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = ws
            .recv_until(WAIT, |f| match &f.kind {
                Some(server_frame::Kind::Event(e)) => Some((e.offset, e.data.clone())),
                _ => None,
            })
            .await?;
        out.push(event);
    }
    Ok(out)
}

#[tokio::test]
async fn clients_on_node_1_receive_in_order_what_nodes_2_and_3_publish() -> Result<()> {
    let cluster = common::builder().start().await?;
    let admin = token("reader", &["admin"]);
    let channel = "chat.room1";

    let client = cluster.sdk(&[1], &admin).connect().await?;
    assert_eq!(client.node_id(), Some(1));
    let mut sdk_sub = client.subscribe(channel, SubscribeOptions::default()).await?;

    let mut ws_bin = WsClient::connect(cluster.node(1), false).await?;
    let mut ws_json = WsClient::connect(cluster.node(1), true).await?;
    for ws in [&mut ws_bin, &mut ws_json] {
        ws.handshake(&admin).await?;
        ws.send(
            2,
            client_frame::Kind::Subscribe(Subscribe {
                sub: 7,
                channel: channel.into(),
                ..Default::default()
            }),
        )
        .await?;
        ws.recv_until(WAIT, |f| {
            matches!(f.kind, Some(server_frame::Kind::SubscribeOk(_))).then_some(())
        })
        .await?;
    }

    let total = 60u64;
    for i in 1..=total {
        let via = if i % 2 == 0 { 2 } else { 3 };
        cluster.publish(via, channel, json!({"i": i}), None).await?;
    }
    let expected: Vec<u64> = (1..=total).collect();
    let events = take(&mut sdk_sub, total as usize, WAIT).await?;
    assert_eq!(offsets(&events), expected, "SDK over QUIC");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.json()?, json!({"i": i + 1}));
        assert_eq!(event.event_type.as_deref(), Some("test"));
    }
    for (name, ws) in [("binary", &mut ws_bin), ("json", &mut ws_json)] {
        let got = ws_events(ws, total as usize).await?;
        let got_offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(got_offsets, expected, "WebSocket {name}");
        assert_eq!(got[4].1, json!({"i": 5}).to_string(), "WebSocket {name} data");
    }

    // Publish and history through the SDK on another node, too.
    let other = cluster.sdk(&[3], &admin).connect().await?;
    let ack = other.publish(channel, r#"{"i":61}"#).await?;
    assert_eq!(ack.position.offset, 61);
    assert_eq!(take(&mut sdk_sub, 1, WAIT).await?[0].offset, 61);
    let page = other.history(channel, 58, 10).await?;
    assert_eq!(offsets(&page.events), vec![59, 60, 61]);
    Ok(())
}

#[tokio::test]
async fn recovery_from_a_position_then_live_without_gap_or_duplicate() -> Result<()> {
    let cluster = common::builder().start().await?;
    let admin = token("reader", &["admin"]);
    let channel = "orders.eu";
    for i in 1..=30 {
        cluster.publish(2, channel, json!({"i": i}), None).await?;
    }
    let client = cluster.sdk(&[1], &admin).connect().await?;
    let first = client.history(channel, 0, 1).await?;
    let since = chorus_client::Position {
        epoch: first.epoch,
        offset: 20,
    };
    let mut sub = client
        .subscribe(
            channel,
            SubscribeOptions {
                since: Some(since),
                ..Default::default()
            },
        )
        .await?;
    assert!(sub.info().recovered);
    for i in 31..=40 {
        cluster.publish(3, channel, json!({"i": i}), None).await?;
    }
    let events = take(&mut sub, 20, WAIT).await?;
    assert_eq!(offsets(&events), (21..=40).collect::<Vec<_>>());

    // A position from another epoch: recovery is reported incomplete.
    let stale = client
        .subscribe(
            channel,
            SubscribeOptions {
                since: Some(chorus_client::Position {
                    epoch: first.epoch + 1_000_000,
                    offset: 3,
                }),
                ..Default::default()
            },
        )
        .await?;
    assert!(!stale.info().recovered);
    Ok(())
}

#[tokio::test]
async fn pattern_subscription_receives_channels_of_different_shards() -> Result<()> {
    let cluster = common::builder().start().await?;
    let admin = token("reader", &["admin"]);
    // Channels feed.<n> until four different shards are covered.
    let mut channels = Vec::new();
    let mut shards = BTreeSet::new();
    for n in 0.. {
        let channel = format!("feed.c{n}");
        if shards.insert(shard_of(&channel, cluster.shards)) {
            channels.push(channel);
        }
        if channels.len() == 4 {
            break;
        }
    }
    let client = cluster.sdk(&[1], &admin).connect().await?;
    let mut sub = client.subscribe("feed.*", SubscribeOptions::default()).await?;
    let mut deep = client.subscribe("feed.>", SubscribeOptions::default()).await?;
    cluster.publish(2, "feed.not.one.token", json!({}), None).await?;
    for (i, channel) in channels.iter().enumerate() {
        cluster
            .publish(1 + (i as u64 % 3), channel, json!({"n": i}), None)
            .await?;
    }
    let got: BTreeSet<String> = take(&mut sub, 4, WAIT)
        .await?
        .into_iter()
        .map(|e| e.channel)
        .collect();
    assert_eq!(got, channels.iter().cloned().collect::<BTreeSet<_>>());
    // `>` takes the deeper channel too.
    let deep_got: BTreeSet<String> = take(&mut deep, 5, WAIT)
        .await?
        .into_iter()
        .map(|e| e.channel)
        .collect();
    assert!(deep_got.contains("feed.not.one.token"));
    // `*` does not: node 1 has delivered the deep event (above), so a marker published now
    // reaches `feed.*` after anything the deep event could have produced there.
    cluster.publish(3, "feed.marker", json!({}), None).await?;
    let after = take(&mut sub, 1, WAIT).await?;
    assert_eq!(after[0].channel, "feed.marker");
    Ok(())
}

#[tokio::test]
async fn forbidden_subscription_gets_a_code_and_nothing_else_is_affected() -> Result<()> {
    let cluster = common::builder()
        .config("[roles.admin]\npublish = [\">\"]\nsubscribe = [\">\"]\nadmin = true\n\n[roles.reader]\nsubscribe = [\"public.>\"]\n\n[clients]\nmax_subscriptions_per_connection = 4\n")
        .start()
        .await?;
    let reader = cluster.sdk(&[1], &token("rita", &["reader"])).connect().await?;
    let mut news = reader
        .subscribe("public.news", SubscribeOptions::default())
        .await?;
    for (target, why) in [
        ("secret.plans", "exact"),
        (">", "pattern wider than the role"),
        ("public.*.x", "ok"),
    ] {
        let result = reader.subscribe(target, SubscribeOptions::default()).await;
        if why == "ok" {
            assert!(result.is_ok(), "{target}: {:?}", result.err());
        } else {
            let err = result.expect_err("refused");
            assert_eq!(err.code(), Some("forbidden"), "{target} ({why}): {err}");
        }
    }
    // At most 4 subscriptions per connection (configured above); `news` is one.
    let mut held = Vec::new();
    for channel in ["public.a", "public.b", "public.c"] {
        held.push(reader.subscribe(channel, SubscribeOptions::default()).await?);
    }
    let over = reader.subscribe("public.d", SubscribeOptions::default()).await;
    assert_eq!(over.expect_err("over the cap").code(), Some("bad_request"));
    drop(held);
    let bad = reader
        .subscribe("bad..name", SubscribeOptions::default())
        .await
        .err()
        .unwrap();
    assert_eq!(bad.code(), Some("invalid_channel"));
    let publish = reader.publish("public.news", "{}").await.unwrap_err();
    assert_eq!(publish.code(), Some("forbidden"));
    let not_json = cluster
        .sdk(&[2], &token("ann", &["admin"]))
        .connect()
        .await?
        .publish("public.news", "not json")
        .await
        .err()
        .unwrap();
    assert_eq!(not_json.code(), Some("bad_request"));

    // The allowed subscription and another client keep working.
    let other = cluster.sdk(&[1], &token("ann", &["admin"])).connect().await?;
    let mut other_sub = other
        .subscribe("public.news", SubscribeOptions::default())
        .await?;
    cluster
        .publish(2, "public.news", json!({"headline": 1}), None)
        .await?;
    assert_eq!(take(&mut news, 1, WAIT).await?[0].offset, 1);
    assert_eq!(take(&mut other_sub, 1, WAIT).await?[0].offset, 1);
    Ok(())
}

/// The node an SDK subscriber is connected to dies (SIGKILL) while a publisher keeps going:
/// the subscriber reconnects elsewhere and ends with every acknowledged event exactly once.
#[tokio::test]
async fn subscriber_survives_sigkill_of_its_node() -> Result<()> {
    let mut cluster = common::builder().start().await?;
    let admin = token("sub", &["admin"]);
    let channel = "chat.failover";
    // The SDK's default idle timeout: what notices the dead node.
    let subscriber = cluster
        .sdk(&[1, 2, 3], &admin)
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .connect()
        .await?;
    assert_eq!(subscriber.node_id(), Some(1));
    let mut sub = subscriber.subscribe(channel, SubscribeOptions::default()).await?;
    // Sees its first events only after the kill: recovery must start from where the node
    // stood at subscribe time, not from "now" on the next node.
    // Its shard is led elsewhere, so its publishes commit while node 1 is down.
    let mut quiet_channel = String::new();
    for n in 0.. {
        quiet_channel = format!("chat.quiet{n}");
        if cluster
            .leader_of(2, shard_of(&quiet_channel, cluster.shards))
            .await?
            != Some(1)
        {
            break;
        }
    }
    let mut quiet = subscriber
        .subscribe(&quiet_channel, SubscribeOptions::default())
        .await?;

    let publisher = cluster
        .sdk(&[2, 3], &admin)
        .request_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let total = 300u64;
    let publishing = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 1..=total {
            let options = PublishOptions {
                event_type: None,
                idempotency_key: Some(format!("k-{i}")),
            };
            // Retry with the same key until acknowledged: applied once either way.
            loop {
                match publisher
                    .publish_with(channel, json!({"i": i}).to_string(), options.clone())
                    .await
                {
                    Ok(ack) => {
                        acked.push(ack.position.offset);
                        break;
                    }
                    Err(Error::Server { .. } | Error::Timeout(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(acked)
    });

    let before = take(&mut sub, 50, WAIT).await?;
    cluster.kill(1);
    for i in 1..=5 {
        let key = format!("q-{i}");
        // Retried with the same key until acknowledged (applied once either way).
        wait_for("a publish while node 1 is down", WAIT, || async {
            cluster
                .publish(2, &quiet_channel, json!({"q": i}), Some(key.as_str()))
                .await
                .ok()
        })
        .await?;
    }
    // The subscriber has not noticed the loss yet (2 s idle timeout): these five were
    // published before it reconnected, so only a recovery from its old position brings them.
    assert_eq!(subscriber.node_id(), Some(1), "published before the reconnect");
    let mut events = before;
    events.extend(take(&mut sub, total as usize - 50, Duration::from_secs(60)).await?);
    let acked = publishing.await??;
    assert_eq!(acked.len(), total as usize);
    assert_ne!(subscriber.node_id(), Some(1));
    assert_eq!(
        offsets(&events),
        (1..=total).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    let quiet_events = take(&mut quiet, 5, WAIT).await?;
    assert_eq!(
        offsets(&quiet_events),
        vec![1, 2, 3, 4, 5],
        "published while reconnecting"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.json()?,
            json!({"i": i + 1}),
            "event {} is the publish it claims",
            e.offset
        );
    }
    Ok(())
}

/// Clients that stop reading. A bare QUIC client that reads nothing: the node's queue for it
/// stays bounded and its subscription is stopped with a resync. An SDK client whose
/// application stops reading: the SDK stops taking events for it. Meanwhile a fast client on
/// the same node gets everything, and the SDK client, read again, recovers without a gap.
#[tokio::test]
async fn slow_readers_are_bounded_and_recover_while_fast_reader_keeps_up() -> Result<()> {
    let outbox = 256 * 1024;
    let cluster = common::builder()
        .config(&format!("[clients]\noutbox_max_bytes = {outbox}\n"))
        .start()
        .await?;
    let admin = token("sub", &["admin"]);
    let channel = "feed.firehose";

    // Reads its control stream up to SubscribeOk, then nothing at all.
    let stuck = quic_connect(cluster.node(1).quic, &[cluster.cert_path(1)]).await?;
    let (mut stuck_send, mut stuck_recv) = stuck.open_bi().await?;
    stuck_send
        .write_all(&delimited(1, client_frame::Kind::Connect(connect(&admin))))
        .await?;
    let subscribe = Subscribe {
        sub: 1,
        channel: channel.into(),
        ..Default::default()
    };
    stuck_send
        .write_all(&delimited(2, client_frame::Kind::Subscribe(subscribe)))
        .await?;
    read_until(&mut stuck_recv, WAIT, |f| {
        matches!(f.kind, Some(server_frame::Kind::SubscribeOk(_))).then_some(())
    })
    .await?;

    let slow = cluster
        .sdk(&[1], &admin)
        .subscription_buffer(8)
        .compression(false)
        .connect()
        .await?;
    let mut slow_sub = slow.subscribe(channel, SubscribeOptions::default()).await?;
    // Another subscription on the same connection, read all along.
    let mut slow_other = slow.subscribe("feed.other", SubscribeOptions::default()).await?;
    let fast = cluster.sdk(&[1], &admin).compression(false).connect().await?;
    let mut fast_sub = fast.subscribe(channel, SubscribeOptions::default()).await?;

    // 600 events of 8 KiB: far more than QUIC's stream window plus the 256 KiB queue.
    let total = 600usize;
    let payload = "x".repeat(8 * 1024);
    let publisher = cluster.sdk(&[2], &admin).connect().await?;
    let mut sends = Vec::new();
    for i in 0..total {
        let publisher = publisher.clone();
        let data = json!({"i": i + 1, "pad": payload}).to_string();
        sends.push(tokio::spawn(
            async move { publisher.publish(channel, data).await },
        ));
        if sends.len() >= 32 {
            sends.remove(0).await??;
        }
    }
    for send in sends {
        send.await??;
    }
    let fast_events = take(&mut fast_sub, total, Duration::from_secs(60)).await?;
    assert_eq!(offsets(&fast_events), (1..=total as u64).collect::<Vec<_>>());
    // The unread subscription does not hold up the other one of its connection.
    for i in 1..=20 {
        cluster.publish(2, "feed.other", json!({"i": i}), None).await?;
    }
    let other_events = take(&mut slow_other, 20, WAIT).await?;
    assert_eq!(offsets(&other_events), (1..=20).collect::<Vec<_>>());

    // The stuck client: its queue filled, the node dropped its events and told it to resync,
    // and what is queued for clients on node 1 stays within the caps.
    wait_for("a slow-consumer resync on node 1", WAIT, || async {
        let n = cluster
            .metric(1, "chorus_gateway_resyncs_total{reason=\"slow_consumer\"}")
            .await
            .ok()?;
        (n >= 1.0).then_some(())
    })
    .await?;
    let queued = cluster.metric(1, "chorus_gateway_outbox_bytes").await?;
    assert!(
        queued <= (outbox + 64 * 1024) as f64,
        "queued {queued} bytes for clients on node 1"
    );
    assert!(
        cluster
            .metric(1, "chorus_gateway_outbox_dropped_frames_total")
            .await?
            >= 1.0
    );

    // The SDK client's application reads now: everything, in order, once.
    let slow_events = take(&mut slow_sub, total, Duration::from_secs(60)).await?;
    assert_eq!(
        offsets(&slow_events),
        (1..=total as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(slow_sub.incomplete_recoveries(), 0);
    drop(stuck);
    Ok(())
}

/// The SDK's runnable example (crates/chorus-client/examples/chat.rs) against a real cluster.
#[tokio::test]
async fn sdk_example_runs_against_a_cluster() -> Result<()> {
    let cluster = common::builder().start().await?;
    let example = std::path::Path::new(common::chorus_bin())
        .parent()
        .unwrap()
        .join("examples/chat");
    assert!(
        example.exists(),
        "{} is missing: build it with `cargo build --workspace --all-targets` (make test does)",
        example.display()
    );
    let certs: Vec<String> = (1..=3)
        .map(|id| cluster.cert_path(id).display().to_string())
        .collect();
    let out = tokio::process::Command::new(&example)
        .args([cluster.node(2).quic.to_string(), cluster.node(3).quic.to_string()])
        .env("CHORUS_TOKEN", token("example", &["admin"]))
        .env("CHORUS_CA", certs.join(","))
        .env("CHORUS_CHANNEL", "chat.example")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("{\"connected_to\": 2}"), "{stdout}");
    assert!(
        stdout.contains("{\"event\": 3, \"type\": \"message\", \"data\": {\"text\": \"hello 3\"}}"),
        "{stdout}"
    );
    assert!(stdout.contains("{\"history\": [1, 2, 3]}"), "{stdout}");
    // And with pinned fingerprints instead of certificates.
    let fingerprints: Vec<String> = (1..=3)
        .map(|id| {
            let log = cluster.log(id);
            let start = log.find("sha256=").expect("the node logs its fingerprint") + 7;
            log[start..start + 64].to_string()
        })
        .collect();
    let out = tokio::process::Command::new(&example)
        .arg(cluster.node(1).quic.to_string())
        .env("CHORUS_TOKEN", token("example", &["admin"]))
        .env("CHORUS_FINGERPRINTS", fingerprints.join(","))
        .env("CHORUS_CHANNEL", "chat.pinned")
        .output()
        .await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// `chorus client subscribe | publish | history` against a real cluster.
#[tokio::test]
async fn cli_subscribes_publishes_and_reads_history() -> Result<()> {
    let cluster = common::builder().start().await?;
    let admin = token("cli", &["admin"]);
    let trust: Vec<String> = (1..=3)
        .flat_map(|id| ["--ca".to_string(), cluster.cert_path(id).display().to_string()])
        .collect();
    let node = |id: u64| cluster.node(id).quic.to_string();
    let subscriber = tokio::process::Command::new(common::chorus_bin())
        .args([
            "client",
            "subscribe",
            "chat.>",
            "--count",
            "2",
            "--node",
            &node(1),
            "--token",
            &admin,
        ])
        .args(&trust)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // The subscription is in place once node 1 counts it.
    wait_for("the CLI's subscription on node 1", WAIT, || async {
        (cluster.metric(1, "chorus_gateway_subscriptions").await.ok()? >= 1.0).then_some(())
    })
    .await?;
    for (via, text) in [(2, "one"), (3, "two")] {
        let mut args = vec![
            "client",
            "publish",
            "chat.cli",
            &*format!("{{\"text\":\"{text}\"}}"),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(["--node".into(), node(via), "--token".into(), admin.clone()]);
        args.extend(trust.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = cluster.cli(&refs);
        assert!(ok, "{out}");
        assert!(out.contains("\"channel\":\"chat.cli\""), "{out}");
    }
    let out = tokio::time::timeout(WAIT, subscriber.wait_with_output()).await??;
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines[0]["data"], json!({"text": "one"}));
    assert_eq!(lines[1]["offset"], json!(2));

    let mut args: Vec<String> = ["client", "history", "chat.cli", "--since", "1", "--node"]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend([node(3), "--token".into(), admin.clone()]);
    args.extend(trust.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = cluster.cli(&refs);
    assert!(ok, "{out}");
    let history: Vec<&str> = out.lines().collect();
    assert_eq!(history.len(), 1, "{out}");
    assert!(history[0].contains("\"two\""), "{out}");

    // A forbidden or malformed request gets its code on stderr and a failing exit.
    let mut args: Vec<String> = ["client", "publish", "bad..channel", "{}", "--node"]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend([node(1), "--token".into(), admin]);
    args.extend(trust.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = cluster.cli(&refs);
    assert!(!ok && out.contains("invalid_channel"), "{out}");
    Ok(())
}
