//! `chorus node`: wires storage, the cluster core, the gRPC server and the HTTP server.

use crate::config::NodeConfig;
use anyhow::{Context, Result};
use chorus_access::{Authenticator, RolePermissions};
use chorus_cluster::service::{ClusterService, StartingNode};
use chorus_cluster::{ClusterConfig, ClusterMetrics, ClusterNode};
use chorus_core::ChannelPattern;
use chorus_http::HttpState;
use chorus_http::metrics::HttpMetrics;
use chorus_store::{NodeStore, StoreMetrics};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

fn init_tracing() {
    let filter = EnvFilter::try_from_env("CHORUS_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn"));
    // Repeats from one place are limited after the level filter: only what would be written
    // counts against a place's share.
    let limit = crate::log_limit::RepeatLimit::default();
    let output = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(limit.clone())
        .with_filter(filter);
    if tracing_subscriber::registry().with(output).try_init().is_ok() {
        limit.report_every_window();
    }
}

fn compile_roles(config: &NodeConfig) -> Result<BTreeMap<String, RolePermissions>> {
    let compile = |patterns: &[String]| -> Result<Vec<ChannelPattern>> {
        patterns
            .iter()
            .map(|p| Ok(ChannelPattern::for_roles(p.clone())?))
            .collect()
    };
    config
        .roles
        .iter()
        .map(|(name, role)| {
            Ok((
                name.clone(),
                RolePermissions {
                    publish: compile(&role.publish)?,
                    subscribe: compile(&role.subscribe)?,
                    admin: role.admin,
                    rates: config.clients.role_rates(role),
                },
            ))
        })
        .collect()
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(config: NodeConfig) -> Result<()> {
    init_tracing();
    let raft_listener = TcpListener::bind(config.raft)
        .await
        .with_context(|| format!("`raft`: cannot listen on {}", config.raft))?;
    let http_listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("`http`: cannot listen on {}", config.http))?;

    let peer_tls = config
        .cluster_tls
        .as_ref()
        .map(|files| {
            chorus_cluster::tls::PeerTls::load(
                &files.ca_file,
                &files.cert_file,
                &files.key_file,
                &config.cluster_secret,
            )
        })
        .transpose()
        .context("`cluster_tls`")?;
    // Peers are answered from now on: until the shards are open, every call is refused at
    // once (`StartingNode`), so that peers go elsewhere instead of waiting for this start.
    let starting = StartingNode::default();
    let grpc = tonic::transport::Server::builder().add_service(ClusterService::server(starting.clone()));
    let grpc_task = match &peer_tls {
        Some(tls) => {
            tracing::info!("node-to-node traffic uses mutual TLS with the cluster CA");
            tokio::spawn(grpc.serve_with_incoming(tls.incoming(raft_listener)))
        }
        None => {
            tokio::spawn(grpc.serve_with_incoming(chorus_cluster::transport::tcp_incoming(raft_listener)))
        }
    };
    let mut registry = Registry::default();
    let store_metrics = StoreMetrics::default();
    store_metrics.register(&mut registry);
    let cluster_metrics = ClusterMetrics::default();
    cluster_metrics.register(&mut registry);
    let http_metrics = HttpMetrics::default();
    http_metrics.register(&mut registry);
    let gateway_metrics = chorus_gateway::GatewayMetrics::default();
    gateway_metrics.register(&mut registry);

    let store = NodeStore::open_with(
        &config.data_dir,
        config.id,
        config.shards,
        config.storage.options(),
        store_metrics,
    )
    .with_context(|| {
        format!(
            "refusing to start on data directory {}",
            config.data_dir.display()
        )
    })?;
    let recovery = store.recovery_report();
    tracing::info!(
        segments = recovery.segments,
        batches = recovery.batches,
        torn_tail_bytes = recovery.torn_tail.as_ref().map_or(0, |t| t.2),
        damaged = recovery.damage.is_some(),
        "Raft log opened"
    );
    let cluster = ClusterNode::start(
        ClusterConfig {
            node_id: config.id,
            raft_addr: config.raft,
            http_addr: config.http,
            shard_count: config.shards,
            peers: config.peers.clone(),
            cluster_secret: config.cluster_secret.clone(),
            limits: config.history_limits(),
            quotas: config.history_quotas(),
            sweep_interval: Duration::from_secs(config.history.sweep_interval_secs),
            heartbeat_ms: config.raft_timing.heartbeat_ms,
            election_timeout_ms: (
                config.raft_timing.election_timeout_min_ms,
                config.raft_timing.election_timeout_max_ms,
            ),
            snapshot_every_entries: config.raft_timing.snapshot_every_entries,
            logs_kept_after_snapshot: config.raft_timing.logs_kept_after_snapshot,
            max_batch_commands: config.raft_timing.max_batch_commands,
            node_entries_in_flight: config.raft_timing.node_entries_in_flight,
            typing: config.typing(),
            peer_tls: peer_tls.clone(),
            audit: match &config.audit_file {
                Some(path) => chorus_cluster::audit::AuditLog::open(path, config.id)
                    .with_context(|| format!("`audit_file`: cannot open {}", path.display()))?,
                None => chorus_cluster::audit::AuditLog::disabled(),
            },
        },
        store,
        cluster_metrics,
    )
    .await
    .context("refusing to start")?;
    starting.started(cluster.clone());

    let auth = Authenticator::new(&config.jwt_secret, compile_roles(&config)?)
        .with_keys(config.auth.verification_keys()?)?
        .with_issuer(config.auth.issuer.clone())
        .with_audience(config.auth.audience.clone())
        .with_revocations({
            let cluster = cluster.clone();
            Arc::new(move |claims: &chorus_access::Claims| {
                cluster.revoked(&claims.sub, claims.iat, claims.jti.as_deref())
            })
        })
        .with_max_lifetime(Duration::from_secs(config.clients.max_token_lifetime_s))
        .with_rates(config.clients.rate_settings())
        .with_private_channels(config.auth.private_channel_patterns()?);
    auth.register_metrics(&mut registry);
    let state = Arc::new(HttpState {
        cluster: cluster.clone(),
        auth,
        registry,
        max_payload_bytes: config.max_payload_bytes,
        body_timeout: Duration::from_millis(config.clients.http_body_timeout_ms),
    });
    let gateway_config = config.gateway();
    let tls = chorus_gateway::tls::load_or_generate(
        config.clients.tls_cert.as_deref(),
        config.clients.tls_key.as_deref(),
        &config.data_dir,
        certificate_names(&config),
    )
    .context("`clients.tls_cert` / `clients.tls_key`")?;
    let endpoint = chorus_gateway::quic::bind(config.quic, &tls, gateway_config.idle_timeout)?;
    tracing::info!(
        quic = %config.quic,
        certificate = %tls.cert_path.display(),
        sha256 = %tls.fingerprint,
        generated = tls.generated,
        "QUIC listener ready; clients trust this certificate or its fingerprint"
    );
    let gateway = chorus_gateway::Gateway::new(
        cluster.clone(),
        state.auth.clone(),
        gateway_config,
        gateway_metrics,
    );
    let quic_task = tokio::spawn(gateway.clone().serve_quic(endpoint.clone()));
    let app = chorus_http::router(state, http_metrics).merge(gateway.ws_router());
    let http_limits = chorus_http::server::ServeLimits {
        header_read_timeout: Duration::from_millis(config.clients.http_header_timeout_ms),
        max_connections_per_ip: config.clients.http_max_connections_per_ip,
    };
    // HTTPS and WSS with the certificate the QUIC listener presents.
    let http_tls = if config.clients.http_tls {
        let mut server =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(tls.chain.clone(), tls.key.clone_key())
                .context("`clients.http_tls`: the certificate of `clients.tls_cert`")?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(Arc::new(server))
    } else {
        None
    };
    let http_task = tokio::spawn(chorus_http::server::serve(
        http_listener,
        app,
        http_limits,
        http_tls,
    ));
    tracing::info!(
        node = config.id,
        http = %format_args!("{}://{}", if config.clients.http_tls { "https" } else { "http" }, config.http),
        raft = %config.raft,
        shards = config.shards,
        data_dir = %config.data_dir.display(),
        "chorus node started"
    );

    if let Some(member) = &config.join {
        let (cluster, member) = (cluster.clone(), member.clone());
        tokio::spawn(async move { join(member, cluster).await });
    }

    shutdown_signal().await;
    tracing::info!("shutting down");
    http_task.abort();
    endpoint.close(0u32.into(), b"node shutting down");
    quic_task.abort();
    cluster.shutdown().await;
    grpc_task.abort();
    Ok(())
}

/// Names in a generated certificate: localhost, loopback, and the QUIC address when specific.
fn certificate_names(config: &NodeConfig) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ip = config.quic.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    names
}

/// Asks a member (at its node-to-node address) to add this node to every shard, retrying
/// until it succeeds.
async fn join(member: String, cluster: ClusterNode) {
    let mut delay = Duration::from_millis(200);
    loop {
        match cluster.join_via(&member).await {
            Ok(cluster_id) => {
                tracing::info!(via = %member, %cluster_id, "joined the cluster as a voter of every shard");
                return;
            }
            Err(e) => tracing::warn!(via = %member, error = %e, "join failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
