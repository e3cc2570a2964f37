//! Backends on other nodes: the node sends new flows back out of its uplink with full NAT
//! (XDP_TX, or a TC redirect) and rewrites the backends' replies to the clients, on both ingress
//! hooks.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use lb_tests::{
    agent::{lb_ok, Agent, PinDir, TempFile, TestCgroup},
    netns::NatTopology,
    servers::{backend_spread, connect_and_greet, connect_and_greet_within, echo_round_trip, tcp_echo, udp_echo, Server},
};

const PORT: u16 = 31000;

struct Setup {
    topo: NatTopology,
    pins: PinDir,
    file: TempFile,
    /// One cgroup for every start, so a restart finds its socket-hook links on it.
    cgroup: TestCgroup,
    agent: Option<Agent>,
    _servers: Vec<Server>,
}

impl Setup {
    fn start_agent(&mut self, hook: &str, extra: &[&str]) {
        let (pins, file, cgroup) = (self.pins.arg(), self.file.arg(), self.cgroup.arg());
        let mut args = vec![
            "--cgroup", &cgroup,
            "--iface", &self.topo.uplink,
            "--pin-dir", &pins,
            "--services", &file,
            "--node-ip", "10.202.0.2",
            "--ring-slots", "262144",
            "--max-services", "16",
            "--ingress-hook", hook,
        ];
        args.extend_from_slice(extra);
        self.agent = Some(Agent::start(&self.topo.node, &args).unwrap());
        // The kernel resolves the backends' next hops on the agent's request; give the
        // neighbour replies a moment.
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn setup(backends: usize, hook: &str) -> Setup {
    setup_with(backends, hook, &[])
}

fn setup_with(backends: usize, hook: &str, extra: &[&str]) -> Setup {
    let topo = NatTopology::new(backends).unwrap();
    let mut servers = Vec::new();
    let mut b4 = Vec::new();
    let mut b6 = Vec::new();
    for i in 0..backends {
        let name = format!("remote-{i}");
        let (ip, ip6) = (NatTopology::backend_ip(i), NatTopology::backend_ip6(i));
        servers.push(tcp_echo(&topo.backends[i], SocketAddr::new(ip, PORT), &name).unwrap());
        servers.push(tcp_echo(&topo.backends[i], SocketAddr::new(ip6, PORT), &name).unwrap());
        servers.push(udp_echo(&topo.backends[i], SocketAddr::new(ip, PORT), &name).unwrap());
        b4.push(format!(r#"{{"address":"{ip}","port":{PORT}}}"#));
        b6.push(format!(r#"{{"address":"{ip6}","port":{PORT}}}"#));
    }
    let file = TempFile::new(&format!(
        r#"{{"services":[
          {{"name":"web","address":"10.0.0.1","port":80,"backends":[{b4}]}},
          {{"name":"dns","address":"10.0.0.1","port":53,"protocol":"udp","backends":[{b4}]}},
          {{"name":"web6","address":"fd00::80","port":80,"backends":[{b6}]}}]}}"#,
        b4 = b4.join(","),
        b6 = b6.join(",")
    ))
    .unwrap();
    let mut setup = Setup { topo, pins: PinDir::new(), file, cgroup: TestCgroup::new().unwrap(), agent: None, _servers: servers };
    setup.start_agent(hook, extra);
    setup
}

fn spread(s: &Setup, addr: SocketAddr, count: usize) -> BTreeMap<String, usize> {
    backend_spread(&s.topo.client, addr, count).unwrap()
}

fn verdicts(s: &Setup) -> serde_json::Value {
    let out = lb_ok(None, &["stats", "--json", "--pin-dir", &s.pins.arg()]).unwrap();
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["verdicts"].clone()
}

#[test]
fn tcp_to_remote_backends_goes_through_full_nat() {
    for hook in ["xdp", "tc"] {
        tcp_through_full_nat(hook);
    }
}

fn tcp_through_full_nat(hook: &str) {
    let s = setup(3, hook);
    let per_backend = spread(&s, "10.0.0.1:80".parse().unwrap(), 300);
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    for (name, n) in &per_backend {
        assert!((70..=130).contains(n), "{name}: {n} of 300: {per_backend:?}");
    }
    let v = verdicts(&s);
    assert!(v["fwd_nat"].as_u64().unwrap() >= 900, "{v}");
    assert!(v["nat_reply"].as_u64().unwrap() >= 900, "{v}");
    assert_eq!(v["fwd_local"], 0, "{v}");
}

#[test]
fn udp_and_ipv6_through_full_nat() {
    for hook in ["xdp", "tc"] {
        udp_and_ipv6_through_full_nat_on(hook);
    }
}

fn udp_and_ipv6_through_full_nat_on(hook: &str) {
    let s = setup(2, hook);
    let answers = s
        .topo
        .client
        .run(|| {
            let vip: SocketAddr = "10.0.0.1:53".parse().unwrap();
            let mut names = BTreeMap::new();
            for i in 0..40 {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                sock.send_to(format!("q{i}").as_bytes(), vip).unwrap();
                let mut buf = [0u8; 256];
                let (n, from) = sock.recv_from(&mut buf).expect("answer through full NAT");
                assert_eq!(from, vip);
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                *names.entry(text.split(':').next().unwrap().to_string()).or_insert(0) += 1;
            }
            names
        })
        .unwrap();
    assert_eq!(answers.values().sum::<usize>(), 40, "{answers:?}");
    let v6 = spread(&s, "[fd00::80]:80".parse().unwrap(), 40);
    assert_eq!(v6.values().sum::<usize>(), 40, "{v6:?}");
}

/// The NAT source ports of the pinned full-NAT flows.
fn nat_ports(s: &Setup) -> Vec<u16> {
    let out = lb_ok(None, &["flows", "--json", "--pin-dir", &s.pins.arg()]).unwrap();
    let flows: serde_json::Value = serde_json::from_str(&out).unwrap();
    flows.as_array().unwrap().iter().filter_map(|f| f["nat_port"].as_u64()).map(|p| p as u16).collect()
}

#[test]
fn a_restart_with_new_nat_ports_keeps_every_connection_and_new_flows_use_the_new_range() {
    let mut s = setup_with(3, "tc", &["--nat-ports", "61000-62999"]);
    let vip: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let conns = s.topo.client.run(move || (0..30).map(|_| connect_and_greet(vip).unwrap()).collect::<Vec<_>>()).unwrap();
    let old_ports = nat_ports(&s);
    assert!(old_ports.len() >= 30 && old_ports.iter().all(|p| (61000..=62999).contains(p)), "{old_ports:?}");

    let links_before = s.pins.links();
    assert!(s.agent.take().unwrap().stop().unwrap().success());
    s.start_agent("tc", &["--nat-ports", "63000-64999"]);
    let links_after = s.pins.links();
    assert_same_links_new_programs(&links_before, &links_after);
    let status: serde_json::Value = serde_json::from_str(&lb_ok(None, &["status", "--json", "--pin-dir", &s.pins.arg()]).unwrap()).unwrap();
    assert_eq!(status["settings"]["nat_ports"], "63000-64999", "{status}");
    assert_eq!(status["settings"]["nat_reply_ports"], "61000-64999", "{status}");

    // Every connection opened under the old range still echoes through its backend.
    for (mut stream, name) in conns {
        echo_round_trip(&mut stream, format!("still {name}").as_bytes()).unwrap_or_else(|e| panic!("connection to {name} broke: {e}"));
    }
    let per_backend = spread(&s, vip, 30);
    assert_eq!(per_backend.values().sum::<usize>(), 30, "{per_backend:?}");
    let new_ports: Vec<u16> = nat_ports(&s).into_iter().filter(|p| !old_ports.contains(p)).collect();
    assert!(new_ports.len() >= 30, "new flows got no NAT port: {new_ports:?}");
    assert!(new_ports.iter().all(|p| (63000..=64999).contains(p)), "new flows outside the new range: {new_ports:?}");
}

/// The restart kept every link (same ids: the hook was never empty), gave each the program the
/// new agent loaded, and the old programs are gone from the kernel (nothing runs them).
fn assert_same_links_new_programs(before: &BTreeMap<String, (u64, u64)>, after: &BTreeMap<String, (u64, u64)>) {
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    for (name, (link, prog)) in before {
        let (link_after, prog_after) = after[name];
        assert_eq!(*link, link_after, "{name}: the link was replaced instead of updated");
        assert_ne!(*prog, prog_after, "{name}: still runs the old program");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let loaded = |id: u64| std::process::Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output().unwrap().status.success();
    while before.values().any(|&(_, prog)| loaded(prog)) {
        assert!(std::time::Instant::now() < deadline, "an old program is still loaded after the restart: {before:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Up to `count` connections to `addr` from `ns`, each given `timeout` to connect and greet:
/// (the connections made, how many failed).
fn try_connect(ns: &lb_tests::netns::Netns, addr: SocketAddr, count: usize, timeout: Duration) -> (Vec<std::net::TcpStream>, usize) {
    ns.run(move || {
        let mut made = Vec::new();
        for _ in 0..count {
            if let Ok((stream, _)) = connect_and_greet_within(addr, timeout) {
                made.push(stream);
            }
        }
        let failed = count - made.len();
        (made, failed)
    })
    .unwrap()
}

#[test]
fn an_exhausted_nat_port_range_refuses_new_flows_and_closed_connections_free_their_ports() {
    for hook in ["xdp", "tc"] {
        nat_ports_exhausted_and_freed(hook);
    }
}

fn nat_ports_exhausted_and_freed(hook: &str) {
    // Four NAT ports towards the one backend: four connections at a time.
    let s = setup_with(1, hook, &["--nat-ports", "61000-61003"]);
    let vip: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let (held, failed) = try_connect(&s.topo.client, vip, 12, Duration::from_millis(300));
    assert_eq!((held.len(), failed), (4, 8), "{hook}: four ports, twelve connections");
    let exhausted = verdicts(&s)["nat_ports_exhausted"].as_u64().unwrap();
    assert!(exhausted >= 8, "{hook}: every refused SYN is counted: {exhausted}");
    let held: Vec<_> = held.into_iter().map(|stream| (stream, "remote-0".to_string())).collect();
    for (mut stream, name) in held.iter().map(|(s, n)| (s.try_clone().unwrap(), n)) {
        echo_round_trip(&mut stream, b"still here").unwrap_or_else(|e| panic!("{hook}: a held connection to {name} broke: {e}"));
    }
    // The held connections close: their ports are free again after the linger and a sweep.
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (again, _) = try_connect(&s.topo.client, vip, 4, Duration::from_millis(300));
        if again.len() == 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{hook}: closed connections never freed their NAT ports ({} of 4 connect)", again.len());
        drop(again);
        std::thread::sleep(Duration::from_millis(500));
    }
}
