//! The shared harness of the process-level tests: real `chorus` processes on loopback.
//!
//! ```text
//!  TestCluster::builder().nodes(3).config(toml).start()
//!     ├─ node 1: target/debug/chorus node --id 1 --peers ... (log: <dir>/node1.log)
//!     ├─ node 2
//!     └─ node 3
//!  kill(n) = SIGKILL · pause(n) = SIGSTOP · restart(n) · publish/history over HTTP
//! ```
//! Waits are on conditions (readiness, applied indexes) with deadlines, never fixed sleeps.

#![allow(dead_code)]

pub mod lazyfs;
pub mod wire;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CLUSTER_SECRET: &str = "test-cluster-secret";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789";

/// Ports handed to test nodes: below Linux's ephemeral range (32768-60999), where a port
/// the kernel picked for one of the many outgoing connections of concurrently running tests
/// could take a node's port between asking and binding ("Address already in use").
const TEST_PORTS: std::ops::Range<u16> = 10_000..32_000;
/// Ports per test process; nextest runs each test in a process of its own, and processes
/// started close together get blocks of their own.
const PORTS_PER_PROCESS: u16 = 40;

/// A port free on loopback (TCP and UDP) at the time of asking, from this process's block.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let blocks = (TEST_PORTS.end - TEST_PORTS.start) / PORTS_PER_PROCESS;
    let own = (std::process::id() % u32::from(blocks)) as u16;
    loop {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(i < PORTS_PER_PROCESS * blocks, "no free test port left");
        // Past this process's block (a test that asked for many), go on in the next ones.
        let block = (own + i / PORTS_PER_PROCESS) % blocks;
        let port = TEST_PORTS.start + block * PORTS_PER_PROCESS + i % PORTS_PER_PROCESS;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Taken by a node of another test (or anything else): try the next one.
        if TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok() {
            return port;
        }
    }
}

/// Mints a token for `sub` with `roles`.
pub fn token(sub: &str, roles: &[&str]) -> String {
    mint(json!({"sub": sub, "roles": roles}))
}

/// Mints a token for `sub`'s `device` with `roles`.
pub fn device_token(sub: &str, device: &str, roles: &[&str]) -> String {
    mint(json!({"sub": sub, "device": device, "roles": roles}))
}

/// Mints a token with `claims` (an hour of validity is added as `exp`).
pub fn mint(mut claims: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    claims["exp"] = json!(exp);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Takes `n` events from a subscription, failing after `timeout`.
pub async fn take(
    sub: &mut chorus_client::Subscription,
    n: usize,
    timeout: Duration,
) -> Result<Vec<chorus_client::Event>> {
    let mut events = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while events.len() < n {
        match tokio::time::timeout_at(deadline, sub.next_event()).await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => bail!("subscription ended after {} of {n} events", events.len()),
            Err(_) => bail!("only {} of {n} events within {timeout:?}", events.len()),
        }
    }
    Ok(events)
}

/// Polls `condition` until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One node's addresses and process.
pub struct TestNode {
    pub id: u64,
    pub http: SocketAddr,
    pub raft: SocketAddr,
    pub quic: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
    pub extra_env: Vec<(String, String)>,
    pub cluster_secret: String,
    /// The CA that issued this node's client-facing certificate, when clients reach it over
    /// TLS only (HTTPS, WSS; see [`Builder::client_tls`]).
    pub client_ca: Option<PathBuf>,
    child: Option<Child>,
}

impl TestNode {
    pub fn url(&self) -> String {
        match self.client_ca {
            Some(_) => format!("https://{}", self.http),
            None => format!("http://{}", self.http),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Builds a [`TestCluster`].
pub struct Builder {
    nodes: u64,
    shards: u32,
    config: String,
    root: Option<PathBuf>,
    env: Vec<(String, String)>,
    held_back: Vec<u64>,
    cluster_tls: bool,
    client_tls: bool,
}

impl Builder {
    /// HTTPS and WSS for clients (the HTTP port serves TLS only), with node certificates of a
    /// CA from `chorus certs init` that the test's clients trust (also on for every test when
    /// `CHORUS_TEST_CLIENT_TLS=1`).
    pub fn client_tls(mut self) -> Self {
        self.client_tls = true;
        self
    }

    /// Mutual TLS between the nodes, with certificates from `chorus certs init` (also on for
    /// every test when `CHORUS_TEST_CLUSTER_TLS=1`).
    pub fn cluster_tls(mut self) -> Self {
        self.cluster_tls = true;
        self
    }

    pub fn nodes(mut self, n: u64) -> Self {
        self.nodes = n;
        self
    }

    pub fn shards(mut self, n: u32) -> Self {
        self.shards = n;
        self
    }

    /// Extra TOML for every node's config file (e.g. `[raft_timing]` settings).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = toml.to_string();
        self
    }

    /// Do not start node `id` with the others (start it later with `start_node`).
    pub fn hold_back(mut self, id: u64) -> Self {
        self.held_back.push(id);
        self
    }

    /// Set an environment variable on every node.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Put the data directories under `root` (e.g. a lazyfs mount) instead of a temp dir.
    pub fn data_root(mut self, root: &Path) -> Self {
        self.root = Some(root.to_path_buf());
        self
    }

    /// Starts the nodes and waits until every one is ready.
    pub async fn start(self) -> Result<TestCluster> {
        let cluster = self.spawn()?;
        cluster.wait_all_ready(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Starts the nodes without waiting.
    pub fn spawn(self) -> Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let root = self.root.clone().unwrap_or_else(|| dir.path().to_path_buf());
        let config_path = dir.path().join("extra.toml");
        std::fs::write(&config_path, &self.config)?;
        let certs = if self.cluster_tls || self.client_tls {
            let certs = dir.path().join("certs");
            // Nodes 1 to 9: room for the ones tests add later.
            let made = Command::new(chorus_bin())
                .args(["certs", "init", "--nodes", "1,2,3,4,5,6,7,8,9", "--dir"])
                .arg(&certs)
                .output()?;
            if !made.status.success() {
                bail!("chorus certs init: {}", String::from_utf8_lossy(&made.stderr));
            }
            Some(certs)
        } else {
            None
        };
        let client_ca = certs
            .as_ref()
            .filter(|_| self.client_tls)
            .map(|certs| certs.join("ca.pem"));
        let mut nodes = BTreeMap::new();
        for id in 1..=self.nodes {
            let mut node = new_node(id, &root, dir.path(), client_ca.clone());
            node.extra_env = self.env.clone();
            nodes.insert(id, node);
        }
        let peers = peers_arg(&nodes);
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = &client_ca {
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?);
        }
        let mut cluster = TestCluster {
            certs,
            cluster_tls: self.cluster_tls,
            dir,
            nodes,
            peers,
            shards: self.shards,
            config_path,
            client: client.build()?,
            token: token("tester", &["admin"]),
        };
        let ids: Vec<u64> = cluster
            .nodes
            .keys()
            .copied()
            .filter(|id| !self.held_back.contains(id))
            .collect();
        for id in ids {
            cluster.start_node(id)?;
        }
        Ok(cluster)
    }
}

fn new_node(id: u64, root: &Path, logs: &Path, client_ca: Option<PathBuf>) -> TestNode {
    TestNode {
        id,
        http: SocketAddr::from(([127, 0, 0, 1], free_port())),
        raft: SocketAddr::from(([127, 0, 0, 1], free_port())),
        quic: SocketAddr::from(([127, 0, 0, 1], free_port())),
        data_dir: root.join(format!("node{id}")),
        log: logs.join(format!("node{id}.log")),
        extra_args: Vec::new(),
        extra_env: Vec::new(),
        cluster_secret: CLUSTER_SECRET.to_string(),
        client_ca,
        child: None,
    }
}

fn peers_arg(nodes: &BTreeMap<u64, TestNode>) -> String {
    nodes
        .values()
        .map(|n| format!("{}={}", n.id, n.raft))
        .collect::<Vec<_>>()
        .join(",")
}

/// Real chorus nodes on loopback; killed when dropped.
pub struct TestCluster {
    dir: tempfile::TempDir,
    /// Where `chorus certs init` wrote the nodes' certificates, with mutual TLS between nodes
    /// or TLS for clients.
    pub certs: Option<PathBuf>,
    cluster_tls: bool,
    pub nodes: BTreeMap<u64, TestNode>,
    pub peers: String,
    pub shards: u32,
    config_path: PathBuf,
    pub client: reqwest::Client,
    pub token: String,
}

pub fn builder() -> Builder {
    Builder {
        nodes: 3,
        shards: 12,
        config: String::new(),
        root: None,
        env: Vec::new(),
        held_back: Vec::new(),
        cluster_tls: std::env::var("CHORUS_TEST_CLUSTER_TLS").is_ok_and(|v| v == "1"),
        client_tls: std::env::var("CHORUS_TEST_CLIENT_TLS").is_ok_and(|v| v == "1"),
    }
}

/// The chorus binary under test.
pub fn chorus_bin() -> &'static str {
    env!("CARGO_BIN_EXE_chorus")
}

impl TestCluster {
    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[&id]
    }

    pub fn url(&self, id: u64) -> String {
        self.node(id).url()
    }

    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The command line that starts node `id` (bootstrapping with the cluster's peers).
    pub fn node_command(&self, id: u64) -> Command {
        let node = self.node(id);
        let mut cmd = Command::new(chorus_bin());
        cmd.arg("node")
            .args(["--config", self.config_path.to_str().unwrap()])
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--http", &node.http.to_string()])
            .args(["--raft", &node.raft.to_string()])
            .args(["--quic", &node.quic.to_string()])
            .args(["--shards", &self.shards.to_string()])
            .env("CHORUS_CLUSTER_SECRET", &node.cluster_secret)
            .env("CHORUS_JWT_SECRET", JWT_SECRET)
            // Tests publish and connect fast from one user and address; tests of the limits
            // set them back.
            .env("CHORUS_PUBLISH_PER_MINUTE", "0")
            .env("CHORUS_CONNECTS_PER_MINUTE_PER_IP", "0")
            .env("CHORUS_DEVICE_REQUESTS_PER_MINUTE", "0")
            .env("CHORUS_SUBSCRIBE_PER_MINUTE", "0")
            .env("CHORUS_TYPING_PER_MINUTE", "0")
            .env("CHORUS_COLLAB_OPS_PER_MINUTE", "0")
            .env("CHORUS_CONNECTS_PER_MINUTE", "0")
            .env("CHORUS_HTTP_REQUESTS_PER_MINUTE_PER_IP", "0")
            // CHORUS_TEST_LOG sets the nodes' log filter when a failure needs more detail.
            .env(
                "CHORUS_LOG",
                std::env::var("CHORUS_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .envs(node.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(self.certs.iter().filter(|_| self.cluster_tls).flat_map(|certs| {
                [
                    ("CHORUS_CLUSTER_TLS_CA", certs.join("ca.pem")),
                    ("CHORUS_CLUSTER_TLS_CERT", certs.join(format!("node-{id}.pem"))),
                    ("CHORUS_CLUSTER_TLS_KEY", certs.join(format!("node-{id}.key"))),
                ]
            }))
            // Clients get the node's certificate of the cluster CA, on QUIC and HTTPS alike.
            .envs(
                self.certs
                    .iter()
                    .filter(|_| node.client_ca.is_some())
                    .flat_map(|certs| {
                        [
                            ("CHORUS_HTTP_TLS", "true".into()),
                            (
                                "CHORUS_TLS_CERT",
                                certs.join(format!("node-{id}.pem")).into_os_string(),
                            ),
                            (
                                "CHORUS_TLS_KEY",
                                certs.join(format!("node-{id}.key")).into_os_string(),
                            ),
                        ]
                    }),
            )
            .stdin(Stdio::null());
        if node.extra_args.iter().any(|a| a == "--join") {
            cmd.args(&node.extra_args);
        } else {
            cmd.args(["--peers", &self.peers]).args(&node.extra_args);
        }
        // SAFETY: prctl only affects the child being created.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Starts node `id`, appending to its log.
    pub fn start_node(&mut self, id: u64) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.node(id).log)?;
        let child = self
            .node_command(id)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning chorus")?;
        self.nodes.get_mut(&id).unwrap().child = Some(child);
        Ok(())
    }

    /// Adds node `id` that joins through node `via`'s HTTP API (not started yet).
    pub fn add_joining_node(&mut self, id: u64, via: u64) {
        let root = self.node(via).data_dir.parent().unwrap().to_path_buf();
        let client_ca = self.node(via).client_ca.clone();
        let mut node = new_node(id, &root, self.dir.path(), client_ca);
        node.extra_args = vec!["--join".into(), self.node(via).raft.to_string()];
        self.nodes.insert(id, node);
    }

    /// Sends `signal` to node `id`.
    pub fn signal(&self, id: u64, signal: libc::c_int) {
        if let Some(pid) = self.node(id).pid() {
            // SAFETY: kill(2) on a child we spawned.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        self.signal(id, libc::SIGKILL);
        if let Some(mut child) = self.nodes.get_mut(&id).unwrap().child.take() {
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `id` and waits for it to exit.
    pub fn stop(&mut self, id: u64) -> Result<std::process::ExitStatus> {
        self.signal(id, libc::SIGTERM);
        let mut child = self
            .nodes
            .get_mut(&id)
            .unwrap()
            .child
            .take()
            .context("not running")?;
        Ok(child.wait()?)
    }

    /// Waits for node `id` to exit by itself (e.g. refusing to start) and returns its log.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Result<(std::process::ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        let child = self
            .nodes
            .get_mut(&id)
            .unwrap()
            .child
            .as_mut()
            .context("not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.nodes.get_mut(&id).unwrap().child = None;
                return Ok((status, self.log(id)));
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} still running after {timeout:?}; its log:\n{}",
                    tail(&self.log(id), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    pub async fn is_ready(&self, id: u64) -> bool {
        matches!(self.client.get(format!("{}/ready", self.url(id))).timeout(Duration::from_secs(2)).send().await,
            Ok(r) if r.status().is_success())
    }

    pub async fn wait_ready(&self, id: u64, timeout: Duration) -> Result<()> {
        wait_for(&format!("node {id} /ready"), timeout, || async {
            self.is_ready(id).await.then_some(())
        })
        .await
        .with_context(|| self.logs_of_all_nodes(40))
    }

    /// The last `lines` of every node's log, for a failure message: why a node is not
    /// ready is often told by its peers (a refused join, a snapshot that did not arrive).
    pub fn logs_of_all_nodes(&self, lines: usize) -> String {
        self.nodes
            .keys()
            .map(|id| format!("---- log of node {id} ----\n{}", tail(&self.log(*id), lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every running node is ready, all within `timeout`.
    pub async fn wait_all_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for id in self.running() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_ready(id, left.max(Duration::from_secs(1))).await?;
        }
        Ok(())
    }

    /// Ids of nodes whose process is running.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// `GET /api/v1/cluster` of node `id`.
    pub async fn status(&self, id: u64) -> Result<Value> {
        let r = self
            .client
            .get(format!("{}/api/v1/cluster", self.url(id)))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Ok(r.error_for_status()?.json().await?)
    }

    /// Publishes; `Ok(reply)` on success, `Err` with status and body otherwise.
    pub async fn publish(&self, id: u64, channel: &str, data: Value, key: Option<&str>) -> Result<Value> {
        let mut body = json!({"data": data, "type": "test"});
        if let Some(key) = key {
            body["idempotency_key"] = json!(key);
        }
        self.publish_raw(id, channel, &body.to_string(), &self.token)
            .await
    }

    /// Publishes a raw body with `token`.
    pub async fn publish_raw(&self, id: u64, channel: &str, body: &str, token: &str) -> Result<Value> {
        let r = self
            .client
            .post(format!("{}/api/v1/channels/{channel}/publish", self.url(id)))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = r.status();
        let value: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("HTTP {status}: {value}");
        }
        Ok(value)
    }

    /// An HTTP call to node `id` with the admin token: (status, JSON body).
    pub async fn call(&self, id: u64, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.url(id));
        let mut request = match method {
            "GET" => self.client.get(url),
            "PUT" => self.client.put(url),
            "POST" => self.client.post(url),
            other => bail!("unsupported method {other}"),
        }
        .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// Every retained message of `channel` as node `id` serves it.
    pub async fn history(&self, id: u64, channel: &str) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut since = 0;
        loop {
            let r = self
                .client
                .get(format!(
                    "{}/api/v1/channels/{channel}/history?since={since}&limit=1000",
                    self.url(id)
                ))
                .bearer_auth(&self.token)
                .send()
                .await?;
            let status = r.status();
            let page: Value = r.json().await?;
            if !status.is_success() {
                bail!("history from node {id}: HTTP {status}: {page}");
            }
            let messages = page["messages"].as_array().cloned().unwrap_or_default();
            if messages.is_empty() {
                return Ok(all);
            }
            since = messages.last().unwrap()["offset"].as_u64().unwrap();
            all.extend(messages);
        }
    }

    /// What a client trusts to reach node `id`: its generated QUIC certificate (written into
    /// its data directory at start), or with TLS for clients the CA that issued its certificate.
    pub fn cert_path(&self, id: u64) -> PathBuf {
        match &self.node(id).client_ca {
            Some(ca) => ca.clone(),
            None => self.node(id).data_dir.join("tls/cert.pem"),
        }
    }

    /// An SDK client builder for nodes `ids` (tried in that order) with `token`, trusting
    /// every node's certificate.
    pub fn sdk(&self, ids: &[u64], token: &str) -> chorus_client::ClientBuilder {
        let mut builder = chorus_client::Client::builder()
            .endpoints(ids.iter().map(|id| self.node(*id).quic.to_string()))
            .token(token);
        for id in self.nodes.keys() {
            if self.cert_path(*id).exists() {
                builder = builder.trust_certificate_pem_file(self.cert_path(*id));
            }
        }
        builder
    }

    /// The value of a metric line of node `id` (the first whose name and labels start with
    /// `prefix`), or 0 when absent.
    pub async fn metric(&self, id: u64, prefix: &str) -> Result<f64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.url(id)))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0))
    }

    /// The node leading `shard`, as node `asking` sees it.
    pub async fn leader_of(&self, asking: u64, shard: u64) -> Result<Option<u64>> {
        let status = self.status(asking).await?;
        Ok(status["shards"][shard as usize]["leader"].as_u64())
    }

    /// Runs the chorus CLI and returns (success, stdout+stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(chorus_bin());
        if let Some(ca) = self.nodes.values().find_map(|n| n.client_ca.as_ref()) {
            cmd.env("CHORUS_CA", ca);
        }
        let out = cmd
            .args(args)
            .env("CHORUS_JWT_SECRET", JWT_SECRET)
            .env_remove("CHORUS_TOKEN")
            .output()
            .expect("running chorus cli");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// The shard of `channel` (the documented FNV-1a placement).
pub fn shard_of(channel: &str, shards: u32) -> u64 {
    chorus_core::shard_for(channel, shards).0 as u64
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if let Some(dir) = std::env::var_os("CHORUS_TEST_KEEP_LOGS") {
            for node in self.nodes.values() {
                let to =
                    std::path::Path::new(&dir).join(format!("{}-node{}.log", std::process::id(), node.id));
                let _ = std::fs::copy(&node.log, to);
            }
        }
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if panicking {
                eprintln!(
                    "---- log of node {} ----\n{}",
                    node.id,
                    tail(&std::fs::read_to_string(&node.log).unwrap_or_default(), 60)
                );
            }
        }
    }
}
