//! The data path end to end: a client namespace, a node namespace running `lb run` on its uplink
//! (balancing in XDP or TC ingress: the forwarding tests run on both), and backend namespaces
//! with real TCP and UDP servers.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use lb_tests::{
    agent::{lb_ok, wait_for_services, Agent, PinDir, TempDir, TempFile, TestCgroup},
    netns::LbTopology,
    servers::{backend_spread, connect_and_greet, connect_from_and_greet, echo_round_trip, http_get, tcp_echo, udp_echo, ConnectionProber, Server},
};

const VIP: &str = "10.0.0.1";
const VIP6: &str = "fd00::80";
const BACKEND_PORT: u16 = 31000;

/// A services file with a TCP VIP, a UDP VIP (port 53), a TCP service port (10000) and an IPv6
/// TCP VIP, all over backends `active` (index, weight).
fn services(backends: &[(usize, u32)]) -> String {
    let list = |v6: bool| {
        backends
            .iter()
            .map(|&(i, w)| {
                let ip = if v6 { LbTopology::backend_ip6(i) } else { LbTopology::backend_ip(i) };
                format!(r#"{{"address":"{ip}","port":{BACKEND_PORT},"weight":{w}}}"#)
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"services":[
          {{"name":"web","address":"{VIP}","port":80,"protocol":"tcp","backends":[{b4}]}},
          {{"name":"dns","address":"{VIP}","port":53,"protocol":"udp","backends":[{b4}]}},
          {{"name":"app","port":10000,"protocol":"tcp","backends":[{b4}]}},
          {{"name":"web6","address":"{VIP6}","port":80,"protocol":"tcp","backends":[{b6}]}}]}}"#,
        b4 = list(false),
        b6 = list(true)
    )
}

struct Cluster {
    topo: LbTopology,
    pins: PinDir,
    cgroup: TestCgroup,
    file: TempFile,
    agent: Option<Agent>,
    /// `--ingress-hook` of the agent.
    hook: &'static str,
    /// Flags added to the agent's.
    extra_args: Vec<&'static str>,
    _servers: Vec<Server>,
}

/// The ingress hooks the forwarding tests run on.
const HOOKS: [&str; 2] = ["xdp", "tc"];

impl Cluster {
    fn new(backends: usize) -> Self {
        Self::with_hook(backends, "auto")
    }

    fn with_hook(backends: usize, hook: &'static str) -> Self {
        Self::with_args(backends, hook, &[])
    }

    fn with_args(backends: usize, hook: &'static str, extra_args: &[&'static str]) -> Self {
        let topo = LbTopology::new(backends).unwrap();
        let mut servers = Vec::new();
        for i in 0..backends {
            servers.extend(start_servers(&topo, i));
        }
        let pins = PinDir::new();
        let all: Vec<(usize, u32)> = (0..backends).map(|i| (i, 1)).collect();
        let file = TempFile::new(&services(&all)).unwrap();
        let cgroup = TestCgroup::new().unwrap();
        let mut cluster = Self { topo, pins, cgroup, file, agent: None, hook, extra_args: extra_args.to_vec(), _servers: servers };
        cluster.start_agent();
        cluster
    }

    fn start_agent(&mut self) {
        let args = [
            "--iface", &self.topo.uplink,
            "--pin-dir", &self.pins.arg(),
            "--services", &self.file.arg(),
            "--node-ip", "10.201.0.2",
            "--node-ip", "fd00:201::2",
            "--ring-slots", "262144",
            "--max-services", "64",
            "--cgroup", &self.cgroup.arg(),
            "--ingress-hook", self.hook,
        ];
        let args: Vec<&str> = args.into_iter().chain(self.extra_args.iter().copied()).collect();
        self.agent = Some(Agent::start(&self.topo.node, &args).unwrap());
    }

    /// Rewrites the services file, signals the agent and waits until the maps show `count`
    /// backends for the web service.
    fn set_backends(&self, backends: &[(usize, u32)]) {
        self.file.replace(&services(backends)).unwrap();
        self.agent.as_ref().unwrap().sighup();
        let want = backends.len();
        let want_active = backends.iter().filter(|b| b.1 > 0).count();
        wait_for_services(&self.pins, |json| {
            json.as_array().unwrap().iter().filter(|s| s["name"] == "web").all(|s| {
                let b = s["backends"].as_array().unwrap();
                b.len() == want && b.iter().filter(|x| x["state"] == "active").count() == want_active
            })
        })
        .unwrap();
    }
}

fn start_servers(topo: &LbTopology, i: usize) -> Vec<Server> {
    let name = format!("backend-{i}");
    vec![
        tcp_echo(&topo.backends[i], SocketAddr::new(LbTopology::backend_ip(i), BACKEND_PORT), &name).unwrap(),
        tcp_echo(&topo.backends[i], SocketAddr::new(LbTopology::backend_ip6(i), BACKEND_PORT), &name).unwrap(),
        udp_echo(&topo.backends[i], SocketAddr::new(LbTopology::backend_ip(i), BACKEND_PORT), &name).unwrap(),
    ]
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), port)
}

/// Opens `count` connections to `addr` from the client namespace and returns how many reached
/// each backend.
fn spread(cluster: &Cluster, addr: SocketAddr, count: usize) -> BTreeMap<String, usize> {
    backend_spread(&cluster.topo.client, addr, count).unwrap()
}

/// Every backend got its share within 5 standard deviations of a fair draw (connections hash
/// like independent draws: a binomial with p = 1/backends). A ±3.7σ bound (±30% of 300) failed a
/// CI run about once per thousand spreads by chance; 5σ does so once per ~1.7 million, and still
/// fails a backend getting nothing or twice its share (300 connections over 3: fair 100 ± 41).
fn assert_fair(per_backend: &BTreeMap<String, usize>, backends: usize, total: usize) {
    assert_eq!(per_backend.len(), backends, "{per_backend:?}");
    let p = 1.0 / backends as f64;
    let fair = total as f64 * p;
    let allowed = 5.0 * (total as f64 * p * (1.0 - p)).sqrt();
    for (name, &n) in per_backend {
        assert!((n as f64 - fair).abs() <= allowed, "{name} got {n} of {total} (fair {fair:.0} ± {allowed:.0}): {per_backend:?}");
    }
}

#[test]
fn tcp_connections_spread_evenly_over_backends() {
    for hook in HOOKS {
        let cluster = Cluster::with_hook(3, hook);
        let per_backend = spread(&cluster, vip(80), 300);
        assert_fair(&per_backend, 3, 300);
        // The same through the service port on the node's address.
        let per_backend = spread(&cluster, SocketAddr::new(cluster.topo.node_ip, 10000), 300);
        assert_fair(&per_backend, 3, 300);
        // And the hook asked for did the balancing.
        let ingress = ingress_packets(&cluster);
        assert!(ingress[&format!("{hook}_ingress")] >= 1800, "{hook}: {ingress:?}");
        assert_eq!(ingress.len(), 1, "{hook}: {ingress:?}");
    }
}

/// Packets counted per ingress hook name (`xdp_ingress`, `tc_ingress`), all interfaces.
fn ingress_packets(cluster: &Cluster) -> BTreeMap<String, u64> {
    let out = lb_ok(None, &["stats", "--json", "--pin-dir", &cluster.pins.arg()]).unwrap();
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut per_hook = BTreeMap::new();
    for iface in stats["interfaces"].as_array().unwrap() {
        let hook = iface["hook"].as_str().unwrap();
        if hook.ends_with("_ingress") {
            *per_hook.entry(hook.to_string()).or_insert(0) += iface["packets"].as_u64().unwrap();
        }
    }
    per_hook
}

#[test]
fn bpftool_prints_service_and_backend_maps_with_field_names() {
    let cluster = Cluster::new(1);
    let dump = |map: &str| {
        let out = std::process::Command::new("bpftool").args(["map", "dump", "pinned"]).arg(cluster.pins.path().join(map)).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let services = dump("services");
    for field in ["\"addr\"", "\"port\": 80", "\"proto\": 6", "\"service_id\"", "\"ring_start\"", "\"ring_size\": 127", "\"active_backends\": 1"] {
        assert!(services.contains(field), "services dump lacks {field}:\n{services}");
    }
    let backends = dump("backends");
    assert!(backends.contains("\"port\": 31000") && backends.contains("\"state\": 1"), "{backends}");
}

#[test]
fn ipv6_end_to_end() {
    for hook in HOOKS {
        let cluster = Cluster::with_hook(3, hook);
        let per_backend = spread(&cluster, SocketAddr::new(VIP6.parse().unwrap(), 80), 300);
        assert_fair(&per_backend, 3, 300);
    }
}

/// With veth offloads on, senders hand the node CHECKSUM_PARTIAL and 64 KiB GSO skbs: the TC
/// rewrite must keep them valid (bulk transfers, both families), and XDP must cope too.
#[test]
fn offloaded_gso_traffic_is_balanced_on_both_hooks() {
    for hook in HOOKS {
        let cluster = Cluster::with_hook(3, hook);
        cluster.topo.set_offloads(true).unwrap();
        assert_fair(&spread(&cluster, vip(80), 300), 3, 300);
        assert_fair(&spread(&cluster, SocketAddr::new(VIP6.parse().unwrap(), 80), 300), 3, 300);
        let (mut stream, name) = open(&cluster, 1).pop().unwrap();
        let chunk = vec![0xa5; 256 * 1024];
        for _ in 0..16 {
            echo_round_trip(&mut stream, &chunk).unwrap_or_else(|e| panic!("{hook}: 4 MiB through {name} broke: {e}"));
        }
    }
}

#[test]
fn lb_flows_lists_pinned_connections_of_both_families() {
    let cluster = Cluster::new(3);
    spread(&cluster, vip(80), 10);
    spread(&cluster, SocketAddr::new(VIP6.parse().unwrap(), 80), 10);
    let out = lb_ok(None, &["flows", "--json", "--pin-dir", &cluster.pins.arg()]).unwrap();
    let flows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for (service, client) in [(VIP, cluster.topo.client_ip.to_string()), (VIP6, cluster.topo.client_ip6.to_string())] {
        let matching: Vec<_> = flows.iter().filter(|f| f["service"] == service && f["service_port"] == 80).collect();
        assert!(matching.len() >= 10, "{service}: {} flows in {out}", matching.len());
        for f in matching {
            assert_eq!(f["client"], client.as_str(), "{f}");
            assert_eq!(f["protocol"], "tcp", "{f}");
            assert_eq!(f["backend_port"], BACKEND_PORT, "{f}");
        }
    }
}

#[test]
fn udp_replies_come_back_from_the_vip() {
    for hook in HOOKS {
        udp_replies_come_back_from_the_vip_on(hook);
    }
}

fn udp_replies_come_back_from_the_vip_on(hook: &'static str) {
    let cluster = Cluster::with_hook(3, hook);
    let answers = cluster
        .topo
        .client
        .run(|| {
            let mut per_backend = BTreeMap::new();
            for i in 0..300 {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                sock.send_to(format!("q{i}").as_bytes(), vip(53)).unwrap();
                let mut buf = [0u8; 512];
                let (n, from) = sock.recv_from(&mut buf).expect("udp answer");
                assert_eq!(from, vip(53), "the answer must come from the VIP");
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (name, echo) = text.split_once(':').unwrap();
                assert_eq!(echo, format!("q{i}"));
                *per_backend.entry(name.to_string()).or_insert(0) += 1;
            }
            per_backend
        })
        .unwrap();
    assert_fair(&answers, 3, 300);
}

/// Opens `count` long-lived connections from the client namespace; returns them with their
/// backend's name.
fn open(cluster: &Cluster, count: usize) -> Vec<(std::net::TcpStream, String)> {
    cluster.topo.client.run(move || (0..count).map(|_| connect_and_greet(vip(80)).unwrap()).collect()).unwrap()
}

/// Every connection still echoes through its backend.
fn all_alive(conns: Vec<(std::net::TcpStream, String)>, skip_backend: Option<&str>) -> Vec<(std::net::TcpStream, String)> {
    conns
        .into_iter()
        .map(|(mut stream, name)| {
            if Some(name.as_str()) != skip_backend {
                echo_round_trip(&mut stream, format!("still {name}").as_bytes())
                    .unwrap_or_else(|e| panic!("connection to {name} broke: {e}"));
            }
            (stream, name)
        })
        .collect()
}

#[test]
fn removing_a_backend_breaks_no_connection_on_the_others() {
    let cluster = Cluster::new(3);
    let conns = open(&cluster, 30);
    cluster.set_backends(&[(0, 1), (1, 1)]);
    let conns = all_alive(conns, Some("backend-2"));
    // New connections avoid the removed backend.
    let per_backend = spread(&cluster, vip(80), 60);
    assert!(!per_backend.contains_key("backend-2"), "{per_backend:?}");
    drop(conns);
}

#[test]
fn adding_a_backend_moves_no_established_connection() {
    let mut cluster = Cluster::new(3);
    let conns = open(&cluster, 30);
    let i = cluster.topo.add_backend().unwrap();
    let servers = start_servers(&cluster.topo, i);
    cluster.set_backends(&[(0, 1), (1, 1), (2, 1), (3, 1)]);
    // The echo carries no name, but a moved connection would hit a backend with no socket for
    // it and be reset: every echo succeeding means every connection stayed.
    let conns = all_alive(conns, None);
    let per_backend = spread(&cluster, vip(80), 200);
    assert!(per_backend.contains_key("backend-3"), "new backend takes new flows: {per_backend:?}");
    drop((conns, servers));
}

#[test]
fn draining_backend_keeps_its_connections_and_gets_no_new_ones() {
    let cluster = Cluster::new(3);
    let conns = open(&cluster, 30);
    assert!(conns.iter().any(|c| c.1 == "backend-1"));
    cluster.set_backends(&[(0, 1), (1, 0), (2, 1)]);
    let conns = all_alive(conns, None);
    let per_backend = spread(&cluster, vip(80), 60);
    assert!(!per_backend.contains_key("backend-1"), "{per_backend:?}");
    drop(conns);
}

/// A service whose only backend drains keeps that backend's connections but refuses new ones at
/// once (TCP and UDP, IPv4 and IPv6, from the network and from local sockets), and once the
/// backend is gone its connection is reset instead of hanging.
#[test]
fn an_empty_service_refuses_new_connections_at_once() {
    for hook in HOOKS {
        an_empty_service_refuses_new_connections_at_once_on(hook);
    }
}

fn an_empty_service_refuses_new_connections_at_once_on(hook: &'static str) {
    let cluster = Cluster::with_hook(1, hook);
    // Refusals leave with XDP_TX, which a veth delivers only while its peer runs XDP (as a NIC's
    // wire would take them): a pass-only program on the client's end.
    let client_if = cluster.topo.client_if.clone();
    let _client_xdp = cluster.topo.client.run(move || lb::dataplane::loader::attach_xdp_pass(&client_if)).unwrap().unwrap();
    let mut conns = open(&cluster, 1);
    cluster.set_backends(&[(0, 0)]);
    let vip6 = SocketAddr::new(VIP6.parse().unwrap(), 80);
    let refusals = cluster
        .topo
        .client
        .run(move || {
            // A dropped SYN would time out; a refused one fails well within the timeout.
            let tcp = |addr| TcpStream::connect_timeout(&addr, Duration::from_millis(100)).map(drop).map_err(|e| e.kind());
            let udp = || -> std::io::Result<usize> {
                let sock = UdpSocket::bind("0.0.0.0:0")?;
                sock.set_read_timeout(Some(Duration::from_secs(2)))?;
                sock.connect(vip(53))?;
                sock.send(b"query")?;
                // The port unreachable comes back as ECONNREFUSED on a connected socket.
                sock.recv(&mut [0u8; 64])
            };
            (tcp(vip(80)), tcp(vip6), udp().map_err(|e| e.kind()))
        })
        .unwrap();
    let stats = || -> serde_json::Value {
        serde_json::from_str(&lb_ok(None, &["stats", "--json", "--pin-dir", &cluster.pins.arg()]).unwrap()).unwrap()
    };
    let refused = Err(std::io::ErrorKind::ConnectionRefused);
    let verdicts = &stats()["verdicts"];
    assert_eq!(refusals, (refused, refused, refused.map(|()| 0usize)), "tcp, tcp over IPv6, udp ({hook}): {verdicts}");
    let local = probe(&cluster, true, "tcp", "10.0.0.1:80", 1).unwrap_err();
    assert!(local.contains("refused"), "local connect: {local}");
    let verdicts = &stats()["verdicts"];
    assert_eq!(verdicts["no_backend_rejected"], 4, "{verdicts}");

    conns = all_alive(conns, None);
    cluster.set_backends(&[]);
    let (mut stream, _) = conns.pop().unwrap();
    let gone = echo_round_trip(&mut stream, b"after removal").unwrap_err();
    assert_eq!(gone.kind(), std::io::ErrorKind::ConnectionReset, "{gone}");
}

#[test]
fn restarting_the_agent_during_a_transfer_drops_nothing() {
    let mut cluster = Cluster::new(3);
    let (mut stream, name) = open(&cluster, 1).pop().unwrap();
    let transfer = std::thread::spawn(move || {
        let chunk = vec![0x5a; 64 * 1024];
        for _ in 0..160 {
            echo_round_trip(&mut stream, &chunk).unwrap_or_else(|e| panic!("transfer to {name} broke: {e}"));
        }
        160 * chunk.len()
    });
    std::thread::sleep(Duration::from_millis(50));
    let status = cluster.agent.take().unwrap().stop().unwrap();
    assert!(status.success());
    cluster.start_agent();
    assert_eq!(transfer.join().expect("transfer"), 10 * 1024 * 1024);
}

#[test]
fn an_agent_killed_under_load_and_restarted_breaks_no_connection() {
    let mut cluster = Cluster::new(3);
    let conns = open(&cluster, 30);
    let (mut stream, name) = open(&cluster, 1).pop().unwrap();
    let transfer = std::thread::spawn(move || {
        let chunk = vec![0xa5; 64 * 1024];
        for _ in 0..320 {
            echo_round_trip(&mut stream, &chunk).unwrap_or_else(|e| panic!("transfer to {name} broke: {e}"));
        }
    });
    let prober = ConnectionProber::start(&cluster.topo.client, vip(80), Duration::from_millis(10)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let killed = cluster.agent.take().unwrap().kill().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed), Some(libc::SIGKILL));
    // No agent: the pinned programs and maps go on balancing.
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_agent();
    std::thread::sleep(Duration::from_millis(300));
    let report = prober.finish();
    assert!(report.failed == 0 && report.ok > 50 && report.per_backend.len() == 3, "{report:?}");
    transfer.join().expect("the transfer ran through the kill and the restart");
    all_alive(conns, None);
}

#[test]
fn a_full_flow_table_evicts_flows_that_re_pin_to_their_backend() {
    // 1,024 entries per table, 3,000 connections held: most flows are evicted while open.
    const MAX_FLOWS: usize = 1024;
    const CONNECTIONS: usize = 3000;
    let cluster = Cluster::with_args(3, "auto", &["--max-flows", "1024"]);
    let conns = open(&cluster, CONNECTIONS);
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for (_, name) in &conns {
        *per_backend.entry(name.clone()).or_default() += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    // Every connection, evicted or not, still reaches the backend that greeted it, twice over.
    let conns = all_alive(all_alive(conns, None), None);
    let flows: serde_json::Value = serde_json::from_str(&lb_ok(None, &["flows", "--json", "--pin-dir", &cluster.pins.arg()]).unwrap()).unwrap();
    let flows = flows.as_array().unwrap().len();
    assert!(flows <= MAX_FLOWS, "{flows} flows in a {MAX_FLOWS}-entry table");
    let stats: serde_json::Value = serde_json::from_str(&lb_ok(None, &["stats", "--json", "--pin-dir", &cluster.pins.arg()]).unwrap()).unwrap();
    let web = stats["services"].as_array().unwrap().iter().find(|s| s["name"] == "web").unwrap();
    // Re-pinned flows count as new flows: more than the connections opened.
    assert!(web["new_flows"].as_u64().unwrap() as usize > CONNECTIONS, "{web}");
    drop(conns);
}

#[test]
fn a_restart_with_the_other_ingress_hook_replaces_it_without_breaking_connections() {
    let mut cluster = Cluster::with_hook(3, "xdp");
    let links = cluster.pins.path().join("links");
    let (xdp_link, tc_link) = (links.join(format!("xdp@{}", cluster.topo.uplink)), links.join(format!("tc_ingress@{}", cluster.topo.uplink)));
    assert!(xdp_link.exists() && !tc_link.exists());
    let conns = open(&cluster, 30);
    assert!(cluster.agent.take().unwrap().stop().unwrap().success());
    cluster.hook = "tc";
    cluster.start_agent();
    assert!(tc_link.exists() && !xdp_link.exists(), "the TC link replaces the XDP one");
    let status: serde_json::Value = serde_json::from_str(&lb_ok(None, &["status", "--json", "--pin-dir", &cluster.pins.arg()]).unwrap()).unwrap();
    assert_eq!(status["uplinks"][0]["name"], cluster.topo.uplink.as_str(), "{status}");
    assert_eq!(status["uplinks"][0]["ingress_hook"], "tc_ingress", "{status}");
    let before = ingress_packets(&cluster);
    let conns = all_alive(conns, None);
    assert_eq!(conns.len(), 30);
    let after = ingress_packets(&cluster);
    assert!(after["tc_ingress"] > before.get("tc_ingress").copied().unwrap_or(0), "{before:?} → {after:?}");
    assert_eq!(after.get("xdp_ingress"), before.get("xdp_ingress"), "XDP no longer sees packets");
}

/// Runs lb-probe in the node namespace, inside the agent's cgroup or not.
fn probe(cluster: &Cluster, in_cgroup: bool, mode: &str, addr: &str, count: usize) -> Result<BTreeMap<String, usize>, String> {
    let mut cmd = cluster.topo.node.command(env!("CARGO_BIN_EXE_lb-probe"));
    cmd.args([mode, addr, &count.to_string()]);
    if in_cgroup {
        cmd = cluster.cgroup.command(cmd);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn local_clients_in_the_cgroup_reach_backends_through_service_port_and_vip() {
    let cluster = Cluster::new(3);
    assert_fair(&probe(&cluster, true, "tcp", "127.0.0.1:10000", 300).unwrap(), 3, 300);
    assert_fair(&probe(&cluster, true, "tcp", "10.0.0.1:80", 300).unwrap(), 3, 300);
    assert_fair(&probe(&cluster, true, "tcp", "10.201.0.2:10000", 300).unwrap(), 3, 300);
    let udp = probe(&cluster, true, "udp", "10.0.0.1:53", 60).unwrap();
    assert_eq!(udp.values().sum::<usize>(), 60, "{udp:?}");
    let v6 = probe(&cluster, true, "tcp", "[fd00::80]:80", 60).unwrap();
    assert_eq!(v6.values().sum::<usize>(), 60, "{v6:?}");
    // Dual-stack sockets reach IPv4 services through connect6/sendmsg6 with IPv4-mapped
    // addresses; getpeername must show the mapped service address again (lb-probe checks).
    assert_fair(&probe(&cluster, true, "tcp", "[::ffff:10.0.0.1]:80", 300).unwrap(), 3, 300);
    let mapped_udp = probe(&cluster, true, "udp", "[::ffff:10.0.0.1]:53", 30).unwrap();
    assert_eq!(mapped_udp.values().sum::<usize>(), 30, "{mapped_udp:?}");

    let stats: serde_json::Value =
        serde_json::from_str(&lb_ok(None, &["stats", "--json", "--pin-dir", &cluster.pins.arg()]).unwrap()).unwrap();
    assert!(stats["verdicts"]["fwd_socket"].as_u64().unwrap() >= 1350, "{}", stats["verdicts"]);
    assert!(stats["verdicts"]["socket_reply_rewritten"].as_u64().unwrap() >= 1290, "{}", stats["verdicts"]);

    // Outside the cgroup nothing is rewritten: nothing listens on the node's 127.0.0.1:10000.
    let outside = probe(&cluster, false, "tcp", "127.0.0.1:10000", 1).unwrap_err();
    assert!(outside.contains("refused"), "{outside}");
}

#[test]
fn an_invalid_services_file_changes_nothing() {
    let cluster = Cluster::new(3);
    let before = lb_ok(None, &["services", "--json", "--pin-dir", &cluster.pins.arg()]).unwrap();
    cluster.file.replace(r#"{"services":[{"name":"web","address":"10.0.0.1","port":80,"backends":[{"address":"10.210.0.x","port":1}]}]}"#).unwrap();
    cluster.agent.as_ref().unwrap().sighup();
    std::thread::sleep(Duration::from_millis(300));
    let after = lb_ok(None, &["services", "--json", "--pin-dir", &cluster.pins.arg()]).unwrap();
    assert_eq!(before, after);
    assert_fair(&spread(&cluster, vip(80), 300), 3, 300);
}

#[test]
fn an_invalid_services_file_at_start_is_refused_naming_service_and_field() {
    let topo = LbTopology::new(1).unwrap();
    let pins = PinDir::new();
    let file = TempFile::new(r#"{"services":[{"name":"web","address":"10.0.0.1","port":80,"backends":[{"address":"10.210.0.2","port":0}]}]}"#).unwrap();
    let out = lb_tests::agent::lb(
        Some(&topo.node),
        &["run", "--iface", &topo.uplink, "--pin-dir", &pins.arg(), "--services", &file.arg()],
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(r#"service 0 ("web"): backends[0].port: 0 is not a port"#), "{stderr}");
    assert!(!pins.path().exists(), "nothing may be pinned");
}

/// `lb explain tcp CLIENT SERVICE --json` for this cluster's maps.
fn explain(cluster: &Cluster, client: SocketAddr, service: SocketAddr) -> serde_json::Value {
    let out = lb_ok(None, &["explain", "--json", "--pin-dir", &cluster.pins.arg(), "tcp", &client.to_string(), &service.to_string()]).unwrap();
    serde_json::from_str(&out).unwrap()
}

#[test]
fn explain_names_the_backend_that_real_connections_reach() {
    let cluster = Cluster::new(3);
    let name_of = |address: &serde_json::Value| {
        let ip: std::net::IpAddr = address.as_str().unwrap().parse().unwrap();
        format!("backend-{}", (0..3).find(|&i| LbTopology::backend_ip(i) == ip).unwrap())
    };
    let mut reached = BTreeMap::new();
    for port in 43000..43050u16 {
        let from = SocketAddr::new(cluster.topo.client_ip, port);
        let before = explain(&cluster, from, vip(80));
        assert_eq!((&before["flow"], &before["service_name"]), (&"new".into(), &"web".into()), "{before}");
        let expected = name_of(&before["backend"]["address"]);
        let (stream, name) = cluster.topo.client.run(move || connect_from_and_greet(from, vip(80))).unwrap().unwrap();
        assert_eq!(name, expected, "source port {port}: {before}");
        let after = explain(&cluster, from, vip(80));
        assert_eq!((&after["flow"], &after["backend"]), (&"existing".into(), &before["backend"]), "{after}");
        drop(stream);
        *reached.entry(name).or_insert(0) += 1;
    }
    assert_eq!(reached.len(), 3, "50 source ports spread over every backend: {reached:?}");
}

/// The value of the Prometheus series `series` (name and labels exactly as exposed).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn metrics_move_with_real_traffic_and_the_status_page_lists_the_services() {
    let cluster = Cluster::new(3);
    let at: SocketAddr = "127.0.0.1:9097".parse().unwrap();
    let scrape = || {
        let (status, text) = http_get(&cluster.topo.node, at, "/metrics").unwrap();
        assert_eq!(status, 200, "{text}");
        text
    };
    let web = r#"{service="web",address="10.0.0.1:80",protocol="tcp"}"#;
    let before = scrape();
    let spread = spread(&cluster, vip(80), 30);
    let after = scrape();
    assert_eq!(metric(&after, &format!("lb_service_new_flows_total{web}")) - metric(&before, &format!("lb_service_new_flows_total{web}")), 30);
    assert!(metric(&after, "lb_packets_total{outcome=\"fwd_local\"}") >= metric(&before, "lb_packets_total{outcome=\"fwd_local\"}") + 30 * 3);
    // Per backend, the new flows are the connections each greeted.
    for (i, (name, count)) in spread.iter().enumerate() {
        assert_eq!(name, &format!("backend-{i}"));
        let series = format!("lb_backend_new_flows_total{{service=\"web\",address=\"10.0.0.1:80\",protocol=\"tcp\",backend=\"{}:{BACKEND_PORT}\"}}", LbTopology::backend_ip(i));
        assert_eq!(metric(&after, &series) - metric(&before, &series), *count as u64, "{series}");
    }
    assert_eq!(metric(&after, "lb_backends{state=\"active\"}"), 12, "3 backends in each of 4 services");
    assert_eq!(metric(&after, "lb_flow_table_capacity{table=\"flows4\"}"), lb_common::DEFAULT_MAX_FLOWS as u64);
    assert!(metric(&after, "lb_flow_table_entries{table=\"flows4\"}") >= 30);

    let (status, page) = http_get(&cluster.topo.node, at, "/").unwrap();
    assert_eq!(status, 200);
    for needle in ["10.0.0.1:80", "web", "dns", "[fd00::80]:80", "backend", "fwd_local", "refresh"] {
        assert!(page.contains(needle), "status page lacks {needle}:\n{page}");
    }
    assert_eq!(http_get(&cluster.topo.node, at, "/nothing").unwrap().0, 404);
}

#[test]
fn the_status_page_renders_in_a_headless_browser() {
    let cluster = Cluster::new(2);
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = TempDir::new("lb-chromium-");
    let out = cluster
        .topo
        .node
        .command("timeout")
        .args(["60", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,900"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("http://127.0.0.1:9097/")
        .output()
        .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a rendered page, kept at {}", shot.display());
}

#[test]
fn output_closed_early_is_not_an_error() {
    let cluster = Cluster::new(1);
    for args in [&["services"][..], &["services", "--json"], &["stats", "--json"], &["flows"]] {
        let mut child = std::process::Command::new(lb_tests::agent::lb_bin())
            .args(args)
            .args(["--pin-dir", &cluster.pins.arg()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before lb writes a byte, as `lb … | head -0` would.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success() && out.stderr.is_empty(), "lb {args:?}: {out:?}");
    }
}
