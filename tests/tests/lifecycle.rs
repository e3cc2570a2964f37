//! The agent's lifecycle as an operator meets it: bad configuration refused before the kernel is
//! touched (exit 64), one agent per pin directory, `lb status` telling a running agent from a
//! dead one (exit 0 / 3), `lb down` refusing a running agent unless forced.

use std::{path::Path, process::Output};

use lb_tests::{
    agent::{lb, wait_for_services, Agent, PinDir, TempFile, TestCgroup},
    netns::ClientNode,
};
use serde_json::Value;

const SERVICES: &str = r#"{"services":[{"name":"web","address":"10.0.0.1","port":80,"backends":[{"address":"10.1.0.5","port":31005}]}]}"#;

/// `lb run` refused as a configuration error: exit code 64, one line naming the problem, nothing
/// pinned.
fn assert_config_error(out: &Output, needle: &str, pins: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "exit code for {needle:?}; stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "expected one line for {needle:?}, got:\n{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr:?}");
    assert!(!pins.exists(), "{needle:?}: left pins behind at {}", pins.display());
}

#[test]
fn bad_configuration_of_every_kind_exits_64_and_pins_nothing() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let cgroup = TestCgroup::new().unwrap();
    let file = TempFile::new(SERVICES).unwrap();
    let bad_file = TempFile::new(r#"{"services":[{"name":"web","port":"80"}]}"#).unwrap();
    let bad_config = TempFile::new("# lb.toml\nmax_flows = 5000\n").unwrap();
    let bad_value = TempFile::new("max-flows = \"lots\"\n").unwrap();
    let (pin, cg, svc) = (pins.arg(), cgroup.arg(), file.arg());
    let base = ["--iface", topo.node_if.as_str(), "--pin-dir", &pin, "--cgroup", &cg];
    let cases: &[(&[&str], &str)] = &[
        (&["--services", &svc, "--vip-cidr", "not-a-cidr"], "--vip-cidr"),
        (&["--marathon", "ftp://marathon"], "only http and https"),
        (&["--marathon", "http://marathon:8080", "--marathon-credentials", "nocolon"], "USER:PASSWORD"),
        (&["--marathon", "http://marathon:8080", "--marathon-credentials", "u:p", "--marathon-token", "t"], "not both"),
        (&["--services", &svc, "--ring-slots", "100000"], "65536-slot chunks"),
        (&["--services", &svc, "--max-backends", "1"], "--max-backends"),
        (&["--services", &svc, "--max-flows", "64"], "batches of 128"),
        (&["--services", &svc, "--nat-ports", "65000-61000"], "MIN must not exceed MAX"),
        (&["--services", &svc, "--nat-ports", "40000-41000"], "ephemeral ports"),
        (&["--services", &svc, "--iface", "nosuch0"], "unknown interface \"nosuch0\""),
        (&["--services", &bad_file.arg()], "service 0 (\"web\"): port"),
        (&[], "nothing to balance"),
        (&["--services", &svc, "--metrics-listen", "0.0.0.0:9097"], "--metrics-listen-public"),
        (&["--services", &svc, "--metrics-listen", "9097"], "ADDRESS:PORT"),
        (&["--config", &bad_config.arg()], ":2: unknown key \"max_flows\""),
        (&["--config", &bad_value.arg()], ":1: max-flows: invalid value 'lots'"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["run"];
        args.extend(base);
        args.extend_from_slice(extra);
        let out = lb(Some(&topo.node), &args).unwrap();
        assert_config_error(&out, needle, pins.path());
    }
    // The bpffs root is shared with other software: never a pin directory.
    let out = lb(Some(&topo.node), &["run", "--services", &svc, "--pin-dir", "/sys/fs/bpf", "--cgroup", &cg]).unwrap();
    assert_config_error(&out, "bpffs mount itself", pins.path());
    let out = lb(Some(&topo.node), &["run", "--services", &svc, "--pin-dir", &pin, "--cgroup", "/tmp"]).unwrap();
    assert_config_error(&out, "not a cgroup v2 directory", pins.path());
    // The metrics port is taken in the agent's namespace: refused before anything is loaded.
    let _taken = topo.node.run(|| std::net::TcpListener::bind("127.0.0.1:9097")).unwrap().unwrap();
    let mut args = vec!["run"];
    args.extend(base);
    args.extend(["--services", &svc]);
    let out = lb(Some(&topo.node), &args).unwrap();
    assert_config_error(&out, "--metrics-listen 127.0.0.1:9097: Address already in use", pins.path());
}

#[test]
fn limits_that_differ_from_the_pinned_maps_exit_64_and_leave_the_running_state() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let file = TempFile::new(SERVICES).unwrap();
    let args = ["--iface", topo.node_if.as_str(), "--pin-dir", &pins.arg(), "--services", &file.arg()];
    let mut first = args.to_vec();
    first.extend(["--max-flows", "4096"]);
    let agent = Agent::start(&topo.node, &first).unwrap();
    assert!(agent.stop().unwrap().success());
    let links_before = pins.links();
    let cgroup = TestCgroup::new().unwrap();
    let cg = cgroup.arg();
    let mut bigger = vec!["run", "--cgroup", &cg];
    bigger.extend(args);
    bigger.push("--max-flows");
    bigger.push("8192");
    let out = lb(Some(&topo.node), &bigger).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--max-flows") && stderr.contains("4096"), "{stderr}");
    assert_eq!(pins.links(), links_before, "a refused start changed the attached programs");
}

#[test]
fn a_second_agent_is_refused_while_the_first_keeps_serving() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let file = TempFile::new(SERVICES).unwrap();
    let args = ["--iface", topo.node_if.as_str(), "--pin-dir", &pins.arg(), "--services", &file.arg()];
    let first = Agent::start(&topo.node, &args).unwrap();
    let links_before = pins.links();

    let cgroup = TestCgroup::new().unwrap();
    let cg = cgroup.arg();
    let mut second = vec!["run", "--cgroup", &cg];
    second.extend(args);
    let out = lb(Some(&topo.node), &second).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "the refusal names the running agent: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(pins.links(), links_before, "the second agent touched the first one's programs");

    // The first agent still owns the maps: a change of its services file is applied.
    file.replace(&SERVICES.replace("31005", "31006")).unwrap();
    wait_for_services(&pins, |s| s[0]["backends"][0]["port"] == 31006).unwrap();
    let (code, status) = status(&pins);
    assert_eq!(code, Some(0));
    assert_eq!(status["pid"], first.pid(), "{status}");
    drop(first);
}

#[test]
fn status_tells_a_running_agent_from_a_dead_one() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let file = TempFile::new(SERVICES).unwrap();
    let agent = Agent::start(&topo.node, &["--iface", &topo.node_if, "--pin-dir", &pins.arg(), "--services", &file.arg()]).unwrap();
    let (code, running) = status(&pins);
    assert_eq!(code, Some(0), "{running}");
    assert_eq!(running["running"], true, "{running}");
    assert_eq!(running["pid"], agent.pid(), "{running}");
    assert_eq!(running["settings"]["nat_ports"], "61000-65535", "{running}");
    assert_eq!(running["metrics_listen"], "127.0.0.1:9097", "{running}");
    // The node namespace's forwarding setting is reported as the agent found it.
    let forwarding = topo.node.command("sysctl").args(["-n", "net.ipv4.ip_forward"]).output().unwrap();
    let off = String::from_utf8_lossy(&forwarding.stdout).trim() == "0";
    let warned = running["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().starts_with("net.ipv4.ip_forward=0"));
    assert_eq!(warned, off, "{running}");

    // Killed without a chance to clean up, as by the OOM killer.
    let pid = agent.pid();
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    drop(agent);
    let (code, dead) = status(&pins);
    assert_eq!(code, Some(3), "{dead}");
    assert_eq!(dead["running"], false, "{dead}");
    assert_eq!(dead["services"], 1, "what the pinned maps still serve: {dead}");
    let human = lb(None, &["status", "--pin-dir", &pins.arg()]).unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("NOT RUNNING"), "{human:?}");
}

#[test]
fn a_service_beyond_the_limits_is_named_in_status_and_the_others_are_served() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let two = r#"{"services":[
        {"name":"web","address":"10.0.0.1","port":80,"backends":[{"address":"10.1.0.5","port":31005}]},
        {"name":"api","address":"10.0.0.2","port":80,"backends":[{"address":"10.1.0.6","port":31006}]}]}"#;
    let file = TempFile::new(two).unwrap();
    let args = ["--iface", topo.node_if.as_str(), "--pin-dir", &pins.arg(), "--services", &file.arg(), "--max-services", "1"];
    let _agent = Agent::start(&topo.node, &args).unwrap();
    let (code, view) = status(&pins);
    assert_eq!(code, Some(0), "{view}");
    let not_programmed = view["not_programmed"].as_array().unwrap();
    assert_eq!(not_programmed.len(), 1, "{view}");
    let why = not_programmed[0].as_str().unwrap();
    // Services are programmed in address order: web (10.0.0.1) fits, api does not.
    assert!(why.contains("10.0.0.2:80/tcp (api)") && why.contains("--max-services"), "{why}");
    assert_eq!(view["services"], 1, "what the maps serve: {view}");
    let human = lb(None, &["status", "--pin-dir", &pins.arg()]).unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("NOT PROGRAMMED: 1 services"), "{human:?}");
    let served = lb(None, &["services", "--json", "--pin-dir", &pins.arg()]).unwrap();
    let served: Value = serde_json::from_slice(&served.stdout).unwrap();
    assert_eq!(served.as_array().map(Vec::len), Some(1), "{served}");
}

#[test]
fn down_refuses_a_running_agent_unless_forced() {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let file = TempFile::new(SERVICES).unwrap();
    let mut agent = Agent::start(&topo.node, &["--iface", &topo.node_if, "--pin-dir", &pins.arg(), "--services", &file.arg()]).unwrap();
    let out = lb(None, &["down", "--pin-dir", &pins.arg()]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("pid {}", agent.pid())) && stderr.contains("--force"), "{stderr}");
    assert!(pins.path().join("services").exists(), "a refused down removed pins");

    let out = lb(None, &["down", "--force", "--pin-dir", &pins.arg()]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!pins.path().exists());
    let log = agent.stop_and_collect();
    assert!(log.contains("SIGTERM"), "the agent was stopped by SIGTERM first:\n{log}");
}

/// `lb status --json`: its exit code and output.
fn status(pins: &PinDir) -> (Option<i32>, Value) {
    let out = lb(None, &["status", "--json", "--pin-dir", &pins.arg()]).unwrap();
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

/// `lb run` over a pin directory holding only the map `pin`, made by the `bpftool` commands
/// `make` gives it the path for: refused with exit 64, stderr holding every one of `needles`,
/// and nothing more pinned.
fn refused_over_a_foreign_pin(pin: &str, make: impl Fn(&str) -> Vec<Vec<String>>, needles: &[&str]) {
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let cgroup = TestCgroup::new().unwrap();
    let file = TempFile::new(SERVICES).unwrap();
    std::fs::create_dir(pins.path()).unwrap();
    let path = pins.path().join(pin);
    for args in make(path.to_str().unwrap()) {
        let made = std::process::Command::new("bpftool").args(&args).output().unwrap();
        assert!(made.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&made.stderr));
    }
    let out = lb(Some(&topo.node), &["run", "--iface", &topo.node_if, "--pin-dir", &pins.arg(), "--services", &file.arg(), "--cgroup", &cgroup.arg()]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(needles.iter().all(|n| stderr.contains(n)), "{needles:?} in {stderr}");
    let left: Vec<_> = std::fs::read_dir(pins.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [pin], "a refused start pinned more");
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_naming_lb_down() {
    // What an older version left: a VERDICTS map counting fewer outcomes.
    refused_over_a_foreign_pin(
        "verdicts",
        |path| vec![words(&format!("map create {path} type percpu_array key 4 value 8 entries 7 name VERDICTS"))],
        &["VERDICTS", "7 entries", "lb down"],
    );
}

#[test]
fn maps_of_another_layout_version_are_refused_naming_lb_down() {
    // Maps of the same sizes whose contents a future layout (99) wrote.
    let value_99 = format!("99{}", " 0".repeat(23));
    refused_over_a_foreign_pin(
        "settings",
        |path| {
            vec![
                words(&format!("map create {path} type array key 4 value 24 entries 1 name SETTINGS")),
                words(&format!("map update pinned {path} key 0 0 0 0 value {value_99}")),
            ]
        },
        &["SETTINGS", "layout 99", "lb down"],
    );
}

#[test]
fn a_restart_replaces_the_program_of_every_link_and_unloads_the_old_ones() {
    use lb::dataplane::loader::{self, AttachPlan, IngressHook, LoadConfig, MapSizes};
    let topo = ClientNode::new().unwrap();
    let pins = PinDir::new();
    let cgroup = TestCgroup::new().unwrap();
    let plan = AttachPlan {
        pin_dir: pins.path().to_owned(),
        ifaces: vec![topo.node_if.clone()],
        cgroup: cgroup.path().to_owned(),
        load: LoadConfig { sizes: MapSizes { max_services: 8, ..MapSizes::default() }, ..LoadConfig::default() },
        ingress_hook: IngressHook::Tc,
        dsr: Default::default(),
    };
    let first = plan.clone();
    topo.node.run(move || drop(loader::bring_up(&first).unwrap())).unwrap();
    let before = pins.links();
    topo.node.run(move || drop(loader::bring_up(&plan).unwrap())).unwrap();
    let after = pins.links();
    assert_eq!(before.len(), after.len());
    for ((name, (link, prog)), (name_after, (link_after, prog_after))) in before.iter().zip(&after) {
        assert_eq!((name, link), (name_after, link_after), "every link stays: the hook was never empty");
        assert_ne!(prog, prog_after, "{name} runs a new program");
        let old = std::process::Command::new("bpftool").args(["prog", "show", "id", &prog.to_string()]).output().unwrap();
        assert!(!old.status.success(), "{name}'s old program {prog} is still loaded");
    }
}
