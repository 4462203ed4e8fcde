//! `chorus bench publish-http`: a load generator against a running cluster's HTTP API.
//!
//! Workers publish concurrently, spread round-robin over the given nodes and over many
//! channels, for a fixed duration; every acknowledgement's latency goes into an HDR
//! histogram. It prints a summary and, last, one JSON line with the figures.

use crate::{bench_token, parse_duration};
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Flags of `chorus bench publish`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishBenchArgs {
    /// Node HTTP URLs (repeatable); publishes are spread over them.
    #[arg(long = "node", default_values_t = ["http://127.0.0.1:7001".to_string(), "http://127.0.0.1:7002".to_string(), "http://127.0.0.1:7003".to_string()])]
    pub nodes: Vec<String>,
    /// Publishes in flight in total.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Payload size in bytes (the JSON string inside `data`).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Number of channels written.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// How long to run, e.g. 10s, 1m.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// A token allowed to publish; or set CHORUS_JWT_SECRET to mint one.
    #[arg(long, env = "CHORUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The JWT secret, to mint a token.
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// Runs the publish scenario.
pub async fn publish(args: PublishBenchArgs) -> Result<()> {
    let duration = parse_duration(&args.duration)?;
    let token = bench_token(args.token.as_deref(), args.jwt_secret.as_deref(), duration)?;
    if args.nodes.is_empty() || args.concurrency == 0 || args.channels == 0 {
        bail!("--node, --concurrency and --channels must be non-empty / positive");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()?;
    let body_data = "x".repeat(args.payload);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::with_capacity(args.concurrency);
    for w in 0..args.concurrency {
        let client = client.clone();
        let nodes = args.nodes.clone();
        let token = token.clone();
        let errors = errors.clone();
        let body = serde_json::json!({ "data": body_data, "type": "bench" }).to_string();
        let channels = args.channels;
        workers.push(tokio::spawn(async move {
            let mut histogram = crate::load::histogram();
            let mut i = w;
            while Instant::now() < deadline {
                let node = &nodes[i % nodes.len()];
                let channel = format!("bench.{}", i % channels);
                i += args_stride(w);
                let sent = Instant::now();
                let result = client
                    .post(format!("{node}/api/v1/channels/{channel}/publish"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match result {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        let micros = sent.elapsed().as_micros().max(1) as u64;
                        histogram.saturating_record(micros);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            histogram
        }));
    }
    let mut total = crate::load::histogram();
    for worker in workers {
        total.add(worker.await.context("bench worker")?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acked = total.len();
    let rate = acked as f64 / elapsed;
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "publish: {acked} acked in {elapsed:.1} s = {rate:.0} msgs/s; ack latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms; {} errors",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        errors.load(Ordering::Relaxed)
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "publish",
            "nodes": args.nodes.len(),
            "concurrency": args.concurrency,
            "payload_bytes": args.payload,
            "channels": args.channels,
            "seconds": elapsed,
            "acked": acked,
            "errors": errors.load(Ordering::Relaxed),
            "msgs_per_sec": rate,
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
        })
    );
    Ok(())
}

/// Workers step through channels and nodes with a stride coprime to most counts, so that
/// concurrent workers spread over both.
fn args_stride(worker: usize) -> usize {
    7 + 2 * (worker % 5)
}
