//! Raw protocol clients for tests that must send exactly the bytes they choose: a WebSocket
//! client (binary protobuf or JSON text frames) and a bare QUIC connection.

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use chorus_proto::client::{ClientFrame, Connect, ServerFrame, client_frame, server_frame};
use chorus_proto::codec::{FrameReader, put_length_delimited};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use quinn::rustls;
use quinn::rustls::pki_types::CertificateDer;
use quinn::rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A byte stream to a node: plain TCP, or TLS over it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// A TLS connection to `addr` (as `localhost`) that trusts only the certificates in `ca`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Ok(connector
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// A WebSocket client of `/ws`.
pub struct WsClient {
    ws: Ws,
    /// JSON text frames when true, protobuf binary frames otherwise.
    pub json: bool,
    /// The WebSocket close code the node sent, once it closed.
    pub close_code: Option<u16>,
}

impl WsClient {
    /// Connects to `node`'s `/ws`: `wss://` when the node serves clients over TLS.
    pub async fn connect(node: &super::TestNode, json: bool) -> Result<WsClient> {
        let http = node.http;
        let (stream, url): (Box<dyn Io>, _) = match &node.client_ca {
            Some(ca) => (
                Box::new(tls_connect(http, ca).await?),
                "wss://localhost/ws".to_string(),
            ),
            None => (
                Box::new(tokio::net::TcpStream::connect(http).await?),
                format!("ws://{http}/ws"),
            ),
        };
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .context("websocket connect")?;
        Ok(WsClient {
            ws,
            json,
            close_code: None,
        })
    }

    pub async fn send(&mut self, id: u64, kind: client_frame::Kind) -> Result<()> {
        let frame = ClientFrame { id, kind: Some(kind) };
        let message = if self.json {
            Message::Text(serde_json::to_string(&frame)?.into())
        } else {
            Message::Binary(frame.encode_to_vec().into())
        };
        self.send_raw(message).await
    }

    pub async fn send_raw(&mut self, message: Message) -> Result<()> {
        self.ws.send(message).await.context("websocket send")
    }

    /// The next server frame; `None` when the node closed the connection.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<ServerFrame>> {
        loop {
            let message = tokio::time::timeout(timeout, self.ws.next())
                .await
                .context("no frame from the node in time")?;
            match message {
                Some(Ok(Message::Close(frame))) => {
                    self.close_code = frame.map(|f| u16::from(f.code));
                    return Ok(None);
                }
                None | Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Binary(bytes))) => {
                    assert!(!self.json, "binary frame on a JSON connection");
                    return Ok(Some(ServerFrame::decode(bytes)?));
                }
                Some(Ok(Message::Text(text))) => {
                    assert!(self.json, "text frame on a protobuf connection");
                    return Ok(Some(serde_json::from_str(text.as_str())?));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Receives until a frame satisfies `pick` (answering pings); fails on close or timeout.
    pub async fn recv_until<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&ServerFrame) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.recv(left).await? else {
                bail!("the node closed the connection");
            };
            if let Some(found) = pick(&frame) {
                return Ok(found);
            }
        }
    }

    /// Sends Connect and waits for ConnectOk.
    pub async fn handshake(&mut self, token: &str) -> Result<()> {
        self.send(1, client_frame::Kind::Connect(connect(token))).await?;
        match self.recv(Duration::from_secs(10)).await? {
            Some(ServerFrame {
                kind: Some(server_frame::Kind::ConnectOk(_)),
                ..
            }) => Ok(()),
            other => bail!("expected connect_ok, got {other:?}"),
        }
    }
}

pub fn connect(token: &str) -> Connect {
    Connect {
        token: token.to_string(),
        protocol_version: 1,
        accept_compression: Vec::new(),
        client_name: "test".into(),
    }
}

/// A bare QUIC connection to a node, trusting `certs`.
pub async fn quic_connect(addr: SocketAddr, certs: &[PathBuf]) -> Result<quinn::Connection> {
    let mut roots = rustls::RootCertStore::empty();
    for path in certs {
        for cert in CertificateDer::pem_file_iter(path)? {
            roots.add(cert?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![b"chorus/1".to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(
        crypto,
    )?));
    let endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
    Ok(endpoint.connect_with(config, addr, "localhost")?.await?)
}

/// Encodes a client frame with its length prefix.
pub fn delimited(id: u64, kind: client_frame::Kind) -> Vec<u8> {
    let mut buf = BytesMut::new();
    put_length_delimited(&ClientFrame { id, kind: Some(kind) }, &mut buf);
    buf.to_vec()
}

/// Reads server frames from a QUIC stream until it ends (or `timeout`).
pub async fn read_all_frames(recv: &mut quinn::RecvStream, timeout: Duration) -> Vec<ServerFrame> {
    let mut reader = FrameReader::new(64 * 1024 * 1024);
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Ok(Some(n))) = tokio::time::timeout_at(deadline, recv.read(&mut buf)).await {
        reader.extend(&buf[..n]);
        while let Ok(Some(bytes)) = reader.next_frame() {
            if let Ok(frame) = ServerFrame::decode(bytes) {
                frames.push(frame);
            }
        }
    }
    frames
}

/// The code of the Disconnect frame among `frames`, if any.
pub fn disconnect_code(frames: &[ServerFrame]) -> Option<String> {
    frames.iter().find_map(|f| match &f.kind {
        Some(server_frame::Kind::Disconnect(d)) => Some(d.code.clone()),
        _ => None,
    })
}

/// Reads server frames from a QUIC stream until `pick` accepts one (or fails at `timeout`).
pub async fn read_until<T>(
    recv: &mut quinn::RecvStream,
    timeout: Duration,
    mut pick: impl FnMut(&ServerFrame) -> Option<T>,
) -> Result<T> {
    let mut reader = FrameReader::new(64 * 1024 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => bail!("the stream ended"),
            Ok(Err(e)) => bail!("reading: {e}"),
            Err(_) => bail!("no matching frame within {timeout:?}"),
        };
        reader.extend(&buf[..n]);
        while let Some(bytes) = reader.next_frame()? {
            if let Some(found) = pick(&ServerFrame::decode(bytes)?) {
                return Ok(found);
            }
        }
    }
}
