//! The client protocol's edges on a real node: bad bytes, frames out of order, heartbeats,
//! idle connections, token expiry and refresh. Every case ends with the node still serving.

mod common;

use anyhow::{Result, bail};
use chorus_client::SubscribeOptions;
use chorus_proto::client::{Ping, Publish, RefreshToken, Subscribe, client_frame, server_frame};
use common::wire::{WsClient, connect, delimited, disconnect_code, quic_connect, read_all_frames};
use common::{JWT_SECRET, TestCluster, wait_for};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const FAST_TIMERS: &str = "[clients]\nheartbeat_interval_ms = 300\nidle_timeout_ms = 1500\ntoken_grace_ms = 500\nconnect_timeout_ms = 1000\n";

fn token_expiring_in(sub: &str, secs: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let claims = json!({"sub": sub, "exp": exp, "roles": ["admin"]});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Sends `bytes` on a fresh QUIC control stream (optionally after a valid Connect) and
/// returns the code of the Disconnect frame the node answers with.
async fn quic_send(
    cluster: &TestCluster,
    connect_first: bool,
    bytes: &[u8],
    finish: bool,
) -> Result<Option<String>> {
    let certs = vec![cluster.cert_path(1)];
    let connection = quic_connect(cluster.node(1).quic, &certs).await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    if connect_first {
        send.write_all(&delimited(
            1,
            client_frame::Kind::Connect(connect(&cluster.token)),
        ))
        .await?;
    }
    send.write_all(bytes).await?;
    if finish {
        send.finish()?;
    }
    let frames = read_all_frames(&mut recv, Duration::from_secs(10)).await;
    Ok(disconnect_code(&frames))
}

/// The node still serves: a fresh SDK client publishes and receives its own event.
async fn still_serving(cluster: &TestCluster) -> Result<()> {
    let client = cluster.sdk(&[1], &cluster.token).connect().await?;
    let mut sub = client
        .subscribe("check.alive", SubscribeOptions::default())
        .await?;
    let ack = client.publish("check.alive", "{}").await?;
    let event = tokio::time::timeout(Duration::from_secs(10), sub.next_event()).await?;
    assert_eq!(event.map(|e| e.offset), Some(ack.position.offset));
    client.close();
    Ok(())
}

#[tokio::test]
async fn bad_bytes_on_the_wire_close_only_that_connection() -> Result<()> {
    let cluster = common::builder().config(FAST_TIMERS).start().await?;
    // A client connected throughout must be unaffected.
    let bystander = cluster.sdk(&[1], &cluster.token).connect().await?;
    let mut watched = bystander
        .subscribe("chat.watched", SubscribeOptions::default())
        .await?;

    let mut random = vec![0u8; 4096];
    for (i, b) in random.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    let cases: Vec<(&str, bool, Vec<u8>, bool)> = vec![
        ("random bytes", false, random.clone(), false),
        ("random bytes after connect", true, random, false),
        (
            "oversized frame",
            true,
            (10u32 * 1024 * 1024).to_be_bytes().to_vec(),
            false,
        ),
        ("truncated frame", true, [0, 0, 0, 50, 8, 1, 2].to_vec(), true),
        (
            "frame before connect",
            false,
            delimited(
                1,
                client_frame::Kind::Subscribe(Subscribe {
                    sub: 1,
                    channel: "chat.x".into(),
                    ..Default::default()
                }),
            ),
            false,
        ),
        // Field 20 (unknown to this protocol) and no kind.
        (
            "unknown frame type",
            true,
            [0, 0, 0, 3, 0xa0, 0x01, 0x01].to_vec(),
            false,
        ),
        (
            "second connect",
            true,
            delimited(2, client_frame::Kind::Connect(connect(&cluster.token))),
            false,
        ),
    ];
    for (name, connect_first, bytes, finish) in cases {
        let code = quic_send(&cluster, connect_first, &bytes, finish).await?;
        assert_eq!(code.as_deref(), Some("protocol_error"), "{name}");
    }
    let bad_token = quic_send(
        &cluster,
        false,
        &delimited(1, client_frame::Kind::Connect(connect("not.a.jwt"))),
        false,
    )
    .await?;
    assert_eq!(bad_token.as_deref(), Some("unauthorized"));

    // The same over WebSocket: binary garbage, JSON garbage, an unknown JSON frame kind.
    for (json, message) in [
        (false, Message::Binary(vec![0xff, 0x00, 0x13, 0x37].into())),
        (
            true,
            Message::Text("{\"id\": 1, \"kind\": {\"teleport\": {}}}".into()),
        ),
        (true, Message::Text("not json at all".into())),
    ] {
        let mut ws = WsClient::connect(cluster.node(1), json).await?;
        ws.handshake(&cluster.token).await?;
        ws.send_raw(message).await?;
        let code = ws
            .recv_until(Duration::from_secs(10), |f| match &f.kind {
                Some(server_frame::Kind::Disconnect(d)) => Some(d.code.clone()),
                _ => None,
            })
            .await?;
        assert_eq!(code, "protocol_error");
        assert!(
            ws.recv(Duration::from_secs(10)).await?.is_none(),
            "closed after the error"
        );
        assert_eq!(
            ws.close_code,
            Some(4400),
            "WebSocket close code of protocol_error"
        );
    }
    // Found by a third-party client: when a JSON client's first message fails, the
    // disconnect came as binary protobuf in 5-17 of 30-40 tries. Every try answers in JSON
    // (`recv` fails on a binary frame of a JSON connection).
    for attempt in 0..30 {
        let first = match attempt % 3 {
            0 => "not json at all",
            1 => "{\"id\": 1}",
            _ => "{\"id\": 1, \"kind\": {\"subscribe\": {\"sub\": 1, \"channel\": \"chat.x\"}}}",
        };
        let mut ws = WsClient::connect(cluster.node(1), true).await?;
        ws.send_raw(Message::Text(first.into())).await?;
        let code = ws
            .recv_until(Duration::from_secs(10), |f| match &f.kind {
                Some(server_frame::Kind::Disconnect(d)) => Some(d.code.clone()),
                _ => None,
            })
            .await?;
        assert_eq!(code, "protocol_error", "{first}");
    }
    // An oversized publish is a request error, not a protocol error: the connection stays.
    let client = cluster.sdk(&[1], &cluster.token).connect().await?;
    let big = format!("\"{}\"", "x".repeat(70 * 1024));
    let err = client.publish("chat.x", big).await.expect_err("refused");
    assert_eq!(err.code(), Some("payload_too_large"));
    client.publish("chat.x", "{}").await?;
    // Extreme positions are answered, not crashed on (the hub serves every connection).
    for offset in [u64::MAX, u64::MAX - 1] {
        let since = Some(chorus_client::Position { epoch: 0, offset });
        let sub = client
            .subscribe(
                "chat.x",
                SubscribeOptions {
                    since,
                    ..Default::default()
                },
            )
            .await?;
        assert!(sub.info().recovered);
    }
    let page = client.history("chat.x", u64::MAX, 1000).await?;
    assert!(page.events.is_empty());

    cluster
        .publish(2, "chat.watched", json!({"still": "here"}), None)
        .await?;
    let event = tokio::time::timeout(Duration::from_secs(10), watched.next_event()).await?;
    assert_eq!(event.map(|e| e.offset), Some(1));
    still_serving(&cluster).await
}

/// Event data of 512 bytes or more goes deflated to connections that asked for it, and
/// plain to the others; the SDK inflates it.
#[tokio::test]
async fn large_event_data_is_compressed_when_negotiated() -> Result<()> {
    let cluster = common::builder().start().await?;
    let channel = "chat.big";
    let mut deflating = WsClient::connect(cluster.node(1), false).await?;
    let mut hello = connect(&cluster.token);
    hello.accept_compression = vec!["deflate".into()];
    deflating.send(1, client_frame::Kind::Connect(hello)).await?;
    let compression = deflating
        .recv_until(Duration::from_secs(10), |f| match &f.kind {
            Some(server_frame::Kind::ConnectOk(ok)) => Some(ok.compression.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(compression, "deflate");
    let mut plain = WsClient::connect(cluster.node(1), false).await?;
    plain.handshake(&cluster.token).await?;
    for ws in [&mut deflating, &mut plain] {
        ws.send(
            2,
            client_frame::Kind::Subscribe(Subscribe {
                sub: 1,
                channel: channel.into(),
                ..Default::default()
            }),
        )
        .await?;
        ws.recv_until(Duration::from_secs(10), |f| {
            matches!(f.kind, Some(server_frame::Kind::SubscribeOk(_))).then_some(())
        })
        .await?;
    }
    let sdk = cluster.sdk(&[1], &cluster.token).connect().await?;
    let mut sdk_sub = sdk.subscribe(channel, SubscribeOptions::default()).await?;
    let data = json!({"text": "a long message ".repeat(100)});
    cluster.publish(2, channel, data.clone(), None).await?;

    let event = |f: &chorus_proto::client::ServerFrame| match &f.kind {
        Some(server_frame::Kind::Event(e)) => Some(e.clone()),
        _ => None,
    };
    let squeezed = deflating.recv_until(Duration::from_secs(10), event).await?;
    assert!(squeezed.data.is_empty());
    assert!(!squeezed.data_deflate.is_empty() && squeezed.data_deflate.len() < 200);
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::DeflateDecoder::new(squeezed.data_deflate.as_slice()),
        &mut text,
    )?;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&text)?, data);
    let unsqueezed = plain.recv_until(Duration::from_secs(10), event).await?;
    assert!(unsqueezed.data_deflate.is_empty());
    assert_eq!(serde_json::from_str::<serde_json::Value>(&unsqueezed.data)?, data);
    let received = tokio::time::timeout(Duration::from_secs(10), sdk_sub.next_event()).await?;
    assert_eq!(received.expect("event").json()?, data);
    Ok(())
}

#[tokio::test]
async fn heartbeats_idle_timeout_and_token_expiry() -> Result<()> {
    let cluster = common::builder().config(FAST_TIMERS).start().await?;
    let node = cluster.node(1);

    // Answers nothing: pinged, then closed as idle.
    let mut silent = WsClient::connect(node, true).await?;
    silent.handshake(&cluster.token).await?;
    let mut pings = 0;
    let code = silent
        .recv_until(Duration::from_secs(15), |f| match &f.kind {
            Some(server_frame::Kind::Ping(_)) => {
                pings += 1;
                None
            }
            Some(server_frame::Kind::Disconnect(d)) => Some(d.code.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(code, "idle_timeout");
    assert!(silent.recv(Duration::from_secs(10)).await?.is_none());
    assert_eq!(
        silent.close_code,
        Some(4408),
        "WebSocket close code of idle_timeout"
    );
    assert!(pings >= 2, "pinged {pings} times before the idle timeout");

    // Never sends Connect: closed after the connect timeout.
    let mut mute = WsClient::connect(node, false).await?;
    let frame = mute.recv(Duration::from_secs(10)).await?;
    assert!(
        matches!(&frame, Some(f) if matches!(&f.kind, Some(server_frame::Kind::Disconnect(d)) if d.code == "protocol_error")),
        "{frame:?}"
    );

    // A token expiring in 2 s, not refreshed: token_expired after the grace period.
    let mut expiring = WsClient::connect(node, true).await?;
    expiring.handshake(&token_expiring_in("eve", 2)).await?;
    // It keeps the connection alive with pings, so only the token (2 s + 0.5 s) can end it.
    let mut code = None;
    for id in 10..100 {
        expiring.send(id, client_frame::Kind::Ping(Ping {})).await?;
        let answer = expiring
            .recv_until(Duration::from_secs(5), |f| match &f.kind {
                Some(server_frame::Kind::Pong(_)) if f.id == id => Some(None),
                Some(server_frame::Kind::Disconnect(d)) => Some(Some(d.code.clone())),
                _ => None,
            })
            .await?;
        if answer.is_some() {
            code = answer;
            break;
        }
        // Paces the client's own pings (what a real client does), not a wait for the node.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(code.as_deref(), Some("token_expired"));

    // The same, refreshed in time (and answering pings): still open well past the old expiry.
    let mut refreshed = WsClient::connect(node, true).await?;
    refreshed.handshake(&token_expiring_in("eve", 2)).await?;
    refreshed
        .send(
            5,
            client_frame::Kind::Refresh(RefreshToken {
                token: token_expiring_in("eve", 3600),
            }),
        )
        .await?;
    refreshed
        .recv_until(Duration::from_secs(5), |f| match &f.kind {
            Some(server_frame::Kind::RefreshOk(_)) if f.id == 5 => Some(()),
            _ => None,
        })
        .await?;
    // A token for someone else is refused, and changes nothing.
    refreshed
        .send(
            6,
            client_frame::Kind::Refresh(RefreshToken {
                token: token_expiring_in("mallory", 3600),
            }),
        )
        .await?;
    let refused = refreshed
        .recv_until(Duration::from_secs(5), |f| match &f.kind {
            Some(server_frame::Kind::Error(e)) if f.id == 6 => Some(e.code.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(refused, "unauthorized");
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut id = 100;
    while tokio::time::Instant::now() < until {
        id += 1;
        refreshed.send(id, client_frame::Kind::Ping(Ping {})).await?;
        let answer = refreshed
            .recv_until(Duration::from_secs(5), |f| match &f.kind {
                Some(server_frame::Kind::Pong(_)) if f.id == id => Some(None),
                Some(server_frame::Kind::Disconnect(d)) => Some(Some(d.code.clone())),
                _ => None,
            })
            .await;
        match answer {
            Ok(None) => {}
            Ok(Some(code)) => bail!("refreshed connection was closed: {code}"),
            Err(e) => bail!("refreshed connection stopped answering: {e}"),
        }
    }
    // Requests still work on it.
    refreshed
        .send(
            7,
            client_frame::Kind::Publish(Publish {
                channel: "chat.refreshed".into(),
                data: "{}".into(),
                ..Default::default()
            }),
        )
        .await?;
    refreshed
        .recv_until(Duration::from_secs(10), |f| match &f.kind {
            Some(server_frame::Kind::PublishOk(ok)) if f.id == 7 => Some(ok.offset),
            _ => None,
        })
        .await?;

    // The SDK asks its refresher for a token before the old one expires: the connection
    // outlives the first token (4 s + 0.5 s grace) and the node never closes it for that.
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let sdk = cluster
        .sdk(&[1], &token_expiring_in("sam", 4))
        .token_refresher(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(token_expiring_in("sam", 3600)) }
        })
        .connect()
        .await?;
    let mut sub = sdk.subscribe("chat.refresh", SubscribeOptions::default()).await?;
    wait_for(
        "the SDK to refresh its token",
        Duration::from_secs(10),
        || async { (calls.load(Ordering::SeqCst) >= 1).then_some(()) },
    )
    .await?;
    let expired_before = cluster
        .metric(1, "chorus_gateway_disconnects_total{reason=\"token_expired\"}")
        .await?;
    // Past the first token's expiry and grace, by the node's clock (which stamps events).
    let after = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        + 6_000) as u64;
    wait_for(
        "time to pass the first token's deadline",
        Duration::from_secs(15),
        || async {
            let ack = cluster.publish(2, "chat.refresh", json!({}), None).await.ok()?;
            (ack["offset"].as_u64()? > 0
                && std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_millis() as u64
                    > after)
                .then_some(())
        },
    )
    .await?;
    let last = cluster
        .publish(2, "chat.refresh", json!({"last": true}), None)
        .await?;
    let last_offset = last["offset"].as_u64().unwrap();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.next_event())
            .await?
            .expect("open");
        if event.offset == last_offset {
            break;
        }
    }
    assert_eq!(sdk.node_id(), Some(1));
    let expired_after = cluster
        .metric(1, "chorus_gateway_disconnects_total{reason=\"token_expired\"}")
        .await?;
    assert_eq!(
        expired_after, expired_before,
        "the refreshed SDK connection was never expired"
    );
    still_serving(&cluster).await
}
