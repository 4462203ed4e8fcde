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
    /// One of the standard methods, or `other`: a label an anonymous client chooses would let
    /// it create series without bound (300 made-up methods made 300 series that stayed).
    method: &'static str,
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

/// The metric label of `method`: the standard methods by name, anything else `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Middleware recording each request's latency.
pub async fn record(State(metrics): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let started = chorus_cluster::clock::now();
    let method = method_label(request.method());
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
