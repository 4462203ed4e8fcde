//! The gRPC server: a thin adapter from the `Cluster` service to the shard groups.

use crate::auth;
use crate::forward::ForwardRequest;
use crate::network::MAX_MESSAGE_BYTES;
use crate::node::ClusterNode;
use chorus_core::ShardId;
use chorus_proto::cluster::cluster_server::{Cluster, ClusterServer};
use chorus_proto::cluster::{NodeInfoReply, NodeInfoRequest, ShardMessage};
use chorus_store::TypeConfig;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Serves the `Cluster` gRPC service for a node.
pub struct ClusterService {
    node: ClusterNode,
    /// When each (caller address, reason) refusal was last logged, to keep logs readable.
    refusals_logged: Mutex<HashMap<(String, &'static str), Instant>>,
}

impl ClusterService {
    /// The tonic server for `node`.
    pub fn server(node: ClusterNode) -> ClusterServer<ClusterService> {
        ClusterServer::new(ClusterService {
            node,
            refusals_logged: Mutex::new(HashMap::new()),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.node.faults().isolated() {
            return Err(Status::unavailable("isolated by fault injection"));
        }
        let ours = self.node.cluster_id();
        auth::check(request.metadata(), self.node.secret_proof(), ours.as_deref()).map_err(|e| {
            let from = request
                .remote_addr()
                .map_or("unknown".to_string(), |a: SocketAddr| a.ip().to_string());
            let kind = match e {
                auth::PeerAuthError::Missing => "missing",
                auth::PeerAuthError::WrongSecret => "secret",
                auth::PeerAuthError::OtherCluster { .. } => "cluster",
            };
            let mut logged = self.refusals_logged.lock().expect("lock");
            let now = Instant::now();
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
        })
    }

    fn decode<T: DeserializeOwned>(message: &ShardMessage) -> Result<T, Status> {
        postcard::from_bytes(&message.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))
    }

    fn reply<T: Serialize>(shard: u32, value: &T) -> Result<Response<ShardMessage>, Status> {
        let payload = postcard::to_stdvec(value).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ShardMessage { shard, payload }))
    }

    /// Refuses what a recovering replica must not do (vote, take leadership).
    fn refuse_if_recovering(&self, shard: u32, what: &str) -> Result<(), Status> {
        if self.node.is_recovering(ShardId(shard)) {
            return Err(Status::unavailable(format!(
                "shard {shard} on node {} is recovering its log from its peers and does not {what} until it has caught up",
                self.node.node_id()
            )));
        }
        Ok(())
    }

    fn raft(&self, shard: u32) -> Result<&crate::ShardRaft, Status> {
        self.node.raft(shard).ok_or_else(|| {
            Status::not_found(format!(
                "no shard {shard} on node {} (shard count {})",
                self.node.node_id(),
                self.node.shard_count()
            ))
        })
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn append_entries(&self, request: Request<ShardMessage>) -> Result<Response<ShardMessage>, Status> {
        self.authorize(&request)?;
        let message = request.into_inner();
        let rpc: AppendEntriesRequest<TypeConfig> = Self::decode(&message)?;
        let result = self.raft(message.shard)?.append_entries(rpc).await;
        Self::reply(message.shard, &result)
    }

    async fn vote(&self, request: Request<ShardMessage>) -> Result<Response<ShardMessage>, Status> {
        self.authorize(&request)?;
        let message = request.into_inner();
        self.refuse_if_recovering(message.shard, "vote")?;
        let rpc: VoteRequest<TypeConfig> = Self::decode(&message)?;
        let result = self.raft(message.shard)?.vote(rpc).await;
        Self::reply(message.shard, &result)
    }

    async fn install_snapshot(
        &self,
        request: Request<ShardMessage>,
    ) -> Result<Response<ShardMessage>, Status> {
        self.authorize(&request)?;
        let message = request.into_inner();
        let (vote, meta, data): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>, Vec<u8>) =
            Self::decode(&message)?;
        let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot: data };
        let result = self
            .raft(message.shard)?
            .install_full_snapshot(vote, snapshot)
            .await;
        Self::reply(message.shard, &result)
    }

    async fn transfer_leader(
        &self,
        request: Request<ShardMessage>,
    ) -> Result<Response<ShardMessage>, Status> {
        self.authorize(&request)?;
        let message = request.into_inner();
        self.refuse_if_recovering(message.shard, "take leadership")?;
        let rpc: TransferLeaderRequest<TypeConfig> = Self::decode(&message)?;
        let result = self.raft(message.shard)?.handle_transfer_leader(rpc).await;
        Self::reply(message.shard, &result)
    }

    async fn forward(&self, request: Request<ShardMessage>) -> Result<Response<ShardMessage>, Status> {
        self.authorize(&request)?;
        let message = request.into_inner();
        self.raft(message.shard)?;
        let forward: ForwardRequest = Self::decode(&message)?;
        let result = self.node.handle_forward(ShardId(message.shard), forward).await;
        Self::reply(message.shard, &result)
    }

    async fn ephemeral(&self, request: Request<ShardMessage>) -> Result<Response<ShardMessage>, Status> {
        self.authorize(&request)?;
        let message = request.into_inner();
        let batch: crate::typing::EphemeralBatch = Self::decode(&message)?;
        self.node.typing().received(batch);
        Self::reply(0, &())
    }

    async fn node_info(&self, request: Request<NodeInfoRequest>) -> Result<Response<NodeInfoReply>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(NodeInfoReply {
            node_id: self.node.node_id(),
            cluster_id: self.node.cluster_id().unwrap_or_default(),
            shard_count: self.node.shard_count(),
            http_addr: self.node.config().http_addr.to_string(),
            recovering_shards: self.node.recovering_shards(),
        }))
    }
}
