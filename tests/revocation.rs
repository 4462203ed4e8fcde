//! Revocation: a revoked user's or token's connections close on every node within a second,
//! and the tokens are refused from then on.

mod common;

use anyhow::{Context, Result};
use chorus_proto::client::server_frame;
use common::builder;
use common::wire::WsClient;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits for the node's `Disconnect`; its code.
async fn disconnected(ws: &mut WsClient, within: Duration) -> Result<String> {
    ws.recv_until(within, |frame| match &frame.kind {
        Some(server_frame::Kind::Disconnect(d)) => Some(d.code.clone()),
        _ => None,
    })
    .await
}

async fn revoke(cluster: &common::TestCluster, node: u64, body: Value) -> Result<(u16, Value)> {
    cluster
        .call(node, "POST", "/api/v1/revocations", Some(body))
        .await
}

async fn publish_status(cluster: &common::TestCluster, node: u64, token: &str) -> Result<u16> {
    Ok(cluster
        .client
        .post(format!(
            "{}/api/v1/channels/revocation.test/publish",
            cluster.url(node)
        ))
        .bearer_auth(token)
        .json(&json!({"data": 1}))
        .send()
        .await?
        .status()
        .as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_users_connections_close_on_every_node_within_a_second() -> Result<()> {
    let cluster = builder().nodes(3).start().await?;
    let issued = now_s();
    let eve = common::mint(json!({"sub": "eve", "roles": ["admin"], "iat": issued}));
    let alice = common::mint(json!({"sub": "alice", "roles": ["admin"], "iat": issued}));
    let mut eves = Vec::new();
    for node in 1..=3 {
        let mut ws = WsClient::connect(cluster.node(node), false).await?;
        ws.handshake(&eve).await?;
        eves.push(ws);
    }
    let mut bystander = WsClient::connect(cluster.node(2), false).await?;
    bystander.handshake(&alice).await?;

    let (status, reply) = revoke(&cluster, 1, json!({"user": "eve"})).await?;
    assert_eq!(status, 200, "{reply}");
    let revoked_at = Instant::now();
    for (i, ws) in eves.iter_mut().enumerate() {
        let code = disconnected(ws, Duration::from_secs(1))
            .await
            .with_context(|| format!("eve's connection to node {} was not closed", i + 1))?;
        assert_eq!(code, "unauthorized");
    }
    let closed_after = revoked_at.elapsed();
    assert!(closed_after < Duration::from_secs(1), "{closed_after:?}");
    // Alice's connection is untouched: it still answers requests.
    bystander
        .send(
            7,
            chorus_proto::client::client_frame::Kind::Ping(chorus_proto::client::Ping {}),
        )
        .await?;
    bystander
        .recv_until(Duration::from_secs(5), |f| (f.id == 7).then_some(()))
        .await
        .context("alice's connection still works")?;

    // Refused on every node from now on, over HTTP and WebSocket alike.
    for node in 1..=3 {
        assert_eq!(publish_status(&cluster, node, &eve).await?, 401, "node {node}");
        let mut again = WsClient::connect(cluster.node(node), false).await?;
        assert!(
            again.handshake(&eve).await.is_err(),
            "node {node} let eve in again"
        );
    }
    // A token issued after the revocation passes: eve signed in again.
    let fresh = common::mint(json!({"sub": "eve", "roles": ["admin"], "iat": now_s() + 2}));
    assert_eq!(publish_status(&cluster, 3, &fresh).await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_id_is_refused_and_the_users_other_tokens_pass() -> Result<()> {
    let cluster = builder().nodes(1).start().await?;
    let stolen = common::mint(json!({"sub": "bob", "roles": ["admin"], "iat": now_s(), "jti": "t-9"}));
    let other = common::mint(json!({"sub": "bob", "roles": ["admin"], "iat": now_s(), "jti": "t-10"}));
    let mut ws = WsClient::connect(cluster.node(1), false).await?;
    ws.handshake(&stolen).await?;
    let (status, reply) = revoke(&cluster, 1, json!({"token_id": "t-9"})).await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        disconnected(&mut ws, Duration::from_secs(1)).await?,
        "unauthorized"
    );
    assert_eq!(publish_status(&cluster, 1, &stolen).await?, 401);
    assert_eq!(publish_status(&cluster, 1, &other).await?, 200);

    let (status, reply) = revoke(&cluster, 1, json!({"user": "bob", "token_id": "t-10"})).await?;
    assert_eq!(status, 400, "one target at a time: {reply}");
    let member = common::token("mallory", &["member"]);
    let refused = cluster
        .client
        .post(format!("{}/api/v1/revocations", cluster.url(1)))
        .bearer_auth(member)
        .json(&json!({"user": "alice"}))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 403, "only admins revoke");
    Ok(())
}
