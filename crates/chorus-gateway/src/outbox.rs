//! A connection's outbound queues: one per priority class, bounded, never blocking the
//! producer (the hub's dispatch loop, request handlers).
//!
//! ```text
//!  push(class, frame) ──> [critical][high][normal][low] ──> writer(s) drain a whole class
//!                          (own cap) (shared cap ........)   per wake-up: one flush per batch
//! ```
//!
//! When the shared cap is reached, queued low frames are dropped first, then normal ones;
//! a high frame that still does not fit is refused, and the caller (the hub) stops that
//! subscription and queues a critical `Resync` so the client recovers from its offsets.
//! A critical frame that does not fit means the client reads nothing at all: the connection
//! is closed.

use chorus_proto::client::ServerFrame;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Priority classes, most urgent first. On QUIC each has its own stream and stream priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Replies, errors, heartbeats, resync and disconnect notices.
    Critical = 0,
    /// Channel events.
    High = 1,
    /// Presence and membership changes.
    Normal = 2,
    /// Statistics.
    Low = 3,
}

impl Priority {
    /// Every class, most urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];
}

/// Bytes of non-critical frames [`Outbox::next_any`] takes per batch.
pub const ANY_BATCH_BYTES: usize = 256 * 1024;

/// The frame did not fit in its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Caps of one connection's queues.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Bytes of queued high, normal and low frames together.
    pub max_bytes: usize,
    /// Bytes of queued critical frames.
    pub max_critical_bytes: usize,
}

/// Counters shared by every connection's outbox.
#[derive(Debug, Clone, Default)]
pub struct OutboxMetrics {
    /// Bytes queued on all connections.
    pub queued_bytes: Gauge,
    /// Frames dropped to make room or refused, all connections.
    pub dropped_frames: Counter,
}

#[derive(Default)]
struct Queues {
    frames: [VecDeque<(ServerFrame, usize)>; 4],
    bytes: [usize; 4],
    closed: bool,
    /// Classes whose writer was started ([`Outbox::first_of_new_class`]).
    writer_started: [bool; 4],
}

/// One connection's queues. Shared (`Arc`) by its producers and its writer tasks.
pub struct Outbox {
    queues: Mutex<Queues>,
    ready: [Notify; 4],
    ready_any: Notify,
    /// A frame was queued in a class without a writer.
    new_class: Notify,
    closed: Notify,
    limits: OutboxLimits,
    metrics: OutboxMetrics,
}

impl Outbox {
    /// Empty queues with the given caps.
    pub fn new(limits: OutboxLimits, metrics: OutboxMetrics) -> Self {
        Outbox {
            queues: Mutex::default(),
            ready: Default::default(),
            ready_any: Notify::new(),
            new_class: Notify::new(),
            closed: Notify::new(),
            limits,
            metrics,
        }
    }

    /// Queues `frame`; never waits. Fails when the class is full (see the module docs).
    pub fn push(&self, priority: Priority, frame: ServerFrame) -> Result<(), QueueFull> {
        let size = frame.encoded_len();
        let class = priority as usize;
        let writer_started = {
            let mut q = self.queues.lock().expect("outbox lock poisoned");
            if q.closed {
                return Err(QueueFull);
            }
            if priority == Priority::Critical {
                if q.bytes[0] + size > self.limits.max_critical_bytes {
                    self.metrics.dropped_frames.inc();
                    return Err(QueueFull);
                }
            } else {
                let mut shared = q.bytes[1] + q.bytes[2] + q.bytes[3];
                // Make room by dropping the oldest frames of less urgent classes.
                for victim in [Priority::Low as usize, Priority::Normal as usize] {
                    while shared + size > self.limits.max_bytes && victim > class {
                        let Some((_, dropped)) = q.frames[victim].pop_front() else {
                            break;
                        };
                        q.bytes[victim] -= dropped;
                        shared -= dropped;
                        self.metrics.queued_bytes.dec_by(dropped as i64);
                        self.metrics.dropped_frames.inc();
                    }
                }
                if shared + size > self.limits.max_bytes {
                    self.metrics.dropped_frames.inc();
                    return Err(QueueFull);
                }
            }
            q.frames[class].push_back((frame, size));
            q.bytes[class] += size;
            q.writer_started[class]
        };
        if !writer_started {
            self.new_class.notify_one();
        }
        self.metrics.queued_bytes.inc_by(size as i64);
        self.ready[class].notify_one();
        self.ready_any.notify_one();
        Ok(())
    }

    /// Waits for frames of `priority` and takes all of them. `None` once closed and empty.
    pub async fn next_of(&self, priority: Priority) -> Option<Vec<ServerFrame>> {
        let class = priority as usize;
        loop {
            {
                let mut q = self.queues.lock().expect("outbox lock poisoned");
                if !q.frames[class].is_empty() {
                    return Some(self.take(&mut q, &[class]));
                }
                if q.closed {
                    return None;
                }
            }
            self.ready[class].notified().await;
            // Woken by the first frame of a burst (the replies of one commit, the events of
            // one apply): let the tasks queueing the others run before taking, so that the
            // burst leaves in one write (and few packets) instead of a write each.
            tokio::task::yield_now().await;
        }
    }

    /// Records that `class` has a writer from now on (see [`Self::first_of_new_class`]).
    pub fn writer_started(&self, class: Priority) {
        self.queues.lock().expect("outbox lock poisoned").writer_started[class as usize] = true;
    }

    /// Waits until a class without a writer has frames, records it as started and names it:
    /// a writer per class is started on the class's first frame, so that an idle connection
    /// holds none. Only pushes to such classes wake it. `None` once closed with nothing queued
    /// in such a class.
    pub async fn first_of_new_class(&self) -> Option<Priority> {
        loop {
            {
                let mut q = self.queues.lock().expect("outbox lock poisoned");
                let new = Priority::ALL.into_iter().find(|class| {
                    !q.writer_started[*class as usize] && !q.frames[*class as usize].is_empty()
                });
                if let Some(class) = new {
                    q.writer_started[class as usize] = true;
                    return Some(class);
                }
                if q.closed {
                    return None;
                }
            }
            self.new_class.notified().await;
        }
    }

    /// Waits for frames of any class and takes every critical one, then less urgent ones up
    /// to [`ANY_BATCH_BYTES`] (at least one), so that a critical frame queued meanwhile waits
    /// for one bounded batch at most. `None` once closed and empty.
    pub async fn next_any(&self) -> Option<Vec<ServerFrame>> {
        loop {
            {
                let mut q = self.queues.lock().expect("outbox lock poisoned");
                if q.frames.iter().any(|f| !f.is_empty()) {
                    let mut out = self.take(&mut q, &[Priority::Critical as usize]);
                    let mut budget = ANY_BATCH_BYTES;
                    let mut taken = 0;
                    for class in 1..4 {
                        while let Some((_, size)) = q.frames[class].front() {
                            if *size > budget && taken > 0 {
                                break;
                            }
                            let (frame, size) = q.frames[class].pop_front().expect("front exists");
                            q.bytes[class] -= size;
                            budget = budget.saturating_sub(size);
                            taken += size;
                            out.push(frame);
                        }
                    }
                    self.metrics.queued_bytes.dec_by(taken as i64);
                    return Some(out);
                }
                if q.closed {
                    return None;
                }
            }
            self.ready_any.notified().await;
            tokio::task::yield_now().await; // as in `next_of`
        }
    }

    fn take(&self, q: &mut Queues, classes: &[usize]) -> Vec<ServerFrame> {
        let mut out = Vec::new();
        let mut taken = 0;
        for &class in classes {
            taken += q.bytes[class];
            q.bytes[class] = 0;
            // Taken whole, buffer and all: an idle connection keeps no queue capacity (the
            // first reply's left 672 bytes behind on every connection).
            out.extend(
                std::mem::take(&mut q.frames[class])
                    .into_iter()
                    .map(|(frame, _)| frame),
            );
        }
        self.metrics.queued_bytes.dec_by(taken as i64);
        out
    }

    /// Accepts no more frames; writers drain what is queued, then see the end.
    pub fn close(&self) {
        self.queues.lock().expect("outbox lock poisoned").closed = true;
        for ready in &self.ready {
            ready.notify_one();
        }
        self.ready_any.notify_one();
        self.new_class.notify_one();
        self.closed.notify_waiters();
    }

    /// Resolves once [`Outbox::close`] was called.
    pub async fn wait_closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Whether [`Outbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.queues.lock().expect("outbox lock poisoned").closed
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let q = self.queues.get_mut().expect("outbox lock poisoned");
        let left: usize = q.bytes.iter().sum();
        self.metrics.queued_bytes.dec_by(left as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_proto::client::{Event, server_frame};

    fn event(bytes: usize) -> ServerFrame {
        ServerFrame {
            id: 0,
            kind: Some(server_frame::Kind::Event(Event {
                data: "x".repeat(bytes),
                ..Default::default()
            })),
        }
    }

    fn outbox(max_bytes: usize) -> Outbox {
        Outbox::new(
            OutboxLimits {
                max_bytes,
                max_critical_bytes: 64,
            },
            OutboxMetrics::default(),
        )
    }

    #[tokio::test]
    async fn drops_low_classes_before_refusing_high_frames() {
        let size = event(100).encoded_len();
        let out = outbox(size * 3);
        out.push(Priority::Low, event(100)).unwrap();
        out.push(Priority::Normal, event(100)).unwrap();
        out.push(Priority::High, event(100)).unwrap();
        // Full: the low frame goes, then the normal one, then high frames are refused.
        out.push(Priority::High, event(100)).unwrap();
        out.push(Priority::High, event(100)).unwrap();
        assert_eq!(out.push(Priority::High, event(100)), Err(QueueFull));
        assert_eq!(out.push(Priority::Low, event(100)), Err(QueueFull));
        assert_eq!(out.metrics.dropped_frames.get(), 4);
        assert_eq!(out.metrics.queued_bytes.get(), (size * 3) as i64);
        assert_eq!(out.next_of(Priority::High).await.unwrap().len(), 3);
        assert_eq!(out.metrics.queued_bytes.get(), 0);
    }

    #[tokio::test]
    async fn any_class_batches_are_bounded_so_critical_frames_wait_little() {
        let out = outbox(10 * ANY_BATCH_BYTES);
        let big = ANY_BATCH_BYTES * 3 / 4;
        for _ in 0..3 {
            out.push(Priority::High, event(big)).unwrap();
        }
        assert_eq!(out.next_any().await.unwrap().len(), 1);
        let ping = ServerFrame {
            id: 0,
            kind: Some(server_frame::Kind::Ping(Default::default())),
        };
        out.push(Priority::Critical, ping.clone()).unwrap();
        let batch = out.next_any().await.unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0], ping);
        assert_eq!(out.next_any().await.unwrap().len(), 1);
        assert_eq!(out.metrics.queued_bytes.get(), 0);
    }

    #[tokio::test]
    async fn critical_frames_have_their_own_cap_and_come_first() {
        let out = outbox(10_000);
        let ping = ServerFrame {
            id: 0,
            kind: Some(server_frame::Kind::Ping(Default::default())),
        };
        out.push(Priority::High, event(10)).unwrap();
        out.push(Priority::Critical, ping.clone()).unwrap();
        assert_eq!(out.push(Priority::Critical, event(100)), Err(QueueFull));
        let batch = out.next_any().await.unwrap();
        assert_eq!(batch, vec![ping, event(10)]);
        out.close();
        assert!(out.push(Priority::Critical, event(1)).is_err());
        assert!(out.next_any().await.is_none());
    }

    #[tokio::test]
    async fn a_class_is_named_once_it_has_frames_and_was_not_started() {
        let out = outbox(10_000);
        out.writer_started(Priority::Critical);
        out.push(Priority::Critical, event(1)).unwrap();
        out.push(Priority::Normal, event(1)).unwrap();
        assert_eq!(out.first_of_new_class().await, Some(Priority::Normal));
        let waiting = out.first_of_new_class();
        tokio::pin!(waiting);
        assert!(
            futures::poll!(&mut waiting).is_pending(),
            "no new class has frames"
        );
        out.push(Priority::Normal, event(1)).unwrap();
        assert!(futures::poll!(&mut waiting).is_pending(), "normal has a writer");
        out.push(Priority::Low, event(1)).unwrap();
        assert_eq!(waiting.await, Some(Priority::Low));
        out.close();
        assert_eq!(out.first_of_new_class().await, None);
        assert_eq!(out.next_of(Priority::Low).await.unwrap().len(), 1);
    }
}
