//! The chaos suite: a workload against a real 3-node cluster while a nemesis kills, pauses,
//! partitions and powers off nodes; then a Jepsen-style checker over everything recorded.
//!
//! ```text
//!  ┌ nemesis (seeded) ─────────────────────────────────────────────┐
//!  │ SIGKILL random node · SIGKILL leader of a busy shard ·        │
//!  │ SIGSTOP/SIGCONT · isolate one node (test-only switch) ·       │
//!  │ power loss of all nodes (data on lazyfs: kill all, crash)     │
//!  └───────────────┬───────────────────────────────────────────────┘
//!                  ▼
//!   node 1   node 2   node 3   ◄── workload (SDK publishers, subscribers, sessions)
//!                  │
//!                  ▼ heal, drain, read every node's history and sessions
//!              checker: ok / lost / duplicated / reordered / unknown
//! ```
//! `make test` runs `chaos_round` (about two minutes) and the negative control;
//! `make chaos` runs the round for longer: `CHORUS_CHAOS_SECONDS`, `CHORUS_CHAOS_SEED`.
//! The seed fixes the nemesis's schedule and the workload's choices; thread and network
//! timing still differ between runs, so a failure names its seed and saves its history.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod workload;

use anyhow::{Context, Result};
use checker::{History, Report};
use common::lazyfs::{LazyFs, fuse_available};
use common::{TestCluster, builder, shard_of, tail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::{Duration, Instant};
use workload::{Workload, WorkloadConfig};

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillRandom,
    KillLeader,
    Pause,
    Isolate,
    PowerLoss,
}

/// One chaos run's settings.
struct ChaosRun {
    seed: u64,
    duration: Duration,
    faults: Vec<Fault>,
    /// Seconds of calm between faults, and how long a fault lasts (ranges, seconds).
    calm: (f64, f64),
    fault_length: (f64, f64),
    env: Vec<(&'static str, &'static str)>,
    publish_pause: Duration,
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

/// A run of the nemesis: faults one at a time, each healed before the next.
struct Nemesis<'a> {
    cluster: &'a mut TestCluster,
    lazyfs: Option<&'a LazyFs>,
    rng: StdRng,
    /// Draws which node to ask for the leader, apart from `rng`, so that the schedule drawn
    /// from `rng` does not depend on what the cluster answered.
    asking: StdRng,
    started: Instant,
    log: Vec<String>,
    busy_channel: String,
}

impl Nemesis<'_> {
    fn record(&mut self, what: String) {
        let line = format!("t={:7.2}s {what}", self.started.elapsed().as_secs_f64());
        eprintln!("nemesis: {line}");
        self.log.push(line);
    }

    async fn pause_for(&mut self, (low, high): (f64, f64)) {
        let seconds = self.rng.random_range(low..high);
        // The nemesis's schedule, not a wait for a condition.
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    }

    fn random_node(&mut self) -> u64 {
        let ids: Vec<u64> = self.cluster.nodes.keys().copied().collect();
        ids[self.rng.random_range(0..ids.len())]
    }

    /// The leader of the busy channel's shard, as a random live node sees it.
    async fn busy_leader(&mut self) -> Option<u64> {
        let shard = shard_of(&self.busy_channel, self.cluster.shards);
        let ids: Vec<u64> = self.cluster.nodes.keys().copied().collect();
        let asking = ids[self.asking.random_range(0..ids.len())];
        self.cluster.leader_of(asking, shard).await.ok().flatten()
    }

    async fn restart(&mut self, id: u64) -> Result<()> {
        self.cluster.start_node(id)?;
        self.cluster.wait_ready(id, Duration::from_secs(90)).await?;
        self.record(format!("node {id} restarted and ready"));
        Ok(())
    }

    async fn act(&mut self, fault: Fault, length: (f64, f64)) -> Result<()> {
        match fault {
            Fault::KillRandom | Fault::KillLeader => {
                let target = match fault {
                    Fault::KillLeader => self.busy_leader().await,
                    _ => None,
                };
                // Always draw, so that the rest of the schedule is the same either way.
                let random = self.random_node();
                let id = target.unwrap_or(random);
                self.cluster.kill(id);
                self.record(format!("SIGKILL node {id} ({fault:?})"));
                self.pause_for(length).await;
                self.restart(id).await?;
            }
            Fault::Pause => {
                let id = self.random_node();
                self.cluster.signal(id, libc::SIGSTOP);
                self.record(format!("SIGSTOP node {id}"));
                self.pause_for(length).await;
                self.cluster.signal(id, libc::SIGCONT);
                self.record(format!("SIGCONT node {id}"));
            }
            Fault::Isolate => {
                let id = self.random_node();
                isolate(self.cluster, id, true).await?;
                self.record(format!("isolate node {id}"));
                self.pause_for(length).await;
                isolate(self.cluster, id, false).await?;
                self.record(format!("heal node {id}"));
            }
            Fault::PowerLoss => {
                let lazyfs = self.lazyfs.context("power loss needs lazyfs")?;
                let ids: Vec<u64> = self.cluster.nodes.keys().copied().collect();
                for id in &ids {
                    self.cluster.kill(*id);
                }
                let crash = lazyfs.command("crash")?;
                self.record(format!("power loss: SIGKILL all, lazyfs {}", crash.trim()));
                self.pause_for(length).await;
                for id in ids {
                    self.cluster.start_node(id)?;
                }
                self.cluster.wait_all_ready(Duration::from_secs(120)).await?;
                self.record("power restored: all nodes ready".into());
            }
        }
        Ok(())
    }
}

async fn isolate(cluster: &TestCluster, id: u64, isolated: bool) -> Result<()> {
    let (status, body) = cluster
        .call(id, "PUT", "/test/isolation", Some(json!({"isolated": isolated})))
        .await?;
    anyhow::ensure!(
        status == 200,
        "isolation switch of node {id}: HTTP {status}: {body}"
    );
    Ok(())
}

/// Every retained event of every channel, as each node stores it.
async fn read_stored(cluster: &TestCluster, channels: &[String]) -> Result<History> {
    let mut history = History::default();
    for id in cluster.nodes.keys().copied() {
        let mut per_channel = std::collections::BTreeMap::new();
        for channel in channels {
            let messages = cluster.history(id, channel).await?;
            let entries = messages
                .iter()
                .map(|m| {
                    let id = m["data"]["id"]
                        .as_str()
                        .map_or_else(|| m["data"].to_string(), str::to_string);
                    (m["offset"].as_u64().unwrap_or(0), id)
                })
                .collect();
            per_channel.insert(channel.clone(), entries);
        }
        history.stored.insert(id, per_channel);
    }
    Ok(history)
}

async fn read_sessions(cluster: &TestCluster, sessions: &[String], history: &mut History) -> Result<()> {
    for id in cluster.nodes.keys().copied() {
        let mut per_session = std::collections::BTreeMap::new();
        for session in sessions {
            let (status, body) = cluster
                .call(id, "GET", &format!("/api/v1/sessions/{session}"), None)
                .await?;
            anyhow::ensure!(
                status == 200,
                "session {session} from node {id}: HTTP {status}: {body}"
            );
            per_session.insert(
                session.clone(),
                (body["version"].as_u64().unwrap_or(0), body["document"].clone()),
            );
        }
        history.sessions.insert(id, per_session);
    }
    Ok(())
}

/// Every node's histories and sessions, read until all nodes agree on each channel's last
/// offset and each session's version (a write retried by a client may still commit just
/// after the workload stopped), or for 30 s.
async fn read_settled(cluster: &TestCluster, workload: &Workload) -> Result<History> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut history = read_stored(cluster, &workload.channels).await?;
        read_sessions(cluster, &workload.sessions, &mut history).await?;
        let lasts: std::collections::BTreeSet<Vec<u64>> = history
            .stored
            .values()
            .map(|channels| channels.values().map(|e| e.last().map_or(0, |l| l.0)).collect())
            .collect();
        let versions: std::collections::BTreeSet<Vec<u64>> = history
            .sessions
            .values()
            .map(|sessions| sessions.values().map(|(version, _)| *version).collect())
            .collect();
        if (lasts.len() == 1 && versions.len() == 1) || Instant::now() > deadline {
            return Ok(history);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs the workload under the nemesis, heals, and checks. Returns the report and where the
/// history was saved.
async fn run(settings: ChaosRun) -> Result<(Report, std::path::PathBuf)> {
    let mut faults = settings.faults.clone();
    let lazyfs = if faults.contains(&Fault::PowerLoss) {
        match LazyFs::mount() {
            Ok(fs) => Some(fs),
            Err(e) => {
                eprintln!("SKIPPED power loss: lazyfs cannot be mounted here: {e:#}");
                faults.retain(|f| *f != Fault::PowerLoss);
                None
            }
        }
    } else {
        None
    };
    // Frequent snapshots and log purges, so that restarts also install snapshots.
    let mut b = builder().shards(6).config(
        "[history]\nmax_entries = 1000000\n[raft_timing]\nsnapshot_every_entries = 1000\nlogs_kept_after_snapshot = 100\n",
    );
    b = b.env(chorus_cluster::faults::FAULT_INJECTION_ENV, "1");
    for (key, value) in &settings.env {
        b = b.env(key, value);
    }
    if let Some(fs) = &lazyfs {
        b = b.data_root(&fs.mount);
    }
    let mut cluster = b.start().await?;
    let config = WorkloadConfig {
        channels: 16,
        workers_per_node: 4,
        sessions: 2,
        seed: settings.seed,
        publish_pause: settings.publish_pause,
    };
    let mut workload = Workload::start(&cluster, &config).await?;
    let mut nemesis = Nemesis {
        cluster: &mut cluster,
        lazyfs: lazyfs.as_ref(),
        rng: StdRng::seed_from_u64(settings.seed),
        asking: StdRng::seed_from_u64(settings.seed.wrapping_add(1)),
        started: Instant::now(),
        log: Vec::new(),
        busy_channel: workload.channels[0].clone(),
    };
    nemesis.record(format!(
        "seed {}, {} s, faults {:?}",
        settings.seed,
        settings.duration.as_secs(),
        faults
    ));
    // No fault starts that could last past the end.
    let last_start = settings
        .duration
        .saturating_sub(Duration::from_secs_f64(settings.fault_length.1));
    while nemesis.started.elapsed() < settings.duration {
        nemesis.pause_for(settings.calm).await;
        if nemesis.started.elapsed() >= last_start {
            break;
        }
        let fault = faults[nemesis.rng.random_range(0..faults.len())];
        nemesis.act(fault, settings.fault_length).await?;
        eprintln!("chaos: {} publishes acknowledged so far", workload.acked());
    }
    let nemesis_log = std::mem::take(&mut nemesis.log);
    drop(nemesis);
    cluster.wait_all_ready(Duration::from_secs(120)).await?;

    let (ops, session_workers) = workload.stop().await?;
    let settled = read_settled(&cluster, &workload).await?;
    // Subscribers catch up after the last recovery; wait until each has reached the last
    // stored offset of every channel (or give up and let the checker say what is missing).
    let last: std::collections::BTreeMap<String, u64> = settled.stored[&1]
        .iter()
        .map(|(c, entries)| (c.clone(), entries.last().map_or(0, |e| e.0)))
        .collect();
    let caught_up = common::wait_for("subscribers to catch up", Duration::from_secs(90), || async {
        let delivered = workload.delivered();
        delivered
            .values()
            .all(|channels| {
                channels
                    .iter()
                    .all(|(c, got)| got.last().map_or(0, |e| e.0) >= last.get(c).copied().unwrap_or(0))
            })
            .then_some(())
    })
    .await;
    if let Err(e) = caught_up {
        eprintln!("chaos: {e}");
    }
    // Read once more: anything committed meanwhile is then in the reference too.
    let mut history = read_settled(&cluster, &workload).await?;
    history.delivered = workload.delivered();
    history.ops = ops;
    history.session_workers = session_workers;
    workload.close();
    let report = checker::check(&history);

    let saved = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "chaos-seed{}-{}.json",
        settings.seed,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    ));
    let record = json!({
        "seed": settings.seed,
        "seconds": settings.duration.as_secs(),
        "nemesis": nemesis_log,
        "report": report,
        "history": history,
    });
    std::fs::write(&saved, serde_json::to_vec(&record)?)?;
    if !report.valid() {
        for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
            eprintln!(
                "---- tail of node {id}'s log ----\n{}",
                tail(&cluster.log(id), 15)
            );
        }
    }
    drop(cluster);
    drop(lazyfs);
    Ok((report, saved))
}

fn print_report(seed: u64, report: &Report, saved: &std::path::Path) {
    eprintln!("chaos (seed {seed}): {}", report.summary());
    for problem in &report.problems {
        eprintln!("  {problem}");
    }
    eprintln!(
        "chaos: history, nemesis log and report saved to {}",
        saved.display()
    );
}

/// The CI round (about two minutes) and `make chaos` (any length and seed): every fault,
/// power loss included, against the real cluster; nothing acknowledged may be lost,
/// duplicated or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_round() -> Result<()> {
    let seed = env_number("CHORUS_CHAOS_SEED", 20261126);
    let seconds = env_number("CHORUS_CHAOS_SECONDS", 75);
    let mut faults = vec![Fault::KillRandom, Fault::KillLeader, Fault::Pause, Fault::Isolate];
    if fuse_available() {
        faults.push(Fault::PowerLoss);
    }
    let (report, saved) = run(ChaosRun {
        seed,
        duration: Duration::from_secs(seconds),
        faults,
        calm: (1.0, 4.0),
        fault_length: (1.0, 5.0),
        env: Vec::new(),
        publish_pause: Duration::ZERO,
    })
    .await?;
    print_report(seed, &report, &saved);
    // A cluster that refused everything would pass the checks above: demand progress.
    let attempted = report.ok + report.unknown;
    assert!(
        report.ok >= 200 && report.unknown * 20 <= attempted && report.session_ops_acked > 0,
        "too little progress under the nemesis (seed {seed}): {}",
        report.summary()
    );
    assert!(
        report.valid(),
        "the chaos checker failed (seed {seed}; rerun with CHORUS_CHAOS_SEED={seed} CHORUS_CHAOS_SECONDS={seconds} make chaos); history in {}:\n{}\n{}",
        saved.display(),
        report.summary(),
        report.problems.join("\n")
    );
    Ok(())
}

/// The negative control: a build that acknowledges publishes before they commit (a
/// test-only switch) loses acknowledged writes when nodes are killed, and the checker says
/// so. Without it, a checker that cannot fail would pass the round above.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checker_catches_acknowledging_before_commit() -> Result<()> {
    let seed = 7;
    let (report, saved) = run(ChaosRun {
        seed,
        duration: Duration::from_secs(25),
        faults: vec![Fault::KillRandom, Fault::KillLeader],
        calm: (1.0, 2.0),
        fault_length: (0.5, 1.5),
        env: vec![(chorus_cluster::faults::UNSAFE_ACK_BEFORE_COMMIT_ENV, "1")],
        // Answers come at once under this switch: pace the publishers so that the commits
        // happening behind the answers stay a bounded backlog.
        publish_pause: Duration::from_millis(5),
    })
    .await?;
    print_report(seed, &report, &saved);
    assert!(
        report.lost > 0 && !report.valid(),
        "acknowledging before commit under SIGKILL should lose acknowledged publishes: {}",
        report.summary()
    );
    Ok(())
}
