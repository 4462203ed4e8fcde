//! HTTP routes of presence, collaborative sessions and read receipts: thin adapters over the
//! cluster core (the same rules and codes as the client protocol).
//!
//! ```text
//!  GET  /api/v1/presence/{user}            the user's presence (subscribe on presence.<user>)
//!  PUT  /api/v1/sessions/{session}         create {policy, document}       (publish)
//!  GET  /api/v1/sessions/{session}         document + version + position   (subscribe)
//!  POST /api/v1/sessions/{session}/ops     {op, path, value, base_version} (publish)
//!  POST /api/v1/channels/{channel}/read    {offset}: the caller read up to offset (subscribe)
//!  GET  /api/v1/unread?channels=a,b        the caller's read positions and unread counts
//!  GET  /api/v1/channels/{channel}/roster  who is subscribed (channels with a roster)
//! ```

use crate::api::{Shared, authorized_channel, claims};
use crate::error::ApiError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chorus_access::{Operation, OperationClass};
use chorus_cluster::ClusterError;
use chorus_core::collab::{ConflictPolicy, OpError, parse_op};
use chorus_core::presence::PRESENCE_CHANNEL_PREFIX;
use chorus_core::{ChannelName, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Most channels one unread query may name (as in the client protocol).
const MAX_UNREAD_CHANNELS: usize = 256;

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes, shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the body must be {shape}: {e}")))
}

fn json_ok(value: Value) -> Response {
    Json(value).into_response()
}

/// The caller's claims and the channel of a collaborative-session request, when `operation`
/// is allowed on it and it is not private (sessions are not served on private channels).
/// Counts against the caller's collab rate.
fn session_channel(
    state: &crate::api::HttpState,
    headers: &HeaderMap,
    session: String,
    operation: Operation,
) -> Result<(chorus_access::Claims, ChannelName), ApiError> {
    let (claims, channel) =
        authorized_channel(state, headers, session, operation, Some(OperationClass::Collab))?;
    state.auth.check_session_channel(channel.as_str())?;
    Ok((claims, channel))
}

/// `GET /api/v1/presence/{user}`.
pub(crate) async fn presence(
    State(state): State<Shared>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorized_channel(
        &state,
        &headers,
        format!("{PRESENCE_CHANNEL_PREFIX}{user}"),
        Operation::Subscribe,
        None,
    )?;
    let presence = state.cluster.presence(&user).await?;
    Ok(json_ok(presence.to_json(&user)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    policy: String,
    #[serde(default)]
    document: Option<Value>,
}

/// `PUT /api/v1/sessions/{session}`.
pub(crate) async fn create_session(
    State(state): State<Shared>,
    Path(session): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (claims, channel) = session_channel(&state, &headers, session, Operation::Publish)?;
    let body: CreateBody = body(&bytes, r#"{"policy": "lww" | "reject", "document": {...}}"#)?;
    let policy = ConflictPolicy::parse(&body.policy).map_err(ApiError::bad_request)?;
    let document = body.document.unwrap_or_else(|| json!({}));
    let created = state
        .cluster
        .create_session(channel.clone(), policy, document.clone(), &claims.sub)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "session": channel.as_str(),
            "policy": policy.as_str(),
            "document": document,
            "version": created.version,
            "epoch": created.epoch,
            "offset": created.offset,
        })),
    )
        .into_response())
}

/// `GET /api/v1/sessions/{session}`.
pub(crate) async fn get_session(
    State(state): State<Shared>,
    Path(session): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, channel) = session_channel(&state, &headers, session, Operation::Subscribe)?;
    let (doc, position) = state.cluster.session_snapshot(&channel).await?;
    Ok(json_ok(json!({
        "session": channel.as_str(),
        "policy": doc.policy().as_str(),
        "document": doc.document(),
        "version": position.version,
        "epoch": position.epoch,
        "offset": position.offset,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody {
    op: String,
    path: String,
    #[serde(default)]
    value: Option<Value>,
    base_version: u64,
}

/// `POST /api/v1/sessions/{session}/ops`: 200 when applied, 409 `conflict` with the current
/// value and version when the `reject` policy refuses it.
pub(crate) async fn session_op(
    State(state): State<Shared>,
    Path(session): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (claims, channel) = session_channel(&state, &headers, session, Operation::Publish)?;
    if bytes.len() > state.max_payload_bytes + 4096 {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the operation is {} bytes; the limit is {}",
                bytes.len(),
                state.max_payload_bytes
            ),
        ));
    }
    let body: OpBody = body(
        &bytes,
        r#"{"op": "set" | "delete" | "increment" | "append", "path": "/a/b", "value": <json>, "base_version": <n>}"#,
    )?;
    let (path, kind) = parse_op(&body.op, &body.path, body.value).map_err(ApiError::bad_request)?;
    match state
        .cluster
        .session_op(channel, path, kind, body.base_version, &claims.sub)
        .await
    {
        Ok(done) => Ok(json_ok(json!({
            "applied": true,
            "version": done.applied.version,
            "previous": done.applied.previous,
            "overwrote_newer": done.applied.overwrote_newer,
            "epoch": done.epoch,
            "offset": done.offset,
        }))),
        Err(ClusterError::Session(conflict @ OpError::Conflict { .. })) => {
            let OpError::Conflict { version, current, .. } = &conflict else {
                unreachable!("matched above")
            };
            Ok((
                StatusCode::CONFLICT,
                Json(json!({
                    "code": ErrorCode::Conflict.as_str(),
                    "message": conflict.to_string(),
                    "applied": false,
                    "version": version,
                    "current": current,
                })),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    offset: u64,
}

/// `POST /api/v1/channels/{channel}/read`.
pub(crate) async fn mark_read(
    State(state): State<Shared>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (claims, channel) = authorized_channel(&state, &headers, channel, Operation::Subscribe, None)?;
    let body: ReadBody = body(&bytes, r#"{"offset": <n>}"#)?;
    let p = state.cluster.mark_read(channel, &claims.sub, body.offset).await?;
    Ok(json_ok(read_json(&p)))
}

fn read_json(p: &chorus_core::command::ReadPosition) -> Value {
    json!({
        "channel": p.channel.as_str(),
        "read_offset": p.read_offset,
        "last_offset": p.last_offset,
        "unread": p.unread(),
    })
}

/// `GET /api/v1/channels/{channel}/roster`: who is subscribed (channels with a roster;
/// empty for the others).
pub(crate) async fn roster(
    State(state): State<Shared>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, channel) = authorized_channel(&state, &headers, channel, Operation::Subscribe, None)?;
    let members: Vec<Value> = state
        .cluster
        .roster(&channel)
        .await?
        .into_iter()
        .map(|m| json!({"user": m.user, "device": m.device}))
        .collect();
    Ok(json_ok(json!({"channel": channel.as_str(), "members": members})))
}

/// `GET /api/v1/unread?channels=a,b`: the caller's positions (every channel they marked
/// read when none are named).
pub(crate) async fn unread(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = claims(&state, &headers, None)?;
    let mut channels = Vec::new();
    let names = query.get("channels").map_or(0, |c| c.split(',').count());
    if names > MAX_UNREAD_CHANNELS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_UNREAD_CHANNELS} channels per query"
        )));
    }
    for name in query
        .get("channels")
        .map(|c| c.split(',').filter(|c| !c.is_empty()).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let channel = ChannelName::new(name)?;
        state
            .auth
            .authorize(&claims, Operation::Subscribe, channel.as_str())?;
        channels.push(channel);
    }
    let positions = state.cluster.unread(&claims.sub, &channels).await?;
    let list: Vec<Value> = positions.iter().map(read_json).collect();
    Ok(json_ok(json!({"user": claims.sub, "channels": list})))
}
