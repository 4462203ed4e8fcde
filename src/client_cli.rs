//! `chorus client`: subscribe, publish and read history over QUIC through the Rust SDK.

use anyhow::{Context, Result, bail};
use chorus_client::{Client, Event, Position, PublishOptions, SubscribeOptions};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// How to reach and trust the cluster.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// A node's QUIC address (repeatable; the others are tried when one fails).
    #[arg(long = "node", default_value = "127.0.0.1:7201")]
    pub nodes: Vec<String>,
    /// The client token (JWT).
    #[arg(long, env = "CHORUS_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Trust this PEM certificate (repeatable). Default: data/*/tls/cert.pem of `make run`.
    #[arg(long = "ca")]
    pub cas: Vec<PathBuf>,
    /// Trust a certificate with this SHA-256 fingerprint (repeatable; as the node logs it).
    #[arg(long = "fingerprint")]
    pub fingerprints: Vec<String>,
}

/// `chorus client ...`
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Print one JSON line per event of a channel or pattern, until interrupted.
    Subscribe {
        /// An exact channel (`chat.room1`) or a pattern (`chat.*`, `chat.>`).
        target: String,
        /// Exact channels: first deliver the events after this offset.
        #[arg(long)]
        since: Option<u64>,
        /// With --since: the epoch the offset belongs to (0: any).
        #[arg(long, default_value_t = 0)]
        epoch: u64,
        /// Only events of this type (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Publish one event (JSON) and print the acknowledgement.
    Publish {
        /// The channel.
        channel: String,
        /// The event's data, JSON text.
        data: String,
        /// Event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Idempotency key (one is generated when absent).
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print a channel's history, one JSON line per event.
    History {
        /// The channel.
        channel: String,
        /// Events after this offset.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Most events (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        connection: Connection,
    },
}

async fn connect(connection: &Connection) -> Result<Client> {
    let builder = Client::builder()
        .endpoints(connection.nodes.clone())
        .token(connection.token.clone());
    let mut cas = connection.cas.clone();
    if cas.is_empty() && connection.fingerprints.is_empty() {
        cas = dev_certificates();
        if cas.is_empty() {
            bail!(
                "trust nothing: give --ca <cert.pem> or --fingerprint <sha256> (the node logs both at start)"
            );
        }
    }
    trusting(builder, &cas, &connection.fingerprints)
        .connect()
        .await
        .with_context(|| format!("connecting to {:?}", connection.nodes))
}

/// Adds trusted certificate files and fingerprints to an SDK builder.
pub fn trusting(
    mut builder: chorus_client::ClientBuilder,
    cas: &[PathBuf],
    fingerprints: &[String],
) -> chorus_client::ClientBuilder {
    for ca in cas {
        builder = builder.trust_certificate_pem_file(ca);
    }
    for fingerprint in fingerprints {
        builder = builder.trust_fingerprint(fingerprint);
    }
    builder
}

/// The certificates `make run` generates (`data/node<n>/tls/cert.pem`).
fn dev_certificates() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("data") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path().join("tls/cert.pem"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
}

fn event_json(event: &Event) -> serde_json::Value {
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "channel": event.channel,
        "epoch": event.epoch,
        "offset": event.offset,
        "type": event.event_type,
        "data": data,
        "publisher": event.publisher,
        "time_ms": event.time_ms,
    })
}

/// Runs a `chorus client` command.
pub async fn run(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Subscribe {
            target,
            since,
            epoch,
            types,
            count,
            connection,
        } => {
            let client = connect(&connection).await?;
            let options = SubscribeOptions {
                since: since.map(|offset| Position { epoch, offset }),
                event_types: types,
            };
            let mut subscription = client.subscribe(&target, options).await?;
            let mut seen = 0;
            while count.is_none_or(|c| seen < c) {
                let Some(event) = subscription.next_event().await else {
                    bail!("the subscription ended (connection lost for good, or access revoked)");
                };
                println!("{}", event_json(&event));
                seen += 1;
            }
            client.close();
            Ok(())
        }
        ClientCommand::Publish {
            channel,
            data,
            event_type,
            idempotency_key,
            connection,
        } => {
            serde_json::from_str::<serde_json::Value>(&data).context("the data argument must be JSON")?;
            let client = connect(&connection).await?;
            let ack = client
                .publish_with(
                    &channel,
                    data,
                    PublishOptions {
                        event_type,
                        idempotency_key,
                    },
                )
                .await?;
            println!(
                "{}",
                serde_json::json!({
                    "channel": ack.channel,
                    "epoch": ack.position.epoch,
                    "offset": ack.position.offset,
                    "duplicate": ack.duplicate,
                })
            );
            client.close();
            Ok(())
        }
        ClientCommand::History {
            channel,
            since,
            limit,
            connection,
        } => {
            let client = connect(&connection).await?;
            let page = client.history(&channel, since, limit).await?;
            for event in &page.events {
                println!("{}", event_json(event));
            }
            client.close();
            Ok(())
        }
    }
}
