//! Packet tables run through the real ingress programs (XDP and TC) with BPF_PROG_TEST_RUN, and tests of the
//! fixture runner itself (a deliberate mismatch must produce a readable diff).

use lb_common::Hook;
use lb_tests::{
    fixture::{Case, Fixture, INGRESS_HOOKS, XDP_DROP, XDP_PASS},
    packet::{tcp, udp, v4, v6, SYN},
};

/// BPF_PROG_TEST_RUN runs XDP on the loopback device's receive queue.
const TEST_RUN_IFINDEX: u32 = 1;

fn xdp_counter(field: &str) -> String {
    format!("iface_stats{{ifindex={TEST_RUN_IFINDEX},hook={}}}.{field}", Hook::XdpIngress)
}

#[test]
fn with_no_services_every_packet_is_counted_and_passed_unchanged() {
    for hook in INGRESS_HOOKS {
        nothing_is_balanced_without_services(hook);
    }
}

fn nothing_is_balanced_without_services(hook: Hook) {
    let mut fixture = Fixture::load_hook(hook).expect("load");
    let udp4 = udp((v4(10, 0, 0, 1), 5000), (v4(10, 0, 0, 2), 53), b"query");
    let syn6 = tcp((v6("fd00::1"), 40000), (v6("fd00::2"), 80), SYN, b"");
    // BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header.
    let runt = vec![0xffu8; 14];
    let cases: Vec<Case> = [
        ("udp over ipv4", udp4, "verdict.not_service"),
        ("tcp syn over ipv6", syn6, "verdict.not_service"),
        ("bare ethernet header", runt, "verdict.not_ip_tcp_udp"),
    ]
    .into_iter()
    .map(|(name, input, verdict)| Case {
        name,
        output: input.clone(),
        verdict: XDP_PASS,
        counters: vec![(xdp_counter("packets"), 1), (xdp_counter("bytes"), input.len() as u64), (verdict.into(), 1)],
        input,
    })
    .collect();
    fixture.run_table(&cases);
}

#[test]
fn a_deliberate_mismatch_prints_a_field_by_field_diff() {
    let mut fixture = Fixture::load().expect("load");
    let input = udp((v4(10, 0, 0, 1), 5000), (v4(10, 0, 0, 2), 53), b"query");
    let wrong_output = udp((v4(10, 0, 0, 1), 5000), (v4(10, 9, 9, 9), 8053), b"query");
    let case = Case {
        name: "wrong on purpose",
        input: input.clone(),
        verdict: XDP_DROP,
        output: wrong_output,
        counters: vec![(xdp_counter("packets"), 2)],
    };
    let diff = fixture.run(&case).expect_err("a wrong expectation must fail").to_string();
    for needle in [
        "case \"wrong on purpose\"",
        "verdict: expected XDP_DROP, got XDP_PASS",
        "ipv4.dst: expected 10.9.9.9, got 10.0.0.2",
        "udp.dst_port: expected 8053, got 53",
        &format!("counter {}: expected +2, got +1", xdp_counter("packets")),
        &format!("counter {}: expected unchanged, got +{}", xdp_counter("bytes"), input.len()),
    ] {
        assert!(diff.contains(needle), "diff lacks {needle:?}:\n{diff}");
    }
    // And no complaint about what did match.
    assert!(!diff.contains("ipv4.src"), "{diff}");
}
