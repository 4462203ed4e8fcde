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
            assert_eq!(offsets, expected, "node {id}, channel {channel}: offsets must be 1..n with no gap");
            let datas: Vec<Value> = history.iter().map(|m| m["data"].clone()).collect();
            let unique: BTreeSet<String> = datas.iter().map(|d| d.to_string()).collect();
            assert_eq!(unique.len(), datas.len(), "node {id}, channel {channel}: a message is duplicated");
            for (offset, data) in acks {
                assert_eq!(
                    &history[*offset as usize - 1]["data"], data,
                    "node {id}, channel {channel}: acknowledged offset {offset} holds other data"
                );
            }
            match &reference {
                None => reference = Some(datas),
                Some(r) => assert_eq!(r, &datas, "node {id}, channel {channel}: order differs between nodes"),
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
    let counts = wait_for("leaders spread 3..=5 per node", Duration::from_secs(20), || async {
        let status = cluster.status(2).await.ok()?;
        let mut counts = BTreeMap::new();
        for shard in status["shards"].as_array()? {
            *counts.entry(shard["leader"].as_u64()?).or_insert(0) += 1;
        }
        (counts.len() == 3 && counts.values().all(|c| (3..=5).contains(c))).then_some(counts)
    })
    .await?;
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    // The cluster records one id, known to all.
    let ids: BTreeSet<String> = futures_ids(&cluster).await?;
    assert_eq!(ids.len(), 1, "cluster ids: {ids:?}");
    let (ok, text) = cluster.cli(&["cluster", "status", "--node", &cluster.url(3)]);
    assert!(ok && text.contains("SHARDS") && text.contains("LEADER"), "{text}");
    Ok(())
}

async fn futures_ids(cluster: &TestCluster) -> Result<BTreeSet<String>> {
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
