//! Mutual TLS between nodes: a cluster on certificates of `chorus certs init` replicates and
//! fails over; a captured node credential is useless without a certificate of the cluster's
//! CA, and a certificate of the CA is useless without the cluster secret, which every
//! connection proves for its own TLS session.

mod common;

use anyhow::{Context, Result};
use chorus_cluster::tls::PeerTls;
use chorus_cluster::transport::{Connector, TcpConnector};
use chorus_proto::cluster::NodeInfoRequest;
use chorus_proto::cluster::cluster_client::ClusterClient;
use common::builder;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn tcp() -> Arc<dyn Connector> {
    Arc::new(TcpConnector {
        timeout: Duration::from_secs(2),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_with_mutual_tls_replicates_and_fails_over() -> Result<()> {
    let mut cluster = builder().cluster_tls().start().await?;
    assert!(cluster.log(1).contains("mutual TLS"), "{}", cluster.log(1));
    // Publishes through every node: two thirds are forwarded to their shard's leader.
    for node in 1..=3 {
        for i in 0..5 {
            cluster
                .publish(node, "tls.room", json!({"node": node, "i": i}), None)
                .await?;
        }
    }
    let reference = cluster.history(1, "tls.room").await?;
    assert_eq!(reference.len(), 15);
    for node in 2..=3 {
        assert_eq!(cluster.history(node, "tls.room").await?, reference, "node {node}");
    }
    // The shard's leader dies; the others elect a new one over TLS and go on.
    let shard = common::shard_of("tls.room", cluster.shards);
    let leader = cluster.leader_of(1, shard).await?.context("a leader")?;
    cluster.kill(leader);
    let survivor = (1..=3).find(|n| *n != leader).unwrap();
    common::wait_for(
        "a publish after the leader's death",
        Duration::from_secs(20),
        || async {
            cluster
                .publish(survivor, "tls.room", json!({"after": "failover"}), None)
                .await
                .ok()
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_captured_node_credential_is_useless_without_a_cluster_certificate() -> Result<()> {
    let cluster = builder().nodes(1).cluster_tls().start().await?;
    let certs = cluster.certs.clone().context("certificates")?;
    let raft = cluster.node(1).raft.to_string();
    let proof = chorus_cluster::auth::secret_proof(&cluster.node(1).cluster_secret);

    // Replayed over plain gRPC, with the right proof: the node does not even speak to it.
    let replay = async {
        let mut client = ClusterClient::connect(format!("http://{raft}")).await?;
        let mut request = tonic::Request::new(NodeInfoRequest {});
        request
            .metadata_mut()
            .insert(chorus_cluster::auth::AUTH_HEADER, proof.parse()?);
        anyhow::Ok(client.node_info(request).await?)
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), replay).await?;
    assert!(refused.is_err(), "a plaintext replay was answered");

    // With a certificate of another CA (another cluster's, or one made up): refused at the
    // handshake.
    let other = tempfile::tempdir()?;
    chorus_cluster::tls::generate(other.path(), &[1], &["localhost".into()])?;
    let secret = cluster.node(1).cluster_secret.clone();
    let stranger = PeerTls::load(
        &other.path().join("ca.pem"),
        &other.path().join("node-1.pem"),
        &other.path().join("node-1.key"),
        &secret,
    )?;
    let handshake = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stranger.connector(tcp()).connect(&raft).await?;
        // TLS 1.3: the server checks the client's certificate after the client's handshake
        // is sent; its refusal arrives on the first read.
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 16];
        let read = stream.read(&mut buf).await?;
        anyhow::ensure!(read > 0, "closed");
        anyhow::Ok(())
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), handshake).await?;
    assert!(refused.is_err(), "a stranger's certificate was accepted");

    // A certificate of the cluster's CA with the cluster secret is answered (the refusals
    // above were the certificates'); with another secret, or with the static proof of the
    // right one in a header (what a node without TLS sends), it is not: the secret is
    // proven for each TLS session, and a proof from elsewhere is worth nothing.
    let node_info = |secret: String, header: Option<String>| {
        let certs = certs.clone();
        let raft = raft.clone();
        async move {
            let member = PeerTls::load(
                &certs.join("ca.pem"),
                &certs.join("node-9.pem"),
                &certs.join("node-9.key"),
                &secret,
            )?;
            let connector = member.connector(tcp());
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{raft}"))?
                .connect_with_connector(tower::service_fn(move |_| {
                    let (connector, raft) = (connector.clone(), raft.clone());
                    async move { connector.connect(&raft).await.map(hyper_util::rt::TokioIo::new) }
                }))
                .await?;
            let mut request = tonic::Request::new(NodeInfoRequest {});
            if let Some(header) = header {
                request
                    .metadata_mut()
                    .insert(chorus_cluster::auth::AUTH_HEADER, header.parse()?);
            }
            anyhow::Ok(ClusterClient::new(channel).node_info(request).await?.into_inner())
        }
    };
    let within = Duration::from_secs(10);
    let answered = tokio::time::timeout(within, node_info(secret.clone(), None)).await??;
    assert_eq!(answered.node_id, 1);
    let wrong = tokio::time::timeout(within, node_info("not-the-secret".into(), Some(proof.clone()))).await?;
    assert!(
        wrong.is_err(),
        "a wrong secret with the captured static proof was answered"
    );

    // The keys are the owner's only.
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "node-1.key"] {
        let mode = std::fs::metadata(certs.join(key))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    Ok(())
}

/// The secret is proven both ways: a node sends nothing over a connection to a peer that has
/// a certificate of the cluster CA (stolen, say) but cannot prove the cluster secret for the
/// session, so taking over a node's address is not enough to receive its traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_sends_nothing_to_a_peer_without_the_cluster_secret() -> Result<()> {
    let dir = tempfile::tempdir()?;
    chorus_cluster::tls::generate(dir.path(), &[1, 2], &["localhost".into()])?;
    let tls_of = |id: u64, secret: &str| {
        PeerTls::load(
            &dir.path().join("ca.pem"),
            &dir.path().join(format!("node-{id}.pem")),
            &dir.path().join(format!("node-{id}.key")),
            secret,
        )
    };
    let node = tls_of(1, "the-cluster-secret")?.connector(tcp());
    for (peer_secret, answered) in [("not-the-secret", false), ("the-cluster-secret", true)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let _accepted = tls_of(2, peer_secret)?.incoming(listener);
        let connected = tokio::time::timeout(Duration::from_secs(10), node.connect(&addr)).await?;
        assert_eq!(connected.is_ok(), answered, "a peer with secret {peer_secret:?}");
    }
    Ok(())
}
