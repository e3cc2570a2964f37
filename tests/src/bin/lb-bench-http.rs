//! `cargo xtask bench`, the HTTP path: the agent's L7 path against HAProxy in mode http (what
//! marathon-lb runs for vhosts) with the same route (Host `web.example.com` → three nginx
//! backends, round robin, X-Forwarded-For), on the same listener addresses, interleaved round
//! after round. Measured with wrk from the client namespace: keep-alive requests/s, p99 and the
//! machine's CPU per request over plain HTTP, and new TLS connections/s (Connection: close over
//! HTTPS, a full handshake per request) with CPU per connection. The agent's own request counter
//! is checked per run, so its figures are the HTTP path's and nothing else's.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{bail, ensure, Context as _, Result};
use lb_tests::{
    agent::{Agent, PinDir, TestCgroup},
    bench::{self, median, nginx, output, range, spawn, Proc, NGINX_PORT},
    bench_report, certs,
    marathon_server::{AppSpec, MarathonServer, TaskSpec},
    netns::LbTopology,
    unique_name,
};
use serde_json::json;

const MODES: [&str; 2] = ["haproxy", "lb"];
const HOST: &str = "web.example.com";
const HTTP: &str = "10.201.0.2:9080";
const HTTPS: &str = "10.201.0.2:9443";
/// The agent's request counter for the route, as /metrics shows it.
const ROUTE_OK: &str = r#"lb_http_requests_total{route="/web:0",class="2xx"} "#;

/// Options of `cargo xtask bench`'s HTTP-path benchmark.
#[derive(clap::Parser, Debug)]
#[command(name = "lb-bench-http", args_override_self = true)]
struct Config {
    /// Interleaved rounds (each runs both peers).
    #[arg(long, default_value_t = 3, default_value_if("smoke", "true", "1"))]
    rounds: usize,
    /// Seconds each wrk run lasts.
    #[arg(long, default_value_t = 5, default_value_if("smoke", "true", "1"))]
    seconds: u32,
    #[command(flatten)]
    report: bench_report::ReportFiles,
    /// One round of one second: the suite's check that the benchmark still works.
    #[arg(long)]
    smoke: bool,
}

fn main() -> Result<()> {
    let cfg: Config = lb_tests::command_line();
    let dir = std::env::temp_dir().join(unique_name("lb-bench-http-"));
    std::fs::create_dir_all(&dir)?;
    let result = run(&cfg, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// HAProxy in mode http with the route the agent serves from the app's labels. Threads: one
/// per CPU (HAProxy's default), as the agent's runtime has.
fn haproxy(topo: &LbTopology, dir: &Path) -> Result<Proc> {
    let conf = dir.join("haproxy.cfg");
    let servers: String = (0..3).map(|i| format!(" server b{i} {}:{NGINX_PORT}\n", LbTopology::backend_ip(i))).collect();
    std::fs::write(
        &conf,
        format!(
            "global\n maxconn 8000\ndefaults\n mode http\n option http-keep-alive\n option forwardfor\n\
             timeout connect 5s\n timeout client 60s\n timeout server 60s\n\
             frontend web\n bind {HTTP}\n bind {HTTPS} ssl crt {pem} alpn h2,http/1.1\n\
             acl web hdr(host) -i {HOST}\n use_backend webs if web\nbackend webs\n balance roundrobin\n{servers}",
            pem = dir.join(format!("certs/{HOST}.pem")).display()
        ),
    )?;
    let mut check = topo.node.command("haproxy");
    check.args(["-c", "-f", conf.to_str().unwrap()]);
    output(check).context("haproxy -c")?;
    let mut cmd = topo.node.command("haproxy");
    cmd.args(["-f", conf.to_str().unwrap(), "-db"]);
    spawn(cmd)
}

fn web_app() -> AppSpec {
    let mut app = AppSpec::new("/web", 10000);
    app.tasks = (0..3)
        .map(|i| TaskSpec {
            id: format!("web.task-{i}"),
            host: LbTopology::backend_ip(i).to_string(),
            port: NGINX_PORT,
            state: "TASK_RUNNING".into(),
            alive: Some(true),
        })
        .collect();
    app.app_labels = [("HAPROXY_GROUP", "external"), ("HAPROXY_0_VHOST", HOST)].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    app
}

/// The agent's 2xx count for the route (0 before its first request).
fn served(topo: &LbTopology) -> Result<f64> {
    let mut cmd = topo.node.command("curl");
    cmd.args(["-s", "http://127.0.0.1:9097/metrics"]);
    let text = output(cmd)?;
    Ok(text.lines().find_map(|l| l.strip_prefix(ROUTE_OK)).and_then(|n| n.trim().parse().ok()).unwrap_or(0.0))
}

/// Waits until the proxy in front answers the route.
fn wait_ready(topo: &LbTopology) -> Result<()> {
    let mut last = String::new();
    for _ in 0..100 {
        let mut cmd = topo.client.command("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Host: {HOST}"), &format!("http://{HTTP}/")]);
        match output(cmd) {
            Ok(code) if code == "200" => return Ok(()),
            Ok(code) => last = format!("answered {code}"),
            Err(err) => last = format!("{err:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the route never answered 200 (last: {last})")
}

fn run(cfg: &Config, dir: &Path) -> Result<()> {
    let topo = LbTopology::new(3)?;
    let _backends: Vec<Proc> =
        (0..3).map(|i| nginx(&topo.backends[i], &LbTopology::backend_ip(i).to_string(), &format!("backend-{i}"), dir)).collect::<Result<_>>()?;
    certs::self_signed(&dir.join("certs"), HOST)?;
    let marathon = MarathonServer::start(Some(&topo.node), Duration::from_secs(10))?;
    marathon.set_apps(vec![web_app()]);
    let cgroup = TestCgroup::new()?;
    let wrk = |url: &str, close: bool| -> Result<bench::Wrk> {
        let mut cmd = topo.client.command("wrk");
        cmd.args(["-t1", "-c32", &format!("-d{}s", cfg.seconds), "--latency", "-H", &format!("Host: {HOST}")]);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(url);
        bench::wrk(cmd, close)
    };
    let mut samples: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for round in 0..cfg.rounds {
        for mode in MODES {
            let pins = PinDir::new();
            let (_haproxy, agent) = match mode {
                "haproxy" => (Some(haproxy(&topo, dir)?), None),
                _ => {
                    let (pin_arg, cgroup_arg, url, certs) = (pins.arg(), cgroup.arg(), marathon.url(), dir.join("certs").display().to_string());
                    let args = [
                        "--iface", &topo.uplink, "--pin-dir", &pin_arg, "--cgroup", &cgroup_arg, "--node-ip", "10.201.0.2",
                        "--marathon", &url, "--http-listen", HTTP, "--https-listen", HTTPS, "--ssl-certs", &certs,
                    ];
                    (None, Some(Agent::start(&topo.node, &args)?))
                }
            };
            wait_ready(&topo)?;
            let before = if agent.is_some() { served(&topo)? } else { 0.0 };
            let keep_alive = wrk(&format!("http://{HTTP}/"), false).with_context(|| format!("{mode}: keep-alive"))?;
            let tls = wrk(&format!("https://{HTTPS}/"), true).with_context(|| format!("{mode}: TLS connections"))?;
            if let Some(agent) = agent {
                let counted = served(&topo)? - before;
                let expected = keep_alive.requests + tls.requests;
                ensure!(counted >= expected, "lb: the HTTP path counted {counted} requests, wrk completed {expected}");
                agent.stop()?;
            }
            for (metric, value) in [
                ("keep-alive requests/s", keep_alive.requests_per_second),
                ("keep-alive p99 (ms)", keep_alive.p99_ms),
                ("CPU µs per keep-alive request", keep_alive.cpu_per_request * 1e6),
                ("new TLS connections/s", tls.requests_per_second),
                ("CPU µs per TLS connection", tls.cpu_per_request * 1e6),
            ] {
                samples.entry(metric).or_default().entry(mode).or_default().push(value);
            }
            eprintln!("round {} {mode}: {:.0} req/s, {:.0} TLS conn/s", round + 1, keep_alive.requests_per_second, tls.requests_per_second);
        }
    }
    report(cfg, &samples)
}

fn report(cfg: &Config, samples: &BTreeMap<&str, BTreeMap<&str, Vec<f64>>>) -> Result<()> {
    let mut md = format!(
        "\n## HTTP path against HAProxy mode http (network namespaces, 2 shared cores)\n\n\
         client ns (wrk, 32 connections) → node ns (HAProxy, or the agent's HTTP path; one thread per CPU each) → 3\n\
         nginx backends; one vhost route, round robin, X-Forwarded-For. Modes interleaved, {rounds} rounds of {secs} s,\n\
         medians [min–max]; ratio = lb / HAProxy. TLS: ECDSA P-256, a full handshake per request (Connection:\n\
         close). CPU is the whole machine's busy time (wrk and nginx included) per request. The agent's request\n\
         counter is checked against wrk's count every run. Regenerate with `cargo xtask bench`.\n\n\
         | metric | haproxy | lb | lb / haproxy |\n|---|---|---|---|\n",
        rounds = cfg.rounds,
        secs = cfg.seconds,
    );
    let mut json_doc = serde_json::Map::new();
    for (metric, by_mode) in samples {
        let cell = |mode: &str| {
            let v = &by_mode[mode];
            let (lo, hi) = range(v);
            format!("{:.2} [{lo:.2}–{hi:.2}]", median(v))
        };
        let ratio = median(&by_mode["lb"]) / median(&by_mode["haproxy"]);
        md += &format!("| {metric} | {} | {} | {ratio:.2}× |\n", cell("haproxy"), cell("lb"));
        let med: BTreeMap<&str, f64> = by_mode.iter().map(|(m, v)| (*m, median(v))).collect();
        json_doc.insert(metric.to_string(), json!({"median": med, "rounds": by_mode}));
    }
    print!("{md}");
    if let Some(path) = &cfg.report.json {
        bench_report::add_json_section(path, "http_path", json!({"rounds": cfg.rounds, "seconds": cfg.seconds, "metrics": json_doc}))?;
    }
    if let Some(path) = &cfg.report.markdown {
        bench_report::append_markdown(path, &md)?;
    }
    Ok(())
}
