//! The Rust SDK for Chorus: connect to any node over QUIC, subscribe, publish, read history,
//! and keep going when the node you are connected to dies.
//!
//! - [`Client`] is a cheap, cloneable handle over one task that owns the connection.
//! - It reconnects by itself (exponential backoff with jitter, trying the other endpoints),
//!   resubscribes and recovers every exact-channel subscription from the last position it
//!   handed to you: no gap, no duplicate.
//! - Publishes carry an idempotency key (one is made up when you give none) and are re-sent
//!   after a reconnect, so each is applied once.
//! - A token refresher, when given, is asked for a new token before the old one expires.
//!
//! ```no_run
//! use chorus_client::{Client, SubscribeOptions};
//! use futures::StreamExt;
//!
//! # async fn example() -> Result<(), chorus_client::Error> {
//! let client = Client::builder()
//!     .endpoints(["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"])
//!     .token("<a JWT from `chorus token`>")
//!     .trust_certificate_pem_file("data/node1/tls/cert.pem")
//!     .connect()
//!     .await?;
//! let mut events = client.subscribe("chat.room1", SubscribeOptions::default()).await?;
//! let ack = client.publish("chat.room1", r#"{"text":"hello"}"#).await?;
//! let event = events.next().await.expect("the event we published");
//! assert_eq!(event.offset, ack.position.offset);
//! # Ok(())
//! # }
//! ```
//!
//! Runnable programs are in `examples/` (the test suite runs them against a real cluster):
//! `cargo run -p chorus-client --example chat -- <endpoint>...` with `CHORUS_TOKEN` and
//! `CHORUS_FINGERPRINTS` (or `CHORUS_CA`) set.

mod driver;
mod error;
mod features;
mod tls;
mod types;

pub use driver::SubscribeInfo;
pub use error::Error;
pub use features::{
    DevicePresence, Notice, Notices, Presence, ReadPosition, SessionOp, SessionOpOutcome, SessionSnapshot,
    TYPING_REPEAT,
};
/// The QUIC library underneath, for [`ClientBuilder::quic_endpoint`].
pub use quinn;
pub use types::{Event, HistoryPage, Position, PublishAck, PublishOptions, SubscribeOptions};

use chorus_proto::client::{self as wire, client_frame, server_frame};
use driver::{Command, Driver, LocalSub, Shared};
use futures::Stream;
use futures::future::BoxFuture;
use quinn::rustls::pki_types::CertificateDer;
use quinn::rustls::pki_types::pem::PemObject;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The ALPN id of the client protocol.
pub const ALPN: &[u8] = b"chorus/1";
/// The protocol version this SDK speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// How long a connection may stay silent before the SDK gives its node up (see
/// [`ClientBuilder::idle_timeout`]).
///
/// QUIC restarts the idle clock at the first packet sent after the last one received, and a
/// keep-alive goes out a third of it after the last one sent: a node that dies is noticed
/// 3-4 s later, and a live one on a lossy network may lose two keep-alives in a row.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Asked for a fresh token before the current one expires, and before reconnecting.
pub type TokenRefresher = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Everything [`ClientBuilder`] collects.
#[derive(Clone)]
pub struct ClientOptions {
    endpoints: Vec<String>,
    token: String,
    trust: tls::Trust,
    reconnect_attempts: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
    request_timeout: Duration,
    subscription_buffer: usize,
    compression: bool,
    client_name: String,
    token_refresher: Option<TokenRefresher>,
    quic_endpoint: Option<quinn::Endpoint>,
}

impl ClientOptions {
    /// Whether the QUIC endpoint is shared with other clients (so not closed with this one).
    pub(crate) fn shares_endpoint(&self) -> bool {
        self.quic_endpoint.is_some()
    }
}

/// Builds a [`Client`]. Defaults: 10 reconnect attempts, backoff 100 ms doubling to 5 s with
/// jitter, 3 s idle timeout (QUIC keep-alives every second), 30 s request timeout.
pub struct ClientBuilder {
    options: ClientOptions,
    problems: Vec<String>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            options: ClientOptions {
                endpoints: Vec::new(),
                token: String::new(),
                trust: tls::Trust::default(),
                reconnect_attempts: 10,
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(5),
                // A SIGKILLed or unplugged node says nothing: silence is the only sign.
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                request_timeout: Duration::from_secs(30),
                subscription_buffer: 1024,
                compression: true,
                client_name: format!("chorus-client-rust/{}", env!("CARGO_PKG_VERSION")),
                token_refresher: None,
                quic_endpoint: None,
            },
            problems: Vec::new(),
        }
    }
}

impl ClientBuilder {
    /// The nodes' QUIC addresses (`host:port`), tried in turn.
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options
            .endpoints
            .extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// The JWT to connect with.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.options.token = token.into();
        self
    }

    /// Trusts nodes whose certificate has this SHA-256 fingerprint (hex, colons allowed).
    pub fn trust_fingerprint(mut self, fingerprint: &str) -> Self {
        match tls::parse_fingerprint(fingerprint) {
            Ok(f) => self.options.trust.fingerprints.push(f),
            Err(e) => self.problems.push(e.to_string()),
        }
        self
    }

    /// Trusts the certificates (CA or self-signed) in a PEM file.
    pub fn trust_certificate_pem_file(mut self, path: impl AsRef<std::path::Path>) -> Self {
        let path = path.as_ref();
        match CertificateDer::pem_file_iter(path).and_then(|certs| certs.collect::<Result<Vec<_>, _>>()) {
            Ok(certs) if !certs.is_empty() => self.options.trust.roots.extend(certs),
            Ok(_) => self
                .problems
                .push(format!("{}: no certificate in it", path.display())),
            Err(e) => self.problems.push(format!("{}: {e}", path.display())),
        }
        self
    }

    /// How many connection attempts in a row before giving up (default 10).
    pub fn reconnect_attempts(mut self, attempts: u32) -> Self {
        self.options.reconnect_attempts = attempts;
        self
    }

    /// The first retry delay and the cap of the doubling delays.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.options.backoff_initial = initial;
        self.options.backoff_max = max;
        self
    }

    /// A connection silent for this long is considered dead, and the client reconnects to
    /// another endpoint (QUIC keep-alives every third of it keep a live one from falling
    /// silent). The QUIC idle timeout is the smaller of the two sides' values, so this also
    /// bounds how long the node keeps a vanished client's connection. Raise it for large
    /// fleets of idle clients on one node: each sends 3 keep-alive packets per idle timeout.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.options.idle_timeout = timeout;
        self
    }

    /// How long a call waits for its reply.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.options.request_timeout = timeout;
        self
    }

    /// Events buffered per subscription before the SDK stops reading (default 1024).
    pub fn subscription_buffer(mut self, events: usize) -> Self {
        self.options.subscription_buffer = events.max(1);
        self
    }

    /// Whether to accept deflated event data (default on).
    pub fn compression(mut self, on: bool) -> Self {
        self.options.compression = on;
        self
    }

    /// Open the connection on this QUIC endpoint (one UDP socket) instead of a new one of its
    /// own, so that many clients in one process share a socket: load generators, gateways
    /// holding a connection per user. The endpoint must be a client endpoint
    /// (`quinn::Endpoint::client`).
    pub fn quic_endpoint(mut self, endpoint: quinn::Endpoint) -> Self {
        self.options.quic_endpoint = Some(endpoint);
        self
    }

    /// A name for the nodes' logs.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.options.client_name = name.into();
        self
    }

    /// Called for a fresh token before the current one expires and before reconnecting.
    pub fn token_refresher<F, Fut>(mut self, refresher: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
    {
        self.options.token_refresher = Some(Arc::new(move || Box::pin(refresher())));
        self
    }

    /// The QUIC client configuration of this builder's clients (TLS trust, ALPN, idle timeout
    /// and keep-alives), for tools that speak the protocol themselves, such as the load
    /// generator's idle connections.
    pub fn quic_client_config(&self) -> Result<quinn::ClientConfig, Error> {
        if let Some(problem) = self.problems.first() {
            return Err(Error::Config(problem.clone()));
        }
        quic_config(&self.options)
    }

    /// Connects to the first endpoint that answers. Fails when the options are unusable or
    /// no node answered within the reconnect attempts.
    pub async fn connect(self) -> Result<Client, Error> {
        let options = self.options;
        if let Some(problem) = self.problems.into_iter().next() {
            return Err(Error::Config(problem));
        }
        if options.endpoints.is_empty() {
            return Err(Error::Config("no endpoint given".into()));
        }
        let quic = quic_config(&options)?;
        let ipv6 = options.endpoints[0].starts_with('[');
        let bind = if ipv6 { "[::]:0" } else { "0.0.0.0:0" };
        let endpoint = match &options.quic_endpoint {
            Some(shared) => shared.clone(),
            None => quinn::Endpoint::client(bind.parse().expect("a literal address"))
                .map_err(|e| Error::Config(format!("cannot open a UDP socket: {e}")))?,
        };
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let options = Arc::new(options);
        Driver::new(options.clone(), shared.clone(), receiver, endpoint, quic)
            .connect()
            .await?;
        Ok(Client {
            inner: Arc::new(ClientInner {
                commands,
                shared,
                options,
                next_local: AtomicU64::new(1),
                typing_sent: Default::default(),
            }),
        })
    }
}

struct ClientInner {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    options: Arc<ClientOptions>,
    next_local: AtomicU64,
    /// When "typing started" was last sent per channel (throttling).
    typing_sent: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// A connection to a Chorus cluster. Clone it freely: clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

fn random_key() -> String {
    format!("sdk-{:032x}", rand::random::<u128>())
}

fn quic_config(options: &ClientOptions) -> Result<quinn::ClientConfig, Error> {
    let crypto = tls::client_crypto(&options.trust)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(options.idle_timeout.try_into().ok())
        .keep_alive_interval(Some(options.idle_timeout / 3));
    quic.transport_config(Arc::new(transport));
    Ok(quic)
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The node connected to now (`None` while reconnecting or closed).
    pub fn node_id(&self) -> Option<u64> {
        Some(self.inner.shared.node.load(Ordering::Relaxed)).filter(|n| *n != 0)
    }

    async fn request(&self, kind: client_frame::Kind) -> Result<server_frame::Kind, Error> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Request { kind, reply })
            .map_err(|_| Error::Closed("the client is closed".into()))?;
        let timeout = self.inner.options.request_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Err(_)) => Err(Error::Closed("the client is closed".into())),
            Ok(Ok(result)) => result,
        }
    }

    /// Publishes JSON text to a channel; answers once a quorum has it on disk.
    pub async fn publish(&self, channel: &str, data: impl Into<String>) -> Result<PublishAck, Error> {
        self.publish_with(channel, data, PublishOptions::default()).await
    }

    /// [`Client::publish`] with an event type or your own idempotency key.
    pub async fn publish_with(
        &self,
        channel: &str,
        data: impl Into<String>,
        options: PublishOptions,
    ) -> Result<PublishAck, Error> {
        let kind = client_frame::Kind::Publish(wire::Publish {
            channel: channel.to_string(),
            data: data.into(),
            event_type: options.event_type.unwrap_or_default(),
            idempotency_key: options.idempotency_key.unwrap_or_else(random_key),
        });
        match self.request(kind).await? {
            server_frame::Kind::PublishOk(ok) => Ok(PublishAck {
                channel: ok.channel,
                position: Position {
                    epoch: ok.epoch,
                    offset: ok.offset,
                },
                duplicate: ok.duplicate,
            }),
            other => Err(Error::Protocol(format!("unexpected reply to publish: {other:?}"))),
        }
    }

    /// Reads up to `limit` (1 to 1000) events after offset `since`, linearizably.
    pub async fn history(&self, channel: &str, since: u64, limit: u32) -> Result<HistoryPage, Error> {
        self.history_with_token(channel, since, limit, "").await
    }

    /// [`Client::history`] of a channel read with a subscription token (a private channel).
    pub async fn history_with_token(
        &self,
        channel: &str,
        since: u64,
        limit: u32,
        subscription_token: &str,
    ) -> Result<HistoryPage, Error> {
        let kind = client_frame::Kind::History(wire::HistoryRequest {
            channel: channel.to_string(),
            since,
            limit,
            token: subscription_token.to_string(),
        });
        match self.request(kind).await? {
            server_frame::Kind::History(page) => Ok(HistoryPage {
                epoch: page.epoch,
                last_offset: page.last_offset,
                first_retained: page.first_retained,
                events: page
                    .events
                    .into_iter()
                    .map(Event::from_wire)
                    .collect::<Result<_, _>>()
                    .map_err(Error::Protocol)?,
            }),
            other => Err(Error::Protocol(format!("unexpected reply to history: {other:?}"))),
        }
    }

    /// Subscribes to an exact channel (`chat.room1`) or a pattern (`chat.*`, `orders.>`).
    /// The subscription survives reconnects; exact channels resume from the last event seen.
    pub async fn subscribe(&self, channel: &str, options: SubscribeOptions) -> Result<Subscription, Error> {
        let local = self.inner.next_local.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(self.inner.options.subscription_buffer);
        let incomplete = Arc::new(AtomicU64::new(0));
        let exact = !channel.split('.').any(|t| t == "*" || t == ">");
        self.inner.shared.subs.lock().expect("subs lock").by_local.insert(
            local,
            LocalSub {
                channel: channel.to_string(),
                exact,
                event_types: options.event_types,
                token: options.subscription_token.unwrap_or_default(),
                last: options.since,
                sender,
                incomplete: incomplete.clone(),
                newest_wire: 0,
                last_delivery: None,
            },
        );
        let (reply, answer) = oneshot::channel();
        // Built before sending, so that an error below unsubscribes (Drop).
        let mut subscription = Subscription {
            local,
            client: self.clone(),
            receiver,
            info: SubscribeInfo {
                position: None,
                recovered: true,
            },
            incomplete,
        };
        self.inner
            .commands
            .send(Command::Subscribe { local, reply })
            .map_err(|_| Error::Closed("the client is closed".into()))?;
        let timeout = self.inner.options.request_timeout;
        let info = match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Err(_)) => Err(Error::Closed("the client is closed".into())),
            Ok(Ok(result)) => result,
        }?;
        subscription.info = info;
        Ok(subscription)
    }

    /// Closes the connection; subscriptions end and later calls fail with [`Error::Closed`].
    pub fn close(&self) {
        let _ = self.inner.commands.send(Command::Close);
    }
}

/// A stream of a subscription's events, in offset order per channel. Dropping it unsubscribes.
pub struct Subscription {
    local: u64,
    client: Client,
    receiver: mpsc::Receiver<Event>,
    info: SubscribeInfo,
    incomplete: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event; `None` when the subscription ended (client closed, access revoked).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }

    /// What the node answered when subscribing.
    pub fn info(&self) -> SubscribeInfo {
        self.info
    }

    /// How many recoveries (after reconnects or resyncs) could not be complete because the
    /// channel's epoch changed or retention dropped events. Pattern subscriptions cannot
    /// recover: for them this counts every time events may have been missed (a resync from
    /// the node, or events dropped while the application's buffer was full).
    pub fn incomplete_recoveries(&self) -> u64 {
        self.incomplete.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("local", &self.local)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.options.endpoints)
            .field("node", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self
            .client
            .inner
            .commands
            .send(Command::Unsubscribe { local: self.local });
    }
}
