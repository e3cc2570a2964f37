//! The agent's HTTP listener (`--metrics-listen`, default 127.0.0.1:9097): Prometheus text on
//! `/metrics` and a status page on `/`. Kernel counters are read from the pinned maps at scrape
//! time (per-CPU values summed); the agent's own figures come from the snapshot of its status it
//! leaves here at every change. Every metric is documented in docs/operations.md.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        gauge::ConstGauge,
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
    registry::Registry,
};
use tracing::warn;

use crate::{
    dataplane::{pinned::PinnedMaps, Dataplane},
    inspect::report::{self, bracket, Stats},
    status::AgentStatus,
};

/// What the agent shares with the listener.
#[derive(Debug)]
pub struct Shared {
    /// The pinned maps, opened once for every scrape and page (each map at first use).
    maps: Mutex<PinnedMaps>,
    /// The agent's last status (updated whenever it changes).
    pub status: Mutex<AgentStatus>,
    /// Seconds from a burst of Marathon events reaching the agent to the maps holding it.
    pub event_to_maps: Histogram,
    /// The last status-page render's counters, for per-second rates.
    last_page: Mutex<Option<(Instant, Stats)>>,
}

impl Shared {
    pub fn new(pin_dir: PathBuf, status: AgentStatus) -> Arc<Self> {
        Arc::new(Self {
            maps: Mutex::new(PinnedMaps::new(&pin_dir)),
            status: Mutex::new(status),
            event_to_maps: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            last_page: Mutex::new(None),
        })
    }
}

/// Serves `/metrics` and `/` on `listener` until the runtime stops.
/// With DNS on, Mesos-DNS's HTTP API (`/v1/…`) and `/dns/records` too.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, http: Option<Arc<crate::http::metrics::Metrics>>, dns: Option<Arc<crate::dns::Api>>) {
    let mut registry = Registry::default();
    if let Some(http) = http {
        http.register(&mut registry);
    }
    if let Some(dns) = &dns {
        registry.register_collector(Box::new(crate::dns::metrics::DnsMetrics(dns.counters().clone())));
    }
    registry.register(
        "lb_marathon_event_to_maps_seconds",
        "Seconds from a burst of Marathon events reaching the agent to the maps holding the change",
        shared.event_to_maps.clone(),
    );
    registry.register_collector(Box::new(Collected(shared.clone())));
    let registry = Arc::new(registry);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!("metrics listener: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (registry, shared, dns) = (registry.clone(), shared.clone(), dns.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (registry, shared, dns) = (registry.clone(), shared.clone(), dns.clone());
                async move {
                    let uri = request.uri().clone();
                    // The DNS listing of a large zone takes milliseconds: off the runtime's threads.
                    let response = tokio::task::spawn_blocking(move || respond(uri.path(), uri.query(), &registry, &shared, dns.as_deref()));
                    Ok::<_, Infallible>(response.await.unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "the request failed\n".into())))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = connection.await;
        });
    }
}

fn respond(path: &str, query: Option<&str>, registry: &Registry, shared: &Shared, dns: Option<&crate::dns::Api>) -> Response<Full<Bytes>> {
    if let Some((status, body)) = dns.and_then(|dns| dns.respond(path, query)) {
        return plain(status, "application/json", body);
    }
    let (status, content_type, body) = match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding the metrics failed\n".into()),
            }
        }
        "/" => match page(shared) {
            Ok(html) => (StatusCode::OK, "text/html; charset=utf-8", html),
            Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("reading the maps: {err:#}\n")),
        },
        _ if path.starts_with("/v1/") || path.starts_with("/dns/") => {
            (StatusCode::NOT_FOUND, "text/plain", "not found: DNS is off here (lb run --dns-listen serves Mesos-DNS's API)\n".into())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: /metrics and / are served\n".into()),
    };
    plain(status, content_type, body)
}

fn plain(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The metrics read at scrape time.
#[derive(Debug)]
struct Collected(Arc<Shared>);

type Labels = Vec<(&'static str, String)>;

fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

impl Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(maps) = self.0.maps.lock() else { return Ok(()) };
        let maps = &*maps;
        let status = self.0.status.lock().map(|s| s.clone()).unwrap_or_default();
        let e = &mut encoder;
        let hooks = status.uplinks.iter().map(|u| u.ingress_hook.name()).collect::<Vec<_>>().join(",");
        let build = vec![("version", env!("CARGO_PKG_VERSION").to_string()), ("kernel", kernel_release()), ("ingress_hook", hooks)];
        family(e, "lb_build_info", "The agent's version, the kernel it runs on, the ingress hook of its uplinks", MetricType::Gauge, [(build, gauge(1))])?;
        // A scrape that cannot read the maps still answers with what it has.
        if let Ok(stats) = report::stats(maps) {
            dataplane_metrics(e, &stats)?;
        }
        if let Ok(fill) = maps.flow_table_fill() {
            let tables = || fill.iter().map(|t| vec![("table", t.0.to_ascii_lowercase())]);
            family(e, "lb_flow_table_entries", "Entries in each flow table", MetricType::Gauge, tables().zip(fill.iter().map(|t| gauge(t.1 as i64))))?;
            family(e, "lb_flow_table_capacity", "Capacity of each flow table (--max-flows)", MetricType::Gauge, tables().zip(fill.iter().map(|t| gauge(t.2 as i64))))?;
        }
        family(
            e,
            "lb_services_not_programmed",
            "Services that do not fit the limits (lb status lists them)",
            MetricType::Gauge,
            [(vec![], gauge(status.not_programmed.len() as i64))],
        )?;
        if let Some(m) = &status.marathon {
            let none = || Vec::<(&'static str, String)>::new();
            family(e, "lb_marathon_events_applied", "Marathon events applied as changes to single apps", MetricType::Counter, [(none(), counter(m.events_applied))])?;
            family(e, "lb_marathon_relists", "Full re-reads of every app", MetricType::Counter, [(none(), counter(m.relists))])?;
            family(e, "lb_marathon_failures", "Marathon syncs that failed (the last programmed state stays)", MetricType::Counter, [(none(), counter(m.failures))])?;
            family(
                e,
                "lb_marathon_last_sync_timestamp_seconds",
                "When the agent last synced with Marathon (Unix time; 0 = never)",
                MetricType::Gauge,
                [(none(), gauge(m.last_sync.unwrap_or(0) as i64))],
            )?;
            family(e, "lb_marathon_apps", "Apps Marathon has", MetricType::Gauge, [(none(), gauge(m.apps as i64))])?;
            family(e, "lb_marathon_skipped_apps", "Apps whose latest definition could not be used", MetricType::Gauge, [(none(), gauge(m.skipped_apps.len() as i64))])?;
        }
        if let Some(bgp) = &status.bgp {
            let none = || Vec::<(&'static str, String)>::new();
            family(e, "lb_bgp_announced_vips", "VIPs BIRD was last told to announce", MetricType::Gauge, [(none(), gauge(bgp.announced.len() as i64))])?;
            let failures = [(none(), counter(bgp.failures))];
            family(e, "lb_bgp_failures", "Attempts to tell BIRD that failed (BIRD down or refusing; retried)", MetricType::Counter, failures)?;
        }
        Ok(())
    }
}

fn dataplane_metrics(e: &mut DescriptorEncoder, stats: &Stats) -> Result<(), std::fmt::Error> {
    let outcomes = stats.verdicts.iter().map(|(name, n)| (vec![("outcome", name.to_string())], counter(*n)));
    family(e, "lb_packets", "Packets per outcome (forwards and every other verdict), all hooks", MetricType::Counter, outcomes)?;
    let iface = |i: &crate::dataplane::IfaceStat| {
        let name = crate::node::preflight::interface_name(i.ifindex).unwrap_or_else(|| i.ifindex.to_string());
        vec![("interface", name), ("hook", i.hook.name().to_string())]
    };
    family(e, "lb_interface_packets", "Packets seen per interface and hook", MetricType::Counter, stats.interfaces.iter().map(|i| (iface(i), counter(i.packets))))?;
    family(e, "lb_interface_bytes", "Bytes seen per interface and hook", MetricType::Counter, stats.interfaces.iter().map(|i| (iface(i), counter(i.bytes))))?;
    let service = |s: &report::ServiceStats| {
        vec![("service", s.name.clone()), ("address", format!("{}:{}", bracket(&s.address), s.port)), ("protocol", s.protocol.as_str().into())]
    };
    let per_service = |f: fn(&report::ServiceStats) -> u64| stats.services.iter().map(move |s| (service(s), counter(f(s))));
    family(e, "lb_service_packets", "Packets balanced per service", MetricType::Counter, per_service(|s| s.packets))?;
    family(e, "lb_service_bytes", "Bytes balanced per service", MetricType::Counter, per_service(|s| s.bytes))?;
    family(e, "lb_service_new_flows", "New flows per service", MetricType::Counter, per_service(|s| s.new_flows))?;
    let refused = per_service(|s| s.source_refused);
    family(e, "lb_service_source_refused", "New flows refused per service: client outside its source ranges", MetricType::Counter, refused)?;
    let backends = || stats.services.iter().flat_map(|s| s.backends.iter().map(move |b| (s, b)));
    let backend = |s: &report::ServiceStats, b: &report::BackendStats| {
        let mut labels = service(s);
        labels.push(("backend", format!("{}:{}", bracket(&b.address), b.port)));
        labels
    };
    family(e, "lb_backend_packets", "Packets per backend", MetricType::Counter, backends().map(|(s, b)| (backend(s, b), counter(b.packets))))?;
    family(e, "lb_backend_bytes", "Bytes per backend", MetricType::Counter, backends().map(|(s, b)| (backend(s, b), counter(b.bytes))))?;
    family(e, "lb_backend_new_flows", "New flows per backend", MetricType::Counter, backends().map(|(s, b)| (backend(s, b), counter(b.new_flows))))?;
    let with_backends = stats.services.iter().filter(|s| s.backends.iter().any(|b| b.state == "active")).count();
    let services = [("with_active_backends", with_backends), ("without_active_backends", stats.services.len() - with_backends)];
    family(e, "lb_services", "Programmed services by state", MetricType::Gauge, services.map(|(state, n)| (vec![("state", state.to_string())], gauge(n as i64))))?;
    let mut by_state: BTreeMap<&str, i64> = BTreeMap::from([("active", 0), ("draining", 0)]);
    for (_, b) in backends() {
        *by_state.entry(b.state).or_default() += 1;
    }
    family(e, "lb_backends", "Backend entries by state", MetricType::Gauge, by_state.into_iter().map(|(state, n)| (vec![("state", state.to_string())], gauge(n))))?;
    Ok(())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Escapes text for HTML (service names come from Marathon labels and app ids).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A counter's rate per second since the previous render ("–" without one).
fn rate(now_value: u64, before: Option<u64>, seconds: f64) -> String {
    match before {
        Some(before) if seconds > 0.0 => format!("{:.1}", now_value.saturating_sub(before) as f64 / seconds),
        _ => "–".to_string(),
    }
}

/// The services table: each service, then its backends, with rates since `previous`.
fn services_section(html: &mut String, stats: &report::Stats, previous: Option<&report::Stats>, seconds: f64) {
    let _ = write!(html, "<h2>Services</h2><table><tr><th>service</th><th>protocol</th><th>name</th><th>backend</th><th>weight</th><th>state</th><th>packets/s</th><th>new flows/s</th></tr>");
    for s in &stats.services {
        let before = previous.and_then(|p| p.services.iter().find(|o| o.name == s.name && o.port == s.port && o.address == s.address));
        let address = escape(&format!("{}:{}", bracket(&s.address), s.port));
        let _ = write!(
            html,
            "<tr><td><b>{address}</b></td><td>{}</td><td>{}</td><td></td><td></td><td>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            s.protocol.as_str(),
            escape(&s.name),
            if s.backends.iter().any(|b| b.state == "active") { "<span class=active>serving</span>" } else { "<span class=bad>no active backend</span>" },
            rate(s.packets, before.map(|b| b.packets), seconds),
            rate(s.new_flows, before.map(|b| b.new_flows), seconds),
        );
        for b in &s.backends {
            let old = before.and_then(|p| p.backends.iter().find(|o| o.address == b.address && o.port == b.port));
            let _ = write!(
                html,
                "<tr><td></td><td></td><td></td><td>{}</td><td class=n>{}</td><td class={}>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
                escape(&format!("{}:{}", bracket(&b.address), b.port)),
                b.weight,
                b.state,
                b.state,
                rate(b.packets, old.map(|o| o.packets), seconds),
                rate(b.new_flows, old.map(|o| o.new_flows), seconds),
            );
        }
    }
}

/// The status page: one server-rendered HTML page that reloads itself every 5 s; rates are
/// per second since the previous render.
fn page(shared: &Shared) -> anyhow::Result<String> {
    let stats = report::stats(&*shared.maps.lock().map_err(|_| anyhow::anyhow!("the maps' lock is poisoned"))?)?;
    let status = shared.status.lock().map(|s| s.clone()).unwrap_or_default();
    let mut last = shared.last_page.lock().map_err(|_| anyhow::anyhow!("status page state poisoned"))?;
    let now = Instant::now();
    let previous = last.as_ref().filter(|(at, _)| now.duration_since(*at) >= Duration::from_millis(500));
    let seconds = previous.map_or(0.0, |(at, _)| now.duration_since(*at).as_secs_f64());
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>lb on {host}</title><style>\
         body{{font-family:sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
         th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}th{{background:#eee}}\
         td.n{{text-align:right;font-variant-numeric:tabular-nums}}.active{{color:#070}}.draining{{color:#a60}}\
         .bad{{color:#b00;font-weight:bold}}</style></head><body>\
         <h1>lb on {host}</h1><p>agent pid {pid}, pin dir {pin_dir}; refreshes every 5 s</p>",
        host = escape(&hostname()),
        pid = status.pid,
        pin_dir = escape(&status.pin_dir),
    );
    marathon_section(&mut html, &status);
    bgp_section(&mut html, &status);
    services_section(&mut html, &stats, previous.map(|(_, p)| p), seconds);
    html.push_str("</table><h2>Packets by outcome</h2><table><tr><th>outcome</th><th>packets</th><th>per second</th></tr>");
    for (name, n) in stats.verdicts.iter().filter(|(_, n)| **n > 0) {
        let before = previous.and_then(|(_, p)| p.verdicts.get(name).copied());
        let _ = write!(html, "<tr><td>{name}</td><td class=n>{n}</td><td class=n>{}</td></tr>", rate(*n, before, seconds));
    }
    html.push_str("</table></body></html>\n");
    *last = Some((now, stats));
    Ok(html)
}

/// The announcer's state, when the agent announces through BIRD.
fn bgp_section(html: &mut String, status: &AgentStatus) {
    let Some(bgp) = &status.bgp else { return };
    let state = match &bgp.last_error {
        Some(err) => format!("<span class=bad>FAILING</span> ({} failures): {}", bgp.failures, escape(err)),
        None => "<span class=active>ok</span>".to_string(),
    };
    let announced = if bgp.announced.is_empty() { "none".to_owned() } else { escape(&bgp.announced.join(", ")) };
    let _ = write!(
        html,
        "<h2>BGP (BIRD)</h2><table><tr><th>state</th><td>{state}</td></tr><tr><th>control socket</th><td>{}</td></tr>\
         <tr><th>routes file</th><td>{}</td></tr><tr><th>announced</th><td>{announced}</td></tr></table>",
        escape(&bgp.socket),
        escape(&bgp.routes),
    );
}

fn marathon_section(html: &mut String, status: &AgentStatus) {
    let Some(m) = &status.marathon else {
        html.push_str("<p>Marathon: not configured</p>");
        return;
    };
    let state = match (&m.last_error, m.state.as_str()) {
        (Some(err), _) => format!("<span class=bad>FAILING</span> ({} in a row): {}", m.failures_in_a_row, escape(err)),
        (None, "degraded") => "<span class=bad>DEGRADED</span>".to_string(),
        _ => "<span class=active>ok</span>".to_string(),
    };
    let ago = |t: Option<u64>| t.map_or("never".to_string(), |t| format!("{} s ago", crate::status::now().saturating_sub(t)));
    let _ = write!(
        html,
        "<h2>Marathon</h2><table><tr><th>state</th><td>{state}</td></tr><tr><th>answering</th><td>{}</td></tr>\
         <tr><th>event stream</th><td>{}</td></tr><tr><th>last sync</th><td>{}</td></tr>\
         <tr><th>apps</th><td>{} ({} skipped)</td></tr><tr><th>events applied / re-lists</th><td>{} / {}</td></tr></table>",
        escape(&m.current),
        escape(m.event_stream.as_deref().unwrap_or("not connected")),
        ago(m.last_sync),
        m.apps,
        m.skipped_apps.len(),
        m.events_applied,
        m.relists,
    );
    for (app, why) in &m.skipped_apps {
        let _ = write!(html, "<p class=bad>{}: {}</p>", escape(app), escape(why));
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}
