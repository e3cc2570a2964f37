//! `cargo xtask bench`, control plane: how fast Marathon changes reach the maps, and what a full
//! sync of a large cluster costs. The agent runs as in production (`lb run --marathon`) in a
//! throw-away namespace against the Marathon-compatible test server.
//!
//! - event → maps: a task's port changes and a `status_update_event` is sent; the time until the
//!   new backend is in the BACKENDS map (polled through the agent's own map adapter).
//! - full sync: N apps × 3 tasks served before the agent starts; the sync time is the agent's
//!   own measure (from the request to the last map write, logged as `synced from Marathon`),
//!   and the peak RSS is the agent's VmHWM after the sync.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use lb::dataplane::{pinned::PinnedMaps, Dataplane};
use lb_tests::{
    bench_report,
    agent::{Agent, PinDir, TestCgroup},
    marathon_server::{AppSpec, MarathonServer, TaskSpec},
    netns::Netns,
};
use serde_json::json;

struct Config {
    events: usize,
    apps: usize,
    json: Option<String>,
    markdown: Option<String>,
}

fn parse_args() -> Result<Config> {
    let mut c = Config { events: 200, apps: 10_000, json: None, markdown: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--events" => c.events = value()?.parse()?,
            "--apps" => c.apps = value()?.parse()?,
            "--json" => c.json = Some(value()?),
            "--markdown" => c.markdown = Some(value()?),
            "--smoke" => {
                c.events = 5;
                c.apps = 50;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(c)
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

fn app(i: usize) -> AppSpec {
    let mut app = AppSpec::new(&format!("/bench/app-{i}"), 10000 + (i % 50000) as u16);
    app.tasks = (0..3).map(|t| task(i, t, 31000 + t as u16)).collect();
    app
}

/// `lb run --marathon` with limits for `services`, in `ns`.
fn start_agent(ns: &Netns, cgroup: &TestCgroup, pins: &PinDir, marathon: &str, services: usize) -> Result<Agent> {
    let max_services = services.next_power_of_two().max(64);
    let (max_services, max_backends) = (max_services.to_string(), (max_services * 4).to_string());
    let args = [
        "--pin-dir", &pins.arg(), "--cgroup", &cgroup.arg(), "--marathon", marathon, "--resync", "3600",
        "--max-services", &max_services, "--max-backends", &max_backends, "--ring-size", "4093",
    ];
    Agent::start(ns, &args)
}

/// The agent's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(agent: &Agent) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn event_latency(cfg: &Config) -> Result<(f64, f64, f64)> {
    let ns = Netns::new("lbk")?;
    let marathon = MarathonServer::start(Some(&ns), Duration::from_secs(1))?;
    marathon.set_apps((0..20).map(app).collect());
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new()?);
    let agent = start_agent(&ns, &cgroup, &pins, &marathon.url(), 64)?;
    agent.wait_log("synced from Marathon", Duration::from_secs(30))?;
    let maps = PinnedMaps::new(pins.path());
    let mut samples = Vec::new();
    for round in 0..cfg.events {
        let port = 40000 + round as u16;
        let sent = Instant::now();
        marathon.update("/bench/app-7", |a| a.tasks[0].port = port);
        loop {
            if maps.backends()?.iter().any(|b| b.port == port && b.state != lb_common::BACKEND_UNUSED) {
                break;
            }
            ensure!(sent.elapsed() < Duration::from_secs(10), "event {round} never reached the maps");
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    drop(agent);
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99), samples[samples.len() - 1]))
}

fn full_sync(cfg: &Config) -> Result<(f64, u64, usize)> {
    let ns = Netns::new("lbk")?;
    let marathon = MarathonServer::start(Some(&ns), Duration::from_secs(1))?;
    marathon.set_apps((0..cfg.apps).map(app).collect());
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new()?);
    let agent = start_agent(&ns, &cgroup, &pins, &marathon.url(), cfg.apps + 64)?;
    let line = agent.wait_log("synced from Marathon", Duration::from_secs(600))?;
    eprintln!("{line}");
    let ms: f64 = line
        .split("elapsed_ms=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no elapsed_ms in the sync log line")?;
    let rss = peak_rss_kib(&agent)?;
    let services = PinnedMaps::new(pins.path()).services()?.len();
    ensure!(services >= cfg.apps, "only {services} of {} services programmed", cfg.apps);
    Ok((ms, rss, services))
}

fn main() -> Result<()> {
    let cfg = parse_args()?;
    let (p50, p99, max) = event_latency(&cfg)?;
    let (sync_ms, rss_kib, services) = full_sync(&cfg)?;
    let md = format!(
        "\n## Control plane (Marathon → maps)\n\n\
         `lb run --marathon` against the Marathon-compatible test server, in a throw-away namespace.\n\n\
         | measure | result | target |\n|---|---|---|\n\
         | event → maps, p50 over {n} events | {p50:.2} ms | |\n\
         | event → maps, p99 | {p99:.2} ms (max {max:.2} ms) | < 50 ms |\n\
         | full sync, {apps} apps × 3 tasks ({services} services) | {sync_ms:.0} ms | < 2 s |\n\
         | agent peak RSS after that sync | {rss:.1} MiB | < 100 MiB |\n",
        n = cfg.events,
        apps = cfg.apps,
        rss = rss_kib as f64 / 1024.0,
    );
    print!("{md}");
    let doc = json!({"event_to_maps_ms": {"events": cfg.events, "p50": p50, "p99": p99, "max": max},
        "full_sync": {"apps": cfg.apps, "tasks_per_app": 3, "services": services, "ms": sync_ms, "peak_rss_kib": rss_kib}});
    if let Some(path) = &cfg.json {
        bench_report::add_json_section(path, "control_plane", doc)?;
    }
    if let Some(path) = &cfg.markdown {
        bench_report::append_markdown(path, &md)?;
    }
    Ok(())
}
