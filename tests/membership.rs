//! Membership changes on a live cluster: remove a node, join a new one that catches up
//! from a snapshot.

mod common;

use anyhow::Result;
use common::{builder, wait_for};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_node_leaves_and_joined_node_catches_up_from_a_snapshot() -> Result<()> {
    let mut cluster = builder()
        .config("[raft_timing]\nsnapshot_every_entries = 10\nlogs_kept_after_snapshot = 0\n")
        .start()
        .await?;
    let channels: Vec<String> = (0..24).map(|i| format!("members.{i}")).collect();
    for i in 0..360u64 {
        let channel = &channels[(i % 24) as usize];
        cluster.publish(1 + i % 3, channel, json!({"i": i}), None).await?;
    }
    // Snapshots were built and the logs purged behind them.
    if std::env::var_os("CHORUS_TEST_VERBOSE").is_some() {
        eprintln!("{}", cluster.status(1).await?);
    }
    let purged = wait_for("logs purged after snapshots", Duration::from_secs(20), || async {
        let status = cluster.status(1).await.ok()?;
        let purged: Vec<u64> = status["shards"]
            .as_array()?
            .iter()
            .filter(|s| s["purged_index"].as_u64().unwrap_or(0) > 0)
            .map(|s| s["shard"].as_u64().unwrap())
            .collect();
        (purged.len() >= 10).then_some(purged)
    })
    .await?;

    // Remove node 3 with the CLI.
    let (ok, text) = cluster.cli(&["cluster", "remove", "--node", &cluster.url(1), "3"]);
    assert!(ok, "cluster remove failed: {text}");
    let status = cluster.status(2).await?;
    for shard in status["shards"].as_array().unwrap() {
        assert_eq!(shard["voters"], json!([1, 2]), "shard {}", shard["shard"]);
    }
    cluster.stop(3)?;

    // Quiet shards: with no writes, no leader hears from a quorum, so every lease runs out
    // (600 ms). A membership change must renew the lease, not be refused for it.
    wait_for(
        "every shard leader's lease to lapse",
        Duration::from_secs(20),
        || async {
            let mut lapsed = 0;
            for node in [1, 2] {
                let status = cluster.status(node).await.ok()?;
                lapsed += status["shards"]
                    .as_array()?
                    .iter()
                    .filter(|s| s["role"] == "leader" && s["quorum_acked_ms_ago"].as_u64().unwrap_or(0) > 600)
                    .count();
            }
            (lapsed == cluster.shards as usize).then_some(())
        },
    )
    .await?;

    // Node 4 joins through node 1 and catches up.
    cluster.add_joining_node(4, 1);
    cluster.start_node(4)?;
    cluster.wait_ready(4, Duration::from_secs(60)).await?;
    let status = cluster.status(4).await?;
    for shard in status["shards"].as_array().unwrap() {
        assert_eq!(shard["voters"], json!([1, 2, 4]), "shard {}", shard["shard"]);
        let id = shard["shard"].as_u64().unwrap();
        if purged.contains(&id) {
            assert!(
                shard["snapshot_index"].as_u64().unwrap_or(0) > 0,
                "shard {id}: node 4 should have installed a snapshot, got {shard}"
            );
        }
    }
    for channel in &channels {
        let reference = cluster.history(1, channel).await?;
        assert_eq!(reference.len(), 15);
        assert_eq!(
            cluster.history(4, channel).await?,
            reference,
            "{channel} on node 4"
        );
    }
    let reply = cluster
        .publish(4, &channels[0], json!("from node 4"), None)
        .await?;
    assert_eq!(reply["offset"], json!(16));
    Ok(())
}

/// Found by a new user: a join of an address where nothing listens answered `200 joined` in
/// 0.3 s and made that address a voter of every shard, so that pausing one real node then
/// left no quorum; `cluster remove` of an id that is not a member answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_an_unreachable_address_is_refused_and_removing_an_unknown_id_is_an_error() -> Result<()> {
    let cluster = builder().shards(2).start().await?;
    cluster
        .publish(1, "members.before", json!("before"), None)
        .await?;
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let (status, body) = cluster
        .call(
            1,
            "POST",
            "/api/v1/cluster/join",
            Some(json!({"id": 9, "raft_addr": nowhere})),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("node 9") && message.contains(&nowhere) && message.contains("not made a voter"),
        "{body}"
    );
    for node in 1..=3 {
        let status = cluster.status(node).await?;
        for shard in status["shards"].as_array().unwrap() {
            assert_eq!(shard["voters"], json!([1, 2, 3]), "node {node}: {shard}");
            assert_eq!(shard["learners"], json!([]), "node {node}: {shard}");
        }
    }
    // One real follower paused: the leader and the other node are still a quorum (with the
    // unreachable address a voter too, they were 2 of 4).
    let shard = common::shard_of("members.after", cluster.shards);
    let leader = cluster
        .leader_of(1, shard)
        .await?
        .expect("a leader of every shard");
    let paused = [2, 3]
        .into_iter()
        .find(|node| *node != leader)
        .expect("a follower");
    cluster.signal(paused, libc::SIGSTOP);
    let written = cluster
        .publish(leader, "members.after", json!("after"), None)
        .await;
    cluster.signal(paused, libc::SIGCONT);
    written?;

    let (status, body) = cluster
        .call(1, "POST", "/api/v1/cluster/remove", Some(json!({"id": 42})))
        .await?;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["message"], json!("node 42 is not a member of the cluster"));
    Ok(())
}
