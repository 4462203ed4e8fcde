//! `chorus bench e2e`: publish-to-delivery latency through the Rust SDK, across nodes, at a
//! fixed rate.
//!
//! ```text
//!  publisher (SDK) ──QUIC──> node B ──Raft commit──> every node applies
//!                                                    └─> node A's hub ──QUIC──> subscriber (SDK)
//!  latency = time the subscriber receives the event - time the publisher sent it
//! ```
//! Both clients live in this process, so one monotonic clock times both ends. Publishes are
//! open-loop (one task per tick), so a slow acknowledgement does not lower the rate.

use crate::bench::bench_token;
use anyhow::{Context, Result, bail};
use chorus_client::{Client, SubscribeOptions};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Flags of `chorus bench e2e`.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eBenchArgs {
    /// QUIC address of the node the subscriber connects to.
    #[arg(long, default_value = "127.0.0.1:7201")]
    pub subscribe_node: String,
    /// QUIC address of the node the publisher connects to.
    #[arg(long, default_value = "127.0.0.1:7202")]
    pub publish_node: String,
    /// Publishes per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// How long to publish, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Channels written (round-robin; they land on different shards).
    #[arg(long, default_value_t = 12)]
    pub channels: usize,
    #[command(flatten)]
    pub access: BenchAccess,
}

/// How a benchmark's SDK clients trust the nodes and authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchAccess {
    /// Trust this PEM certificate (repeatable).
    #[arg(long = "ca")]
    pub cas: Vec<PathBuf>,
    /// Trust this SHA-256 certificate fingerprint (repeatable).
    #[arg(long = "fingerprint")]
    pub fingerprints: Vec<String>,
    /// A token allowed to publish and subscribe; or set CHORUS_JWT_SECRET to mint one.
    #[arg(long, env = "CHORUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The JWT secret, to mint a token.
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

impl BenchAccess {
    /// The token to use for a run of `duration`.
    pub fn token(&self, duration: Duration) -> Result<String> {
        bench_token(self.token.as_deref(), self.jwt_secret.as_deref(), duration)
    }

    /// An SDK client of `endpoint`.
    pub async fn client(&self, endpoint: &str, token: &str) -> Result<Client> {
        let builder = Client::builder()
            .endpoints([endpoint])
            .token(token)
            .subscription_buffer(65_536);
        crate::client_cli::trusting(builder, &self.cas, &self.fingerprints)
            .connect()
            .await
            .with_context(|| format!("connecting to {endpoint}"))
    }
}

/// Runs the scenario and prints a summary and one JSON line.
pub async fn run(args: E2eBenchArgs) -> Result<()> {
    let duration = crate::cli::parse_ttl(&args.duration)?;
    if args.rate == 0 || args.channels == 0 {
        bail!("--rate and --channels must be positive");
    }
    let token = args.access.token(duration)?;
    let subscriber = args.access.client(&args.subscribe_node, &token).await?;
    let publisher = args.access.client(&args.publish_node, &token).await?;
    let run_id = format!("{:08x}", rand_id());
    let channels: Vec<String> = (0..args.channels)
        .map(|i| format!("bench.e2e{run_id}.c{i}"))
        .collect();
    let mut subscription = subscriber
        .subscribe(&format!("bench.e2e{run_id}.*"), SubscribeOptions::default())
        .await?;

    let clock = Instant::now();
    let pad = "x".repeat(args.payload);
    let total = (args.rate as u64 * duration.as_secs().max(1)) as usize;
    let receiver = tokio::spawn(async move {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        while latency.len() < total as u64 {
            let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_secs(10), subscription.next_event()).await
            else {
                break;
            };
            let now = clock.elapsed().as_micros() as u64;
            let sent = event.json().ok().and_then(|v| v["t"].as_u64()).unwrap_or(now);
            latency.saturating_record(now.saturating_sub(sent).max(1));
        }
        latency
    });

    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut acks = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let publisher = publisher.clone();
        let channel = channels[i % channels.len()].clone();
        let data = serde_json::json!({ "t": clock.elapsed().as_micros() as u64, "pad": pad }).to_string();
        acks.push(tokio::spawn(
            async move { publisher.publish(&channel, data).await },
        ));
    }
    let mut errors = 0;
    for ack in acks {
        if !matches!(ack.await, Ok(Ok(_))) {
            errors += 1;
        }
    }
    let latency = receiver.await.context("receiver task")?;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "e2e: {} of {total} delivered at {} msgs/s; publish-to-delivery p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {errors} publish errors",
        latency.len(),
        args.rate,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        latency.max() as f64 / 1000.0
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "e2e",
            "rate": args.rate,
            "payload_bytes": args.payload,
            "channels": args.channels,
            "sent": total,
            "delivered": latency.len(),
            "errors": errors,
            "p50_ms": ms(0.5),
            "p90_ms": ms(0.9),
            "p99_ms": ms(0.99),
            "max_ms": latency.max() as f64 / 1000.0,
        })
    );
    subscriber.close();
    publisher.close();
    Ok(())
}

/// A number that differs between runs, for fresh channel names.
pub fn rand_id() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32)
}
