//! The gRPC transport: one cached channel per peer, shared by every shard group. Raft
//! requests and forwards travel on the peer's link (`crate::link`: one stream, batched
//! frames); snapshots, node info and typing news are unary calls.

use crate::auth::CLUSTER_ID_HEADER;
use crate::faults::Faults;
use crate::link::{LinkClient, LinkError, LinkTarget};
use crate::transport::Connector;
use chorus_proto::cluster::cluster_client::ClusterClient;
use chorus_proto::cluster::{LinkKind, NodeInfoReply, NodeInfoRequest, ShardMessage};
use chorus_store::{ChorusNode, TypeConfig};
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{RaftNetworkFactory, RaftNetworkV2};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The shortest deadline given to a Raft RPC.
pub const MIN_RPC_TIMEOUT: Duration = Duration::from_millis(1000);

/// Largest gRPC message (snapshots travel in one message).
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Which RPC of the Cluster service to call.
#[derive(Debug, Clone, Copy)]
pub enum Rpc {
    /// AppendEntries.
    AppendEntries,
    /// Vote.
    Vote,
    /// Pre-Vote.
    PreVote,
    /// InstallSnapshot.
    InstallSnapshot,
    /// TransferLeader.
    TransferLeader,
    /// Forward.
    Forward,
    /// Ephemeral (typing indicators).
    Ephemeral,
}

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The request never left this node: no link to the peer could be opened.
    #[error("not sent: {0}")]
    NotDelivered(String),
    /// No connection could be made, or the transport failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The peer refused us: wrong secret or another cluster.
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The peer answered with an error status.
    #[error("peer error: {0}")]
    Status(String),
    /// The peer did not understand the request (INVALID_ARGUMENT): a request kind that its
    /// release does not know, or a payload it could not decode.
    #[error("not understood by the peer: {0}")]
    NotUnderstood(String),
    /// The reply did not decode.
    #[error("bad reply: {0}")]
    Decode(String),
}

/// The streams to one peer, so that one kind of traffic never waits behind another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Appends (up to megabytes while a follower catches up).
    Raft,
    /// Small and urgent: votes, leadership transfers, liveness notices. Behind a large
    /// append, a notice arriving late would start an election nobody needs.
    Control,
    /// Forwarded requests (answered after a commit).
    Forward,
}

struct Peer {
    addr: String,
    channel: Channel,
    raft_lane: LinkClient,
    control_lane: LinkClient,
    forward_lane: LinkClient,
}

/// Cached channels and links to peers plus the credentials every call carries.
pub struct PeerPool {
    proof: Option<String>,
    cluster_id: Arc<RwLock<Option<String>>>,
    peers: RwLock<HashMap<u64, Peer>>,
    last_refusal_log: Mutex<HashMap<u64, Instant>>,
    faults: Arc<Faults>,
    connector: Arc<dyn Connector>,
}

impl PeerPool {
    /// A pool presenting `proof` (see [`crate::auth::secret_proof`]), reaching peers through
    /// `connector`.
    pub fn new(proof: Option<String>, faults: Arc<Faults>, connector: Arc<dyn Connector>) -> Arc<Self> {
        Arc::new(PeerPool {
            proof,
            cluster_id: Arc::new(RwLock::new(None)),
            peers: RwLock::new(HashMap::new()),
            last_refusal_log: Mutex::new(HashMap::new()),
            faults,
            connector,
        })
    }

    /// The node's fault-injection switches (test-only).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    fn check_not_isolated(&self) -> Result<(), CallError> {
        if self.faults.isolated() {
            return Err(CallError::Transport("isolated by fault injection".into()));
        }
        Ok(())
    }

    /// Sets the cluster id sent with every call.
    pub fn set_cluster_id(&self, id: Option<String>) {
        *self.cluster_id.write().expect("lock") = id;
    }

    fn channel(&self, node: u64, addr: &str) -> Result<Channel, CallError> {
        self.peer(node, addr, Lane::Raft).map(|(channel, _)| channel)
    }

    /// The channel to `node` at `addr` and one of its lanes (made on first use, remade when
    /// the address changes).
    fn peer(&self, node: u64, addr: &str, lane: Lane) -> Result<(Channel, LinkClient), CallError> {
        let pick = |peer: &Peer| {
            let lane = match lane {
                Lane::Raft => &peer.raft_lane,
                Lane::Control => &peer.control_lane,
                Lane::Forward => &peer.forward_lane,
            };
            (peer.channel.clone(), lane.clone())
        };
        if let Some(peer) = self.peers.read().expect("lock").get(&node)
            && peer.addr == addr
        {
            return Ok(pick(peer));
        }
        let channel = crate::transport::channel(self.connector.clone(), addr)
            .map_err(|e| CallError::Transport(format!("bad address {addr}: {e}")))?;
        let target = LinkTarget {
            channel: channel.clone(),
            proof: self.proof.clone(),
            cluster_id: self.cluster_id.clone(),
        };
        let peer = Peer {
            addr: addr.to_string(),
            channel,
            raft_lane: LinkClient::start(target.clone()),
            control_lane: LinkClient::start(target.clone()),
            forward_lane: LinkClient::start(target),
        };
        let picked = pick(&peer);
        self.peers.write().expect("lock").insert(node, peer);
        Ok(picked)
    }

    /// Calls `rpc` on `node` at `addr` for `shard` with a postcard-encoded payload.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: u64,
        addr: &str,
        rpc: Rpc,
        shard: u32,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        self.check_not_isolated()?;
        let payload = postcard::to_stdvec(request).map_err(|e| CallError::Decode(e.to_string()))?;
        let lane = match rpc {
            Rpc::Forward => Lane::Forward,
            Rpc::Vote | Rpc::PreVote | Rpc::TransferLeader => Lane::Control,
            Rpc::AppendEntries | Rpc::InstallSnapshot | Rpc::Ephemeral => Lane::Raft,
        };
        let (channel, link) = self.peer(node, addr, lane)?;
        let link_kind = match rpc {
            Rpc::AppendEntries => Some(LinkKind::AppendEntries),
            Rpc::Vote => Some(LinkKind::Vote),
            Rpc::PreVote => Some(LinkKind::PreVote),
            Rpc::TransferLeader => Some(LinkKind::TransferLeader),
            Rpc::Forward => Some(LinkKind::Forward),
            Rpc::InstallSnapshot | Rpc::Ephemeral => None,
        };
        let reply: Result<Vec<u8>, tonic::Status> = match link_kind {
            Some(kind) => match tokio::time::timeout(timeout, link.call(shard, kind, payload)).await {
                Ok(Ok(payload)) => Ok(payload),
                Ok(Err(LinkError::NotSent(status))) => {
                    // Refused at the link's opening (wrong secret, another cluster): said and
                    // logged as such, not as a peer that is merely unreachable.
                    return Err(match classify_status(&status) {
                        CallError::Refused(_) => self.classify(node, addr, status),
                        _ => CallError::NotDelivered(status.message().to_string()),
                    });
                }
                Ok(Err(LinkError::Failed(status))) => Err(status),
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no answer from node {node} within {timeout:?}"
                ))),
            },
            None => {
                let mut client = ClusterClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES);
                let mut req = tonic::Request::new(ShardMessage { shard, payload });
                req.set_timeout(timeout);
                let meta = req.metadata_mut();
                crate::auth::present(meta, self.proof.as_deref());
                if let Some(id) = self.cluster_id.read().expect("lock").as_deref()
                    && let Ok(value) = id.parse()
                {
                    meta.insert(CLUSTER_ID_HEADER, value);
                }
                let reply = match rpc {
                    Rpc::InstallSnapshot => client.install_snapshot(req).await,
                    _ => client.ephemeral(req).await,
                };
                reply.map(|r| r.into_inner().payload)
            }
        };
        // A reply that arrives after the cut is dropped too, as the network would.
        self.check_not_isolated()?;
        match reply {
            Ok(payload) => postcard::from_bytes(&payload).map_err(|e| CallError::Decode(e.to_string())),
            Err(status) => Err(self.classify(node, addr, status)),
        }
    }

    /// Sends `notice` to `node` on its control lane without waiting for (or getting) an answer.
    pub fn notify<Req: Serialize>(
        &self,
        node: u64,
        addr: &str,
        kind: LinkKind,
        shard: u32,
        notice: &Req,
    ) -> Result<(), CallError> {
        self.check_not_isolated()?;
        let payload = postcard::to_stdvec(notice).map_err(|e| CallError::Decode(e.to_string()))?;
        let (_, link) = self.peer(node, addr, Lane::Control)?;
        link.notify(shard, kind, payload);
        Ok(())
    }

    /// Asks `node` who it is.
    pub async fn node_info(
        &self,
        node: u64,
        addr: &str,
        timeout: Duration,
    ) -> Result<NodeInfoReply, CallError> {
        self.check_not_isolated()?;
        let channel = self.channel(node, addr)?;
        let mut req = tonic::Request::new(NodeInfoRequest {});
        req.set_timeout(timeout);
        crate::auth::present(req.metadata_mut(), self.proof.as_deref());
        let reply = ClusterClient::new(channel).node_info(req).await;
        self.check_not_isolated()?;
        reply
            .map(|r| r.into_inner())
            .map_err(|status| self.classify(node, addr, status))
    }

    /// Asks the member at `addr` to add node `id` (reached at `raft_addr`) to every shard;
    /// answers the cluster id once it is a voter everywhere.
    pub async fn join(
        &self,
        addr: &str,
        id: u64,
        raft_addr: &str,
        timeout: Duration,
    ) -> Result<String, CallError> {
        self.check_not_isolated()?;
        // The member's id is unknown yet: 0 names the channel.
        let channel = self.channel(0, addr)?;
        let mut req = tonic::Request::new(chorus_proto::cluster::JoinRequest {
            node_id: id,
            raft_addr: raft_addr.to_string(),
        });
        req.set_timeout(timeout);
        crate::auth::present(req.metadata_mut(), self.proof.as_deref());
        ClusterClient::new(channel)
            .join(req)
            .await
            .map(|r| r.into_inner().cluster_id)
            .map_err(|status| self.classify(0, addr, status))
    }

    fn classify(&self, node: u64, addr: &str, status: tonic::Status) -> CallError {
        let error = classify_status(&status);
        if matches!(error, CallError::Refused(_)) {
            let mut last = self.last_refusal_log.lock().expect("lock");
            let now = crate::clock::now();
            if last
                .get(&node)
                .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(10))
            {
                last.insert(node, now);
                tracing::error!(peer = node, %addr, reason = %status.message(), "peer refused this node's cluster credentials: check that every node has the same cluster secret and belongs to the same cluster");
            }
        }
        error
    }
}

/// What a status a peer answered with (or the transport failed with) means for the caller.
pub fn classify_status(status: &tonic::Status) -> CallError {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            CallError::Refused(status.message().to_string())
        }
        tonic::Code::Unavailable
        | tonic::Code::Unknown
        | tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded => {
            CallError::Transport(format!("{}: {}", status.code(), status.message()))
        }
        tonic::Code::InvalidArgument => CallError::NotUnderstood(status.message().to_string()),
        _ => CallError::Status(format!("{}: {}", status.code(), status.message())),
    }
}

/// Creates per-peer network clients for one shard group.
#[derive(Clone)]
pub struct ShardNetworkFactory {
    /// The shard.
    pub shard: u32,
    /// The shared pool.
    pub pool: Arc<PeerPool>,
}

/// The network client of one shard group towards one peer.
pub struct ShardNetwork {
    shard: u32,
    target: u64,
    addr: String,
    pool: Arc<PeerPool>,
}

impl RaftNetworkFactory<TypeConfig> for ShardNetworkFactory {
    type Network = ShardNetwork;

    async fn new_client(&mut self, target: u64, node: &ChorusNode) -> Self::Network {
        ShardNetwork {
            shard: self.shard,
            target,
            addr: node.raft_addr.clone(),
            pool: self.pool.clone(),
        }
    }
}

/// openraft's error for a failed call of `shard`'s group to `target` (openraft logs these
/// without saying which group: the message does).
fn rpc_error(shard: u32, target: u64, err: CallError) -> RPCError<TypeConfig> {
    let message = format!("shard {shard}, node {target}: {err}");
    match err {
        CallError::NotDelivered(_) | CallError::Transport(_) | CallError::Refused(_) => {
            RPCError::Unreachable(Unreachable::<TypeConfig>::from_string(message))
        }
        CallError::Status(_) | CallError::NotUnderstood(_) | CallError::Decode(_) => {
            RPCError::Network(NetworkError::<TypeConfig>::from_string(message))
        }
    }
}

impl ShardNetwork {
    async fn raft_call<Req: Serialize, Resp: DeserializeOwned, E: std::fmt::Display + DeserializeOwned>(
        &self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let result: Result<Resp, E> = self
            .pool
            .call(
                self.target,
                &self.addr,
                rpc,
                self.shard,
                request,
                // openraft derives the deadline from the heartbeat interval (60 ms by
                // default); an append carrying many entries needs longer on a busy machine.
                option.hard_ttl().max(MIN_RPC_TIMEOUT),
            )
            .await
            .map_err(|e| rpc_error(self.shard, self.target, e))?;
        result.map_err(|e| RPCError::Network(NetworkError::<TypeConfig>::from_string(format!("remote: {e}"))))
    }
}

impl RaftNetworkV2<TypeConfig> for ShardNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call::<_, _, openraft::errors::RaftError<TypeConfig>>(Rpc::AppendEntries, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call::<_, _, openraft::errors::RaftError<TypeConfig>>(Rpc::Vote, &rpc, &option)
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let vote = rpc.vote;
        match self
            .pool
            .call::<_, Result<VoteResponse<TypeConfig>, openraft::errors::RaftError<TypeConfig>>>(
                self.target,
                &self.addr,
                Rpc::PreVote,
                self.shard,
                &rpc,
                option.hard_ttl().max(MIN_RPC_TIMEOUT),
            )
            .await
        {
            Ok(result) => result.map_err(|e| {
                RPCError::Network(NetworkError::<TypeConfig>::from_string(format!("remote: {e}")))
            }),
            // A peer of a release without Pre-Vote does not know the request. As openraft does
            // for a network without it, count that as a grant: the real vote still decides, and
            // a cluster in the middle of a rolling upgrade keeps electing leaders.
            Err(CallError::NotUnderstood(_)) => Ok(VoteResponse::new(vote, None, true)),
            Err(e) => Err(rpc_error(self.shard, self.target, e)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = (vote, snapshot.meta, snapshot.snapshot);
        let timeout = option.hard_ttl().max(Duration::from_secs(30));
        let result: Result<SnapshotResponse<TypeConfig>, openraft::errors::Fatal<TypeConfig>> = self
            .pool
            .call(
                self.target,
                &self.addr,
                Rpc::InstallSnapshot,
                self.shard,
                &request,
                timeout,
            )
            .await
            .map_err(|e| StreamingError::from(rpc_error(self.shard, self.target, e)))?;
        result.map_err(|e| {
            StreamingError::Network(NetworkError::<TypeConfig>::from_string(format!("remote: {e}")))
        })
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call::<_, _, openraft::errors::Fatal<TypeConfig>>(Rpc::TransferLeader, &req, &option)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A release without Pre-Vote answers a PRE_VOTE link message with INVALID_ARGUMENT
    /// (`link::handle`: not a request); `ShardNetwork::pre_vote` counts exactly that as a grant,
    /// and nothing else (a peer that cannot be reached grants nothing).
    #[test]
    fn an_unknown_request_kind_is_not_understood_and_an_unreachable_peer_is_not() {
        let old_release = tonic::Status::invalid_argument("link message kind 5 is not a request");
        assert!(matches!(
            classify_status(&old_release),
            CallError::NotUnderstood(_)
        ));
        let starting = tonic::Status::unavailable("this node is starting");
        assert!(matches!(classify_status(&starting), CallError::Transport(_)));
        let refused = tonic::Status::unauthenticated("wrong secret");
        assert!(matches!(classify_status(&refused), CallError::Refused(_)));
    }
}
