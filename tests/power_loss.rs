//! Power loss of the whole cluster: the three data directories live on one lazyfs mount
//! (../shared/tools/lazyfs), which drops every write that was not fsynced when told to
//! `crash`, or with `crash-torn` lets part of it reach the disk, torn. Every acknowledged
//! message must survive, and every node must serve the same history afterwards.

mod common;

use anyhow::{Result, bail};
use common::lazyfs::{LazyFs, fuse_available};
use common::{TestCluster, builder, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Message `i`: small, but every fourth one close to the 64 KiB limit (large values take
/// other paths in sled).
fn payload(i: u64) -> serde_json::Value {
    if i.is_multiple_of(4) {
        json!({"i": i, "pad": "x".repeat(60 * 1024)})
    } else {
        json!({"i": i})
    }
}

/// Publishes 120 messages, cuts the power of all three nodes, restarts them, and returns
/// the acknowledged messages that are missing afterwards.
async fn lost_after_power_loss(unsafe_skip_fsync: bool) -> Result<Vec<String>> {
    let lazyfs = LazyFs::mount()?;
    // Frequent snapshots (and log purges), so snapshot files are part of what must survive.
    let mut b = builder()
        .data_root(&lazyfs.mount)
        .config("[raft_timing]\nsnapshot_every_entries = 10\nlogs_kept_after_snapshot = 2\n");
    if unsafe_skip_fsync {
        b = b.env(chorus_store::node_store::UNSAFE_SKIP_FSYNC_ENV, "1");
    }
    let mut cluster = b.start().await?;
    let mut acked = Vec::new();
    for i in 0..120u64 {
        let channel = format!("power.{}", i % 6);
        let reply = cluster.publish(1 + i % 3, &channel, payload(i), None).await?;
        acked.push((channel, reply["offset"].as_u64().unwrap(), i));
    }
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    let crash = lazyfs.command("crash")?;
    eprintln!("lazyfs: {}", crash.trim());
    for id in [1, 2, 3] {
        cluster.start_node(id)?;
    }
    let ready_within = Duration::from_secs(if unsafe_skip_fsync { 20 } else { 60 });
    cluster.wait_all_ready(ready_within).await?;
    let mut lost = Vec::new();
    for id in [1, 2, 3] {
        for channel in (0..6).map(|c| format!("power.{c}")) {
            let history = cluster.history(id, &channel).await?;
            for (_, offset, i) in acked.iter().filter(|(c, _, _)| *c == channel) {
                match history.get(*offset as usize - 1) {
                    Some(message) if message["data"] == payload(*i) => {}
                    other => lost.push(format!("node {id} {channel}@{offset}: found {other:?}")),
                }
            }
        }
    }
    if !lost.is_empty() {
        let shard = common::shard_of("power.5", 12) as usize;
        for id in [1, 2, 3] {
            let status = cluster.status(id).await?;
            eprintln!("node {id} shard {shard}: {}", status["shards"][shard]);
            eprintln!(
                "history of power.5 on node {id}: {:?}",
                cluster
                    .history(id, "power.5")
                    .await?
                    .iter()
                    .map(|m| m["offset"].clone())
                    .collect::<Vec<_>>()
            );
        }
    }
    if lost.is_empty() {
        // The cluster serves again, continuing the offsets.
        let reply = wait_for("a publish after power loss", Duration::from_secs(20), || async {
            cluster
                .publish(2, "power.0", json!("after"), Some("after-crash"))
                .await
                .ok()
        })
        .await?;
        assert_eq!(reply["offset"].as_u64(), Some(21));
    }
    drop(cluster);
    drop(lazyfs);
    Ok(lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_of_all_nodes_keeps_every_acknowledged_message() -> Result<()> {
    if !fuse_available() {
        return Ok(());
    }
    let lost = lost_after_power_loss(false).await?;
    assert!(
        lost.is_empty(),
        "acknowledged messages lost in a power loss:\n{}",
        lost.join("\n")
    );
    Ok(())
}

/// The negative control: with the fsync switched off, the same power loss loses
/// acknowledged messages, so the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_without_fsync_loses_acknowledged_messages() -> Result<()> {
    if !fuse_available() {
        return Ok(());
    }
    let lost = lost_after_power_loss(true).await;
    // Either history lost acknowledged messages, or the nodes could not even serve it.
    match lost {
        Ok(lost) => {
            eprintln!(
                "without fsync, {} acknowledged reads were lost or wrong, e.g. {:?}",
                lost.len(),
                lost.first()
            );
            assert!(
                !lost.is_empty(),
                "without fsync a power loss should lose acknowledged messages"
            );
        }
        Err(e) => eprintln!("without fsync the cluster did not recover: {e:#}"),
    }
    Ok(())
}

type Acked = Arc<Mutex<Vec<(String, u64, Value)>>>;

/// Publishes from 12 concurrent HTTP clients, spread over the nodes and 8 channels, until
/// `stop` is set; records every acknowledged (channel, offset, data) in `acked`.
async fn publish_load(cluster: Arc<TestCluster>, round: u64, stop: Arc<AtomicBool>, acked: Acked) {
    let mut workers = Vec::new();
    for worker in 0..12u64 {
        let (cluster, stop, acked) = (cluster.clone(), stop.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let channel = format!("torn.{}", (worker + i) % 8);
                let data = json!({"round": round, "worker": worker, "i": i});
                if let Ok(reply) = cluster
                    .publish(1 + (worker + i) % 3, &channel, data.clone(), None)
                    .await
                    && let Some(offset) = reply["offset"].as_u64()
                {
                    acked.lock().unwrap().push((channel, offset, data));
                }
                i += 1;
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
}

/// The histories of `torn.0..8` on every node: identical, gapless, and holding every
/// acknowledged message at its acknowledged offset. Returns the total message count.
async fn check_identical(cluster: &TestCluster, acked: &[(String, u64, Value)], when: &str) -> Result<usize> {
    let mut total = 0;
    for c in 0..8 {
        let channel = format!("torn.{c}");
        let mut histories = BTreeMap::new();
        for id in [1, 2, 3] {
            let history: Vec<(u64, Value)> = cluster
                .history(id, &channel)
                .await?
                .into_iter()
                .map(|m| (m["offset"].as_u64().unwrap_or(0), m["data"].clone()))
                .collect();
            histories.insert(id, history);
        }
        let reference = &histories[&1];
        for id in [2, 3] {
            if histories[&id] != *reference {
                let first_difference = reference
                    .iter()
                    .zip(&histories[&id])
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("node 1 has {a:?}, node {id} has {b:?}"))
                    .unwrap_or_else(|| format!("lengths {} and {}", reference.len(), histories[&id].len()));
                bail!("{when}: {channel} differs between node 1 and node {id}: {first_difference}");
            }
        }
        for (n, (offset, _)) in reference.iter().enumerate() {
            if *offset != n as u64 + 1 {
                bail!("{when}: {channel} has offset {offset} at position {n}");
            }
        }
        for (_, offset, data) in acked.iter().filter(|(ch, _, _)| *ch == channel) {
            match reference.get(*offset as usize - 1) {
                Some((_, stored)) if stored == data => {}
                other => bail!("{when}: acknowledged {channel}@{offset} {data} lost; found {other:?}"),
            }
        }
        total += reference.len();
    }
    Ok(total)
}

/// Torn power losses under load, six in a row: publishers run, all three nodes are
/// SIGKILLed mid-load, lazyfs lets part of the unsynced pages reach the disk (some torn), the
/// nodes restart. Every acknowledged message survives and every node serves the same history.
/// (With the Raft log in sled the replicas diverged here: same offset, different messages.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torn_power_losses_under_load_leave_identical_replicas() -> Result<()> {
    if !fuse_available() {
        return Ok(());
    }
    let lazyfs = LazyFs::mount()?;
    let mut cluster = builder()
        .data_root(&lazyfs.mount)
        .config("[raft_timing]\nsnapshot_every_entries = 200\nlogs_kept_after_snapshot = 20\n")
        .start()
        .await?;
    let mut acked = Vec::new();
    for round in 0..6u64 {
        let shared = Arc::new(cluster);
        let stop = Arc::new(AtomicBool::new(false));
        let this_round: Acked = Arc::default();
        let load = tokio::spawn(publish_load(
            shared.clone(),
            round,
            stop.clone(),
            this_round.clone(),
        ));
        // Let the load run until a good number of publishes were acknowledged this round.
        wait_for("publishes under load", Duration::from_secs(60), || async {
            (this_round.lock().unwrap().len() >= 200).then_some(())
        })
        .await?;
        // Power loss mid-load: every node dies at once, then the disk loses (or tears) what
        // was not synced.
        for id in [1, 2, 3] {
            shared.signal(id, libc::SIGKILL);
        }
        stop.store(true, Ordering::Relaxed);
        load.await?;
        cluster = Arc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("cluster still shared"))?;
        for id in [1, 2, 3] {
            cluster.kill(id); // reaps the process: nothing holds the files any more
        }
        acked.extend(std::mem::take(&mut *this_round.lock().unwrap()));
        let reply = lazyfs.command(&format!("crash-torn {}", 20261127 + round))?;
        eprintln!(
            "round {round}: {} acknowledged so far; lazyfs: {}",
            acked.len(),
            reply.trim()
        );
        for id in [1, 2, 3] {
            cluster.start_node(id)?;
        }
        cluster.wait_all_ready(Duration::from_secs(60)).await?;
        let total = check_identical(&cluster, &acked, &format!("after torn power loss {round}")).await?;
        eprintln!("round {round}: {total} messages, identical on all nodes");
    }
    drop(cluster);
    drop(lazyfs);
    Ok(())
}
