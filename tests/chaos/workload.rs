//! The chaos workload: publishers with idempotency keys over many channels, subscribers that
//! recover across reconnects, and collaborative-session operations, one SDK client of each
//! kind per node (each client knows every node and fails over to the next).
//!
//! ```text
//!  node n ◄── publisher client n (W workers, retry under the same key until acked or 30 s)
//!         ◄── subscriber client n (every channel, from the start)
//!         ◄── session client n (increment own counter / append own id, in turn)
//! ```
//! Everything is recorded for the checker against one clock started with the run.

use crate::checker::{Ack, Entry, PublishOp, SessionWorkerLog};
use crate::common::TestCluster;
use anyhow::{Context, Result};
use chorus_client::{Client, Error, PublishOptions, SessionOp, SessionOpOutcome, SubscribeOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long one publish is retried (under its idempotency key) before it counts as unknown.
const PUBLISH_GIVE_UP: Duration = Duration::from_secs(30);

/// The workload's shape.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub channels: usize,
    pub workers_per_node: usize,
    pub sessions: usize,
    pub seed: u64,
    /// A pause after each publish of a worker (zero: as fast as acknowledgements come).
    pub publish_pause: Duration,
}

type Deliveries = Arc<Mutex<Vec<Entry>>>;

/// The running workload.
pub struct Workload {
    pub channels: Vec<String>,
    pub sessions: Vec<String>,
    clock: Instant,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    clients: Vec<Client>,
    publishers: Vec<JoinHandle<Vec<PublishOp>>>,
    session_workers: Vec<JoinHandle<SessionWorkerLog>>,
    /// subscriber name → channel → what it received.
    pub deliveries: BTreeMap<String, BTreeMap<String, Deliveries>>,
    readers: Vec<JoinHandle<()>>,
}

/// An SDK client that prefers node `first` and knows them all; it never gives up
/// reconnecting.
async fn client(cluster: &TestCluster, first: u64, token: &str) -> Result<Client> {
    let mut order: Vec<u64> = cluster.nodes.keys().copied().collect();
    let at = order.iter().position(|id| *id == first).unwrap_or(0);
    order.rotate_left(at);
    cluster
        .sdk(&order, token)
        .reconnect_attempts(u32::MAX)
        .request_timeout(Duration::from_secs(10))
        .subscription_buffer(1 << 16)
        .connect()
        .await
        .with_context(|| format!("SDK client of node {first}"))
}

impl Workload {
    /// Creates the sessions, subscribes, then starts publishing and operating on sessions.
    pub async fn start(cluster: &TestCluster, config: &WorkloadConfig) -> Result<Workload> {
        let token = crate::common::token("chaos", &["admin"]);
        let channels: Vec<String> = (0..config.channels).map(|i| format!("chaos.c{i}")).collect();
        let sessions: Vec<String> = (0..config.sessions).map(|i| format!("chaos.doc{i}")).collect();
        let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
        let mut workload = Workload {
            channels: channels.clone(),
            sessions: sessions.clone(),
            clock: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            acked: Arc::new(AtomicU64::new(0)),
            clients: Vec::new(),
            publishers: Vec::new(),
            session_workers: Vec::new(),
            deliveries: BTreeMap::new(),
            readers: Vec::new(),
        };
        let counters: serde_json::Map<String, serde_json::Value> =
            nodes.iter().map(|n| (format!("node{n}"), json!(0))).collect();
        let setup = client(cluster, nodes[0], &token).await?;
        for session in &sessions {
            setup
                .create_session(session, "lww", &json!({"counters": counters, "log": []}))
                .await
                .with_context(|| format!("creating session {session}"))?;
        }
        setup.close();

        for node in &nodes {
            let subscriber = client(cluster, *node, &token).await?;
            let mut per_channel = BTreeMap::new();
            for channel in &channels {
                let mut subscription = subscriber.subscribe(channel, SubscribeOptions::default()).await?;
                let seen: Deliveries = Arc::default();
                let sink = seen.clone();
                workload.readers.push(tokio::spawn(async move {
                    while let Some(event) = subscription.next_event().await {
                        let id = event
                            .json()
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_string));
                        sink.lock().expect("deliveries lock").push((
                            event.offset,
                            id.unwrap_or_else(|| format!("<unparsable {}>", event.data)),
                        ));
                    }
                }));
                per_channel.insert(channel.clone(), seen);
            }
            workload
                .deliveries
                .insert(format!("subscriber@node{node}"), per_channel);
            workload.clients.push(subscriber);
        }

        let plan = PublishPlan {
            channels: channels.clone(),
            clock: workload.clock,
            stop: workload.stop.clone(),
            acked: workload.acked.clone(),
            pause: config.publish_pause,
        };
        for node in &nodes {
            let publisher = client(cluster, *node, &token).await?;
            for worker in 0..config.workers_per_node {
                let rng = StdRng::seed_from_u64(config.seed ^ (node << 32) ^ worker as u64);
                workload.publishers.push(tokio::spawn(publish_loop(
                    publisher.clone(),
                    format!("n{node}w{worker}"),
                    rng,
                    plan.clone(),
                )));
            }
            workload.clients.push(publisher);
            let editor = client(cluster, *node, &token).await?;
            for (i, session) in sessions.iter().enumerate() {
                workload.session_workers.push(tokio::spawn(session_loop(
                    editor.clone(),
                    session.clone(),
                    format!("node{node}"),
                    // Stagger the workers so that their operations interleave.
                    Duration::from_millis(37 * i as u64 + 11 * *node),
                    workload.stop.clone(),
                )));
            }
            workload.clients.push(editor);
        }
        Ok(workload)
    }

    /// Publishes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops starting new operations and collects every one attempted (in-flight publishes
    /// are retried until acknowledged or given up).
    pub async fn stop(&mut self) -> Result<(Vec<PublishOp>, Vec<SessionWorkerLog>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut ops = Vec::new();
        for publisher in self.publishers.drain(..) {
            ops.extend(publisher.await.context("publisher task")?);
        }
        let mut logs = Vec::new();
        for worker in self.session_workers.drain(..) {
            logs.push(worker.await.context("session worker task")?);
        }
        Ok((ops, logs))
    }

    /// What each subscriber has received so far.
    pub fn delivered(&self) -> BTreeMap<String, BTreeMap<String, Vec<Entry>>> {
        self.deliveries
            .iter()
            .map(|(name, channels)| {
                let channels = channels
                    .iter()
                    .map(|(c, seen)| (c.clone(), seen.lock().expect("deliveries lock").clone()))
                    .collect();
                (name.clone(), channels)
            })
            .collect()
    }

    /// Closes every client.
    pub fn close(&mut self) {
        for client in self.clients.drain(..) {
            client.close();
        }
        for reader in self.readers.drain(..) {
            reader.abort();
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.close();
    }
}

/// What every publisher worker shares.
#[derive(Clone)]
struct PublishPlan {
    channels: Vec<String>,
    clock: Instant,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    pause: Duration,
}

async fn publish_loop(client: Client, name: String, mut rng: StdRng, plan: PublishPlan) -> Vec<PublishOp> {
    let PublishPlan {
        channels,
        clock,
        stop,
        acked,
        pause,
    } = plan;
    let mut ops = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let channel = channels[rng.random_range(0..channels.len())].clone();
        let id = format!("{name}-{seq}");
        let data = json!({"id": id}).to_string();
        let first_sent = Instant::now();
        let mut op = PublishOp {
            id: id.clone(),
            channel: channel.clone(),
            sent_us: clock.elapsed().as_micros() as u64,
            ack: None,
            error: None,
        };
        loop {
            let options = PublishOptions {
                event_type: Some("chaos".into()),
                idempotency_key: Some(id.clone()),
            };
            match client.publish_with(&channel, data.clone(), options).await {
                Ok(ack) => {
                    op.ack = Some(Ack {
                        at_us: clock.elapsed().as_micros() as u64,
                        offset: ack.position.offset,
                    });
                    op.error = None;
                    acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    op.error = Some(e.to_string());
                    if matches!(e, Error::Closed(_)) {
                        // The client is gone for good: this op is unknown, and no more.
                        ops.push(op);
                        return ops;
                    }
                    if first_sent.elapsed() > PUBLISH_GIVE_UP {
                        break;
                    }
                    // Not a wait for a condition: the pause between retries of a failed
                    // publish, as an application would make.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        ops.push(op);
        if !pause.is_zero() {
            // The workload's pacing, not a wait for a condition.
            tokio::time::sleep(pause).await;
        }
    }
    ops
}

async fn session_loop(
    client: Client,
    session: String,
    worker: String,
    offset: Duration,
    stop: Arc<AtomicBool>,
) -> SessionWorkerLog {
    let mut log = SessionWorkerLog {
        session: session.clone(),
        worker: worker.clone(),
        ..SessionWorkerLog::default()
    };
    let mut pace = tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_millis(100));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        seq += 1;
        let append = seq.is_multiple_of(2);
        let id = format!("{worker}-{seq}");
        let op = if append {
            SessionOp::Append("/log".into(), json!(id))
        } else {
            SessionOp::Increment(format!("/counters/{worker}"), json!(1))
        };
        let applied = matches!(
            client.session_op(&session, op, 0).await,
            Ok(SessionOpOutcome::Applied { .. })
        );
        match (append, applied) {
            (true, true) => log.appends_acked.push(id),
            (true, false) => log.appends_unknown.push(id),
            (false, true) => log.increments_acked += 1,
            (false, false) => log.increments_unknown += 1,
        }
    }
    log
}
