//! The task that owns the QUIC connection: connects, reconnects with backoff, restores
//! subscriptions from their last positions, retries requests, refreshes the token.
//!
//! ```text
//!  Client handles ──Command──> driver task ──frames──> control stream (node)
//!                                   ^  <──replies, pings, resync── control stream
//!  Subscription streams <── reader tasks <──events── push streams (node)
//! ```
//!
//! Events go from the stream readers straight into their subscription's bounded channel, so
//! an application that reads slowly slows only its event streams (the node then tells it to
//! resync), never the replies or the heartbeats.

use crate::types::{Event, Position};
use crate::{ClientOptions, Error};
use bytes::BytesMut;
use chorus_proto::client::{self as wire, ClientFrame, ServerFrame, client_frame, server_frame};
use chorus_proto::codec::{FrameReader, put_length_delimited};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How often stalled subscriptions are checked for room.
const STALL_CHECK: Duration = Duration::from_millis(50);

/// Largest frame the SDK reads.
const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// What a subscribe reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeInfo {
    /// The channel's position on the node when subscribed (exact channels).
    pub position: Option<Position>,
    /// False when events after `since` were lost to retention or an epoch change.
    pub recovered: bool,
}

pub(crate) enum Command {
    Request {
        kind: client_frame::Kind,
        reply: oneshot::Sender<Result<server_frame::Kind, Error>>,
    },
    Subscribe {
        local: u64,
        reply: oneshot::Sender<Result<SubscribeInfo, Error>>,
    },
    Unsubscribe {
        local: u64,
    },
    Close,
}

pub(crate) struct LocalSub {
    pub(crate) channel: String,
    pub(crate) exact: bool,
    pub(crate) event_types: Vec<String>,
    /// The subscription token, sent with every subscribe (empty: none).
    pub(crate) token: String,
    /// The last position handed to the application's channel (exact channels).
    pub(crate) last: Option<Position>,
    pub(crate) sender: mpsc::Sender<Event>,
    /// Recoveries that could not be complete (epoch change or retention); for patterns,
    /// every time events may have been missed (a resync, or a full application channel).
    pub(crate) incomplete: Arc<AtomicU64>,
    /// The newest wire id an event arrived on: older ids carry nothing more after it.
    pub(crate) newest_wire: u64,
    /// When an event was last handed to the application's channel.
    pub(crate) last_delivery: Option<std::time::Instant>,
}

#[derive(Default)]
pub(crate) struct Subs {
    pub(crate) by_local: HashMap<u64, LocalSub>,
    wire_to_local: HashMap<u64, u64>,
    /// Subscriptions whose application channel was full: their events are dropped (their
    /// position not advanced) until the driver resubscribes them from it, once there is room.
    stalled: HashSet<u64>,
    /// Subscriptions the node stopped because their queue was full: resubscribed once the
    /// events it had queued stop arriving (resubscribing at once would find the queue full
    /// again and be stopped again).
    draining: HashSet<u64>,
}

impl Subs {
    /// Forgets every wire id of `local` (except `keep`), returning them.
    fn drop_wire_ids(&mut self, local: u64, keep: &[u64]) -> Vec<u64> {
        let ids: Vec<u64> = self
            .wire_to_local
            .iter()
            .filter(|(w, l)| **l == local && !keep.contains(w))
            .map(|(w, _)| *w)
            .collect();
        for w in &ids {
            self.wire_to_local.remove(w);
        }
        ids
    }
}

/// State shared by the driver, the stream readers and the handles.
pub(crate) struct Shared {
    pub(crate) subs: Mutex<Subs>,
    /// The node currently connected to (0: none).
    pub(crate) node: AtomicU64,
    /// Notices of every subscription, for [`crate::Client::notices`].
    pub(crate) notices: tokio::sync::broadcast::Sender<crate::Notice>,
    /// The status the application set last, set again on every new connection.
    pub(crate) presence: Mutex<Option<wire::SetPresence>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            subs: Mutex::default(),
            node: AtomicU64::new(0),
            notices: tokio::sync::broadcast::channel(1024).0,
            presence: Mutex::default(),
        }
    }
}

enum Pending {
    Request {
        kind: client_frame::Kind,
        reply: oneshot::Sender<Result<server_frame::Kind, Error>>,
    },
    Subscribe {
        local: u64,
    },
    Ignore,
}

/// Most commands handled (and so frames queued) before the driver writes them out.
const MAX_COMMANDS_PER_WRITE: usize = 256;
/// Most bytes queued before the driver writes them out.
const MAX_BYTES_PER_WRITE: usize = 256 * 1024;

/// Whether the driver goes on after a batch of commands.
enum Flow {
    Continue,
    Close,
}

struct Live {
    connection: quinn::Connection,
    send: Outgoing,
    frames: mpsc::Receiver<ServerFrame>,
    /// When to ask the refresher for a new token.
    refresh_at: Instant,
}

/// When to refresh a token expiring at `expires_at`: 30 s before, or halfway when it has
/// less than a minute left.
fn refresh_deadline(expires_at: u64) -> Instant {
    let left = expires_at.saturating_sub(now_secs());
    let margin = (left / 2).min(30);
    Instant::now() + Duration::from_secs(left - margin)
}

pub(crate) struct Driver {
    pub(crate) options: Arc<ClientOptions>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) quic: quinn::ClientConfig,
    pub(crate) token: String,
    pub(crate) next_endpoint: usize,
    next_id: u64,
    next_wire: u64,
    pending: HashMap<u64, Pending>,
    /// Requests to send again on the next connection (publishes carry idempotency keys).
    retry: Vec<(
        client_frame::Kind,
        oneshot::Sender<Result<server_frame::Kind, Error>>,
    )>,
    waiting_subscribe: HashMap<u64, oneshot::Sender<Result<SubscribeInfo, Error>>>,
    /// The last subscribe reply per subscription (a subscribe command that arrives after
    /// `restore` already subscribed it is answered from here).
    established: HashMap<u64, SubscribeInfo>,
    /// Resubscribes the node refused for a rate, and when to send them again: a client with
    /// more subscriptions than the node's burst must not lose some at every reconnect.
    deferred: Vec<(Instant, u64)>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// The node answered the handshake with a refusal.
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    /// The connection or handshake failed.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for OpenError {
    fn from(reason: String) -> Self {
        OpenError::Failed(reason)
    }
}

impl From<&str> for OpenError {
    fn from(reason: &str) -> Self {
        OpenError::Failed(reason.to_string())
    }
}

fn backoff(options: &ClientOptions, attempt: u32) -> Duration {
    let exp = options.backoff_initial.saturating_mul(1u32 << attempt.min(16));
    let delay = exp.min(options.backoff_max);
    // Full jitter over the upper half: spreads reconnecting clients apart.
    delay / 2 + delay.mul_f64(rand::random::<f64>() / 2.0)
}

enum Outcome {
    Closed,
    Lost(String),
}

impl Driver {
    pub(crate) fn new(
        options: Arc<ClientOptions>,
        shared: Arc<Shared>,
        commands: mpsc::UnboundedReceiver<Command>,
        endpoint: quinn::Endpoint,
        quic: quinn::ClientConfig,
    ) -> Self {
        Driver {
            token: options.token.clone(),
            options,
            shared,
            commands,
            endpoint,
            quic,
            next_endpoint: 0,
            next_id: 1,
            next_wire: 1,
            pending: HashMap::new(),
            retry: Vec::new(),
            waiting_subscribe: HashMap::new(),
            established: HashMap::new(),
            deferred: Vec::new(),
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Connects (retrying with backoff over every endpoint), then serves until closed.
    /// Returns an error right away if the first connection cannot be made.
    pub(crate) async fn connect(mut self) -> Result<(), Error> {
        let live = self.connect_with_retries().await?;
        tokio::spawn(async move { self.run(live).await });
        Ok(())
    }

    async fn run(mut self, mut live: Live) {
        loop {
            match self.serve(&mut live).await {
                Outcome::Closed => break,
                Outcome::Lost(reason) => {
                    tracing::warn!(%reason, "connection lost; reconnecting");
                    self.shared.node.store(0, Ordering::Relaxed);
                    self.requeue();
                    match self.connect_with_retries().await {
                        Ok(next) => live = next,
                        Err(e) => {
                            tracing::error!(error = %e, "giving up");
                            self.fail_all(&e.to_string());
                            break;
                        }
                    }
                }
            }
        }
        self.shared.node.store(0, Ordering::Relaxed);
        if !self.options.shares_endpoint() {
            self.endpoint.close(0u32.into(), b"client closed");
        }
    }

    fn fail_all(&mut self, reason: &str) {
        let closed = || Error::Closed(reason.to_string());
        for (_, reply) in self.retry.drain(..) {
            let _ = reply.send(Err(closed()));
        }
        for (_, reply) in self.waiting_subscribe.drain() {
            let _ = reply.send(Err(closed()));
        }
        // Dropping the senders ends every subscription stream.
        self.shared.subs.lock().expect("subs lock").by_local.clear();
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Request { reply, .. } => drop(reply.send(Err(closed()))),
                Command::Subscribe { reply, .. } => drop(reply.send(Err(closed()))),
                _ => {}
            }
        }
    }

    /// Requests in flight on a lost connection: the ones safe to repeat (publishes carry an
    /// idempotency key; reads, typing, presence and read positions are idempotent) are sent
    /// again; session operations and creations are answered with [`Error::Indeterminate`].
    fn requeue(&mut self) {
        for (_, pending) in self.pending.drain() {
            if let Pending::Request { kind, reply } = pending {
                match kind {
                    client_frame::Kind::SessionOp(_) | client_frame::Kind::SessionCreate(_) => {
                        let _ = reply.send(Err(Error::Indeterminate(
                            "the connection was lost before the reply; read the session to see whether it was applied".into(),
                        )));
                    }
                    // Its caller gave up (timed out): do not send it again behind its back.
                    _ if reply.is_closed() => {}
                    kind => self.retry.push((kind, reply)),
                }
            }
        }
    }

    async fn connect_with_retries(&mut self) -> Result<Live, Error> {
        let attempts = self.options.reconnect_attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(&self.options, attempt - 1)).await;
            }
            if let Some(refresher) = &self.options.token_refresher
                && attempt > 0
            {
                match refresher().await {
                    Ok(token) => self.token = token,
                    Err(e) => tracing::warn!(error = %e, "token refresher failed"),
                }
            }
            let endpoint = self.options.endpoints[self.next_endpoint % self.options.endpoints.len()].clone();
            self.next_endpoint += 1;
            match tokio::time::timeout(self.options.connect_timeout, self.open(&endpoint)).await {
                Ok(Ok(live)) => return Ok(live),
                // The token itself was refused: another node or another try with the same
                // token gets the same answer, so say so at once (with a refresher, a new
                // token may pass).
                Ok(Err(OpenError::Refused { code, message }))
                    if self.options.token_refresher.is_none()
                        && matches!(code.as_str(), "unauthorized" | "forbidden") =>
                {
                    return Err(Error::Server { code, message });
                }
                Ok(Err(e)) => last = format!("{endpoint}: {e}"),
                Err(_) => last = format!("{endpoint}: no answer within {:?}", self.options.connect_timeout),
            }
            tracing::debug!(attempt, error = %last, "connect attempt failed");
        }
        Err(Error::Connect { attempts, last })
    }

    async fn open(&mut self, endpoint: &str) -> Result<Live, OpenError> {
        let addr = tokio::net::lookup_host(endpoint)
            .await
            .map_err(|e| format!("cannot resolve: {e}"))?
            .next()
            .ok_or("resolves to no address")?;
        let host = endpoint
            .rsplit_once(':')
            .map_or(endpoint, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let connection = self
            .endpoint
            .connect_with(self.quic.clone(), addr, host)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let mut send = Outgoing::new(send);
        let (frames_tx, mut frames) = mpsc::channel(256);
        tokio::spawn(read_stream(recv, self.shared.clone(), frames_tx.clone()));
        let acceptor = connection.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Ok(stream) = acceptor.accept_uni().await {
                tokio::spawn(read_stream(stream, shared.clone(), frames_tx.clone()));
            }
        });
        let id = self.next_id();
        let connect = wire::Connect {
            token: self.token.clone(),
            protocol_version: crate::PROTOCOL_VERSION,
            accept_compression: if self.options.compression {
                vec!["deflate".into()]
            } else {
                Vec::new()
            },
            client_name: self.options.client_name.clone(),
        };
        send.queue(id, client_frame::Kind::Connect(connect));
        send.flush().await.map_err(|e| e.reason)?;
        let reply = frames.recv().await.ok_or_else(|| {
            connection
                .close_reason()
                .map_or("closed during the handshake".to_string(), |r| r.to_string())
        })?;
        match reply.kind {
            Some(server_frame::Kind::ConnectOk(ok)) if reply.id == id => {
                self.shared.node.store(ok.node_id, Ordering::Relaxed);
                tracing::info!(node = ok.node_id, %endpoint, "connected");
                Ok(Live {
                    connection,
                    send,
                    frames,
                    refresh_at: refresh_deadline(ok.token_expires_at),
                })
            }
            Some(server_frame::Kind::Disconnect(d)) => Err(OpenError::Refused {
                code: d.code,
                message: d.reason,
            }),
            Some(server_frame::Kind::Error(e)) => Err(OpenError::Refused {
                code: e.code,
                message: e.message,
            }),
            other => Err(format!("unexpected handshake reply {other:?}").into()),
        }
    }

    /// Resubscribes every subscription from its last position and resends retried requests.
    async fn restore(&mut self, live: &mut Live) -> Result<(), String> {
        self.deferred.clear();
        let locals: Vec<u64> = {
            let mut subs = self.shared.subs.lock().expect("subs lock");
            subs.wire_to_local.clear();
            // Stalled ones resume when the application has read (`check_stalled`).
            subs.by_local
                .keys()
                .filter(|l| !subs.stalled.contains(l))
                .copied()
                .collect()
        };
        for local in locals {
            self.send_subscribe(live, local).await?;
        }
        // A new connection starts online: set the application's last status again.
        let presence = self.shared.presence.lock().expect("presence lock").clone();
        if let Some(presence) = presence {
            let id = self.next_id();
            self.pending.insert(id, Pending::Ignore);
            live.send.queue(id, client_frame::Kind::SetPresence(presence));
        }
        for (kind, reply) in std::mem::take(&mut self.retry) {
            if reply.is_closed() {
                continue;
            }
            let id = self.next_id();
            // Pending until answered: if the flush fails, `requeue` keeps it for the next
            // connection.
            let kind = live.send.queue(id, kind);
            self.pending.insert(id, Pending::Request { kind, reply });
        }
        self.flush(live).await
    }

    /// Writes what is queued. Requests that did not leave are kept to be sent again on the
    /// next connection, whatever they ask: the node never saw them (`requeue` answers the
    /// session operations that may have been applied with `Indeterminate`).
    async fn flush(&mut self, live: &mut Live) -> Result<(), String> {
        live.send.flush().await.map_err(|failed| {
            for id in failed.unsent {
                if let Some(Pending::Request { kind, reply }) = self.pending.remove(&id) {
                    self.retry.push((kind, reply));
                }
            }
            failed.reason
        })
    }

    async fn send_subscribe(&mut self, live: &mut Live, local: u64) -> Result<(), String> {
        let wire_id = self.next_wire;
        self.next_wire += 1;
        let request = {
            let mut subs = self.shared.subs.lock().expect("subs lock");
            let Some(sub) = subs.by_local.get(&local) else {
                return Ok(());
            };
            let request = wire::Subscribe {
                sub: wire_id,
                channel: sub.channel.clone(),
                event_types: sub.event_types.clone(),
                token: sub.token.clone(),
                since: sub.last.filter(|_| sub.exact).map(|p| wire::Position {
                    epoch: p.epoch,
                    offset: p.offset,
                }),
            };
            subs.wire_to_local.insert(wire_id, local);
            request
        };
        let id = self.next_id();
        self.pending.insert(id, Pending::Subscribe { local });
        live.send.queue(id, client_frame::Kind::Subscribe(request));
        Ok(())
    }

    async fn serve(&mut self, live: &mut Live) -> Outcome {
        if let Err(e) = self.restore(live).await {
            return Outcome::Lost(e);
        }
        let mut stall_check = tokio::time::interval(STALL_CHECK);
        loop {
            let (deferred_at, has_deferred) = (self.next_deferred(), !self.deferred.is_empty());
            let result = tokio::select! {
                _ = stall_check.tick() => self.check_stalled(live).await,
                command = self.commands.recv() => match self.on_commands(live, command).await {
                    Ok(Flow::Close) => {
                        // What was queued before the close goes first.
                        let _ = self.flush(live).await;
                        live.connection.close(0u32.into(), b"client closed");
                        return Outcome::Closed;
                    }
                    Ok(Flow::Continue) => Ok(()),
                    Err(e) => Err(e),
                },
                frame = live.frames.recv() => match frame {
                    None => Err(live
                        .connection
                        .close_reason()
                        .map_or("connection lost".to_string(), |r| r.to_string())),
                    Some(frame) => self.on_frames(live, frame).await,
                },
                _ = tokio::time::sleep_until(deferred_at), if has_deferred => {
                    self.send_deferred(live).await
                },
                _ = tokio::time::sleep_until(live.refresh_at), if self.options.token_refresher.is_some() => {
                    // Until RefreshOk moves it: try again in 5 s.
                    live.refresh_at = Instant::now() + Duration::from_secs(5);
                    self.refresh(live).await
                },
            };
            // Nothing more is written to a connection being given up.
            let result = match result {
                Ok(()) => self.flush(live).await,
                failed => failed,
            };
            if let Err(reason) = result {
                live.connection.close(0u32.into(), b"reconnecting");
                return Outcome::Lost(reason);
            }
        }
    }

    /// Handles `first` and the frames that arrived with it (up to a bound): the replies of a
    /// burst all reach their callers before any of them sends again.
    async fn on_frames(&mut self, live: &mut Live, first: ServerFrame) -> Result<(), String> {
        self.on_frame(live, first).await?;
        for _ in 1..MAX_COMMANDS_PER_WRITE {
            match live.frames.try_recv() {
                Ok(frame) => self.on_frame(live, frame).await?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Handles `first` and the commands queued behind it (up to a bound), so that a burst of
    /// requests leaves in one write.
    async fn on_commands(&mut self, live: &mut Live, first: Option<Command>) -> Result<Flow, String> {
        let mut next = first;
        let mut handled = 0;
        // The tasks woken by the replies just handed out send their next requests when they
        // run: let them run first (else each one's request left alone, in its own packet).
        tokio::task::yield_now().await;
        loop {
            match next {
                None | Some(Command::Close) => return Ok(Flow::Close),
                Some(command) => self.on_command(live, command).await?,
            }
            handled += 1;
            if handled >= MAX_COMMANDS_PER_WRITE || live.send.queued() >= MAX_BYTES_PER_WRITE {
                return Ok(Flow::Continue);
            }
            next = match self.commands.try_recv() {
                Ok(command) => Some(command),
                Err(mpsc::error::TryRecvError::Empty) => return Ok(Flow::Continue),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
    }

    async fn refresh(&mut self, live: &mut Live) -> Result<(), String> {
        let Some(refresher) = self.options.token_refresher.clone() else {
            return Ok(());
        };
        match refresher().await {
            Ok(token) => {
                self.token = token.clone();
                let id = self.next_id();
                self.pending.insert(id, Pending::Ignore);
                live.send
                    .queue(id, client_frame::Kind::Refresh(wire::RefreshToken { token }));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "token refresher failed; retrying in 5 s");
                Ok(())
            }
        }
    }

    async fn on_command(&mut self, live: &mut Live, command: Command) -> Result<(), String> {
        match command {
            Command::Request { kind, reply } => {
                let id = self.next_id();
                let kind = live.send.queue(id, kind);
                self.pending.insert(id, Pending::Request { kind, reply });
                Ok(())
            }
            Command::Subscribe { local, reply } => {
                // `restore` may have subscribed it already (it was registered before the
                // command was sent): answer from its reply, or wait for that one.
                if let Some(info) = self.established.get(&local) {
                    let _ = reply.send(Ok(*info));
                    return Ok(());
                }
                self.waiting_subscribe.insert(local, reply);
                let in_flight = self
                    .shared
                    .subs
                    .lock()
                    .expect("subs lock")
                    .wire_to_local
                    .values()
                    .any(|l| *l == local);
                if in_flight {
                    return Ok(());
                }
                self.send_subscribe(live, local).await
            }
            Command::Unsubscribe { local } => {
                self.established.remove(&local);
                let wire_ids = {
                    let mut subs = self.shared.subs.lock().expect("subs lock");
                    subs.by_local.remove(&local);
                    subs.stalled.remove(&local);
                    subs.draining.remove(&local);
                    subs.drop_wire_ids(local, &[])
                };
                self.unsubscribe_wire(live, wire_ids).await
            }
            Command::Close => Ok(()),
        }
    }

    /// Ends these subscriptions on the node (ids stopped by a resync answer not_found).
    async fn unsubscribe_wire(&mut self, live: &mut Live, wire_ids: Vec<u64>) -> Result<(), String> {
        for sub in wire_ids {
            let id = self.next_id();
            self.pending.insert(id, Pending::Ignore);
            live.send
                .queue(id, client_frame::Kind::Unsubscribe(wire::Unsubscribe { sub }));
        }
        Ok(())
    }

    /// Stalled subscriptions: stop them on the node at once (nothing they send can be taken),
    /// and resubscribe each from its last position once its channel is half empty.
    async fn check_stalled(&mut self, live: &mut Live) -> Result<(), String> {
        let (to_stop, to_resume) = {
            let mut subs = self.shared.subs.lock().expect("subs lock");
            let stalled: Vec<u64> = subs.stalled.iter().copied().collect();
            let mut to_stop = Vec::new();
            let mut to_resume = Vec::new();
            for local in stalled {
                to_stop.extend(subs.drop_wire_ids(local, &[]));
                let room = subs
                    .by_local
                    .get(&local)
                    .map(|s| s.sender.capacity() * 2 >= s.sender.max_capacity());
                match room {
                    None => {
                        subs.stalled.remove(&local);
                    }
                    Some(true) => {
                        subs.stalled.remove(&local);
                        to_resume.push(local);
                    }
                    Some(false) => {}
                }
            }
            // Stopped by the node: resubscribe once their queued events stopped arriving.
            let now = std::time::Instant::now();
            let draining: Vec<u64> = subs.draining.iter().copied().collect();
            for local in draining {
                let quiet = subs
                    .by_local
                    .get(&local)
                    .is_none_or(|s| s.last_delivery.is_none_or(|t| now - t >= STALL_CHECK));
                if quiet {
                    subs.draining.remove(&local);
                    if subs.by_local.contains_key(&local) && !subs.stalled.contains(&local) {
                        to_resume.push(local);
                    }
                }
            }
            (to_stop, to_resume)
        };
        self.unsubscribe_wire(live, to_stop).await?;
        for local in to_resume {
            self.send_subscribe(live, local).await?;
        }
        Ok(())
    }

    async fn on_frame(&mut self, live: &mut Live, frame: ServerFrame) -> Result<(), String> {
        let Some(kind) = frame.kind else {
            return Ok(());
        };
        if frame.id != 0 {
            match self.pending.remove(&frame.id) {
                Some(Pending::Request { reply, .. }) => {
                    let result = match kind {
                        server_frame::Kind::Error(e) => Err(Error::Server {
                            code: e.code,
                            message: e.message,
                        }),
                        other => Ok(other),
                    };
                    let _ = reply.send(result);
                }
                Some(Pending::Subscribe { local }) => self.on_subscribe_reply(local, kind),
                Some(Pending::Ignore) => {
                    if let server_frame::Kind::RefreshOk(ok) = &kind {
                        live.refresh_at = refresh_deadline(ok.token_expires_at);
                    }
                    if let server_frame::Kind::Error(e) = &kind
                        && e.code != "not_found"
                    {
                        tracing::warn!(code = %e.code, message = %e.message, "request refused");
                    }
                }
                None => {}
            }
            return Ok(());
        }
        match kind {
            server_frame::Kind::Ping(_) => {
                live.send.queue(0, client_frame::Kind::Pong(wire::Pong {}));
                Ok(())
            }
            server_frame::Kind::Resync(resync) => {
                // The old id keeps mapping to the subscription: events the node queued before
                // the resync may still arrive behind it, and they are the next ones in order
                // (offset dedupe drops what the new subscription then repeats). Dropping them
                // would make a reader that is far behind start over every round.
                let local = {
                    let mut subs = self.shared.subs.lock().expect("subs lock");
                    let local = subs.wire_to_local.get(&resync.sub).copied();
                    if let Some(sub) = local.and_then(|l| subs.by_local.get(&l))
                        && !sub.exact
                    {
                        sub.incomplete.fetch_add(1, Ordering::Relaxed);
                    }
                    match local {
                        // A stalled one is resubscribed when the application has read.
                        Some(local) if subs.stalled.contains(&local) => None,
                        Some(local) if resync.reason == "slow_consumer" => {
                            subs.draining.insert(local);
                            None
                        }
                        other => other,
                    }
                };
                tracing::debug!(channel = %resync.channel, reason = %resync.reason, "resync");
                match local {
                    Some(local) => self.send_subscribe(live, local).await,
                    None => Ok(()),
                }
            }
            server_frame::Kind::Disconnect(d) => {
                Err(format!("node closed the connection: {}: {}", d.code, d.reason))
            }
            server_frame::Kind::Error(e) => {
                tracing::warn!(code = %e.code, message = %e.message, sub = e.sub, "subscription error");
                let local = self
                    .shared
                    .subs
                    .lock()
                    .expect("subs lock")
                    .wire_to_local
                    .get(&e.sub)
                    .copied();
                if let Some(local) = local {
                    self.forget(local);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// When the earliest deferred resubscribe is due.
    fn next_deferred(&self) -> Instant {
        self.deferred
            .iter()
            .map(|(at, _)| *at)
            .min()
            .unwrap_or_else(Instant::now)
    }

    /// Sends the deferred resubscribes that are due (of subscriptions still wanted).
    async fn send_deferred(&mut self, live: &mut Live) -> Result<(), String> {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.deferred.drain(..).partition(|(at, _)| *at <= now);
        self.deferred = later;
        for (_, local) in due {
            let wanted = self
                .shared
                .subs
                .lock()
                .expect("subs lock")
                .by_local
                .contains_key(&local);
            if wanted {
                self.send_subscribe(live, local).await?;
            }
        }
        Ok(())
    }

    /// Drops every trace of a subscription the node refused (its stream ends).
    fn forget(&mut self, local: u64) {
        self.established.remove(&local);
        let mut subs = self.shared.subs.lock().expect("subs lock");
        subs.by_local.remove(&local);
        subs.stalled.remove(&local);
        subs.draining.remove(&local);
        subs.drop_wire_ids(local, &[]);
    }

    fn on_subscribe_reply(&mut self, local: u64, kind: server_frame::Kind) {
        let waiting = self.waiting_subscribe.remove(&local);
        match kind {
            server_frame::Kind::SubscribeOk(ok) => {
                let info = SubscribeInfo {
                    position: ok.position.map(|p| Position {
                        epoch: p.epoch,
                        offset: p.offset,
                    }),
                    recovered: ok.recovered,
                };
                let mut subs = self.shared.subs.lock().expect("subs lock");
                if let Some(sub) = subs.by_local.get_mut(&local) {
                    if !ok.recovered {
                        sub.incomplete.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(channel = %sub.channel, "recovery incomplete: events were lost to retention or an epoch change");
                    }
                    // A subscription without a position yet starts where the node stood, so
                    // that a reconnect before its first event still recovers from there.
                    if sub.exact && sub.last.is_none() {
                        sub.last = info.position;
                    }
                }
                drop(subs);
                self.established.insert(local, info);
                if let Some(reply) = waiting {
                    let _ = reply.send(Ok(info));
                }
            }
            server_frame::Kind::Error(e) if e.code == "rate_limited" && waiting.is_none() => {
                // A resubscribe (after a reconnect or a resync) over the node's rate: send it
                // again when the node says, instead of ending the subscription.
                self.shared
                    .subs
                    .lock()
                    .expect("subs lock")
                    .drop_wire_ids(local, &[]);
                let wait = Duration::from_millis(e.retry_after_ms.max(1));
                self.deferred.push((Instant::now() + wait, local));
            }
            server_frame::Kind::Error(e) => {
                self.forget(local);
                let error = Error::Server {
                    code: e.code,
                    message: e.message,
                };
                match waiting {
                    Some(reply) => drop(reply.send(Err(error))),
                    None => tracing::warn!(%error, "resubscribe refused; the subscription ends"),
                }
            }
            other => tracing::warn!(?other, "unexpected subscribe reply"),
        }
    }
}

/// The control stream's sending half with a buffer. Frames are queued while the driver handles
/// one wake-up (a burst of requests from many tasks, say) and leave in one write at its end:
/// quinn then packs them into as few packets as hold them. Written one by one, each frame
/// left in a packet of its own (1.26 datagrams per publish under `chorus bench publish`).
struct Outgoing {
    stream: quinn::SendStream,
    buf: BytesMut,
    /// Id and end offset in `buf` of each queued frame, to tell after a failed write which
    /// ones never left whole.
    frames: Vec<(u64, usize)>,
}

/// A write that failed, and the queued frames that did not leave whole (their requests were
/// never seen by the node: safe to send again, whatever they ask).
struct FlushError {
    reason: String,
    unsent: Vec<u64>,
}

impl Outgoing {
    fn new(stream: quinn::SendStream) -> Outgoing {
        Outgoing {
            stream,
            buf: BytesMut::new(),
            frames: Vec::new(),
        }
    }

    /// Queues a frame for the next [`Outgoing::flush`]; gives `kind` back (a request keeps it
    /// to send again on another connection).
    fn queue(&mut self, id: u64, kind: client_frame::Kind) -> client_frame::Kind {
        let frame = ClientFrame { id, kind: Some(kind) };
        put_length_delimited(&frame, &mut self.buf);
        self.frames.push((id, self.buf.len()));
        frame.kind.expect("set above")
    }

    /// Bytes queued and not yet written.
    fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Writes what is queued.
    async fn flush(&mut self) -> Result<(), FlushError> {
        let mut written = 0;
        let mut result = Ok(());
        while written < self.buf.len() {
            match self.stream.write(&self.buf[written..]).await {
                Ok(n) => written += n,
                Err(e) => {
                    // A frame cut short is never decoded by the node.
                    let unsent = self
                        .frames
                        .iter()
                        .filter(|(_, end)| *end > written)
                        .map(|(id, _)| *id)
                        .collect();
                    result = Err(FlushError {
                        reason: e.to_string(),
                        unsent,
                    });
                    break;
                }
            }
        }
        self.buf.clear();
        self.frames.clear();
        result
    }
}

/// Reads a stream of server frames: events go to their subscription, the rest to the driver.
async fn read_stream(mut recv: quinn::RecvStream, shared: Arc<Shared>, to_driver: mpsc::Sender<ServerFrame>) {
    let mut reader = FrameReader::new(MAX_FRAME_BYTES);
    // quinn's own received bytes: no 64 KiB read buffer per stream.
    while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
        reader.extend(&chunk.bytes);
        loop {
            let bytes = match reader.next_frame() {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(e) => return tracing::warn!(error = %e, "unreadable stream from the node"),
            };
            let frame = match ServerFrame::decode(bytes) {
                Ok(frame) => frame,
                Err(e) => return tracing::warn!(error = %e, "undecodable frame from the node"),
            };
            match frame.kind {
                Some(server_frame::Kind::Event(event)) => deliver(&shared, event),
                Some(server_frame::Kind::Notice(notice)) => {
                    crate::features::deliver_notice(&shared.notices, notice);
                }
                _ => {
                    if to_driver.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Hands an event to its subscription, once: an exact channel's events at or before the last
/// position handed over are duplicates of a recovery and are skipped. Never waits: when the
/// application's channel is full the event is dropped, its position is not advanced, and
/// the subscription is marked stalled (the driver resubscribes it from that position once
/// the application has read). So one unread subscription never holds up the others, nor the
/// history pages that share the push stream.
fn deliver(shared: &Shared, event: wire::Event) {
    let wire_sub = event.sub;
    let event = match Event::from_wire(event) {
        Ok(event) => event,
        Err(e) => return tracing::warn!(error = %e, "dropping an undecodable event"),
    };
    let mut subs = shared.subs.lock().expect("subs lock");
    let Some(local) = subs.wire_to_local.get(&wire_sub).copied() else {
        return;
    };
    if subs.stalled.contains(&local) {
        return;
    }
    let Some(sub) = subs.by_local.get_mut(&local) else {
        return;
    };
    if wire_sub < sub.newest_wire {
        return;
    }
    if wire_sub > sub.newest_wire {
        // Events of one connection arrive in order on one stream and wire ids only grow:
        // once a newer id delivers, the older ones have nothing left in flight.
        sub.newest_wire = wire_sub;
        subs.drop_wire_ids(local, &[wire_sub]);
    }
    let Some(sub) = subs.by_local.get_mut(&local) else {
        return;
    };
    if sub.exact
        && let Some(last) = sub.last
        && event.epoch == last.epoch
        && event.offset <= last.offset
    {
        return;
    }
    let position = event.position();
    match sub.sender.try_send(event) {
        Ok(()) => {
            sub.last_delivery = Some(std::time::Instant::now());
            if sub.exact {
                sub.last = Some(position);
            }
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            if !sub.exact {
                // A pattern cannot recover what it drops: count it.
                sub.incomplete.fetch_add(1, Ordering::Relaxed);
            }
            subs.stalled.insert(local);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}
