//! Private channels and subscription tokens: a channel of `[auth] private_channels` is read
//! only with a subscription token for that user and channel, over QUIC and HTTP alike; its
//! events never reach pattern subscriptions; a subscription token opens no connection.

mod common;

use anyhow::{Context, Result};
use chorus_client::SubscribeOptions;
use common::builder;
use serde_json::json;
use std::time::Duration;

const CONFIG: &str = "[auth]\nprivate_channels = [\"chat.dm.>\"]\n\
    [roles.admin]\npublish = [\">\"]\nsubscribe = [\">\"]\nadmin = true\n\
    [roles.member]\npublish = [\"chat.>\"]\nsubscribe = [\"chat.>\"]\n";

const DM: &str = "chat.dm.alice-bob";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_channel_is_read_with_a_subscription_token_only() -> Result<()> {
    let cluster = builder().nodes(1).config(CONFIG).start().await?;
    let alice_token = common::token("alice", &["member"]);
    let alice = cluster.sdk(&[1], &alice_token).connect().await?;

    // The roles cover chat.>, but a private channel needs its token.
    let refused = alice
        .subscribe(DM, SubscribeOptions::default())
        .await
        .err()
        .context("a private channel without a token")?;
    assert_eq!(refused.code(), Some("forbidden"), "{refused}");

    // The token the application's backend mints (here with the CLI).
    let (ok, minted) = cluster.cli(&["token", "--sub", "alice", "--channel", DM, "--ttl", "10m"]);
    assert!(ok, "{minted}");
    let grant = minted.trim().to_string();
    let mut private = alice
        .subscribe(
            DM,
            SubscribeOptions {
                subscription_token: Some(grant.clone()),
                ..Default::default()
            },
        )
        .await?;
    // A pattern subscription that the roles allow sees the public channel, never the private.
    let mut everything = alice.subscribe("chat.>", SubscribeOptions::default()).await?;
    cluster.publish(1, DM, json!("psst"), None).await?;
    cluster.publish(1, "chat.room", json!("hello all"), None).await?;
    let event = common::take(&mut private, 1, Duration::from_secs(10)).await?;
    assert_eq!(event[0].data, "\"psst\"");
    let seen = common::take(&mut everything, 1, Duration::from_secs(10)).await?;
    assert_eq!(
        seen[0].channel, "chat.room",
        "the pattern skipped the private channel"
    );

    // History over HTTP: the token in X-Subscription-Token; bob's token is not alice's.
    let history = |token: Option<String>| {
        let mut request = cluster
            .client
            .get(format!("{}/api/v1/channels/{DM}/history", cluster.url(1)))
            .bearer_auth(&alice_token);
        if let Some(token) = token {
            request = request.header("x-subscription-token", token);
        }
        request.send()
    };
    assert_eq!(history(None).await?.status().as_u16(), 403);
    let page: serde_json::Value = history(Some(grant.clone())).await?.json().await?;
    assert_eq!(page["messages"][0]["data"], json!("psst"), "{page}");
    let bobs = common::mint(json!({"sub": "bob", "channel": DM}));
    assert_eq!(history(Some(bobs)).await?.status().as_u16(), 403);
    // Over QUIC too.
    let page = alice.history_with_token(DM, 0, 10, &grant).await?;
    assert_eq!(page.events.len(), 1);

    // A token for one channel grants nothing else, and opens no connection.
    let other = alice
        .history_with_token("chat.dm.alice-carol", 0, 10, &grant)
        .await
        .err()
        .context("another channel with alice-bob's token")?;
    assert_eq!(other.code(), Some("forbidden"), "{other}");
    // Collaborative sessions are not served on private channels (a session's document is its
    // channel's events), even to roles that allow everything.
    let (status, body) = cluster
        .call(
            1,
            "PUT",
            &format!("/api/v1/sessions/{DM}"),
            Some(json!({"policy": "lww", "document": {}})),
        )
        .await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _) = cluster
        .call(1, "GET", &format!("/api/v1/sessions/{DM}"), None)
        .await?;
    assert_eq!(status, 403);

    let connect = cluster.sdk(&[1], &grant).connect().await;
    assert!(
        connect
            .as_ref()
            .is_err_and(|e| e.to_string().contains("subscription token")),
        "{:?}",
        connect.err()
    );
    Ok(())
}
