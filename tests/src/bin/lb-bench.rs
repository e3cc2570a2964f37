//! `cargo xtask bench`: per-packet cost of the XDP program through BPF_PROG_TEST_RUN, next to
//! an XDP program that only returns XDP_PASS, measured in the same run on one pinned CPU.
//!
//! Two methods (see the toolchain notes on measuring honestly):
//! - `repeat`: one call, N repetitions on the same buffer. Only valid for packets that stay on
//!   the measured path after being rewritten: the established-flow scenarios use two services
//!   that map onto each other (A → B's address, B → A's), so every repetition is a hit.
//! - `calls`: many calls of one repetition each (the kernel's fixed per-call overhead is included,
//!   so it is quoted net of the pass-only program measured the same way). New flows need this:
//!   every call must carry a new flow.
//!
//! After every scenario the verdict counters are checked, so a figure always belongs to the
//! path it is named after.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, ensure, Context as _, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb::dataplane::loader::{self, LoadLimits};
use lb_common::Hook;
use lb_tests::{
    fixture::{counter_deltas, counter_snapshot, expected_verdict, Fixture, XDP_PASS},
    packet::{tcp, udp, v4, v6, ACK, SYN},
};
use serde_json::json;

struct Config {
    runs: usize,
    repeat: u32,
    calls: u32,
    json: Option<String>,
    markdown: Option<String>,
    /// One scenario alone, nothing written: a target for `perf record`.
    profile: Option<Profile>,
}

#[derive(Clone, Copy)]
enum Profile {
    Established(Hook),
    NewFlows,
}

fn parse_args() -> Result<Config> {
    let mut c = Config { runs: 7, repeat: 1_000_000, calls: 100_000, json: None, markdown: None, profile: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--runs" => c.runs = value()?.parse()?,
            "--repeat" => c.repeat = value()?.parse()?,
            "--calls" => c.calls = value()?.parse()?,
            "--json" => c.json = Some(value()?),
            "--markdown" => c.markdown = Some(value()?),
            "--profile" => {
                c.profile = Some(match value()?.as_str() {
                    "xdp" => Profile::Established(Hook::XdpIngress),
                    "tc" => Profile::Established(Hook::TcIngress),
                    "new" => Profile::NewFlows,
                    other => bail!("--profile {other}: xdp, tc (established TCP flow on that hook) or new (new flows)"),
                })
            }
            "--smoke" => {
                c.runs = 1;
                c.repeat = 1000;
                c.calls = 200;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(c.runs >= 1 && c.repeat >= 1 && c.calls >= 1, "runs, repeat and calls must be ≥ 1");
    Ok(c)
}

/// Median, min and max of per-run means, in ns per packet.
#[derive(Clone, Copy)]
struct Figure {
    median: f64,
    min: f64,
    max: f64,
}

fn figure(mut samples: Vec<f64>) -> Figure {
    samples.sort_by(|a, b| a.total_cmp(b));
    Figure { median: samples[samples.len() / 2], min: samples[0], max: samples[samples.len() - 1] }
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pass-only program: `repeat` method and `calls` method.
fn floor(cfg: &Config, frame: &[u8]) -> Result<(Figure, Figure)> {
    let mut ebpf = loader::load_xdp_pass()?;
    let prog: &mut Xdp = loader::program(&mut ebpf, "lb_xdp_pass")?;
    let mut out = vec![0u8; frame.len() + 64];
    let mut run = |repeat: u32| -> Result<f64> {
        let r = prog.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat, ..TestRunOptions::new() })?;
        ensure!(r.return_value == XDP_PASS, "pass program returned {}", r.return_value);
        Ok(ns(r.duration))
    };
    let repeat = (0..cfg.runs).map(|_| run(cfg.repeat)).collect::<Result<Vec<_>>>()?;
    let calls = (0..cfg.runs)
        .map(|_| Ok((0..cfg.calls).map(|_| run(1)).collect::<Result<Vec<_>>>()?.iter().sum::<f64>() / cfg.calls as f64))
        .collect::<Result<Vec<_>>>()?;
    Ok((figure(repeat), figure(calls)))
}

/// Two services mapping onto each other, so a rewritten packet is again an established hit.
fn mirrored(a: &str, b: &str, port_a: u16, port_b: u16, proto: &str) -> String {
    format!(
        r#"{{"services":[
          {{"name":"a","address":"{a}","port":{port_a},"protocol":"{proto}","backends":[{{"address":"{b}","port":{port_b}}}]}},
          {{"name":"b","address":"{b}","port":{port_b},"protocol":"{proto}","backends":[{{"address":"{a}","port":{port_a}}}]}}]}}"#
    )
}

/// Runs `frame` with `repeat` repetitions per run and checks the counters moved by exactly
/// runs × repeat on `verdict` and nowhere else unexpected.
fn repeat_scenario(cfg: &Config, f: &mut Fixture, frame: &[u8], verdict: &str) -> Result<Figure> {
    let before = counter_snapshot(&f.pins)?;
    let mut samples = Vec::new();
    for _ in 0..cfg.runs {
        let (_, _, d) = f.timed_run(frame, cfg.repeat)?;
        samples.push(ns(d));
    }
    let deltas = counter_deltas(&before, &counter_snapshot(&f.pins)?);
    let expected = cfg.runs as u64 * cfg.repeat as u64;
    let got = deltas.get(&format!("verdict.{verdict}")).copied().unwrap_or(0);
    ensure!(got == expected, "expected {expected} packets with verdict {verdict}, counters say {deltas:?}");
    ensure!(!deltas.keys().any(|k| k.ends_with(".new_flows")), "a new flow was created while measuring hits: {deltas:?}");
    Ok(figure(samples))
}

fn established(cfg: &Config, name: &str, services: &str, frame: Vec<u8>, hook: Hook) -> Result<(String, Figure)> {
    let mut f = Fixture::load_with(hook, LoadLimits { max_services: 8, ..LoadLimits::default() })?;
    f.apply(services, &[])?;
    // Two runs create the two flows (A and, after the rewrite, B); from then on every
    // repetition is an established hit.
    let (verdict, _, _) = f.timed_run(&frame, 2)?;
    ensure!(verdict == expected_verdict(hook, XDP_PASS), "{name}: verdict {verdict}");
    Ok((name.to_string(), repeat_scenario(cfg, &mut f, &frame, "fwd_local")?))
}

fn new_flows(cfg: &Config) -> Result<Figure> {
    let mut f = Fixture::load_with(Hook::XdpIngress, LoadLimits { max_services: 8, max_flows: 1 << 20, ..LoadLimits::default() })?;
    let backends: Vec<String> = (1..=16).map(|i| format!(r#"{{"address":"10.1.0.{i}","port":31000}}"#)).collect();
    f.apply(&format!(r#"{{"services":[{{"name":"web","address":"10.0.0.1","port":80,"backends":[{}]}}]}}"#, backends.join(",")), &[])?;
    let before = counter_snapshot(&f.pins)?;
    let mut samples = Vec::new();
    let mut flow = 0u32;
    for _ in 0..cfg.runs {
        let mut total = 0.0;
        for _ in 0..cfg.calls {
            flow += 1;
            let src = v4(10, 100 + (flow >> 24) as u8, (flow >> 16) as u8, (flow >> 8) as u8);
            let frame = tcp((src, 1024 + (flow & 0xff) as u16), (v4(10, 0, 0, 1), 80), SYN, b"");
            total += ns(f.timed_run(&frame, 1)?.2);
        }
        samples.push(total / cfg.calls as f64);
    }
    let deltas = counter_deltas(&before, &counter_snapshot(&f.pins)?);
    let expected = cfg.runs as u64 * cfg.calls as u64;
    ensure!(deltas.get("service{web}.new_flows") == Some(&expected), "not every call was a new flow: {deltas:?}");
    Ok(figure(samples))
}

/// docs/benchmarks.md: what was measured, how, the table, and how to rerun.
fn report(cfg: &Config, table: &str) -> String {
    format!(
        "# Benchmarks\n\n\
         Regenerate with `cargo xtask bench` (writes this file and `docs/benchmarks.json`).\n\n\
         ## Per-packet cost (BPF_PROG_TEST_RUN)\n\n\
         The XDP program against a program that only returns XDP_PASS, measured in the same run on\n\
         CPU 0; {runs} runs per scenario, median with min–max. `repeat`: one call of {repeat}\n\
         repetitions on the same buffer (established-flow scenarios use two services that map onto\n\
         each other, so every repetition is a hit). `calls`: {calls} calls of one repetition each\n\
         (includes the kernel's fixed per-call cost, so compare with the floor measured the same\n\
         way). After every scenario the verdict counters are checked against the expected path.\n\
         The TC ingress row runs the same balancer as a TC program on an skb (checksums through the\n\
         kernel's helpers); it is compared with the XDP floor.\n\n{table}",
        runs = cfg.runs,
        repeat = cfg.repeat,
        calls = cfg.calls,
    )
}

fn main() -> Result<()> {
    let cfg = parse_args()?;
    pin_to_cpu0();
    let tcp_flow = || tcp((v4(10, 9, 0, 1), 40000), (v4(10, 0, 0, 1), 80), ACK, &[0u8; 6]);
    if let Some(profile) = cfg.profile {
        let (name, fig) = match profile {
            Profile::Established(hook) => {
                established(&cfg, &format!("established TCP flow on {hook}"), &mirrored("10.0.0.1", "10.0.0.2", 80, 8080, "tcp"), tcp_flow(), hook)?
            }
            Profile::NewFlows => ("new TCP flows".to_string(), new_flows(&cfg)?),
        };
        println!("{name}: {:.1} ns/packet (min {:.1}, max {:.1})", fig.median, fig.min, fig.max);
        return Ok(());
    }
    let probe = udp((v4(10, 9, 0, 1), 5000), (v4(10, 9, 0, 2), 9999), &[0u8; 18]);
    let (floor_repeat, floor_calls) = floor(&cfg, &probe)?;

    let mut rows: Vec<(String, &str, Figure, Figure)> = Vec::new();
    let mut miss = Fixture::load_with(Hook::XdpIngress, LoadLimits { max_services: 8, ..LoadLimits::default() })?;
    miss.apply(&mirrored("10.0.0.1", "10.0.0.2", 80, 8080, "tcp"), &[])?;
    rows.push(("not a service (miss)".into(), "repeat", repeat_scenario(&cfg, &mut miss, &probe, "not_service")?, floor_repeat));
    for (name, services, frame, hook) in [
        ("established TCP flow", mirrored("10.0.0.1", "10.0.0.2", 80, 8080, "tcp"), tcp_flow(), Hook::XdpIngress),
        ("established UDP flow", mirrored("10.0.0.1", "10.0.0.2", 53, 5353, "udp"), udp((v4(10, 9, 0, 1), 40000), (v4(10, 0, 0, 1), 53), &[0u8; 18]), Hook::XdpIngress),
        ("established IPv6 TCP flow", mirrored("fd00::1", "fd00::2", 80, 8080, "tcp"), tcp((v6("fd00:9::1"), 40000), (v6("fd00::1"), 80), ACK, &[0u8; 6]), Hook::XdpIngress),
        ("established TCP flow, TC ingress (skb)", mirrored("10.0.0.1", "10.0.0.2", 80, 8080, "tcp"), tcp_flow(), Hook::TcIngress),
    ] {
        let (name, fig) = established(&cfg, name, &services, frame, hook)?;
        rows.push((name, "repeat", fig, floor_repeat));
    }
    rows.push(("new TCP flow (Maglev pick + flow insert)".into(), "calls", new_flows(&cfg)?, floor_calls));

    let mut json_rows = BTreeMap::new();
    let mut md = String::from("| scenario | method | ns/packet (median) | min–max | net of XDP_PASS | × XDP_PASS |\n|---|---|---|---|---|---|\n");
    md += &format!(
        "| XDP_PASS only (floor) | repeat | {:.1} | {:.1}–{:.1} | – | 1.00 |\n| XDP_PASS only (floor) | calls | {:.1} | {:.1}–{:.1} | – | 1.00 |\n",
        floor_repeat.median, floor_repeat.min, floor_repeat.max, floor_calls.median, floor_calls.min, floor_calls.max
    );
    for (name, method, fig, base) in &rows {
        let net = fig.median - base.median;
        let ratio = fig.median / base.median;
        md += &format!("| {name} | {method} | {:.1} | {:.1}–{:.1} | {net:+.1} | {ratio:.2} |\n", fig.median, fig.min, fig.max);
        json_rows.insert(name.clone(), json!({"method": method, "ns_median": fig.median, "ns_min": fig.min, "ns_max": fig.max, "net_of_floor_ns": net, "ratio_to_floor": ratio}));
    }
    json_rows.insert("XDP_PASS floor (repeat)".into(), json!({"method": "repeat", "ns_median": floor_repeat.median, "ns_min": floor_repeat.min, "ns_max": floor_repeat.max}));
    json_rows.insert("XDP_PASS floor (calls)".into(), json!({"method": "calls", "ns_median": floor_calls.median, "ns_min": floor_calls.min, "ns_max": floor_calls.max}));
    let doc = json!({"runs": cfg.runs, "repeat": cfg.repeat, "calls": cfg.calls, "per_packet": json_rows});
    print!("{md}");
    if let Some(path) = &cfg.json {
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
    }
    if let Some(path) = &cfg.markdown {
        std::fs::write(path, report(&cfg, &md))?;
    }
    Ok(())
}
