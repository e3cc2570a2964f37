//! Keeps `cargo xtask bench` working: every benchmark in a seconds-long smoke mode (the checks
//! they make still prove each figure measured what it is named after).

/// What `binary --smoke` printed; it must have succeeded.
fn smoke(binary: &str) -> String {
    let out = std::process::Command::new(binary).arg("--smoke").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn packet_benchmark_smoke() {
    let stdout = smoke(env!("CARGO_BIN_EXE_lb-bench"));
    for row in ["XDP_PASS only (floor)", "not a service (miss)", "established TCP flow", "new TCP flow"] {
        assert!(stdout.contains(row), "missing {row:?}:\n{stdout}");
    }
}

#[test]
fn control_plane_benchmark_smoke() {
    let stdout = smoke(env!("CARGO_BIN_EXE_lb-bench-control"));
    for column in ["full sync", "event → maps p50", "`GET /v2/apps` per event", "agent CPU s per 1,000 events"] {
        assert!(stdout.contains(column), "missing {column:?}:\n{stdout}");
    }
    assert!(stdout.contains("| 50 | 100 |"), "the smoke size was measured (50 apps, a service port and a VIP each):\n{stdout}");
}

#[test]
fn end_to_end_benchmark_smoke() {
    let stdout = smoke(env!("CARGO_BIN_EXE_lb-bench-e2e"));
    assert!(stdout.contains("| xdp | tc | sockhook |"), "every mode runs:\n{stdout}");
    for metric in ["keep-alive requests/s", "new connections/s", "iperf3 4 streams", "CPU µs per keep-alive request"] {
        assert!(stdout.contains(metric), "missing {metric:?}:\n{stdout}");
    }
}

#[test]
fn http_benchmark_smoke() {
    let stdout = smoke(env!("CARGO_BIN_EXE_lb-bench-http"));
    for metric in ["keep-alive requests/s", "new TLS connections/s", "CPU µs per keep-alive request", "| haproxy | lb |"] {
        assert!(stdout.contains(metric), "missing {metric:?}:\n{stdout}");
    }
}

#[test]
fn multi_node_benchmark_smoke() {
    let stdout = smoke(env!("CARGO_BIN_EXE_lb-bench-multi-node"));
    for metric in ["balancer node CPU µs per keep-alive request", "keep-alive requests/s, balancer node capped", "download: MB the balancer node received", "| dsr | full-nat |"] {
        assert!(stdout.contains(metric), "missing {metric:?}:\n{stdout}");
    }
}

#[test]
fn dns_benchmark_smoke() {
    let stdout = smoke(env!("CARGO_BIN_EXE_lb-bench-dns"));
    for metric in ["| lb agent |", "| Knot DNS 3.2 |", "CPU per query", "Freshness", "with DNS off"] {
        assert!(stdout.contains(metric), "missing {metric:?}:\n{stdout}");
    }
}
