//! An attacker's view of a node: what anyone who can reach its ports can make it do.

mod common;

use anyhow::{Context, Result};
use chorus_proto::cluster::ShardMessage;
use chorus_proto::cluster::cluster_client::ClusterClient;
use common::builder;
use serde_json::json;

/// Resident and peak resident memory of a process, in bytes (`/proc/PID/status`).
fn memory_of(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        let kib: u64 = line.split_whitespace().nth(1).context("a number")?.parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Found by probing: one 400 MB gRPC message without credentials, sent to the Raft port,
/// raised the node's resident memory from 49 MB to 848 MB before it was refused, because the
/// whole message was read and decoded first. Credentials are now checked from the headers,
/// before the body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unauthenticated_400_mb_message_is_refused_before_it_is_read() -> Result<()> {
    let cluster = builder().start().await?;
    let pid = cluster.node(1).pid().context("node 1 runs")?;
    let (before, _) = memory_of(pid)?;

    let mut client = ClusterClient::connect(format!("http://{}", cluster.node(1).raft))
        .await?
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let flood = ShardMessage {
        shard: 0,
        payload: vec![7u8; 400 * 1024 * 1024],
    };
    let refused = client
        .append_entries(flood)
        .await
        .expect_err("an unauthenticated call must be refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // A forged proof is refused the same way.
    let mut forged = tonic::Request::new(ShardMessage {
        shard: 0,
        payload: vec![1, 2, 3],
    });
    forged
        .metadata_mut()
        .insert("x-chorus-auth", "00".repeat(32).parse()?);
    let refused = client
        .vote(forged)
        .await
        .expect_err("a forged proof must be refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let (after, peak) = memory_of(pid)?;
    eprintln!(
        "node 1 resident memory: {} MiB before, {} MiB after, {} MiB at its peak",
        before >> 20,
        after >> 20,
        peak >> 20
    );
    assert!(
        peak < before + 32 * 1024 * 1024,
        "the refused message was buffered: peak {} MiB against {} MiB before",
        peak >> 20,
        before >> 20
    );
    // The node goes on serving.
    let reply = cluster
        .publish(1, "after.flood", json!({"ok": true}), None)
        .await?;
    assert_eq!(reply["offset"], json!(1));
    Ok(())
}

/// Found by probing: snapshots were world-readable (0644). Snapshots and log segments hold
/// every retained message; the TLS key is secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_logs_and_keys_are_readable_by_their_owner_only() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let cluster = builder()
        .config("[raft_timing]\nsnapshot_every_entries = 10\n")
        .start()
        .await?;
    for i in 0..40u64 {
        cluster.publish(1, "private.notes", json!({"i": i}), None).await?;
    }
    let data_dir = cluster.node(1).data_dir.clone();
    let files = common::wait_for("a snapshot on node 1", std::time::Duration::from_secs(20), || {
        let data_dir = data_dir.clone();
        async move {
            let files: Vec<std::path::PathBuf> = walk(&data_dir);
            files
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "snap"))
                .then_some(files)
        }
    })
    .await?;
    let mut checked = 0;
    for path in &files {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".snap") || name.ends_with(".seg") || name == "key.pem" {
            let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "snapshot, log segment and key checked: {files:?}");
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Found by probing: 300 made-up HTTP methods on `/health` created 300 metric series that
/// were never dropped. Labels come from known values only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn made_up_http_methods_do_not_create_metric_series() -> Result<()> {
    let cluster = builder().nodes(1).start().await?;
    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("PROBE{i}").as_bytes())?;
        cluster
            .client
            .request(method, format!("{}/health", cluster.url(1)))
            .send()
            .await?;
    }
    let metrics = cluster
        .client
        .get(format!("{}/metrics", cluster.url(1)))
        .send()
        .await?
        .text()
        .await?;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("chorus_http_request_seconds_count"))
        .collect();
    assert!(
        !series.iter().any(|l| l.contains("PROBE")),
        "made-up methods became labels: {series:?}"
    );
    assert!(
        series.iter().any(|l| l.contains("method=\"other\"")),
        "the probes are counted as other: {series:?}"
    );
    Ok(())
}

/// Found by probing: a publish by mallory with key `order-42` made alice's later publish with
/// the same key answer `duplicate: true`, and alice's message was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_users_idempotency_key_does_not_swallow_a_publish() -> Result<()> {
    let cluster = builder().nodes(1).start().await?;
    let publish = |who: &'static str, data: &'static str| {
        let token = common::token(who, &["admin"]);
        let request = cluster
            .client
            .post(format!("{}/api/v1/channels/orders/publish", cluster.url(1)))
            .bearer_auth(token)
            .json(&json!({"data": data, "idempotency_key": "order-42"}));
        async move { Ok::<_, anyhow::Error>(request.send().await?.json::<serde_json::Value>().await?) }
    };
    let squatted = publish("mallory", "fake").await?;
    let real = publish("alice", "real").await?;
    assert_eq!(real["duplicate"], json!(false), "{real}");
    assert_eq!(real["offset"], json!(squatted["offset"].as_u64().unwrap() + 1));
    let retry = publish("alice", "real").await?;
    assert_eq!(retry["duplicate"], json!(true), "alice's own retry: {retry}");
    assert_eq!(retry["offset"], real["offset"]);
    Ok(())
}

/// Opens a TCP connection to `addr`, sends `bytes`, and returns it.
async fn raw_connection(addr: std::net::SocketAddr, bytes: &[u8]) -> Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(bytes).await?;
    Ok(stream)
}

/// Whether the node closes `stream` within `within` (a read sees the end or a reset).
async fn closed_by_the_node(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // an answer (408, 400) before the close
        }
    }
}

/// Found by probing: 1,000 slowloris requests and 300 silent sockets stayed open for 50 s
/// (no header-read or idle timeout, no per-address cap), and with 1,024 open files allowed
/// `/health` and publishes on that node timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_and_silent_sockets_are_closed_and_the_node_keeps_serving() -> Result<()> {
    let cluster = builder()
        .nodes(1)
        .config("[clients]\nhttp_header_timeout_ms = 1000\n")
        .start()
        .await?;
    let http = cluster.node(1).http;
    let mut sockets = Vec::new();
    for i in 0..60 {
        let partial: &[u8] = if i % 3 == 0 {
            b"" // silent
        } else {
            b"GET /health HTTP/1.1\r\nHost: chorus\r\nX-Slow: 1\r\n" // headers never finished
        };
        sockets.push(raw_connection(http, partial).await?);
    }
    // The node keeps serving while they hang.
    assert!(
        cluster.is_ready(1).await,
        "/ready answers beside 60 hanging sockets"
    );
    let reply = cluster.publish(1, "still.serving", json!(1), None).await?;
    assert_eq!(reply["offset"], json!(1));
    // Each is closed after the header timeout.
    for (i, socket) in sockets.iter_mut().enumerate() {
        assert!(
            closed_by_the_node(socket, std::time::Duration::from_secs(10)).await,
            "socket {i} is still open"
        );
    }
    Ok(())
}

/// One address may hold at most `http_max_connections_per_ip` connections; a closed one
/// gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_per_address_are_capped() -> Result<()> {
    let cluster = builder()
        .nodes(1)
        .config("[clients]\nhttp_header_timeout_ms = 60000\nhttp_max_connections_per_ip = 8\n")
        .start()
        .await?;
    let http = cluster.node(1).http;
    // The harness's own client may hold a kept-alive connection: count from what is free.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..9 {
        let mut socket = raw_connection(http, b"").await?;
        if closed_by_the_node(&mut socket, std::time::Duration::from_millis(500)).await {
            refused = Some(held.len());
            break;
        }
        held.push(socket);
    }
    let at = refused.context("a ninth connection from one address must be refused")?;
    assert!((7..=8).contains(&at), "refused after {at} connections");
    // A freed place is taken again (once the node has seen the close): an ordinary request on
    // a new connection is answered.
    drop(held.pop());
    common::wait_for(
        "a freed place taken again",
        std::time::Duration::from_secs(10),
        || async { health_on_a_new_connection(http).await.ok().filter(|ok| *ok) },
    )
    .await?;
    Ok(())
}

/// Sends `GET /health` on a new connection; whether `200` came back.
async fn health_on_a_new_connection(http: std::net::SocketAddr) -> Result<bool> {
    use tokio::io::AsyncReadExt;
    let request = b"GET /health HTTP/1.1\r\nHost: chorus\r\nConnection: close\r\n\r\n";
    let mut socket = raw_connection(http, request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), socket.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"))
}

/// A WebSocket keeps its place in the per-address count for as long as it lives (the
/// upgrade hands the socket on; the count goes with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websockets_count_against_the_per_address_cap() -> Result<()> {
    let cluster = builder()
        .nodes(1)
        .config("[clients]\nhttp_header_timeout_ms = 60000\nhttp_max_connections_per_ip = 4\nconnect_timeout_ms = 60000\n")
        .start()
        .await?;
    let http = cluster.node(1).http;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        match tokio_tungstenite::connect_async(format!("ws://{http}/ws")).await {
            Ok((socket, _)) => sockets.push(socket),
            Err(_) => break, // the harness's own kept-alive connection may hold a place
        }
    }
    assert!(sockets.len() >= 3, "{} WebSockets opened", sockets.len());
    let mut extra = raw_connection(http, b"").await?;
    assert!(
        closed_by_the_node(&mut extra, std::time::Duration::from_secs(5)).await,
        "a connection past the cap is closed while the WebSockets live"
    );
    Ok(())
}

/// Tokens from an identity provider: an RS256 key from a PEM file and an ES256 key from a
/// JWKS file, with issuer and audience required, over HTTP and QUIC alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_of_configured_keys_are_accepted_with_issuer_and_audience_checked() -> Result<()> {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/chorus-access/testdata");
    let ec = EncodingKey::from_ec_pem(&std::fs::read(testdata.join("ec.key.pem"))?)?;
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(testdata.join("rsa.key.pem"))?)?;
    let keys_dir = tempfile::tempdir()?;
    let jwks_file = keys_dir.path().join("jwks.json");
    let mut jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256)?;
    jwk.common.key_id = Some("idp-es".into());
    std::fs::write(&jwks_file, serde_json::to_string(&JwkSet { keys: vec![jwk] })?)?;
    let cluster = builder()
        .nodes(1)
        .config(&format!(
            "[auth]\nissuer = \"https://login.example\"\naudience = \"chorus\"\njwks_file = {:?}\n\n[[auth.keys]]\nkid = \"idp-rs\"\nalgorithm = \"RS256\"\npublic_key_file = {:?}\n",
            jwks_file,
            testdata.join("rsa.pub.pem")
        ))
        .start()
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let sign = |alg: Algorithm, kid: &str, key: &EncodingKey, aud: &str| {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let claims = json!({"sub": "carol", "exp": now + 300, "roles": ["admin"],
            "iss": "https://login.example", "aud": aud});
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let publish = |token: String| {
        let request = cluster
            .client
            .post(format!("{}/api/v1/channels/idp.test/publish", cluster.url(1)))
            .bearer_auth(token)
            .json(&json!({"data": {"n": 1}}));
        async move {
            let response = request.send().await?;
            Ok::<_, anyhow::Error>((response.status().as_u16(), response.text().await?))
        }
    };
    let (status, body) = publish(sign(Algorithm::RS256, "idp-rs", &rsa, "chorus")).await?;
    assert_eq!(status, 200, "RS256 from the PEM key: {body}");
    let (status, body) = publish(sign(Algorithm::ES256, "idp-es", &ec, "chorus")).await?;
    assert_eq!(status, 200, "ES256 from the JWKS: {body}");
    let (status, body) = publish(sign(Algorithm::ES256, "idp-es", &ec, "another-app")).await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("audience"), "{body}");
    // The node's own HS256 tokens carry no issuer: refused once one is required.
    let (status, body) = publish(common::token("carol", &["admin"])).await?;
    assert_eq!(status, 401, "{body}");

    let client = cluster
        .sdk(&[1], &sign(Algorithm::RS256, "idp-rs", &rsa, "chorus"))
        .connect()
        .await?;
    let ack = client.publish("idp.test", r#"{"n":2}"#).await?;
    assert_eq!(ack.position.offset, 3, "after the two HTTP publishes");
    let refused = cluster
        .sdk(&[1], &sign(Algorithm::ES256, "unknown-kid", &ec, "chorus"))
        .connect()
        .await;
    match refused {
        Err(chorus_client::Error::Server { code, message }) => {
            assert_eq!(code, "unauthorized");
            assert!(message.contains("unknown-kid"), "{message}");
        }
        other => panic!("a token of an unknown key id: {:?}", other.map(|_| ())),
    }
    Ok(())
}

/// Found by probing: 1,500 WebSocket connects and closes in 3.4 s, unthrottled, made 2,062
/// committed Raft entries (each connect writes its device's presence).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_churn_from_one_address_is_throttled() -> Result<()> {
    use chorus_proto::client::{client_frame, server_frame};
    use common::wire::WsClient;
    let cluster = builder()
        .nodes(1)
        .config("[clients]\nconnect_burst_per_ip = 20\n")
        .env("CHORUS_CONNECTS_PER_MINUTE_PER_IP", "1")
        .start()
        .await?;
    let token = common::token("churner", &["admin"]);
    // Commands proposed on the node (in a 1-node cluster it leads every shard).
    let proposed = || cluster.metric(1, "chorus_commands_per_entry_sum");
    let before = proposed().await?;
    let (mut accepted, mut refusals) = (0, Vec::new());
    for _ in 0..200 {
        let mut ws = WsClient::connect(cluster.node(1), false).await?;
        ws.send(1, client_frame::Kind::Connect(common::wire::connect(&token)))
            .await?;
        match ws
            .recv(std::time::Duration::from_secs(10))
            .await?
            .and_then(|f| f.kind)
        {
            Some(server_frame::Kind::ConnectOk(_)) => accepted += 1,
            Some(server_frame::Kind::Disconnect(d)) => refusals.push(d),
            other => anyhow::bail!("unexpected answer to connect: {other:?}"),
        }
        drop(ws);
    }
    assert_eq!(accepted, 20, "the burst passes, then one a minute");
    assert_eq!(refusals.len(), 180);
    let refusal = &refusals[0];
    assert_eq!(refusal.code, "rate_limited", "{refusal:?}");
    assert!(refusal.reconnect);
    assert!(
        refusal.retry_after_ms > 0 && refusal.retry_after_ms <= 60_000,
        "{refusal:?}"
    );
    // Presence writes of the accepted connects only (online and offline: 2 each, and a few
    // lease renewals), not 2 per attempt.
    let written = common::wait_for(
        "the accepted connects' presence to be written",
        std::time::Duration::from_secs(10),
        || async {
            let now = proposed().await.ok()?;
            (now - before >= 2.0 * 20.0).then_some(now - before)
        },
    )
    .await?;
    assert!(written <= 2.0 * 20.0 + 10.0, "{written} commands for 20 connects");
    Ok(())
}

/// Found by probing: the node-to-node proof alone gave admin over plain HTTP (status, remove).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_credential_gives_no_admin_over_http() -> Result<()> {
    let cluster = builder().nodes(1).start().await?;
    let proof = chorus_cluster::auth::secret_proof(&cluster.node(1).cluster_secret);
    for (method, path) in [("GET", "/api/v1/cluster"), ("POST", "/api/v1/cluster/remove")] {
        let url = format!("{}{path}", cluster.url(1));
        let request = match method {
            "GET" => cluster.client.get(&url),
            _ => cluster.client.post(&url).json(&json!({"id": 1})),
        };
        let response = request
            .header(chorus_cluster::auth::AUTH_HEADER, &proof)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 401, "{method} {path}");
    }
    let (status, _) = cluster.call(1, "GET", "/api/v1/cluster", None).await?;
    assert_eq!(status, 200, "an admin token still works");
    Ok(())
}

/// A request whose headers arrive but whose body never does is answered 408 after the body
/// timeout (it used to hold its connection and a handler for as long as the client liked).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_body_that_never_arrives_is_answered_408() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let cluster = builder()
        .nodes(1)
        .config("[clients]\nhttp_body_timeout_ms = 500\n")
        .start()
        .await?;
    let token = common::token("slow", &["admin"]);
    let head = format!(
        "POST /api/v1/channels/slow.body/publish HTTP/1.1\r\nHost: chorus\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"data\":"
    );
    let mut socket = raw_connection(cluster.node(1).http, head.as_bytes()).await?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(12).any(|w| w == b"idle_timeout") {
                return Ok(());
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "no answer within 10 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("http_body_timeout_ms"), "{answer}");
    // Whole requests still pass.
    let reply = cluster.publish(1, "slow.body", json!(1), None).await?;
    assert_eq!(reply["offset"], json!(1));
    Ok(())
}

/// A role's `{sub}` token gives each user their own channels, and nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_pattern_with_the_subject_gives_each_user_their_own_channels() -> Result<()> {
    let cluster = builder()
        .nodes(1)
        .config("[roles.member]\npublish = [\"user.{sub}.>\"]\nsubscribe = [\"user.{sub}.>\"]\n")
        .start()
        .await?;
    let alice = common::token("alice", &["member"]);
    let publish = |channel: &'static str| {
        let request = cluster
            .client
            .post(format!("{}/api/v1/channels/{channel}/publish", cluster.url(1)))
            .bearer_auth(&alice)
            .json(&json!({"data": 1}));
        async move { anyhow::Ok(request.send().await?.status().as_u16()) }
    };
    assert_eq!(publish("user.alice.inbox").await?, 200);
    assert_eq!(publish("user.bob.inbox").await?, 403);
    // A subject is one token: a token whose subject has dots reaches nothing.
    let dotted = common::token("alice.inbox", &["member"]);
    let status = cluster
        .client
        .post(format!(
            "{}/api/v1/channels/user.alice.inbox.x/publish",
            cluster.url(1)
        ))
        .bearer_auth(&dotted)
        .json(&json!({"data": 1}))
        .send()
        .await?
        .status()
        .as_u16();
    assert_eq!(status, 403);
    Ok(())
}
