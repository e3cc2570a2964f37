//! `cargo xtask bench`, DNS: the agent's DNS server (`lb run --dns-listen`) against Knot DNS
//! serving the same records, exported from the agent (`lb dns --zone-file`). The agent runs as
//! in production (`lb run --marathon`) against the Marathon-compatible test server, apps × 3
//! tasks (the control-plane benchmark's apps: a service port and a named VIP each).
//!
//! - Throughput: `dnsperf` (4 client sockets, 100 queries outstanding) over the same query file
//!   (the apps' and tasks' A names and the apps' SRV names, 5 % unknown names, shuffled), for
//!   `--seconds` per round, rounds interleaved agent/Knot. Both servers pinned to CPU 0 (every
//!   thread), dnsperf to CPU 1; CPU per query is the server's CPU time over the queries it
//!   answered. Each round is checked: every query answered, the same response codes from both,
//!   and the server's own counters (the agent's `lb_dns_queries_total`, Knot's `mod-stats`)
//!   moved by at least what dnsperf counted — the round measured that server.
//! - Latency: the same file at a fixed rate both servers sustain (`--latency-qps`), dnsperf's
//!   per-query times (`-v`), p50/p99.
//! - Freshness: one task's port changes in Marathon; the time until the agent's SRV answer has
//!   the new port, p50/p99 over `--events` changes.
//! - Memory: the agent's RSS after the sync with DNS off and on.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use lb_tests::{
    agent::{cpu_seconds, lb_bin, Agent, PinDir, TestCgroup},
    bench_report,
    marathon_server::{AppSpec, MarathonServer, TaskSpec},
    netns::Netns,
};
use serde_json::json;

#[derive(clap::Parser, Debug)]
#[command(name = "lb-bench-dns", args_override_self = true)]
struct Config {
    #[arg(long, default_value_t = 10_000, default_value_if("smoke", "true", "50"))]
    apps: usize,
    /// Rounds per server, interleaved.
    #[arg(long, default_value_t = 3, default_value_if("smoke", "true", "1"))]
    rounds: usize,
    /// Seconds per dnsperf round.
    #[arg(long, default_value_t = 10, default_value_if("smoke", "true", "1"))]
    seconds: u64,
    /// Queries per second of the latency rounds.
    #[arg(long, default_value_t = 20_000, default_value_if("smoke", "true", "2000"))]
    latency_qps: u64,
    /// Marathon changes timed for freshness.
    #[arg(long, default_value_t = 200, default_value_if("smoke", "true", "5"))]
    events: usize,
    #[command(flatten)]
    report: bench_report::ReportFiles,
    /// A second per round on 50 apps: the suite's check that the benchmark still works.
    #[arg(long)]
    smoke: bool,
}

const AGENT_DNS: &str = "127.0.0.1:53";
const KNOT_DNS: &str = "127.0.0.2:53";
const VIP_DOMAIN: &str = "l4lb.thisdcos.directory";

fn app(i: usize) -> AppSpec {
    let mut app = AppSpec::new(&format!("/bench/app-{i}"), 10000 + (i % 50000) as u16);
    app.labels.insert("VIP_0".into(), format!("/bench/app-{i}:80"));
    let host = format!("10.{}.{}.{}", 100 + (i >> 16) % 100, (i >> 8) & 0xff, i & 0xff);
    app.tasks = (0..3)
        .map(|t| TaskSpec { id: format!("app{i}.task-{t}"), host: host.clone(), port: 31000 + t, state: "TASK_RUNNING".into(), alive: Some(true) })
        .collect();
    app
}

/// A directory of the run's own (zone files, Knot's config and database), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("lb-bench-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("LB_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A process stopped (SIGTERM, then reaped) on drop.
struct Server {
    child: Child,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Knot DNS in `ns` on [`KNOT_DNS`] with the agent's two zones, two UDP workers (the agent's
/// count per address) and `mod-stats` (its counters check each round).
fn start_knot(ns: &Netns, dir: &Path, zones: &[(String, PathBuf)]) -> Result<Server> {
    let (addr, port) = KNOT_DNS.split_once(':').context("KNOT_DNS")?;
    let mut conf = format!(
        "server:\n    rundir: \"{d}\"\n    listen: {addr}@{port}\n    udp-workers: 2\n    tcp-workers: 1\n    background-workers: 1\n\
         database:\n    storage: \"{d}\"\ntemplate:\n  - id: default\n    storage: \"{d}\"\n    global-module: mod-stats\nzone:\n",
        d = dir.display()
    );
    for (zone, file) in zones {
        conf += &format!("  - domain: {zone}\n    file: \"{}\"\n", file.display());
    }
    let conf_path = dir.join("knot.conf");
    std::fs::write(&conf_path, conf)?;
    let child = ns.command("knotd").arg("-c").arg(&conf_path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting knotd")?;
    let knot = Server { child };
    let started = Instant::now();
    while !knot_loaded(dir, zones.len())? {
        ensure!(started.elapsed() < Duration::from_secs(120), "Knot did not load the zones");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(knot)
}

/// Whether Knot has every zone loaded (`knotc zone-status`: a serial per zone).
fn knot_loaded(dir: &Path, zones: usize) -> Result<bool> {
    let out = std::process::Command::new("knotc").arg("-c").arg(dir.join("knot.conf")).arg("zone-status").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success() && text.lines().filter(|l| l.contains("serial: ") && !l.contains("serial: none")).count() == zones)
}

/// Knot's count of UDP queries (`mod-stats.request-protocol[udp4]`).
fn knot_queries(dir: &Path) -> Result<u64> {
    let out = std::process::Command::new("knotc").arg("-c").arg(dir.join("knot.conf")).arg("stats").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().find_map(|l| l.strip_prefix("mod-stats.request-protocol[udp4] = ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

/// The agent's count of answered queries (every `lb_dns_queries_total` series).
fn agent_queries(ns: &Netns) -> Result<u64> {
    let (status, body) = lb_tests::servers::http_get(ns, "127.0.0.1:9097".parse()?, "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(body.lines().filter(|l| l.starts_with("lb_dns_queries_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum())
}

/// Pins every thread of `pid` to `cpu` (threads it starts later inherit it).
fn pin(pid: u32, cpu: usize) -> Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = task?.file_name().to_string_lossy().parse()?;
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity get
        // valid pointers and the set's size.
        let ok = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        };
        ensure!(ok, "pinning thread {tid} of {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() -> Result<()> {
    let cfg: Config = lb_tests::command_line();
    let ns = Netns::new("lbq")?;
    let marathon = MarathonServer::start(Some(&ns), Duration::from_secs(1))?;
    marathon.set_apps((0..cfg.apps).map(app).collect());
    let rss_off = Synced::start(&ns, &marathon, false)?.rss_kib;
    let agent = Synced::start(&ns, &marathon, true)?;
    let scratch = Scratch::new()?;
    let zones = export_zones(&ns, &agent.pins, &scratch.0)?;
    let knot = start_knot(&ns, &scratch.0, &zones)?;
    let queries = write_queries(&zones[0].1, &scratch.0)?;
    same_answers(&ns, &queries)?;
    let subjects = [
        Subject { name: "lb agent", ns: &ns, addr: AGENT_DNS, pid: agent.agent.pid(), served: Box::new(|| agent_queries(&ns)) },
        Subject { name: "Knot DNS 3.2", ns: &ns, addr: KNOT_DNS, pid: knot.pid(), served: Box::new(|| knot_queries(&scratch.0)) },
    ];
    for s in &subjects {
        pin(s.pid, 0)?;
    }
    let throughput = throughput_rounds(&cfg, &subjects, &queries.file)?;
    let latency: Vec<Latency> = subjects.iter().map(|s| latency_round(&cfg, s, &queries.file)).collect::<Result<_>>()?;
    let fresh = freshness(&cfg, &ns, &marathon)?;
    report(&cfg, &queries, &throughput, &latency, &fresh, (rss_off, agent.rss_kib))
}

/// An agent synced from Marathon, with its pins and cgroup (dropped in this order).
struct Synced {
    agent: Agent,
    pins: PinDir,
    _cgroup: TestCgroup,
    /// VmRSS once the sync is applied, KiB.
    rss_kib: u64,
}

impl Synced {
    fn start(ns: &Netns, marathon: &MarathonServer, dns: bool) -> Result<Self> {
        let (pins, cgroup) = (PinDir::new(), TestCgroup::new()?);
        let mut args = vec!["--pin-dir".to_owned(), pins.arg(), "--cgroup".into(), cgroup.arg()];
        args.extend(["--marathon".into(), marathon.url(), "--resync".into(), "3600".into()]);
        if dns {
            args.extend(["--dns-listen".into(), AGENT_DNS.into()]);
        }
        let agent = Agent::start(ns, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        agent.wait_log("services applied", Duration::from_secs(600))?;
        // The sync's transient buffers are freed once its services are applied.
        std::thread::sleep(Duration::from_secs(2));
        let rss_kib = agent.rss_kib()?.0;
        eprintln!("DNS {}: RSS {:.1} MiB after the sync", if dns { "on" } else { "off" }, rss_kib as f64 / 1024.0);
        Ok(Self { agent, pins, _cgroup: cgroup, rss_kib })
    }
}

/// `lb dns --zone-file` for both zones: (zone, file), the Mesos-DNS zone first.
fn export_zones(ns: &Netns, pins: &PinDir, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut zones = Vec::new();
    for zone in ["mesos", VIP_DOMAIN] {
        let out = ns.command(lb_bin().to_str().context("lb path")?).args(["dns", "--zone-file", zone, "--pin-dir", &pins.arg()]).output()?;
        ensure!(out.status.success(), "lb dns --zone-file {zone}: {}", String::from_utf8_lossy(&out.stderr));
        let path = dir.join(format!("{zone}.zone"));
        std::fs::write(&path, &out.stdout)?;
        zones.push((zone.to_owned(), path));
    }
    Ok(zones)
}

/// The query file and what is in it.
struct Queries {
    file: PathBuf,
    total: usize,
    unknown: usize,
    /// A few (name, type) of each kind, compared between the servers.
    sample: Vec<(String, String)>,
}

/// The apps' and tasks' A names and the apps' SRV names from the zone file, 5 % unknown
/// names among them, in a fixed shuffled order.
fn write_queries(zone_file: &Path, dir: &Path) -> Result<Queries> {
    let text = std::fs::read_to_string(zone_file)?;
    let mut names: Vec<(String, &str)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.starts_with(';')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, rtype) = (fields[0].trim_end_matches('.'), fields[3]);
        let wanted = match rtype {
            "A" => name.ends_with(".marathon.mesos"),
            "SRV" => name.starts_with("_app-") && name.ends_with("._tcp.marathon.mesos"),
            _ => false,
        };
        if wanted && seen.insert(name) {
            names.push((name.to_owned(), rtype));
        }
    }
    ensure!(!names.is_empty(), "no names in {}", zone_file.display());
    let unknown = names.len() / 19;
    names.extend((0..unknown).map(|i| (format!("nope-{i}.marathon.mesos"), "A")));
    // A fixed permutation (an LCG's Fisher-Yates): the same file on every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for i in (1..names.len()).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        names.swap(i, (state >> 33) as usize % (i + 1));
    }
    let file = dir.join("queries.txt");
    std::fs::write(&file, names.iter().map(|(n, t)| format!("{n} {t}\n")).collect::<String>())?;
    let sample = names.iter().step_by((names.len() / 40).max(1)).map(|(n, t)| (n.clone(), t.to_string())).collect();
    Ok(Queries { file, total: names.len(), unknown, sample })
}

/// Both servers give the same answer records (and code) for the sampled names: the zone Knot
/// serves is the agent's.
fn same_answers(ns: &Netns, queries: &Queries) -> Result<()> {
    for (name, rtype) in &queries.sample {
        let agent = answer(ns, AGENT_DNS, name, rtype)?;
        let knot = answer(ns, KNOT_DNS, name, rtype)?;
        ensure!(agent == knot, "{name} {rtype}: the agent answers {agent:?}, Knot {knot:?}");
    }
    Ok(())
}

/// `dig +short`-like: the status and the sorted answer records.
fn answer(ns: &Netns, server: &str, name: &str, rtype: &str) -> Result<(String, Vec<String>)> {
    let (addr, port) = server.split_once(':').context("server")?;
    let out = ns.command("dig").args([&format!("@{addr}"), "-p", port, name, rtype, "+noall", "+answer", "+comments"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("none").to_owned();
    let mut records: Vec<String> = text.lines().filter(|l| !l.starts_with(';') && !l.trim().is_empty()).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    records.sort();
    Ok((status, records))
}

/// A server under test.
struct Subject<'a> {
    name: &'static str,
    ns: &'a Netns,
    addr: &'static str,
    pid: u32,
    /// Queries the server itself counts as answered.
    served: Box<dyn Fn() -> Result<u64> + 'a>,
}

/// What dnsperf reported for one round.
#[derive(Clone, Debug, Default)]
struct Perf {
    completed: u64,
    lost: u64,
    qps: f64,
    codes: String,
    /// Per-query latencies (verbose runs), seconds.
    latencies: Vec<f64>,
}

/// dnsperf in `ns` on CPU 1 against `addr` with `extra` arguments.
fn dnsperf(ns: &Netns, addr: &str, file: &Path, seconds: u64, extra: &[&str]) -> Result<Perf> {
    let (host, port) = addr.split_once(':').context("addr")?;
    let out = ns
        .command("taskset")
        .args(["-c", "1", "dnsperf", "-s", host, "-p", port, "-c", "4", "-l", &seconds.to_string(), "-d"])
        .arg(file)
        .args(extra)
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "dnsperf failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |label: &str| text.lines().find_map(|l| l.trim().strip_prefix(label)).map(str::trim).with_context(|| format!("no {label:?} in dnsperf's output: {text}"));
    let first_number = |s: &str| s.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()).unwrap_or(0.0);
    let latencies = text.lines().filter(|l| l.starts_with("> ")).filter_map(|l| l.rsplit(' ').next()?.parse().ok()).collect();
    Ok(Perf {
        completed: first_number(field("Queries completed:")?) as u64,
        lost: first_number(field("Queries lost:")?) as u64,
        qps: first_number(field("Queries per second:")?),
        codes: field("Response codes:")?.to_owned(),
        latencies,
    })
}

/// Response codes without their counts (`NOERROR (95.00%), NXDOMAIN (5.00%)` → names with
/// percentages rounded to whole numbers), to compare two rounds' mixes.
fn code_mix(codes: &str) -> Vec<(String, i64)> {
    codes
        .split(", ")
        .filter_map(|c| {
            let mut parts = c.split_whitespace();
            let code = parts.next()?.to_owned();
            let share: f64 = parts.nth(1)?.trim_matches(|ch| ch == '(' || ch == ')' || ch == '%').parse().ok()?;
            Some((code, share.round() as i64))
        })
        .collect()
}

/// One throughput round, checked: (dnsperf's figures, server CPU seconds per query).
fn round(cfg: &Config, s: &Subject, file: &Path) -> Result<(Perf, f64)> {
    let (served_before, cpu_before) = ((s.served)()?, cpu_seconds(s.pid)?);
    let perf = dnsperf(s.ns, s.addr, file, cfg.seconds, &[])?;
    let (served, cpu) = ((s.served)()? - served_before, cpu_seconds(s.pid)? - cpu_before);
    ensure!(perf.completed > 0 && perf.lost * 1000 <= perf.completed, "{}: {} lost of {}", s.name, perf.lost, perf.completed);
    ensure!(served >= perf.completed, "{}: dnsperf had {} answers, the server counted {served}: not the path measured", s.name, perf.completed);
    Ok((perf.clone(), cpu / perf.completed as f64))
}

/// Interleaved rounds: per subject, the rounds' (queries/s, CPU µs per query).
fn throughput_rounds(cfg: &Config, subjects: &[Subject], file: &Path) -> Result<Vec<Vec<(f64, f64)>>> {
    let mut results = vec![Vec::new(); subjects.len()];
    let mut mix: Option<Vec<(String, i64)>> = None;
    for r in 0..cfg.rounds {
        for (i, s) in subjects.iter().enumerate() {
            let (perf, cpu) = round(cfg, s, file)?;
            eprintln!("round {r}: {}: {:.0} queries/s, {:.2} µs CPU per query, {}", s.name, perf.qps, cpu * 1e6, perf.codes);
            let this = code_mix(&perf.codes);
            if let Some(first) = &mix {
                ensure!(*first == this, "{}: response codes {this:?}, the first round's {first:?}", s.name);
            }
            mix.get_or_insert(this);
            results[i].push((perf.qps, cpu * 1e6));
        }
    }
    Ok(results)
}

/// Latency at a fixed rate: (p50, p99) in µs.
struct Latency {
    p50: f64,
    p99: f64,
}

fn latency_round(cfg: &Config, s: &Subject, file: &Path) -> Result<Latency> {
    let qps = cfg.latency_qps.to_string();
    let mut perf = dnsperf(s.ns, s.addr, file, cfg.seconds, &["-v", "-Q", &qps])?;
    ensure!(perf.latencies.len() as u64 >= perf.completed / 2 && !perf.latencies.is_empty(), "{}: no per-query latencies", s.name);
    perf.latencies.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| perf.latencies[((perf.latencies.len() - 1) as f64 * p).round() as usize] * 1e6;
    Ok(Latency { p50: at(0.5), p99: at(0.99) })
}

/// Marathon event → the agent's SRV answer has the new port: sorted ms.
fn freshness(cfg: &Config, ns: &Netns, marathon: &MarathonServer) -> Result<Vec<f64>> {
    let socket = ns.run(|| UdpSocket::bind("127.0.0.1:0"))??;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut samples = Vec::new();
    for event in 0..cfg.events {
        let port = 40000 + (event % 20000) as u16;
        let sent = Instant::now();
        marathon.update("/bench/app-7", |a| a.tasks[0].port = port);
        while !srv_has_port(&socket, "_app-7-bench._tcp.marathon.mesos", port)? {
            ensure!(sent.elapsed() < Duration::from_secs(30), "event {event} never reached the answers");
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples)
}

/// Asks the agent for `name` SRV: whether an answer has `port`.
fn srv_has_port(socket: &UdpSocket, name: &str, port: u16) -> Result<bool> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    let mut query = Message::query();
    query.add_query(Query::query(Name::from_ascii(name)?, RecordType::SRV));
    socket.send_to(&query.to_vec()?, AGENT_DNS)?;
    let mut buf = [0u8; 4096];
    let Ok(len) = socket.recv(&mut buf) else { return Ok(false) };
    let reply = Message::from_vec(&buf[..len])?;
    Ok(reply.answers.iter().any(|r| matches!(&r.data, RData::SRV(srv) if srv.port == port)))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn report(cfg: &Config, queries: &Queries, rounds: &[Vec<(f64, f64)>], latency: &[Latency], fresh: &[f64], rss: (u64, u64)) -> Result<()> {
    let qps: Vec<f64> = rounds.iter().map(|r| median(&r.iter().map(|x| x.0).collect::<Vec<_>>())).collect();
    let cpu: Vec<f64> = rounds.iter().map(|r| median(&r.iter().map(|x| x.1).collect::<Vec<_>>())).collect();
    let pct = |p: f64| fresh[((fresh.len() - 1) as f64 * p).round() as usize];
    let (off, on) = (rss.0 as f64 / 1024.0, rss.1 as f64 / 1024.0);
    let mut md = format!(
        "\n## DNS (`--dns-listen`) against Knot DNS\n\n\
         {apps} apps × 3 tasks from the Marathon-compatible test server; Knot DNS serves the same records, exported \
         with `lb dns --zone-file`. dnsperf (4 sockets, 100 outstanding) on CPU 1, each server's threads on CPU 0; \
         {total} names in the query file (apps' and tasks' A, apps' SRV, {unknown} unknown), {rounds} interleaved \
         rounds of {secs} s, medians; each round checked against the server's own counters. Latency at \
         {lat} queries/s.\n\n\
         | server | queries/s | CPU per query | p50 latency | p99 latency |\n|---|---:|---:|---:|---:|\n",
        apps = cfg.apps, total = queries.total, unknown = queries.unknown, rounds = cfg.rounds, secs = cfg.seconds, lat = cfg.latency_qps
    );
    for (i, name) in ["lb agent", "Knot DNS 3.2"].iter().enumerate() {
        md += &format!("| {name} | {:.0} | {:.2} µs | {:.0} µs | {:.0} µs |\n", qps[i], cpu[i], latency[i].p50, latency[i].p99);
    }
    md += &format!(
        "\nAgent / Knot: {:.2}× the queries/s at {:.2}× the CPU per query, p99 {:.2}×.\n\n\
         Freshness (a task's port changes in Marathon → the agent's SRV answer has it), {n} events: \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (Mesos-DNS, by its defaults: a 60 s poll and a 60 s TTL).\n\n\
         Agent RSS after the sync: {off:.1} MiB with DNS off, {on:.1} MiB on (+{:.1} MiB).\n",
        qps[0] / qps[1], cpu[0] / cpu[1], latency[0].p99 / latency[1].p99, pct(0.5), pct(0.99), fresh[fresh.len() - 1], on - off, n = fresh.len()
    );
    print!("{md}");
    let doc = json!({
        "apps": cfg.apps, "queries_in_file": queries.total, "unknown_names": queries.unknown, "rounds": cfg.rounds, "seconds": cfg.seconds,
        "agent": {"qps": qps[0], "cpu_us_per_query": cpu[0], "p50_us": latency[0].p50, "p99_us": latency[0].p99, "rounds": rounds[0]},
        "knot": {"qps": qps[1], "cpu_us_per_query": cpu[1], "p50_us": latency[1].p50, "p99_us": latency[1].p99, "rounds": rounds[1]},
        "latency_qps": cfg.latency_qps,
        "freshness_ms": {"events": fresh.len(), "p50": pct(0.5), "p99": pct(0.99), "max": fresh[fresh.len() - 1]},
        "rss_kib": {"dns_off": rss.0, "dns_on": rss.1},
    });
    if let Some(path) = &cfg.report.json {
        bench_report::add_json_section(path, "dns", doc)?;
    }
    if let Some(path) = &cfg.report.markdown {
        bench_report::append_markdown(path, &md)?;
    }
    Ok(())
}
