//! Source ranges (HAPROXY_n_BACKEND_NETWORK_ALLOWED_ACL, the services file's "source_ranges"):
//! packet tables on both uplink ingress hooks — new flows from inside a service's ranges are
//! balanced, from outside refused with a reset or an ICMP administratively prohibited, IPv4 and
//! IPv6 — a narrowing that ends the established flows of clients it leaves out, and real
//! connections from a client namespace and from local sockets.

use lb_common::Hook;
use lb_tests::{
    fixture::{Case, Fixture, INGRESS_HOOKS, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{prohibited, tcp, tcp_reset, udp, v4, v6, TcpFlags, ACK, SYN},
};

const NODE: &str = "10.201.0.2";
const NODE6: &str = "fd00:201::2";

/// `office*` admit the client network 10.201.0.0/24 (fd00:201::/64), `host` one address, `open`
/// every client.
fn services(office: &str) -> String {
    format!(
        r#"{{"services":[
  {{"name":"office","address":"10.0.0.1","port":80,"source_ranges":[{office}],"backends":[{{"address":"10.1.0.5","port":31005}}]}},
  {{"name":"office-udp","address":"10.0.0.1","port":53,"protocol":"udp","source_ranges":["10.201.0.0/24"],"backends":[{{"address":"10.1.0.6","port":31053}}]}},
  {{"name":"office6","address":"fd00::80","port":80,"source_ranges":["fd00:201::/64"],"backends":[{{"address":"fd00:1::5","port":31005}}]}},
  {{"name":"office6-udp","address":"fd00::80","port":53,"protocol":"udp","source_ranges":["fd00:201::/64"],"backends":[{{"address":"fd00:1::6","port":31053}}]}},
  {{"name":"host","port":10000,"source_ranges":["10.201.0.1"],"backends":[{{"address":"10.1.0.7","port":31700}}]}},
  {{"name":"open","address":"10.0.0.3","port":80,"backends":[{{"address":"10.1.0.8","port":31800}}]}}]}}"#
    )
}

const OFFICE: &str = r#""10.201.0.0/24""#;

fn xdp_iface(len: usize) -> Vec<(String, u64)> {
    vec![
        (format!("iface_stats{{ifindex=1,hook={}}}.packets", Hook::XdpIngress), 1),
        (format!("iface_stats{{ifindex=1,hook={}}}.bytes", Hook::XdpIngress), len as u64),
    ]
}

/// Forwarded to `backend` through the stack (destination rewritten); `new_flow` counts one.
fn served(name: &'static str, input: Vec<u8>, output: Vec<u8>, service: &str, backend: &str, new_flow: bool) -> Case {
    let len = input.len() as u64;
    let mut counters = vec![("verdict.fwd_local".to_string(), 1)];
    for what in [format!("service{{{service}}}"), format!("backend{{{backend}}}")] {
        counters.extend([(format!("{what}.packets"), 1), (format!("{what}.bytes"), len)]);
        if new_flow {
            counters.push((format!("{what}.new_flows"), 1));
        }
    }
    counters.extend(xdp_iface(input.len()));
    Case { name, input, verdict: XDP_PASS, output, counters }
}

/// Answered with `output` (a reset or an ICMP error) back out of the uplink, counted against
/// `service`.
fn refused(name: &'static str, input: Vec<u8>, output: Vec<u8>, service: &str) -> Case {
    let mut counters = xdp_iface(input.len());
    counters.extend([("verdict.source_refused".to_string(), 1), (format!("service{{{service}}}.source_refused"), 1)]);
    Case { name, input, verdict: XDP_TX, output, counters }
}

#[test]
fn new_flows_are_balanced_only_from_inside_the_source_ranges() {
    for hook in INGRESS_HOOKS {
        new_flows_are_balanced_only_from_inside_the_source_ranges_on(hook);
    }
}

fn new_flows_are_balanced_only_from_inside_the_source_ranges_on(hook: Hook) {
    let mut f = Fixture::load_hook(hook).expect("load");
    f.apply(&services(OFFICE), &[NODE, NODE6]).expect("program services");
    let (inside, outside, vip) = (v4(10, 201, 0, 1), v4(192, 0, 2, 1), v4(10, 0, 0, 1));
    let (inside6, outside6, vip6) = (v6("fd00:201::1"), v6("2001:db8::1"), v6("fd00::80"));
    let node = v4(10, 201, 0, 2);
    let dgram = udp((outside, 5353), (vip, 53), b"query");
    let dgram6 = udp((outside6, 5353), (vip6, 53), b"query6");
    let rst = TcpFlags { rst: true, ..TcpFlags::default() };
    let mut refused_reset = refused("a reset from outside: never answered", tcp((outside, 40009), (vip, 80), rst, b""), Vec::new(), "office");
    refused_reset.verdict = XDP_DROP;
    refused_reset.output = refused_reset.input.clone();
    // tcp() sends seq 1000 and, with ACK, ack 2000.
    f.run_table(&[
        served("from inside", tcp((inside, 40000), (vip, 80), SYN, b""), tcp((inside, 40000), (v4(10, 1, 0, 5), 31005), SYN, b""), "office", "10.1.0.5:31005", true),
        refused("from outside: rst|ack of seq + 1", tcp((outside, 40001), (vip, 80), SYN, b""), tcp_reset((vip, 80), (outside, 40001), 0, Some(1001)), "office"),
        refused("a segment from outside: rst at its ack", tcp((outside, 40002), (vip, 80), ACK, b"GET /"), tcp_reset((vip, 80), (outside, 40002), 2000, None), "office"),
        refused("udp from outside: icmp administratively prohibited", dgram.clone(), prohibited(vip, outside, &dgram[14..14 + 28]), "office-udp"),
        served("ipv6 from inside", tcp((inside6, 40003), (vip6, 80), SYN, b""), tcp((inside6, 40003), (v6("fd00:1::5"), 31005), SYN, b""), "office6", "fd00:1::5:31005", true),
        refused("ipv6 from outside", tcp((outside6, 40004), (vip6, 80), SYN, b""), tcp_reset((vip6, 80), (outside6, 40004), 0, Some(1001)), "office6"),
        refused("ipv6 udp from outside: icmpv6 prohibited", dgram6.clone(), prohibited(vip6, outside6, &dgram6[14..14 + 48]), "office6-udp"),
        served("one host: itself", tcp((inside, 40005), (node, 10000), SYN, b""), tcp((inside, 40005), (v4(10, 1, 0, 7), 31700), SYN, b""), "host", "10.1.0.7:31700", true),
        refused("one host: its neighbour", tcp((v4(10, 201, 0, 3), 40006), (node, 10000), SYN, b""), tcp_reset((node, 10000), (v4(10, 201, 0, 3), 40006), 0, Some(1001)), "host"),
        served("no ranges: every client", tcp((outside, 40007), (v4(10, 0, 0, 3), 80), SYN, b""), tcp((outside, 40007), (v4(10, 1, 0, 8), 31800), SYN, b""), "open", "10.1.0.8:31800", true),
        refused_reset,
    ]);
}

/// A narrowing ends the established flows of the clients it leaves out (their next packet is
/// refused as a new flow would be) and keeps those of the clients still inside.
#[test]
fn a_narrowing_ends_the_flows_of_clients_it_leaves_out() {
    for hook in INGRESS_HOOKS {
        a_narrowing_ends_the_flows_of_clients_it_leaves_out_on(hook);
    }
}

fn a_narrowing_ends_the_flows_of_clients_it_leaves_out_on(hook: Hook) {
    let mut f = Fixture::load_hook(hook).expect("load");
    f.apply(&services(OFFICE), &[NODE, NODE6]).expect("program services");
    let (left_out, kept, vip, backend) = (v4(10, 201, 0, 1), v4(10, 201, 0, 9), v4(10, 0, 0, 1), v4(10, 1, 0, 5));
    let packet = |client, flags, payload: &[u8]| tcp((client, 41000), (vip, 80), flags, payload);
    let at_backend = |client, flags, payload: &[u8]| tcp((client, 41000), (backend, 31005), flags, payload);
    f.run_table(&[
        served("a flow from 10.201.0.1", packet(left_out, SYN, b""), at_backend(left_out, SYN, b""), "office", "10.1.0.5:31005", true),
        served("a flow from 10.201.0.9", packet(kept, SYN, b""), at_backend(kept, SYN, b""), "office", "10.1.0.5:31005", true),
    ]);
    f.apply(&services(r#""10.201.0.9/32""#), &[NODE, NODE6]).expect("narrowed");
    f.run_table(&[
        refused("10.201.0.1's next segment: reset", packet(left_out, ACK, b"more"), tcp_reset((vip, 80), (left_out, 41000), 2000, None), "office"),
        served("10.201.0.9's flow goes on", packet(kept, ACK, b"more"), at_backend(kept, ACK, b"more"), "office", "10.1.0.5:31005", false),
    ]);
}

mod connections {
    use std::{io::ErrorKind, net::SocketAddr, time::Duration};

    use lb_tests::{
        agent::{lb_ok, wait_for_services, Agent, PinDir, TempFile, TestCgroup},
        netns::LbTopology,
        servers::{connect_and_greet_within, echo_round_trip, tcp_echo, Server},
    };

    const PORT: u16 = 31000;

    /// `lan` admits the client's networks, `elsewhere` a network the client is not on, `local`
    /// loopback (an unbound local socket using a VIP is checked as 127.0.0.1), `node-port` the
    /// client network on the node's addresses.
    fn services(lan: &str) -> String {
        let backends = |v6: bool| {
            let ips = (0..2).map(|i| if v6 { LbTopology::backend_ip6(i) } else { LbTopology::backend_ip(i) });
            ips.map(|ip| format!(r#"{{"address":"{ip}","port":{PORT}}}"#)).collect::<Vec<_>>().join(",")
        };
        let service = |name: &str, addr: Option<&str>, port: u16, ranges: &str, v6: bool| {
            let addr = addr.map(|a| format!(r#""address":"{a}","#)).unwrap_or_default();
            format!(r#"{{"name":"{name}",{addr}"port":{port},"source_ranges":[{ranges}],"backends":[{}]}}"#, backends(v6))
        };
        let list = [
            service("lan", Some("10.0.0.1"), 80, lan, false),
            service("elsewhere", Some("10.0.0.2"), 80, r#""192.0.2.0/24""#, false),
            service("local", Some("10.0.0.3"), 80, r#""127.0.0.0/8""#, false),
            service("node-port", None, 10000, r#""10.201.0.0/24""#, false),
            service("lan6", Some("fd00::80"), 80, r#""fd00:201::/64""#, true),
            service("elsewhere6", Some("fd00::81"), 80, r#""2001:db8::/32""#, true),
            service("local6", Some("fd00::82"), 80, r#""::1""#, true),
        ];
        format!(r#"{{"services":[{}]}}"#, list.join(","))
    }

    struct Node {
        topo: LbTopology,
        _servers: Vec<Server>,
        _client_xdp: aya::Ebpf,
    }

    impl Node {
        fn new() -> Self {
            let topo = LbTopology::new(2).unwrap();
            let mut servers = Vec::new();
            for i in 0..2 {
                for ip in [LbTopology::backend_ip(i), LbTopology::backend_ip6(i)] {
                    servers.push(tcp_echo(&topo.backends[i], SocketAddr::new(ip, PORT), &format!("backend-{i}")).unwrap());
                }
            }
            // Refusals leave with XDP_TX, which a veth delivers only while its peer runs XDP (as
            // a NIC's wire would take them): a pass-only program on the client's end.
            let client_if = topo.client_if.clone();
            let client_xdp = topo.client.run(move || lb::dataplane::loader::attach_xdp_pass(&client_if)).unwrap().unwrap();
            Self { topo, _servers: servers, _client_xdp: client_xdp }
        }

        /// How a connection from the client namespace to `addr` ends: Ok, or the error kind. A
        /// timeout is tried again (twice): a first IPv6 packet waits for neighbour discovery,
        /// which a loaded machine can stretch; a refusal comes at once.
        fn connect(&self, addr: &str) -> Result<(), ErrorKind> {
            let addr: SocketAddr = addr.parse().unwrap();
            let once = move || self.topo.client.run(move || connect_and_greet_within(addr, Duration::from_secs(3)).map(|_| ()).map_err(|e| e.kind())).unwrap();
            (0..3).map(|_| once()).find(|outcome| *outcome != Err(ErrorKind::TimedOut)).unwrap_or(Err(ErrorKind::TimedOut))
        }

        /// How a connection from a socket on the node (in the agent's cgroup) ends.
        fn connect_locally(&self, cgroup: &TestCgroup, addr: &str) -> Result<(), String> {
            let mut cmd = self.topo.node.command(env!("CARGO_BIN_EXE_lb-probe"));
            cmd.args(["tcp", addr, "3"]);
            let out = cgroup.command(cmd).output().unwrap();
            if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
        }

        fn refused_count(&self, pins: &PinDir, service: &str) -> u64 {
            let stats: serde_json::Value = serde_json::from_str(&lb_ok(Some(&self.topo.node), &["stats", "--json", "--pin-dir", &pins.arg()]).unwrap()).unwrap();
            let services = stats["services"].as_array().unwrap();
            services.iter().find(|s| s["name"] == service).map_or(0, |s| s["source_refused"].as_u64().unwrap())
        }
    }

    #[test]
    fn clients_outside_the_ranges_are_refused_on_both_hooks_and_locally() {
        for hook in ["xdp", "tc"] {
            refused_on(hook);
        }
    }

    fn refused_on(hook: &str) {
        let node = Node::new();
        let (pins, cgroup) = (PinDir::new(), TestCgroup::new().unwrap());
        let file = TempFile::new(&services(r#""10.201.0.0/24""#)).unwrap();
        let args = [
            "--services", &file.arg(), "--iface", &node.topo.uplink, "--pin-dir", &pins.arg(), "--cgroup", &cgroup.arg(),
            "--ingress-hook", hook,
        ];
        let _agent = Agent::start(&node.topo.node, &args).unwrap();
        wait_for_services(&pins, |j| j.as_array().is_some_and(|a| a.len() == 7)).unwrap();
        assert_eq!(node.connect("10.0.0.1:80"), Ok(()), "{hook}: from inside");
        assert_eq!(node.connect("10.201.0.2:10000"), Ok(()), "{hook}: a service port from inside");
        assert_eq!(node.connect("[fd00::80]:80"), Ok(()), "{hook}: IPv6 from inside");
        assert_eq!(node.connect("10.0.0.2:80"), Err(ErrorKind::ConnectionRefused), "{hook}: reset at once, no timeout");
        assert_eq!(node.connect("[fd00::81]:80"), Err(ErrorKind::ConnectionRefused), "{hook}: IPv6 too");
        assert_eq!((node.refused_count(&pins, "elsewhere"), node.refused_count(&pins, "elsewhere6")), (1, 1), "{hook}");
        // Local sockets: unbound, a VIP is checked as 127.0.0.1 and a node address as itself.
        assert_eq!(node.connect_locally(&cgroup, "10.0.0.3:80"), Ok(()), "{hook}: local, 127.0.0.0/8");
        assert_eq!(node.connect_locally(&cgroup, "10.201.0.2:10000"), Ok(()), "{hook}: local to the node address");
        let why = node.connect_locally(&cgroup, "10.0.0.1:80").unwrap_err();
        assert!(why.contains("Connection refused"), "{hook}: a local client is not in 10.201.0.0/24: {why}");
        assert_eq!(node.refused_count(&pins, "lan"), 1, "{hook}: counted at connect()");
        assert_eq!(node.connect_locally(&cgroup, "[fd00::82]:80"), Ok(()), "{hook}: local IPv6, ::1");
        let why = node.connect_locally(&cgroup, "[fd00::80]:80").unwrap_err();
        assert!(why.contains("Connection refused"), "{hook}: a local IPv6 client is not in fd00:201::/64: {why}");
        // lb explain says why.
        let explained = lb_ok(Some(&node.topo.node), &["explain", "tcp", "10.201.0.1:40000", "10.0.0.2:80", "--pin-dir", &pins.arg()]).unwrap();
        assert!(explained.contains("10.201.0.1 is outside the service's source ranges (192.0.2.0/24)"), "{explained}");
        let explained = lb_ok(Some(&node.topo.node), &["explain", "tcp", "192.0.2.7:40000", "10.0.0.2:80", "--pin-dir", &pins.arg()]).unwrap();
        assert!(explained.contains("new flow →") && explained.contains("source ranges: 192.0.2.0/24"), "{explained}");
    }

    #[test]
    fn a_narrowing_resets_the_connections_it_leaves_out() {
        let node = Node::new();
        let pins = PinDir::new();
        let file = TempFile::new(&services(r#""10.201.0.0/24""#)).unwrap();
        let args = ["--services", &file.arg(), "--iface", &node.topo.uplink, "--pin-dir", &pins.arg()];
        let agent = Agent::start(&node.topo.node, &args).unwrap();
        wait_for_services(&pins, |j| j.as_array().is_some_and(|a| a.len() == 7)).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (narrowed_tx, narrowed_rx) = std::sync::mpsc::channel::<()>();
        let client = node.topo.client.spawn(move || -> Result<(), ErrorKind> {
            let (mut stream, _) = connect_and_greet_within("10.0.0.1:80".parse().unwrap(), Duration::from_secs(2)).unwrap();
            echo_round_trip(&mut stream, b"before").unwrap();
            done_tx.send(()).unwrap();
            narrowed_rx.recv().unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            echo_round_trip(&mut stream, b"after").map_err(|e| e.kind())
        })
        .unwrap();
        done_rx.recv().unwrap();
        file.replace(&services(r#""10.201.0.99/32""#)).unwrap();
        agent.wait_log("flows from clients outside narrowed source ranges forgotten", Duration::from_secs(10)).unwrap();
        let narrowed = wait_for_services(&pins, |_| true).unwrap();
        let lan = narrowed.as_array().unwrap().iter().find(|s| s["name"] == "lan").unwrap();
        assert_eq!(lan["source_ranges"], serde_json::json!(["10.201.0.99/32"]), "{lan}");
        narrowed_tx.send(()).unwrap();
        let after = client.join().unwrap();
        assert_eq!(after, Err(ErrorKind::ConnectionReset), "the established connection is reset, not left hanging");
        assert_eq!(node.connect("10.0.0.1:80"), Err(ErrorKind::ConnectionRefused));
    }
}
