//! The gRPC server: a thin adapter from the `Cluster` service to the shard groups.
//!
//! Shard-addressed requests (AppendEntries, Vote, TransferLeader, Forward) arrive either as
//! single calls or on a peer's link stream (`crate::link`); both go through
//! [`handle_shard_call`].

use crate::auth;
use crate::forward::ForwardRequest;
use crate::network::MAX_MESSAGE_BYTES;
use crate::node::ClusterNode;
use chorus_core::ShardId;
use chorus_proto::cluster::cluster_server::{Cluster, ClusterServer};
use chorus_proto::cluster::{
    JoinReply, JoinRequest, LinkFrame, NodeInfoReply, NodeInfoRequest, ShardMessage,
};
use chorus_store::TypeConfig;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::{Request, Response, Status, Streaming};

/// The node behind the gRPC server, once its shards are open.
///
/// The server starts before the shards do (replaying their logs takes a while after a crash):
/// until then it refuses every call at once with UNAVAILABLE, which callers treat as never
/// delivered and send elsewhere or again. Served only once started, a peer's call used to sit
/// in the listen backlog for the whole start, and a write forwarded to a restarting leader
/// waited for it instead of going to the leader elected meanwhile.
#[derive(Clone, Default)]
pub struct StartingNode(Arc<std::sync::OnceLock<ClusterNode>>);

impl StartingNode {
    /// The node has started: calls are served from now on.
    pub fn started(&self, node: ClusterNode) {
        let _ = self.0.set(node);
    }

    fn get(&self) -> Result<&ClusterNode, Status> {
        self.0
            .get()
            .ok_or_else(|| Status::unavailable("this node is starting: its shards are not open yet"))
    }
}

/// Serves the `Cluster` gRPC service for a node.
pub struct ClusterService {
    node: StartingNode,
}

/// The `Cluster` service behind its gate.
pub type GatedClusterServer = InterceptedService<ClusterServer<ClusterService>, PeerGate>;

impl ClusterService {
    /// The tonic server for `node` (refusing calls until it has started), behind a [`PeerGate`].
    pub fn server(node: StartingNode) -> GatedClusterServer {
        let gate = PeerGate {
            node: node.clone(),
            refusals_logged: Arc::new(Mutex::new(HashMap::new())),
        };
        let server = ClusterServer::new(ClusterService { node })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        InterceptedService::new(server, gate)
    }

    fn reply(shard: u32, payload: Vec<u8>) -> Result<Response<ShardMessage>, Status> {
        Ok(Response::new(ShardMessage { shard, payload }))
    }

    async fn shard_call(
        &self,
        request: Request<ShardMessage>,
        call: ShardCall,
    ) -> Result<Response<ShardMessage>, Status> {
        let message = request.into_inner();
        let payload = handle_shard_call(self.node.get()?, call, message.shard, &message.payload).await?;
        Self::reply(message.shard, payload)
    }
}

/// Checks a caller's cluster credentials from the call's headers, before its body is read:
/// a refused caller cannot make this node buffer or decode anything (a 400 MB message from
/// anyone who could reach the port used to be read whole before it was refused).
#[derive(Clone)]
pub struct PeerGate {
    node: StartingNode,
    /// When each (caller address, reason) refusal was last logged, to keep logs readable.
    refusals_logged: Arc<Mutex<HashMap<(String, &'static str), Instant>>>,
}

impl Interceptor for PeerGate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let node = self.node.get()?;
        if node.faults().isolated() {
            return Err(Status::unavailable("isolated by fault injection"));
        }
        let ours = node.cluster_id();
        auth::check(request.metadata(), node.secret_proof(), ours.as_deref()).map_err(|e| {
            let from = request
                .remote_addr()
                .map_or("unknown".to_string(), |a: SocketAddr| a.ip().to_string());
            let kind = match e {
                auth::PeerAuthError::Missing => "missing",
                auth::PeerAuthError::WrongSecret => "secret",
                auth::PeerAuthError::OtherCluster { .. } => "cluster",
            };
            let mut logged = self.refusals_logged.lock().expect("lock");
            let now = crate::clock::now();
            let key = (from.clone(), kind);
            if logged
                .get(&key)
                .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(10))
            {
                logged.insert(key, now);
                tracing::error!(%from, reason = %e, "refused a node-to-node call");
            }
            match e {
                auth::PeerAuthError::OtherCluster { .. } => Status::failed_precondition(e.to_string()),
                _ => Status::unauthenticated(e.to_string()),
            }
        })?;
        Ok(request)
    }
}

/// What a shard-addressed request asks of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCall {
    /// Raft AppendEntries.
    AppendEntries,
    /// Raft RequestVote.
    Vote,
    /// Raft Pre-Vote: whether a vote would be granted, persisting nothing.
    PreVote,
    /// Take over the shard's leadership.
    TransferLeader,
    /// A request for the shard's leader.
    Forward,
    /// Which shards the sender leads (`crate::liveness`).
    Leading,
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(payload).map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    postcard::to_stdvec(value).map_err(|e| Status::internal(e.to_string()))
}

fn raft(node: &ClusterNode, shard: u32) -> Result<&crate::ShardRaft, Status> {
    node.raft(shard).ok_or_else(|| {
        Status::not_found(format!(
            "no shard {shard} on node {} (shard count {})",
            node.node_id(),
            node.shard_count()
        ))
    })
}

/// Refuses what a recovering replica must not do (vote, take leadership).
fn refuse_if_recovering(node: &ClusterNode, shard: u32, what: &str) -> Result<(), Status> {
    if node.is_recovering(ShardId(shard)) {
        return Err(Status::unavailable(format!(
            "shard {shard} on node {} is recovering its log from its peers and does not {what} until it has caught up",
            node.node_id()
        )));
    }
    Ok(())
}

/// Does what a shard-addressed request asks and encodes the answer: the one place the unary
/// calls and the link messages go through.
pub async fn handle_shard_call(
    node: &ClusterNode,
    call: ShardCall,
    shard: u32,
    payload: &[u8],
) -> Result<Vec<u8>, Status> {
    if node.faults().isolated() {
        return Err(Status::unavailable("isolated by fault injection"));
    }
    match call {
        ShardCall::AppendEntries => {
            let rpc: AppendEntriesRequest<TypeConfig> = decode(payload)?;
            encode(&raft(node, shard)?.append_entries(rpc).await)
        }
        ShardCall::Vote => {
            refuse_if_recovering(node, shard, "vote")?;
            let rpc: VoteRequest<TypeConfig> = decode(payload)?;
            encode(&raft(node, shard)?.vote(rpc).await)
        }
        ShardCall::PreVote => {
            refuse_if_recovering(node, shard, "vote")?;
            let rpc: VoteRequest<TypeConfig> = decode(payload)?;
            encode(&raft(node, shard)?.pre_vote(rpc).await)
        }
        ShardCall::TransferLeader => {
            refuse_if_recovering(node, shard, "take leadership")?;
            let rpc: TransferLeaderRequest<TypeConfig> = decode(payload)?;
            encode(&raft(node, shard)?.handle_transfer_leader(rpc).await)
        }
        ShardCall::Forward => {
            raft(node, shard)?;
            let forward: ForwardRequest = decode(payload)?;
            encode(&node.handle_forward(ShardId(shard), forward).await)
        }
        ShardCall::Leading => {
            node.leading_notice(decode(payload)?);
            encode(&())
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn append_entries(&self, request: Request<ShardMessage>) -> Result<Response<ShardMessage>, Status> {
        self.shard_call(request, ShardCall::AppendEntries).await
    }

    async fn vote(&self, request: Request<ShardMessage>) -> Result<Response<ShardMessage>, Status> {
        self.shard_call(request, ShardCall::Vote).await
    }

    async fn install_snapshot(
        &self,
        request: Request<ShardMessage>,
    ) -> Result<Response<ShardMessage>, Status> {
        let message = request.into_inner();
        let (vote, meta, data): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>, Vec<u8>) =
            decode(&message.payload)?;
        let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot: data };
        let result = raft(self.node.get()?, message.shard)?
            .install_full_snapshot(vote, snapshot)
            .await;
        Self::reply(message.shard, encode(&result)?)
    }

    async fn transfer_leader(
        &self,
        request: Request<ShardMessage>,
    ) -> Result<Response<ShardMessage>, Status> {
        self.shard_call(request, ShardCall::TransferLeader).await
    }

    async fn forward(&self, request: Request<ShardMessage>) -> Result<Response<ShardMessage>, Status> {
        self.shard_call(request, ShardCall::Forward).await
    }

    async fn ephemeral(&self, request: Request<ShardMessage>) -> Result<Response<ShardMessage>, Status> {
        let message = request.into_inner();
        let batch: crate::typing::EphemeralBatch = decode(&message.payload)?;
        self.node.get()?.typing().received(batch);
        Self::reply(0, encode(&())?)
    }

    async fn node_info(&self, _request: Request<NodeInfoRequest>) -> Result<Response<NodeInfoReply>, Status> {
        let node = self.node.get()?;
        Ok(Response::new(NodeInfoReply {
            node_id: node.node_id(),
            cluster_id: node.cluster_id().unwrap_or_default(),
            shard_count: node.shard_count(),
            http_addr: node.config().http_addr.to_string(),
            recovering_shards: node.recovering_shards(),
        }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let request = request.into_inner();
        if request.raft_addr.parse::<SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "raft_addr {:?} is not ip:port",
                request.raft_addr
            )));
        }
        let node = self.node.get()?;
        node.add_node(request.node_id, request.raft_addr)
            .await
            .map_err(|e| match e.code() {
                chorus_core::ErrorCode::BadRequest => Status::invalid_argument(e.to_string()),
                _ => Status::unavailable(e.to_string()),
            })?;
        Ok(Response::new(JoinReply {
            cluster_id: node.cluster_id().unwrap_or_default(),
        }))
    }

    type LinkStream = crate::link::AnswerFrames;

    async fn link(
        &self,
        request: Request<Streaming<LinkFrame>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        Ok(Response::new(crate::link::serve(
            self.node.get()?.clone(),
            request.into_inner(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Faults;
    use crate::forward::ForwardResult;
    use crate::network::{CallError, PeerPool, Rpc};
    use crate::transport::{TcpConnector, tcp_incoming};
    use tokio::net::TcpListener;

    /// A node restarting after a crash replays its log before its shards open. A write
    /// forwarded to it meanwhile (it led the shard before the crash) must come back at once as
    /// never delivered, so that the forwarding node sends it to the leader elected meanwhile.
    /// Before `StartingNode`, the call sat in the listen backlog until the start was over: up
    /// to a second of failover with a big log, and the whole call deadline here.
    #[tokio::test]
    async fn a_starting_node_refuses_calls_at_once_as_never_delivered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let starting = StartingNode::default();
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ClusterService::server(starting.clone()))
                .serve_with_incoming(tcp_incoming(listener)),
        );
        let pool = PeerPool::new(
            Some("proof".into()),
            Arc::new(Faults::default()),
            Arc::new(TcpConnector {
                timeout: Duration::from_secs(2),
            }),
        );
        for rpc in [Rpc::Forward, Rpc::Vote, Rpc::AppendEntries] {
            let result = pool
                .call::<_, ForwardResult>(
                    2,
                    &addr,
                    rpc,
                    0,
                    &ForwardRequest::ReadIndex,
                    Duration::from_secs(30),
                )
                .await;
            assert!(
                matches!(result, Err(CallError::NotDelivered(_))),
                "{rpc:?} to a starting node: {result:?}"
            );
        }
        serving.abort();
    }
}
