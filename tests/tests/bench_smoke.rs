//! Keeps `cargo xtask bench` working: its per-packet benchmark in a seconds-long smoke mode
//! (the counters it checks still prove each scenario took the path it is named after).

#[test]
fn packet_benchmark_smoke() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-bench")).arg("--smoke").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for row in ["XDP_PASS only (floor)", "not a service (miss)", "established TCP flow", "new TCP flow"] {
        assert!(stdout.contains(row), "missing {row:?}:\n{stdout}");
    }
}
