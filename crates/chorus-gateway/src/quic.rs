//! The QUIC transport: TLS 1.3, ALPN `chorus/1`, one control stream per connection and one
//! server-opened stream per push class, each with its QUIC stream priority.
//!
//! ```text
//!  client bidi stream 0:  ClientFrame ─────────────>  session
//!                         <─────────── ServerFrame    critical: replies, pings, resync, disconnect
//!  server uni stream(s):  <─────────── ServerFrame    high (events), normal, low
//! ```
//!
//! Every frame is `[u32 big-endian length][protobuf]`. A slow reader blocks only its own
//! streams' writers; its queues fill and the hub stops its subscriptions (see outbox.rs).

use crate::frame::{Encoding, FrameError, FrameReader, decode_client_frame, put_length_delimited};
use crate::outbox::{Outbox, Priority};
use crate::tls::TlsMaterial;
use crate::{ALPN, Gateway};
use bytes::BytesMut;
use chorus_proto::client::ClientFrame;
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use quinn::rustls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// UDP socket buffer size asked for (the kernel may cap it at net.core.rmem_max / wmem_max).
pub const UDP_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Why the QUIC listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The UDP socket could not be set up.
    #[error("`quic`: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate or key was refused by rustls.
    #[error("QUIC TLS setup: {0}")]
    Tls(String),
}

/// Builds the QUIC endpoint on `addr` with raised UDP buffers.
pub fn bind(
    addr: SocketAddr,
    tls: &TlsMaterial,
    idle_timeout: Duration,
) -> Result<quinn::Endpoint, QuicError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(tls.chain.clone(), tls.key.clone_key())
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(idle_timeout.try_into().ok());
    server.transport_config(Arc::new(transport));

    let bind_err = |source| QuicError::Bind { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(bind_err)?;
    // Best effort: the kernel caps these; the sizes obtained are logged.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    tracing::info!(
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        "QUIC UDP socket buffers"
    );
    socket.bind(&addr.into()).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_err)
}

/// QUIC stream priority per class (higher is sent first).
fn stream_priority(priority: Priority) -> i32 {
    3 - priority as i32
}

impl Gateway {
    /// Accepts QUIC connections until the endpoint is closed.
    pub async fn serve_quic(self, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let gateway = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => gateway.quic_connection(connection).await,
                    Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
                }
            });
        }
    }

    async fn quic_connection(&self, connection: quinn::Connection) {
        let config = self.config().clone();
        let (control_send, control_recv) =
            match tokio::time::timeout(config.connect_timeout, connection.accept_bi()).await {
                Ok(Ok(streams)) => streams,
                Ok(Err(e)) => {
                    return tracing::debug!(error = %e, "QUIC connection lost before its control stream");
                }
                Err(_) => {
                    connection.close(400u32.into(), b"protocol_error: no control stream opened");
                    return;
                }
            };
        let outbox = Arc::new(Outbox::new(config.outbox, self.inner.metrics.outbox.clone()));
        let writers = tokio::spawn(write_classes(connection.clone(), outbox.clone(), control_send));
        let mut inbound = Box::pin(control_frames(control_recv, config.max_frame_bytes));
        let ending = self
            .run_session("quic", connection.remote_address().ip(), &mut inbound, outbox)
            .await;
        // Let the writers send what is queued (the Disconnect frame last), briefly. The
        // control stream's receive side stays open meanwhile: dropping it would stop the
        // client's writes (a Pong, a publish) with STOP_SENDING, and a client that takes that
        // for a broken connection closes it before the Disconnect frame arrives.
        let _ = tokio::time::timeout(Duration::from_secs(2), writers).await;
        drop(inbound);
        let (code, reason) = match ending.code {
            Some(code) => (
                code.http_status() as u32,
                format!("{}: {}", code.as_str(), ending.reason),
            ),
            None => (0, ending.reason),
        };
        connection.close(code.into(), reason.as_bytes());
    }
}

/// The length-delimited frames of the control stream, read when the session asks for the
/// next one: no reader task and no queue per connection (they cost 4.7 KiB per idle
/// connection, docs/benchmarks.md). Ends after the first bad frame, which it yields.
fn control_frames(
    recv: quinn::RecvStream,
    limit: usize,
) -> impl Stream<Item = Result<ClientFrame, FrameError>> {
    struct Control {
        recv: quinn::RecvStream,
        reader: FrameReader,
        failed: bool,
    }
    let control = Control {
        recv,
        reader: FrameReader::new(limit),
        failed: false,
    };
    futures::stream::unfold(control, move |mut control| async move {
        if control.failed {
            return None;
        }
        loop {
            match control.reader.next_frame() {
                Ok(Some(bytes)) => {
                    let frame = decode_client_frame(&bytes, Encoding::Protobuf, limit);
                    control.failed = frame.is_err();
                    return Some((frame, control));
                }
                Ok(None) => {}
                Err(e) => {
                    control.failed = true;
                    return Some((Err(e), control));
                }
            }
            // quinn hands over the received bytes themselves: no read buffer per connection
            // (a 64 KiB one cost 12 KiB more resident memory per idle connection: 60 vs 48 KiB
            // with 20,000 of them, docs/benchmarks.md).
            match control.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => control.reader.extend(&chunk.bytes),
                Ok(None) => {
                    control.failed = true;
                    let unfinished = control.reader.finish().err()?;
                    return Some((Err(unfinished), control));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC control stream closed");
                    return None;
                }
            }
        }
    })
}

/// Drains the outbox onto the connection's streams, one writer per class, all in one task:
/// the critical writer at once, each other one on its class's first frame (an idle connection
/// holds one writer, not four: docs/benchmarks.md). Each writer waits on its own stream only,
/// so a class stalled by flow control holds up no other.
async fn write_classes(connection: quinn::Connection, outbox: Arc<Outbox>, control_send: quinn::SendStream) {
    let mut writers = FuturesUnordered::new();
    writers.push(write_class(
        connection.clone(),
        outbox.clone(),
        Priority::Critical,
        Some(control_send),
    ));
    outbox.writer_started(Priority::Critical);
    let mut opening = true;
    while opening || !writers.is_empty() {
        tokio::select! {
            class = outbox.first_of_new_class(), if opening => match class {
                Some(class) => writers.push(write_class(connection.clone(), outbox.clone(), class, None)),
                None => opening = false,
            },
            Some(()) = writers.next(), if !writers.is_empty() => {}
        }
    }
}

/// Drains one class of the outbox onto its stream (the control stream for critical frames;
/// a uni stream opened on first use otherwise), a whole batch per write.
async fn write_class(
    connection: quinn::Connection,
    outbox: Arc<Outbox>,
    class: Priority,
    mut stream: Option<quinn::SendStream>,
) {
    if let Some(stream) = &stream {
        let _ = stream.set_priority(stream_priority(class));
    }
    let mut buf = BytesMut::new();
    while let Some(frames) = outbox.next_of(class).await {
        buf.clear();
        for frame in &frames {
            put_length_delimited(frame, &mut buf);
        }
        if stream.is_none() {
            match connection.open_uni().await {
                Ok(s) => {
                    let _ = s.set_priority(stream_priority(class));
                    stream = Some(s);
                }
                Err(e) => return tracing::debug!(error = %e, "cannot open a QUIC push stream"),
            }
        }
        let Some(s) = stream.as_mut() else { return };
        if let Err(e) = s.write_all(&buf).await {
            return tracing::debug!(error = %e, ?class, "QUIC write failed");
        }
    }
    if let Some(mut s) = stream {
        let _ = s.finish();
        // Wait until the peer has the data (or the connection is gone), so that a close right
        // after does not discard a queued Disconnect frame.
        let _ = tokio::time::timeout(Duration::from_secs(1), s.stopped()).await;
    }
}
