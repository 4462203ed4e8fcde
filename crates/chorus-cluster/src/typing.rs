//! Typing indicators across the cluster: not Raft, but a direct node-to-node broadcast.
//!
//! ```text
//!  client "started" ─► [typing task: registry] ─► changes ─► local subscribers (gateway hub)
//!                          │  ▲
//!        per-peer sender ◄─┘  └── Ephemeral RPC from peers (their clients' typing)
//! ```
//!
//! One task owns the registry ([`chorus_core::typing::TypingRegistry`]). Each peer has its
//! own sender task, so messages to one peer keep their order and a slow peer delays no other.
//! While a node has typists of its own it tells its peers it is alive every second; a peer
//! that hears nothing from a node for [`TypingConfig::peer_silence`] drops that node's
//! typists (a killed node's typists disappear without waiting for their time to live).

use crate::network::{PeerPool, Rpc};
use chorus_core::ChannelName;
use chorus_core::typing::{TypingChange, TypingRegistry, Typist};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Typing changes queued for one peer at most (beyond, changes to it are dropped).
const PEER_QUEUE: usize = 4096;

/// Timers of typing indicators.
#[derive(Debug, Clone, Copy)]
pub struct TypingConfig {
    /// A typist stops by itself this long after their last "started".
    pub ttl: Duration,
    /// A peer silent this long has its typists dropped.
    pub peer_silence: Duration,
}

impl Default for TypingConfig {
    fn default() -> Self {
        TypingConfig {
            ttl: Duration::from_secs(6),
            peer_silence: Duration::from_secs(3),
        }
    }
}

/// What one node tells another (postcard in an `Ephemeral` call).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TypingMessage {
    /// A client of the sender started (or is still) typing.
    Started {
        /// Channel name.
        channel: String,
        /// User.
        user: String,
        /// Device.
        device: String,
        /// The connection on the sender.
        conn: u64,
    },
    /// A client of the sender stopped.
    Stopped {
        /// Channel name.
        channel: String,
        /// User.
        user: String,
        /// Device.
        device: String,
    },
    /// A connection of the sender closed.
    ConnectionClosed {
        /// Its id on the sender.
        conn: u64,
    },
    /// The sender is alive (sent while it has typists).
    Alive,
}

/// A batch from one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EphemeralBatch {
    /// The sender's node id.
    pub from: u64,
    /// In the order they happened.
    pub messages: Vec<TypingMessage>,
}

enum Input {
    Local(TypingMessage),
    Peer(EphemeralBatch),
    Query {
        channel: ChannelName,
        reply: oneshot::Sender<Vec<Typist>>,
    },
}

/// Handle to the node's typing task. Cloning is cheap.
#[derive(Clone)]
pub struct Typing {
    input: mpsc::UnboundedSender<Input>,
    changes: broadcast::Sender<Arc<TypingChange>>,
}

/// Where the peers are: (node id, raft address) of every other member.
pub(crate) type PeerList = Arc<dyn Fn() -> Vec<(u64, String)> + Send + Sync>;

impl Typing {
    /// Starts the typing task of node `node_id`.
    pub(crate) fn start(node_id: u64, config: TypingConfig, pool: Arc<PeerPool>, peers: PeerList) -> Typing {
        let (input, receiver) = mpsc::unbounded_channel();
        let (changes, _) = broadcast::channel(4096);
        let task = TypingTask {
            node_id,
            config,
            pool,
            peers,
            registry: TypingRegistry::default(),
            senders: HashMap::new(),
            last_heard: HashMap::new(),
            changes: changes.clone(),
            started: crate::clock::now(),
        };
        tokio::spawn(task.run(receiver));
        Typing { input, changes }
    }

    /// A receiver of every typing change this node knows of (its own clients' and its peers').
    pub fn changes(&self) -> broadcast::Receiver<Arc<TypingChange>> {
        self.changes.subscribe()
    }

    /// A local client started (or keeps) typing.
    pub fn started(&self, channel: &ChannelName, typist: Typist, conn: u64) {
        let _ = self.input.send(Input::Local(TypingMessage::Started {
            channel: channel.to_string(),
            user: typist.user,
            device: typist.device,
            conn,
        }));
    }

    /// A local client stopped typing.
    pub fn stopped(&self, channel: &ChannelName, typist: Typist) {
        let _ = self.input.send(Input::Local(TypingMessage::Stopped {
            channel: channel.to_string(),
            user: typist.user,
            device: typist.device,
        }));
    }

    /// A local connection closed: its typists stop at once.
    pub fn connection_closed(&self, conn: u64) {
        let _ = self
            .input
            .send(Input::Local(TypingMessage::ConnectionClosed { conn }));
    }

    /// The channel's current typists.
    pub async fn current(&self, channel: ChannelName) -> Vec<Typist> {
        let (reply, answer) = oneshot::channel();
        let _ = self.input.send(Input::Query { channel, reply });
        answer.await.unwrap_or_default()
    }

    /// Messages from a peer (the `Ephemeral` RPC).
    pub(crate) fn received(&self, batch: EphemeralBatch) {
        let _ = self.input.send(Input::Peer(batch));
    }
}

struct TypingTask {
    node_id: u64,
    config: TypingConfig,
    pool: Arc<PeerPool>,
    peers: PeerList,
    registry: TypingRegistry,
    senders: HashMap<u64, mpsc::Sender<TypingMessage>>,
    last_heard: HashMap<u64, Instant>,
    changes: broadcast::Sender<Arc<TypingChange>>,
    started: Instant,
}

impl TypingTask {
    async fn run(mut self, mut input: mpsc::UnboundedReceiver<Input>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_alive = crate::clock::now();
        loop {
            tokio::select! {
                message = input.recv() => match message {
                    None => return,
                    Some(Input::Local(message)) => {
                        self.apply(self.node_id, &message);
                        self.broadcast(message);
                    }
                    Some(Input::Peer(batch)) => {
                        if batch.from == self.node_id {
                            continue;
                        }
                        self.last_heard.insert(batch.from, crate::clock::now());
                        for message in &batch.messages {
                            self.apply(batch.from, message);
                        }
                    }
                    Some(Input::Query { channel, reply }) => {
                        let _ = reply.send(self.registry.current(&channel));
                    }
                },
                _ = tick.tick() => {
                    let now = self.now_ms();
                    let expired = self.registry.expire(now);
                    self.announce(expired);
                    let silence = self.config.peer_silence;
                    let silent: Vec<u64> = self
                        .last_heard
                        .iter()
                        .filter(|(_, heard)| crate::clock::now().duration_since(**heard) > silence)
                        .map(|(node, _)| *node)
                        .collect();
                    for node in silent {
                        if self.registry.has_origin(node) {
                            tracing::debug!(peer = node, "peer silent: dropping its typists");
                            let dropped = self.registry.drop_origin(node);
                            self.announce(dropped);
                        }
                        self.last_heard.remove(&node);
                    }
                    if self.registry.has_origin(self.node_id) && crate::clock::now().duration_since(last_alive) >= Duration::from_secs(1) {
                        last_alive = crate::clock::now();
                        self.broadcast(TypingMessage::Alive);
                    }
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        crate::clock::now().duration_since(self.started).as_millis() as u64
    }

    fn apply(&mut self, origin: u64, message: &TypingMessage) {
        let now = self.now_ms();
        let ttl = self.config.ttl.as_millis() as u64;
        let changes = match message {
            TypingMessage::Started {
                channel,
                user,
                device,
                conn,
            } => match typist_in(channel, user, device) {
                Some((channel, typist)) => self
                    .registry
                    .start(&channel, typist, origin, *conn, now, ttl)
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            },
            TypingMessage::Stopped {
                channel,
                user,
                device,
            } => match typist_in(channel, user, device) {
                Some((channel, typist)) => self
                    .registry
                    .stop(&channel, &typist, origin)
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            },
            TypingMessage::ConnectionClosed { conn } => self.registry.drop_connection(origin, *conn),
            TypingMessage::Alive => Vec::new(),
        };
        self.announce(changes);
    }

    fn announce(&self, changes: Vec<TypingChange>) {
        for change in changes {
            let _ = self.changes.send(Arc::new(change));
        }
    }

    /// Queues `message` for every peer, each on its own ordered sender.
    fn broadcast(&mut self, message: TypingMessage) {
        for (node, addr) in (self.peers)() {
            if node == self.node_id {
                continue;
            }
            let sender = self.senders.entry(node).or_insert_with(|| {
                let (sender, queue) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(send_to_peer(self.pool.clone(), self.node_id, node, addr, queue));
                sender
            });
            // A peer that cannot keep up loses typing changes, never this node's memory.
            if sender.try_send(message.clone()).is_err() {
                tracing::debug!(peer = node, "typing queue to peer full; change dropped");
            }
        }
    }
}

/// The channel and typist a message names (`None` for a channel name that does not parse).
fn typist_in(channel: &str, user: &str, device: &str) -> Option<(ChannelName, Typist)> {
    let channel = ChannelName::new(channel.to_string()).ok()?;
    let typist = Typist {
        user: user.to_string(),
        device: device.to_string(),
    };
    Some((channel, typist))
}

/// Sends one peer's messages in order, batching what queued up during a call. Failures drop
/// the batch: typing is ephemeral, and the peer's own timers clean up.
async fn send_to_peer(
    pool: Arc<PeerPool>,
    from: u64,
    node: u64,
    addr: String,
    mut queue: mpsc::Receiver<TypingMessage>,
) {
    while let Some(first) = queue.recv().await {
        let mut messages = vec![first];
        while let Ok(next) = queue.try_recv() {
            messages.push(next);
            if messages.len() >= 1024 {
                break;
            }
        }
        let batch = EphemeralBatch { from, messages };
        let result = pool
            .call::<_, ()>(node, &addr, Rpc::Ephemeral, 0, &batch, Duration::from_secs(1))
            .await;
        if let Err(e) = result {
            tracing::debug!(peer = node, error = %e, "typing broadcast not delivered");
        }
    }
}
