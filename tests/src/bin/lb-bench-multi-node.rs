//! `cargo xtask bench`, several balancer nodes: the namespace cluster of tests/src/cluster.rs
//! with one balancer node and three backend nodes running nginx, built twice — the balancer node
//! with `--dsr` in one, full NAT in the other — and measured interleaved, round after round.
//! Measured: HTTP keep-alive requests/s and p99, new connections/s (wrk from the client, behind
//! the BGP router), the balancer node's CPU time per request, and the bytes a download moves
//! through the balancer node.
//!
//! The balancer node's CPU time is what its uplink's NAPI poll spends, plus its agent and BIRD.
//! The uplink's NAPI runs threaded (`/sys/class/net/DEV/threaded`), so it is a kernel thread of
//! its own with its own CPU time in /proc: everything the node does with a packet it receives —
//! the ingress program, the stack's forwarding for full NAT, the TC egress program, the
//! transmit to the router — runs in that thread, while the router's, the backends' and the
//! client's work runs elsewhere.
//! (Machine-wide CPU, as the other sections give, would also count the backends' nginx and
//! the client's wrk, which DSR does not change.)

use std::{collections::BTreeMap, path::Path, time::Instant};

use anyhow::{ensure, Context as _, Result};
use lb_tests::{
    bench::{self, cap_cpu, median, nginx, output, range, Proc, NGINX_PORT},
    bench_report,
    cluster::{self, Cluster, Forwarding, LinkBytes},
    unique_name,
};
use serde_json::{json, Value};

const MODES: [(&str, Forwarding); 2] = [("dsr", Forwarding::Dsr), ("full-nat", Forwarding::FullNat)];
const BACKENDS: usize = 3;

/// Options of `cargo xtask bench`'s multi-node benchmark.
#[derive(clap::Parser, Debug)]
#[command(name = "lb-bench-multi-node", args_override_self = true)]
struct Config {
    /// Interleaved rounds (each runs both modes).
    #[arg(long, default_value_t = 3, default_value_if("smoke", "true", "1"))]
    rounds: usize,
    /// Seconds each wrk run lasts.
    #[arg(long, default_value_t = 5, default_value_if("smoke", "true", "1"))]
    seconds: u32,
    /// The CPU the balancer node's NAPI thread may use in the capped runs, as a share of one
    /// CPU: the balancer node is then what limits requests/s, as one carrying a cluster's
    /// traffic would be.
    #[arg(long, default_value_t = 0.2)]
    balancer_cpu: f64,
    /// Size of the download, in MiB.
    #[arg(long, default_value_t = 100, default_value_if("smoke", "true", "8"))]
    download_mib: u64,
    #[command(flatten)]
    report: bench_report::ReportFiles,
    /// One round of one second and a small download: the suite's check that the benchmark
    /// still works.
    #[arg(long)]
    smoke: bool,
}

/// One cluster, its nginx tasks, and the balancer node's NAPI thread.
struct Setup {
    name: &'static str,
    forwarding: Forwarding,
    cluster: Cluster,
    _tasks: Vec<Proc>,
    napi_thread: u32,
}

/// The balancer node's counts of packets forwarded the mode's way, forwarded the other way, and
/// refused for want of a full-NAT port.
struct Counters {
    forwarded: u64,
    other: u64,
    refused: u64,
}

/// What one wrk run measured.
struct Run {
    per_second: f64,
    p99_ms: f64,
    /// The balancer node's CPU seconds per request.
    balancer_cpu: f64,
    /// The machine's CPU seconds per request.
    machine_cpu: f64,
    /// Packets the balancer node refused for want of a full-NAT port.
    refused: u64,
}

impl Setup {
    /// The cluster of mode `name`; with `cap`, its balancer node's NAPI thread may use that
    /// share of a CPU for as long as it lives ([`cap_cpu`]).
    fn new(name: &'static str, forwarding: Forwarding, dir: &Path, cap: Option<f64>) -> Result<Self> {
        // The widest full-NAT port range outside the ephemeral ports: a mapping lingers 60 s
        // after the backend closes first (its TIME_WAIT), so the default 4,536 ports per backend
        // would run out within seconds of new connections, and the runs would measure the range.
        let cluster = Cluster::start_serving(1, BACKENDS, BACKENDS, forwarding, &["--nat-ports", "1024-32767"])?;
        let mut tasks = Vec::new();
        for (i, node) in cluster.backends.iter().enumerate() {
            tasks.push(nginx(&node.ns, &node.addr, &unique_name(&format!("{name}-task-{i}-")), dir)?);
        }
        let all: Vec<usize> = (0..BACKENDS).collect();
        cluster.set_services(&cluster::services_on(NGINX_PORT, &all, &[]))?;
        cluster.wait_programmed(BACKENDS, 0, std::time::Duration::from_secs(10))?;
        let balancer = &cluster.balancers[0].node;
        let napi_thread = threaded_napi(balancer.ns.name(), &balancer.uplink)?;
        if let Some(share) = cap {
            cap_cpu(napi_thread, share)?;
        }
        Ok(Self { name, forwarding, cluster, _tasks: tasks, napi_thread })
    }

    /// The balancer node's CPU time so far, in seconds.
    fn balancer_cpu(&self) -> Result<f64> {
        let pids = self.cluster.balancers[0].processes();
        let mut ns = cpu_ns(self.napi_thread)?;
        for pid in pids {
            ns += cpu_ns(pid)?;
        }
        Ok(ns as f64 / 1e9)
    }

    /// The balancer node's counters that say which path carried a run, from one `lb stats`.
    fn counters(&self) -> Result<Counters> {
        let verdicts = self.cluster.balancers[0].node.verdicts()?;
        let count = |reason: &str| verdicts[reason].as_u64().unwrap_or(0);
        let (dsr, nat) = (count("fwd_dsr"), count("fwd_nat"));
        let (forwarded, other) = if self.forwarding == Forwarding::Dsr { (dsr, nat) } else { (nat, dsr) };
        Ok(Counters { forwarded, other, refused: count("nat_ports_exhausted") })
    }

    /// A wrk run from the client to the VIP; `close`: a new connection per request. The
    /// figures are the mode's only if its path carried every request: checked on the balancer
    /// node's counters.
    fn wrk(&self, seconds: u32, close: bool) -> Result<Run> {
        let mut cmd = self.cluster.client.command("wrk");
        cmd.args(["-t1", "-c32", &format!("-d{seconds}s"), "--latency"]);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(format!("http://{}/", Cluster::vip()));
        let before = self.counters()?;
        let cpu = self.balancer_cpu()?;
        let run = bench::wrk(cmd, close)?;
        let balancer_cpu = self.balancer_cpu()? - cpu;
        let after = self.counters()?;
        let (forwarded, other, refused) = (after.forwarded - before.forwarded, after.other - before.other, after.refused - before.refused);
        // A few refusals are the port claim's four probes all landing on taken ports; more, and
        // the run measured the port range.
        ensure!(refused as f64 <= run.requests / 100.0, "{}: {refused} packets refused for want of a NAT port in {} requests", self.name, run.requests);
        ensure!(
            forwarded >= run.requests as u64 && other == 0,
            "{}: the balancer node forwarded {forwarded} packets its way and {other} the other way for {} requests",
            self.name,
            run.requests
        );
        ensure!(balancer_cpu > 0.0, "{}: the balancer node's NAPI thread did no work", self.name);
        let requests = run.requests.max(1.0);
        Ok(Run { per_second: run.requests_per_second, p99_ms: run.p99_ms, balancer_cpu: balancer_cpu / requests, machine_cpu: run.cpu_per_request, refused })
    }

    /// Downloads files/download through the VIP: (what the balancer node's uplink received and
    /// sent meanwhile, Gbit/s).
    fn download(&self, size: u64) -> Result<(LinkBytes, f64)> {
        let node = &self.cluster.balancers[0].node;
        let mut cmd = self.cluster.client.command("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{size_download}", &format!("http://{}/files/download", Cluster::vip())]);
        let before = Cluster::link_bytes(node)?;
        let start = Instant::now();
        let got: u64 = output(cmd)?.trim().parse().context("curl's size_download")?;
        let seconds = start.elapsed().as_secs_f64();
        let after = Cluster::link_bytes(node)?;
        ensure!(got == size, "{}: downloaded {got} of {size} bytes", self.name);
        let through = LinkBytes { received: after.received - before.received, sent: after.sent - before.sent };
        Ok((through, size as f64 * 8.0 / seconds / 1e9))
    }

    /// One round: every metric's sample.
    fn round(&self, cfg: &Config, round: usize) -> Result<Vec<(&'static str, f64)>> {
        let what = |run: &str| format!("{}: {run}", self.name);
        let keep = self.wrk(cfg.seconds, false).with_context(|| what("keep-alive"))?;
        let close = self.wrk(cfg.seconds, true).with_context(|| what("new connections"))?;
        let (through, gbps) = self.download(cfg.download_mib << 20).with_context(|| what("download"))?;
        eprintln!(
            "round {} {}: {:.0} req/s at {:.1} µs balancer CPU, {:.0} conn/s, download: balancer received {:.1} MB",
            round + 1,
            self.name,
            keep.per_second,
            keep.balancer_cpu * 1e6,
            close.per_second,
            through.received as f64 / 1e6
        );
        Ok(vec![
            ("keep-alive requests/s", keep.per_second),
            ("keep-alive p99 (ms)", keep.p99_ms),
            ("balancer node CPU µs per keep-alive request", keep.balancer_cpu * 1e6),
            ("machine CPU µs per keep-alive request", keep.machine_cpu * 1e6),
            ("new connections/s", close.per_second),
            ("balancer node CPU µs per new connection", close.balancer_cpu * 1e6),
            ("new connections: packets refused for want of a NAT port", close.refused as f64),
            ("download: MB the balancer node received", through.received as f64 / 1e6),
            ("download: MB the balancer node sent", through.sent as f64 / 1e6),
            ("download (Gbit/s)", gbps),
        ])
    }

    /// One round with the balancer node capped: the requests/s it carries at its limit.
    fn capped_round(&self, cfg: &Config, round: usize) -> Result<Vec<(&'static str, f64)>> {
        let what = |run: &str| format!("{}, balancer node capped: {run}", self.name);
        let keep = self.wrk(cfg.seconds, false).with_context(|| what("keep-alive"))?;
        let close = self.wrk(cfg.seconds, true).with_context(|| what("new connections"))?;
        let used = |run: &Run| run.per_second * run.balancer_cpu;
        eprintln!(
            "round {} {}, balancer node capped at {} CPU: {:.0} req/s (using {:.2} CPU), {:.0} conn/s (using {:.2} CPU)",
            round + 1,
            self.name,
            cfg.balancer_cpu,
            keep.per_second,
            used(&keep),
            close.per_second,
            used(&close)
        );
        Ok(vec![
            ("keep-alive requests/s, balancer node capped", keep.per_second),
            ("keep-alive p99 (ms), balancer node capped", keep.p99_ms),
            ("new connections/s, balancer node capped", close.per_second),
        ])
    }
}

/// Gives `dev` (in namespace `ns`) a NAPI instance running in a kernel thread of its own, and
/// returns the thread's pid. A veth receives through NAPI only with GRO on or an XDP program
/// (the agent's `auto` hook is TC on a veth), else packets queue to the per-CPU backlog of
/// whichever CPU sent them, mixed with every other device's; a NIC always has NAPI and GRO.
fn threaded_napi(ns: &str, dev: &str) -> Result<u32> {
    // The namespace's own sysfs: `ip netns exec` mounts it.
    let script = format!("ethtool -K {dev} gro on && echo 1 > /sys/class/net/{dev}/threaded");
    let out = std::process::Command::new("ip").args(["netns", "exec", ns, "sh", "-c", &script]).output()?;
    ensure!(out.status.success(), "making {dev}'s NAPI threaded: {}", String::from_utf8_lossy(&out.stderr));
    // The thread is `napi/DEV-ID`, its name cut to 15 bytes.
    let name = format!("napi/{dev}-");
    let prefix = &name[..name.len().min(15)];
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.starts_with(prefix) {
                return entry.file_name().to_string_lossy().parse().context("a /proc entry");
            }
        }
        ensure!(Instant::now() < deadline, "no NAPI thread {prefix}… for {dev}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// CPU time of every thread of process `pid` so far, in ns (/proc/PID/task/*/schedstat).
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("process {pid}"))?.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += stat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(total)
}

fn main() -> Result<()> {
    let cfg: Config = lb_tests::command_line();
    if !(cfg.balancer_cpu > 0.0 && cfg.balancer_cpu <= 1.0) {
        eprintln!("lb-bench-multi-node: --balancer-cpu {}: give a share of one CPU, above 0 and at most 1", cfg.balancer_cpu);
        std::process::exit(64);
    }
    let dir = std::env::temp_dir().join(unique_name("lb-bench-multi-node-"));
    std::fs::create_dir_all(dir.join("files"))?;
    let result = run(&cfg, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(cfg: &Config, dir: &Path) -> Result<()> {
    let size = cfg.download_mib << 20;
    std::fs::write(dir.join("files/download"), vec![b'x'; size as usize])?;
    let setups = MODES.map(|(name, forwarding)| Setup::new(name, forwarding, dir, None));
    let setups: Vec<Setup> = setups.into_iter().collect::<Result<_>>()?;
    // metric → mode → samples
    let mut samples: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let mut add = |name, values: Vec<(&'static str, f64)>| {
        for (metric, value) in values {
            samples.entry(metric).or_default().entry(name).or_default().push(value);
        }
    };
    for round in 0..cfg.rounds {
        for setup in &setups {
            add(setup.name, setup.round(cfg, round)?);
        }
        // A capped cluster lives for one round: its NAPI thread must end to give its deadline
        // bandwidth back.
        for (name, forwarding) in MODES {
            let capped = Setup::new(name, forwarding, dir, Some(cfg.balancer_cpu))?;
            add(name, capped.capped_round(cfg, round)?);
        }
    }
    drop(setups);
    report(cfg, &samples)
}

fn report(cfg: &Config, samples: &BTreeMap<&str, BTreeMap<&str, Vec<f64>>>) -> Result<()> {
    let mut md = format!(
        "\n## Several balancer nodes: DSR against full NAT through one balancer node\n\n\
         client ns → router ns (BIRD, ECMP) → 1 balancer node ns (TC ingress, BIRD) → 3 backend node ns (nginx, the agent\n\
         with `--decap-from`); with `--dsr` the backend nodes answer the client through the router, with full NAT\n\
         through the balancer node. Both clusters built at once, measured interleaved, {rounds} rounds of {secs} s, medians;\n\
         [min–max over the rounds]; ratios of DSR's medians to full NAT's. The balancer node's CPU is its uplink's\n\
         threaded NAPI poll (everything it does with a packet) plus its agent and BIRD; the machine's is /proc/stat's\n\
         busy time, backends and client included. \"Capped\": in a cluster of its own per round, the balancer node's\n\
         NAPI thread may use {cap} of a CPU (SCHED_DEADLINE), so the balancer node is what limits the requests/s.\n\
         The download is {mib} MiB. Every run is checked on the balancer node's counters (`fwd_dsr` or `fwd_nat`, at\n\
         least a packet per request, none the other way, under 1% refused for want of a full-NAT port, with\n\
         `--nat-ports 1024-32767`). Regenerate with `cargo xtask bench`.\n\n\
         | metric | dsr | full-nat |\n|---|---|---|\n",
        rounds = cfg.rounds,
        secs = cfg.seconds,
        mib = cfg.download_mib,
        cap = cfg.balancer_cpu,
    );
    let mut json_doc = serde_json::Map::new();
    for (metric, by_mode) in samples {
        let med: BTreeMap<&str, f64> = by_mode.iter().map(|(m, v)| (*m, median(v))).collect();
        let cell = |mode: &str| {
            let (lo, hi) = range(&by_mode[mode]);
            format!("{:.2} [{lo:.2}–{hi:.2}]", med[mode])
        };
        let ratio = med["dsr"] / med["full-nat"];
        md += &format!("| {metric} | {} ({ratio:.2}× full NAT) | {} |\n", cell("dsr"), cell("full-nat"));
        json_doc.insert(metric.to_string(), json!({"median": med, "rounds": by_mode, "dsr_to_full_nat": ratio}));
    }
    print!("{md}");
    if let Some(path) = &cfg.report.json {
        let doc: Value = json!({"rounds": cfg.rounds, "seconds": cfg.seconds, "download_mib": cfg.download_mib, "metrics": json_doc});
        bench_report::add_json_section(path, "multi_node", doc)?;
    }
    if let Some(path) = &cfg.report.markdown {
        bench_report::append_markdown(path, &md)?;
    }
    Ok(())
}
