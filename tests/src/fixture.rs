//! BPF_PROG_TEST_RUN packet fixtures: a table of {input packet, expected verdict, expected output
//! bytes, expected counter deltas}, run against the real kernel programs, with a readable
//! field-by-field diff when a case does not match.

use std::{collections::BTreeMap, fmt};

use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use anyhow::{Context as _, Result};
use lb::{
    dataplane::{
        dsr::{self, NodeRanges},
        loader::{self, LoadConfig, MapSizes, RuntimeSettings},
        pinned::{pin_name, PinnedMaps},
    },
    control::reconcile::{self, Reconciler},
    inspect::report,
    node::serving::Serving,
    sources::services_file,
};
use lb_common::{names, Hook};

use crate::{agent::PinDir, packet};

/// XDP verdicts, by name in diffs.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// TC verdicts.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The ingress programs: tables are written in XDP terms and run on both, so one table checks
/// that both programs do exactly the same thing.
pub const INGRESS_HOOKS: [Hook; 2] = [Hook::XdpIngress, Hook::TcIngress];

/// The program a fixture runs on `hook`.
fn program(hook: Hook) -> &'static str {
    match hook {
        Hook::XdpIngress => names::PROG_XDP,
        Hook::TcIngress => names::PROG_TC_INGRESS,
        Hook::TcEgress => names::PROG_TC_EGRESS,
    }
}

/// `hook`'s verdict for what an XDP table expects.
pub fn expected_verdict(hook: Hook, xdp: u32) -> u32 {
    match (hook, xdp) {
        (Hook::XdpIngress, v) => v,
        (Hook::TcIngress | Hook::TcEgress, XDP_PASS) => TC_ACT_OK,
        (Hook::TcIngress | Hook::TcEgress, XDP_DROP) => TC_ACT_SHOT,
        (Hook::TcIngress | Hook::TcEgress, XDP_TX | XDP_REDIRECT) => TC_ACT_REDIRECT,
        (Hook::TcIngress | Hook::TcEgress, other) => other,
    }
}

/// A counter name from an XDP table, for `hook`.
pub fn counter_name(hook: Hook, name: &str) -> String {
    name.replace(&format!("hook={}", Hook::XdpIngress.name()), &format!("hook={}", hook.name()))
}

fn verdict_name(hook: Hook, v: u32) -> String {
    let name = match (hook, v) {
        (Hook::XdpIngress, XDP_ABORTED) => "XDP_ABORTED",
        (Hook::XdpIngress, XDP_DROP) => "XDP_DROP",
        (Hook::XdpIngress, XDP_PASS) => "XDP_PASS",
        (Hook::XdpIngress, XDP_TX) => "XDP_TX",
        (Hook::XdpIngress, XDP_REDIRECT) => "XDP_REDIRECT",
        (Hook::TcIngress | Hook::TcEgress, TC_ACT_OK) => "TC_ACT_OK",
        (Hook::TcIngress | Hook::TcEgress, TC_ACT_SHOT) => "TC_ACT_SHOT",
        (Hook::TcIngress | Hook::TcEgress, TC_ACT_REDIRECT) => "TC_ACT_REDIRECT",
        _ => return format!("verdict {v}"),
    };
    name.into()
}

/// One row of a packet table.
pub struct Case {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub verdict: u32,
    /// Expected bytes after the program ran (the input itself when the program must not rewrite).
    pub output: Vec<u8>,
    /// Expected counter changes, by the names [`counter_snapshot`] gives. Every counter not listed
    /// must stay unchanged.
    pub counters: Vec<(String, u64)>,
}

/// Small maps: fixtures need a handful of services, and tests run in parallel.
pub const FIXTURE_LIMITS: LoadConfig = LoadConfig {
    sizes: MapSizes { ring_slots: 8 * lb_common::ring_pool::CHUNK_SLOTS, max_services: 32, max_backends: 256, max_flows: 4096, max_source_ranges: 2048 },
    settings: RuntimeSettings { udp_timeout_secs: 120, nat_ports: (lb_common::DEFAULT_NAT_PORT_MIN, lb_common::DEFAULT_NAT_PORT_MAX), dsr: (lb_common::dsr::DEFAULT_PORT, 0) },
};

/// A loaded uplink program with its maps pinned in a private pin directory, programmed
/// through the agent's own reconciler.
pub struct Fixture {
    pub ebpf: Ebpf,
    pub pins: PinDir,
    pub hook: Hook,
    reconciler: Reconciler,
    /// Where services are served, as `lb run --expose` says (None: everywhere).
    serving: Option<Serving>,
    /// The interface packets arrive on (xdp_md.ingress_ifindex / __sk_buff.ifindex); None = the
    /// test run default (loopback of the calling thread's namespace).
    ingress: Option<u32>,
}

impl Fixture {
    /// The XDP program with the fixtures' small maps.
    pub fn load() -> Result<Self> {
        Self::load_with(Hook::XdpIngress, FIXTURE_LIMITS)
    }

    pub fn load_hook(hook: Hook) -> Result<Self> {
        Self::load_with(hook, FIXTURE_LIMITS)
    }

    pub fn load_with(hook: Hook, limits: LoadConfig) -> Result<Self> {
        let pins = PinDir::new();
        let mut ebpf = loader::load_object(pins.path(), &limits).context("loading the BPF object")?;
        load_program(&mut ebpf, hook)?;
        Ok(Self { ebpf, pins, hook, reconciler: Reconciler::default(), serving: None, ingress: None })
    }

    /// `hook`'s program on a node that does `dsr_flags` (lb_common::dsr::ENCAP, DECAP) on the
    /// default DSR port, with these node ranges (`--dsr-nodes`, `--decap-from`).
    pub fn load_dsr(hook: Hook, dsr_flags: u16, nodes: &[&str], decap_from: &[&str]) -> Result<Self> {
        let mut limits = FIXTURE_LIMITS;
        limits.settings.dsr = (lb_common::dsr::DEFAULT_PORT, dsr_flags);
        let f = Self::load_with(hook, limits)?;
        let parse = |ranges: &[&str]| ranges.iter().map(|r| r.parse()).collect::<Result<Vec<ipnet::IpNet>, _>>();
        for (which, ranges) in [(NodeRanges::DsrNodes, parse(nodes)?), (NodeRanges::DecapFrom, parse(decap_from)?)] {
            let data = aya::maps::MapData::from_pin(f.pins.path().join(pin_name(which.map())))?;
            let mut trie = aya::maps::LpmTrie::try_from(aya::maps::Map::LpmTrie(data))?;
            dsr::replace(&mut trie, &ranges)?;
        }
        Ok(f)
    }

    /// Runs packets through `hook`'s program from now on, on the same maps (e.g. TC egress for
    /// the replies of the flows the ingress program pinned).
    pub fn switch_to(&mut self, hook: Hook) -> Result<()> {
        load_program(&mut self.ebpf, hook)?;
        self.hook = hook;
        Ok(())
    }

    /// Serves services where `serving` says from now on (as `lb run --expose`): its node
    /// addresses (discovered in the calling thread's namespace) and uplinks get their groups'
    /// words at every [`Fixture::apply`]. Call before the first one.
    pub fn serve_as(&mut self, serving: Serving) {
        self.reconciler = Reconciler::new(serving.exposure().clone());
        self.serving = Some(serving);
    }

    /// Programs the services of a services-file text and this node's addresses, as `lb run` does
    /// (`node_addrs` serve every group; with [`Fixture::serve_as`], the node's own addresses).
    pub fn apply(&mut self, services_json: &str, node_addrs: &[&str]) -> Result<()> {
        let desired = services_file::parse(services_json, "fixture")?;
        let mut maps = PinnedMaps::new(self.pins.path());
        match &self.serving {
            Some(serving) => {
                let words = serving.words()?;
                reconcile::sync_node_addrs(&words.addrs, &mut maps)?;
                reconcile::sync_uplinks(&words.uplinks, &mut maps)?;
            }
            None => {
                let addrs: Vec<std::net::IpAddr> = node_addrs.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
                let every = addrs.into_iter().map(|a| (a, lb_common::exposure::EVERY_GROUP)).collect::<Vec<_>>();
                reconcile::sync_node_addrs(&every, &mut maps)?;
            }
        }
        let report = self.reconciler.apply(&desired, &mut maps)?;
        anyhow::ensure!(report.failed.is_empty(), "not programmed: {:?}", report.failed);
        Ok(())
    }

    /// Packets arrive on `ifindex`, which is also registered as an uplink (as `lb run --iface`;
    /// with [`Fixture::serve_as`], its uplinks are registered by `apply`).
    pub fn arrive_on(&mut self, ifindex: u32) -> Result<()> {
        self.ingress = Some(ifindex);
        if self.serving.is_none() {
            reconcile::sync_uplinks(&[(ifindex, lb_common::exposure::EVERY_GROUP)], &mut PinnedMaps::new(self.pins.path()))?;
        }
        Ok(())
    }

    /// The agent's view of the maps (for ring and flow checks).
    pub fn maps(&self) -> PinnedMaps {
        PinnedMaps::new(self.pins.path())
    }

    /// Runs `input` once and returns (verdict, output bytes).
    pub fn run_packet(&mut self, input: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (verdict, out, _) = self.timed_run(input, 1)?;
        Ok((verdict, out))
    }

    /// Runs `input` `repeat` times on the same buffer (the kernel does not restore it between
    /// repetitions) and returns (verdict, output bytes, mean time per run as the kernel measured).
    pub fn timed_run(&mut self, input: &[u8], repeat: u32) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        let mut out = vec![0u8; input.len() + 256];
        let ctx = self.ingress.map(|ifindex| self.run_context(ifindex, input.len()));
        let options = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: ctx.as_deref(),
            repeat,
            ..TestRunOptions::new()
        };
        let result = match self.hook {
            Hook::XdpIngress => loader::program::<Xdp>(&mut self.ebpf, program(self.hook))?.test_run(options)?,
            Hook::TcIngress | Hook::TcEgress => {
                loader::program::<SchedClassifier>(&mut self.ebpf, program(self.hook))?.test_run(options)?
            }
        };
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration))
    }

    /// The program context that makes a test run arrive on `ifindex`.
    fn run_context(&self, ifindex: u32, len: usize) -> Vec<u8> {
        match self.hook {
            Hook::XdpIngress => {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, …
                let mut ctx = vec![0u8; 24];
                ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                ctx
            }
            Hook::TcIngress | Hook::TcEgress => {
                // struct __sk_buff up to ifindex (offset 40); the kernel accepts a prefix.
                let mut ctx = vec![0u8; 44];
                ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
                ctx
            }
        }
    }

    /// Runs one case; `Err` carries the diff.
    pub fn run(&mut self, case: &Case) -> Result<(), CaseFailure> {
        let before = counter_snapshot(&self.pins).map_err(|e| CaseFailure::setup(case, e))?;
        let (verdict, out) = self.run_packet(&case.input).map_err(|e| CaseFailure::setup(case, e))?;
        let after = counter_snapshot(&self.pins).map_err(|e| CaseFailure::setup(case, e))?;
        let deltas = counter_deltas(&before, &after);
        CaseFailure::compare(self.hook, case, verdict, &out, &deltas)
    }

    /// Runs every case and panics with the diffs of all that failed.
    pub fn run_table(&mut self, cases: &[Case]) {
        let failures: Vec<String> =
            cases.iter().filter_map(|c| self.run(c).err()).map(|f| f.to_string()).collect();
        assert!(
            failures.is_empty(),
            "{} of {} packet cases failed on {}:\n\n{}",
            failures.len(),
            cases.len(),
            self.hook,
            failures.join("\n")
        );
    }
}

/// Loads `hook`'s program of the object, unless it is loaded already.
fn load_program(ebpf: &mut Ebpf, hook: Hook) -> Result<()> {
    let name = program(hook);
    let loaded = match hook {
        Hook::XdpIngress => loader::program::<Xdp>(ebpf, name)?.load(),
        Hook::TcIngress | Hook::TcEgress => loader::program::<SchedClassifier>(ebpf, name)?.load(),
    };
    match loaded {
        Ok(()) | Err(aya::programs::ProgramError::AlreadyLoaded) => Ok(()),
        Err(err) => Err(err).with_context(|| format!("loading {name}")),
    }
}

/// Every counter the data path keeps, flattened to `map{key}.field` → value (summed over CPUs),
/// read through the agent's own map adapter.
/// Names: `verdict.<reason>`, `service{<name>}.<field>` (`source_refused` too),
/// `backend{<addr>:<port>}.<field>` (summed
/// over the services the address and port serve),
/// `iface_stats{ifindex=…,hook=…}.<field>`.
pub fn counter_snapshot(pins: &PinDir) -> Result<BTreeMap<String, u64>> {
    let maps = PinnedMaps::new(pins.path());
    let stats = report::stats(&maps)?;
    let mut snapshot = BTreeMap::new();
    for (name, n) in &stats.verdicts {
        snapshot.insert(format!("verdict.{name}"), *n);
    }
    for s in &stats.services {
        for (field, n) in [("packets", s.packets), ("bytes", s.bytes), ("new_flows", s.new_flows), ("source_refused", s.source_refused)] {
            snapshot.insert(format!("service{{{}}}.{field}", s.name), n);
        }
        for b in &s.backends {
            for (field, n) in [("packets", b.packets), ("bytes", b.bytes), ("new_flows", b.new_flows)] {
                // A task in two services has an entry in each: its counters are their sum.
                *snapshot.entry(format!("backend{{{}:{}}}.{field}", b.address, b.port)).or_insert(0) += n;
            }
        }
    }
    for stat in &stats.interfaces {
        let key = format!("iface_stats{{ifindex={},hook={}}}", stat.ifindex, stat.hook);
        snapshot.insert(format!("{key}.packets"), stat.packets);
        snapshot.insert(format!("{key}.bytes"), stat.bytes);
    }
    Ok(snapshot)
}

/// Counters that changed between two snapshots, with their increase.
pub fn counter_deltas(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, &v)| {
            let old = before.get(k).copied().unwrap_or(0);
            (v != old).then(|| (k.clone(), v.wrapping_sub(old)))
        })
        .collect()
}

/// Why a case failed, printed as a diff.
#[derive(Debug)]
pub struct CaseFailure {
    name: &'static str,
    lines: Vec<String>,
}

impl CaseFailure {
    fn setup(case: &Case, err: anyhow::Error) -> Self {
        Self { name: case.name, lines: vec![format!("could not run: {err:#}")] }
    }

    /// Compares what the program on `hook` did with what the case expects.
    pub fn compare(hook: Hook, case: &Case, verdict: u32, output: &[u8], deltas: &BTreeMap<String, u64>) -> Result<(), Self> {
        let mut lines = Vec::new();
        let want = expected_verdict(hook, case.verdict);
        if verdict != want {
            lines.push(format!("verdict: expected {}, got {}", verdict_name(hook, want), verdict_name(hook, verdict)));
        }
        lines.extend(packet_diff(&case.output, output));
        let expected: BTreeMap<String, u64> = case.counters.iter().map(|(name, n)| (counter_name(hook, name), *n)).collect();
        for (name, want) in &expected {
            let got = deltas.get(name).copied().unwrap_or(0);
            if got != *want {
                lines.push(format!("counter {name}: expected +{want}, got +{got}"));
            }
        }
        for (name, got) in deltas {
            if !expected.contains_key(name) {
                lines.push(format!("counter {name}: expected unchanged, got +{got}"));
            }
        }
        if lines.is_empty() {
            Ok(())
        } else {
            Err(Self { name: case.name, lines })
        }
    }
}

impl fmt::Display for CaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "case {:?}:", self.name)?;
        for line in &self.lines {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Field-by-field differences between the expected and actual output frames; when the fields
/// agree but the bytes do not (a field the description does not cover), the first differing
/// byte offset.
pub fn packet_diff(expected: &[u8], actual: &[u8]) -> Vec<String> {
    if expected == actual {
        return Vec::new();
    }
    let (want, got) = (packet::describe(expected), packet::describe(actual));
    let want_map: BTreeMap<_, _> = want.iter().cloned().collect();
    let got_map: BTreeMap<_, _> = got.iter().cloned().collect();
    let mut lines = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (field, _) in want.iter().chain(got.iter()) {
        if !seen.insert(field.clone()) {
            continue;
        }
        let missing = "(absent)".to_string();
        let (w, g) = (want_map.get(field).unwrap_or(&missing), got_map.get(field).unwrap_or(&missing));
        if w != g {
            lines.push(format!("{field}: expected {w}, got {g}"));
        }
    }
    if lines.is_empty() {
        let offset = expected.iter().zip(actual).position(|(a, b)| a != b).unwrap_or(expected.len().min(actual.len()));
        lines.push(format!(
            "bytes differ at offset {offset} (expected {} bytes, got {})",
            expected.len(),
            actual.len()
        ));
    }
    lines
}
