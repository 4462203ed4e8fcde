//! The HTTP listener: the API and WebSocket router served with limits that a bare
//! `axum::serve` does not set.
//!
//! - Request headers must arrive within `header_read_timeout`, counted from when the
//!   connection is ready for a request: a socket that sends nothing, part of a header, or
//!   nothing after its last answer (kept alive) is closed after it. 1,000 slowloris requests
//!   and 300 silent sockets used to stay open indefinitely, and with the common limit of 1,024
//!   open files `/health` and publishes timed out (`accept error: Too many open files`).
//! - At most `max_connections_per_ip` connections from one address, WebSockets included for
//!   as long as they live; more are closed at once.
//!
//! - With a TLS configuration, HTTPS and WSS only: the handshake must also complete within
//!   `header_read_timeout`.
//!
//! HTTP/1.1 only: what clients, browsers' WebSocket upgrades and load balancers speak over
//! plain TCP. (Serving HTTP/2 as well means reading a preface before any timer runs.)
//! Upgraded connections (WebSocket) leave the HTTP timeouts behind: the gateway's own
//! connect and idle timeouts apply to them. A request's body has its own deadline
//! (`body_timeout` of the API's state, answered 408).

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// A request's headers must arrive within this, counted from when the connection is ready
    /// for one (its start, or the end of the previous answer).
    pub header_read_timeout: Duration,
    /// Open connections one IP address may hold.
    pub max_connections_per_ip: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections_per_ip: 256,
        }
    }
}

/// Open connections per address; a [`Slot`] gives its place back when dropped.
#[derive(Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct Slot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut open = self.open.lock().expect("per-ip lock");
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().expect("per-ip lock");
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until the task is dropped; over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let per_ip = Arc::new(PerIp::default());
    let mut refusals_logged = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = per_ip.take(peer.ip(), limits.max_connections_per_ip) else {
            refusals_logged += 1;
            if refusals_logged.is_power_of_two() {
                tracing::warn!(ip = %peer.ip(), max = limits.max_connections_per_ip, refused = refusals_logged,
                    "HTTP connection refused: too many open from this address");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Handlers learn the peer's address (`ConnectInfo`): the WebSocket edge limits
        // connects per address.
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(Counted { stream, _slot: slot }, service, limits).await,
                Some(tls) => {
                    // A client that does not complete its handshake in time, or fails it
                    // (plain HTTP to an HTTPS port), is closed.
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(limits.header_read_timeout, tls.accept(stream)).await
                    {
                        serve_connection(Counted { stream, _slot: slot }, service, limits).await
                    }
                }
            }
        });
    }
}

/// Serves one connection (the slot travels with the socket, into an upgraded WebSocket too).
async fn serve_connection<S, T>(io: Counted<S>, service: T, limits: ServeLimits)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = axum::response::Response>
        + Send
        + 'static,
    T::Future: Send + 'static,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    // Errors are the peer's (reset, timed out): nothing to do but close.
    let _ = connection.await;
}

/// A connection that holds its place in the per-address count until it is dropped.
struct Counted<S> {
    stream: S,
    _slot: Slot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
