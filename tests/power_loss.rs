//! Power loss of the whole cluster: the three data directories live on one lazyfs mount
//! (../shared/tools/lazyfs), which drops every write that was not fsynced when told to
//! `crash`. Every acknowledged message must survive.

mod common;

use anyhow::Result;
use common::lazyfs::{LazyFs, fuse_available};
use common::{builder, wait_for};
use serde_json::json;
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
