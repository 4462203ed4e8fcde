//! `chorus bench typing` and `chorus bench session`: the latency of typing indicators across
//! nodes, and the throughput and latency of collaborative-session operations.
//!
//! ```text
//!  typing:  typist (SDK, node B) ── started/stopped ──> node B ──gRPC broadcast──> nodes A, C
//!                                                         └──> subscribers (SDK) on A, B, C
//!           latency = time a subscriber receives the notice - time the typist sent it
//!  session: C clients (one per node), W operations in flight each, on S sessions;
//!           every operation is ordered by its session's shard leader and replicated (Raft)
//! ```
//! All clients live in this process: one monotonic clock times both ends.

use crate::e2e::{BenchAccess, rand_id};
use crate::load::{default_quic_nodes, histogram, ms};
use crate::parse_duration;
use anyhow::{Context, Result, bail};
use chorus_client::{SessionOp, SessionOpOutcome, SubscribeOptions};
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Flags of `chorus bench typing`.
#[derive(Debug, Clone, clap::Args)]
pub struct TypingBenchArgs {
    /// QUIC address of the typist's node.
    #[arg(long, default_value = "127.0.0.1:7202")]
    pub typist_node: String,
    /// QUIC addresses of the subscribers' nodes (repeatable; one subscriber per entry).
    #[arg(long = "subscriber-node", default_values_t = default_quic_nodes())]
    pub subscriber_nodes: Vec<String>,
    /// Typing changes (started, stopped, started...) to send, one after the other.
    #[arg(long, default_value_t = 1000)]
    pub changes: u32,
    #[command(flatten)]
    pub access: BenchAccess,
}

/// Runs the typing scenario: each change is sent once every subscriber saw the previous one.
pub async fn typing(args: TypingBenchArgs) -> Result<()> {
    if args.subscriber_nodes.is_empty() || args.changes == 0 {
        bail!("give at least one --subscriber-node and a positive --changes");
    }
    let token = args.access.token(Duration::from_secs(3600))?;
    let channel = format!("bench.typing{:08x}", rand_id());
    let typist = args.access.client(&args.typist_node, &token).await?;
    let (arrivals, mut arrived) = mpsc::unbounded_channel::<Instant>();
    let mut subscribers = Vec::new();
    for node in &args.subscriber_nodes {
        let client = args.access.client(node, &token).await?;
        let subscription = client.subscribe(&channel, SubscribeOptions::default()).await?;
        let mut notices = client.notices();
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some(notice) = notices.next().await {
                if notice.event_type.starts_with("typing.") && arrivals.send(Instant::now()).is_err() {
                    return;
                }
            }
        });
        subscribers.push((client, subscription));
    }
    let mut latency = histogram();
    let mut lost = 0u64;
    let started = Instant::now();
    for change in 0..args.changes {
        let sent = Instant::now();
        if change % 2 == 0 {
            typist.typing(&channel).await?;
        } else {
            typist.stop_typing(&channel).await?;
        }
        for _ in 0..subscribers.len() {
            match tokio::time::timeout(Duration::from_secs(5), arrived.recv()).await {
                Ok(Some(at)) => latency.saturating_record(at.duration_since(sent).as_micros().max(1) as u64),
                _ => lost += 1,
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "typing: {} notices to {} subscribers in {elapsed:.1?}; send-to-notice p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms; {lost} missing",
        latency.len(),
        subscribers.len(),
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        ms(&latency, 0.999),
        latency.max() as f64 / 1000.0
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "typing",
            "changes": args.changes,
            "subscribers": subscribers.len(),
            "notices": latency.len(),
            "missing": lost,
            "p50_ms": ms(&latency, 0.5),
            "p99_ms": ms(&latency, 0.99),
            "p999_ms": ms(&latency, 0.999),
            "max_ms": latency.max() as f64 / 1000.0,
        })
    );
    typist.close();
    for (client, _) in subscribers {
        client.close();
    }
    Ok(())
}

/// Flags of `chorus bench session`.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionBenchArgs {
    /// QUIC addresses of the clients' nodes (repeatable; one client per entry).
    #[arg(long = "node", default_values_t = default_quic_nodes())]
    pub nodes: Vec<String>,
    /// Operations in flight per client.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Sessions written (round-robin; they land on different shards).
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,
    /// Conflict policy of the sessions: lww or reject.
    #[arg(long, default_value = "lww")]
    pub policy: String,
    /// How long to run, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    #[command(flatten)]
    pub access: BenchAccess,
}

/// Runs the session scenario: increments (they commute: none is refused under either policy)
/// and sets of per-client paths.
pub async fn session(args: SessionBenchArgs) -> Result<()> {
    let duration = parse_duration(&args.duration)?;
    if args.nodes.is_empty() || args.window == 0 || args.sessions == 0 {
        bail!("--node, --window and --sessions must be given and positive");
    }
    let token = args.access.token(duration)?;
    let run = format!("{:08x}", rand_id());
    let sessions: Vec<String> = (0..args.sessions)
        .map(|i| format!("bench.session{run}.s{i}"))
        .collect();
    let mut clients = Vec::new();
    for node in &args.nodes {
        clients.push(args.access.client(node, &token).await?);
    }
    for session in &sessions {
        clients[0]
            .create_session(session, &args.policy, &serde_json::json!({"n": 0}))
            .await
            .with_context(|| format!("creating {session}"))?;
    }
    let deadline = Instant::now() + duration;
    let mut workers = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for w in 0..args.window {
            let client = client.clone();
            let sessions = sessions.clone();
            workers.push(tokio::spawn(async move {
                let mut latency = histogram();
                let (mut errors, mut refused) = (0u64, 0u64);
                let mut k = c * 7919 + w * 31;
                while Instant::now() < deadline {
                    let session = &sessions[k % sessions.len()];
                    let op = if k % 2 == 0 {
                        SessionOp::Increment("/n".into(), serde_json::json!(1))
                    } else {
                        SessionOp::Set(format!("/c{c}w{w}"), serde_json::json!(k))
                    };
                    k += 1;
                    let sent = Instant::now();
                    match client.session_op(session, op, 0).await {
                        Ok(SessionOpOutcome::Applied { .. }) => {
                            latency.saturating_record(sent.elapsed().as_micros().max(1) as u64)
                        }
                        Ok(SessionOpOutcome::Conflict { .. }) => refused += 1,
                        Err(_) => errors += 1,
                    }
                }
                (latency, errors, refused)
            }));
        }
    }
    let started = Instant::now();
    let mut latency = histogram();
    let (mut errors, mut refused) = (0, 0);
    for worker in workers {
        let (l, e, r) = worker.await.context("worker")?;
        latency.add(l).context("merging histograms")?;
        errors += e;
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64().max(duration.as_secs_f64());
    let rate = latency.len() as f64 / elapsed;
    println!(
        "session: {} ops applied in {elapsed:.1}s = {rate:.0} ops/s ({} clients x {} in flight, {} sessions, {}); latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms; {refused} refused, {errors} errors",
        latency.len(),
        clients.len(),
        args.window,
        sessions.len(),
        args.policy,
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        ms(&latency, 0.999),
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "session",
            "clients": clients.len(),
            "window": args.window,
            "sessions": sessions.len(),
            "policy": args.policy,
            "applied": latency.len(),
            "ops_per_sec": rate,
            "refused": refused,
            "errors": errors,
            "p50_ms": ms(&latency, 0.5),
            "p99_ms": ms(&latency, 0.99),
            "p999_ms": ms(&latency, 0.999),
        })
    );
    for client in clients {
        client.close();
    }
    Ok(())
}
