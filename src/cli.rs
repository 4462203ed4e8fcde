//! Command-line interface.

use crate::config::{NodeArgs, NodeConfig};
use anyhow::{Context, Result, bail};
use chorus_cluster::ClusterStatus;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Chorus: a clustered real-time communication server.
#[derive(Debug, Parser)]
#[command(name = "chorus", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a cluster node.
    Node(Box<NodeArgs>),
    /// Run a local 3-node cluster (data under ./data) until Ctrl-C.
    Dev(DevArgs),
    /// Mint a client token (HS256 JWT).
    Token(TokenArgs),
    /// Administer a running cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Certificates for mutual TLS between nodes.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Talk to the cluster as a client over QUIC (subscribe, publish, history).
    #[command(subcommand)]
    Client(crate::client_cli::ClientCommand),
    /// Load benchmarks against a running cluster.
    #[command(subcommand)]
    Bench(chorus_bench::Scenario),
}

/// Flags of `chorus dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the three nodes keep their data.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// First HTTP port; node n listens on base+n-1, raft on base+100+n-1, QUIC on base+200+n-1.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Cluster secret (dev default when unset).
    #[arg(long, env = "CHORUS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// JWT secret (dev default when unset).
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The user (token subject).
    #[arg(long)]
    sub: String,
    /// A role (repeatable).
    #[arg(long = "role", required_unless_present = "channel")]
    roles: Vec<String>,
    /// Lifetime, e.g. 30s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Optional device id claim.
    #[arg(long)]
    device: Option<String>,
    /// Mint a subscription token instead: it lets `--sub` read this one channel (a private
    /// channel, or one beyond the user's roles), and opens no connection.
    #[arg(long, conflicts_with = "roles")]
    channel: Option<String>,
    /// The HS256 secret.
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a cluster CA and a certificate per node in a new directory: `ca.pem` (give it
    /// to every node), `ca.key` (keep it offline), `node-<id>.pem` and `node-<id>.key`.
    Init {
        /// Directory to write to; files already there are never overwritten.
        #[arg(long, default_value = "certs")]
        dir: std::path::PathBuf,
        /// Node ids, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        nodes: Vec<u64>,
        /// Names and addresses the node certificates also carry (peers check the CA, not
        /// the name).
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Print nodes, shards, leaders, terms, commit and applied indexes.
    Status {
        /// A member's HTTP URL.
        #[arg(long, default_value = "http://127.0.0.1:7001")]
        node: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        auth: AdminAuth,
    },
    /// Remove a node from every shard.
    Remove {
        /// A member's HTTP URL.
        #[arg(long, default_value = "http://127.0.0.1:7001")]
        node: String,
        /// The node id to remove.
        id: u64,
        #[command(flatten)]
        auth: AdminAuth,
    },
}

#[derive(Debug, clap::Args)]
struct AdminAuth {
    /// An admin token; or set CHORUS_JWT_SECRET and one is minted.
    #[arg(long, env = "CHORUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The JWT secret, to mint an admin token.
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// For an `https://` node: trust this PEM certificate (its CA, or the node's own).
    #[arg(long = "ca", env = "CHORUS_CA")]
    ca: Option<PathBuf>,
}

impl AdminAuth {
    fn bearer(&self) -> Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let secret = self
            .jwt_secret
            .as_deref()
            .context("give --token (or CHORUS_TOKEN), or CHORUS_JWT_SECRET to mint an admin token")?;
        mint(
            secret,
            "chorus-cli",
            &["admin".to_string()],
            Duration::from_secs(300),
            None,
        )
    }
}

/// Parses `30s`, `15m`, `1h`, `7d` (or plain seconds).
pub fn parse_ttl(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number
        .parse()
        .with_context(|| format!("--ttl {text:?}: expected e.g. 30s, 15m, 1h, 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        other => bail!("--ttl {text:?}: unknown unit {other:?} (use s, m, h or d)"),
    };
    if secs == 0 {
        bail!("--ttl must be positive");
    }
    Ok(Duration::from_secs(secs))
}

/// Mints an HS256 token.
pub fn mint(
    secret: &str,
    sub: &str,
    roles: &[String],
    ttl: Duration,
    device: Option<String>,
) -> Result<String> {
    mint_claims(secret, sub, ttl, |claims| {
        claims.roles = roles.to_vec();
        claims.device = device;
    })
}

/// Mints a subscription token: `sub` may read `channel` (HS256 with `secret`).
fn mint_subscription_token(secret: &str, sub: &str, channel: &str, ttl: Duration) -> Result<String> {
    chorus_core::ChannelName::new(channel.to_string()).with_context(|| format!("--channel {channel:?}"))?;
    mint_claims(secret, sub, ttl, |claims| {
        claims.channel = Some(channel.to_string())
    })
}

/// Mints a token for `sub` issued now and valid for `ttl`, with what `fill` adds.
fn mint_claims(
    secret: &str,
    sub: &str,
    ttl: Duration,
    fill: impl FnOnce(&mut chorus_access::Claims),
) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut claims = chorus_access::Claims {
        sub: sub.to_string(),
        exp: now + ttl.as_secs(),
        roles: Vec::new(),
        device: None,
        iat: Some(now),
        jti: None,
        channel: None,
    };
    fill(&mut claims);
    Ok(chorus_access::mint_token(secret, &claims)?)
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Node(args) => {
            let config = NodeConfig::load(&args)?;
            crate::node::run(config).await
        }
        Command::Dev(args) => crate::dev::run(args).await,
        Command::Bench(scenario) => chorus_bench::run(scenario).await,
        Command::Client(command) => crate::client_cli::run(command).await,
        Command::Token(args) => {
            let ttl = parse_ttl(&args.ttl)?;
            let token = match args.channel {
                Some(channel) => mint_subscription_token(&args.jwt_secret, &args.sub, &channel, ttl)?,
                None => mint(&args.jwt_secret, &args.sub, &args.roles, ttl, args.device)?,
            };
            println!("{token}");
            Ok(())
        }
        Command::Certs(CertsCommand::Init { dir, nodes, hosts }) => {
            let written = chorus_cluster::tls::generate(&dir, &nodes, &hosts)?;
            println!(
                "cluster CA: {} (key {}: keep it offline)",
                written.ca_cert.display(),
                written.ca_key.display()
            );
            for (id, cert, key) in &written.nodes {
                println!(
                    "node {id}: --cluster-tls-ca {} --cluster-tls-cert {} --cluster-tls-key {}",
                    written.ca_cert.display(),
                    cert.display(),
                    key.display()
                );
            }
            Ok(())
        }
        Command::Cluster(ClusterCommand::Status { node, json, auth }) => {
            let status: ClusterStatus = admin_request(&node, "GET", "/api/v1/cluster", None, &auth).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Cluster(ClusterCommand::Remove { node, id, auth }) => {
            let body = serde_json::json!({ "id": id });
            let _: serde_json::Value =
                admin_request(&node, "POST", "/api/v1/cluster/remove", Some(body), &auth).await?;
            println!("node {id} removed from every shard");
            Ok(())
        }
    }
}

async fn admin_request<T: serde::de::DeserializeOwned>(
    node: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    auth: &AdminAuth,
) -> Result<T> {
    let url = format!("{}{}", node.trim_end_matches('/'), path);
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &auth.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        client = client.add_root_certificate(
            reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{}: not a PEM certificate", ca.display()))?,
        );
    }
    let client = client.build()?;
    let mut request = match method {
        "POST" => client.post(&url),
        _ => client.get(&url),
    }
    .bearer_auth(auth.bearer()?)
    .timeout(Duration::from_secs(120));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{method} {url}: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {url}: unexpected reply {text}"))
}

fn print_status(status: &ClusterStatus) {
    println!(
        "node {} ({})  cluster {}  shards {}",
        status.node_id,
        status.http_addr,
        status.cluster_id.as_deref().unwrap_or("(not yet recorded)"),
        status.shard_count
    );
    println!("\nNODES\n{:<6} {:<24} LEADS", "ID", "RAFT ADDR");
    for node in &status.nodes {
        println!("{:<6} {:<24} {}", node.id, node.raft_addr, node.leads);
    }
    println!(
        "\nSHARDS\n{:<6} {:<7} {:<6} {:<10} {:<10} {:<10} {:<10} VOTERS",
        "SHARD", "LEADER", "TERM", "LAST LOG", "COMMIT", "APPLIED", "SNAPSHOT"
    );
    for s in &status.shards {
        println!(
            "{:<6} {:<7} {:<6} {:<10} {:<10} {:<10} {:<10} {:?}{}{}",
            s.shard,
            s.leader.map_or("-".to_string(), |l| l.to_string()),
            s.term,
            s.last_log_index,
            s.commit_index,
            s.applied_index,
            s.snapshot_index,
            s.voters,
            if s.learners.is_empty() {
                String::new()
            } else {
                format!(" learners {:?}", s.learners)
            },
            if s.recovering {
                "  (this replica is recovering its log from its peers)"
            } else {
                ""
            }
        );
    }
}
