//! The client edge of a Chorus node: QUIC and WebSocket connections, authentication,
//! subscriptions, fan-out and outbound priority queues.
//!
//! ```text
//!   QUIC (quic.rs) ─┐                           ┌─ publish / history ─> ClusterNode
//!                   ├─ frames ─> session.rs ────┤
//!   WebSocket (ws.rs)┘      (one task per conn) └─ subscribe ─> Hub (hub.rs, one task)
//!                                                                   │ applied-event feed
//!   writer task(s) per connection <── Outbox (outbox.rs) <──────────┘
//! ```
//!
//! The transports only move bytes: `frame.rs` decodes them, `session.rs` runs the protocol
//! (docs/protocol.md) the same way for both, the hub delivers what this node applies.

mod features;
pub mod frame;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod quic;
mod session;
pub mod tls;
pub mod ws;

use chorus_access::Authenticator;
use chorus_cluster::ClusterNode;
use hub::Hub;
pub use metrics::GatewayMetrics;
use outbox::OutboxLimits;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The ALPN protocol id of the client protocol over QUIC.
pub const ALPN: &[u8] = b"chorus/1";
/// The protocol version this node speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// How client connections behave. Validated by the binary's config.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest frame accepted from a client, bytes.
    pub max_frame_bytes: usize,
    /// Largest event payload, bytes (as the HTTP API).
    pub max_payload_bytes: usize,
    /// How often the node pings each client.
    pub heartbeat_interval: Duration,
    /// A connection with nothing received for this long is closed.
    pub idle_timeout: Duration,
    /// How long a connection may stay open after its token expired without a refresh.
    pub token_grace: Duration,
    /// How long a new connection has to send its `Connect` frame.
    pub connect_timeout: Duration,
    /// Caps of each connection's outbound queues.
    pub outbox: OutboxLimits,
    /// Publish and history requests a connection may have in flight.
    pub max_requests_in_flight: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// This node's presence lease: renewed every third of it; its devices go offline on
    /// every node when it lapses.
    pub presence_lease: Duration,
    /// Channels with a roster (who is subscribed, with join and leave notices).
    pub roster_channels: Vec<chorus_core::ChannelPattern>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_frame_bytes: 128 * 1024,
            max_payload_bytes: 64 * 1024,
            heartbeat_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            token_grace: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            outbox: OutboxLimits {
                max_bytes: 8 * 1024 * 1024,
                max_critical_bytes: 2 * 1024 * 1024,
            },
            max_requests_in_flight: 1024,
            max_subscriptions_per_connection: 1024,
            presence_lease: Duration::from_secs(10),
            roster_channels: Vec::new(),
        }
    }
}

struct GatewayInner {
    cluster: ClusterNode,
    auth: Authenticator,
    /// Bumped whenever revocations may have changed: every connection checks its token again.
    revocations: tokio::sync::watch::Sender<u64>,
    hub: Hub,
    presence: presence::PresenceKeeper,
    config: GatewayConfig,
    metrics: GatewayMetrics,
    next_conn: AtomicU64,
}

/// The gateway of one node. Cloning is cheap and shares it.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

impl Gateway {
    /// Starts the hub on the node's applied-event feed.
    pub fn new(
        cluster: ClusterNode,
        auth: Authenticator,
        config: GatewayConfig,
        metrics: GatewayMetrics,
    ) -> Self {
        let readers = (0..cluster.shard_count())
            .map(|s| {
                cluster
                    .local_reader(chorus_core::ShardId(s))
                    .expect("every shard below shard_count exists")
            })
            .collect();
        let presence =
            presence::PresenceKeeper::start(cluster.clone(), config.presence_lease, metrics.clone());
        let hub = Hub::start(
            cluster.store().feed(),
            cluster.typing().changes(),
            readers,
            metrics.clone(),
            config.max_subscriptions_per_connection,
            presence::HubRosters::new(presence.clone(), config.roster_channels.clone()),
            auth.private_channels().to_vec(),
        );
        let revocations = tokio::sync::watch::Sender::new(0);
        tokio::spawn(watch_revocations(
            cluster.store().feed().subscribe(),
            revocations.clone(),
        ));
        Gateway {
            inner: Arc::new(GatewayInner {
                revocations,
                presence,
                cluster,
                auth,
                hub,
                config,
                metrics,
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// Whether `channel` has a roster (`[presence] roster_channels`).
    pub(crate) fn has_roster(&self, channel: &chorus_core::ChannelName) -> bool {
        self.inner
            .config
            .roster_channels
            .iter()
            .any(|p| p.matches(channel.as_str()))
    }

    /// Changes whenever connections must check their tokens against the revocations again.
    pub(crate) fn revocation_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.revocations.subscribe()
    }

    fn next_conn_id(&self) -> u64 {
        self.inner.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Tells connections to check their tokens again after a revocation was applied, after
/// shard 0 was replaced by a snapshot (revocations may be in it), and after the feed lagged
/// (one may have been missed). Ends with the feed.
async fn watch_revocations(
    mut feed: tokio::sync::broadcast::Receiver<Arc<chorus_store::FeedItem>>,
    changes: tokio::sync::watch::Sender<u64>,
) {
    use chorus_store::FeedItem;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let changed = match feed.recv().await {
            Ok(item) => matches!(
                &*item,
                FeedItem::Revoked(_) | FeedItem::SnapshotInstalled(chorus_core::ShardId(0))
            ),
            Err(RecvError::Lagged(_)) => true,
            Err(RecvError::Closed) => return,
        };
        if changed {
            changes.send_modify(|generation| *generation += 1);
        }
    }
}
