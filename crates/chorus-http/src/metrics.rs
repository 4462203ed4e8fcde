//! HTTP request metrics: a latency histogram per route and status.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
    status: u16,
}

/// Metrics of the HTTP server.
#[derive(Clone)]
pub struct HttpMetrics {
    latency: Family<RouteLabels, Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ])
            }),
        }
    }
}

impl HttpMetrics {
    /// Registers `chorus_http_request_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "chorus_http_request_seconds",
            "HTTP request latency",
            self.latency.clone(),
        );
    }
}

/// Middleware recording each request's latency.
pub async fn record(State(metrics): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let started = chorus_cluster::clock::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .observe(chorus_cluster::clock::now().duration_since(started).as_secs_f64());
    response
}
