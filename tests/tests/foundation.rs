//! The foundation end to end: `lb run` inside a network namespace, real packets through a veth,
//! counters moving, bpftool reading field names, restart keeping state, `lb down` cleaning up,
//! and bad input refused with one clear line and nothing left behind.

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use lb_tests::{
    agent::{lb, lb_bin, lb_ok, Agent, PinDir, TempFile, TestCgroup},
    netns::ClientNode,
};
use serde_json::Value;

const ECHO_PORT: u16 = 7007;

/// Starts a UDP echo server on the node, sends `count` datagrams from the client and waits for
/// every echo. Returns how many came back.
fn udp_echo_round(topo: &ClientNode, count: usize) -> usize {
    let server_addr = SocketAddr::new(topo.node_ip, ECHO_PORT);
    let server = topo
        .node
        .spawn(move || {
            let sock = UdpSocket::bind(server_addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut buf = [0u8; 1500];
            let mut echoed = 0;
            while echoed < count {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { break };
                sock.send_to(&buf[..n], from).unwrap();
                echoed += 1;
            }
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let received = topo
        .client
        .run(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 1500];
            let mut received = 0;
            for i in 0..count {
                sock.send_to(format!("ping {i}").as_bytes(), server_addr).unwrap();
                if sock.recv_from(&mut buf).is_ok() {
                    received += 1;
                }
            }
            received
        })
        .unwrap();
    server.join().unwrap();
    received
}

/// (tc_ingress packets, tc_egress packets) on the node's uplink, read with `lb stats --json`.
/// The uplink is a veth, where `--ingress-hook auto` (the default) balances in TC.
fn uplink_packets(topo: &ClientNode, pins: &PinDir) -> (u64, u64) {
    let out = lb_ok(Some(&topo.node), &["stats", "--json", "--pin-dir", &pins.arg()]).unwrap();
    let stats: Value = serde_json::from_str(&out).unwrap();
    let stats = &stats["interfaces"];
    let ifindex = topo.node.run({
        let dev = topo.node_if.clone();
        move || lb::node::preflight::interface_index(&dev).unwrap()
    });
    let ifindex = ifindex.unwrap();
    let get = |hook: &str| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["ifindex"] == ifindex && s["hook"] == hook)
            .map(|s| s["packets"].as_u64().unwrap())
            .unwrap_or(0)
    };
    assert_eq!(get("xdp_ingress"), 0, "auto must not pick XDP on a veth");
    (get("tc_ingress"), get("tc_egress"))
}

/// A services file with no services: the data path loaded, nothing balanced yet.
fn no_services() -> TempFile {
    TempFile::new(r#"{"services":[]}"#).unwrap()
}

#[test]
fn counts_real_packets_on_a_veth_in_a_namespace() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let none = no_services();
    let agent = Agent::start(&topo.node, &["--iface", &topo.node_if, "--pin-dir", &pins.arg(), "--services", &none.arg()]).unwrap();

    assert_eq!(udp_echo_round(&topo, 50), 50);
    let (ingress, egress) = uplink_packets(&topo, &pins);
    assert!(ingress >= 50, "TC ingress counted {ingress} packets, sent 50");
    assert!(egress >= 50, "TC egress counted {egress} packets, echoed 50");

    // bpftool reads the pinned map with field names from BTF.
    let dump = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(pins.path().join("iface_stats"))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    for field in ["\"packets\"", "\"bytes\""] {
        assert!(dump.contains(field), "bpftool output lacks {field}:\n{dump}");
    }
    agent.stop().unwrap();
}

#[test]
fn restart_keeps_programs_attached_and_counters() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let none = no_services();
    let args = ["--iface", topo.node_if.as_str(), "--pin-dir", &pins.arg(), "--services", &none.arg()];
    let agent = Agent::start(&topo.node, &args).unwrap();
    assert_eq!(udp_echo_round(&topo, 20), 20);
    let status = agent.stop().unwrap();
    assert!(status.success(), "SIGTERM is a clean exit, got {status}");

    // Agent gone: the pinned programs keep counting.
    let (before, _) = uplink_packets(&topo, &pins);
    assert!(before >= 20);
    assert_eq!(udp_echo_round(&topo, 20), 20);
    let (while_stopped, _) = uplink_packets(&topo, &pins);
    assert!(while_stopped >= before + 20, "{before} → {while_stopped}");

    // Restart: existing maps are re-used and the pinned links keep their place; only their
    // programs are replaced.
    let mut agent = Agent::start(&topo.node, &args).unwrap();
    let (after_restart, _) = uplink_packets(&topo, &pins);
    assert!(after_restart >= while_stopped, "counters reset by restart: {while_stopped} → {after_restart}");
    let log = agent.stop_and_collect();
    assert!(log.contains("program replaced in place"), "restart rebuilt the attachments:\n{log}");
    assert!(!log.contains("attached hook"), "restart attached new links:\n{log}");
}

#[test]
fn down_detaches_and_unpins_everything() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let cgroup = TestCgroup::new().unwrap();
    let none = no_services();
    let args = ["--iface", topo.node_if.as_str(), "--pin-dir", &pins.arg(), "--cgroup", &cgroup.arg(), "--services", &none.arg()];
    let agent = Agent::start(&topo.node, &args).unwrap();
    agent.stop().unwrap();
    let hooks = bpftool_cgroup(&cgroup);
    assert!(hooks.contains("connect4") && hooks.contains("recvmsg6"), "socket hooks not attached:\n{hooks}");

    let out = lb_ok(None, &["down", "--pin-dir", &pins.arg()]).unwrap();
    let pins_made = lb_common::names::PINNED_MAPS.len() + 2 + lb_common::names::PROG_SOCK_HOOKS.len();
    assert!(out.contains(&format!("removed {pins_made} pins")), "{out}");
    assert!(!pins.path().exists());
    let link = topo.node.command("ip").args(["link", "show", &topo.node_if]).output().unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "XDP still attached after lb down:\n{link}");
    let hooks = bpftool_cgroup(&cgroup);
    assert!(!hooks.contains("connect4"), "socket hooks still attached after lb down:\n{hooks}");
}

fn bpftool_cgroup(cgroup: &TestCgroup) -> String {
    let out = Command::new("bpftool").args(["cgroup", "show"]).arg(cgroup.path()).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lb run ARGS` must fail with exactly one line on stderr containing `needle`, and leave the
/// pin directory absent.
fn assert_refused(output: std::process::Output, needle: &str, pins: &PinDir) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "lb run accepted bad input");
    assert_eq!(stderr.trim().lines().count(), 1, "expected one line, got:\n{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr:?}");
    assert!(!pins.path().exists(), "left pins behind at {}", pins.path().display());
}

#[test]
fn unknown_interface_is_refused_with_one_line() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let none = no_services();
    let out = lb(Some(&topo.node), &["run", "--iface", "nosuch0", "--pin-dir", &pins.arg(), "--services", &none.arg()]).unwrap();
    assert_refused(out, "unknown interface \"nosuch0\"", &pins);
    // A good interface next to a bad one attaches nothing either.
    let out = lb(Some(&topo.node), &["run", "--iface", &topo.node_if, "--iface", "nosuch0", "--pin-dir", &pins.arg(), "--services", &none.arg()]).unwrap();
    assert_refused(out, "nosuch0", &pins);
}

#[test]
fn pin_dir_outside_bpffs_is_refused() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let tmp = std::env::temp_dir().join(lb_tests::unique_name("lbpins"));
    let none = no_services();
    let out = lb(Some(&topo.node), &["run", "--iface", &topo.node_if, "--pin-dir", tmp.to_str().unwrap(), "--services", &none.arg()]).unwrap();
    assert_refused(out, "not on a bpffs mount", &pins);
    assert!(!tmp.exists());
}

#[test]
fn missing_privileges_are_refused() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let out = topo
        .node
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(lb_bin())
        .args(["run", "--iface", &topo.node_if, "--pin-dir", &pins.arg(), "--services", "/nonexistent.json"])
        .output()
        .unwrap();
    assert_refused(out, "missing privileges", &pins);
}
