//! The packet fuzzer (lb_tests::fuzz) in the test suite: fixed seeds, a few thousand frames per
//! ingress hook, and every saved regression case of tests/corpus/ replayed. `cargo xtask fuzz`
//! runs it at full size with any seed.

use lb_common::Hook;
use lb_tests::{fixture::INGRESS_HOOKS, fuzz};

#[test]
fn fixed_seeds_find_no_violation_on_either_hook() {
    for hook in INGRESS_HOOKS {
        for seed in [1, 2] {
            let report = fuzz::run(seed, 2500, hook).unwrap();
            let lines: Vec<String> = report.violations.iter().map(|v| fuzz::describe(seed, hook, v)).collect();
            assert!(lines.is_empty(), "{} violations:\n{}", lines.len(), lines.join("\n"));
            assert!(report.cases > 2000, "{hook} seed {seed}: only {} frames ran", report.cases);
        }
    }
}

#[test]
fn saved_regression_cases_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut harnesses = Vec::new();
    for hook in INGRESS_HOOKS {
        harnesses.push((hook, fuzz::Harness::new(hook).unwrap()));
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "hex") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let frame: Vec<u8> = (0..text.trim().len()).step_by(2).map(|i| u8::from_str_radix(&text.trim()[i..i + 2], 16).unwrap()).collect();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let hook = if name.starts_with(Hook::TcIngress.name()) { Hook::TcIngress } else { Hook::XdpIngress };
        let harness = &mut harnesses.iter_mut().find(|(h, _)| *h == hook).unwrap().1;
        if let Some(Err(why)) = harness.case(&frame).unwrap() {
            panic!("{name}: {why}");
        }
    }
}
