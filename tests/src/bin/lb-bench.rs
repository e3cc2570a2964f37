//! `cargo xtask bench`: per-packet cost of the ingress programs (XDP and TC) through
//! BPF_PROG_TEST_RUN, net of a program that only passes packets on the same hook.
//!
//! Method (every scenario alike): a round runs each hook's pass-only program and then each
//! scenario for `calls` calls of one repetition each (every call starts from the frame as given,
//! so an established flow is hit by every call and a new-flow frame is new), on one pinned CPU;
//! a scenario's figure is its mean per call minus the floor measured in the same round, the
//! median over the rounds with min–max. After every batch the counters are checked: the verdict
//! moved by exactly `calls`, and new flows were created exactly where the scenario makes them,
//! so a figure always belongs to the path it is named after.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, ensure, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use lb::dataplane::loader::{self, LoadConfig, MapSizes};
use lb_common::Hook;
use lb_tests::{
    fixture::{counter_deltas, counter_snapshot, expected_verdict, Fixture, INGRESS_HOOKS, XDP_PASS},
    packet::{tcp, udp, v4, ACK, SYN},
};
use serde_json::json;

/// Options of `cargo xtask bench`'s per-packet benchmark.
#[derive(clap::Parser, Debug)]
#[command(name = "lb-bench", args_override_self = true)]
struct Config {
    /// Interleaved rounds.
    #[arg(long, default_value_t = 15, default_value_if("smoke", "true", "1"), value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Calls of one repetition per program and round.
    #[arg(long, default_value_t = 20_000, default_value_if("smoke", "true", "200"), value_parser = clap::value_parser!(u32).range(1..))]
    calls: u32,
    #[command(flatten)]
    report: lb_tests::bench_report::ReportFiles,
    /// Only run SCENE on one hook (xdp by default) for a profiler, e.g. `new@tc`.
    #[arg(long, value_name = "SCENE[@xdp|tc]", value_parser = profile)]
    profile: Option<(Scene, Hook)>,
    /// Entries per flow table (default: every new flow of the run fits, so none is evicted).
    #[arg(long)]
    max_flows: Option<u32>,
    /// One round of 200 calls: the suite's check that the benchmark still works.
    #[arg(long)]
    smoke: bool,
}

/// `--profile SCENE[@xdp|tc]`.
fn profile(text: &str) -> Result<(Scene, Hook)> {
    let (scene, hook) = text.split_once('@').unwrap_or((text, "xdp"));
    let scene = Scene::ALL.into_iter().find(|s| s.key() == scene);
    let hook = INGRESS_HOOKS.into_iter().find(|h| h.name().starts_with(hook));
    let (Some(scene), Some(hook)) = (scene, hook) else {
        bail!("SCENE[@xdp|tc], SCENE one of {}", Scene::ALL.map(Scene::key).join(", "));
    };
    Ok((scene, hook))
}

/// What a scenario sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scene {
    EstablishedTcp,
    EstablishedUdp,
    NewTcp,
    /// The same in flow tables of `SMALL_TABLE` entries, which stay in the CPU's caches: the
    /// size of Katran's fallback LRU (1,000 entries), which a BPF_PROG_TEST_RUN comparison of
    /// its program without its userspace (per-CPU tables) measures.
    NewTcpSmallTable,
    /// New flows to a VIP with one source range that admits every client of the run.
    NewTcpOneRange,
    /// The same with 1,000 ranges (/24s, one of them each client's): one trie walk, no scan.
    NewTcpThousandRanges,
    ServicePortMiss,
    NotService,
}

/// Entries per flow table of `Scene::NewTcpSmallTable`.
const SMALL_TABLE: u32 = 1024;

impl Scene {
    const ALL: [Scene; 8] = [
        Scene::EstablishedTcp,
        Scene::EstablishedUdp,
        Scene::NewTcp,
        Scene::NewTcpSmallTable,
        Scene::NewTcpOneRange,
        Scene::NewTcpThousandRanges,
        Scene::ServicePortMiss,
        Scene::NotService,
    ];

    /// Whether each call is a new flow.
    fn is_new(self) -> bool {
        matches!(self, Scene::NewTcp | Scene::NewTcpSmallTable | Scene::NewTcpOneRange | Scene::NewTcpThousandRanges)
    }

    /// The source ranges of the VIP the new flows go to.
    fn source_ranges(self) -> Vec<String> {
        match self {
            Scene::NewTcpOneRange => vec!["10.100.0.0/14".into()],
            Scene::NewTcpThousandRanges => (0..1000).map(|i| format!("10.{}.{}.0/24", 100 + i / 256, i % 256)).collect(),
            _ => Vec::new(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scene::EstablishedTcp => "established TCP flow",
            Scene::EstablishedUdp => "established UDP flow",
            Scene::NewTcp => "new TCP flow (SYN, a new source each call)",
            Scene::NewTcpSmallTable => "new TCP flow, 1,024-entry flow tables",
            Scene::NewTcpOneRange => "new TCP flow, 1 source range",
            Scene::NewTcpThousandRanges => "new TCP flow, 1,000 source ranges",
            Scene::ServicePortMiss => "service port at a non-service address (miss)",
            Scene::NotService => "not a service (miss)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Scene::EstablishedTcp => "tcp",
            Scene::EstablishedUdp => "udp",
            Scene::NewTcp => "new",
            Scene::NewTcpSmallTable => "new-small",
            Scene::NewTcpOneRange => "new-range",
            Scene::NewTcpThousandRanges => "new-ranges",
            Scene::ServicePortMiss => "port-miss",
            Scene::NotService => "miss",
        }
    }

    /// The frame of call `n`.
    fn frame(self, n: u32) -> Vec<u8> {
        match self {
            Scene::EstablishedTcp => tcp((v4(10, 9, 0, 1), 40000), (v4(10, 0, 0, 1), 80), ACK, &[0u8; 6]),
            Scene::EstablishedUdp => udp((v4(10, 9, 0, 1), 40000), (v4(10, 0, 0, 2), 53), &[0u8; 18]),
            Scene::ServicePortMiss => tcp((v4(10, 9, 0, 1), 40000), (v4(10, 99, 0, 1), 10000), SYN, b""),
            Scene::NotService => udp((v4(10, 9, 0, 1), 5000), (v4(10, 9, 0, 2), 9999), &[0u8; 18]),
            // A new source address and port each call: 10.100.0.0 up (inside every range set).
            _ => tcp((v4(10, 100 + (n >> 24) as u8, (n >> 16) as u8, (n >> 8) as u8), 1024 + (n & 0xff) as u16), (v4(10, 0, 0, 1), 80), SYN, b""),
        }
    }

    fn verdict(self) -> &'static str {
        match self {
            Scene::ServicePortMiss | Scene::NotService => "not_service",
            _ => "fwd_local",
        }
    }
}

/// The services every scenario runs against: a TCP VIP and a UDP VIP with 16 local backends
/// each, and a TCP service port, so misses pay for a populated service table; the TCP VIP has
/// `source_ranges` (none: every client).
fn services(source_ranges: &[String]) -> String {
    let backends = |port: u16| (1..=16).map(|i| format!(r#"{{"address":"10.1.0.{i}","port":{port}}}"#)).collect::<Vec<_>>().join(",");
    let ranges = match source_ranges {
        [] => String::new(),
        ranges => format!(r#""source_ranges":[{}],"#, ranges.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(",")),
    };
    format!(
        r#"{{"services":[
          {{"name":"web","address":"10.0.0.1","port":80,{ranges}"backends":[{tcp}]}},
          {{"name":"dns","address":"10.0.0.2","port":53,"protocol":"udp","backends":[{udp}]}},
          {{"name":"app","port":10000,"backends":[{tcp}]}}]}}"#,
        tcp = backends(31000),
        udp = backends(31053)
    )
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

/// A hook's pass-only program: the floor.
struct Floor {
    ebpf: aya::Ebpf,
    name: &'static str,
    hook: Hook,
}

impl Floor {
    fn load(hook: Hook) -> Result<Self> {
        let (ebpf, name) = loader::load_pass(hook)?;
        Ok(Self { ebpf, name, hook })
    }

    /// Mean ns of `calls` single runs.
    fn mean(&mut self, frame: &[u8], calls: u32) -> Result<f64> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut total = 0.0;
        for _ in 0..calls {
            let options = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat: 1, ..TestRunOptions::new() };
            let result = match self.hook {
                Hook::XdpIngress => loader::program::<Xdp>(&mut self.ebpf, self.name)?.test_run(options)?,
                _ => loader::program::<SchedClassifier>(&mut self.ebpf, self.name)?.test_run(options)?,
            };
            ensure!(result.return_value == expected_verdict(self.hook, XDP_PASS), "{}: returned {}", self.name, result.return_value);
            total += ns(result.duration);
        }
        Ok(total / calls as f64)
    }
}

/// A scenario on one hook, with its own loaded program and maps.
struct Bench {
    scene: Scene,
    fixture: Fixture,
    next: u32,
}

impl Bench {
    fn new(scene: Scene, hook: Hook, max_flows: u32) -> Result<Self> {
        let max_flows = if scene == Scene::NewTcpSmallTable { SMALL_TABLE } else { max_flows };
        let mut fixture = Fixture::load_with(hook, LoadConfig { sizes: MapSizes { max_services: 8, max_flows, ..MapSizes::default() }, ..LoadConfig::default() })?;
        fixture.apply(&services(&scene.source_ranges()), &["10.201.0.2"])?;
        if matches!(scene, Scene::EstablishedTcp | Scene::EstablishedUdp) {
            // The first call creates the flow; every measured call is a hit.
            fixture.run_packet(&scene.frame(0))?;
        }
        Ok(Self { scene, fixture, next: 0 })
    }

    /// Mean ns of `calls` single runs; checks the counters of the batch.
    fn mean(&mut self, calls: u32) -> Result<f64> {
        let before = counter_snapshot(&self.fixture.pins)?;
        let mut total = 0.0;
        for _ in 0..calls {
            self.next += 1;
            total += ns(self.fixture.timed_run(&self.scene.frame(self.next), 1)?.2);
        }
        let deltas = counter_deltas(&before, &counter_snapshot(&self.fixture.pins)?);
        let name = self.scene.name();
        let verdict = deltas.get(&format!("verdict.{}", self.scene.verdict())).copied().unwrap_or(0);
        ensure!(verdict == calls as u64, "{name}: {verdict} of {calls} calls counted as {}: {deltas:?}", self.scene.verdict());
        let new_flows: u64 = deltas.iter().filter(|(k, _)| k.starts_with("service{") && k.ends_with(".new_flows")).map(|(_, n)| n).sum();
        let expected = if self.scene.is_new() { calls as u64 } else { 0 };
        ensure!(new_flows == expected, "{name}: {new_flows} new flows in {calls} calls, expected {expected}: {deltas:?}");
        Ok(total / calls as f64)
    }
}

/// Median, min and max of per-round net figures, in ns per packet.
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

fn main() -> Result<()> {
    let cfg: Config = lb_tests::command_line();
    pin_to_cpu0();
    let max_flows = cfg.max_flows.unwrap_or((cfg.rounds * cfg.calls + 1024).next_power_of_two());
    let probe = Scene::NotService.frame(0);
    if let Some((scene, hook)) = cfg.profile {
        let mut bench = Bench::new(scene, hook, max_flows)?;
        let mean = bench.mean(cfg.calls * cfg.rounds)?;
        println!("{} on {hook}: {mean:.1} ns/packet including the per-call floor", scene.name());
        return Ok(());
    }
    let mut floors: Vec<(Hook, Floor, Vec<f64>)> = INGRESS_HOOKS.iter().map(|&h| Ok((h, Floor::load(h)?, Vec::new()))).collect::<Result<_>>()?;
    let mut benches: Vec<(Hook, Bench, Vec<f64>)> = Vec::new();
    for hook in INGRESS_HOOKS {
        for scene in Scene::ALL {
            benches.push((hook, Bench::new(scene, hook, max_flows)?, Vec::new()));
        }
    }
    for _ in 0..cfg.rounds {
        for (hook, floor, samples) in &mut floors {
            let base = floor.mean(&probe, cfg.calls)?;
            samples.push(base);
            for (_, bench, nets) in benches.iter_mut().filter(|(h, _, _)| h == hook) {
                nets.push(bench.mean(cfg.calls)? - base);
            }
        }
    }
    report(&cfg, &floors, &benches)
}

fn report(cfg: &Config, floors: &[(Hook, Floor, Vec<f64>)], benches: &[(Hook, Bench, Vec<f64>)]) -> Result<()> {
    let mut md = String::from("| scenario | hook | ns/packet net of the floor (median) | min–max |\n|---|---|---|---|\n");
    let mut json_rows = BTreeMap::new();
    for (hook, _, samples) in floors {
        let f = figure(samples.clone());
        let name = if *hook == Hook::XdpIngress { "XDP_PASS only (floor)" } else { "TC_ACT_OK only (floor)" };
        md += &format!("| {name} | {hook} | {:.1} (absolute) | {:.1}–{:.1} |\n", f.median, f.min, f.max);
        json_rows.insert(format!("{name} {hook}"), json!({"ns_median": f.median, "ns_min": f.min, "ns_max": f.max}));
    }
    for (hook, bench, nets) in benches {
        let f = figure(nets.clone());
        md += &format!("| {} | {hook} | {:.1} | {:.1}–{:.1} |\n", bench.scene.name(), f.median, f.min, f.max);
        json_rows.insert(format!("{} {hook}", bench.scene.name()), json!({"net_ns_median": f.median, "net_ns_min": f.min, "net_ns_max": f.max}));
    }
    print!("{md}");
    let doc = json!({"rounds": cfg.rounds, "calls": cfg.calls, "per_packet": json_rows});
    if let Some(path) = &cfg.report.json {
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
    }
    if let Some(path) = &cfg.report.markdown {
        std::fs::write(
            path,
            format!(
                "# Benchmarks\n\n\
                 Regenerate with `cargo xtask bench` (writes this file and `docs/benchmarks.json`).\n\n\
                 ## Per-packet cost (BPF_PROG_TEST_RUN)\n\n\
                 Both ingress programs, on one pinned CPU, against the pass-only program of the same hook:\n\
                 {rounds} interleaved rounds; in each, every program runs {calls} calls of one repetition\n\
                 (each call starts from the frame as given), and a scenario's figure is its mean per call\n\
                 minus the floor's in that round. Median over the rounds, min–max. The counters are checked\n\
                 after every batch (verdict and new flows). 16 backends per service, a service port and two\n\
                 VIPs programmed.\n\n{md}",
                rounds = cfg.rounds,
                calls = cfg.calls,
            ),
        )?;
    }
    Ok(())
}
