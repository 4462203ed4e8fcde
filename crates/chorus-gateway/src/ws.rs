//! The WebSocket transport at `GET /ws` on the HTTP port, for browsers.
//!
//! Binary messages carry one protobuf frame each; text messages carry the same frames as
//! JSON. The connection answers in the encoding of the client's first message. Frames go out
//! most urgent class first, a batch per flush (one ordered stream: no per-class streams).

use crate::Gateway;
use crate::frame::{Encoding, FrameError, decode_client_frame, encode_server_frame};
use crate::outbox::Outbox;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use chorus_proto::client::ClientFrame;
use futures::{SinkExt, StreamExt};
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

async fn upgrade(State(gateway): State<Gateway>, ws: WebSocketUpgrade) -> Response {
    let limit = gateway.config().max_frame_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move { gateway.ws_connection(socket).await })
}

fn decode(message: Message, limit: usize) -> Option<Result<(ClientFrame, Encoding), FrameError>> {
    match message {
        Message::Binary(bytes) => {
            Some(decode_client_frame(&bytes, Encoding::Protobuf, limit).map(|f| (f, Encoding::Protobuf)))
        }
        Message::Text(text) => {
            Some(decode_client_frame(text.as_bytes(), Encoding::Json, limit).map(|f| (f, Encoding::Json)))
        }
        // Pings are answered by the WebSocket layer; pongs and close need nothing here.
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => None,
    }
}

impl Gateway {
    async fn ws_connection(&self, socket: WebSocket) {
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
                        Some(Ok((frame, encoding))) => {
                            if let Some(tx) = encoding_tx.take() {
                                let _ = tx.send(encoding);
                            }
                            Ok(frame)
                        }
                        Some(Err(e)) => Err(e),
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
            let encoding = tokio::select! {
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
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "".into(),
                })))
                .await;
        });
        self.run_session("websocket", ReceiverStream::new(inbound), outbox)
            .await;
        let abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .is_err()
        {
            abort.abort();
        }
        reader.abort();
    }
}
