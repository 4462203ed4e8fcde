//! The audit log: security-relevant events of a node as JSON lines, apart from the operational
//! log so that it can be kept, shipped and read on its own (`<data_dir>/audit.log` by default).
//!
//! Recorded: refused credentials and rates (HTTP, QUIC, WebSocket), admin actions, membership
//! changes and revocations, each with the time, the node and who (user, address) when known.
//!
//! One thread owns the file; recording never blocks the caller. The queue is bounded: under a
//! flood of refusals what does not fit is counted and the count is written as a `dropped`
//! line, so a flood cannot fill memory and the log says what it missed. Lines are written
//! (not fsynced) as they come: an audit line may be lost with a power loss, never reordered.

use serde::Serialize;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// Lines queued for the writer before new ones are dropped (and counted).
const QUEUE: usize = 4096;

/// One audited event.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A request or connection refused for its credentials, permissions or rate.
    Refused {
        /// `http`, `quic` or `websocket`.
        face: &'static str,
        /// The client's address, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
        /// The token's subject, when it verified.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The stable error code (`unauthorized`, `forbidden`, `rate_limited`).
        code: &'static str,
        /// What was asked (`POST /api/v1/...`, `connect`).
        target: String,
        /// Why.
        reason: String,
    },
    /// An administrator did something.
    Admin {
        /// The admin token's subject.
        user: String,
        /// `join`, `remove`, `revoke`, `isolation`.
        action: &'static str,
        /// The request's parameters.
        detail: serde_json::Value,
    },
    /// A node was added to or removed from every shard.
    Membership {
        /// `added` or `removed`.
        action: &'static str,
        /// The node.
        node: u64,
        /// Its address, when added.
        #[serde(skip_serializing_if = "Option::is_none")]
        raft_addr: Option<String>,
    },
    /// A live connection was closed because its token was revoked.
    ConnectionRevoked {
        /// `quic` or `websocket`.
        face: &'static str,
        /// The token's subject.
        user: String,
        /// Why.
        reason: String,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    ts_ms: u64,
    /// The node that wrote the line (an event's own `node` is the node it is about).
    at_node: u64,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

/// Where a node's audit events go. Cloning is cheap and shares it.
#[derive(Clone)]
pub struct AuditLog {
    node: u64,
    queue: Option<mpsc::SyncSender<AuditEvent>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("enabled", &self.queue.is_some())
            .finish()
    }
}

impl AuditLog {
    /// Appends node `node`'s events to `path` (created `0600` if absent).
    pub fn open(path: &Path, node: u64) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let (queue, events) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("chorus-audit".into())
            .spawn(move || write_lines(file, node, events, counted))?;
        Ok(AuditLog {
            node,
            queue: Some(queue),
            dropped,
        })
    }

    /// A log that records nothing.
    pub fn disabled() -> Self {
        AuditLog {
            node: 0,
            queue: None,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records `event`; never blocks (a full queue drops it and counts it).
    pub fn record(&self, event: AuditEvent) {
        if let Some(queue) = &self.queue
            && queue.try_send(event).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The node this log belongs to.
    pub fn node(&self) -> u64 {
        self.node
    }
}

fn write_lines(
    mut file: std::fs::File,
    node: u64,
    events: mpsc::Receiver<AuditEvent>,
    dropped: Arc<AtomicU64>,
) {
    while let Ok(event) = events.recv() {
        let mut text = String::new();
        let missed = dropped.swap(0, Ordering::Relaxed);
        if missed > 0 {
            let line = serde_json::json!({
                "ts_ms": crate::clock::unix_ms(), "at_node": node, "event": "dropped", "count": missed,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let line = Line {
            ts_ms: crate::clock::unix_ms(),
            at_node: node,
            event: &event,
        };
        match serde_json::to_string(&line) {
            Ok(json) => text.push_str(&json),
            Err(e) => text
                .push_str(&serde_json::json!({"event": "unencodable", "error": e.to_string()}).to_string()),
        }
        text.push('\n');
        if let Err(e) = file.write_all(text.as_bytes()) {
            tracing::error!(error = %e, "writing the audit log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines_with_time_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 7).unwrap();
        log.record(AuditEvent::Membership {
            action: "added",
            node: 4,
            raft_addr: Some("10.0.0.4:7101".into()),
        });
        log.record(AuditEvent::Admin {
            user: "ops".into(),
            action: "revoke",
            detail: serde_json::json!({"user": "eve"}),
        });
        drop(log);
        let lines = (0..200)
            .find_map(|_| {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.lines().count() >= 2 {
                    return Some(text);
                }
                std::thread::yield_now();
                std::thread::sleep(std::time::Duration::from_millis(5));
                None
            })
            .expect("both lines written");
        let parsed: Vec<serde_json::Value> =
            lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(parsed[0]["event"], "membership");
        assert_eq!(parsed[0]["node"], 4);
        assert_eq!(parsed[0]["at_node"], 7);
        assert_eq!(parsed[1]["event"], "admin");
        assert_eq!(parsed[1]["user"], "ops");
        assert!(parsed[1]["ts_ms"].as_u64().unwrap() > 0);
    }
}
