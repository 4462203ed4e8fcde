//! Found by probing: an unreachable voter flooded its peers' logs with about 27,000
//! warnings (every shard's replication and election retries logged each failure).

mod common;

use anyhow::Result;
use common::builder;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_voter_does_not_flood_the_log() -> Result<()> {
    let mut cluster = builder().start().await?;
    let started = Instant::now();
    cluster.kill(3);
    // Writes to every shard: each leader keeps trying to replicate them to node 3.
    for i in 0..60 {
        cluster
            .publish(1 + i % 2, &format!("flood.{i}"), json!({"i": i}), None)
            .await?;
    }
    // The limit reports what it held back once a window has passed.
    common::wait_for("the held-back report", Duration::from_secs(40), || async {
        (1..=2)
            .any(|n| cluster.log(n).contains("repeated log lines held back"))
            .then_some(())
    })
    .await?;
    let windows = started.elapsed().as_secs() / 10 + 1;
    for node in 1..=2 {
        let log = cluster.log(node);
        let unreachable = log.lines().filter(|l| l.contains("Unreachable node")).count() as u64;
        // A few call sites report an unreachable peer, each at most 20 lines a window.
        let bound = 6 * 20 * windows;
        assert!(
            unreachable <= bound,
            "node {node}: {unreachable} 'Unreachable node' lines in {windows} windows (bound {bound})"
        );
    }
    Ok(())
}
