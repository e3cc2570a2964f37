//! `cargo xtask bench`, control plane: how fast Marathon changes reach the maps on a loaded
//! cluster, what each costs, and what a full sync costs. The agent runs as in production
//! (`lb run --marathon`) in a throw-away namespace against the Marathon-compatible test
//! server, which sends the events a real Marathon sends. Per cluster size (apps × 3 tasks, each
//! app with a service port and a named VIP: two services):
//!
//! - full sync: the agent's own measure (request to last map write, logged as `synced from
//!   Marathon`), its peak RSS (VmHWM) and the kernel memory of the pinned maps (fdinfo memlock);
//! - event → maps: one task's port changes; the time until the new backend is in that
//!   service's ring (one service lookup and its ring read per poll, so polling costs the same at
//!   any size), p50/p99 over the events; `GET /v2/apps` (full list) requests per event; agent
//!   CPU seconds per 1,000 events.
//!
//! `LB_BIN` picks the agent binary, so an older build can be measured with the same method.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use lb::{
    dataplane::{pinned::PinnedMaps, Dataplane},
    desired::{Proto, ServiceAddr, ServiceId},
};
use lb_common::{BackendInfo, ServiceInfo, ServiceKey};
use lb_tests::{
    agent::{cpu_seconds, Agent, PinDir, TestCgroup},
    bench_report,
    marathon_server::{AppSpec, MarathonServer, TaskSpec},
    netns::Netns,
};
use serde_json::json;

/// Options of `cargo xtask bench`'s control-plane benchmark.
#[derive(clap::Parser, Debug)]
#[command(name = "lb-bench-control", args_override_self = true)]
struct Config {
    /// Task changes timed per cluster size.
    #[arg(long, default_value_t = 200, default_value_if("smoke", "true", "5"))]
    events: usize,
    /// Cluster sizes (apps), comma-separated.
    #[arg(long = "apps", value_name = "APPS", value_delimiter = ',', default_values_t = [1_000, 10_000, 30_000], default_value_if("smoke", "true", "50"))]
    sizes: Vec<usize>,
    #[command(flatten)]
    report: bench_report::ReportFiles,
    /// Five events on 50 apps: the suite's check that the benchmark still works.
    #[arg(long)]
    smoke: bool,
}

fn task(app: usize, i: usize, port: u16) -> TaskSpec {
    TaskSpec {
        id: format!("app{app}.task-{i}"),
        host: format!("10.{}.{}.{}", 100 + (app >> 16) % 100, (app >> 8) & 0xff, app & 0xff),
        port,
        state: "TASK_RUNNING".into(),
        alive: Some(true),
    }
}

/// An app of 3 tasks with a service port and a named VIP (two services), as marathon-lb users
/// label them.
fn app(i: usize) -> AppSpec {
    let mut app = AppSpec::new(&format!("/bench/app-{i}"), 10000 + (i % 50000) as u16);
    app.labels.insert("VIP_0".into(), format!("/bench/app-{i}:80"));
    app.tasks = (0..3).map(|t| task(i, t, 31000 + t as u16)).collect();
    app
}

/// Apps the default limits are meant to hold (lb_common::DEFAULT_MAX_SERVICES).
const DEFAULT_LIMITS_APPS: usize = 10_000;

/// `lb run --marathon` in `ns`: with the default limits up to [`DEFAULT_LIMITS_APPS`], so the
/// figures are those of an agent as installed, and limits scaled to the cluster above.
fn start_agent(ns: &Netns, cgroup: &TestCgroup, pins: &PinDir, marathon: &str, apps: usize) -> Result<Agent> {
    let mut args: Vec<String> = [
        "--pin-dir", &pins.arg(), "--cgroup", &cgroup.arg(), "--marathon", marathon, "--resync", "3600",
    ]
    .map(String::from)
    .to_vec();
    if apps > DEFAULT_LIMITS_APPS {
        let services = apps * 2 + 64;
        let chunk = lb_common::ring_pool::CHUNK_SLOTS as usize;
        // 3-backend rings, and a quarter more for rings being swapped.
        let ring_slots = (services * lb_common::maglev::ring_size_for([1; 3].into_iter()) as usize * 5 / 4).div_ceil(chunk) * chunk;
        for (flag, value) in [
            ("--max-services", services.next_power_of_two()),
            ("--max-backends", (services * 3).next_power_of_two()),
            ("--ring-slots", ring_slots),
        ] {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    Agent::start(ns, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Kernel memory the pinned maps lock (the sum of their fdinfo `memlock`), in bytes.
fn pinned_map_bytes(pins: &PinDir) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(pins.path())? {
        let path = entry?.path();
        if path.is_dir() {
            continue;
        }
        let map = MapData::from_pin(&path)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(map.fd()));
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        total += info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(total)
}

/// Median time of 9 scrapes of the agent's /metrics (its default listener, in `ns`).
fn scrape_ms(ns: &Netns) -> Result<f64> {
    let at = "127.0.0.1:9097".parse()?;
    let mut times = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        let (status, body) = lb_tests::servers::http_get(ns, at, "/metrics")?;
        ensure!(status == 200 && body.contains("lb_service_packets_total"), "a scrape answered {status}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(percentile(&times, 0.5))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One cluster size's figures.
struct Row {
    apps: usize,
    services: usize,
    sync_ms: f64,
    rss_kib: u64,
    map_bytes: u64,
    p50: f64,
    p99: f64,
    max: f64,
    lists_per_event: f64,
    cpu_per_1000: f64,
    /// Median of 9 scrapes of /metrics (every per-CPU counter read at scrape time).
    scrape_ms: f64,
}

/// Whether the service on node port `port` has a backend on `backend_port` in its ring.
struct RingProbe {
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    backends: Array<MapData, BackendInfo>,
    maps: PinnedMaps,
}

impl RingProbe {
    fn new(pins: &PinDir) -> Result<Self> {
        let open = |name: &str| MapData::from_pin(pins.path().join(name));
        Ok(Self {
            services: HashMap::try_from(Map::HashMap(open("services")?))?,
            backends: Array::try_from(Map::Array(open("backends")?))?,
            maps: PinnedMaps::new(pins.path()),
        })
    }

    fn serves(&self, port: u16, backend_port: u16) -> Result<bool> {
        let key = ServiceId { addr: ServiceAddr::NodePort { v6: false }, port, proto: Proto::Tcp }.key();
        let Ok(info) = self.services.get(&key, 0) else { return Ok(false) };
        let mut ids = self.maps.read_ring(info.ring_start, info.ring_size)?;
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let backend = self.backends.get(&id, 0)?;
            if backend.port == backend_port && backend.state != lb_common::BACKEND_UNUSED {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn measure(cfg: &Config, apps: usize) -> Result<Row> {
    let ns = Netns::new("lbk")?;
    let marathon = MarathonServer::start(Some(&ns), Duration::from_secs(1))?;
    marathon.set_apps((0..apps).map(app).collect());
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new()?);
    let agent = start_agent(&ns, &cgroup, &pins, &marathon.url(), apps)?;
    let line = agent.wait_log("synced from Marathon", Duration::from_secs(600))?;
    eprintln!("{apps} apps: {line}");
    let sync_ms: f64 = line
        .split("elapsed_ms=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no elapsed_ms in the sync log line")?;
    // Events are measured once the agent follows the stream.
    let connected = Instant::now();
    while !lb::status::read(pins.path()).is_ok_and(|s| s.marathon.is_some_and(|m| m.event_stream.is_some())) {
        ensure!(connected.elapsed() < Duration::from_secs(60), "the agent never connected to the event stream");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_kib = agent.rss_kib()?.1;
    let services = PinnedMaps::new(pins.path()).services()?.len();
    ensure!(services == apps * 2, "{services} of {} services programmed", apps * 2);
    let map_bytes = pinned_map_bytes(&pins)?;
    let scrape_ms = scrape_ms(&ns)?;

    let probe = RingProbe::new(&pins)?;
    let (lists_before, cpu_before) = (marathon.list_requests(), cpu_seconds(agent.pid())?);
    let mut samples = Vec::new();
    for round in 0..cfg.events {
        let port = 40000 + (round % 20000) as u16;
        let sent = Instant::now();
        marathon.update("/bench/app-7", |a| a.tasks[0].port = port);
        while !probe.serves(10007, port)? {
            ensure!(sent.elapsed() < Duration::from_secs(30), "event {round} never reached the maps");
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    let events = cfg.events as f64;
    let lists_per_event = (marathon.list_requests() - lists_before) as f64 / events;
    let cpu_per_1000 = (cpu_seconds(agent.pid())? - cpu_before) / events * 1000.0;
    drop(agent);
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(Row {
        apps,
        services,
        sync_ms,
        rss_kib,
        map_bytes,
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        max: samples[samples.len() - 1],
        lists_per_event,
        cpu_per_1000,
        scrape_ms,
    })
}

fn main() -> Result<()> {
    let cfg: Config = lb_tests::command_line();
    let mut rows = Vec::new();
    for &apps in &cfg.sizes {
        let row = measure(&cfg, apps)?;
        eprintln!("{apps} apps: sync {:.0} ms, event p50 {:.2} ms p99 {:.2} ms", row.sync_ms, row.p50, row.p99);
        rows.push(row);
    }
    let mut md = format!(
        "\n## Control plane (Marathon → maps)\n\n\
         `lb run --marathon` against the Marathon-compatible test server (which sends the events a real \
         Marathon sends), in a throw-away namespace; apps × 3 tasks, each app with a service port and a \
         named VIP (two services); the default limits up to {DEFAULT_LIMITS_APPS} apps, scaled limits above; \
         {n} events per size (one task's port changes; timed until the new backend is in the service's \
         ring).\n\n\
         | apps | services | full sync | peak RSS | kernel map memory | event → maps p50 | p99 (max) | `GET /v2/apps` per event | agent CPU s per 1,000 events | `/metrics` scrape |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        n = cfg.events
    );
    for r in &rows {
        md += &format!(
            "| {} | {} | {:.0} ms | {:.1} MiB | {:.0} MiB | {:.2} ms | {:.2} ms ({:.2}) | {:.2} | {:.2} | {:.1} ms |\n",
            r.apps,
            r.services,
            r.sync_ms,
            r.rss_kib as f64 / 1024.0,
            r.map_bytes as f64 / (1 << 20) as f64,
            r.p50,
            r.p99,
            r.max,
            r.lists_per_event,
            r.cpu_per_1000,
            r.scrape_ms
        );
    }
    print!("{md}");
    let doc: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({"apps": r.apps, "tasks_per_app": 3, "services": r.services, "full_sync_ms": r.sync_ms,
                "peak_rss_kib": r.rss_kib, "pinned_map_bytes": r.map_bytes,
                "event_to_maps_ms": {"events": cfg.events, "p50": r.p50, "p99": r.p99, "max": r.max},
                "list_requests_per_event": r.lists_per_event, "cpu_seconds_per_1000_events": r.cpu_per_1000,
                "metrics_scrape_ms": r.scrape_ms})
        })
        .collect();
    if let Some(path) = &cfg.report.json {
        bench_report::add_json_section(path, "control_plane", json!(doc))?;
    }
    if let Some(path) = &cfg.report.markdown {
        bench_report::append_markdown(path, &md)?;
    }
    Ok(())
}
