//! `chorus bench e2e` and `chorus bench fanout`: publish-to-delivery latency through the Rust
//! SDK, across nodes, at a fixed rate.
//!
//! ```text
//!  publisher (SDK) ──QUIC──> node B ──Raft commit──> every node applies
//!                                                    └─> each node's hub ──QUIC──> subscribers (SDK)
//!  latency = time a subscriber receives the event - time the publisher sent it
//!  e2e:    a subscriber on every node, a pattern over 12 channels
//!  fanout: M subscribers spread over the nodes, all on one channel
//! ```
//! All clients live in this process, so one monotonic clock times both ends. Publishes are
//! open-loop (one task per tick), so a slow acknowledgement does not lower the rate.

use crate::load::{default_quic_nodes, histogram, ms, udp_endpoints};
use crate::{bench_token, parse_duration};
use anyhow::{Context, Result, bail};
use chorus_client::{Client, ClientBuilder, SubscribeOptions, Subscription};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Flags of `chorus bench e2e`.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eBenchArgs {
    /// QUIC addresses of the subscribers' nodes (repeatable; one subscriber per entry).
    #[arg(long = "subscribe-node", default_values_t = default_quic_nodes())]
    pub subscribe_nodes: Vec<String>,
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

/// Flags of `chorus bench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutBenchArgs {
    /// QUIC addresses of the nodes (repeatable); subscribers are spread over them.
    #[arg(long = "node", default_values_t = default_quic_nodes())]
    pub nodes: Vec<String>,
    /// Subscribers (connections) of the one channel.
    #[arg(long, default_value_t = 300)]
    pub subscribers: usize,
    /// Publishes per second to the channel.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// How long to publish, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
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

    /// An SDK client builder for `endpoints` (tried in order) with `token`.
    pub fn builder(&self, endpoints: &[String], token: &str) -> ClientBuilder {
        let mut builder = Client::builder()
            .endpoints(endpoints)
            .token(token)
            .subscription_buffer(65_536);
        for ca in &self.cas {
            builder = builder.trust_certificate_pem_file(ca);
        }
        for fingerprint in &self.fingerprints {
            builder = builder.trust_fingerprint(fingerprint);
        }
        builder
    }

    /// An SDK client of `endpoint`.
    pub async fn client(&self, endpoint: &str, token: &str) -> Result<Client> {
        self.builder(&[endpoint.to_string()], token)
            .connect()
            .await
            .with_context(|| format!("connecting to {endpoint}"))
    }
}

/// What one fixed-rate run measured.
struct Delivery {
    sent: usize,
    errors: usize,
    latency: Histogram<u64>,
    /// From the first publish to the last delivery.
    seconds: f64,
}

/// Publishes `rate`/s for `duration` round-robin over `channels`, while every subscription
/// (each expecting every event) records its latency.
async fn measure(
    publisher: &Client,
    subscriptions: Vec<Subscription>,
    channels: &[String],
    rate: u32,
    duration: Duration,
    payload: usize,
) -> Result<Delivery> {
    let clock = Instant::now();
    let pad = "x".repeat(payload);
    let total = (rate as u64 * duration.as_secs().max(1)) as usize;
    let receivers: Vec<_> = subscriptions
        .into_iter()
        .map(|mut subscription| {
            tokio::spawn(async move {
                let mut latency = histogram();
                let mut last = Duration::ZERO;
                while latency.len() < total as u64 {
                    let Ok(Some(event)) =
                        tokio::time::timeout(Duration::from_secs(10), subscription.next_event()).await
                    else {
                        break;
                    };
                    last = clock.elapsed();
                    let now = last.as_micros() as u64;
                    let sent = event.json().ok().and_then(|v| v["t"].as_u64()).unwrap_or(now);
                    latency.saturating_record(now.saturating_sub(sent).max(1));
                }
                (latency, last)
            })
        })
        .collect();

    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
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
    let mut latency = histogram();
    let mut last = Duration::ZERO;
    for receiver in receivers {
        let (one, at) = receiver.await.context("receiver task")?;
        latency.add(one)?;
        last = last.max(at);
    }
    Ok(Delivery {
        sent: total,
        errors,
        latency,
        seconds: last.as_secs_f64(),
    })
}

/// Runs the e2e scenario and prints a summary and one JSON line.
pub async fn run(args: E2eBenchArgs) -> Result<()> {
    let duration = parse_duration(&args.duration)?;
    if args.rate == 0 || args.channels == 0 || args.subscribe_nodes.is_empty() {
        bail!("--rate, --channels and --subscribe-node must be positive / given");
    }
    let token = args.access.token(duration)?;
    let run_id = format!("{:08x}", rand_id());
    let mut subscribers = Vec::new();
    let mut subscriptions = Vec::new();
    for node in &args.subscribe_nodes {
        let subscriber = args.access.client(node, &token).await?;
        subscriptions.push(
            subscriber
                .subscribe(&format!("bench.e2e{run_id}.*"), SubscribeOptions::default())
                .await?,
        );
        subscribers.push(subscriber);
    }
    let publisher = args.access.client(&args.publish_node, &token).await?;
    let channels: Vec<String> = (0..args.channels)
        .map(|i| format!("bench.e2e{run_id}.c{i}"))
        .collect();
    let d = measure(
        &publisher,
        subscriptions,
        &channels,
        args.rate,
        duration,
        args.payload,
    )
    .await?;
    let expected = d.sent * subscribers.len();
    println!(
        "e2e: {} of {expected} deliveries ({} subscribers) at {} msgs/s = {:.0} deliveries/s; publish-to-delivery p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms; {} publish errors",
        d.latency.len(),
        subscribers.len(),
        args.rate,
        d.latency.len() as f64 / d.seconds.max(1e-9),
        ms(&d.latency, 0.5),
        ms(&d.latency, 0.9),
        ms(&d.latency, 0.99),
        ms(&d.latency, 0.999),
        d.latency.max() as f64 / 1000.0,
        d.errors
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "e2e",
            "rate": args.rate,
            "payload_bytes": args.payload,
            "channels": args.channels,
            "subscribers": subscribers.len(),
            "sent": d.sent,
            "expected": expected,
            "delivered": d.latency.len(),
            "deliveries_per_sec": d.latency.len() as f64 / d.seconds.max(1e-9),
            "errors": d.errors,
            "p50_ms": ms(&d.latency, 0.5),
            "p90_ms": ms(&d.latency, 0.9),
            "p99_ms": ms(&d.latency, 0.99),
            "p999_ms": ms(&d.latency, 0.999),
            "max_ms": d.latency.max() as f64 / 1000.0,
        })
    );
    for client in subscribers.into_iter().chain([publisher]) {
        client.close();
    }
    Ok(())
}

/// Runs the fanout scenario and prints a summary and one JSON line.
pub async fn fanout(args: FanoutBenchArgs) -> Result<()> {
    let duration = parse_duration(&args.duration)?;
    if args.rate == 0 || args.subscribers == 0 || args.nodes.is_empty() {
        bail!("--rate, --subscribers and --node must be positive / given");
    }
    let token = args.access.token(duration)?;
    let channel = format!("bench.fanout{:08x}", rand_id());
    // The subscribers share a few UDP sockets instead of one each.
    let sockets = udp_endpoints(args.subscribers.div_ceil(256))?;
    let mut subscribers = Vec::new();
    let mut subscriptions = Vec::new();
    for i in 0..args.subscribers {
        let node = &args.nodes[i % args.nodes.len()];
        let subscriber = args
            .access
            .builder(std::slice::from_ref(node), &token)
            .quic_endpoint(sockets[i / 256].clone())
            .connect()
            .await
            .with_context(|| format!("subscriber {i} to {node}"))?;
        subscriptions.push(
            subscriber
                .subscribe(&channel, SubscribeOptions::default())
                .await?,
        );
        subscribers.push(subscriber);
    }
    let publisher = args.access.client(&args.nodes[0], &token).await?;
    let d = measure(
        &publisher,
        subscriptions,
        &[channel],
        args.rate,
        duration,
        args.payload,
    )
    .await?;
    let expected = d.sent * args.subscribers;
    let per_sec = d.latency.len() as f64 / d.seconds.max(1e-9);
    println!(
        "fanout: {} of {expected} deliveries to {} subscribers over {} nodes at {} msgs/s = {per_sec:.0} deliveries/s; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} publish errors",
        d.latency.len(),
        args.subscribers,
        args.nodes.len(),
        args.rate,
        ms(&d.latency, 0.5),
        ms(&d.latency, 0.99),
        d.latency.max() as f64 / 1000.0,
        d.errors
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "fanout",
            "subscribers": args.subscribers,
            "rate": args.rate,
            "sent": d.sent,
            "expected": expected,
            "delivered": d.latency.len(),
            "deliveries_per_sec": per_sec,
            "errors": d.errors,
            "p50_ms": ms(&d.latency, 0.5),
            "p99_ms": ms(&d.latency, 0.99),
            "max_ms": d.latency.max() as f64 / 1000.0,
        })
    );
    for client in subscribers.into_iter().chain([publisher]) {
        client.close();
    }
    Ok(())
}

/// A number that differs between runs, for fresh channel names.
pub fn rand_id() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32)
}
