//! Process-level tests of a 3-node cluster: formation, ordering, failover, durability,
//! membership. Real `chorus` processes on loopback (see `common`).

mod common;

use anyhow::Result;
use common::{TestCluster, builder, shard_of, wait_for};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Checks that every node serves the same history for each channel: offsets 1..n in order,
/// and that every acknowledged (channel, offset, data) is in it exactly once.
async fn check_histories(cluster: &TestCluster, acked: &BTreeMap<String, Vec<(u64, Value)>>) -> Result<()> {
    for (channel, acks) in acked {
        let mut reference: Option<Vec<Value>> = None;
        for id in cluster.running() {
            let history = cluster.history(id, channel).await?;
            let offsets: Vec<u64> = history.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
            let expected: Vec<u64> = (1..=offsets.len() as u64).collect();
            assert_eq!(
                offsets, expected,
                "node {id}, channel {channel}: offsets must be 1..n with no gap"
            );
            let datas: Vec<Value> = history.iter().map(|m| m["data"].clone()).collect();
            let unique: BTreeSet<String> = datas.iter().map(|d| d.to_string()).collect();
            assert_eq!(
                unique.len(),
                datas.len(),
                "node {id}, channel {channel}: a message is duplicated"
            );
            for (offset, data) in acks {
                assert_eq!(
                    &history[*offset as usize - 1]["data"],
                    data,
                    "node {id}, channel {channel}: acknowledged offset {offset} holds other data"
                );
            }
            match &reference {
                None => reference = Some(datas),
                Some(r) => assert_eq!(
                    r, &datas,
                    "node {id}, channel {channel}: order differs between nodes"
                ),
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_one_cluster_with_spread_leaders() -> Result<()> {
    let cluster = builder().spawn()?;
    // Acceptance: every node /ready within 10 s of being started.
    cluster.wait_all_ready(Duration::from_secs(10)).await?;
    let status = cluster.status(1).await?;
    let shards = status["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 12);
    for shard in shards {
        assert_eq!(shard["voters"], json!([1, 2, 3]), "shard {}", shard["shard"]);
    }
    // Leadership spreads over all three nodes: each leads 3 to 5 of the 12 shards.
    let counts = wait_for(
        "leaders spread 3..=5 per node",
        Duration::from_secs(20),
        || async {
            let status = cluster.status(2).await.ok()?;
            let mut counts = BTreeMap::new();
            for shard in status["shards"].as_array()? {
                *counts.entry(shard["leader"].as_u64()?).or_insert(0) += 1;
            }
            (counts.len() == 3 && counts.values().all(|c| (3..=5).contains(c))).then_some(counts)
        },
    )
    .await?;
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    // The cluster records one id, known to all.
    let ids: BTreeSet<String> = cluster_ids(&cluster).await?;
    assert_eq!(ids.len(), 1, "cluster ids: {ids:?}");
    let (ok, text) = cluster.cli(&["cluster", "status", "--node", &cluster.url(3)]);
    assert!(ok && text.contains("SHARDS") && text.contains("LEADER"), "{text}");
    Ok(())
}

async fn cluster_ids(cluster: &TestCluster) -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for id in cluster.running() {
        let status = wait_for("cluster id recorded", Duration::from_secs(10), || async {
            let s = cluster.status(id).await.ok()?;
            s["cluster_id"].is_string().then_some(s)
        })
        .await?;
        ids.insert(status["cluster_id"].as_str().unwrap().to_string());
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_started_later_joins_the_same_cluster() -> Result<()> {
    // Nodes 1 and 2 form the cluster alone (a quorum of the three peers) and take writes.
    let mut cluster = builder().hold_back(3).start().await?;
    let mut acked = BTreeMap::new();
    for i in 0..30u64 {
        let channel = format!("late.{}", i % 5);
        let reply = cluster
            .publish(1 + i % 2, &channel, json!({"i": i}), None)
            .await?;
        acked
            .entry(channel)
            .or_insert_with(Vec::new)
            .push((reply["offset"].as_u64().unwrap(), json!({"i": i})));
    }
    // Node 3 starts later with the same --peers: it initializes with the same membership,
    // which changes nothing, and catches up.
    cluster.start_node(3)?;
    cluster.wait_ready(3, Duration::from_secs(20)).await?;
    let ids = cluster_ids(&cluster).await?;
    assert_eq!(ids.len(), 1, "one cluster, one id: {ids:?}");
    let status = cluster.status(3).await?;
    for shard in status["shards"].as_array().unwrap() {
        assert_eq!(shard["voters"], json!([1, 2, 3]));
    }
    check_histories(&cluster, &acked).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_through_all_nodes_get_one_gapless_order_everywhere() -> Result<()> {
    let cluster = Arc::new(builder().start().await?);
    let mut tasks = Vec::new();
    for worker in 0..50u64 {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..20u64 {
                let n = worker * 20 + i;
                let channel = format!("chan.{}", n % 50);
                let node = 1 + n % 3;
                let data = json!({"n": n});
                let reply = cluster.publish(node, &channel, data.clone(), None).await?;
                acks.push((channel, reply["offset"].as_u64().unwrap(), data));
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acked: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
    for task in tasks {
        for (channel, offset, data) in task.await?? {
            acked.entry(channel).or_default().push((offset, data));
        }
    }
    assert_eq!(acked.values().map(Vec::len).sum::<usize>(), 1000);
    assert_eq!(acked.len(), 50);
    for acks in acked.values() {
        assert_eq!(acks.len(), 20);
    }
    check_histories(&cluster, &acked).await?;
    Ok(())
}

/// Channels named `prefix.<i>` that live on `shard`.
fn channels_on_shard(prefix: &str, shard: u64, shards: u32, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}.{i}"))
        .filter(|c| shard_of(c, shards) == shard)
        .take(count)
        .collect()
}

/// Publishes with an idempotency key, retrying (same key, rotating nodes) until acknowledged.
async fn publish_until_acked(
    cluster: &TestCluster,
    nodes: &[u64],
    channel: &str,
    data: Value,
    key: &str,
) -> Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    loop {
        let node = nodes[attempt % nodes.len()];
        match cluster.publish(node, channel, data.clone(), Some(key)).await {
            Ok(reply) => return Ok(reply),
            Err(e) if std::time::Instant::now() < deadline => {
                attempt += 1;
                tracing_like(&format!("retrying {key} after: {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn tracing_like(message: &str) {
    if std::env::var_os("CHORUS_TEST_VERBOSE").is_some() {
        eprintln!("{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_shard_leader_loses_nothing_acknowledged() -> Result<()> {
    let cluster = builder().start().await?;
    let shard = 5;
    // Placement settles shard 5 on its preferred node (position 5 % 3 of [1, 2, 3]).
    let leader = 3;
    wait_for("node 3 leading shard 5", Duration::from_secs(20), || async {
        let status = cluster.status(leader).await.ok()?;
        (status["shards"][shard as usize]["role"] == "leader").then_some(())
    })
    .await?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    let channels = channels_on_shard("failover", shard, cluster.shards, 8);

    // A publish acknowledged before the kill, to retry with its key afterwards.
    let first = cluster
        .publish(leader, &channels[0], json!({"before": true}), Some("retry-me"))
        .await?;

    let cluster = Arc::new(tokio::sync::RwLock::new(cluster));
    let acked_count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publishers: Vec<_> = (0..4u64)
        .map(|p| {
            let cluster = cluster.clone();
            let acked_count = acked_count.clone();
            let channels = channels.clone();
            let others = others.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..60u64 {
                    let channel = &channels[((p * 60 + i) % channels.len() as u64) as usize];
                    let data = json!({"p": p, "i": i});
                    let key = format!("p{p}-{i}");
                    let guard = cluster.read().await;
                    let reply = publish_until_acked(&guard, &others, channel, data.clone(), &key).await?;
                    acks.push((channel.clone(), reply["offset"].as_u64().unwrap(), data));
                    acked_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                anyhow::Ok(acks)
            })
        })
        .collect();
    // Kill the leader once publishing is under way.
    wait_for("60 publishes acknowledged", Duration::from_secs(20), || async {
        (acked_count.load(std::sync::atomic::Ordering::SeqCst) >= 60).then_some(())
    })
    .await?;
    {
        let mut guard = cluster.write().await;
        let status = guard.status(leader).await?;
        assert_eq!(
            status["shards"][shard as usize]["role"], "leader",
            "the node killed leads the shard"
        );
        guard.kill(leader);
    }
    let at_kill = acked_count.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        at_kill < 200,
        "publishing must go on across the kill ({at_kill} of 240 acked before it)"
    );

    let mut acked: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
    for publisher in publishers {
        for (channel, offset, data) in publisher.await?? {
            acked.entry(channel).or_default().push((offset, data));
        }
    }
    assert_eq!(
        acked.values().map(Vec::len).sum::<usize>(),
        240,
        "every publish was eventually acknowledged"
    );

    // Another node leads the shard now; the retried publish returns its original offset.
    let cluster = Arc::try_unwrap(cluster)
        .ok()
        .expect("publishers done")
        .into_inner();
    let new_leader = cluster.leader_of(others[0], shard).await?;
    assert!(
        new_leader.is_some() && new_leader != Some(leader),
        "new leader {new_leader:?}"
    );
    let retry = cluster
        .publish(others[1], &channels[0], json!({"before": true}), Some("retry-me"))
        .await?;
    assert_eq!(retry["offset"], first["offset"]);
    assert_eq!(retry["duplicate"], json!(true));
    acked
        .entry(channels[0].clone())
        .or_default()
        .push((first["offset"].as_u64().unwrap(), json!({"before": true})));

    // The killed node comes back and catches up to identical history.
    let mut cluster = cluster;
    cluster.start_node(leader)?;
    cluster.wait_ready(leader, Duration::from_secs(20)).await?;
    check_histories(&cluster, &acked).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_nodes_killed_and_restarted_keep_every_acknowledged_message() -> Result<()> {
    let mut cluster = builder().start().await?;
    let mut acked: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
    for i in 0..150u64 {
        let channel = format!("restart.{}", i % 10);
        let data = json!({"i": i});
        let reply = cluster.publish(1 + i % 3, &channel, data.clone(), None).await?;
        acked
            .entry(channel)
            .or_default()
            .push((reply["offset"].as_u64().unwrap(), data));
    }
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    for id in [1, 2, 3] {
        cluster.start_node(id)?;
    }
    cluster.wait_all_ready(Duration::from_secs(30)).await?;
    check_histories(&cluster, &acked).await?;
    for (channel, acks) in &acked {
        assert_eq!(cluster.history(2, channel).await?.len(), acks.len(), "{channel}");
    }
    // And the cluster serves writes again, continuing the offsets.
    let reply = cluster.publish(3, "restart.0", json!("after"), None).await?;
    assert_eq!(
        reply["offset"].as_u64(),
        Some(acked["restart.0"].len() as u64 + 1)
    );
    Ok(())
}
