//! One client connection's protocol, whatever the transport: handshake, requests, heartbeats,
//! token expiry. The transport feeds decoded frames in and drains the [`Outbox`].
//!
//! ```text
//!  await Connect ──> ConnectOk ──> loop { request | heartbeat tick | token deadline | outbox closed }
//!                                      └─> Disconnect{code} then the transport closes
//! ```

use crate::frame::{FrameError, kind_name};
use crate::hub::{SubscribeRequest, Subscriber, Target, error_kind, event_frame};
use crate::metrics::{ReasonLabel, TransportLabel};
use crate::outbox::{Outbox, Priority};
use crate::{Gateway, PROTOCOL_VERSION};
use chorus_access::Claims;
use chorus_access::Operation;
use chorus_cluster::audit::AuditEvent;
use chorus_cluster::clock;
use chorus_core::{ChannelName, ChannelPattern, ErrorCode, PublishCommand, check_publish_input};
use chorus_proto::client::{self, ClientFrame, ServerFrame, client_frame, server_frame::Kind};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Default and largest history page.
const DEFAULT_HISTORY_LIMIT: u32 = 100;
const MAX_HISTORY_LIMIT: u32 = 1000;
/// Most event types one subscription may filter on.
const MAX_EVENT_TYPES: usize = 32;

/// Why a session ended.
#[derive(Debug, Clone)]
pub(crate) struct Ending {
    pub(crate) code: Option<ErrorCode>,
    pub(crate) reason: String,
}

/// When a token expiring at `exp` (Unix seconds) stops being honoured: `exp` + `grace`, also
/// for a token accepted just after `exp` (within the validation leeway), whose grace has
/// partly run already.
fn token_deadline(exp: u64, grace: Duration) -> Instant {
    let now = Instant::from(clock::now());
    let (exp_ms, now_ms) = (exp.saturating_mul(1000), clock::unix_ms());
    if exp_ms >= now_ms {
        now + Duration::from_millis(exp_ms - now_ms) + grace
    } else {
        now + grace.saturating_sub(Duration::from_millis(now_ms - exp_ms))
    }
}

pub(crate) struct Session {
    /// `quic` or `websocket`.
    transport: &'static str,
    /// The client's address.
    remote: std::net::IpAddr,
    pub(crate) gateway: Gateway,
    pub(crate) subscriber: Subscriber,
    pub(crate) claims: Claims,
    deadline: Instant,
    requests: Arc<Semaphore>,
    /// This connection's device presence; dropping it writes the device offline.
    pub(crate) presence: crate::presence::ConnPresence,
}

/// The device name of a token without one.
pub(crate) const DEFAULT_DEVICE: &str = "default";

fn disconnect(outbox: &Outbox, code: ErrorCode, reason: String, reconnect: bool) -> Ending {
    disconnect_after(outbox, code, reason, reconnect, 0)
}

/// [`disconnect`], saying how long to wait before connecting again.
fn disconnect_after(
    outbox: &Outbox,
    code: ErrorCode,
    reason: String,
    reconnect: bool,
    retry_after_ms: u64,
) -> Ending {
    let _ = outbox.push(
        Priority::Critical,
        ServerFrame {
            id: 0,
            kind: Some(Kind::Disconnect(client::Disconnect {
                code: code.as_str().to_string(),
                reason: reason.clone(),
                reconnect,
                retry_after_ms,
            })),
        },
    );
    Ending {
        code: Some(code),
        reason,
    }
}

impl Gateway {
    /// Runs one connection's protocol until it ends. The caller closes `outbox` afterwards
    /// (this function does), lets its writers drain, and closes the transport.
    pub(crate) async fn run_session<S>(
        &self,
        transport: &'static str,
        remote: std::net::IpAddr,
        mut inbound: S,
        outbox: Arc<Outbox>,
    ) -> Ending
    where
        S: Stream<Item = Result<ClientFrame, FrameError>> + Unpin,
    {
        let label = TransportLabel { transport };
        self.inner.metrics.connections.get_or_create(&label).inc();
        let conn = self.next_conn_id();
        let ending = self.session(conn, transport, remote, &mut inbound, &outbox).await;
        self.inner.hub.disconnected(conn);
        self.inner.cluster.typing().connection_closed(conn);
        outbox.close();
        self.inner.metrics.connections.get_or_create(&label).dec();
        let reason = ending.code.map_or("client_closed", |c| c.as_str());
        self.inner
            .metrics
            .disconnects
            .get_or_create(&ReasonLabel { reason })
            .inc();
        tracing::debug!(conn, transport, reason = %ending.reason, "client connection ended");
        ending
    }

    async fn session<S>(
        &self,
        conn: u64,
        transport: &'static str,
        remote: std::net::IpAddr,
        inbound: &mut S,
        outbox: &Arc<Outbox>,
    ) -> Ending
    where
        S: Stream<Item = Result<ClientFrame, FrameError>> + Unpin,
    {
        let config = &self.inner.config;
        let first = match tokio::time::timeout(config.connect_timeout, inbound.next()).await {
            Err(_) => {
                return disconnect(
                    outbox,
                    ErrorCode::Protocol,
                    "no connect frame within the connect timeout".into(),
                    false,
                );
            }
            Ok(None) => {
                return Ending {
                    code: None,
                    reason: "closed before connecting".into(),
                };
            }
            Ok(Some(Err(e))) => return disconnect(outbox, ErrorCode::Protocol, e.to_string(), false),
            Ok(Some(Ok(frame))) => frame,
        };
        let Some(client_frame::Kind::Connect(connect)) = first.kind else {
            return disconnect(
                outbox,
                ErrorCode::Protocol,
                format!("the first frame must be connect, not {}", kind_name(&first)),
                false,
            );
        };
        if connect.protocol_version != PROTOCOL_VERSION {
            return disconnect(
                outbox,
                ErrorCode::Protocol,
                format!(
                    "protocol version {} is not supported; this node speaks {PROTOCOL_VERSION}",
                    connect.protocol_version
                ),
                false,
            );
        }
        let audit_refusal = |code: ErrorCode, reason: String| {
            self.inner.cluster.audit().record(AuditEvent::Refused {
                face: transport,
                remote: Some(remote.to_string()),
                user: None,
                code: code.as_str(),
                target: "connect".into(),
                reason,
            });
        };
        if let Err(chorus_access::AuthError::RateLimited { retry_after_ms, .. }) =
            self.inner.auth.check_connect_rate(remote)
        {
            audit_refusal(
                ErrorCode::RateLimited,
                format!("connect rate; retry in {retry_after_ms} ms"),
            );
            return disconnect_after(
                outbox,
                ErrorCode::RateLimited,
                format!("too many connects from {remote}; retry in {retry_after_ms} ms"),
                true,
                retry_after_ms,
            );
        }
        // Watched from before the token is checked: a revocation applied in between is seen.
        let mut revocations = self.revocation_changes();
        let claims = match self.inner.auth.verify(&connect.token) {
            Ok(claims) => claims,
            Err(e) => {
                audit_refusal(e.code(), e.to_string());
                return disconnect(outbox, e.code(), e.to_string(), false);
            }
        };
        // The user's own connect rate (each connect writes presence through Raft, from
        // however many addresses the user connects).
        if let Err(refused @ chorus_access::AuthError::RateLimited { retry_after_ms, .. }) = self
            .inner
            .auth
            .check_rate(&claims, chorus_access::OperationClass::Connect)
        {
            audit_refusal(refused.code(), refused.to_string());
            return disconnect_after(outbox, refused.code(), refused.to_string(), true, retry_after_ms);
        }
        let deflate = connect.accept_compression.iter().any(|c| c == "deflate");
        let device = claims
            .device
            .clone()
            .unwrap_or_else(|| DEFAULT_DEVICE.to_string());
        let presence = self
            .inner
            .presence
            .connected(conn, claims.sub.clone(), device.clone());
        let mut session = Session {
            transport,
            remote,
            presence,
            gateway: self.clone(),
            subscriber: Subscriber {
                conn,
                outbox: outbox.clone(),
                deflate,
                member: Arc::new((claims.sub.clone(), device.clone())),
            },
            deadline: token_deadline(claims.exp, config.token_grace),
            claims,
            requests: Arc::new(Semaphore::new(config.max_requests_in_flight)),
        };
        session.reply(
            first.id,
            Kind::ConnectOk(client::ConnectOk {
                node_id: self.inner.cluster.node_id(),
                user: session.claims.sub.clone(),
                device: session.claims.device.clone().unwrap_or_default(),
                heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
                idle_timeout_ms: config.idle_timeout.as_millis() as u64,
                token_expires_at: session.claims.exp,
                token_grace_ms: config.token_grace.as_millis() as u64,
                compression: if deflate { "deflate".into() } else { String::new() },
                max_frame_bytes: config.max_frame_bytes as u32,
                protocol_version: PROTOCOL_VERSION,
            }),
        );
        tracing::debug!(conn, user = %session.claims.sub, client = %connect.client_name, "client connected");

        let mut pings = tokio::time::interval_at(
            Instant::from(clock::now()) + config.heartbeat_interval,
            config.heartbeat_interval,
        );
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::from(clock::now());
        loop {
            tokio::select! {
                frame = inbound.next() => match frame {
                    None => return Ending { code: None, reason: "closed by the client".into() },
                    Some(Err(e)) => return disconnect(outbox, ErrorCode::Protocol, e.to_string(), false),
                    Some(Ok(frame)) => {
                        last_seen = Instant::from(clock::now());
                        // Boxed: inline, the largest request's future would make every
                        // idle connection's task that large.
                        if let Err((code, reason)) = Box::pin(session.handle(frame)).await {
                            return disconnect(outbox, code, reason, false);
                        }
                    }
                },
                _ = pings.tick() => session.reply(0, Kind::Ping(client::Ping {})),
                _ = tokio::time::sleep_until(last_seen + config.idle_timeout) => {
                    return disconnect(
                        outbox,
                        ErrorCode::IdleTimeout,
                        format!("nothing received for {} ms", config.idle_timeout.as_millis()),
                        true,
                    );
                },
                _ = tokio::time::sleep_until(session.deadline) => {
                    return disconnect(
                        outbox,
                        ErrorCode::TokenExpired,
                        "the token expired and was not refreshed".into(),
                        true,
                    );
                },
                Ok(()) = revocations.changed() => {
                    if let Err(revoked) = self.inner.auth.check_revoked(&session.claims) {
                        self.inner.cluster.audit().record(AuditEvent::ConnectionRevoked {
                            face: transport,
                            user: session.claims.sub.clone(),
                            reason: revoked.to_string(),
                        });
                        return disconnect(outbox, revoked.code(), revoked.to_string(), false);
                    }
                },
                _ = outbox.wait_closed() => {
                    return Ending {
                        code: Some(ErrorCode::SlowConsumer),
                        reason: "the client did not read its replies".into(),
                    };
                },
            }
        }
    }
}

type Fatal = (ErrorCode, String);

impl Session {
    pub(crate) fn reply(&self, id: u64, kind: Kind) {
        if self
            .subscriber
            .outbox
            .push(Priority::Critical, ServerFrame { id, kind: Some(kind) })
            .is_err()
        {
            self.subscriber.outbox.close();
        }
    }

    /// Records a request refused for its permissions or rate in the audit log.
    fn audit_refusal(&self, refused: &chorus_access::AuthError, target: &str) {
        self.gateway.inner.cluster.audit().record(AuditEvent::Refused {
            face: self.transport,
            remote: Some(self.remote.to_string()),
            user: Some(self.claims.sub.clone()),
            code: refused.code().as_str(),
            target: target.to_string(),
            reason: refused.to_string(),
        });
    }

    /// Answers request `id` with a rate refusal and when to try again.
    fn rate_limited(&self, id: u64, refused: &chorus_access::AuthError) {
        self.audit_refusal(refused, "request");
        let retry_after_ms = match refused {
            chorus_access::AuthError::RateLimited { retry_after_ms, .. } => *retry_after_ms,
            _ => 0,
        };
        self.reply(
            id,
            Kind::Error(client::Error {
                code: refused.code().as_str().to_string(),
                message: refused.to_string(),
                sub: 0,
                retry_after_ms,
            }),
        );
    }

    pub(crate) fn error(&self, id: u64, code: ErrorCode, message: impl Into<String>, sub: u64) {
        self.reply(id, error_kind(code, message, sub));
    }

    /// Handles one frame. An `Err` closes the connection; request failures are replies.
    async fn handle(&mut self, frame: ClientFrame) -> Result<(), Fatal> {
        let id = frame.id;
        // Every request counts against the device's rate; keep-alives and token refreshes
        // do not (refusing them would only close the connection sooner).
        let request = !matches!(
            frame.kind,
            None | Some(
                client_frame::Kind::Ping(_) | client_frame::Kind::Pong(_) | client_frame::Kind::Refresh(_)
            )
        );
        if request {
            let auth = &self.gateway.inner.auth;
            let checked = auth.check_device_rate(&self.claims).and_then(|()| {
                match crate::frame::operation_class(&frame) {
                    Some(class) => auth.check_rate(&self.claims, class),
                    None => Ok(()),
                }
            });
            if let Err(refused) = checked {
                self.rate_limited(id, &refused);
                return Ok(());
            }
        }
        match frame.kind {
            None => Err((ErrorCode::Protocol, "frame with no kind".into())),
            Some(client_frame::Kind::Connect(_)) => {
                Err((ErrorCode::Protocol, "connect may only be the first frame".into()))
            }
            Some(client_frame::Kind::Ping(_)) => {
                self.reply(id, Kind::Pong(client::Pong {}));
                Ok(())
            }
            Some(client_frame::Kind::Pong(_)) => Ok(()),
            Some(client_frame::Kind::Refresh(refresh)) => {
                self.refresh(id, &refresh.token);
                Ok(())
            }
            Some(client_frame::Kind::Subscribe(subscribe)) => {
                self.subscribe(id, subscribe);
                Ok(())
            }
            Some(client_frame::Kind::Unsubscribe(unsubscribe)) => {
                let hub = &self.gateway.inner.hub;
                hub.unsubscribe(self.subscriber.clone(), id, unsubscribe.sub);
                Ok(())
            }
            Some(client_frame::Kind::RosterQuery(request)) => {
                self.roster_query(id, request);
                Ok(())
            }
            Some(client_frame::Kind::Publish(publish)) => {
                self.publish(id, publish).await;
                Ok(())
            }
            Some(client_frame::Kind::History(request)) => {
                self.history(id, request).await;
                Ok(())
            }
            Some(client_frame::Kind::Typing(request)) => {
                self.typing(id, request);
                Ok(())
            }
            Some(client_frame::Kind::TypingQuery(request)) => {
                self.typing_query(id, request);
                Ok(())
            }
            Some(client_frame::Kind::SetPresence(request)) => {
                self.set_presence(id, request);
                Ok(())
            }
            Some(client_frame::Kind::PresenceQuery(request)) => {
                self.presence_query(id, request);
                Ok(())
            }
            Some(client_frame::Kind::SessionCreate(request)) => {
                self.session_create(id, request);
                Ok(())
            }
            Some(client_frame::Kind::SessionOp(request)) => {
                self.session_op(id, request);
                Ok(())
            }
            Some(client_frame::Kind::SessionGet(request)) => {
                self.session_get(id, request);
                Ok(())
            }
            Some(client_frame::Kind::MarkRead(request)) => {
                self.mark_read(id, request);
                Ok(())
            }
            Some(client_frame::Kind::UnreadQuery(request)) => {
                self.unread(id, request);
                Ok(())
            }
        }
    }

    /// A slot for one more request in flight, or an error reply when all are taken (never
    /// waits: the connection keeps reading pongs and other requests meanwhile).
    pub(crate) fn permit(&self, id: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.requests.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.error(
                    id,
                    ErrorCode::SlowConsumer,
                    format!(
                        "{} requests are already in flight on this connection; wait for their replies",
                        self.gateway.inner.config.max_requests_in_flight
                    ),
                    0,
                );
                None
            }
        }
    }

    fn refresh(&mut self, id: u64, token: &str) {
        match self.gateway.inner.auth.verify(token) {
            Ok(claims) if claims.sub == self.claims.sub => {
                self.deadline = token_deadline(claims.exp, self.gateway.inner.config.token_grace);
                let exp = claims.exp;
                self.claims = claims;
                self.reply(
                    id,
                    Kind::RefreshOk(client::RefreshOk {
                        token_expires_at: exp,
                    }),
                );
            }
            Ok(claims) => self.error(
                id,
                ErrorCode::Unauthorized,
                format!(
                    "the new token is for {:?}, this connection is {:?}",
                    claims.sub, self.claims.sub
                ),
                0,
            ),
            Err(e) => self.error(id, e.code(), e.to_string(), 0),
        }
    }

    fn subscribe(&self, id: u64, request: client::Subscribe) {
        let auth = &self.gateway.inner.auth;
        if request.sub == 0 {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "subscription id 0 is reserved; use 1 or more",
                0,
            );
        }
        if request.event_types.len() > MAX_EVENT_TYPES
            || request
                .event_types
                .iter()
                .any(|t| t.is_empty() || t.len() > chorus_core::MAX_EVENT_TYPE_LEN)
        {
            return self.error(
                id,
                ErrorCode::BadRequest,
                format!(
                    "event_types: at most {MAX_EVENT_TYPES} types of 1 to {} bytes",
                    chorus_core::MAX_EVENT_TYPE_LEN
                ),
                request.sub,
            );
        }
        let pattern = match ChannelPattern::new(request.channel.clone()) {
            Ok(p) => p,
            Err(e) => return self.error(id, ErrorCode::InvalidChannel, e.to_string(), request.sub),
        };
        let target = if pattern.is_exact() {
            let channel = match ChannelName::new(request.channel.clone()) {
                Ok(c) => c,
                Err(e) => return self.error(id, ErrorCode::InvalidChannel, e.to_string(), request.sub),
            };
            if let Err(e) = auth.authorize_read(&self.claims, channel.as_str(), Some(&request.token)) {
                self.audit_refusal(&e, channel.as_str());
                return self.error(id, e.code(), e.to_string(), request.sub);
            }
            Target::Exact(channel)
        } else {
            if request.since.is_some() {
                return self.error(
                    id,
                    ErrorCode::BadRequest,
                    "since applies to exact channels only; patterns deliver live events",
                    request.sub,
                );
            }
            if let Err(e) = auth.authorize_pattern(&self.claims, &pattern) {
                self.audit_refusal(&e, pattern.as_str());
                return self.error(id, e.code(), e.to_string(), request.sub);
            }
            Target::Pattern(pattern)
        };
        self.gateway.inner.hub.subscribe(SubscribeRequest {
            subscriber: self.subscriber.clone(),
            request_id: id,
            sub: request.sub,
            target,
            event_types: request.event_types,
            since: request.since,
        });
    }

    /// The channel named by request `id` when it is valid and `operation` is allowed on it;
    /// otherwise the error is replied and `None` returned.
    pub(crate) fn authorized_channel(
        &self,
        id: u64,
        name: String,
        operation: Operation,
    ) -> Option<ChannelName> {
        let channel = self.checked_channel(id, name, |auth, channel| {
            auth.authorize(&self.claims, operation, channel)
        })?;
        if operation == Operation::Publish
            && let Err((code, message)) = chorus_core::check_client_writable(&channel)
        {
            self.error(id, code, message, 0);
            return None;
        }
        Some(channel)
    }

    /// The channel named by request `id` when it is valid and the connection may read it
    /// (its roles allow it, or `subscription_token` grants it; a private channel needs the
    /// token); otherwise the error is replied and `None` returned.
    pub(crate) fn readable_channel(
        &self,
        id: u64,
        name: String,
        subscription_token: &str,
    ) -> Option<ChannelName> {
        self.checked_channel(id, name, |auth, channel| {
            auth.authorize_read(&self.claims, channel, Some(subscription_token))
        })
    }

    /// The channel of a collaborative-session request `id` when it is valid, `operation` is
    /// allowed on it, and it is not private; otherwise the error is replied.
    pub(crate) fn session_channel(&self, id: u64, name: String, operation: Operation) -> Option<ChannelName> {
        self.checked_channel(id, name, |auth, channel| {
            auth.authorize(&self.claims, operation, channel)?;
            auth.check_session_channel(channel)
        })
    }

    /// `name` as a channel when it is valid and `check` passes; otherwise the error is
    /// replied (and a refusal audited) and `None` returned.
    fn checked_channel(
        &self,
        id: u64,
        name: String,
        check: impl FnOnce(&chorus_access::Authenticator, &str) -> Result<(), chorus_access::AuthError>,
    ) -> Option<ChannelName> {
        let channel = match ChannelName::new(name) {
            Ok(c) => c,
            Err(e) => {
                self.error(id, ErrorCode::InvalidChannel, e.to_string(), 0);
                return None;
            }
        };
        if let Err(e) = check(&self.gateway.inner.auth, channel.as_str()) {
            self.audit_refusal(&e, channel.as_str());
            self.error(id, e.code(), e.to_string(), 0);
            return None;
        }
        Some(channel)
    }

    /// Checks a publish and runs it in its own task (bounded per connection), so that a slow
    /// commit never holds up the connection's other requests.
    async fn publish(&self, id: u64, publish: client::Publish) {
        let inner = &self.gateway.inner;
        let Some(channel) = self.authorized_channel(id, publish.channel, Operation::Publish) else {
            return;
        };
        let event_type = Some(publish.event_type).filter(|t| !t.is_empty());
        let key = Some(publish.idempotency_key).filter(|k| !k.is_empty());
        if let Err((code, message)) = check_publish_input(
            &publish.data,
            inner.config.max_payload_bytes,
            event_type.as_deref(),
            key.as_deref(),
        ) {
            return self.error(id, code, message, 0);
        }
        if let Err(e) = serde_json::from_str::<&serde_json::value::RawValue>(&publish.data) {
            return self.error(id, ErrorCode::BadRequest, format!("data is not JSON: {e}"), 0);
        }
        let command = PublishCommand {
            channel,
            event_type: event_type.map(Into::into),
            data: publish.data.into(),
            publisher: self.claims.sub.as_str().into(),
            idempotency_key: key.map(|key| chorus_core::scoped_idempotency_key(&self.claims.sub, &key)),
            time_ms: clock::unix_ms(),
        };
        let Some(permit) = self.permit(id) else { return };
        let cluster = inner.cluster.clone();
        let outbox = self.subscriber.outbox.clone();
        tokio::spawn(async move {
            let kind = match cluster.publish(command).await {
                Ok(p) => Kind::PublishOk(client::PublishOk {
                    channel: p.channel.to_string(),
                    epoch: p.epoch,
                    offset: p.offset,
                    duplicate: p.duplicate,
                }),
                Err(e) => error_kind(e.code(), e.to_string(), 0),
            };
            if outbox
                .push(Priority::Critical, ServerFrame { id, kind: Some(kind) })
                .is_err()
            {
                outbox.close();
            }
            drop(permit);
        });
    }

    async fn history(&self, id: u64, request: client::HistoryRequest) {
        let inner = &self.gateway.inner;
        let Some(channel) = self.readable_channel(id, request.channel, &request.token) else {
            return;
        };
        let limit = match request.limit {
            0 => DEFAULT_HISTORY_LIMIT,
            l if l > MAX_HISTORY_LIMIT => {
                return self.error(
                    id,
                    ErrorCode::BadRequest,
                    format!("limit must be 1 to {MAX_HISTORY_LIMIT}"),
                    0,
                );
            }
            l => l,
        };
        let Some(permit) = self.permit(id) else { return };
        let cluster = inner.cluster.clone();
        let outbox = self.subscriber.outbox.clone();
        let deflate = self.subscriber.deflate;
        // A page must fit in the connection's queue: it is cut short (the client pages on).
        let budget = inner.config.outbox.max_bytes / 2;
        tokio::spawn(async move {
            let kind = match cluster.history(&channel, request.since, limit as usize).await {
                Ok(page) => {
                    let mut events = Vec::with_capacity(page.messages.len());
                    let mut bytes = 0;
                    for m in &page.messages {
                        if let Some(Kind::Event(e)) =
                            event_frame(0, channel.as_str(), page.epoch, m, deflate).kind
                        {
                            bytes += prost::Message::encoded_len(&e);
                            if bytes > budget && !events.is_empty() {
                                break;
                            }
                            events.push(e);
                        }
                    }
                    Kind::History(client::HistoryPage {
                        channel: channel.to_string(),
                        epoch: page.epoch,
                        last_offset: page.last_offset,
                        first_retained: page.first_retained,
                        events,
                    })
                }
                Err(e) => error_kind(e.code(), e.to_string(), 0),
            };
            // Pages go with the events (high); a full queue gets a short error instead.
            if outbox
                .push(Priority::High, ServerFrame { id, kind: Some(kind) })
                .is_err()
            {
                let busy = error_kind(
                    ErrorCode::SlowConsumer,
                    "the connection's queue is full; read, then ask again",
                    0,
                );
                if outbox
                    .push(Priority::Critical, ServerFrame { id, kind: Some(busy) })
                    .is_err()
                {
                    outbox.close();
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a third-party client: a token accepted 3.5 s after its `exp` (inside the
    /// validation leeway) was honoured until connect time + grace, 13.5 s after `exp`.
    #[test]
    fn a_token_accepted_after_its_exp_keeps_only_what_is_left_of_its_grace() {
        let grace = Duration::from_secs(10);
        let now = Instant::from(clock::now());
        let now_s = clock::unix_ms() / 1000;
        // `exp` is whole seconds: up to a second of it is in the past already.
        let expired = token_deadline(now_s - 3, grace) - now;
        assert!(
            expired > Duration::from_millis(5_900) && expired <= Duration::from_millis(7_100),
            "{expired:?}"
        );
        let long_expired = token_deadline(now_s - 60, grace);
        assert!(long_expired <= Instant::from(clock::now()));
        let fresh = token_deadline(now_s + 60, grace) - now;
        assert!(
            fresh > Duration::from_secs(68) && fresh <= Duration::from_secs(70),
            "{fresh:?}"
        );
    }
}
