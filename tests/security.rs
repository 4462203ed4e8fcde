//! An attacker's view of a node: what anyone who can reach its ports can make it do.

mod common;

use anyhow::{Context, Result};
use chorus_proto::cluster::ShardMessage;
use chorus_proto::cluster::cluster_client::ClusterClient;
use common::builder;
use serde_json::json;

/// Resident and peak resident memory of a process, in bytes (`/proc/PID/status`).
fn memory_of(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        let kib: u64 = line.split_whitespace().nth(1).context("a number")?.parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Found by probing: one 400 MB gRPC message without credentials, sent to the Raft port,
/// raised the node's resident memory from 49 MB to 848 MB before it was refused, because the
/// whole message was read and decoded first. Credentials are now checked from the headers,
/// before the body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unauthenticated_400_mb_message_is_refused_before_it_is_read() -> Result<()> {
    let cluster = builder().start().await?;
    let pid = cluster.node(1).pid().context("node 1 runs")?;
    let (before, _) = memory_of(pid)?;

    let mut client = ClusterClient::connect(format!("http://{}", cluster.node(1).raft))
        .await?
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let flood = ShardMessage {
        shard: 0,
        payload: vec![7u8; 400 * 1024 * 1024],
    };
    let refused = client
        .append_entries(flood)
        .await
        .expect_err("an unauthenticated call must be refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // A forged proof is refused the same way.
    let mut forged = tonic::Request::new(ShardMessage {
        shard: 0,
        payload: vec![1, 2, 3],
    });
    forged
        .metadata_mut()
        .insert("x-chorus-auth", "00".repeat(32).parse()?);
    let refused = client
        .vote(forged)
        .await
        .expect_err("a forged proof must be refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let (after, peak) = memory_of(pid)?;
    eprintln!(
        "node 1 resident memory: {} MiB before, {} MiB after, {} MiB at its peak",
        before >> 20,
        after >> 20,
        peak >> 20
    );
    assert!(
        peak < before + 32 * 1024 * 1024,
        "the refused message was buffered: peak {} MiB against {} MiB before",
        peak >> 20,
        before >> 20
    );
    // The node goes on serving.
    let reply = cluster
        .publish(1, "after.flood", json!({"ok": true}), None)
        .await?;
    assert_eq!(reply["offset"], json!(1));
    Ok(())
}
