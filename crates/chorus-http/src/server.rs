//! The HTTP listener: the API and WebSocket router served with limits that a bare
//! `axum::serve` does not set.
//!
//! - Request headers must arrive within `header_read_timeout`, and a kept-alive connection
//!   waiting for its next request is closed after as long: 1,000 slowloris requests and 300
//!   silent sockets used to stay open indefinitely, and with the common limit of 1,024 open
//!   files `/health` and publishes timed out (`accept error: Too many open files`).
//! - At most `max_connections_per_ip` connections from one address; more are closed at once.
//!
//! Upgraded connections (WebSocket) leave the HTTP timeouts behind: the gateway's own
//! connect and idle timeouts apply to them.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// A request's headers must arrive within this; an idle kept-alive connection is closed
    /// after as long.
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

/// Serves `app` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, app: Router, limits: ServeLimits) -> std::io::Result<()> {
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
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            // Telling HTTP/1 from HTTP/2 waits for the first bytes, before any of hyper's
            // timers runs: a socket that sends nothing is closed here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(limits.header_read_timeout)
                .keep_alive_timeout(limits.header_read_timeout);
            // Errors are the peer's (reset, timed out): nothing to do but close.
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}
