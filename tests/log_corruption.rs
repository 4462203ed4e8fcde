//! Damage in the middle of a node's Raft log (bytes flipped while it was stopped): at start
//! the node names the file and offset, keeps the log before the damage, serves nothing
//! wrong, and recovers from its peers; every node ends with the same histories.

mod common;

use anyhow::{Result, bail};
use common::{builder, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipped_bytes_in_a_stopped_nodes_log_are_named_and_recovered_from_peers() -> Result<()> {
    // No snapshots meanwhile: the damaged segment holds live entries of every shard.
    let mut cluster = builder()
        .config("[raft_timing]\nsnapshot_every_entries = 100000\n")
        .start()
        .await?;
    let mut acked: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
    let mut publish = async |cluster: &common::TestCluster, i: u64, nodes: &[u64]| -> Result<()> {
        let channel = format!("damage.{}", i % 12);
        let data = json!({"i": i});
        let reply = cluster
            .publish(
                nodes[(i % nodes.len() as u64) as usize],
                &channel,
                data.clone(),
                None,
            )
            .await?;
        acked
            .entry(channel)
            .or_default()
            .push((reply["offset"].as_u64().unwrap(), data));
        Ok(())
    };
    for i in 0..300 {
        publish(&cluster, i, &[1, 2, 3]).await?;
    }
    cluster.kill(3);

    // Flip 16 bytes in the middle of node 3's largest log segment.
    let log_dir = cluster.node(3).data_dir.join("log");
    let segment = std::fs::read_dir(&log_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("node 3 has a log segment");
    let mut bytes = std::fs::read(&segment)?;
    // The middle of what was written, not of the zeros the writer prepared after it.
    let written = bytes.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
    let middle = written / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&segment, &bytes)?;

    // The others go on without it.
    for i in 300..360 {
        publish(&cluster, i, &[1, 2]).await?;
    }
    cluster.start_node(3)?;
    cluster.wait_ready(3, Duration::from_secs(60)).await?;
    let name = segment.file_name().unwrap().to_string_lossy().to_string();
    let log = cluster.log(3);
    let named = log
        .lines()
        .find(|l| l.contains("damaged in the middle") && l.contains(&name))
        .unwrap_or_else(|| {
            panic!(
                "node 3 did not name the damaged file {name}:\n{}",
                common::tail(&log, 30)
            )
        });
    assert!(named.contains("offset="), "the offset is named: {named}");
    assert!(
        segment.with_extension("seg.corrupt").exists(),
        "the damaged segment is kept aside for inspection"
    );

    // It catches up from its peers and then votes and leads again.
    let recovered = wait_for(
        "node 3's replicas to recover",
        Duration::from_secs(60),
        || async {
            let status = cluster.status(3).await.ok()?;
            let recovering = status["shards"]
                .as_array()?
                .iter()
                .filter(|s| s["recovering"].as_bool() == Some(true))
                .count();
            (recovering == 0).then_some(())
        },
    )
    .await;
    if let Err(e) = recovered {
        for id in [1, 2, 3] {
            let _ = std::fs::write(format!("/tmp/lc-node{id}.log"), cluster.log(id));
        }
        eprintln!("log of node 3:\n{}", common::tail(&cluster.log(3), 40));
        let status = cluster.status(3).await?;
        for shard in status["shards"].as_array().into_iter().flatten() {
            if shard["recovering"].as_bool() == Some(true) {
                eprintln!("still recovering on node 3: {shard}");
            }
        }
        return Err(e);
    }
    for i in 360..400 {
        publish(&cluster, i, &[1, 2, 3]).await?;
    }
    for (channel, acks) in &acked {
        let reference = cluster.history(1, channel).await?;
        for id in [2, 3] {
            let history = cluster.history(id, channel).await?;
            if history != reference {
                bail!("{channel}: node {id} serves another history than node 1");
            }
        }
        for (offset, data) in acks {
            let stored = reference.get(*offset as usize - 1).map(|m| &m["data"]);
            assert_eq!(
                stored,
                Some(data),
                "{channel}@{offset} acknowledged but not found"
            );
        }
    }
    Ok(())
}
