//! The link between two nodes: one long-lived gRPC stream per peer and lane that carries every
//! shard's Raft requests (or the writes this node forwards), batched.
//!
//! ```text
//!  shard 0 append ─┐                                     ┌─► handle, answer ─┐
//!  shard 5 vote   ─┼─► lane task ─ LinkFrame [m1 m2 m3] ──┼─► handle, answer ─┼─► LinkFrame [r2 r1 r3]
//!  shard 9 append ─┘   (per peer)      request stream     └─► handle, answer ─┘   response stream
//!                        pending: id → caller ◄─────────────── reader task ◄──────┘
//! ```
//!
//! One unary call per shard and entry cost an HTTP/2 stream, its headers both ways and a task
//! on each side; here a frame carries whatever was ready when the previous one left, so under
//! load many shards' messages share one write, and at rest a message costs one small frame.
//! Requests are answered by id, in whatever order the answers are ready; notices (id 0) get
//! no answer and are handled in arrival order. Three lanes per peer (`crate::network`) keep
//! appends, control messages (votes, notices) and forwarded writes apart.
//!
//! Measured with `chorus bench publish` (docs/benchmarks.md): the stream carried 1.2x the
//! writes of batches sent as unary calls (4 in flight per lane), which in turn did no better
//! than a unary call per message.

use crate::auth::CLUSTER_ID_HEADER;
use crate::network::MAX_MESSAGE_BYTES;
use crate::node::ClusterNode;
use crate::service::{ShardCall, handle_shard_call};
use chorus_proto::cluster::cluster_client::ClusterClient;
use chorus_proto::cluster::{LinkFrame, LinkKind, LinkMessage};
use futures::Stream;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// Most messages in one frame.
const MAX_FRAME_MESSAGES: usize = 512;
/// A frame is closed once its payloads pass this many bytes (a single larger message still
/// goes, alone).
const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Frames queued for the request stream before the lane task waits.
const FRAMES_QUEUED: usize = 64;
/// The id of a message that wants no answer (requests are numbered from 1).
const NOTICE_ID: u64 = 0;

/// The answers a node sends back on a link.
pub type AnswerFrames = Pin<Box<dyn Stream<Item = Result<LinkFrame, Status>> + Send>>;

fn call_of(kind: LinkKind) -> Option<ShardCall> {
    Some(match kind {
        LinkKind::AppendEntries => ShardCall::AppendEntries,
        LinkKind::Vote => ShardCall::Vote,
        LinkKind::PreVote => ShardCall::PreVote,
        LinkKind::TransferLeader => ShardCall::TransferLeader,
        LinkKind::Forward => ShardCall::Forward,
        LinkKind::Leading => ShardCall::Leading,
        LinkKind::Reply | LinkKind::Error => return None,
    })
}

/// `first` and whatever else is ready in `rx`, up to one frame's worth (`payload_len` of each).
fn take_ready<T>(first: T, rx: &mut mpsc::UnboundedReceiver<T>, payload_len: impl Fn(&T) -> usize) -> Vec<T> {
    let mut bytes = payload_len(&first);
    let mut batch = vec![first];
    while batch.len() < MAX_FRAME_MESSAGES && bytes < MAX_FRAME_BYTES {
        match rx.try_recv() {
            Ok(next) => {
                bytes += payload_len(&next);
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Lets the rest of a burst arrive. A message usually comes with others (the answers of one
/// commit, the appends of several shards): the task that sent the first one woke this task,
/// which tokio runs right after it, before the senders of the others; yielding once lets them
/// queue theirs, so that the burst leaves in one frame instead of a frame each.
async fn burst() {
    tokio::task::yield_now().await;
}

/// Frames from a queue of messages: waits for one, then takes what else is ready.
fn frames(rx: mpsc::UnboundedReceiver<LinkMessage>) -> impl Stream<Item = Result<LinkFrame, Status>> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        let first = rx.recv().await?;
        burst().await;
        let messages = take_ready(first, &mut rx, |m| m.payload.len());
        Some((Ok(LinkFrame { messages }), rx))
    })
}

/// Serves a peer's link: every message is handled in its own task, answers go back batched.
/// The answers end when the peer closes its side and every handler has answered.
pub fn serve(node: ClusterNode, mut inbound: Streaming<LinkFrame>) -> AnswerFrames {
    let (answers, answers_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(frame)) = inbound.message().await {
            for message in frame.messages {
                if message.id == NOTICE_ID {
                    // Handled here, in arrival order: a later notice must not be overtaken by
                    // an earlier one (each replaces what its sender said before), and
                    // handling one is quick.
                    let _ = handle(&node, &message).await;
                    continue;
                }
                let (node, answers) = (node.clone(), answers.clone());
                tokio::spawn(async move {
                    let _ = answers.send(answer(&node, message).await);
                });
            }
        }
    });
    Box::pin(frames(answers_rx))
}

async fn handle(node: &ClusterNode, message: &LinkMessage) -> Result<Vec<u8>, Status> {
    match LinkKind::try_from(message.kind).ok().and_then(call_of) {
        Some(call) => handle_shard_call(node, call, message.shard, &message.payload).await,
        None => Err(Status::invalid_argument(format!(
            "link message kind {} is not a request",
            message.kind
        ))),
    }
}

async fn answer(node: &ClusterNode, message: LinkMessage) -> LinkMessage {
    match handle(node, &message).await {
        Ok(payload) => LinkMessage {
            id: message.id,
            shard: message.shard,
            kind: LinkKind::Reply.into(),
            payload,
            ..Default::default()
        },
        Err(status) => LinkMessage {
            id: message.id,
            shard: message.shard,
            kind: LinkKind::Error.into(),
            code: status.code().into(),
            error: status.message().to_string(),
            ..Default::default()
        },
    }
}

/// Why a link call got no answer.
#[derive(Debug, Clone)]
pub enum LinkError {
    /// The request never left: the link to the peer could not be opened (safe to retry).
    NotSent(Status),
    /// The peer answered with this status, or the link broke after the request was sent.
    Failed(Status),
}

type Reply = oneshot::Sender<Result<Vec<u8>, LinkError>>;
type Pending = Arc<Mutex<HashMap<u64, Reply>>>;

/// A message waiting to go out on a link.
struct Outgoing {
    shard: u32,
    kind: LinkKind,
    payload: Vec<u8>,
    /// Where the answer goes; none for a notice.
    reply: Option<Reply>,
}

/// Where a link connects and what it presents.
#[derive(Clone)]
pub struct LinkTarget {
    /// The peer's gRPC channel.
    pub channel: Channel,
    /// The static proof of the cluster secret (`None` over mutual TLS, where the connection
    /// proves it).
    pub proof: Option<String>,
    /// This node's cluster id when the link opens (a new id reopens the link).
    pub cluster_id: Arc<RwLock<Option<String>>>,
}

/// The sending side of one lane to one peer. Cloning is cheap; the lane's task ends when every
/// handle is dropped.
#[derive(Clone)]
pub struct LinkClient {
    queue: mpsc::UnboundedSender<Outgoing>,
}

impl LinkClient {
    /// Starts a lane towards `target`.
    pub fn start(target: LinkTarget) -> LinkClient {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(target, rx));
        LinkClient { queue }
    }

    /// Sends a request and waits for its answer (the caller bounds the wait).
    pub async fn call(&self, shard: u32, kind: LinkKind, payload: Vec<u8>) -> Result<Vec<u8>, LinkError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Outgoing {
                shard,
                kind,
                payload,
                reply: Some(reply),
            })
            .map_err(|_| LinkError::NotSent(Status::unavailable("the link task has stopped")))?;
        answer.await.unwrap_or_else(|_| {
            Err(LinkError::Failed(Status::unavailable(
                "the link closed before the answer came",
            )))
        })
    }

    /// Sends a message that wants no answer: half the traffic of a call, for news that is
    /// sent again soon anyway (`crate::liveness`). Dropped if the link cannot be opened.
    pub fn notify(&self, shard: u32, kind: LinkKind, payload: Vec<u8>) {
        let _ = self.queue.send(Outgoing {
            shard,
            kind,
            payload,
            reply: None,
        });
    }
}

/// An open stream to the peer.
struct Open {
    frames: mpsc::Sender<LinkFrame>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    cluster_id: Option<String>,
}

fn fail_all(pending: &Pending, status: &Status) {
    for (_, reply) in pending.lock().expect("link lock").drain() {
        let _ = reply.send(Err(LinkError::Failed(status.clone())));
    }
}

async fn open(target: &LinkTarget) -> Result<Open, Status> {
    let cluster_id = target.cluster_id.read().expect("lock").clone();
    let (frames, frames_rx) = mpsc::channel::<LinkFrame>(FRAMES_QUEUED);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(frames_rx));
    let meta = request.metadata_mut();
    crate::auth::present(meta, target.proof.as_deref());
    if let Some(id) = cluster_id.as_deref()
        && let Ok(value) = id.parse()
    {
        meta.insert(CLUSTER_ID_HEADER, value);
    }
    let mut client = ClusterClient::new(target.channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut inbound = client.link(request).await?.into_inner();
    let pending: Pending = Arc::default();
    let alive = Arc::new(AtomicBool::new(true));
    let (reader_pending, reader_alive) = (pending.clone(), alive.clone());
    tokio::spawn(async move {
        let failure = loop {
            match inbound.message().await {
                Ok(Some(frame)) => {
                    let mut pending = reader_pending.lock().expect("link lock");
                    for message in frame.messages {
                        if let Some(reply) = pending.remove(&message.id) {
                            let _ = reply.send(match LinkKind::try_from(message.kind) {
                                Ok(LinkKind::Reply) => Ok(message.payload),
                                _ => Err(LinkError::Failed(Status::new(message.code.into(), message.error))),
                            });
                        }
                    }
                }
                Ok(None) => break Status::unavailable("the peer closed the link"),
                Err(status) => break status,
            }
        };
        reader_alive.store(false, Ordering::Release);
        fail_all(&reader_pending, &failure);
    });
    Ok(Open {
        frames,
        pending,
        alive,
        cluster_id,
    })
}

async fn run(target: LinkTarget, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
    let mut link: Option<Open> = None;
    let mut next_id = 0u64;
    while let Some(first) = queue.recv().await {
        burst().await;
        let mut batch = take_ready(first, &mut queue, |o| o.payload.len());
        // Their callers gave up (timed out): not worth sending.
        batch.retain(|outgoing| outgoing.reply.as_ref().is_none_or(|reply| !reply.is_closed()));
        if batch.is_empty() {
            continue;
        }
        // A broken stream, or one opened under another cluster id, is replaced.
        let current_id = target.cluster_id.read().expect("lock").clone();
        if link
            .as_ref()
            .is_some_and(|l| !l.alive.load(Ordering::Acquire) || l.cluster_id != current_id)
        {
            link = None;
        }
        if link.is_none() {
            match open(&target).await {
                Ok(opened) => link = Some(opened),
                Err(status) => {
                    for reply in batch.into_iter().filter_map(|outgoing| outgoing.reply) {
                        let _ = reply.send(Err(LinkError::NotSent(status.clone())));
                    }
                    continue;
                }
            }
        }
        let open = link.as_ref().expect("opened above");
        let mut messages = Vec::with_capacity(batch.len());
        {
            let mut pending = open.pending.lock().expect("link lock");
            if pending.len() > 4096 {
                // Answers nobody waits for any more (their callers timed out).
                pending.retain(|_, reply| !reply.is_closed());
            }
            for outgoing in batch {
                let id = match outgoing.reply {
                    Some(reply) => {
                        next_id += 1;
                        pending.insert(next_id, reply);
                        next_id
                    }
                    None => NOTICE_ID,
                };
                messages.push(LinkMessage {
                    id,
                    shard: outgoing.shard,
                    kind: outgoing.kind.into(),
                    payload: outgoing.payload,
                    ..Default::default()
                });
            }
        }
        match open.frames.send(LinkFrame { messages }).await {
            Ok(()) => {
                // The reader may have ended (and failed what was pending) after the check
                // above and before these entered `pending`: nobody would answer them.
                if !open.alive.load(Ordering::Acquire) {
                    fail_all(&open.pending, &Status::unavailable("the link closed"));
                }
            }
            Err(unsent) => {
                // This frame never left: its requests may be sent again elsewhere.
                open.alive.store(false, Ordering::Release);
                let status = Status::unavailable("the link closed before the request was sent");
                {
                    let mut pending = open.pending.lock().expect("link lock");
                    for message in unsent.0.messages {
                        if let Some(reply) = pending.remove(&message.id) {
                            let _ = reply.send(Err(LinkError::NotSent(status.clone())));
                        }
                    }
                }
                fail_all(&open.pending, &Status::unavailable("the link closed"));
            }
        }
    }
}
