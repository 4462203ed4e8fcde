//! Typed, validated node configuration.
//!
//! Values come from, in rising precedence: built-in defaults, a TOML file (`--config`),
//! `CHORUS_*` environment variables, and command-line flags. Everything is checked once at
//! start; an error names the field at fault. `cluster/chorus.example.toml` documents each key.

mod auth;
pub use auth::AuthConfig;

use anyhow::{Context, Result, bail};
use chorus_access::{OperationClass, Rate, RateSettings};
use chorus_core::{ChannelPattern, HistoryLimits};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `chorus node` (each also settable as `CHORUS_<NAME>` and in the TOML file).
#[derive(Debug, Clone, Default, Args)]
pub struct NodeArgs {
    /// TOML configuration file.
    #[arg(long, env = "CHORUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "CHORUS_ID")]
    pub id: Option<u64>,
    /// Where this node keeps its data.
    #[arg(long, env = "CHORUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address (API, /health, /ready, /metrics).
    #[arg(long, env = "CHORUS_HTTP")]
    pub http: Option<SocketAddr>,
    /// Node-to-node (Raft, gRPC) listen address; also how peers reach this node.
    #[arg(long, env = "CHORUS_RAFT")]
    pub raft: Option<SocketAddr>,
    /// QUIC listen address for clients.
    #[arg(long, env = "CHORUS_QUIC")]
    pub quic: Option<SocketAddr>,
    /// The initial voters: `1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103`.
    #[arg(long, env = "CHORUS_PEERS")]
    pub peers: Option<String>,
    /// Join a running cluster through a member's node-to-node (raft) address, ip:port,
    /// instead of bootstrapping.
    #[arg(long, env = "CHORUS_JOIN")]
    pub join: Option<String>,
    /// Shared secret that nodes of one cluster use to authenticate each other.
    #[arg(long, env = "CHORUS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// HS256 secret that signs client tokens.
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Number of shards; fixed when the cluster is created.
    #[arg(long, env = "CHORUS_SHARDS")]
    pub shards: Option<u32>,
    /// Largest event payload (the JSON `data`) in bytes.
    #[arg(long, env = "CHORUS_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// PEM certificate (chain) for the QUIC listener; without it one is generated.
    #[arg(long, env = "CHORUS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[arg(long, env = "CHORUS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// How often the node pings each client connection, ms.
    #[arg(long, env = "CHORUS_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// A client connection with nothing received for this long is closed, ms.
    #[arg(long, env = "CHORUS_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// A node's presence lease, ms: its devices go offline this long after it stops renewing.
    #[arg(long, env = "CHORUS_PRESENCE_LEASE_MS")]
    pub presence_lease_ms: Option<u64>,
    /// A typist stops by itself this long after their last "started", ms.
    #[arg(long, env = "CHORUS_TYPING_TTL_MS")]
    pub typing_ttl_ms: Option<u64>,
    /// Publishes a minute one user may make on this node (0: no limit).
    #[arg(long, env = "CHORUS_PUBLISH_PER_MINUTE")]
    pub publish_per_minute: Option<u32>,
    /// Client connects a minute one IP address may make (0: no limit).
    #[arg(long, env = "CHORUS_CONNECTS_PER_MINUTE_PER_IP")]
    pub connects_per_minute_per_ip: Option<u32>,
    /// Subscribes and history reads a minute one user may make on this node (0: no limit).
    #[arg(long, env = "CHORUS_SUBSCRIBE_PER_MINUTE")]
    pub subscribe_per_minute: Option<u32>,
    /// Typing indicators a minute one user may send on this node (0: no limit).
    #[arg(long, env = "CHORUS_TYPING_PER_MINUTE")]
    pub typing_per_minute: Option<u32>,
    /// Collaborative-session requests a minute one user may make on this node (0: no limit).
    #[arg(long, env = "CHORUS_COLLAB_OPS_PER_MINUTE")]
    pub collab_ops_per_minute: Option<u32>,
    /// Client connects a minute one user may make on this node (0: no limit).
    #[arg(long, env = "CHORUS_CONNECTS_PER_MINUTE")]
    pub connects_per_minute: Option<u32>,
    /// HTTP API requests a minute one IP address may make (0: no limit).
    #[arg(long, env = "CHORUS_HTTP_REQUESTS_PER_MINUTE_PER_IP")]
    pub http_requests_per_minute_per_ip: Option<u32>,
    /// The cluster CA certificate for mutual TLS between nodes (with the two below).
    #[arg(long, env = "CHORUS_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// This node's certificate, issued by the cluster CA (`chorus certs init`).
    #[arg(long, env = "CHORUS_CLUSTER_TLS_CERT")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// This node's certificate key.
    #[arg(long, env = "CHORUS_CLUSTER_TLS_KEY")]
    pub cluster_tls_key: Option<PathBuf>,
    /// Requests a minute one device may make on this node (0: no limit).
    #[arg(long, env = "CHORUS_DEVICE_REQUESTS_PER_MINUTE")]
    pub device_requests_per_minute: Option<u32>,
    /// Serve HTTP and WebSockets over TLS only, with the QUIC certificate (true/false).
    #[arg(long, env = "CHORUS_HTTP_TLS")]
    pub http_tls: Option<bool>,
    /// The audit log (JSON lines); default `<data_dir>/audit.log`, "" turns it off.
    #[arg(long, env = "CHORUS_AUDIT_FILE")]
    pub audit_file: Option<String>,
}

/// The `[presence]` table: presence leases and typing indicators.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// A node renews its lease every third of this; its devices go offline when it lapses, ms.
    pub lease_ms: u64,
    /// A typist stops by itself this long after their last "started", ms.
    pub typing_ttl_ms: u64,
    /// A peer node silent this long has its typists dropped, ms.
    pub typing_peer_silence_ms: u64,
    /// Channel patterns whose channels have a roster (who is subscribed, with join and leave
    /// notices). Give every node the same list.
    pub roster_channels: Vec<String>,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        let typing = chorus_cluster::TypingConfig::default();
        PresenceConfig {
            lease_ms: chorus_gateway::GatewayConfig::default()
                .presence_lease
                .as_millis() as u64,
            typing_ttl_ms: typing.ttl.as_millis() as u64,
            typing_peer_silence_ms: typing.peer_silence.as_millis() as u64,
            roster_channels: Vec::new(),
        }
    }
}

/// The `[clients]` table: client connections (QUIC and WebSocket).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsConfig {
    /// PEM certificate chain of the QUIC listener (with `tls_key`); generated when absent.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How often the node pings each connection, ms.
    pub heartbeat_interval_ms: u64,
    /// Close a connection with nothing received for this long, ms.
    pub idle_timeout_ms: u64,
    /// Keep a connection whose token expired open this long for a refresh, ms.
    pub token_grace_ms: u64,
    /// A new connection must send its connect frame within this, ms.
    pub connect_timeout_ms: u64,
    /// Largest frame accepted from a client, bytes (default: max_payload_bytes + 64 KiB).
    pub max_frame_bytes: Option<usize>,
    /// Bytes queued per connection for its high, normal and low classes together.
    pub outbox_max_bytes: usize,
    /// Bytes queued per connection for its critical class (replies, pings, resync).
    pub outbox_max_critical_bytes: usize,
    /// Publish and history requests one connection may have in flight.
    pub max_requests_in_flight: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Tokens whose `exp` is further away than this are refused, seconds (a stolen token
    /// must not work for years; `exp` = 2^64-1 used to be accepted).
    pub max_token_lifetime_s: u64,
    /// Publishes a minute one user may make on this node, sustained (0: no limit); a role
    /// may set its own (`roles.<name>.publish_per_minute`).
    pub publish_per_minute: u32,
    /// Publishes one user may make at once after a quiet spell.
    pub publish_burst: u32,
    /// Subscribes and history reads a minute one user may make on this node, sustained (0:
    /// no limit; `roles.<name>.subscribe_per_minute` per role). Each reads a page of the log.
    pub subscribe_per_minute: u32,
    /// Subscribes and history reads at once.
    pub subscribe_burst: u32,
    /// Typing indicators (and typing queries) a minute one user may send on this node (0: no
    /// limit; `roles.<name>.typing_per_minute` per role).
    pub typing_per_minute: u32,
    /// Typing indicators at once.
    pub typing_burst: u32,
    /// Collaborative-session requests (create, operation, read) a minute one user may make
    /// on this node (0: no limit; `roles.<name>.collab_ops_per_minute` per role).
    pub collab_ops_per_minute: u32,
    /// Collaborative-session requests at once.
    pub collab_ops_burst: u32,
    /// QUIC and WebSocket connects a minute one user may make on this node, counted after
    /// the token is checked (0: no limit; `roles.<name>.connects_per_minute` per role).
    pub connects_per_minute: u32,
    /// Connects one user may make at once.
    pub connect_burst: u32,
    /// HTTP API requests (`/api/...`) a minute one IP address may make, counted before the
    /// token is checked (0: no limit). Probes and scrapes (`/health`, `/ready`, `/metrics`)
    /// are not counted.
    pub http_requests_per_minute_per_ip: u32,
    /// HTTP API requests one IP address may make at once.
    pub http_request_burst_per_ip: u32,
    /// QUIC and WebSocket connects a minute one IP address may make, sustained (0: no
    /// limit). Each connect writes presence through Raft; a connect loop must not.
    pub connects_per_minute_per_ip: u32,
    /// Connects one IP address may make at once.
    pub connect_burst_per_ip: u32,
    /// HTTP (API and WebSocket upgrade): request headers must arrive within this, and an idle
    /// kept-alive connection is closed after as long, ms.
    pub http_header_timeout_ms: u64,
    /// HTTP: open connections one IP address may hold; more are closed at once.
    pub http_max_connections_per_ip: usize,
    /// Requests of any kind one device (user and `device` claim) may make a minute on this
    /// node, sustained (0: no limit).
    pub device_requests_per_minute: u32,
    /// Requests one device may make at once.
    pub device_request_burst: u32,
    /// HTTP: a request's body must arrive within this after its headers, ms (408 after).
    pub http_body_timeout_ms: u64,
    /// Serve the HTTP API and WebSockets over TLS only (https://, wss://), with the QUIC
    /// listener's certificate (`tls_cert`/`tls_key`, or the generated one).
    pub http_tls: bool,
}

impl ClientsConfig {
    /// Every rate of the node, for users whose roles set none.
    pub fn rate_settings(&self) -> RateSettings {
        let rate = |per_minute, burst| Rate { per_minute, burst };
        RateSettings {
            classes: BTreeMap::from([
                (
                    OperationClass::Publish,
                    rate(self.publish_per_minute, self.publish_burst),
                ),
                (
                    OperationClass::Subscribe,
                    rate(self.subscribe_per_minute, self.subscribe_burst),
                ),
                (
                    OperationClass::Typing,
                    rate(self.typing_per_minute, self.typing_burst),
                ),
                (
                    OperationClass::Collab,
                    rate(self.collab_ops_per_minute, self.collab_ops_burst),
                ),
                (
                    OperationClass::Connect,
                    rate(self.connects_per_minute, self.connect_burst),
                ),
            ]),
            device: rate(self.device_requests_per_minute, self.device_request_burst),
            connects_per_ip: rate(self.connects_per_minute_per_ip, self.connect_burst_per_ip),
            http_requests_per_ip: rate(
                self.http_requests_per_minute_per_ip,
                self.http_request_burst_per_ip,
            ),
        }
    }

    /// `role`'s own rates per class, with the node's bursts.
    pub fn role_rates(&self, role: &RoleConfig) -> BTreeMap<OperationClass, Rate> {
        let node = self.rate_settings().classes;
        [
            (OperationClass::Publish, role.publish_per_minute),
            (OperationClass::Subscribe, role.subscribe_per_minute),
            (OperationClass::Typing, role.typing_per_minute),
            (OperationClass::Collab, role.collab_ops_per_minute),
            (OperationClass::Connect, role.connects_per_minute),
        ]
        .into_iter()
        .filter_map(|(class, per_minute)| {
            Some((
                class,
                Rate {
                    per_minute: per_minute?,
                    burst: node[&class].burst,
                },
            ))
        })
        .collect()
    }
}

impl Default for ClientsConfig {
    fn default() -> Self {
        let d = chorus_gateway::GatewayConfig::default();
        let rates = RateSettings::default();
        ClientsConfig {
            tls_cert: None,
            tls_key: None,
            heartbeat_interval_ms: d.heartbeat_interval.as_millis() as u64,
            idle_timeout_ms: d.idle_timeout.as_millis() as u64,
            token_grace_ms: d.token_grace.as_millis() as u64,
            connect_timeout_ms: d.connect_timeout.as_millis() as u64,
            max_frame_bytes: None,
            outbox_max_bytes: d.outbox.max_bytes,
            outbox_max_critical_bytes: d.outbox.max_critical_bytes,
            max_requests_in_flight: d.max_requests_in_flight,
            max_subscriptions_per_connection: d.max_subscriptions_per_connection,
            max_token_lifetime_s: chorus_access::DEFAULT_MAX_TOKEN_LIFETIME.as_secs(),
            publish_per_minute: rates.classes[&OperationClass::Publish].per_minute,
            publish_burst: rates.classes[&OperationClass::Publish].burst,
            connects_per_minute_per_ip: rates.connects_per_ip.per_minute,
            connect_burst_per_ip: rates.connects_per_ip.burst,
            subscribe_per_minute: rates.classes[&OperationClass::Subscribe].per_minute,
            subscribe_burst: rates.classes[&OperationClass::Subscribe].burst,
            typing_per_minute: rates.classes[&OperationClass::Typing].per_minute,
            typing_burst: rates.classes[&OperationClass::Typing].burst,
            collab_ops_per_minute: rates.classes[&OperationClass::Collab].per_minute,
            collab_ops_burst: rates.classes[&OperationClass::Collab].burst,
            connects_per_minute: rates.classes[&OperationClass::Connect].per_minute,
            connect_burst: rates.classes[&OperationClass::Connect].burst,
            http_requests_per_minute_per_ip: rates.http_requests_per_ip.per_minute,
            http_request_burst_per_ip: rates.http_requests_per_ip.burst,
            http_header_timeout_ms: chorus_http::server::ServeLimits::default()
                .header_read_timeout
                .as_millis() as u64,
            http_max_connections_per_ip: chorus_http::server::ServeLimits::default().max_connections_per_ip,
            http_tls: false,
            http_body_timeout_ms: 30_000,
            device_requests_per_minute: rates.device.per_minute,
            device_request_burst: rates.device.burst,
        }
    }
}

/// The longest `[history] sweep_interval_secs`: a year.
const MAX_SWEEP_INTERVAL_SECS: u64 = 365 * 24 * 3600;

/// The `[history]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Most events kept per channel.
    pub max_entries: u64,
    /// Oldest event kept, in seconds.
    pub max_age_secs: u64,
    /// How long an idempotency key is remembered, in seconds.
    pub dedupe_window_secs: u64,
    /// Most bytes of event data one channel retains; its oldest events are dropped beyond
    /// (0: no quota).
    pub max_bytes_per_channel: u64,
    /// Most bytes of event data one user's publishes may hold in one shard's history; a
    /// publish beyond gets `quota_exceeded` (0: no quota).
    pub max_bytes_per_user: u64,
    /// How often each shard leader looks for events past `max_age_secs` and keys past the
    /// dedupe window in channels nobody writes to (a write applies retention to its own
    /// channel), in seconds; 0: never (a node of the previous release cannot read a sweep).
    pub sweep_interval_secs: u64,
}

/// The default history quotas: 64 MiB per channel (instead of 10,000 events of up to 64 KiB,
/// 640 MB), and 64 MiB per user in each shard.
pub const DEFAULT_QUOTAS: chorus_core::HistoryQuotas = chorus_core::HistoryQuotas {
    max_bytes_per_channel: 64 << 20,
    max_bytes_per_user: 64 << 20,
};

impl Default for HistoryConfig {
    fn default() -> Self {
        let limits = HistoryLimits::default();
        HistoryConfig {
            max_entries: limits.max_entries,
            max_age_secs: limits.max_age_ms / 1000,
            dedupe_window_secs: limits.dedupe_window_ms / 1000,
            max_bytes_per_channel: DEFAULT_QUOTAS.max_bytes_per_channel,
            max_bytes_per_user: DEFAULT_QUOTAS.max_bytes_per_user,
            sweep_interval_secs: 60,
        }
    }
}

/// The `[raft]` table: timing of every shard group.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTiming {
    /// Leader heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout, ms.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout, ms.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one (and once as many bytes
    /// were applied as that one had: `chorus_store::snapshot_pace`).
    pub snapshot_every_entries: u64,
    /// Log entries kept after a snapshot (for followers that are a little behind).
    pub logs_kept_after_snapshot: u64,
    /// Most client commands the shard leader puts in one Raft entry; 1 turns batching off.
    pub max_batch_commands: usize,
    /// Most Raft entries in flight (proposed, not yet committed) over all the shards a node
    /// leads: while they are, writes queue and the next entries take more of them.
    pub node_entries_in_flight: usize,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 60,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_every_entries: 5_000,
            logs_kept_after_snapshot: 1_000,
            max_batch_commands: chorus_cluster::proposer::DEFAULT_MAX_BATCH_COMMANDS,
            node_entries_in_flight: chorus_cluster::proposer::DEFAULT_NODE_ENTRIES_IN_FLIGHT,
        }
    }
}

/// The `[storage]` table: the Raft log engine.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// A log segment file is closed at this size and the next one started (purging deletes
    /// whole segments).
    pub segment_bytes: u64,
    /// Recent Raft entries kept decoded in memory, over all shards, in bytes of their log
    /// records: replication and apply read them without touching the disk.
    pub entry_cache_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let defaults = chorus_store::StoreOptions::default();
        StorageConfig {
            segment_bytes: defaults.segment_bytes,
            entry_cache_bytes: defaults.entry_cache_bytes,
        }
    }
}

impl StorageConfig {
    /// The store's options.
    pub fn options(&self) -> chorus_store::StoreOptions {
        chorus_store::StoreOptions {
            segment_bytes: self.segment_bytes,
            entry_cache_bytes: self.entry_cache_bytes,
        }
    }
}

/// What a role may do: channel patterns per operation.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    /// Channels this role may publish to.
    pub publish: Vec<String>,
    /// Channels this role may subscribe to and read the history of.
    pub subscribe: Vec<String>,
    /// Cluster administration (join, remove, status).
    pub admin: bool,
    /// This role's publish rate per user, instead of `clients.publish_per_minute` (0: no
    /// limit). A user with several roles gets the most generous; the same for the three below.
    pub publish_per_minute: Option<u32>,
    /// This role's rate of subscribes and history reads, instead of `clients.subscribe_per_minute`.
    pub subscribe_per_minute: Option<u32>,
    /// This role's rate of typing indicators, instead of `clients.typing_per_minute`.
    pub typing_per_minute: Option<u32>,
    /// This role's rate of collaborative-session requests, instead of
    /// `clients.collab_ops_per_minute`.
    pub collab_ops_per_minute: Option<u32>,
    /// This role's connect rate, instead of `clients.connects_per_minute`.
    pub connects_per_minute: Option<u32>,
}

/// The TOML file: every key optional; flags and env override it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    http: Option<SocketAddr>,
    raft: Option<SocketAddr>,
    quic: Option<SocketAddr>,
    peers: Option<BTreeMap<String, String>>,
    join: Option<String>,
    cluster_secret: Option<String>,
    jwt_secret: Option<String>,
    shards: Option<u32>,
    max_payload_bytes: Option<usize>,
    history: Option<HistoryConfig>,
    raft_timing: Option<RaftTiming>,
    storage: Option<StorageConfig>,
    roles: Option<BTreeMap<String, RoleConfig>>,
    auth: Option<AuthConfig>,
    cluster_tls: Option<ClusterTlsFile>,
    audit_file: Option<String>,
    clients: Option<ClientsConfig>,
    presence: Option<PresenceConfig>,
}

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node id.
    pub id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// gRPC listen address.
    pub raft: SocketAddr,
    /// QUIC listen address for clients.
    pub quic: SocketAddr,
    /// Initial voters by id (empty when joining).
    pub peers: BTreeMap<u64, String>,
    /// A member's node-to-node (raft) address to join through.
    pub join: Option<String>,
    /// Node-to-node secret.
    pub cluster_secret: String,
    /// Client token secret.
    pub jwt_secret: String,
    /// Shard count.
    pub shards: u32,
    /// Largest accepted event payload, bytes.
    pub max_payload_bytes: usize,
    /// History retention.
    pub history: HistoryConfig,
    /// Raft timing.
    pub raft_timing: RaftTiming,
    /// The `[storage]` table.
    pub storage: StorageConfig,
    /// Role name to permissions.
    pub roles: BTreeMap<String, RoleConfig>,
    /// Token keys besides `jwt_secret`, issuer and audience.
    pub auth: AuthConfig,
    /// Mutual TLS between nodes (`None`: plain TCP).
    pub cluster_tls: Option<ClusterTls>,
    /// The audit log's file (`None`: off).
    pub audit_file: Option<PathBuf>,
    /// Client connections.
    pub clients: ClientsConfig,
    /// Presence leases and typing indicators.
    pub presence: PresenceConfig,
}

/// The `[cluster_tls]` table as written (all three or none).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClusterTlsFile {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// Mutual TLS between nodes: the cluster CA and this node's certificate and key.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterTls {
    /// The CA certificate every node trusts.
    pub ca_file: PathBuf,
    /// This node's certificate (issued by the CA).
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
}

/// The shipped roles: `admin` may do everything.
pub fn default_roles() -> BTreeMap<String, RoleConfig> {
    BTreeMap::from([(
        "admin".to_string(),
        RoleConfig {
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            admin: true,
            ..Default::default()
        },
    )])
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .with_context(|| format!("`peers`: {item:?} is not of the form <id>=<host:port>"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("`peers`: {id:?} is not a node id (a positive integer)"))?;
        peers.insert(id, addr.trim().to_string());
    }
    Ok(peers)
}

impl NodeConfig {
    /// Merges defaults, the file, the environment and the flags, then validates.
    pub fn load(args: &NodeArgs) -> Result<NodeConfig> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let peers = match (&args.peers, &file.peers) {
            (Some(text), _) => parse_peers(text)?,
            (None, Some(table)) => {
                let mut peers = BTreeMap::new();
                for (id, addr) in table {
                    let id: u64 = id.parse().with_context(|| {
                        format!("`peers`: key {id:?} is not a node id (a positive integer)")
                    })?;
                    peers.insert(id, addr.clone());
                }
                peers
            }
            (None, None) => BTreeMap::new(),
        };
        let audit_file = args.audit_file.clone().or(file.audit_file.clone());
        let mut config = NodeConfig {
            id: args
                .id
                .or(file.id)
                .context("`id` is required (--id or CHORUS_ID)")?,
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .context("`data_dir` is required (--data-dir or CHORUS_DATA_DIR)")?,
            http: args.http.or(file.http).unwrap_or(([127, 0, 0, 1], 7001).into()),
            raft: args.raft.or(file.raft).unwrap_or(([127, 0, 0, 1], 7101).into()),
            quic: args.quic.or(file.quic).unwrap_or(([127, 0, 0, 1], 7201).into()),
            peers,
            join: args.join.clone().or(file.join),
            cluster_secret: args
                .cluster_secret
                .clone()
                .or(file.cluster_secret)
                .context("`cluster_secret` is required (--cluster-secret or CHORUS_CLUSTER_SECRET)")?,
            jwt_secret: args
                .jwt_secret
                .clone()
                .or(file.jwt_secret)
                .context("`jwt_secret` is required (--jwt-secret or CHORUS_JWT_SECRET)")?,
            shards: args.shards.or(file.shards).unwrap_or(12),
            max_payload_bytes: args
                .max_payload_bytes
                .or(file.max_payload_bytes)
                .unwrap_or(64 * 1024),
            history: file.history.unwrap_or_default(),
            raft_timing: file.raft_timing.unwrap_or_default(),
            storage: file.storage.unwrap_or_default(),
            roles: file.roles.unwrap_or_else(default_roles),
            auth: file.auth.unwrap_or_default(),
            audit_file: None,
            cluster_tls: {
                let file = file.cluster_tls.unwrap_or_default();
                let ca = args.cluster_tls_ca.clone().or(file.ca_file);
                let cert = args.cluster_tls_cert.clone().or(file.cert_file);
                let key = args.cluster_tls_key.clone().or(file.key_file);
                match (ca, cert, key) {
                    (None, None, None) => None,
                    (Some(ca_file), Some(cert_file), Some(key_file)) => Some(ClusterTls {
                        ca_file,
                        cert_file,
                        key_file,
                    }),
                    _ => bail!(
                        "`cluster_tls`: give `ca_file`, `cert_file` and `key_file` together (or none for plain TCP between nodes)"
                    ),
                }
            },
            clients: {
                let mut clients = file.clients.unwrap_or_default();
                clients.tls_cert = args.tls_cert.clone().or(clients.tls_cert);
                clients.tls_key = args.tls_key.clone().or(clients.tls_key);
                clients.heartbeat_interval_ms = args
                    .heartbeat_interval_ms
                    .unwrap_or(clients.heartbeat_interval_ms);
                clients.idle_timeout_ms = args.idle_timeout_ms.unwrap_or(clients.idle_timeout_ms);
                clients.publish_per_minute = args.publish_per_minute.unwrap_or(clients.publish_per_minute);
                clients.http_tls = args.http_tls.unwrap_or(clients.http_tls);
                clients.device_requests_per_minute = args
                    .device_requests_per_minute
                    .unwrap_or(clients.device_requests_per_minute);
                clients.connects_per_minute_per_ip = args
                    .connects_per_minute_per_ip
                    .unwrap_or(clients.connects_per_minute_per_ip);
                clients.subscribe_per_minute =
                    args.subscribe_per_minute.unwrap_or(clients.subscribe_per_minute);
                clients.typing_per_minute = args.typing_per_minute.unwrap_or(clients.typing_per_minute);
                clients.collab_ops_per_minute = args
                    .collab_ops_per_minute
                    .unwrap_or(clients.collab_ops_per_minute);
                clients.connects_per_minute = args.connects_per_minute.unwrap_or(clients.connects_per_minute);
                clients.http_requests_per_minute_per_ip = args
                    .http_requests_per_minute_per_ip
                    .unwrap_or(clients.http_requests_per_minute_per_ip);
                clients
            },
            presence: {
                let mut presence = file.presence.unwrap_or_default();
                presence.lease_ms = args.presence_lease_ms.unwrap_or(presence.lease_ms);
                presence.typing_ttl_ms = args.typing_ttl_ms.unwrap_or(presence.typing_ttl_ms);
                presence
            },
        };
        // Absent: in the data directory; empty: off.
        config.audit_file = match audit_file.as_deref() {
            None => Some(config.data_dir.join("audit.log")),
            Some("") => None,
            Some(path) => Some(PathBuf::from(path)),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the one at fault.
    pub fn validate(&self) -> Result<()> {
        if self.id == 0 {
            bail!("`id` must be a positive integer, got 0");
        }
        if self.shards == 0 || self.shards > 1024 {
            bail!("`shards` must be between 1 and 1024, got {}", self.shards);
        }
        if self.cluster_secret.len() < 8 {
            bail!("`cluster_secret` must be at least 8 characters long");
        }
        if self.jwt_secret.len() < 16 {
            bail!("`jwt_secret` must be at least 16 characters long (it signs HS256 tokens)");
        }
        if self.clients.http_header_timeout_ms == 0
            || self.clients.http_max_connections_per_ip == 0
            || self.clients.http_body_timeout_ms == 0
        {
            bail!(
                "`clients.http_header_timeout_ms`, `clients.http_body_timeout_ms` and `clients.http_max_connections_per_ip` must be positive"
            );
        }
        if self.clients.device_request_burst == 0 {
            bail!("`clients.device_request_burst` must be positive (requests allowed at once)");
        }
        if self.clients.connect_burst_per_ip == 0 {
            bail!("`clients.connect_burst_per_ip` must be positive (connects allowed at once)");
        }
        if self.clients.publish_burst == 0 {
            bail!("`clients.publish_burst` must be positive (publishes allowed at once)");
        }
        if self.clients.max_token_lifetime_s == 0 {
            bail!("`clients.max_token_lifetime_s` must be positive (seconds a token may still be valid for)");
        }
        match (&self.join, self.peers.is_empty()) {
            (Some(_), false) => bail!(
                "`join` and `peers` exclude each other: a node either bootstraps with peers or joins a running cluster"
            ),
            (None, true) => bail!(
                "`peers` is required unless `join` is given, e.g. --peers 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"
            ),
            _ => {}
        }
        for (id, addr) in &self.peers {
            if *id == 0 {
                bail!("`peers`: node ids must be positive, got 0");
            }
            if addr.parse::<SocketAddr>().is_err() {
                bail!("`peers`: node {id}'s address {addr:?} is not an ip:port address");
            }
        }
        if !self.peers.is_empty() {
            match self.peers.get(&self.id) {
                None => bail!(
                    "`peers` does not list this node's id {}; it lists {:?}",
                    self.id,
                    self.peers.keys().collect::<Vec<_>>()
                ),
                Some(addr) if addr.parse::<SocketAddr>().ok() != Some(self.raft) => bail!(
                    "`peers` gives node {} the address {addr}, but `raft` is {}",
                    self.id,
                    self.raft
                ),
                Some(_) => {}
            }
        }
        if let Some(member) = &self.join
            && member.parse::<SocketAddr>().is_err()
        {
            bail!(
                "`join` must be a member's node-to-node (raft) address, ip:port such as 127.0.0.1:7101, got {member:?}{}",
                if member.starts_with("http") {
                    " (joining through the HTTP API needs an admin token since node credentials no longer give admin over HTTP: give the member's raft address instead)"
                } else {
                    ""
                }
            );
        }
        if self.max_payload_bytes == 0 {
            bail!("`max_payload_bytes` must be positive");
        }
        if self.history.sweep_interval_secs > MAX_SWEEP_INTERVAL_SECS {
            bail!(
                "`history.sweep_interval_secs` must be at most {MAX_SWEEP_INTERVAL_SECS} (a year; 0 turns sweeps off), got {}",
                self.history.sweep_interval_secs
            );
        }
        if self.history.max_entries == 0 {
            bail!("`history.max_entries` must be positive");
        }
        let t = &self.raft_timing;
        if t.heartbeat_ms == 0 || t.election_timeout_min_ms <= t.heartbeat_ms {
            bail!("`raft_timing.election_timeout_min_ms` must exceed `raft_timing.heartbeat_ms` (> 0)");
        }
        if t.max_batch_commands == 0 {
            bail!("`raft_timing.max_batch_commands` must be at least 1 (1 turns batching off)");
        }
        if t.node_entries_in_flight == 0 || t.node_entries_in_flight > 4096 {
            bail!("`raft_timing.node_entries_in_flight` must be 1 to 4096");
        }
        if self.storage.segment_bytes < 64 * 1024 {
            bail!("`storage.segment_bytes` must be at least 65536");
        }
        if t.snapshot_every_entries == 0 {
            bail!("`raft_timing.snapshot_every_entries` must be positive");
        }
        if t.election_timeout_max_ms <= t.election_timeout_min_ms {
            bail!("`raft_timing.election_timeout_max_ms` must exceed `raft_timing.election_timeout_min_ms`");
        }
        if let Some(tls) = &self.cluster_tls {
            chorus_cluster::tls::PeerTls::load(
                &tls.ca_file,
                &tls.cert_file,
                &tls.key_file,
                &self.cluster_secret,
            )
            .context("`cluster_tls`")?;
        }
        // Read now so that a missing file or a bad key stops the start with its name.
        let keys = self.auth.verification_keys()?;
        chorus_access::Authenticator::new(&self.jwt_secret, Default::default())
            .with_keys(keys)
            .context("`auth`")?;
        self.auth.private_channel_patterns()?;
        for (name, role) in &self.roles {
            for (field, patterns) in [("publish", &role.publish), ("subscribe", &role.subscribe)] {
                for pattern in patterns {
                    ChannelPattern::for_roles(pattern.clone())
                        .with_context(|| format!("`roles.{name}.{field}`"))?;
                }
            }
        }
        let c = &self.clients;
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            bail!("`clients.tls_cert` and `clients.tls_key` go together: give both or neither");
        }
        if c.heartbeat_interval_ms == 0 {
            bail!("`clients.heartbeat_interval_ms` must be positive");
        }
        if c.idle_timeout_ms <= c.heartbeat_interval_ms {
            bail!(
                "`clients.idle_timeout_ms` ({}) must exceed `clients.heartbeat_interval_ms` ({}): clients answer pings",
                c.idle_timeout_ms,
                c.heartbeat_interval_ms
            );
        }
        if c.idle_timeout_ms <= c.connect_timeout_ms {
            // A client that opened no stream yet would be dropped by the idle timeout without
            // the `protocol_error` the connect timeout gives it.
            bail!(
                "`clients.idle_timeout_ms` ({}) must exceed `clients.connect_timeout_ms` ({}): a new connection is idle until it sends its connect frame",
                c.idle_timeout_ms,
                c.connect_timeout_ms
            );
        }
        if c.connect_timeout_ms == 0
            || c.max_requests_in_flight == 0
            || c.max_subscriptions_per_connection == 0
        {
            bail!(
                "`clients.connect_timeout_ms`, `clients.max_requests_in_flight` and `clients.max_subscriptions_per_connection` must be positive"
            );
        }
        let frame = self.max_frame_bytes();
        if frame <= self.max_payload_bytes || frame > u32::MAX as usize {
            bail!(
                "`clients.max_frame_bytes` ({frame}) must exceed `max_payload_bytes` ({}) and fit in 32 bits",
                self.max_payload_bytes
            );
        }
        if c.outbox_max_bytes < 2 * frame || c.outbox_max_critical_bytes < frame {
            bail!(
                "`clients.outbox_max_bytes` must be at least twice, and `clients.outbox_max_critical_bytes` at least once, the largest frame ({frame} bytes)"
            );
        }
        let p = &self.presence;
        if p.lease_ms < 300 || p.typing_ttl_ms == 0 {
            bail!("`presence.lease_ms` must be at least 300 and `presence.typing_ttl_ms` positive");
        }
        for pattern in &p.roster_channels {
            ChannelPattern::new(pattern.clone())
                .with_context(|| format!("`presence.roster_channels`: {pattern:?}"))?;
        }
        if p.typing_peer_silence_ms < 2000 {
            bail!(
                "`presence.typing_peer_silence_ms` must be at least 2000: nodes with typists announce themselves every second"
            );
        }
        let addrs = [("http", self.http), ("raft", self.raft), ("quic", self.quic)];
        for (i, (a, x)) in addrs.iter().enumerate() {
            for (b, y) in &addrs[i + 1..] {
                if x == y && *a != "quic" && *b != "quic" {
                    bail!("`{a}` and `{b}` are both {x}");
                }
            }
        }
        Ok(())
    }

    /// The largest client frame accepted.
    pub fn max_frame_bytes(&self) -> usize {
        self.clients
            .max_frame_bytes
            .unwrap_or(self.max_payload_bytes + 64 * 1024)
    }

    /// The gateway settings.
    pub fn gateway(&self) -> chorus_gateway::GatewayConfig {
        let c = &self.clients;
        chorus_gateway::GatewayConfig {
            max_frame_bytes: self.max_frame_bytes(),
            max_payload_bytes: self.max_payload_bytes,
            heartbeat_interval: Duration::from_millis(c.heartbeat_interval_ms),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            token_grace: Duration::from_millis(c.token_grace_ms),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            outbox: chorus_gateway::outbox::OutboxLimits {
                max_bytes: c.outbox_max_bytes,
                max_critical_bytes: c.outbox_max_critical_bytes,
            },
            max_requests_in_flight: c.max_requests_in_flight,
            max_subscriptions_per_connection: c.max_subscriptions_per_connection,
            presence_lease: Duration::from_millis(self.presence.lease_ms),
            roster_channels: self
                .presence
                .roster_channels
                .iter()
                .filter_map(|p| ChannelPattern::new(p.clone()).ok())
                .collect(),
        }
    }

    /// The typing indicator timers.
    pub fn typing(&self) -> chorus_cluster::TypingConfig {
        chorus_cluster::TypingConfig {
            ttl: Duration::from_millis(self.presence.typing_ttl_ms),
            peer_silence: Duration::from_millis(self.presence.typing_peer_silence_ms),
        }
    }

    /// The replicated history limits these settings ask for.
    pub fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            max_entries: self.history.max_entries,
            max_age_ms: self.history.max_age_secs.saturating_mul(1000),
            dedupe_window_ms: self.history.dedupe_window_secs.saturating_mul(1000),
        }
    }

    /// The replicated history quotas.
    pub fn history_quotas(&self) -> chorus_core::HistoryQuotas {
        chorus_core::HistoryQuotas {
            max_bytes_per_channel: self.history.max_bytes_per_channel,
            max_bytes_per_user: self.history.max_bytes_per_user,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_with_secrets() -> NodeArgs {
        NodeArgs {
            cluster_secret: Some("cluster-secret".into()),
            jwt_secret: Some("jwt-secret-0123456789".into()),
            ..Default::default()
        }
    }

    /// The secrets and the config file `cluster/<file>` of this repository.
    fn args_with_file(file: &str) -> NodeArgs {
        NodeArgs {
            config: Some(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("cluster")
                    .join(file),
            ),
            ..args_with_secrets()
        }
    }

    #[test]
    fn the_example_config_file_is_valid() {
        let args = args_with_file("chorus.example.toml");
        let config = NodeConfig::load(&args).expect("example config loads");
        assert_eq!(config.peers.len(), 3);
        assert!(config.roles.contains_key("member"));
        for n in 1..=3 {
            let args = args_with_file(&format!("node{n}.toml"));
            assert_eq!(NodeConfig::load(&args).expect("local cluster config loads").id, n);
        }
    }

    #[test]
    fn flags_override_the_file_and_errors_name_the_field() {
        let mut args = args_with_file("node2.toml");
        args.shards = Some(6);
        let config = NodeConfig::load(&args).unwrap();
        assert_eq!((config.id, config.shards), (2, 6));
        args.raft = Some("127.0.0.1:9999".parse().unwrap());
        let err = NodeConfig::load(&args).unwrap_err().to_string();
        assert!(err.contains("`peers` gives node 2 the address"), "{err}");
        assert!(
            parse_peers("1=a:1,x=b")
                .unwrap_err()
                .to_string()
                .contains("`peers`")
        );
        assert_eq!(parse_peers("1=127.0.0.1:1, 2=127.0.0.1:2").unwrap().len(), 2);
    }

    /// Found by a third-party client: with the idle timeout below the connect timeout, a
    /// client that opened no stream was dropped silently, never told why.
    #[test]
    fn an_idle_timeout_within_the_connect_timeout_is_refused() {
        let mut config = NodeConfig::load(&args_with_file("node1.toml")).unwrap();
        config.clients.heartbeat_interval_ms = 300;
        config.clients.idle_timeout_ms = 1_500;
        config.clients.connect_timeout_ms = 2_000;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("`clients.idle_timeout_ms` (1500) must exceed `clients.connect_timeout_ms` (2000)"),
            "{err}"
        );
        config.clients.connect_timeout_ms = 1_000;
        config.validate().unwrap();
    }
}
