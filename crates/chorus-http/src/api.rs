//! Routes and handlers.

use crate::error::ApiError;
use crate::features;
use crate::metrics::{self, HttpMetrics};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chorus_access::{Authenticator, Claims, Operation, OperationClass};
use chorus_cluster::ClusterNode;
use chorus_core::{ChannelName, ErrorCode, PublishCommand, check_publish_input};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;

/// Default and largest history page.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// Largest history page.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// What every handler shares.
pub struct HttpState {
    /// The cluster core.
    pub cluster: ClusterNode,
    /// Token verification and permissions.
    pub auth: Authenticator,
    /// Every metric of the node.
    pub registry: Registry,
    /// Largest event payload, bytes.
    pub max_payload_bytes: usize,
    /// A request's body must arrive within this (from the end of its headers).
    pub body_timeout: std::time::Duration,
}

pub(crate) type Shared = Arc<HttpState>;

/// The node's HTTP routes.
pub fn router(state: Shared, http_metrics: HttpMetrics) -> Router {
    let body_limit = state
        .max_payload_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024);
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/cluster/join", post(join))
        .route("/api/v1/cluster/remove", post(remove))
        .route("/api/v1/revocations", post(revoke))
        .route("/api/v1/channels/{channel}/publish", post(publish))
        .route("/api/v1/channels/{channel}/history", get(history))
        .route("/api/v1/channels/{channel}/read", post(features::mark_read))
        .route("/api/v1/unread", get(features::unread))
        .route("/api/v1/channels/{channel}/roster", get(features::roster))
        .route("/api/v1/presence/{user}", get(features::presence))
        .route(
            "/api/v1/sessions/{session}",
            put(features::create_session).get(features::get_session),
        )
        .route("/api/v1/sessions/{session}/ops", post(features::session_op))
        .route("/test/isolation", put(isolation))
        .layer(DefaultBodyLimit::max(body_limit))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(http_metrics),
            metrics::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            (state.body_timeout, body_limit),
            body_within_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            limit_per_address,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.cluster.audit().clone(),
            audit_refusals,
        ))
        .with_state(state)
}

/// Reads a request's whole body within the deadline before any handler runs: a client that
/// sends its headers and then its body slowly, or never, used to hold the connection (and a
/// handler task) for as long as it liked. Answers 408 `idle_timeout` when it is late, 413
/// when the body is larger than any request may be.
async fn body_within_deadline(
    State((deadline, limit)): State<(std::time::Duration, usize)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Ok(Err(e)) => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body unreadable or over {limit} bytes: {e}"),
        )
        .into_response(),
        Err(_) => ApiError::new(
            ErrorCode::IdleTimeout,
            format!(
                "the request body did not arrive within {} ms (http_body_timeout_ms)",
                deadline.as_millis()
            ),
        )
        .into_response(),
    }
}

/// Counts every API request against its address's rate before its token is checked or its
/// body read (verifying a token costs a signature check, RSA's is dear). Health, readiness
/// and metrics are for probes and scrapers, not limited.
async fn limit_per_address(
    State(auth): State<Authenticator>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let remote = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    if let Some(ip) = remote
        && request.uri().path().starts_with("/api/")
        && let Err(refused) = auth.check_http_request_rate(ip)
    {
        return ApiError::from(refused).into_response();
    }
    next.run(request).await
}

/// Records refused credentials, permissions and rates in the audit log.
async fn audit_refusals(
    State(audit): State<chorus_cluster::audit::AuditLog>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let target = format!("{} {}", request.method(), request.uri().path());
    let remote = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_string());
    let response = next.run(request).await;
    if let Some(refused) = response.extensions().get::<ApiError>()
        && matches!(
            refused.code,
            ErrorCode::Unauthorized | ErrorCode::Forbidden | ErrorCode::RateLimited
        )
    {
        audit.record(chorus_cluster::audit::AuditEvent::Refused {
            face: "http",
            remote,
            user: None,
            code: refused.code.as_str(),
            target,
            reason: refused.message.clone(),
        });
    }
    response
}

/// Records an admin action by the caller of `headers` (already authorized).
fn audit_admin(state: &HttpState, headers: &HeaderMap, action: &'static str, detail: serde_json::Value) {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let user = state
        .auth
        .verify_header(header)
        .map_or_else(|_| "?".to_string(), |c| c.sub);
    state
        .cluster
        .audit()
        .record(chorus_cluster::audit::AuditEvent::Admin { user, action, detail });
}

/// The caller's verified claims; each call counts one request against the device's rate,
/// and against the user's rate for `class` when it has one.
pub(crate) fn claims(
    state: &HttpState,
    headers: &HeaderMap,
    class: Option<OperationClass>,
) -> Result<Claims, ApiError> {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let claims = state.auth.verify_header(header)?;
    state.auth.check_device_rate(&claims)?;
    if let Some(class) = class {
        state.auth.check_rate(&claims, class)?;
    }
    Ok(claims)
}

/// The caller's claims and `name` as a channel, when the name is valid and `operation` is
/// allowed on it; publishing also needs a channel clients may write (not `presence.*`). The
/// request counts against the caller's rate for `class`, if any.
pub(crate) fn authorized_channel(
    state: &HttpState,
    headers: &HeaderMap,
    name: String,
    operation: Operation,
    class: Option<OperationClass>,
) -> Result<(Claims, ChannelName), ApiError> {
    let claims = claims(state, headers, class)?;
    let channel = ChannelName::new(name)?;
    state.auth.authorize(&claims, operation, channel.as_str())?;
    if operation == Operation::Publish {
        chorus_core::check_client_writable(&channel)
            .map_err(|(code, message)| ApiError::new(code, message))?;
    }
    Ok((claims, channel))
}

/// The header that carries a subscription token (for a private channel, or a channel beyond
/// the caller's roles) with a history read.
pub const SUBSCRIPTION_TOKEN_HEADER: &str = "x-subscription-token";

/// `name` as a channel when it is valid and the caller may read it: their roles allow it,
/// or the `X-Subscription-Token` header grants it (a private channel needs the token). The
/// request counts against the caller's subscribe rate.
fn readable_channel(state: &HttpState, headers: &HeaderMap, name: String) -> Result<ChannelName, ApiError> {
    let claims = claims(state, headers, Some(OperationClass::Subscribe))?;
    let channel = ChannelName::new(name)?;
    let token = headers
        .get(SUBSCRIPTION_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    state.auth.authorize_read(&claims, channel.as_str(), token)?;
    Ok(channel)
}

/// Admin operations need an admin token. The node-to-node credentials are not accepted:
/// they are for peers (over gRPC, with mutual TLS when configured), and a captured proof
/// used to give admin over plain HTTP.
fn require_admin(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    let claims = claims(state, headers, None)?;
    Ok(state.auth.authorize(&claims, Operation::Admin, "")?)
}

#[derive(Deserialize)]
struct IsolationBody {
    isolated: bool,
}

/// The chaos suite's partition switch (see `chorus_cluster::faults`): cuts this node off from
/// its peers or heals it. Exists only when the node runs with fault injection enabled.
async fn isolation(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let body: IsolationBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body must be {{\"isolated\": true|false}}: {e}")))?;
    if !state.cluster.faults().set_isolated(body.isolated) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "fault injection is not enabled on this node (it is a test-only switch: {})",
                chorus_cluster::faults::FAULT_INJECTION_ENV
            ),
        ));
    }
    Ok(Json(serde_json::json!({"isolated": body.isolated})).into_response())
}

async fn health(State(state): State<Shared>) -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok", "node_id": state.cluster.node_id()}))
}

async fn ready(State(state): State<Shared>) -> Response {
    let checks = state.cluster.readiness();
    let ok = checks.iter().all(|c| c.ok);
    let body: String = checks
        .iter()
        .map(|c| {
            format!(
                "{} {}: {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            )
        })
        .collect();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn metrics_text(State(state): State<Shared>) -> Response {
    state.cluster.refresh_metrics();
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::new(ErrorCode::Internal, format!("encoding metrics: {e}")).into_response(),
    }
}

async fn cluster_status(State(state): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(state.cluster.status()).into_response())
}

#[derive(Deserialize)]
struct JoinBody {
    id: u64,
    raft_addr: String,
}

async fn join(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let body: JoinBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "join body must be {{\"id\": <n>, \"raft_addr\": \"host:port\"}}: {e}"
        ))
    })?;
    if body.raft_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::bad_request(format!(
            "raft_addr {:?} is not ip:port",
            body.raft_addr
        )));
    }
    audit_admin(
        &state,
        &headers,
        "join",
        serde_json::json!({"id": body.id, "raft_addr": body.raft_addr}),
    );
    state.cluster.add_node(body.id, body.raft_addr).await?;
    Ok(
        Json(serde_json::json!({"joined": body.id, "cluster_id": state.cluster.cluster_id()}))
            .into_response(),
    )
}

#[derive(Deserialize)]
struct RemoveBody {
    id: u64,
}

async fn remove(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let body: RemoveBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("remove body must be {{\"id\": <n>}}: {e}")))?;
    audit_admin(&state, &headers, "remove", serde_json::json!({"id": body.id}));
    state.cluster.remove_node(body.id).await?;
    Ok(Json(serde_json::json!({"removed": body.id})).into_response())
}

/// `{"user": "eve"}` or `{"token_id": "..."}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    user: Option<String>,
    token_id: Option<String>,
}

/// Revokes a user's tokens issued until now, or one token id, on every node: their
/// connections close and the tokens are refused from then on.
async fn revoke(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    use chorus_core::revocation::RevokeTarget;
    require_admin(&state, &headers)?;
    let usage = "revocation body must be {\"user\": \"<sub>\"} or {\"token_id\": \"<jti>\"}";
    let body: RevokeBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("{usage}: {e}")))?;
    let target = match (body.user, body.token_id) {
        (Some(user), None) if !user.is_empty() => RevokeTarget::User(user),
        (None, Some(id)) if !id.is_empty() => RevokeTarget::Token(id),
        _ => return Err(ApiError::bad_request(usage)),
    };
    // Kept as long as a token it refuses could still be valid on any node.
    let now_s = chorus_cluster::clock::unix_ms() / 1000;
    let until_s = now_s + state.auth.max_lifetime().as_secs() + 60;
    let (key, value) = match &target {
        RevokeTarget::User(user) => ("user", user.clone()),
        RevokeTarget::Token(id) => ("token_id", id.clone()),
    };
    audit_admin(
        &state,
        &headers,
        "revoke",
        serde_json::json!({ key: &value, "until": until_s }),
    );
    state.cluster.revoke(target, until_s).await?;
    Ok(Json(serde_json::json!({ "revoked": { key: value }, "until": until_s })).into_response())
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Serialize)]
struct PublishReply {
    channel: String,
    offset: u64,
    epoch: u64,
    duplicate: bool,
}

async fn publish(
    State(state): State<Shared>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (claims, channel) = authorized_channel(
        &state,
        &headers,
        channel,
        Operation::Publish,
        Some(OperationClass::Publish),
    )?;
    let body: PublishBody<'_> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let data = body
        .data
        .ok_or_else(|| ApiError::bad_request("the body needs a \"data\" field (any JSON value)"))?;
    check_publish_input(
        data.get(),
        state.max_payload_bytes,
        body.event_type.as_deref(),
        body.idempotency_key.as_deref(),
    )
    .map_err(|(code, message)| ApiError::new(code, message))?;
    let published = state
        .cluster
        .publish(PublishCommand {
            channel,
            event_type: body.event_type.map(Into::into),
            data: data.get().into(),
            idempotency_key: body
                .idempotency_key
                .map(|key| chorus_core::scoped_idempotency_key(&claims.sub, &key)),
            publisher: claims.sub.into(),
            time_ms: chorus_cluster::clock::unix_ms(),
        })
        .await?;
    Ok(Json(PublishReply {
        channel: published.channel.to_string(),
        offset: published.offset,
        epoch: published.epoch,
        duplicate: published.duplicate,
    })
    .into_response())
}

#[derive(Serialize)]
struct HistoryMessage<'a> {
    offset: u64,
    #[serde(rename = "type")]
    event_type: Option<&'a str>,
    data: &'a RawValue,
    publisher: &'a str,
    time: u64,
}

#[derive(Serialize)]
struct HistoryReply<'a> {
    channel: &'a str,
    epoch: u64,
    last_offset: u64,
    first_retained: u64,
    messages: Vec<HistoryMessage<'a>>,
}

fn query_number(query: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "query parameter {name}={text:?} is not a non-negative integer"
            ))
        }),
    }
}

async fn history(
    State(state): State<Shared>,
    Path(channel): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let channel = readable_channel(&state, &headers, channel)?;
    let since = query_number(&query, "since", 0)?;
    let limit = query_number(&query, "limit", DEFAULT_HISTORY_LIMIT as u64)?;
    if limit == 0 || limit > MAX_HISTORY_LIMIT as u64 {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_HISTORY_LIMIT}"
        )));
    }
    let page = state.cluster.history(&channel, since, limit as usize).await?;
    let mut messages = Vec::with_capacity(page.messages.len());
    for m in &page.messages {
        let data: &RawValue = serde_json::from_str(&m.data)
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("stored event is not JSON: {e}")))?;
        messages.push(HistoryMessage {
            offset: m.offset,
            event_type: m.event_type.as_deref(),
            data,
            publisher: &m.publisher,
            time: m.time_ms,
        });
    }
    Ok(Json(HistoryReply {
        channel: channel.as_str(),
        epoch: page.epoch,
        last_offset: page.last_offset,
        first_retained: page.first_retained,
        messages,
    })
    .into_response())
}
