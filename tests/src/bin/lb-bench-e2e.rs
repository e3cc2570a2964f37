//! `cargo xtask bench`, end to end: one topology (client ns → node ns → 3 backend namespaces
//! running nginx and iperf3), six ways through it, interleaved round after round:
//! direct to one backend (the ceiling), nftables DNAT with numgen random (kube-proxy style),
//! HAProxy mode tcp roundrobin (what marathon-lb runs), this project's balancer in XDP and in TC
//! ingress, and its socket hooks (the client then runs on the node, in the hooked cgroup). Measured: HTTP keep-alive
//! requests/s and p99 (wrk), new connections/s (Connection: close), iperf3 1 and 4 streams to
//! one backend, and the machine's CPU time per request / per GB, from /proc/stat. A seventh mode,
//! direct with the XDP balancer loaded, shows what attaching XDP to the uplink costs by itself.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use lb_tests::{
    bench::{self, busy_cpu_seconds, median, nginx, output, range, spawn, Proc, NGINX_PORT as HTTP},
    bench_report,
    agent::{lb_ok, Agent, PinDir, TempFile, TestCgroup},
    netns::{LbTopology, Netns},
    unique_name,
};
use serde_json::{json, Value};

const IPERF: u16 = 5201;
/// `direct+xdp` is the direct path with the balancer loaded (XDP and TC on the node's uplink,
/// every packet a miss): it separates what attaching XDP to a veth costs from what the
/// balancing itself costs.
const MODES: [&str; 7] = ["direct", "direct+xdp", "nftables", "haproxy", "xdp", "tc", "sockhook"];

/// Options of `cargo xtask bench`'s end-to-end benchmark.
#[derive(clap::Parser, Debug)]
#[command(name = "lb-bench-e2e", args_override_self = true)]
struct Config {
    /// Interleaved rounds (each runs every mode).
    #[arg(long, default_value_t = 3, default_value_if("smoke", "true", "1"))]
    rounds: usize,
    /// Seconds each wrk or iperf3 run lasts.
    #[arg(long, default_value_t = 5, default_value_if("smoke", "true", "1"))]
    seconds: u32,
    #[command(flatten)]
    report: bench_report::ReportFiles,
    /// The modes to run, comma-separated (all by default; `--modes direct,tc` for a focused
    /// look); they run in the order of the full list.
    #[arg(long, value_delimiter = ',', value_parser = mode, default_values_t = MODES)]
    modes: Vec<&'static str>,
    /// Transmit checksum offload and TSO/GSO on the veths (`on` or `off`).
    #[arg(long, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set, default_value = "off")]
    offloads: bool,
    /// One round of one second: the suite's check that the benchmark still works.
    #[arg(long)]
    smoke: bool,
}

/// A mode of [`MODES`], by name.
fn mode(name: &str) -> Result<&'static str> {
    MODES.into_iter().find(|m| *m == name).with_context(|| format!("{name}: choose from {}", MODES.join(",")))
}

/// The benchmark's nftables table in a namespace, deleted on drop.
struct NftTable<'a>(&'a Netns);

impl<'a> NftTable<'a> {
    fn load(ns: &'a Netns, file: &Path) -> Result<Self> {
        let mut cmd = ns.command("nft");
        cmd.arg("-f").arg(file);
        output(cmd)?;
        Ok(Self(ns))
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        let _ = self.0.command("nft").args(["delete", "table", "ip", "lbbench"]).output();
    }
}

/// One mode's way in: where clients connect and from where.
struct Target {
    http: String,
    iperf: (String, u16),
    /// Where the client runs: the client namespace, or (socket hooks) the node inside the cgroup.
    from_node: bool,
}

struct Bench<'a> {
    topo: &'a LbTopology,
    cgroup: &'a TestCgroup,
    seconds: u32,
}

impl Bench<'_> {
    fn client(&self, t: &Target, program: &str) -> Command {
        if t.from_node {
            self.cgroup.command(self.topo.node.command(program))
        } else {
            self.topo.client.command(program)
        }
    }

    /// (requests/s, p99 ms, CPU seconds per request) with wrk; `close`: a new connection per request.
    fn wrk(&self, t: &Target, close: bool) -> Result<(f64, f64, f64)> {
        let mut cmd = self.client(t, "wrk");
        cmd.args(["-t1", "-c32", &format!("-d{}s", self.seconds), "--latency"]);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(format!("http://{}/", t.http));
        let run = bench::wrk(cmd, close)?;
        Ok((run.requests_per_second, run.p99_ms, run.cpu_per_request))
    }

    /// One round of `mode`: every metric's sample. The balancer is loaded only for its own
    /// modes, so the others do not pay for it.
    fn mode(&self, mode: &'static str, services: &TempFile, round: usize) -> Result<Vec<(&'static str, f64)>> {
        let pins = PinDir::new();
        let agent = match mode {
            "direct+xdp" | "xdp" | "tc" | "sockhook" => Some(self.agent(mode, services, &pins)?),
            _ => None,
        };
        let t = target(mode);
        let (rps, p99, cpu_req) = self.wrk(&t, false).with_context(|| format!("{mode}: keep-alive"))?;
        let (cps, _, cpu_conn) = self.wrk(&t, true).with_context(|| format!("{mode}: new connections"))?;
        let (gbps1, cpu_gb1) = self.iperf(&t, 1).with_context(|| format!("{mode}: iperf3 1 stream"))?;
        let (gbps4, _) = self.iperf(&t, 4).with_context(|| format!("{mode}: iperf3 4 streams"))?;
        if let Some(agent) = agent {
            self.check_path(mode, &pins)?;
            agent.stop()?;
        }
        eprintln!("round {} {mode}: {rps:.0} req/s, {cps:.0} conn/s, {gbps1:.2}/{gbps4:.2} Gbit/s", round + 1);
        Ok(vec![
            ("keep-alive requests/s", rps),
            ("keep-alive p99 (ms)", p99),
            ("CPU µs per keep-alive request", cpu_req * 1e6),
            ("new connections/s", cps),
            ("CPU µs per new connection", cpu_conn * 1e6),
            ("iperf3 1 stream (Gbit/s)", gbps1),
            ("iperf3 4 streams (Gbit/s)", gbps4),
            ("CPU s per GB (1 stream)", cpu_gb1),
        ])
    }

    fn agent(&self, mode: &str, services: &TempFile, pins: &PinDir) -> Result<Agent> {
        let hook = if mode == "tc" { "tc" } else { "xdp" };
        let args = [
            "--iface", &self.topo.uplink,
            "--pin-dir", &pins.arg(),
            "--services", &services.arg(),
            "--node-ip", "10.201.0.2",
            "--cgroup", &self.cgroup.arg(),
            "--ingress-hook", hook,
        ];
        Agent::start(&self.topo.node, &args)
    }

    /// The figures are only the mode's if its path did the forwarding.
    fn check_path(&self, mode: &str, pins: &PinDir) -> Result<()> {
        let verdict = match mode {
            "xdp" | "tc" => "fwd_local",
            "sockhook" => "fwd_socket",
            _ => return Ok(()),
        };
        let stats: Value = serde_json::from_str(&lb_ok(Some(&self.topo.node), &["stats", "--json", "--pin-dir", &pins.arg()])?)?;
        let n = stats["verdicts"][verdict].as_u64().unwrap_or(0);
        ensure!(n > 0, "{mode}: no {verdict} verdicts, so another path carried the traffic");
        Ok(())
    }

    /// (Gbit/s, CPU seconds per GB) with iperf3 and `streams` parallel streams.
    fn iperf(&self, t: &Target, streams: u32) -> Result<(f64, f64)> {
        let mut cmd = self.client(t, "iperf3");
        cmd.args(["-c", &t.iperf.0, "-p", &t.iperf.1.to_string(), "-t", &self.seconds.to_string(), "-P", &streams.to_string(), "-J"]);
        let before = busy_cpu_seconds()?;
        let text = output(cmd)?;
        let cpu = busy_cpu_seconds()? - before;
        let json: Value = serde_json::from_str(&text).context("iperf3 -J output")?;
        let bps = json["end"]["sum_received"]["bits_per_second"].as_f64().context("no sum_received in iperf3 output")?;
        let bytes = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(1.0);
        Ok((bps / 1e9, cpu / (bytes / 1e9)))
    }
}

fn main() -> Result<()> {
    let mut cfg: Config = lb_tests::command_line();
    // Columns in the full list's order, whatever order they were asked in.
    cfg.modes.sort_by_key(|m| MODES.iter().position(|x| x == m));
    cfg.modes.dedup();
    let dir = std::env::temp_dir().join(unique_name("lb-bench-e2e-"));
    std::fs::create_dir_all(&dir)?;
    let result = run(&cfg, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(cfg: &Config, dir: &Path) -> Result<()> {
    let topo = LbTopology::new(3)?;
    topo.set_offloads(cfg.offloads)?;
    topo.client.route("10.210.0.0/16", "10.201.0.2".parse().unwrap())?;
    let mut procs = backends(&topo, dir)?;
    let _nft_table = NftTable::load(&topo.node, &nft_dnat(dir)?)?;
    procs.push(haproxy(&topo, dir)?);
    std::thread::sleep(Duration::from_millis(500));
    let services = TempFile::new(&format!(
        r#"{{"services":[
          {{"name":"web","address":"10.0.0.1","port":80,"backends":[
            {{"address":"10.210.0.2","port":{HTTP}}},{{"address":"10.210.1.2","port":{HTTP}}},{{"address":"10.210.2.2","port":{HTTP}}}]}},
          {{"name":"perf","address":"10.0.0.1","port":{IPERF},"backends":[{{"address":"10.210.0.2","port":{IPERF}}}]}}]}}"#
    ))?;
    let cgroup = TestCgroup::new()?;
    let bench = Bench { topo: &topo, cgroup: &cgroup, seconds: cfg.seconds };
    // metric → mode → samples
    let mut samples: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for round in 0..cfg.rounds {
        for &mode in &cfg.modes {
            for (metric, value) in bench.mode(mode, &services, round)? {
                samples.entry(metric).or_default().entry(mode).or_default().push(value);
            }
        }
    }
    drop(procs);
    report(cfg, &samples)
}

/// nginx and an iperf3 server in each backend namespace.
fn backends(topo: &LbTopology, dir: &Path) -> Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for i in 0..3 {
        let ip = LbTopology::backend_ip(i).to_string();
        procs.push(nginx(&topo.backends[i], &ip, &format!("backend-{i}"), dir)?);
        let mut iperf = topo.backends[i].command("iperf3");
        iperf.args(["-s", "-B", &ip, "-p", &IPERF.to_string()]);
        procs.push(spawn(iperf)?);
    }
    Ok(procs)
}

/// nftables DNAT (kube-proxy style) for 10.0.0.2, in the node namespace only. Loaded for the
/// whole run: a NAT table turns conntrack on for every packet of the namespace, as on a node
/// running Docker or kube-proxy, so every mode pays for it. (Loaded per mode instead, the
/// nftables mode's new connections/s fell tenfold in rounds less than two minutes apart,
/// by the timing the previous round's TIME_WAIT conntrack entries.)
fn nft_dnat(dir: &Path) -> Result<std::path::PathBuf> {
    let nft = dir.join("lb-bench.nft");
    std::fs::write(
        &nft,
        format!(
            "table ip lbbench {{\n chain pre {{ type nat hook prerouting priority -100;\n\
             ip daddr 10.0.0.2 tcp dport 80 dnat to numgen random mod 3 map {{ 0 : 10.210.0.2, 1 : 10.210.1.2, 2 : 10.210.2.2 }} : {HTTP}\n\
             ip daddr 10.0.0.2 tcp dport {IPERF} dnat to 10.210.0.2 : {IPERF}\n }}\n}}\n"
        ),
    )?;
    Ok(nft)
}

/// HAProxy, mode tcp roundrobin (what marathon-lb runs), on the node address.
fn haproxy(topo: &LbTopology, dir: &Path) -> Result<Proc> {
    let haproxy_conf = dir.join("haproxy.cfg");
    std::fs::write(
        &haproxy_conf,
        format!(
            "global\n maxconn 8000\ndefaults\n mode tcp\n timeout connect 5s\n timeout client 60s\n timeout server 60s\n\
             frontend web\n bind 10.201.0.2:8081\n default_backend webs\nbackend webs\n balance roundrobin\n\
             server b0 10.210.0.2:{HTTP}\n server b1 10.210.1.2:{HTTP}\n server b2 10.210.2.2:{HTTP}\n\
             frontend perf\n bind 10.201.0.2:5202\n default_backend perfs\nbackend perfs\n server b0 10.210.0.2:{IPERF}\n"
        ),
    )?;
    let mut cmd = topo.node.command("haproxy");
    cmd.args(["-f", haproxy_conf.to_str().unwrap(), "-db"]);
    spawn(cmd)
}

/// Where a mode's client connects.
fn target(mode: &str) -> Target {
    match mode {
        "direct" | "direct+xdp" => Target { http: format!("10.210.0.2:{HTTP}"), iperf: ("10.210.0.2".into(), IPERF), from_node: false },
        "nftables" => Target { http: "10.0.0.2:80".into(), iperf: ("10.0.0.2".into(), IPERF), from_node: false },
        "haproxy" => Target { http: "10.201.0.2:8081".into(), iperf: ("10.201.0.2".into(), 5202), from_node: false },
        "xdp" | "tc" => Target { http: "10.0.0.1:80".into(), iperf: ("10.0.0.1".into(), IPERF), from_node: false },
        _ => Target { http: "10.0.0.1:80".into(), iperf: ("10.0.0.1".into(), IPERF), from_node: true },
    }
}

fn report(cfg: &Config, samples: &BTreeMap<&str, BTreeMap<&str, Vec<f64>>>) -> Result<()> {
    let mut md = format!(
        "\n## End to end, veth offloads {offloads} (network namespaces, 2 shared cores)\n\n\
         client ns → node ns → 3 backend ns (nginx, iperf3); modes interleaved, {rounds} rounds of {secs} s, medians;\n\
         [min–max over the rounds]; ratios of the medians to direct (the ceiling) and to HAProxy. CPU is\n\
         the whole machine's busy time (/proc/stat) during the run, divided by the work done. The node's\n\
         nftables NAT table stays loaded, so conntrack sees every mode's packets (as with Docker or kube-proxy). {offload_note} Regenerate with `cargo xtask bench`.\n\n\
         | metric | {modes} |\n|---|{bars}\n",
        offloads = if cfg.offloads { "on" } else { "off" },
        offload_note = if cfg.offloads {
            "Offloads on (veth's default; like NICs with TSO/GRO): TCP sends 64 KiB GSO segments through the node."
        } else {
            "Offloads off (wire-like): every segment is MTU-sized with a full checksum."
        },
        rounds = cfg.rounds,
        secs = cfg.seconds,
        modes = cfg.modes.join(" | "),
        bars = "---|".repeat(cfg.modes.len()),
    );
    let mut json_doc = serde_json::Map::new();
    for (metric, by_mode) in samples {
        let med: BTreeMap<&str, f64> = by_mode.iter().map(|(m, v)| (*m, median(v))).collect();
        let ratio = |v: f64, to: &str| med.get(to).map(|base| format!("{:.2}× {to}", v / base));
        let cells: Vec<String> = cfg
            .modes
            .iter()
            .map(|m| {
                let v = med[m];
                let ratios: Vec<String> = [ratio(v, "direct"), ratio(v, "haproxy")].into_iter().flatten().collect();
                // The rounds' range: on shared vCPUs a mode's rounds can differ by more than the
                // modes' medians do, and the table should show it.
                let (lo, hi) = range(&by_mode[m]);
                format!("{v:.2} [{lo:.2}–{hi:.2}] ({})", ratios.join(", "))
            })
            .collect();
        md += &format!("| {metric} | {} |\n", cells.join(" | "));
        json_doc.insert(metric.to_string(), json!({"median": med, "rounds": by_mode}));
    }
    print!("{md}");
    if let Some(path) = &cfg.report.json {
        let section = if cfg.offloads { "end_to_end_offloads_on" } else { "end_to_end" };
        bench_report::add_json_section(path, section, json!({"rounds": cfg.rounds, "seconds": cfg.seconds, "offloads": cfg.offloads, "metrics": json_doc}))?;
    }
    if let Some(path) = &cfg.report.markdown {
        bench_report::append_markdown(path, &md)?;
    }
    Ok(())
}
