//! BPF_PROG_TEST_RUN packet fixtures: a table of {input packet, expected verdict, expected output
//! bytes, expected counter deltas}, run against the real kernel programs, with a readable
//! field-by-field diff when a case does not match.

use std::{collections::BTreeMap, fmt};

use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use anyhow::{Context as _, Result};
use lb::dataplane::{loader, pinned::PinnedMaps, Dataplane};
use lb_common::names;

use crate::{agent::PinDir, packet};

/// XDP verdicts, by name in diffs.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

fn verdict_name(v: u32) -> String {
    match v {
        XDP_ABORTED => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        other => format!("verdict {other}"),
    }
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

/// Loaded kernel programs with their maps pinned in a private pin directory.
pub struct XdpFixture {
    pub ebpf: Ebpf,
    pub pins: PinDir,
}

impl XdpFixture {
    pub fn load() -> Result<Self> {
        let pins = PinDir::new();
        let mut ebpf = loader::load_object(pins.path()).context("loading the BPF object")?;
        let xdp: &mut Xdp = loader::program(&mut ebpf, names::PROG_XDP)?;
        xdp.load().context("loading the XDP program")?;
        Ok(Self { ebpf, pins })
    }

    /// Runs one case; `Err` carries the diff.
    pub fn run(&mut self, case: &Case) -> Result<(), CaseFailure> {
        let before = counter_snapshot(&self.pins).map_err(|e| CaseFailure::setup(case, e))?;
        let xdp: &mut Xdp = loader::program(&mut self.ebpf, names::PROG_XDP)
            .map_err(|e| CaseFailure::setup(case, e.into()))?;
        // Room for programs that grow the packet (encapsulation) without losing bytes.
        let mut out = vec![0u8; case.input.len() + 256];
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(&case.input),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .map_err(|e| CaseFailure::setup(case, e.into()))?;
        out.truncate(result.data_size_out as usize);
        let after = counter_snapshot(&self.pins).map_err(|e| CaseFailure::setup(case, e))?;
        let deltas = counter_deltas(&before, &after);
        CaseFailure::compare(case, result.return_value, &out, &deltas)
    }

    /// Runs every case and panics with the diffs of all that failed.
    pub fn run_table(&mut self, cases: &[Case]) {
        let failures: Vec<String> =
            cases.iter().filter_map(|c| self.run(c).err()).map(|f| f.to_string()).collect();
        assert!(failures.is_empty(), "{} of {} packet cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n"));
    }
}

/// Every counter the data path keeps, flattened to `map{key}.field` → value (summed over CPUs),
/// read through the agent's own map adapter.
pub fn counter_snapshot(pins: &PinDir) -> Result<BTreeMap<String, u64>> {
    let maps = PinnedMaps::new(pins.path());
    let mut snapshot = BTreeMap::new();
    for stat in maps.iface_stats()? {
        let key = format!("iface_stats{{ifindex={},hook={}}}", stat.ifindex, stat.hook.as_str());
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

    /// Compares what the program did with what the case expects.
    pub fn compare(case: &Case, verdict: u32, output: &[u8], deltas: &BTreeMap<String, u64>) -> Result<(), Self> {
        let mut lines = Vec::new();
        if verdict != case.verdict {
            lines.push(format!("verdict: expected {}, got {}", verdict_name(case.verdict), verdict_name(verdict)));
        }
        lines.extend(packet_diff(&case.output, output));
        let expected: BTreeMap<String, u64> = case.counters.iter().cloned().collect();
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
