//! HTTPS and WSS on the HTTP port (`[clients] http_tls`), with the certificate the QUIC
//! listener presents: a client that trusts it gets the API and WebSockets; plain HTTP gets
//! nothing.

mod common;

use anyhow::{Context, Result, bail};
use chorus_proto::client::{ClientFrame, ServerFrame, client_frame, server_frame};
use common::builder;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// `GET path` over HTTPS: the status code and body.
async fn https_get(addr: SocketAddr, cert: &Path, path: &str) -> Result<(u16, String)> {
    let mut stream = common::wire::tls_connect(addr, cert).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    Ok((status, answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_and_websockets_are_served_over_tls_only() -> Result<()> {
    let cluster = builder().nodes(1).env("CHORUS_HTTP_TLS", "true").spawn()?;
    let (http, cert) = (cluster.node(1).http, cluster.cert_path(1));
    common::wait_for("/ready over HTTPS", Duration::from_secs(30), || async {
        match https_get(http, &cert, "/ready").await {
            Ok((200, _)) => Some(()),
            _ => None,
        }
    })
    .await?;
    let (status, body) = https_get(http, &cert, "/health").await?;
    assert_eq!(status, 200, "{body}");

    // Plain HTTP to the same port gets no answer.
    let plain = cluster.client.get(format!("http://{http}/health")).send().await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

    // WSS: the same protocol as ws://, inside TLS.
    let (mut ws, _) = tokio_tungstenite::client_async(
        "wss://localhost/ws",
        common::wire::tls_connect(http, &cert).await?,
    )
    .await?;
    let connect = ClientFrame {
        id: 1,
        kind: Some(client_frame::Kind::Connect(common::wire::connect(&cluster.token))),
    };
    ws.send(Message::Binary(connect.encode_to_vec().into())).await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await?
        .context("closed")??;
    let Message::Binary(bytes) = answer else {
        bail!("unexpected message {answer:?}");
    };
    let frame = ServerFrame::decode(bytes)?;
    assert!(
        matches!(frame.kind, Some(server_frame::Kind::ConnectOk(_))),
        "{frame:?}"
    );
    Ok(())
}
