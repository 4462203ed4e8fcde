//! Typing indicators, presence, collaborative sessions and read receipts.
//!
//! ```text
//!  client.typing("chat.1")            "started", at most every 3 s per channel (throttled)
//!  client.set_presence(Busy, text)    this device's status, replicated
//!  client.session_op("doc.1", op, v)  Applied { version } | Conflict { current, version }
//!  client.mark_read("chat.1", 42)     read position, unread count
//!  client.notices()                   typing.* and message.read of subscribed channels
//! ```

use crate::types::Position;
use crate::{Client, Error};
use chorus_proto::client::{self as wire, client_frame, server_frame};
use futures::Stream;
use serde_json::Value;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// How often [`Client::typing`] actually sends "started" while called repeatedly.
pub const TYPING_REPEAT: Duration = Duration::from_secs(3);

/// A live-only message of a subscribed channel: `typing.started`, `typing.stopped`,
/// `message.read`, `presence.join`, `presence.leave`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The channel.
    pub channel: String,
    /// What happened.
    pub event_type: String,
    /// JSON text: `{"user","device"}` for typing, `{"user","offset"}` for reads.
    pub data: String,
    /// Who caused it.
    pub publisher: String,
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
}

impl Notice {
    /// The data, parsed.
    pub fn json(&self) -> serde_json::Result<Value> {
        serde_json::from_str(&self.data)
    }
}

/// A stream of notices for every subscription of the client. Notices are live only: a
/// reader that falls more than 1024 behind skips the oldest.
pub struct Notices {
    inner: Pin<Box<dyn Stream<Item = Notice> + Send>>,
}

impl Notices {
    fn new(receiver: broadcast::Receiver<Notice>) -> Notices {
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(notice) => return Some((notice, receiver)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Notices {
            inner: Box::pin(stream),
        }
    }
}

impl Stream for Notices {
    type Item = Notice;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Notice>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A device's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePresence {
    /// The device.
    pub device: String,
    /// `online`, `away`, `busy`, `offline`.
    pub status: String,
    /// Free text, if any.
    pub custom_status: Option<String>,
    /// Last seen connected, ms since the Unix epoch.
    pub last_seen_ms: u64,
}

/// A user's presence: online while any device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The user.
    pub user: String,
    /// `online`, `away`, `busy`, `offline`.
    pub status: String,
    /// Free text, if any.
    pub custom_status: Option<String>,
    /// Last seen, ms since the Unix epoch.
    pub last_seen_ms: u64,
    /// Every device known.
    pub devices: Vec<DevicePresence>,
}

/// A session's state.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSnapshot {
    /// The session's channel.
    pub session: String,
    /// `lww` or `reject`.
    pub policy: String,
    /// The document.
    pub document: Value,
    /// Operations applied so far.
    pub version: u64,
    /// The session channel's position at this version: subscribe with `since` it to get
    /// every later operation.
    pub position: Position,
}

/// An operation on a session's document. Paths are JSON Pointers (`/items/0/title`).
#[derive(Debug, Clone, PartialEq)]
pub enum SessionOp {
    /// Put a value.
    Set(String, Value),
    /// Remove a value.
    Delete(String),
    /// Add a number.
    Increment(String, Value),
    /// Push onto a list.
    Append(String, Value),
}

/// What the session did with an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionOpOutcome {
    /// Applied.
    Applied {
        /// The version after it.
        version: u64,
        /// The value it replaced (`None`: nothing was there).
        previous: Option<Value>,
        /// `lww`: the path had changed after the base version; `previous` is what was lost.
        overwrote_newer: bool,
        /// Its `session.operation_applied` event.
        position: Position,
    },
    /// Refused by the `reject` policy: rebase on `current` and `version`, then send again.
    Conflict {
        /// The session's version.
        version: u64,
        /// The value at the path now.
        current: Option<Value>,
    },
}

/// A read position in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPosition {
    /// The channel.
    pub channel: String,
    /// Read up to this offset.
    pub read_offset: u64,
    /// The channel's last offset.
    pub last_offset: u64,
    /// Events after the read position.
    pub unread: u64,
}

fn json_or_none(text: &str) -> Result<Option<Value>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| Error::Protocol(format!("undecodable JSON from the node: {e}")))
}

fn position(p: Option<wire::Position>) -> Position {
    let p = p.unwrap_or_default();
    Position {
        epoch: p.epoch,
        offset: p.offset,
    }
}

fn unexpected<T>(what: &str, other: server_frame::Kind) -> Result<T, Error> {
    Err(Error::Protocol(format!("unexpected reply to {what}: {other:?}")))
}

fn read_position(p: wire::ReadPosition) -> ReadPosition {
    ReadPosition {
        channel: p.channel,
        read_offset: p.read_offset,
        last_offset: p.last_offset,
        unread: p.unread,
    }
}

fn snapshot(s: wire::SessionSnapshot) -> Result<SessionSnapshot, Error> {
    Ok(SessionSnapshot {
        document: json_or_none(&s.document)?.unwrap_or(Value::Null),
        session: s.session,
        policy: s.policy,
        version: s.version,
        position: position(s.position),
    })
}

impl Client {
    async fn expect_ack(&self, what: &str, kind: client_frame::Kind) -> Result<(), Error> {
        match self.request(kind).await? {
            server_frame::Kind::Ack(_) => Ok(()),
            other => unexpected(what, other),
        }
    }

    /// Says this user is typing in `channel`. Call it on every keystroke: it sends at most
    /// every [`TYPING_REPEAT`] per channel (the node stops a typist ~6 s after the last one).
    pub async fn typing(&self, channel: &str) -> Result<(), Error> {
        {
            let mut sent = self.inner.typing_sent.lock().expect("typing lock");
            let now = Instant::now();
            if sent
                .get(channel)
                .is_some_and(|at| now.duration_since(*at) < TYPING_REPEAT)
            {
                return Ok(());
            }
            sent.insert(channel.to_string(), now);
        }
        let kind = client_frame::Kind::Typing(wire::Typing {
            channel: channel.to_string(),
            typing: true,
        });
        self.expect_ack("typing", kind).await
    }

    /// Says this user stopped typing in `channel`.
    pub async fn stop_typing(&self, channel: &str) -> Result<(), Error> {
        self.inner
            .typing_sent
            .lock()
            .expect("typing lock")
            .remove(channel);
        let kind = client_frame::Kind::Typing(wire::Typing {
            channel: channel.to_string(),
            typing: false,
        });
        self.expect_ack("typing", kind).await
    }

    /// Who is typing in `channel` now: (user, device) pairs.
    pub async fn typists(&self, channel: &str) -> Result<Vec<(String, String)>, Error> {
        let kind = client_frame::Kind::TypingQuery(wire::TypingQuery {
            channel: channel.to_string(),
        });
        match self.request(kind).await? {
            server_frame::Kind::TypingState(state) => {
                Ok(state.typists.into_iter().map(|t| (t.user, t.device)).collect())
            }
            other => unexpected("typing query", other),
        }
    }

    /// The notices (typing, read receipts) of every subscription of this client, from now on.
    pub fn notices(&self) -> Notices {
        Notices::new(self.inner.shared.notices.subscribe())
    }

    /// Sets this device's status (`online`, `away`, `busy`, `offline`) and optional text;
    /// answers once replicated. The client sets it again after every reconnect.
    pub async fn set_presence(&self, status: &str, custom_status: Option<&str>) -> Result<(), Error> {
        let request = wire::SetPresence {
            status: status.to_string(),
            custom_status: custom_status.unwrap_or_default().to_string(),
        };
        self.expect_ack("set presence", client_frame::Kind::SetPresence(request.clone()))
            .await?;
        *self.inner.shared.presence.lock().expect("presence lock") = Some(request);
        Ok(())
    }

    /// A user's presence (needs subscribe permission on `presence.<user>`). Subscribe to
    /// that channel for `presence.online` / `presence.changed` / `presence.offline` events.
    pub async fn presence(&self, user: &str) -> Result<Presence, Error> {
        let kind = client_frame::Kind::PresenceQuery(wire::PresenceQuery {
            user: user.to_string(),
        });
        match self.request(kind).await? {
            server_frame::Kind::Presence(p) => Ok(Presence {
                user: p.user,
                status: p.status,
                custom_status: Some(p.custom_status).filter(|c| !c.is_empty()),
                last_seen_ms: p.last_seen_ms,
                devices: p
                    .devices
                    .into_iter()
                    .map(|d| DevicePresence {
                        device: d.device,
                        status: d.status,
                        custom_status: Some(d.custom_status).filter(|c| !c.is_empty()),
                        last_seen_ms: d.last_seen_ms,
                    })
                    .collect(),
            }),
            other => unexpected("presence query", other),
        }
    }

    /// Creates a session on channel `session` with policy `lww` or `reject`.
    pub async fn create_session(
        &self,
        session: &str,
        policy: &str,
        document: &Value,
    ) -> Result<SessionSnapshot, Error> {
        let kind = client_frame::Kind::SessionCreate(wire::SessionCreate {
            session: session.to_string(),
            policy: policy.to_string(),
            document: document.to_string(),
        });
        match self.request(kind).await? {
            server_frame::Kind::Session(s) => snapshot(s),
            other => unexpected("session create", other),
        }
    }

    /// A session's document and version, with the position to subscribe from to follow it.
    pub async fn session(&self, session: &str) -> Result<SessionSnapshot, Error> {
        let kind = client_frame::Kind::SessionGet(wire::SessionGet {
            session: session.to_string(),
        });
        match self.request(kind).await? {
            server_frame::Kind::Session(s) => snapshot(s),
            other => unexpected("session get", other),
        }
    }

    /// Applies `op` based on `base_version` (the version this client last saw). Not resent
    /// after a reconnect: when the connection is lost before the reply, the error says the
    /// outcome is unknown (read the session to find out).
    pub async fn session_op(
        &self,
        session: &str,
        op: SessionOp,
        base_version: u64,
    ) -> Result<SessionOpOutcome, Error> {
        let (name, path, value) = match op {
            SessionOp::Set(path, value) => ("set", path, value.to_string()),
            SessionOp::Delete(path) => ("delete", path, String::new()),
            SessionOp::Increment(path, value) => ("increment", path, value.to_string()),
            SessionOp::Append(path, value) => ("append", path, value.to_string()),
        };
        let kind = client_frame::Kind::SessionOp(wire::SessionOp {
            session: session.to_string(),
            op: name.to_string(),
            path,
            value,
            base_version,
        });
        match self.request(kind).await? {
            server_frame::Kind::SessionOpResult(r) if r.applied => Ok(SessionOpOutcome::Applied {
                version: r.version,
                previous: json_or_none(&r.previous)?,
                overwrote_newer: r.overwrote_newer,
                position: position(r.position),
            }),
            server_frame::Kind::SessionOpResult(r) => Ok(SessionOpOutcome::Conflict {
                version: r.version,
                current: json_or_none(&r.current)?,
            }),
            other => unexpected("session op", other),
        }
    }

    /// Who is subscribed to `channel` (one with a roster): (user, device) pairs, sorted.
    pub async fn roster(&self, channel: &str) -> Result<Vec<(String, String)>, Error> {
        let kind = client_frame::Kind::RosterQuery(wire::RosterQuery {
            channel: channel.to_string(),
        });
        match self.request(kind).await? {
            server_frame::Kind::Roster(roster) => {
                Ok(roster.members.into_iter().map(|m| (m.user, m.device)).collect())
            }
            other => unexpected("roster query", other),
        }
    }

    /// Marks `channel` read up to `offset` (positions never move back).
    pub async fn mark_read(&self, channel: &str, offset: u64) -> Result<ReadPosition, Error> {
        let kind = client_frame::Kind::MarkRead(wire::MarkRead {
            channel: channel.to_string(),
            offset,
        });
        match self.request(kind).await? {
            server_frame::Kind::ReadPosition(p) => Ok(read_position(p)),
            other => unexpected("mark read", other),
        }
    }

    /// Read positions and unread counts of this user: in `channels`, or in every channel the
    /// user marked read when empty.
    pub async fn unread(&self, channels: &[&str]) -> Result<Vec<ReadPosition>, Error> {
        let kind = client_frame::Kind::UnreadQuery(wire::UnreadQuery {
            channels: channels.iter().map(|c| c.to_string()).collect(),
        });
        match self.request(kind).await? {
            server_frame::Kind::Unread(u) => Ok(u.channels.into_iter().map(read_position).collect()),
            other => unexpected("unread query", other),
        }
    }
}

/// Hands a notice to every [`Notices`] stream.
pub(crate) fn deliver_notice(notices: &broadcast::Sender<Notice>, notice: wire::Notice) {
    let _ = notices.send(Notice {
        channel: notice.channel,
        event_type: notice.event_type,
        data: notice.data,
        publisher: notice.publisher,
        time_ms: notice.time_ms,
    });
}
