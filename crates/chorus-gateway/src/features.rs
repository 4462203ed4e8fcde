//! The client requests of typing indicators, presence, collaborative sessions and read
//! receipts: checked here (names, permissions, sizes), carried out by the cluster core.
//!
//! ```text
//!  Typing        ─► typing registry (node-to-node broadcast, no Raft) ─► Ack
//!  SetPresence   ─► the connection's presence writer (Raft)            ─► Ack
//!  SessionOp     ─► session channel's shard leader (Raft)              ─► SessionOpResult | Error
//!  MarkRead      ─► channel's shard leader (Raft)                      ─► ReadPosition
//!  Subscribe     ─► roster membership, channels with a roster (Raft)     (session.rs)
//!  *Query / Get  ─► read barrier, then this node's applied state       ─► state
//! ```

use crate::hub::error_kind;
use crate::outbox::Priority;
use crate::session::Session;
use chorus_access::Operation;
use chorus_cluster::ClusterError;
use chorus_core::collab::{ConflictPolicy, OpError, parse_op};
use chorus_core::command::ReadPosition;
use chorus_core::presence::{MAX_CUSTOM_STATUS_LEN, PRESENCE_CHANNEL_PREFIX, UserPresence};
use chorus_core::typing::Typist;
use chorus_core::{ChannelName, ErrorCode, PresenceStatus};
use chorus_proto::client::{self, ServerFrame, server_frame::Kind};
use std::future::Future;

/// Most channels one unread query may name.
const MAX_UNREAD_CHANNELS: usize = 256;

fn position(epoch: u64, offset: u64) -> Option<client::Position> {
    Some(client::Position { epoch, offset })
}

fn read_position(p: &ReadPosition) -> client::ReadPosition {
    client::ReadPosition {
        channel: p.channel.to_string(),
        read_offset: p.read_offset,
        last_offset: p.last_offset,
        unread: p.unread(),
    }
}

fn presence_frame(user: &str, p: &UserPresence) -> client::Presence {
    client::Presence {
        user: user.to_string(),
        status: p.status().as_str().to_string(),
        custom_status: p.custom_status().unwrap_or_default().to_string(),
        last_seen_ms: p.last_seen_ms(),
        devices: p
            .devices
            .iter()
            .map(|(name, d)| client::DevicePresence {
                device: name.clone(),
                status: d.status.as_str().to_string(),
                custom_status: d.custom_status.clone().unwrap_or_default(),
                last_seen_ms: d.last_seen_ms,
            })
            .collect(),
    }
}

fn cluster_error(e: ClusterError) -> Kind {
    error_kind(e.code(), e.to_string(), 0)
}

impl Session {
    fn typist(&self) -> Typist {
        Typist {
            user: self.claims.sub.clone(),
            device: self
                .claims
                .device
                .clone()
                .unwrap_or_else(|| crate::session::DEFAULT_DEVICE.to_string()),
        }
    }

    /// Runs `work` in its own task (bounded per connection) and replies with what it answers.
    fn spawn_reply<F>(&self, id: u64, work: F)
    where
        F: Future<Output = Kind> + Send + 'static,
    {
        let Some(permit) = self.permit(id) else { return };
        let outbox = self.subscriber.outbox.clone();
        tokio::spawn(async move {
            let kind = work.await;
            if outbox
                .push(Priority::Critical, ServerFrame { id, kind: Some(kind) })
                .is_err()
            {
                outbox.close();
            }
            drop(permit);
        });
    }

    /// JSON text as a value, within the payload limit; `None` after an error reply.
    fn json_value(&self, id: u64, field: &str, text: &str) -> Option<serde_json::Value> {
        let limit = self.gateway.inner.config.max_payload_bytes;
        if text.len() > limit {
            self.error(
                id,
                ErrorCode::PayloadTooLarge,
                format!("{field} is {} bytes; the limit is {limit}", text.len()),
                0,
            );
            return None;
        }
        match serde_json::from_str(text) {
            Ok(value) => Some(value),
            Err(e) => {
                self.error(id, ErrorCode::BadRequest, format!("{field} is not JSON: {e}"), 0);
                None
            }
        }
    }

    pub(crate) fn typing(&self, id: u64, request: client::Typing) {
        let Some(channel) = self.authorized_channel(id, request.channel, Operation::Publish) else {
            return;
        };
        let typing = self.gateway.inner.cluster.typing();
        if request.typing {
            typing.started(&channel, self.typist(), self.subscriber.conn);
        } else {
            typing.stopped(&channel, self.typist());
        }
        self.reply(id, Kind::Ack(client::Ack {}));
    }

    pub(crate) fn typing_query(&self, id: u64, request: client::TypingQuery) {
        let Some(channel) = self.authorized_channel(id, request.channel, Operation::Subscribe) else {
            return;
        };
        let typing = self.gateway.inner.cluster.typing().clone();
        self.spawn_reply(id, async move {
            let typists = typing.current(channel.clone()).await;
            Kind::TypingState(client::TypingState {
                channel: channel.to_string(),
                typists: typists
                    .into_iter()
                    .map(|t| client::Typist {
                        user: t.user,
                        device: t.device,
                    })
                    .collect(),
            })
        });
    }

    pub(crate) fn set_presence(&self, id: u64, request: client::SetPresence) {
        let status = match PresenceStatus::parse(&request.status) {
            Ok(status) => status,
            Err(message) => return self.error(id, ErrorCode::BadRequest, message, 0),
        };
        if request.custom_status.len() > MAX_CUSTOM_STATUS_LEN {
            return self.error(
                id,
                ErrorCode::BadRequest,
                format!("custom_status must be at most {MAX_CUSTOM_STATUS_LEN} bytes"),
                0,
            );
        }
        let custom = Some(request.custom_status).filter(|c| !c.is_empty());
        let written = self.presence.set(status, custom);
        self.spawn_reply(id, async move {
            match written.await {
                Ok(()) => Kind::Ack(client::Ack {}),
                Err(e) => cluster_error(e),
            }
        });
    }

    pub(crate) fn presence_query(&self, id: u64, request: client::PresenceQuery) {
        let name = format!("{PRESENCE_CHANNEL_PREFIX}{}", request.user);
        if ChannelName::new(name.clone()).is_err() {
            return self.error(
                id,
                ErrorCode::BadRequest,
                format!(
                    "user {:?} has no presence channel (names use letters, digits, - _ : @ = +)",
                    request.user
                ),
                0,
            );
        }
        if self.authorized_channel(id, name, Operation::Subscribe).is_none() {
            return;
        }
        let cluster = self.gateway.inner.cluster.clone();
        self.spawn_reply(id, async move {
            match cluster.presence(&request.user).await {
                Ok(p) => Kind::Presence(presence_frame(&request.user, &p)),
                Err(e) => cluster_error(e),
            }
        });
    }

    pub(crate) fn session_create(&self, id: u64, request: client::SessionCreate) {
        let Some(channel) = self.session_channel(id, request.session, Operation::Publish) else {
            return;
        };
        let policy = match ConflictPolicy::parse(&request.policy) {
            Ok(policy) => policy,
            Err(message) => return self.error(id, ErrorCode::BadRequest, message, 0),
        };
        let document = if request.document.is_empty() {
            serde_json::json!({})
        } else {
            match self.json_value(id, "document", &request.document) {
                Some(value) => value,
                None => return,
            }
        };
        let cluster = self.gateway.inner.cluster.clone();
        let creator = self.claims.sub.clone();
        self.spawn_reply(id, async move {
            let text = document.to_string();
            match cluster
                .create_session(channel.clone(), policy, document, &creator)
                .await
            {
                Ok(p) => Kind::Session(client::SessionSnapshot {
                    session: channel.to_string(),
                    policy: policy.as_str().to_string(),
                    document: text,
                    version: p.version,
                    position: position(p.epoch, p.offset),
                }),
                Err(e) => cluster_error(e),
            }
        });
    }

    pub(crate) fn session_op(&self, id: u64, request: client::SessionOp) {
        let Some(channel) = self.session_channel(id, request.session, Operation::Publish) else {
            return;
        };
        let value = if request.op == "delete" || request.value.is_empty() {
            None
        } else {
            match self.json_value(id, "value", &request.value) {
                Some(value) => Some(value),
                None => return,
            }
        };
        let (path, kind) = match parse_op(&request.op, &request.path, value) {
            Ok(op) => op,
            Err(message) => return self.error(id, ErrorCode::BadRequest, message, 0),
        };
        let cluster = self.gateway.inner.cluster.clone();
        let author = self.claims.sub.clone();
        let base = request.base_version;
        self.spawn_reply(id, async move {
            match cluster.session_op(channel, path, kind, base, &author).await {
                Ok(done) => Kind::SessionOpResult(client::SessionOpResult {
                    applied: true,
                    version: done.applied.version,
                    previous: done.applied.previous.map(|v| v.to_string()).unwrap_or_default(),
                    overwrote_newer: done.applied.overwrote_newer,
                    current: String::new(),
                    position: position(done.epoch, done.offset),
                }),
                Err(ClusterError::Session(OpError::Conflict { version, current, .. })) => {
                    Kind::SessionOpResult(client::SessionOpResult {
                        applied: false,
                        version,
                        current: current.map(|v| v.to_string()).unwrap_or_default(),
                        ..Default::default()
                    })
                }
                Err(e) => cluster_error(e),
            }
        });
    }

    pub(crate) fn session_get(&self, id: u64, request: client::SessionGet) {
        let Some(channel) = self.session_channel(id, request.session, Operation::Subscribe) else {
            return;
        };
        let cluster = self.gateway.inner.cluster.clone();
        self.spawn_reply(id, async move {
            match cluster.session_snapshot(&channel).await {
                Ok((doc, p)) => Kind::Session(client::SessionSnapshot {
                    session: channel.to_string(),
                    policy: doc.policy().as_str().to_string(),
                    document: doc.document().to_string(),
                    version: p.version,
                    position: position(p.epoch, p.offset),
                }),
                Err(e) => cluster_error(e),
            }
        });
    }

    pub(crate) fn mark_read(&self, id: u64, request: client::MarkRead) {
        let Some(channel) = self.authorized_channel(id, request.channel, Operation::Subscribe) else {
            return;
        };
        let cluster = self.gateway.inner.cluster.clone();
        let user = self.claims.sub.clone();
        self.spawn_reply(id, async move {
            match cluster.mark_read(channel, &user, request.offset).await {
                Ok(p) => Kind::ReadPosition(read_position(&p)),
                Err(e) => cluster_error(e),
            }
        });
    }

    pub(crate) fn roster_query(&self, id: u64, request: client::RosterQuery) {
        let Some(channel) = self.authorized_channel(id, request.channel, Operation::Subscribe) else {
            return;
        };
        if !self.gateway.has_roster(&channel) {
            return self.error(
                id,
                ErrorCode::BadRequest,
                format!("{channel} has no roster ([presence] roster_channels does not name it)"),
                0,
            );
        }
        let cluster = self.gateway.inner.cluster.clone();
        self.spawn_reply(id, async move {
            match cluster.roster(&channel).await {
                Ok(members) => Kind::Roster(client::Roster {
                    channel: channel.to_string(),
                    members: members
                        .into_iter()
                        .map(|m| client::Member {
                            user: m.user,
                            device: m.device,
                        })
                        .collect(),
                }),
                Err(e) => cluster_error(e),
            }
        });
    }

    pub(crate) fn unread(&self, id: u64, request: client::UnreadQuery) {
        if request.channels.len() > MAX_UNREAD_CHANNELS {
            return self.error(
                id,
                ErrorCode::BadRequest,
                format!("at most {MAX_UNREAD_CHANNELS} channels per query"),
                0,
            );
        }
        let mut channels = Vec::with_capacity(request.channels.len());
        for name in request.channels {
            match self.authorized_channel(id, name, Operation::Subscribe) {
                Some(channel) => channels.push(channel),
                None => return,
            }
        }
        let cluster = self.gateway.inner.cluster.clone();
        let user = self.claims.sub.clone();
        self.spawn_reply(id, async move {
            match cluster.unread(&user, &channels).await {
                Ok(positions) => Kind::Unread(client::UnreadCounts {
                    channels: positions.iter().map(read_position).collect(),
                }),
                Err(e) => cluster_error(e),
            }
        });
    }
}
