//! The WebSocket transport at `GET /ws` on the HTTP port, for browsers.
//!
//! Binary messages carry one protobuf frame each; text messages carry the same frames as
//! JSON. The connection answers in the encoding of the client's first message. Frames go out
//! most urgent class first, a batch per flush (one ordered stream: no per-class streams).

use crate::Gateway;
use crate::frame::{Encoding, FrameError, decode_client_frame, encode_server_frame};
use crate::outbox::Outbox;
use crate::session::Ending;
use axum::Extension;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use chorus_proto::client::ClientFrame;
use futures::stream::SplitStream;
use futures::{SinkExt, Stream, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

impl Gateway {
    /// The `/ws` route, to merge into the node's HTTP router.
    pub fn ws_router(&self) -> Router {
        Router::new().route("/ws", get(upgrade)).with_state(self.clone())
    }
}

/// Bytes a WebSocket read asks for at most (see `upgrade`).
const WS_READ_BUFFER_BYTES: usize = 2048;
/// Bytes of frames a WebSocket writer gathers before writing them out (see `upgrade`).
const WS_WRITE_BUFFER_BYTES: usize = 16 * 1024;

async fn upgrade(
    State(gateway): State<Gateway>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: WebSocketUpgrade,
) -> Response {
    let limit = gateway.config().max_frame_bytes;
    // Every listener of the node says who connected; one that did not would count all its
    // clients as one unspecified address.
    let remote = peer.map_or(IpAddr::from([0, 0, 0, 0]), |Extension(ConnectInfo(addr))| {
        addr.ip()
    });
    ws.max_message_size(limit)
        .max_frame_size(limit)
        // tungstenite reads into a buffer it zero-fills up to this size, resident for the
        // connection's life: its 128 KiB default made an idle WebSocket cost about 135 KiB
        // (docs/benchmarks.md). Bigger messages still arrive whole; they take more reads.
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        // Frames are written out once this many are buffered, or at the writer's flush
        // after each batch; the buffer keeps its largest size.
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| async move { gateway.ws_connection(socket, remote).await })
}

/// The encoding a message uses and its decoded frame; `None` for control messages (pings
/// are answered by the WebSocket layer; pongs and close need nothing here).
fn decode(message: Message, limit: usize) -> Option<(Encoding, Result<ClientFrame, FrameError>)> {
    match message {
        Message::Binary(bytes) => Some((
            Encoding::Protobuf,
            decode_client_frame(&bytes, Encoding::Protobuf, limit),
        )),
        Message::Text(text) => Some((
            Encoding::Json,
            decode_client_frame(text.as_bytes(), Encoding::Json, limit),
        )),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => None,
    }
}

/// The WebSocket close code for a session's end: 1000 when the client closed, else
/// 4000 + the code's HTTP status (4400 protocol_error, 4401 token_expired, 4408 idle_timeout,
/// 4429 slow_consumer, ...).
fn close_frame(ending: &Ending) -> CloseFrame {
    let Some(code) = ending.code else {
        return CloseFrame {
            code: 1000,
            reason: "".into(),
        };
    };
    let mut reason = format!("{}: {}", code.as_str(), ending.reason);
    // A close reason is at most 123 bytes.
    while reason.len() > 123 {
        reason.pop();
    }
    CloseFrame {
        code: 4000 + code.http_status(),
        reason: reason.into(),
    }
}

impl Gateway {
    async fn ws_connection(&self, socket: WebSocket, remote: IpAddr) {
        let config = self.config().clone();
        let limit = config.max_frame_bytes;
        let (mut sink, stream) = socket.split();
        let outbox = Arc::new(Outbox::new(config.outbox, self.inner.metrics.outbox.clone()));
        let (encoding_tx, encoding_rx) = oneshot::channel();
        let inbound = Box::pin(client_frames(stream, limit, encoding_tx));
        let writer_outbox = outbox.clone();
        let writer = tokio::spawn(async move {
            // The client's first frame decides; a connection closed before it gets protobuf.
            // Biased: a first frame that fails closes the outbox right after its encoding is
            // known, and an unbiased pick then answered a JSON client in protobuf now and then.
            let encoding = tokio::select! {
                biased;
                encoding = encoding_rx => encoding.unwrap_or(Encoding::Protobuf),
                _ = writer_outbox.wait_closed() => Encoding::Protobuf,
            };
            while let Some(frames) = writer_outbox.next_any().await {
                for frame in &frames {
                    let bytes = encode_server_frame(frame, encoding);
                    let message = match encoding {
                        Encoding::Protobuf => Message::Binary(bytes),
                        Encoding::Json => match String::from_utf8(bytes.to_vec()) {
                            Ok(text) => Message::Text(text.into()),
                            Err(_) => continue,
                        },
                    };
                    if sink.feed(message).await.is_err() {
                        return None;
                    }
                }
                if sink.flush().await.is_err() {
                    return None;
                }
            }
            Some(sink)
        });
        let ending = self.run_session("websocket", remote, inbound, outbox).await;
        let abort = writer.abort_handle();
        match tokio::time::timeout(Duration::from_secs(2), writer).await {
            Ok(Ok(Some(mut sink))) => {
                let _ = sink.send(Message::Close(Some(close_frame(&ending)))).await;
            }
            Ok(_) => {}
            Err(_) => abort.abort(),
        }
    }
}

/// The client's frames, read when the session asks for the next one: no reader task and no
/// queue per connection (as on QUIC). The first data message's encoding goes to `encoding`,
/// even when it does not decode (so the client can read the error). Ends after the first bad
/// frame, which it yields.
fn client_frames(
    stream: SplitStream<WebSocket>,
    limit: usize,
    encoding: oneshot::Sender<Encoding>,
) -> impl Stream<Item = Result<ClientFrame, FrameError>> {
    let state = (stream, Some(encoding), false);
    futures::stream::unfold(state, move |(mut stream, mut encoding, failed)| async move {
        if failed {
            return None;
        }
        loop {
            let frame = match stream.next().await? {
                Ok(message) => match decode(message, limit) {
                    None => continue,
                    Some((kind, frame)) => {
                        if let Some(tx) = encoding.take() {
                            let _ = tx.send(kind);
                        }
                        frame
                    }
                },
                Err(e) => Err(FrameError::Malformed(format!("websocket: {e}"))),
            };
            let failed = frame.is_err();
            return Some((frame, (stream, encoding, failed)));
        }
    })
}
