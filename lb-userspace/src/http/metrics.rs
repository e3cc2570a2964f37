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
    /// Requests answered before a route was found.
    pub unrouted: StatusCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::default();
        let unrouted = StatusCounters::of(&requests, NO_ROUTE);
        Self {
            requests,
            // 0.5 ms … ~8 s.
            upstream_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            connections: Gauge::default(),
            unrouted,
        }
    }
}

/// One route's request counters by status class (1xx … 5xx), looked up once when the route is
/// built rather than per request.
#[derive(Clone, Debug)]
pub struct StatusCounters([Counter; 5]);

impl StatusCounters {
    fn of(family: &Family<Vec<(String, String)>, Counter>, route: &str) -> Self {
        Self(std::array::from_fn(|i| {
            family.get_or_create(&vec![("route".to_owned(), route.to_owned()), ("class".to_owned(), format!("{}xx", i + 1))]).clone()
        }))
    }

    pub fn count(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize;
        self.0[class - 1].inc();
    }
}

impl Metrics {
    /// The counters of `route`.
    pub fn route(&self, route: &str) -> StatusCounters {
        StatusCounters::of(&self.requests, route)
    }

    /// How long a backend took to answer.
    pub fn upstream(&self, elapsed: Duration) {
        self.upstream_seconds.observe(elapsed.as_secs_f64());
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
