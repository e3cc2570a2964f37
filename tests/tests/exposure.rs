//! Where services are served (`lb run --expose`): packet tables on both uplink ingress hooks of a
//! node with a "public" and a "private" uplink, and real connections from a client on each side,
//! from local sockets, and across a Marathon label change.

use lb::node::{
    preflight::interface_index,
    serving::{Serving, Uplink},
};
use lb_common::Hook;
use lb_tests::{
    fixture::{Case, Fixture, INGRESS_HOOKS, XDP_PASS},
    netns::Netns,
    packet::{tcp, udp, v4, SYN},
};

/// An external VIP and service port, an internal VIP and service port, and a service port with
/// no group (the default group, internal). Backends are reached through the node's stack.
const SERVICES: &str = r#"{"services":[
  {"name":"ext-vip","address":"10.0.0.1","port":80,"group":"external","backends":[{"address":"10.1.0.5","port":31005}]},
  {"name":"ext-port","port":10000,"group":"external","backends":[{"address":"10.1.0.5","port":31000}]},
  {"name":"int-vip","address":"10.0.0.2","port":80,"group":"internal","backends":[{"address":"10.1.0.6","port":31006}]},
  {"name":"int-port","port":10001,"group":"internal","backends":[{"address":"10.1.0.6","port":31001}]},
  {"name":"int-port-udp","port":10001,"protocol":"udp","group":"internal","backends":[{"address":"10.1.0.6","port":31001}]},
  {"name":"no-group","port":10002,"backends":[{"address":"10.1.0.6","port":31002}]}]}"#;

const PUBLIC: [u8; 4] = [203, 0, 113, 2];
const PRIVATE: [u8; 4] = [10, 203, 0, 2];

/// A namespace with uplinks `pub0` (203.0.113.2/24) and `priv0` (10.203.0.2/24).
fn two_uplinks() -> Netns {
    let ns = Netns::new("lbx").unwrap();
    for (dev, cidr) in [("pub0", "203.0.113.2/24"), ("priv0", "10.203.0.2/24")] {
        ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &format!("{dev}p")]).unwrap();
        ns.ip(&["link", "set", &format!("{dev}p"), "up"]).unwrap();
        ns.addr(dev, cidr).unwrap();
    }
    ns
}

/// `--iface pub0 --iface priv0 --expose external=pub0 --expose internal=priv0`, in the calling
/// thread's namespace.
fn serving() -> Serving {
    let uplinks = ["pub0", "priv0"].map(|name| Uplink { name: name.into(), ifindex: interface_index(name).unwrap() });
    let entries = ["external=pub0", "internal=priv0"].iter().map(|e| e.parse().unwrap()).collect();
    let exposure = lb::control::exposure::Exposure::new(entries, "internal").unwrap();
    Serving::new(Vec::new(), uplinks.to_vec(), exposure)
}

fn iface(ifindex: u32, len: usize) -> Vec<(String, u64)> {
    vec![
        (format!("iface_stats{{ifindex={ifindex},hook={}}}.packets", Hook::XdpIngress), 1),
        (format!("iface_stats{{ifindex={ifindex},hook={}}}.bytes", Hook::XdpIngress), len as u64),
    ]
}

/// A new flow to `service` forwarded to `backend` (through the stack, destination rewritten).
fn served(name: &'static str, input: Vec<u8>, output: Vec<u8>, ifindex: u32, service: &str, backend: &str) -> Case {
    let len = input.len() as u64;
    let mut counters = vec![("verdict.fwd_local".to_string(), 1)];
    for what in [format!("service{{{service}}}"), format!("backend{{{backend}}}")] {
        counters.extend([(format!("{what}.packets"), 1), (format!("{what}.bytes"), len), (format!("{what}.new_flows"), 1)]);
    }
    counters.extend(iface(ifindex, input.len()));
    Case { name, input, verdict: XDP_PASS, output, counters }
}

/// Passed to the stack untouched, counted as not exposed.
fn not_exposed(name: &'static str, input: Vec<u8>, ifindex: u32) -> Case {
    let mut counters = iface(ifindex, input.len());
    counters.push(("verdict.not_exposed".to_string(), 1));
    Case { name, output: input.clone(), input, verdict: XDP_PASS, counters }
}

#[test]
fn each_group_is_balanced_only_where_it_is_exposed() {
    for hook in INGRESS_HOOKS {
        two_uplinks().run(move || each_group_is_balanced_only_where_it_is_exposed_on(hook)).unwrap();
    }
}

fn each_group_is_balanced_only_where_it_is_exposed_on(hook: Hook) {
    let (public, private) = (interface_index("pub0").unwrap(), interface_index("priv0").unwrap());
    let mut f = Fixture::load_hook(hook).unwrap();
    f.serve_as(serving());
    f.apply(SERVICES, &[]).unwrap();
    let client = v4(198, 51, 100, 7);
    let syn = |port: u16, to: [u8; 4], dport: u16| tcp((client, port), (v4(to[0], to[1], to[2], to[3]), dport), SYN, b"");
    let to_backend = |port: u16, backend: [u8; 4], bport: u16| tcp((client, port), (v4(backend[0], backend[1], backend[2], backend[3]), bport), SYN, b"");
    f.arrive_on(public).unwrap();
    f.run_table(&[
        served("an external vip on the public uplink", syn(40000, [10, 0, 0, 1], 80), to_backend(40000, [10, 1, 0, 5], 31005), public, "ext-vip", "10.1.0.5:31005"),
        served("an external service port on the public address", syn(40001, PUBLIC, 10000), to_backend(40001, [10, 1, 0, 5], 31000), public, "ext-port", "10.1.0.5:31000"),
        not_exposed("an internal vip on the public uplink", syn(40002, [10, 0, 0, 2], 80), public),
        not_exposed("an internal service port on the public address", syn(40003, PUBLIC, 10001), public),
        not_exposed("udp to it too", udp((client, 40003), (v4(203, 0, 113, 2), 10001), b"q"), public),
        not_exposed("the private address through the public uplink", syn(40004, PRIVATE, 10001), public),
        not_exposed("an app with no group: --default-group internal", syn(40005, PUBLIC, 10002), public),
    ]);
    f.arrive_on(private).unwrap();
    f.run_table(&[
        served("an internal vip on the private uplink", syn(40010, [10, 0, 0, 2], 80), to_backend(40010, [10, 1, 0, 6], 31006), private, "int-vip", "10.1.0.6:31006"),
        served("an internal service port on the private address", syn(40011, PRIVATE, 10001), to_backend(40011, [10, 1, 0, 6], 31001), private, "int-port", "10.1.0.6:31001"),
        served("no group is internal", syn(40012, PRIVATE, 10002), to_backend(40012, [10, 1, 0, 6], 31002), private, "no-group", "10.1.0.6:31002"),
        not_exposed("an external vip on the private uplink", syn(40013, [10, 0, 0, 1], 80), private),
        not_exposed("an external service port on the private address", syn(40014, PRIVATE, 10000), private),
        not_exposed("the public address through the private uplink", syn(40015, PUBLIC, 10001), private),
    ]);
}

mod connections {
    use std::{
        collections::BTreeMap,
        net::SocketAddr,
        time::{Duration, Instant},
    };

    use lb_tests::{
        agent::{lb, lb_ok, wait_for_services, Agent, PinDir, TestCgroup},
        marathon_server::{AppSpec, MarathonServer, TaskSpec},
        netns::{veth, LbTopology, Netns},
        servers::{connect_and_greet_within, tcp_echo, Server},
    };

    const PORT: u16 = 31000;

    /// The public side is LbTopology's client (10.201.0.1 → node 10.201.0.2); the private one
    /// a second client namespace on a second uplink (10.204.0.1 → node 10.204.0.2).
    struct Edge {
        topo: LbTopology,
        private: Netns,
        private_uplink: String,
        _servers: Vec<Server>,
    }

    impl Edge {
        fn new() -> Self {
            let topo = LbTopology::new(2).unwrap();
            let private = Netns::new("lbpv").unwrap();
            let (client_if, private_uplink) = veth(&private, &topo.node).unwrap();
            private.addr(&client_if, "10.204.0.1/24").unwrap();
            topo.node.addr(&private_uplink, "10.204.0.2/24").unwrap();
            private.route("10.0.0.0/24", "10.204.0.2".parse().unwrap()).unwrap();
            private.route("10.201.0.0/24", "10.204.0.2".parse().unwrap()).unwrap();
            topo.client.route("10.204.0.0/24", "10.201.0.2".parse().unwrap()).unwrap();
            let servers = (0..2).map(|i| tcp_echo(&topo.backends[i], SocketAddr::new(LbTopology::backend_ip(i), PORT), &format!("backend-{i}")).unwrap()).collect();
            Self { topo, private, private_uplink, _servers: servers }
        }

        /// Whether a connection from the public (or private) client to `addr` reaches a backend.
        fn reaches(&self, private: bool, addr: &str) -> bool {
            let addr: SocketAddr = addr.parse().unwrap();
            let ns = if private { &self.private } else { &self.topo.client };
            ns.run(move || connect_and_greet_within(addr, Duration::from_secs(1)).is_ok()).unwrap()
        }
    }

    fn app(id: &str, service_port: u16, vip: &str, group: &str) -> AppSpec {
        let mut app = AppSpec::new(id, service_port);
        app.labels.insert("VIP_0".into(), vip.into());
        app.app_labels.insert("HAPROXY_GROUP".into(), group.into());
        let task = |i: usize| TaskSpec { id: format!("{}.t{i}", &id[1..]), host: LbTopology::backend_ip(i).to_string(), port: PORT, state: "TASK_RUNNING".into(), alive: Some(true) };
        app.tasks = vec![task(0), task(1)];
        app
    }

    fn not_exposed_count(pins: &PinDir, edge: &Edge) -> u64 {
        let stats: serde_json::Value = serde_json::from_str(&lb_ok(Some(&edge.topo.node), &["stats", "--json", "--pin-dir", &pins.arg()]).unwrap()).unwrap();
        stats["verdicts"]["not_exposed"].as_u64().unwrap()
    }

    /// Waits (at most 10 s) until `ready` holds.
    fn eventually(what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn an_internal_app_is_refused_on_the_public_uplink_and_moves_with_its_label() {
        let edge = Edge::new();
        let marathon = MarathonServer::start(Some(&edge.topo.node), Duration::from_secs(2)).unwrap();
        marathon.set_apps(vec![app("/ext", 10000, "10.0.0.1:80", "external"), app("/int", 10001, "10.0.0.2:80", "internal")]);
        let (pins, cgroup, url) = (PinDir::new(), TestCgroup::new().unwrap(), marathon.url());
        let (public_if, private_if) = (edge.topo.uplink.clone(), edge.private_uplink.clone());
        let (ext, int) = (format!("external={public_if}"), format!("internal={private_if},127.0.0.1"));
        let args = [
            "--marathon", &url, "--iface", &public_if, "--iface", &private_if, "--pin-dir", &pins.arg(),
            "--cgroup", &cgroup.arg(), "--expose", &ext, "--expose", &int,
        ];
        let _agent = Agent::start(&edge.topo.node, &args).unwrap();
        let services = wait_for_services(&pins, |j| j.as_array().is_some_and(|a| a.len() >= 4)).unwrap();
        // lb services shows each service's groups and where it is served.
        let int_port = services.as_array().unwrap().iter().find(|s| s["name"] == "/int:0" && s["protocol"] == "tcp").unwrap();
        assert_eq!(int_port["groups"], serde_json::json!(["internal"]), "{int_port}");
        let served_on: Vec<&str> = int_port["served_on"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(served_on.contains(&"10.204.0.2") && !served_on.contains(&"10.201.0.2"), "{served_on:?}");
        let ext_vip = services.as_array().unwrap().iter().find(|s| s["address"] == "10.0.0.1").unwrap();
        assert_eq!((&ext_vip["groups"], &ext_vip["served_on"]), (&serde_json::json!(["external"]), &serde_json::json!([public_if])));

        // From the public side: only the external app.
        assert!(edge.reaches(false, "10.0.0.1:80") && edge.reaches(false, "10.201.0.2:10000"));
        let before = not_exposed_count(&pins, &edge);
        for addr in ["10.201.0.2:10001", "10.0.0.2:80", "10.204.0.2:10001"] {
            assert!(!edge.reaches(false, addr), "{addr} from the public side");
        }
        assert!(not_exposed_count(&pins, &edge) >= before + 3, "each counted as not exposed");
        // From the private side: only the internal app.
        assert!(edge.reaches(true, "10.0.0.2:80") && edge.reaches(true, "10.204.0.2:10001"));
        for addr in ["10.0.0.1:80", "10.204.0.2:10000", "10.201.0.2:10001"] {
            assert!(!edge.reaches(true, addr), "{addr} from the private side");
        }
        // Local clients reach every group.
        for addr in ["127.0.0.1:10001", "10.201.0.2:10001", "10.0.0.2:80"] {
            let served = probe(&edge, &cgroup, addr);
            assert_eq!(served.values().sum::<usize>(), 10, "{addr} from a local socket: {served:?}");
        }
        // lb explain names the reason on the public uplink.
        let explained = lb_ok(Some(&edge.topo.node), &["explain", "tcp", "10.201.0.1:40000", "10.201.0.2:10001", "--via", &public_if, "--pin-dir", &pins.arg()]).unwrap();
        assert!(explained.contains("not exposed on"), "{explained}");

        // An address added to the private uplink serves the internal app within a tick.
        edge.topo.node.addr(&private_if, "10.204.0.3/24").unwrap();
        eventually("a new private address", || edge.reaches(true, "10.204.0.3:10001"));
        assert!(!edge.reaches(true, "10.204.0.3:10000"), "and not the external one");

        // The app is relabelled external: it moves to the public side without a restart.
        marathon.update("/int", |a| {
            a.app_labels.insert("HAPROXY_GROUP".into(), "external".into());
        });
        eventually("the relabelled app on the public side", || edge.reaches(false, "10.201.0.2:10001"));
        assert!(!edge.reaches(true, "10.204.0.2:10001"), "and off the private side");
    }

    /// Ten connections from a socket on the node inside the agent's cgroup (lb-probe).
    fn probe(edge: &Edge, cgroup: &TestCgroup, addr: &str) -> BTreeMap<String, usize> {
        let mut cmd = edge.topo.node.command(env!("CARGO_BIN_EXE_lb-probe"));
        cmd.args(["tcp", addr, "10"]);
        let out = cgroup.command(cmd).output().unwrap();
        assert!(out.status.success(), "lb-probe {addr}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[test]
    fn expose_entries_that_cannot_work_are_refused_naming_them() {
        let topo = LbTopology::new(0).unwrap();
        let pins = PinDir::new();
        let file = lb_tests::agent::TempFile::new(r#"{"services":[]}"#).unwrap();
        let run = |expose: &str| {
            let args = ["run", "--check", "--iface", &topo.uplink, "--pin-dir", &pins.arg(), "--services", &file.arg(), "--expose", expose];
            lb(Some(&topo.node), &args).unwrap()
        };
        for (expose, says) in [
            ("internal=nosuch0", "there is no interface nosuch0"),
            ("internal=lo", "lo is not an uplink: add --iface lo"),
            ("internal", "expected GROUP=ADDR|IFACE"),
            ("in ternal=lo", "is not a group name"),
        ] {
            let out = run(expose);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "--expose {expose}: {stderr}");
            assert!(stderr.contains(says), "--expose {expose}: {stderr}");
        }
        assert_eq!(run(&format!("external={}", topo.uplink)).status.code(), Some(0));
    }
}
