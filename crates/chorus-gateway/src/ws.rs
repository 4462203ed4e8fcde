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
use futures::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

impl Gateway {
    /// The `/ws` route, to merge into the node's HTTP router.
    pub fn ws_router(&self) -> Router {
        Router::new().route("/ws", get(upgrade)).with_state(self.clone())
    }
}

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
        let (mut sink, mut stream) = socket.split();
        let outbox = Arc::new(Outbox::new(config.outbox, self.inner.metrics.outbox.clone()));
        let (frames_in, inbound) = mpsc::channel::<Result<ClientFrame, FrameError>>(16);
        let (encoding_tx, encoding_rx) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(async move {
            let mut encoding_tx = Some(encoding_tx);
            while let Some(message) = stream.next().await {
                let frame = match message {
                    Ok(message) => match decode(message, limit) {
                        None => continue,
                        Some((encoding, frame)) => {
                            // The first data message decides the answers' encoding, even when
                            // it does not decode (so the client can read the error).
                            if let Some(tx) = encoding_tx.take() {
                                let _ = tx.send(encoding);
                            }
                            frame
                        }
                    },
                    Err(e) => Err(FrameError::Malformed(format!("websocket: {e}"))),
                };
                let failed = frame.is_err();
                if frames_in.send(frame).await.is_err() || failed {
                    return;
                }
            }
        });
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
        let ending = self
            .run_session("websocket", remote, ReceiverStream::new(inbound), outbox)
            .await;
        let abort = writer.abort_handle();
        match tokio::time::timeout(Duration::from_secs(2), writer).await {
            Ok(Ok(Some(mut sink))) => {
                let _ = sink.send(Message::Close(Some(close_frame(&ending)))).await;
            }
            Ok(_) => {}
            Err(_) => abort.abort(),
        }
        reader.abort();
    }
}
