//! Backends on other nodes: the node sends new flows back out of its uplink with full NAT
//! (XDP_TX, or a TC redirect) and rewrites the backends' replies to the clients, on both ingress
//! hooks.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use lb_tests::{
    agent::{lb_ok, Agent, PinDir, TempFile},
    netns::NatTopology,
    servers::{backend_spread, tcp_echo, udp_echo, Server},
};

const PORT: u16 = 31000;

struct Setup {
    topo: NatTopology,
    pins: PinDir,
    _file: TempFile,
    _agent: Agent,
    _servers: Vec<Server>,
}

fn setup(backends: usize, hook: &str) -> Setup {
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
    let pins = PinDir::new();
    let args = [
        "--iface", &topo.uplink,
        "--pin-dir", &pins.arg(),
        "--services", &file.arg(),
        "--node-ip", "10.202.0.2",
        "--ring-size", "4093",
        "--max-services", "16",
        "--ingress-hook", hook,
    ];
    let agent = Agent::start(&topo.node, &args).unwrap();
    // The agent's datagrams to the backends resolve their link-layer addresses; give the
    // neighbour replies a moment.
    std::thread::sleep(Duration::from_millis(200));
    Setup { topo, pins, _file: file, _agent: agent, _servers: servers }
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
