//! The gateway's Prometheus metrics.

use crate::outbox::OutboxMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A transport label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `quic` or `websocket`.
    pub transport: &'static str,
}

/// A reason label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// Counters and gauges of client connections. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct GatewayMetrics {
    /// Open client connections.
    pub connections: Family<TransportLabel, Gauge>,
    /// Connections closed, by the code they were closed with.
    pub disconnects: Family<ReasonLabel, Counter>,
    /// Active subscriptions on this node.
    pub subscriptions: Gauge,
    /// Events queued for delivery to subscribers.
    pub events_delivered: Counter,
    /// Notices (typing, read receipts) queued for subscribers.
    pub notices_delivered: Counter,
    /// Presence writes (connect, status, disconnect, lease renewal) that failed.
    pub presence_write_failures: Counter,
    /// Subscriptions stopped and told to resync, by reason.
    pub resyncs: Family<ReasonLabel, Counter>,
    /// Outbound queues of all connections.
    pub outbox: OutboxMetrics,
}

impl GatewayMetrics {
    /// Registers every metric under `chorus_gateway_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("chorus_gateway");
        r.register("connections", "Open client connections", self.connections.clone());
        r.register(
            "disconnects",
            "Client connections closed, by code",
            self.disconnects.clone(),
        );
        r.register(
            "subscriptions",
            "Active subscriptions on this node",
            self.subscriptions.clone(),
        );
        r.register(
            "events_delivered",
            "Events queued for delivery to subscribers",
            self.events_delivered.clone(),
        );
        r.register(
            "notices_delivered",
            "Notices (typing, read receipts) queued for subscribers",
            self.notices_delivered.clone(),
        );
        r.register(
            "presence_write_failures",
            "Presence writes (connect, status, disconnect, lease renewal) that failed",
            self.presence_write_failures.clone(),
        );
        r.register(
            "resyncs",
            "Subscriptions stopped and told to resync, by reason",
            self.resyncs.clone(),
        );
        r.register(
            "outbox_bytes",
            "Bytes queued for clients on every connection",
            self.outbox.queued_bytes.clone(),
        );
        r.register(
            "outbox_dropped_frames",
            "Frames dropped or refused because a client's queue was full",
            self.outbox.dropped_frames.clone(),
        );
    }
}
