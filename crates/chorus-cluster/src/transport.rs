//! The seam under node-to-node traffic: how a node opens a byte stream to a peer
//! ([`Connector`]) and where its gRPC server's connections come from ([`tcp_incoming`]).
//!
//! Everything above it (gRPC, the links of `crate::link`, Raft) sees only byte streams, so a
//! later in-process simulation of the whole cluster (a simulated network, as turmoil gives
//! tonic) supplies its own connector to [`crate::ClusterNode::start_with`] and its own stream
//! of accepted connections to the server, and nothing else changes. Production uses TCP.

use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};

/// A byte stream to a peer.
pub trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PeerStream for T {}

/// A connection being opened.
pub type Connecting = Pin<Box<dyn Future<Output = io::Result<Box<dyn PeerStream>>> + Send>>;

/// Opens byte streams to peers.
pub trait Connector: Send + Sync + 'static {
    /// A stream to `addr`, a peer's node-to-node address (`host:port`).
    fn connect(&self, addr: &str) -> Connecting;
}

/// TCP with TCP_NODELAY (small Raft messages must not wait for the previous segment's ACK),
/// giving up after `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct TcpConnector {
    /// How long a connection attempt may take.
    pub timeout: Duration,
}

impl Connector for TcpConnector {
    fn connect(&self, addr: &str) -> Connecting {
        let (addr, timeout) = (addr.to_string(), self.timeout);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(&addr))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {addr} took over {timeout:?}"),
                    )
                })??;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn PeerStream>)
        })
    }
}

/// A gRPC channel to `addr` over streams that `connector` opens (lazily, and again after a
/// connection breaks).
pub(crate) fn channel(connector: Arc<dyn Connector>, addr: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let addr = addr.to_string();
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let (connector, addr) = (connector.clone(), addr.clone());
        async move { connector.connect(&addr).await.map(TokioIo::new) }
    })))
}

/// The server side of TCP: accepted sockets with TCP_NODELAY. tonic's own `tcp_nodelay`
/// applies only to listeners it binds itself; without it a node's small answers waited for
/// the ACK of the previous segment (Nagle; 40 ms delayed ACKs on Linux).
pub fn tcp_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Faults;
    use crate::network::{CallError, PeerPool, Rpc};
    use std::sync::Mutex;

    /// Records where it was asked to connect and refuses: a simulated network in which
    /// nobody listens.
    #[derive(Default)]
    struct Recording {
        asked: Mutex<Vec<String>>,
    }

    impl Connector for Recording {
        fn connect(&self, addr: &str) -> Connecting {
            self.asked.lock().unwrap().push(addr.to_string());
            Box::pin(async { Err(io::Error::new(io::ErrorKind::ConnectionRefused, "nobody listens")) })
        }
    }

    #[tokio::test]
    async fn peers_are_reached_only_through_the_connector() {
        let connector = Arc::new(Recording::default());
        let pool = PeerPool::new(
            Some("proof".into()),
            Arc::new(Faults::default()),
            connector.clone(),
        );
        // A name no resolver knows: only the connector gives it a meaning.
        let result = pool
            .call::<_, ()>(
                2,
                "node-2.simulated:7702",
                Rpc::Vote,
                0,
                &(),
                Duration::from_secs(2),
            )
            .await;
        assert!(
            matches!(result, Err(CallError::NotDelivered(_))),
            "a refused connection means the request never left: {result:?}"
        );
        let asked = connector.asked.lock().unwrap().clone();
        assert!(!asked.is_empty(), "the connector was never asked");
        assert!(asked.iter().all(|a| a == "node-2.simulated:7702"), "{asked:?}");
    }
}
