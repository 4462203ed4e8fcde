//! Rates: a flood from one user, one device, one address or of one kind of request gets
//! `rate_limited` with a retry-after on every face, and leaves the others their own budgets.

mod common;

use anyhow::{Context, Result};
use chorus_proto::client::{SessionGet, TypingQuery, client_frame, server_frame};
use common::builder;
use common::wire::WsClient;
use serde_json::json;
use std::time::Duration;

/// Found by probing: one user published 23,502 messages in 30 s (about 47k a minute; the
/// origin document's limit is 1,000 a minute per user) with no refusal. Now a burst passes,
/// then `rate_limited` with a retry-after, over HTTP and QUIC alike; other users keep their
/// own budget. (One publish a minute here, so that no refill lands during the test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_flood_from_one_user_is_rate_limited_with_a_retry_after() -> Result<()> {
    let cluster = builder()
        .nodes(1)
        .env("CHORUS_PUBLISH_PER_MINUTE", "1")
        .start()
        .await?;
    let mallory = common::token("mallory", &["admin"]);
    let (mut accepted, mut refused) = (0, None);
    for i in 0..200 {
        let response = cluster
            .client
            .post(format!("{}/api/v1/channels/flood/publish", cluster.url(1)))
            .bearer_auth(&mallory)
            .json(&json!({"data": i}))
            .send()
            .await?;
        if response.status().is_success() {
            accepted += 1;
            continue;
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = response.status().as_u16();
        refused = Some((status, retry_after, response.json::<serde_json::Value>().await?));
        break;
    }
    let (status, retry_after, body) = refused.context("200 publishes at once must not all pass")?;
    assert_eq!(accepted, 50, "the burst of 50 passes");
    assert_eq!(status, 429);
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(
        body["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 60_000),
        "{body}"
    );
    let seconds: u64 = retry_after.context("a Retry-After header")?.parse()?;
    assert!(
        (1..=60).contains(&seconds),
        "Retry-After in whole seconds: {seconds}"
    );

    // Over QUIC too.
    let client = cluster.sdk(&[1], &mallory).connect().await?;
    let quic = client
        .publish("flood", "\"over quic\"")
        .await
        .expect_err("mallory is still over the limit");
    assert_eq!(quic.code(), Some("rate_limited"), "{quic}");

    // Another user has their own budget.
    let alice = common::token("alice", &["admin"]);
    let reply = cluster
        .client
        .post(format!("{}/api/v1/channels/flood/publish", cluster.url(1)))
        .bearer_auth(&alice)
        .json(&json!({"data": "alice"}))
        .send()
        .await?;
    assert!(reply.status().is_success(), "{}", reply.status());
    Ok(())
}

/// One device may make at most `device_requests_per_minute` requests of any kind (the origin
/// document's 500 a minute per device); another device of the same user has its own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_are_limited_per_device_on_every_face() -> Result<()> {
    let cluster = builder()
        .nodes(1)
        .config("[clients]\ndevice_request_burst = 5\n")
        .env("CHORUS_DEVICE_REQUESTS_PER_MINUTE", "1")
        .start()
        .await?;
    let phone = common::device_token("dana", "phone", &["admin"]);
    let mut ws = WsClient::connect(cluster.node(1), false).await?;
    ws.handshake(&phone).await?;
    let mut codes = Vec::new();
    for id in 10..16 {
        ws.send(
            id,
            client_frame::Kind::TypingQuery(TypingQuery {
                channel: "chat.room".into(),
            }),
        )
        .await?;
        let code = ws
            .recv_until(std::time::Duration::from_secs(10), |f| {
                (f.id == id).then(|| match &f.kind {
                    Some(server_frame::Kind::Error(e)) => (e.code.clone(), e.retry_after_ms),
                    _ => ("ok".to_string(), 0),
                })
            })
            .await?;
        codes.push(code);
    }
    assert!(codes[..5].iter().all(|(c, _)| c == "ok"), "{codes:?}");
    assert_eq!(codes[5].0, "rate_limited", "{codes:?}");
    assert!(codes[5].1 > 0, "with a retry-after: {codes:?}");
    // The same device over HTTP shares the budget.
    let http = cluster
        .client
        .get(format!("{}/api/v1/channels/chat.room/history", cluster.url(1)))
        .bearer_auth(&phone)
        .send()
        .await?;
    assert_eq!(http.status().as_u16(), 429);
    // Another device of the same user has its own.
    let laptop = common::device_token("dana", "laptop", &["admin"]);
    let http = cluster
        .client
        .get(format!("{}/api/v1/channels/chat.room/history", cluster.url(1)))
        .bearer_auth(&laptop)
        .send()
        .await?;
    assert_eq!(http.status().as_u16(), 200);
    Ok(())
}

/// Sends `kind` as request `id` and returns the answer's error code ("ok" when none).
async fn request_code(ws: &mut WsClient, id: u64, kind: client_frame::Kind) -> Result<(String, u64)> {
    ws.send(id, kind).await?;
    ws.recv_until(Duration::from_secs(10), |f| {
        (f.id == id).then(|| match &f.kind {
            Some(server_frame::Kind::Error(e)) => (e.code.clone(), e.retry_after_ms),
            _ => ("ok".to_string(), 0),
        })
    })
    .await
}

/// Each operation class (publish, subscribe, typing, collaborative sessions, connect) has its
/// own budget per user, on every face: a client that floods typing indicators still
/// publishes, subscribes and edits; a role can have its own rate; every refusal is counted
/// by limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_operation_class_has_its_own_budget_per_user() -> Result<()> {
    let cluster = builder()
        .nodes(1)
        .config(
            "[clients]\ntyping_burst = 3\nsubscribe_burst = 3\ncollab_ops_burst = 3\nconnect_burst = 2\n\
             [roles.admin]\npublish = [\">\"]\nsubscribe = [\">\"]\nadmin = true\n\
             [roles.typist]\npublish = [\">\"]\nsubscribe = [\">\"]\ntyping_per_minute = 0\n",
        )
        .env("CHORUS_TYPING_PER_MINUTE", "1")
        .env("CHORUS_SUBSCRIBE_PER_MINUTE", "1")
        .env("CHORUS_COLLAB_OPS_PER_MINUTE", "1")
        .env("CHORUS_CONNECTS_PER_MINUTE", "1")
        .start()
        .await?;
    let erin = common::token("erin", &["admin"]);
    let mut ws = WsClient::connect(cluster.node(1), false).await?;
    ws.handshake(&erin).await?;
    let typing = || {
        client_frame::Kind::TypingQuery(TypingQuery {
            channel: "chat.room".into(),
        })
    };
    let mut codes = Vec::new();
    for id in 10..14 {
        codes.push(request_code(&mut ws, id, typing()).await?);
    }
    assert!(codes[..3].iter().all(|(c, _)| c == "ok"), "{codes:?}");
    assert_eq!(codes[3].0, "rate_limited", "{codes:?}");
    assert!(codes[3].1 > 0, "with a retry-after: {codes:?}");

    // The typing flood leaves publishing, sessions and subscriptions their own budgets.
    let publish = client_frame::Kind::Publish(chorus_proto::client::Publish {
        channel: "chat.room".into(),
        data: "1".into(),
        ..Default::default()
    });
    assert_eq!(request_code(&mut ws, 20, publish).await?.0, "ok");
    let session = || {
        client_frame::Kind::SessionGet(SessionGet {
            session: "doc.one".into(),
        })
    };
    let mut session_codes = Vec::new();
    for id in 30..34 {
        session_codes.push(request_code(&mut ws, id, session()).await?.0);
    }
    assert!(
        session_codes[..3].iter().all(|c| c != "rate_limited"),
        "{session_codes:?}"
    );
    assert_eq!(session_codes[3], "rate_limited", "{session_codes:?}");

    // Subscribes and history reads share one budget, over HTTP as over QUIC/WebSocket.
    let history = || {
        cluster
            .client
            .get(format!("{}/api/v1/channels/chat.room/history", cluster.url(1)))
            .bearer_auth(&erin)
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(history().await?.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);

    // Connects: erin's second passes, her third is refused (from the same address, whose
    // own connect rate is not limited here).
    let mut second = WsClient::connect(cluster.node(1), false).await?;
    second.handshake(&erin).await?;
    let mut third = WsClient::connect(cluster.node(1), false).await?;
    let refused = third.handshake(&erin).await.expect_err("a third connect");
    assert!(refused.to_string().contains("rate_limited"), "{refused}");

    // A role with its own typing rate (none) is not limited.
    let tess = common::token("tess", &["typist"]);
    let mut typist = WsClient::connect(cluster.node(1), false).await?;
    typist.handshake(&tess).await?;
    for id in 10..30 {
        assert_eq!(request_code(&mut typist, id, typing()).await?.0, "ok");
    }

    for limit in ["typing", "collab", "subscribe", "connect"] {
        let refused = cluster
            .metric(1, &format!("chorus_rate_limited_total{{limit=\"{limit}\"}}"))
            .await?;
        assert_eq!(refused, 1.0, "{limit}");
    }
    Ok(())
}

/// The origin document's 2,000 requests a minute per IP address, counted before the token is
/// checked: a flood of API requests with made-up tokens ends in 429 with a Retry-After, and
/// the probes (`/health`, `/metrics`) keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_requests_are_limited_per_address_before_the_token_is_checked() -> Result<()> {
    let cluster = builder()
        .nodes(1)
        .config("[clients]\nhttp_request_burst_per_ip = 20\n")
        .env("CHORUS_HTTP_REQUESTS_PER_MINUTE_PER_IP", "1")
        .start()
        .await?;
    let mut statuses = Vec::new();
    for i in 0..21 {
        let response = cluster
            .client
            .post(format!("{}/api/v1/channels/flood/publish", cluster.url(1)))
            .bearer_auth(format!("not-a-token-{i}"))
            .json(&json!({"data": i}))
            .send()
            .await?;
        statuses.push((
            response.status().as_u16(),
            response.headers().get("retry-after").is_some(),
        ));
    }
    assert!(statuses[..20].iter().all(|(s, _)| *s == 401), "{statuses:?}");
    assert_eq!(statuses[20], (429, true), "{statuses:?}");
    // A valid token does not help: the address is over its rate.
    let valid = cluster.publish(1, "flood", json!("real"), None).await;
    assert!(
        valid.as_ref().is_err_and(|e| e.to_string().contains("429")),
        "{valid:?}"
    );
    let health = cluster
        .client
        .get(format!("{}/health", cluster.url(1)))
        .send()
        .await?;
    assert_eq!(health.status().as_u16(), 200);
    let refused = cluster
        .metric(1, "chorus_rate_limited_total{limit=\"http_requests_per_ip\"}")
        .await?;
    assert_eq!(refused, 2.0);
    Ok(())
}
/// History quotas: a channel keeps at most `max_bytes_per_channel` bytes of event data (its
/// oldest events dropped), and a user whose events hold `max_bytes_per_user` bytes of a shard
/// gets `quota_exceeded`, over HTTP and QUIC alike, while others keep publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_quotas_bound_a_channel_and_a_user() -> Result<()> {
    let cluster = builder()
        .nodes(1)
        .shards(1)
        .config("[history]\nmax_bytes_per_channel = 250\nmax_bytes_per_user = 500\n")
        .start()
        .await?;
    // The leader replicates the configured quotas shortly after it is elected.
    common::wait_for("the quotas in force", Duration::from_secs(10), || async {
        let status = cluster.status(1).await.ok()?;
        (status["shards"][0]["quotas"]["max_bytes_per_user"] == json!(500)).then_some(())
    })
    .await?;
    let mallory = common::token("mallory", &["admin"]);
    let data = json!("x".repeat(98)); // 100 bytes of JSON
    // Four events to c0 (it keeps the newest two: 200 bytes), then one to each of c1, c2, ...
    // until mallory's retained bytes would pass 500.
    let mut refused = None;
    for i in 0..40 {
        let channel = if i < 4 { 0 } else { i - 3 };
        let response = cluster
            .client
            .post(format!(
                "{}/api/v1/channels/quota.c{channel}/publish",
                cluster.url(1)
            ))
            .bearer_auth(&mallory)
            .json(&json!({ "data": data }))
            .send()
            .await?;
        if !response.status().is_success() {
            refused = Some((
                i,
                response.status().as_u16(),
                response.json::<serde_json::Value>().await?,
            ));
            break;
        }
    }
    let (accepted, status, body) = refused.context("mallory's 40 publishes of 100 bytes all passed")?;
    assert_eq!((accepted, status), (7, 429), "c1 to c3 fit, c4 does not: {body}");
    assert_eq!(body["code"], "quota_exceeded", "{body}");

    let history = cluster.history(1, "quota.c0").await?;
    let offsets: Vec<u64> = history.iter().filter_map(|m| m["offset"].as_u64()).collect();
    assert_eq!(offsets, [3, 4], "c0 keeps its newest 250 bytes: {history:?}");

    // Over QUIC too; another user is not affected.
    let client = cluster.sdk(&[1], &mallory).connect().await?;
    let quic = client
        .publish("quota.c9", &data.to_string())
        .await
        .expect_err("mallory is over her quota");
    assert_eq!(quic.code(), Some("quota_exceeded"), "{quic}");
    cluster.publish(1, "quota.c0", json!("alice's"), None).await?;
    Ok(())
}

/// A client with more subscriptions than the node's subscribe burst keeps all of them across
/// a reconnect: the SDK sends the resubscribes the node refuses for their rate again after
/// the retry-after, instead of ending those subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resubscribes_over_the_rate_wait_instead_of_ending() -> Result<()> {
    let mut cluster = builder()
        .config("[clients]\nsubscribe_burst = 3\n")
        .env("CHORUS_SUBSCRIBE_PER_MINUTE", "120")
        .start()
        .await?;
    let token = common::token("sam", &["admin"]);
    let client = cluster.sdk(&[1, 2], &token).connect().await?;
    let mut subscriptions = Vec::new();
    for i in 0..5 {
        let channel = format!("many.c{i}");
        let subscription =
            common::wait_for("a subscribe within the rate", Duration::from_secs(20), || async {
                client
                    .subscribe(&channel, chorus_client::SubscribeOptions::default())
                    .await
                    .ok()
            })
            .await?;
        subscriptions.push(subscription);
    }
    // Node 2 sees five resubscribes at once: three pass, two wait for the rate.
    cluster.kill(1);
    for i in 0..5 {
        common::wait_for("a publish through node 2", Duration::from_secs(20), || async {
            cluster
                .publish(2, &format!("many.c{i}"), json!(i), None)
                .await
                .ok()
        })
        .await?;
    }
    for (i, subscription) in subscriptions.iter_mut().enumerate() {
        let events = common::take(subscription, 1, Duration::from_secs(20)).await?;
        assert_eq!(events[0].data, i.to_string(), "subscription {i}");
    }
    Ok(())
}
