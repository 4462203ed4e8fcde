//! `chorus client`: subscribe, publish, read history, typing, presence, sessions and read
//! receipts over QUIC through the Rust SDK. Every command prints JSON lines.

use anyhow::{Context, Result, bail};
use chorus_client::{
    Client, Event, Position, PublishOptions, ReadPosition, SessionOp, SessionOpOutcome, SessionSnapshot,
    SubscribeOptions,
};
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
    #[arg(long = "ca", env = "CHORUS_CA")]
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
        /// A subscription token for the channel (`chorus token --channel`): needed for a
        /// private channel.
        #[arg(long)]
        subscription_token: Option<String>,
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
    /// Say the token's user is typing in a channel (or stopped, with --stop).
    Typing {
        /// The channel.
        channel: String,
        /// Send "stopped" instead of "started".
        #[arg(long)]
        stop: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print who is typing in a channel.
    Typists {
        /// The channel.
        channel: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print who is subscribed to a channel with a roster.
    Roster {
        /// The channel.
        channel: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print a user's presence.
    Presence {
        /// The user.
        user: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Create a collaborative session on a channel.
    SessionCreate {
        /// The session's channel.
        session: String,
        /// Conflict policy: lww or reject.
        #[arg(long, default_value = "lww")]
        policy: String,
        /// The initial document, a JSON object.
        #[arg(long, default_value = "{}")]
        document: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print a session's document, version and position.
    SessionGet {
        /// The session's channel.
        session: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Apply one operation to a session: set, delete, increment or append.
    SessionOp {
        /// The session's channel.
        session: String,
        /// set, delete, increment, append.
        op: String,
        /// A JSON Pointer: /title, /items/0.
        path: String,
        /// The value, JSON text (not for delete).
        value: Option<String>,
        /// The session version the operation is based on.
        #[arg(long, default_value_t = 0)]
        base_version: u64,
        #[command(flatten)]
        connection: Connection,
    },
    /// Mark a channel read up to an offset.
    Read {
        /// The channel.
        channel: String,
        /// Read up to here.
        offset: u64,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print read positions and unread counts (of the channels named, or all marked read).
    Unread {
        /// Channels.
        channels: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

fn snapshot_json(s: &SessionSnapshot) -> serde_json::Value {
    serde_json::json!({
        "session": s.session,
        "policy": s.policy,
        "document": s.document,
        "version": s.version,
        "epoch": s.position.epoch,
        "offset": s.position.offset,
    })
}

fn read_json(p: &ReadPosition) -> serde_json::Value {
    serde_json::json!({
        "channel": p.channel,
        "read_offset": p.read_offset,
        "last_offset": p.last_offset,
        "unread": p.unread,
    })
}

fn json_arg(name: &str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("{name} must be JSON"))
}

/// Runs the commands of typing, presence, sessions and receipts (`None`: not one of them).
async fn run_feature(command: ClientCommand) -> Result<Option<ClientCommand>> {
    let (client, output) = match command {
        ClientCommand::Typing {
            channel,
            stop,
            connection,
        } => {
            let client = connect(&connection).await?;
            if stop {
                client.stop_typing(&channel).await?;
            } else {
                client.typing(&channel).await?;
            }
            (client, serde_json::json!({"channel": channel, "typing": !stop}))
        }
        ClientCommand::Typists { channel, connection } => {
            let client = connect(&connection).await?;
            let typists: Vec<_> = client
                .typists(&channel)
                .await?
                .into_iter()
                .map(|(user, device)| serde_json::json!({"user": user, "device": device}))
                .collect();
            (
                client,
                serde_json::json!({"channel": channel, "typists": typists}),
            )
        }
        ClientCommand::Roster { channel, connection } => {
            let client = connect(&connection).await?;
            let members: Vec<_> = client
                .roster(&channel)
                .await?
                .into_iter()
                .map(|(user, device)| serde_json::json!({"user": user, "device": device}))
                .collect();
            (
                client,
                serde_json::json!({"channel": channel, "members": members}),
            )
        }
        ClientCommand::Presence { user, connection } => {
            let client = connect(&connection).await?;
            let p = client.presence(&user).await?;
            let devices: Vec<_> = p
                .devices
                .iter()
                .map(|d| {
                    serde_json::json!({"device": d.device, "status": d.status,
                        "custom_status": d.custom_status, "last_seen_ms": d.last_seen_ms})
                })
                .collect();
            let output = serde_json::json!({"user": p.user, "status": p.status,
                "custom_status": p.custom_status, "last_seen_ms": p.last_seen_ms, "devices": devices});
            (client, output)
        }
        ClientCommand::SessionCreate {
            session,
            policy,
            document,
            connection,
        } => {
            let document = json_arg("--document", &document)?;
            let client = connect(&connection).await?;
            let snapshot = client.create_session(&session, &policy, &document).await?;
            (client, snapshot_json(&snapshot))
        }
        ClientCommand::SessionGet { session, connection } => {
            let client = connect(&connection).await?;
            let snapshot = client.session(&session).await?;
            (client, snapshot_json(&snapshot))
        }
        ClientCommand::SessionOp {
            session,
            op,
            path,
            value,
            base_version,
            connection,
        } => {
            let value = value.map(|v| json_arg("the value", &v)).transpose()?;
            let op = match (op.as_str(), value) {
                ("delete", _) => SessionOp::Delete(path),
                ("set", Some(v)) => SessionOp::Set(path, v),
                ("increment", Some(v)) => SessionOp::Increment(path, v),
                ("append", Some(v)) => SessionOp::Append(path, v),
                ("set" | "increment" | "append", None) => bail!("{op} needs a value"),
                (other, _) => bail!("op must be set, delete, increment or append, not {other:?}"),
            };
            let client = connect(&connection).await?;
            let output = match client.session_op(&session, op, base_version).await? {
                SessionOpOutcome::Applied {
                    version,
                    previous,
                    overwrote_newer,
                    position,
                } => serde_json::json!({"applied": true, "version": version, "previous": previous,
                    "overwrote_newer": overwrote_newer, "epoch": position.epoch, "offset": position.offset}),
                SessionOpOutcome::Conflict { version, current } => {
                    serde_json::json!({"applied": false, "conflict": true, "version": version, "current": current})
                }
            };
            (client, output)
        }
        ClientCommand::Read {
            channel,
            offset,
            connection,
        } => {
            let client = connect(&connection).await?;
            let position = client.mark_read(&channel, offset).await?;
            (client, read_json(&position))
        }
        ClientCommand::Unread { channels, connection } => {
            let client = connect(&connection).await?;
            let names: Vec<&str> = channels.iter().map(String::as_str).collect();
            let positions: Vec<_> = client.unread(&names).await?.iter().map(read_json).collect();
            (client, serde_json::json!({"channels": positions}))
        }
        other => return Ok(Some(other)),
    };
    println!("{output}");
    client.close();
    Ok(None)
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
    let Some(command) = run_feature(command).await? else {
        return Ok(());
    };
    match command {
        ClientCommand::Subscribe {
            target,
            since,
            epoch,
            types,
            count,
            subscription_token,
            connection,
        } => {
            let client = connect(&connection).await?;
            let options = SubscribeOptions {
                since: since.map(|offset| Position { epoch, offset }),
                event_types: types,
                subscription_token,
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
        _ => unreachable!("run_feature handles the other commands"),
    }
}
