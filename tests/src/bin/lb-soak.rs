//! `cargo xtask soak [--minutes N] [--apps N] [--rate CHANGES_PER_S] [--seed N] [--json FILE]`: a
//! bounded churn run. The agent follows the Marathon test server in a throw-away namespace while
//! the server scales, kills, flips health and relabels 1,000 apps at ≥ 20 events/s; a client
//! keeps 100 long-lived connections to a stable app (whose fourth task comes and goes) and
//! opens new ones all along. At the end the apps are put back as they started and the run
//! fails if anything grew or broke: agent RSS or fds (last minute against the first), backend
//! ids or ring slots leaked, entries in the service maps, a long-lived connection broken, a new
//! connection refused, or event → maps p99 over a second.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb::dataplane::{pinned::PinnedMaps, Dataplane};
use lb_common::BACKEND_UNUSED;
use lb_tests::{
    agent::{lb_ok, wait_for_services, Agent, PinDir, TestCgroup},
    marathon_server::{AppSpec, MarathonServer, TaskSpec},
    netns::LbTopology,
    rng::Rng,
    servers::{connect_and_greet, echo_round_trip, http_get, tcp_echo, ConnectionProber, Server},
};
use serde_json::{json, Value};

/// Options of `cargo xtask soak`.
#[derive(clap::Parser, Debug)]
#[command(name = "lb-soak")]
struct Config {
    /// How long to churn (at least 1: the first and last minutes are compared).
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Apps churned.
    #[arg(long, default_value_t = 1000)]
    apps: usize,
    /// App changes per second (each one or more Marathon events).
    #[arg(long, value_name = "CHANGES_PER_S", default_value_t = 25.0)]
    rate: f64,
    /// Seed of the churn: the same seed makes the same changes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// JSON file the report goes into.
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
}

const STABLE: &str = "/soak/stable";
const VIP: &str = "10.0.0.1:80";
const ECHO_PORT: u16 = 31000;
const LONG_LIVED: usize = 100;

fn task(id: String, host: String, port: u16) -> TaskSpec {
    TaskSpec { id, host, port, state: "TASK_RUNNING".into(), alive: Some(true) }
}

/// The stable app: the VIP over the echo servers of backends 0–2 (3 joins and leaves).
fn stable_app() -> AppSpec {
    let mut app = AppSpec::new(STABLE, 10000);
    app.labels.insert("VIP_0".into(), VIP.into());
    app.tasks = (0..3).map(|i| task(format!("soak_stable.task-{i}"), LbTopology::backend_ip(i).to_string(), ECHO_PORT)).collect();
    app
}

/// Churned app `i`: a service port and two tasks (no servers behind them: only the maps matter).
fn churn_app(i: usize) -> AppSpec {
    let mut app = AppSpec::new(&format!("/soak/app-{i}"), 10001 + i as u16);
    app.tasks = (0..2).map(|t| churn_task(i, t)).collect();
    app
}

fn churn_task(app: usize, serial: usize) -> TaskSpec {
    task(format!("soak_app-{app}.task-{serial}"), format!("10.{}.{}.{}", 100 + app / 65536, (app / 256) % 256, app % 256), 32000 + serial as u16)
}

/// One churn step on app `i`: scale up or down, kill a task (it drains, then goes), flip a
/// task's health, or add/remove a VIP label. `serial` numbers new tasks. Returns the events
/// Marathon sent for it.
fn churn(marathon: &MarathonServer, rng: &mut Rng, i: usize, serial: &mut usize) -> usize {
    let op = rng.below(5);
    let pick = rng.below(4);
    let events = marathon.change(&format!("/soak/app-{i}"), |app| {
        // A task killed last time is gone now.
        app.tasks.retain(|t| t.state != "TASK_KILLING");
        let n = app.tasks.len();
        match op {
            0 if n < 4 => {
                *serial += 1;
                app.tasks.push(churn_task(i, *serial));
            }
            1 if n > 1 => {
                app.tasks.pop();
            }
            2 if n > 1 => app.tasks[pick % n].state = "TASK_KILLING".into(),
            3 if n > 0 => {
                let t = &mut app.tasks[pick % n];
                t.alive = Some(!t.alive.unwrap_or(true));
            }
            _ => {
                if app.labels.remove("VIP_0").is_none() {
                    app.labels.insert("VIP_0".into(), format!("10.{}.{}.{}:80", 1 + i / 65536, (i / 256) % 256, i % 256));
                }
            }
        }
    });
    marathon.send(&events);
    events.len()
}

/// The stable app's fourth task (backend 3) joins, or drains and leaves. Returns the events
/// sent.
fn toggle_fourth(marathon: &MarathonServer) -> usize {
    let events = marathon.change(STABLE, |app| match app.tasks.len() {
        3 => app.tasks.push(task("soak_stable.task-3".into(), LbTopology::backend_ip(3).to_string(), ECHO_PORT)),
        _ if app.tasks[3].state == "TASK_KILLING" => {
            app.tasks.pop();
        }
        _ => app.tasks[3].state = "TASK_KILLING".into(),
    });
    marathon.send(&events);
    events.len()
}

/// One look at the agent and the maps.
#[derive(Clone, Debug, Default)]
struct Sample {
    at: f64,
    rss_kib: u64,
    fds: usize,
    /// Entries per map (services, backends in use, and each flow table).
    entries: BTreeMap<String, u64>,
}

fn sample(agent: &Agent, maps: &PinnedMaps, at: f64) -> Result<Sample> {
    let fds = std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))?.count();
    let mut entries = BTreeMap::new();
    entries.insert("services".to_string(), maps.services()?.len() as u64);
    entries.insert("backends_in_use".to_string(), maps.backends()?.iter().filter(|b| b.state != BACKEND_UNUSED).count() as u64);
    for (name, n, _) in maps.flow_table_fill()? {
        entries.insert(name.to_string(), u64::from(n));
    }
    Ok(Sample { at, rss_kib: agent.rss_kib()?.0, fds, entries })
}

/// `lb_marathon_event_to_maps_seconds` buckets (upper bound, cumulative count) from the agent's
/// metrics.
fn event_to_maps(topo: &LbTopology) -> Result<Vec<(f64, u64)>> {
    let (status, body) = http_get(&topo.node, "127.0.0.1:9097".parse()?, "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    let mut buckets = Vec::new();
    for line in body.lines().filter(|l| l.starts_with("lb_marathon_event_to_maps_seconds_bucket")) {
        let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()).context("bucket without le")?;
        let count = line.rsplit(' ').next().context("bucket without count")?.parse()?;
        buckets.push((if le == "+Inf" { f64::INFINITY } else { le.parse()? }, count));
    }
    Ok(buckets)
}

/// The bucket bound under which `q` of the observations between two scrapes fall.
fn quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let counts: Vec<(f64, u64)> = after.iter().map(|&(le, n)| (le, n - before.iter().find(|b| b.0 == le).map_or(0, |b| b.1))).collect();
    let total = counts.last().map_or(0, |c| c.1);
    counts.iter().find(|(_, n)| *n as f64 >= q * total as f64).map_or(f64::NAN, |c| c.0)
}

struct Run {
    topo: LbTopology,
    pins: PinDir,
    marathon: MarathonServer,
    agent: Agent,
    _cgroup: TestCgroup,
    _servers: Vec<Server>,
}

fn start(cfg: &Config) -> Result<Run> {
    let topo = LbTopology::new(4)?;
    let servers = (0..4)
        .map(|i| tcp_echo(&topo.backends[i], SocketAddr::new(LbTopology::backend_ip(i), ECHO_PORT), &format!("backend-{i}")))
        .collect::<Result<Vec<_>>>()?;
    let marathon = MarathonServer::start(Some(&topo.node), Duration::from_millis(500))?;
    marathon.set_apps(initial_apps(cfg));
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new()?);
    let (pin_arg, cgroup_arg, url) = (pins.arg(), cgroup.arg(), marathon.url());
    let args = [
        "--iface", &topo.uplink, "--pin-dir", &pin_arg, "--cgroup", &cgroup_arg, "--marathon", &url,
        "--node-ip", "10.201.0.2", "--resync", "3600",
    ];
    let agent = Agent::start(&topo.node, &args)?;
    Ok(Run { topo, pins, marathon, agent, _cgroup: cgroup, _servers: servers })
}

fn initial_apps(cfg: &Config) -> Vec<AppSpec> {
    std::iter::once(stable_app()).chain((0..cfg.apps).map(churn_app)).collect()
}

/// Waits until the agent serves the initial apps: the VIP and every app's service port.
fn wait_initial(run: &Run, cfg: &Config) -> Result<()> {
    let want = cfg.apps + 2;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let services = PinnedMaps::new(run.pins.path()).services()?.len();
        let status: Value = serde_json::from_str(&lb_ok(None, &["status", "--json", "--pin-dir", &run.pins.arg()])?)?;
        if services == want && status["marathon"]["state"] == "ok" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent never served the {want} initial services (has {services}): {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the churn phase saw.
#[derive(Default)]
struct Churned {
    /// Changes made (each one or more Marathon events).
    changes: u64,
    events: u64,
    /// `GET /v2/apps` (full lists) the agent made meanwhile.
    full_lists: u64,
    samples: Vec<Sample>,
    broken: Vec<String>,
}

fn churn_phase(run: &Run, cfg: &Config, conns: &mut [(TcpStream, String)]) -> Result<Churned> {
    let maps = PinnedMaps::new(run.pins.path());
    let mut rng = Rng::new(cfg.seed);
    let mut serial = 100;
    let mut out = Churned::default();
    let started = Instant::now();
    let total = Duration::from_secs_f64(cfg.minutes * 60.0);
    let step = Duration::from_secs_f64(1.0 / cfg.rate);
    let (mut next_sample, mut next_check, mut next_toggle) = (Duration::ZERO, Duration::from_secs(10), Duration::from_secs(5));
    let lists_before = run.marathon.list_requests();
    while started.elapsed() < total {
        let i = rng.below(cfg.apps);
        out.events += churn(&run.marathon, &mut rng, i, &mut serial) as u64;
        out.changes += 1;
        let now = started.elapsed();
        if now >= next_toggle {
            out.events += toggle_fourth(&run.marathon) as u64;
            next_toggle += Duration::from_secs(5);
        }
        if now >= next_sample {
            out.samples.push(sample(&run.agent, &maps, now.as_secs_f64())?);
            next_sample += Duration::from_secs(5);
        }
        if now >= next_check {
            check_long_lived(conns, &mut out.broken);
            next_check += Duration::from_secs(10);
        }
        let due = step * out.changes as u32;
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    out.full_lists = run.marathon.list_requests() - lists_before;
    Ok(out)
}

/// Echoes on every long-lived connection; the ones that fail are recorded (once).
fn check_long_lived(conns: &mut [(TcpStream, String)], broken: &mut Vec<String>) {
    for (i, (stream, name)) in conns.iter_mut().enumerate() {
        let label = format!("connection {i} to {name}");
        if broken.contains(&label) {
            continue;
        }
        if let Err(e) = echo_round_trip(stream, b"soak") {
            broken.push(format!("{label}: {e}"));
        }
    }
}

/// After the apps are put back: backend ids in use that no service lists, and ring slots the
/// agent holds beyond the live rings (after two idle passes, nothing waits for reuse).
fn leaks(run: &Run) -> Result<(i64, i64)> {
    for _ in 0..2 {
        run.agent.sighup();
        std::thread::sleep(Duration::from_secs(1));
    }
    let maps = PinnedMaps::new(run.pins.path());
    let services = maps.services()?;
    let listed: u64 = services.len() as u64;
    let in_use: Vec<_> = maps.backends()?.into_iter().filter(|b| b.state != BACKEND_UNUSED).collect();
    let live_ids: std::collections::BTreeSet<u32> = services.iter().map(|(_, s)| s.service_id).collect();
    let orphans = in_use.iter().filter(|b| !live_ids.contains(&b.service_id)).count() as i64;
    let ring_slots: u64 = services.iter().map(|(_, s)| u64::from(s.ring_size)).sum();
    let status: Value = serde_json::from_str(&lb_ok(None, &["status", "--json", "--pin-dir", &run.pins.arg()])?)?;
    let held = status["ring_slots_in_use"].as_u64().context("status has no ring_slots_in_use")?;
    eprintln!("after churn: {listed} services, {} backends in use, {ring_slots} live ring slots, agent holds {held}", in_use.len());
    Ok((orphans, held as i64 - ring_slots as i64))
}

fn window(samples: &[Sample], from: f64, to: f64) -> Vec<&Sample> {
    samples.iter().filter(|s| s.at >= from && s.at < to).collect()
}

fn main() -> std::process::ExitCode {
    let cfg: Config = lb_tests::command_line();
    if !(cfg.minutes >= 1.0 && cfg.apps >= 1 && cfg.rate > 0.0) {
        eprintln!("lb-soak: --minutes must be at least 1, --apps at least 1, --rate above 0");
        return std::process::ExitCode::from(64);
    }
    match soak(&cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lb-soak: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What is wrong in a soak's report, in words.
fn judge(report: &Value) -> Vec<String> {
    let n = |path: &str| report.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut failures = Vec::new();
    let mut fail = |bad: bool, what: String| {
        if bad {
            failures.push(what);
        }
    };
    let rate = n("/events_per_s");
    fail(rate.is_nan() || rate < 20.0, format!("{rate:.1} events/s, below 20"));
    let (rss_first, rss_last) = (n("/rss_kib/first_minute_peak"), n("/rss_kib/last_minute_peak"));
    // 5 % or 2 MiB of allocator noise, whichever is larger.
    fail(rss_last.is_nan() || rss_last > rss_first + (rss_first / 20.0).max(2048.0), format!("RSS grew: {rss_first} → {rss_last} KiB"));
    let (fds_first, fds_last) = (n("/fds/first_minute_peak"), n("/fds/last_minute_peak"));
    fail(fds_last.is_nan() || fds_last > fds_first, format!("fds grew: {fds_first} → {fds_last}"));
    let leaked_backends = n("/leaked_backend_ids");
    fail(leaked_backends != 0.0, format!("{leaked_backends} backend ids in use by no service"));
    let leaked_ring_slots = n("/leaked_ring_slots");
    fail(leaked_ring_slots != 0.0, format!("{leaked_ring_slots} ring slots held beyond the live rings"));
    for map in ["services", "backends_in_use"] {
        let (start, end) = (&report["entries"]["start"][map], &report["entries"]["end"][map]);
        fail(start != end, format!("{map}: {start} at the start, {end} at the end"));
    }
    let broken = n("/long_lived/broken");
    fail(broken != 0.0, format!("{broken} long-lived connections broke: {}", report["long_lived"]["errors"]));
    let failed = n("/new_connections/failed");
    fail(failed != 0.0, format!("{failed} new connections failed: {}", report["new_connections"]["errors"]));
    let p99_ms = n("/event_to_maps_p99_ms");
    fail(p99_ms.is_nan() || p99_ms > 1000.0, format!("event → maps p99 {p99_ms} ms"));
    failures
}

fn soak(cfg: &Config) -> Result<()> {
    let run = start(cfg)?;
    wait_initial(&run, cfg)?;
    let maps = PinnedMaps::new(run.pins.path());
    let start_entries = sample(&run.agent, &maps, 0.0)?.entries;
    let vip: SocketAddr = VIP.parse()?;
    let mut conns = run.topo.client.run(move || (0..LONG_LIVED).map(|_| connect_and_greet(vip)).collect::<std::io::Result<Vec<_>>>())??;
    let prober = ConnectionProber::start(&run.topo.client, vip, Duration::from_millis(20))?;
    let histogram_before = event_to_maps(&run.topo)?;
    let churned = churn_phase(&run, cfg, &mut conns)?;
    let histogram_after = event_to_maps(&run.topo)?;
    let probes = prober.finish();
    let mut broken = churned.broken;
    check_long_lived(&mut conns, &mut broken);

    // Back to the start: every app as it was.
    run.marathon.set_apps(initial_apps(cfg));
    wait_for_services(&run.pins, |j| j.as_array().is_some_and(|a| a.len() == cfg.apps + 2))?;
    let (leaked_backends, leaked_ring_slots) = leaks(&run)?;
    let end_entries = sample(&run.agent, &maps, 0.0)?.entries;

    let minutes = cfg.minutes * 60.0;
    let (first, last) = (window(&churned.samples, 0.0, 60.0), window(&churned.samples, minutes - 60.0, minutes));
    let peak = |w: &[&Sample], f: fn(&Sample) -> u64| w.iter().map(|s| f(s)).max().unwrap_or(0);
    let (rss_first, rss_last) = (peak(&first, |s| s.rss_kib), peak(&last, |s| s.rss_kib));
    let (fds_first, fds_last) = (peak(&first, |s| s.fds as u64), peak(&last, |s| s.fds as u64));
    let p99_ms = quantile(&histogram_before, &histogram_after, 0.99) * 1000.0;
    let rate = churned.events as f64 / minutes;
    let report = json!({
        "minutes": cfg.minutes, "apps": cfg.apps, "seed": cfg.seed, "changes": churned.changes, "events": churned.events, "events_per_s": rate, "full_lists": churned.full_lists,
        "rss_kib": {"first_minute_peak": rss_first, "last_minute_peak": rss_last},
        "fds": {"first_minute_peak": fds_first, "last_minute_peak": fds_last},
        "entries": {"start": start_entries, "end": end_entries},
        "leaked_backend_ids": leaked_backends, "leaked_ring_slots": leaked_ring_slots,
        "long_lived": {"connections": LONG_LIVED, "broken": broken.len(), "errors": broken},
        "new_connections": {"ok": probes.ok, "failed": probes.failed, "errors": probes.errors, "per_backend": probes.per_backend},
        "event_to_maps_p99_ms": p99_ms,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &cfg.json {
        std::fs::File::create(path)?.write_all(serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    let failures = judge(&report);
    if !failures.is_empty() {
        bail!("soak failed:\n  {}", failures.join("\n  "));
    }
    eprintln!("soak passed");
    Ok(())
}
