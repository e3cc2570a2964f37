//! The HTTP path's metrics, registered with the agent's `/metrics` (docs/operations.md):
//! requests by route and status class, seconds to a backend's response headers, open client
//! connections.

use std::time::Duration;

use hyper::StatusCode;
use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

/// Route label of answers given before a route was found (unknown host, no Host header).
const NO_ROUTE: &str = "none";

#[derive(Debug)]
pub struct Metrics {
    requests: Family<Vec<(String, String)>, Counter>,
    upstream_seconds: Histogram,
    pub connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            // 0.5 ms … ~8 s.
            upstream_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            connections: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Counts a request answered with `status` on `route` ("" before any route was found);
    /// `upstream` is how long the backend took, when one was asked.
    pub fn observe(&self, route: &str, status: StatusCode, upstream: Option<Duration>) {
        let route = if route.is_empty() { NO_ROUTE } else { route };
        let class = format!("{}xx", status.as_u16() / 100);
        self.requests.get_or_create(&vec![("route".to_owned(), route.to_owned()), ("class".to_owned(), class)]).inc();
        if let Some(elapsed) = upstream {
            self.upstream_seconds.observe(elapsed.as_secs_f64());
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("lb_http_requests", "HTTP requests answered, by route (app:port index) and status class", self.requests.clone());
        registry.register(
            "lb_http_upstream_seconds",
            "Seconds from a request reaching the HTTP path to its backend's response headers",
            self.upstream_seconds.clone(),
        );
        registry.register("lb_http_connections", "Client connections open on the HTTP and HTTPS listeners", self.connections.clone());
    }
}
