//! Proposal batching: the shard leader puts concurrent writes into one Raft entry.
//!
//! ```text
//!  write ─┐                 ┌─ client_write(entry: [c1, c2, c3]) ─┐
//!  write ─┼─► queue ─► task ┤   (at most MAX_IN_FLIGHT at once)   ├─► results split back
//!  write ─┘                 └─ client_write(entry: [c4])         ─┘
//! ```
//!
//! At low load each write gets its own entry at once (a proposal slot is free). Under load
//! the slots are busy, writes queue, and the next free slot takes everything queued (up to
//! the configured maximum) as one entry: one log write, one replication message and one apply
//! call for all of them on every node.
//!
//! A proposal takes two slots: one of its shard ([`MAX_IN_FLIGHT`]) and one of the node
//! ([`NodeSlots`], shared by every shard the node leads). Without the node's, the entries in
//! flight grow with the shards a node leads, and each gets that much smaller: at 12 shards
//! (4 led per node) entries held 5.5 commands under `chorus bench publish`, with 3 slots per
//! node 13-14, and the cluster carried about 1.07x the writes (docs/benchmarks.md). A shard
//! that cannot commit (its quorum gone) must not stall the others: it gives its node slot
//! back after [`NODE_SLOT_HOLD`] and waits on its own slot alone.

use crate::ShardRaft;
use crate::forward::{ForwardResponse, ForwardResult};
use chorus_core::Command;
use chorus_store::{ShardRequest, ShardResponse};
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Default of the most commands in one Raft entry.
pub const DEFAULT_MAX_BATCH_COMMANDS: usize = 512;
/// Most payload bytes in one batched entry (a single larger write still goes alone), so that
/// replication messages stay small enough to be sent within their deadlines.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Proposals of one shard in flight at once. Fewer in flight means bigger batches under load:
/// on the 2-core machine 8 in flight gave 1.07x over no batching, 2 gave 1.49x, 1 gave 1.55x
/// (docs/benchmarks.md); 2 keeps some pipelining for links with real latency.
pub const MAX_IN_FLIGHT: usize = 2;
/// Default of the entries in flight on a node, over all the shards it leads.
pub const DEFAULT_NODE_ENTRIES_IN_FLIGHT: usize = 3;
/// The longest one proposal keeps a node slot (the commit of an entry under load takes a few
/// milliseconds).
pub const NODE_SLOT_HOLD: Duration = Duration::from_millis(20);

/// The node's proposal slots, shared by the proposers of every shard it leads.
#[derive(Clone)]
pub(crate) struct NodeSlots(Arc<Semaphore>);

impl NodeSlots {
    /// `count` entries in flight at most, over all shards.
    pub(crate) fn new(count: usize) -> NodeSlots {
        NodeSlots(Arc::new(Semaphore::new(count.max(1))))
    }
}

struct Pending {
    commands: Vec<Command>,
    reply: oneshot::Sender<ForwardResult>,
}

/// Handle to a shard's batching task. Cloning is cheap.
#[derive(Clone)]
pub(crate) struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the batching task of a shard.
    pub(crate) fn start(
        raft: ShardRaft,
        max_batch: usize,
        node_slots: NodeSlots,
        commands_per_entry: Histogram,
    ) -> Proposer {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, max_batch, node_slots, commands_per_entry));
        Proposer { queue }
    }

    /// Proposes `commands` (in this order, in one entry with maybe others) and answers
    /// their results once committed and applied.
    pub(crate) async fn propose(&self, commands: Vec<Command>) -> ForwardResult {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Pending { commands, reply }).is_err() {
            return Err(crate::node::failed(
                chorus_core::ErrorCode::Unavailable,
                "the shard is shutting down",
                false,
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(crate::node::failed(
                chorus_core::ErrorCode::Timeout,
                "the proposal was dropped",
                true,
            ))
        })
    }
}

async fn run(
    raft: ShardRaft,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    max_batch: usize,
    node_slots: NodeSlots,
    commands_per_entry: Histogram,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A write that did not fit the previous batch starts the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Writes keep queueing while the node's other shards hold the node's slots.
        let Ok(node_slot) = node_slots.0.clone().acquire_owned().await else {
            return;
        };
        let mut count = first.commands.len();
        let mut bytes = payload_bytes(&first.commands);
        let mut batch = vec![first];
        while count < max_batch && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                // Its caller gave up (timed out, told the outcome is unknown): drop it.
                Ok(next) if next.reply.is_closed() => {}
                Ok(next) if bytes + payload_bytes(&next.commands) > MAX_BATCH_BYTES => {
                    carried = Some(next);
                    break;
                }
                Ok(next) => {
                    count += next.commands.len();
                    bytes += payload_bytes(&next.commands);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        batch.retain(|pending| !pending.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let count: usize = batch.iter().map(|p| p.commands.len()).sum();
        commands_per_entry.observe(count as f64);
        let raft = raft.clone();
        tokio::spawn(async move {
            let mut sizes = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            let mut commands = Vec::with_capacity(count);
            for pending in batch {
                sizes.push(pending.commands.len());
                replies.push(pending.reply);
                commands.extend(pending.commands);
            }
            let write = raft.client_write(ShardRequest::new(commands));
            tokio::pin!(write);
            let result = tokio::select! {
                result = &mut write => result,
                () = tokio::time::sleep(NODE_SLOT_HOLD) => {
                    drop(node_slot);
                    write.await
                }
            };
            drop(slot);
            match result {
                Ok(response) => {
                    let mut results = response.data.0.into_iter();
                    for (size, reply) in sizes.into_iter().zip(replies) {
                        let part: Vec<_> = results.by_ref().take(size).collect();
                        let _ = reply.send(Ok(ForwardResponse::Written(ShardResponse(part))));
                    }
                }
                Err(e) => {
                    let error = crate::node::write_error(e);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// Bytes of event data in `commands` (what dominates an entry's size).
fn payload_bytes(commands: &[Command]) -> usize {
    commands.iter().map(Command::payload_bytes).sum()
}
