//! `chorus bench publish | fanout | connections | failover`: load scenarios against a running
//! cluster through the Rust SDK (QUIC). Each prints a human summary and, last, one JSON line
//! with the figures (`scripts/bench.sh` collects those lines and takes medians).
//!
//! ```text
//!  publish:     N SDK clients over the nodes, W publishes in flight each ──► acked/s, ack p50/p99/p999
//!  fanout:      1 publisher ──► 1 channel ──► M subscribers over the nodes ──► deliveries/s, latency
//!  connections: C idle authenticated QUIC (or WebSocket) connections to one node ──► its RSS per connection
//!  failover:    load on one shard; SIGKILL its leader K times ──► kill-to-first-ack, acked writes lost
//! ```

use crate::e2e::{BenchAccess, rand_id};
use crate::parse_duration;
use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use chorus_client::PublishOptions;
use chorus_client::quinn;
use chorus_proto::client::{self as wire, ClientFrame, ServerFrame, client_frame, server_frame};
use chorus_proto::codec::{FrameReader, put_length_delimited};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use prost::Message as _;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An HDR histogram of microseconds, 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// A quantile of a microsecond histogram, in ms.
pub fn ms(histogram: &Histogram<u64>, q: f64) -> f64 {
    histogram.value_at_quantile(q) as f64 / 1000.0
}

/// The QUIC addresses of `make run`'s nodes.
pub fn default_quic_nodes() -> Vec<String> {
    (1..=3).map(|n| format!("127.0.0.1:720{n}")).collect()
}

fn default_http_nodes() -> Vec<String> {
    (1..=3).map(|n| format!("http://127.0.0.1:700{n}")).collect()
}

/// Flags of `chorus bench publish`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// QUIC addresses of the nodes (repeatable); publishers are spread over them.
    #[arg(long = "node", default_values_t = default_quic_nodes())]
    pub nodes: Vec<String>,
    /// SDK clients (connections) publishing.
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Publishes in flight per publisher.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Channels written.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// How long to run, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    #[command(flatten)]
    pub access: BenchAccess,
}

/// Runs the publish scenario: every publisher keeps `window` publishes in flight.
pub async fn publish(args: PublishArgs) -> Result<()> {
    let duration = parse_duration(&args.duration)?;
    if args.nodes.is_empty() || args.publishers == 0 || args.window == 0 || args.channels == 0 {
        bail!("--node, --publishers, --window and --channels must be non-empty / positive");
    }
    let token = args.access.token(duration)?;
    let run = rand_id();
    let data = json!({ "pad": "x".repeat(args.payload) }).to_string();
    let errors = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for p in 0..args.publishers {
        clients.push(
            args.access
                .client(&args.nodes[p % args.nodes.len()], &token)
                .await?,
        );
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for (p, client) in clients.iter().enumerate() {
        for w in 0..args.window {
            let client = client.clone();
            let data = data.clone();
            let errors = errors.clone();
            let channels = args.channels;
            let mut i = p * args.window + w;
            workers.push(tokio::spawn(async move {
                let mut latency = histogram();
                while Instant::now() < deadline {
                    let channel = format!("bench.p{run:08x}.{}", i % channels);
                    i += 7;
                    let sent = Instant::now();
                    match client.publish(&channel, data.clone()).await {
                        Ok(_) => latency.saturating_record(sent.elapsed().as_micros().max(1) as u64),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latency
            }));
        }
    }
    let mut latency = histogram();
    for worker in workers {
        latency.add(worker.await.context("publish worker")?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = latency.len() as f64 / elapsed;
    let errors = errors.load(Ordering::Relaxed);
    println!(
        "publish: {} acked in {elapsed:.1} s = {rate:.0} msgs/s ({} publishers x {} in flight, {} B); ack p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms; {errors} errors",
        latency.len(),
        args.publishers,
        args.window,
        args.payload,
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        ms(&latency, 0.999),
    );
    println!(
        "{}",
        json!({
            "scenario": "publish",
            "publishers": args.publishers,
            "window": args.window,
            "in_flight": args.publishers * args.window,
            "payload_bytes": args.payload,
            "channels": args.channels,
            "seconds": elapsed,
            "acked": latency.len(),
            "errors": errors,
            "msgs_per_sec": rate,
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

/// Flags of `chorus bench connections`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// QUIC address of the node to connect to.
    #[arg(long, default_value = "127.0.0.1:7201")]
    pub node: String,
    /// HTTP URL of the same node (its /metrics gives its resident memory).
    #[arg(long, default_value = "http://127.0.0.1:7001")]
    pub http: String,
    /// Idle connections to open and hold.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Seconds to hold the connections before measuring memory again.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
    /// UDP sockets the connections share (each QUIC endpoint is one socket).
    #[arg(long, default_value_t = 16)]
    pub sockets: usize,
    /// `quic` (minimal clients that answer every ping) or `websocket` (JSON clients on the
    /// node's `/ws` that answer none: keep --hold-secs under the node's idle timeout; each
    /// holds a file descriptor here and on the node: mind `ulimit -n`).
    #[arg(long, default_value = "quic", value_parser = ["quic", "websocket"])]
    pub transport: String,
    #[command(flatten)]
    pub access: BenchAccess,
}

/// What the idle QUIC connections saw while held.
#[derive(Default)]
struct PingCounts {
    /// Node pings received.
    received: AtomicU64,
    /// Pongs written back.
    answered: AtomicU64,
    /// Connections that ended (closed, refused, or a frame that did not decode).
    ended: AtomicU64,
}

/// The next frame of a node's control stream.
async fn next_server_frame(recv: &mut quinn::RecvStream, reader: &mut FrameReader) -> Result<ServerFrame> {
    loop {
        if let Some(bytes) = reader.next_frame()? {
            return Ok(ServerFrame::decode(bytes)?);
        }
        let chunk = recv
            .read_chunk(usize::MAX, true)
            .await?
            .context("the node ended the control stream")?;
        reader.extend(&chunk.bytes);
    }
}

/// One idle QUIC connection as a minimal client holds it: the control stream, `Connect`,
/// `ConnectOk`, then a task that answers every `Ping` with a `Pong` and counts both.
async fn idle_quic_client(
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    node: &str,
    token: &str,
    counts: Arc<PingCounts>,
) -> Result<Held> {
    let addr = tokio::net::lookup_host(node)
        .await?
        .next()
        .with_context(|| format!("{node} resolves to no address"))?;
    let host = node.rsplit_once(':').map_or(node, |(h, _)| h);
    let connection = endpoint.connect_with(config, addr, host)?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let mut out = BytesMut::new();
    let connect = wire::Connect {
        token: token.to_string(),
        protocol_version: chorus_client::PROTOCOL_VERSION,
        client_name: "chorus-bench/connections".into(),
        ..Default::default()
    };
    let connect = ClientFrame {
        id: 1,
        kind: Some(client_frame::Kind::Connect(connect)),
    };
    put_length_delimited(&connect, &mut out);
    send.write_all(&out).await?;
    let mut reader = FrameReader::new(1 << 20);
    match next_server_frame(&mut recv, &mut reader).await?.kind {
        Some(server_frame::Kind::ConnectOk(_)) => {}
        other => bail!("connect refused: {other:?}"),
    }
    let pong = ClientFrame {
        id: 0,
        kind: Some(client_frame::Kind::Pong(wire::Pong {})),
    };
    let answering = tokio::spawn(async move {
        loop {
            let Ok(frame) = next_server_frame(&mut recv, &mut reader).await else {
                break;
            };
            if let Some(server_frame::Kind::Ping(_)) = frame.kind {
                counts.received.fetch_add(1, Ordering::Relaxed);
                out.clear();
                put_length_delimited(&pong, &mut out);
                if send.write_all(&out).await.is_err() {
                    break;
                }
                counts.answered.fetch_add(1, Ordering::Relaxed);
            }
        }
        counts.ended.fetch_add(1, Ordering::Relaxed);
    });
    Ok(Held::Quic(connection, answering))
}

/// An idle connection held open by the connections scenario.
enum Held {
    Quic(quinn::Connection, tokio::task::JoinHandle<()>),
    WebSocket(
        Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>>,
    ),
}

/// Opens a WebSocket to `http`'s `/ws` and connects as a JSON client, as an app would.
async fn websocket_client(http: &str, token: &str) -> Result<Held> {
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}/ws", http.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let connect = json!({"id": 1, "kind": {"connect": {
        "token": token, "protocol_version": chorus_client::PROTOCOL_VERSION,
        "client_name": "chorus-bench/connections"}}});
    socket.send(Message::Text(connect.to_string().into())).await?;
    let answer = tokio::time::timeout(Duration::from_secs(30), socket.next())
        .await
        .context("no answer to connect within 30 s")?
        .context("closed before answering connect")??;
    match answer {
        Message::Text(text) if text.contains("connect_ok") => Ok(Held::WebSocket(Box::new(socket))),
        other => bail!("connect refused: {other:?}"),
    }
}

/// A gauge or counter from a node's Prometheus text: the sum of every series of `name`.
pub async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Result<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Runs the connections scenario.
pub async fn connections(args: ConnectionsArgs) -> Result<()> {
    if args.count == 0 || args.concurrency == 0 || args.sockets == 0 {
        bail!("--count, --concurrency and --sockets must be positive");
    }
    let token = args.access.token(Duration::from_secs(3600))?;
    let http = reqwest::Client::new();
    const RSS: &str = "process_resident_memory_bytes";
    const OPEN: &str = "chorus_gateway_connections";
    let rss_before = metric(&http, &args.http, RSS).await?;
    if rss_before <= 0.0 {
        bail!("{} reports no {RSS} (it is measured on Linux only)", args.http);
    }
    let open_before = metric(&http, &args.http, OPEN).await?;
    let websocket = args.transport == "websocket";
    let endpoints = if websocket {
        Vec::new()
    } else {
        udp_endpoints(args.sockets)?
    };
    let access = &args.access;
    // Keep-alives only as often as the node's own pings: the connections stay idle.
    let quic_config = access
        .builder(std::slice::from_ref(&args.node), &token)
        .idle_timeout(Duration::from_secs(120))
        .quic_client_config()?;
    let counts = Arc::new(PingCounts::default());
    let (token, endpoints, node, http_url) = (&token, &endpoints, &args.node, &args.http);
    let (quic_config, counts) = (&quic_config, &counts);
    let started = Instant::now();
    let results: Vec<Result<Held>> = futures::stream::iter(0..args.count)
        .map(|i| async move {
            if websocket {
                return websocket_client(http_url, token).await;
            }
            let endpoint = endpoints[i % endpoints.len()].clone();
            idle_quic_client(endpoint, quic_config.clone(), node, token, counts.clone()).await
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let mut clients = Vec::new();
    let mut failures = 0usize;
    let mut first_failure = None;
    for result in results {
        match result {
            Ok(client) => clients.push(client),
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    // The benchmark's hold period, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let rss_after = metric(&http, &args.http, RSS).await?;
    let open_after = metric(&http, &args.http, OPEN).await?;
    let held = (open_after - open_before).max(0.0);
    let per_connection = if held > 0.0 {
        (rss_after - rss_before) / held
    } else {
        0.0
    };
    println!(
        "connections: {} of {} connected in {connect_secs:.1} s ({:.0}/s); node holds {held:.0} more; resident memory {:.1} MiB -> {:.1} MiB = {:.1} KiB per connection; {failures} failed{}",
        clients.len(),
        args.count,
        clients.len() as f64 / connect_secs,
        rss_before / 1048576.0,
        rss_after / 1048576.0,
        per_connection / 1024.0,
        first_failure
            .map(|f| format!(" (first: {f})"))
            .unwrap_or_default()
    );
    if !websocket {
        println!(
            "held {} s: {} node pings received, {} answered; {} connections ended meanwhile",
            args.hold_secs,
            counts.received.load(Ordering::Relaxed),
            counts.answered.load(Ordering::Relaxed),
            counts.ended.load(Ordering::Relaxed)
        );
    }
    println!(
        "{}",
        json!({
            "scenario": "connections",
            "transport": args.transport,
            "requested": args.count,
            "connected": clients.len(),
            "held_by_node": held,
            "failed": failures,
            "connect_secs": connect_secs,
            "connects_per_sec": clients.len() as f64 / connect_secs,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "kib_per_connection": per_connection / 1024.0,
            "hold_secs": args.hold_secs,
            "pings_received": counts.received.load(Ordering::Relaxed),
            "pings_answered": counts.answered.load(Ordering::Relaxed),
            "ended_while_held": counts.ended.load(Ordering::Relaxed),
        })
    );
    for held in clients {
        match held {
            Held::Quic(connection, answering) => {
                answering.abort();
                connection.close(0u32.into(), b"done");
            }
            Held::WebSocket(mut socket) => {
                let _ = socket.close().await;
            }
        }
    }
    for endpoint in endpoints {
        endpoint.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    }
    Ok(())
}

/// `count` client QUIC endpoints (UDP sockets) for SDK clients to share.
pub fn udp_endpoints(count: usize) -> Result<Vec<chorus_client::quinn::Endpoint>> {
    (0..count)
        .map(|_| {
            chorus_client::quinn::Endpoint::client("0.0.0.0:0".parse().expect("a literal address"))
                .context("opening a UDP socket")
        })
        .collect()
}

/// Flags of `chorus bench failover`.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// QUIC addresses of the nodes, in node-id order (repeatable).
    #[arg(long = "node", default_values_t = default_quic_nodes())]
    pub nodes: Vec<String>,
    /// HTTP URLs of the nodes (repeatable): to find the shard leader, its process and readiness.
    #[arg(long = "http", default_values_t = default_http_nodes())]
    pub http: Vec<String>,
    /// How many times to SIGKILL the leader. Something must restart killed nodes (the bench
    /// script runs each node in a restart loop).
    #[arg(long, default_value_t = 5)]
    pub kills: usize,
    /// Publishes in flight per node (one SDK client per node).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Channels written, all on one shard.
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
    #[command(flatten)]
    pub access: BenchAccess,
}

/// What the failover scenario learns from a node's `/api/v1/cluster`.
struct NodeView {
    url: String,
    id: u64,
    pid: i32,
    status: Value,
}

async fn view(http: &reqwest::Client, url: &str, token: &str) -> Result<NodeView> {
    let status: Value = http
        .get(format!("{url}/api/v1/cluster"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(2))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(NodeView {
        url: url.to_string(),
        id: status["node_id"].as_u64().context("node_id")?,
        pid: status["pid"].as_i64().context("pid")? as i32,
        status,
    })
}

/// Waits (polling, up to `timeout`) until `url` answers `/ready` with 200.
async fn wait_ready(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = http
            .get(format!("{url}/ready"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the failover scenario.
pub async fn failover(args: FailoverArgs) -> Result<()> {
    if args.nodes.len() != args.http.len() || args.nodes.len() < 3 || args.kills == 0 {
        bail!(
            "give the same number (at least 3) of --node and --http, in node-id order, and a positive --kills"
        );
    }
    let token = args.access.token(Duration::from_secs(3600))?;
    let http = reqwest::Client::new();
    let first = view(&http, &args.http[0], &token).await?;
    let shards = first.status["shard_count"].as_u64().context("shard_count")? as u32;
    let run = rand_id();
    // Channels of one shard: every kill of its leader stops all of the load.
    let mut channels = Vec::new();
    let target = chorus_core::shard_for(&format!("bench.f{run:08x}.0"), shards);
    let mut i = 0;
    while channels.len() < args.channels {
        let name = format!("bench.f{run:08x}.{i}");
        if chorus_core::shard_for(&name, shards) == target {
            channels.push(name);
        }
        i += 1;
    }
    let everywhere: Vec<Vec<String>> = (0..args.nodes.len())
        .map(|n| {
            let mut order = args.nodes.clone();
            order.rotate_left(n);
            order
        })
        .collect();
    let mut publishers = Vec::new();
    for order in &everywhere {
        publishers.push(
            args.access
                .builder(order, &token)
                .reconnect_attempts(u32::MAX)
                .connect()
                .await?,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for (p, client) in publishers.iter().enumerate() {
        for w in 0..args.window {
            let (client, stop, errors, channels) =
                (client.clone(), stop.clone(), errors.clone(), channels.clone());
            workers.push(tokio::spawn(async move {
                let mut acked: Vec<(String, String)> = Vec::new();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let id = format!("p{p}w{w}-{seq}");
                    let channel = &channels[(seq as usize + w) % channels.len()];
                    let options = PublishOptions {
                        idempotency_key: Some(id.clone()),
                        ..PublishOptions::default()
                    };
                    match client
                        .publish_with(channel, json!({"id": id}).to_string(), options)
                        .await
                    {
                        Ok(_) => acked.push((channel.clone(), id)),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                acked
            }));
        }
    }
    // Probes, one client per node, each only ever connected to its own node.
    let mut probes = Vec::new();
    for node in &args.nodes {
        probes.push(
            args.access
                .builder(std::slice::from_ref(node), &token)
                .reconnect_attempts(u32::MAX)
                .connect()
                .await?,
        );
    }
    let mut resumed = histogram();
    let mut subscriber_moved = histogram();
    for kill in 0..args.kills {
        // Let the load run, and leadership settle, between kills.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = current_leader(&http, &args.http, &token, target.0 as usize).await?;
        let leader = victim.id;
        let watcher = subscriber_on(&args, &token, leader, &channels[0]).await?;
        // SAFETY: kill(2) with a process id the node reported for itself.
        let killed_at = Instant::now();
        // Wall-clock time of the kill, to line this up with the nodes' logs.
        let killed_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        if unsafe { libc::kill(victim.pid, libc::SIGKILL) } != 0 {
            bail!(
                "cannot SIGKILL node {leader} (pid {}): {}",
                victim.pid,
                std::io::Error::last_os_error()
            );
        }
        let mut attempts = futures::stream::FuturesUnordered::new();
        for (n, probe) in probes.iter().enumerate() {
            if n as u64 + 1 == leader {
                continue;
            }
            let channel = channels[0].clone();
            attempts.push(async move {
                // As an application would: retry under the same idempotency key until acked.
                let options = PublishOptions {
                    idempotency_key: Some(format!("probe-{run}-{kill}-{n}")),
                    ..PublishOptions::default()
                };
                let data = json!({"probe": kill}).to_string();
                while killed_at.elapsed() < Duration::from_secs(30) {
                    if probe
                        .publish_with(&channel, data.clone(), options.clone())
                        .await
                        .is_ok()
                    {
                        return Some(killed_at.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None
            });
        }
        let mut took = None;
        while let Some(result) = attempts.next().await {
            if result.is_some() {
                took = result;
                break;
            }
        }
        let took = took.context("no probe publish was acknowledged within 30 s of the kill")?;
        resumed.saturating_record(took.as_micros().max(1) as u64);
        let moved = watcher
            .await
            .context("subscriber watcher")?
            .context("the killed node's subscriber got no event from another node within 30 s")?
            - killed_at;
        subscriber_moved.saturating_record(moved.as_micros().max(1) as u64);
        println!(
            "failover {}: leader node {leader} of shard {} killed (unix time {killed_unix:.3} s); first write acknowledged after {:.0} ms; its subscriber's first event from another node after {:.0} ms",
            kill + 1,
            target.0,
            took.as_secs_f64() * 1000.0,
            moved.as_secs_f64() * 1000.0
        );
        wait_ready(&http, &victim.url, Duration::from_secs(60))
            .await
            .context("the killed node did not come back (run each node in a restart loop)")?;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for worker in workers {
        acked.extend(worker.await.context("failover worker")?);
    }
    let lost = count_lost(&http, &args.http[0], &token, &channels, &acked).await?;
    let errors = errors.load(Ordering::Relaxed);
    println!(
        "failover: {} kills; writes resumed after p50 {:.0} ms, max {:.0} ms; the killed node's subscriber got an event from another node after p50 {:.0} ms, max {:.0} ms; {} writes acknowledged, {lost} of them lost; {errors} publish errors (retried by the SDK or refused)",
        args.kills,
        ms(&resumed, 0.5),
        resumed.max() as f64 / 1000.0,
        ms(&subscriber_moved, 0.5),
        subscriber_moved.max() as f64 / 1000.0,
        acked.len()
    );
    println!(
        "{}",
        json!({
            "scenario": "failover",
            "kills": args.kills,
            "resume_p50_ms": ms(&resumed, 0.5),
            "resume_max_ms": resumed.max() as f64 / 1000.0,
            "subscriber_p50_ms": ms(&subscriber_moved, 0.5),
            "subscriber_max_ms": subscriber_moved.max() as f64 / 1000.0,
            "acked": acked.len(),
            "lost": lost,
            "errors": errors,
        })
    );
    for client in publishers.into_iter().chain(probes) {
        client.close();
    }
    Ok(())
}

/// An SDK client with default settings connected to node `victim` (the others as fallbacks),
/// subscribed to `channel` and seen receiving from it. The task returns when the client
/// first receives an event while connected to another node (`None`: not within 30 s).
async fn subscriber_on(
    args: &FailoverArgs,
    token: &str,
    victim: u64,
    channel: &str,
) -> Result<tokio::task::JoinHandle<Option<Instant>>> {
    // --node is in node-id order (checked by the caller's flags' docs): id N is the N-th.
    let index = (victim as usize)
        .checked_sub(1)
        .filter(|i| *i < args.nodes.len())
        .with_context(|| format!("node {victim} has no --node address (give them in node-id order)"))?;
    let mut order = args.nodes.clone();
    order.rotate_left(index);
    let client = args
        .access
        .builder(&order, token)
        .reconnect_attempts(u32::MAX)
        .connect()
        .await?;
    if client.node_id() != Some(victim) {
        bail!(
            "the subscriber meant for node {victim} connected to {:?}",
            client.node_id()
        );
    }
    let mut sub = client
        .subscribe(channel, chorus_client::SubscribeOptions::default())
        .await?;
    tokio::time::timeout(Duration::from_secs(10), sub.next_event())
        .await
        .context("the subscriber saw no event within 10 s before the kill")?
        .context("the subscription ended before the kill")?;
    Ok(tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let event = tokio::time::timeout_at(deadline.into(), sub.next_event()).await;
            match event {
                Ok(Some(_)) if client.node_id().is_some_and(|n| n != victim) => {
                    let at = Instant::now();
                    client.close();
                    return Some(at);
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }))
}

/// The node that says, itself, that it leads `shard` now (waiting up to 30 s for one:
/// leadership moves back to a restarted node once it has caught up).
async fn current_leader(
    http: &reqwest::Client,
    urls: &[String],
    token: &str,
    shard: usize,
) -> Result<NodeView> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for url in urls {
            if let Ok(v) = view(http, url, token).await
                && v.status["shards"][shard]["role"] == "leader"
            {
                return Ok(v);
            }
        }
        if Instant::now() > deadline {
            bail!("no node said it leads shard {shard} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many acknowledged (channel, id) writes are missing from the channels' history.
async fn count_lost(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    channels: &[String],
    acked: &[(String, String)],
) -> Result<usize> {
    let mut stored = std::collections::HashSet::new();
    for channel in channels {
        let mut since = 0;
        loop {
            let page: Value = http
                .get(format!(
                    "{url}/api/v1/channels/{channel}/history?since={since}&limit=1000"
                ))
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let messages = page["messages"].as_array().cloned().unwrap_or_default();
            let Some(last) = messages.last() else { break };
            since = last["offset"].as_u64().context("offset")?;
            for m in &messages {
                if let Some(id) = m["data"]["id"].as_str() {
                    stored.insert((channel.clone(), id.to_string()));
                }
            }
        }
    }
    Ok(acked.iter().filter(|a| !stored.contains(*a)).count())
}
