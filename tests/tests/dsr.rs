//! Direct server return through BPF_PROG_TEST_RUN on both ingress hooks, inside a namespace whose
//! uplink has permanent neighbours (the route lookups have a known answer): the balancer's
//! encapsulation byte for byte (the outer headers written out here from the GUE draft, the
//! SYN's MSS clamped), a backend outside `--dsr-nodes` kept on full NAT, a too-big datagram
//! answered; the backend node's decapsulation, its reply restored on TC egress, a forged outer
//! source passed untouched and malformed encapsulations dropped.

use lb_common::{dsr, hash, Hook};
use lb_tests::{
    fixture::{Case, Fixture, INGRESS_HOOKS, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{reframed, syn_with_mss, tcp, too_big, udp, v4, v6, Gue, TcpFlags, ACK},
};

/// The uplink's link-layer address, the DSR backend node's, another node's (outside
/// `--dsr-nodes`), in `uplink_namespace`.
const UP_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
const BACKEND_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x10];
const OTHER_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x11];


const SERVICES: &str = r#"{"services":[
  {"name":"web","address":"10.0.0.1","port":80,"backends":[{"address":"10.202.0.10","port":31000}]},
  {"name":"dns","address":"10.0.0.1","port":53,"protocol":"udp","backends":[{"address":"10.202.0.10","port":31053}]},
  {"name":"legacy","address":"10.0.0.2","port":80,"backends":[{"address":"10.202.0.11","port":31000}]},
  {"name":"web6","address":"fd00::80","port":80,"backends":[{"address":"fd02::10","port":31000}]}]}"#;
const DSR_NODES: [&str; 2] = ["10.202.0.10/32", "fd02::10/128"];
const BALANCERS: [&str; 2] = ["10.202.0.0/24", "fd02::/64"];

/// A namespace whose veth uplink `up0` (`UP_MAC`, 10.202.0.2/24, fd02::2/64, MTU 1500) has
/// permanent neighbours for the router (.1), the DSR backend node (.10) and another node (.11).
fn uplink_namespace() -> lb_tests::netns::Netns {
    let ns = lb_tests::netns::Netns::new("lbdsr").unwrap();
    ns.ip(&["link", "add", "up0", "address", "02:aa:00:00:00:02", "type", "veth", "peer", "name", "up0p"]).unwrap();
    ns.ip(&["link", "set", "up0p", "up"]).unwrap();
    ns.addr("up0", "10.202.0.2/24").unwrap();
    ns.ip(&["addr", "add", "fd02::2/64", "dev", "up0", "nodad"]).unwrap();
    let neighbours = [
        ("10.202.0.10", "02:aa:00:00:00:10"),
        ("10.202.0.11", "02:aa:00:00:00:11"),
        ("10.202.0.1", "02:aa:00:00:00:01"),
        ("fd02::10", "02:aa:00:00:00:10"),
        ("fd02::1", "02:aa:00:00:00:01"),
    ];
    for (neighbour, mac) in neighbours {
        ns.ip(&["neigh", "add", neighbour, "lladdr", mac, "dev", "up0", "nud", "permanent"]).unwrap();
    }
    for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        ns.command("sysctl").args(["-qw", sysctl]).output().unwrap();
    }
    ns
}

fn uplink() -> u32 {
    lb::node::preflight::interface_index("up0").unwrap()
}

/// The balancer: `--dsr --dsr-nodes DSR_NODES`, SERVICES programmed.
fn balancer(hook: Hook) -> Fixture {
    let mut f = Fixture::load_dsr(hook, dsr::ENCAP, &DSR_NODES, &[]).unwrap();
    f.apply(SERVICES, &["10.202.0.2"]).unwrap();
    f.arrive_on(uplink()).unwrap();
    f
}

/// A backend node: `--decap-from BALANCERS`, no services of its own.
fn backend_node(hook: Hook) -> Fixture {
    let mut f = Fixture::load_dsr(hook, dsr::DECAP, &[], &BALANCERS).unwrap();
    f.apply(r#"{"services":[]}"#, &["10.202.0.10"]).unwrap();
    f.arrive_on(uplink()).unwrap();
    f
}

/// The encapsulation a balancer at `src` gives a client's packet for the backend `dst`:`port`.
fn encapsulated(inner: &[u8], src: std::net::IpAddr, dst: std::net::IpAddr, port: u16, client: (std::net::IpAddr, u16), proto: u8) -> Vec<u8> {
    let (client_addr, _) = lb::desired::ip_bytes(client.0);
    let hash = hash::flow_hash(&client_addr, client.1, proto);
    let gue = Gue { src_mac: UP_MAC, dst_mac: BACKEND_MAC, src, dst, sport: 0xc000 | (hash & 0x3fff) as u16, dport: 6080, hash, backend_port: port, flags: 0 };
    gue.around(inner)
}

fn iface(len: usize) -> Vec<(String, u64)> {
    let uplink = uplink();
    vec![
        (format!("iface_stats{{ifindex={uplink},hook={}}}.packets", Hook::XdpIngress), 1),
        (format!("iface_stats{{ifindex={uplink},hook={}}}.bytes", Hook::XdpIngress), len as u64),
    ]
}

/// Counters of a packet of `len` bytes forwarded for `service` to `backend`, with `reason`.
fn forwarded(len: usize, reason: &str, service: &str, backend: &str, new_flow: bool) -> Vec<(String, u64)> {
    let mut counters = iface(len);
    counters.push((format!("verdict.{reason}"), 1));
    for (name, field) in [(format!("service{{{service}}}"), "packets"), (format!("backend{{{backend}}}"), "packets")] {
        counters.push((format!("{name}.{field}"), 1));
        counters.push((format!("{name}.bytes"), len as u64));
        if new_flow {
            counters.push((format!("{name}.new_flows"), 1));
        }
    }
    counters
}

fn verdict(len: usize, reason: &str) -> Vec<(String, u64)> {
    let mut counters = iface(len);
    counters.push((format!("verdict.{reason}"), 1));
    counters
}

/// The NAT port the first probe of a new full-NAT flow from `client`:`port` takes.
fn first_nat_port(client: [u8; 4], port: u16, proto: u8) -> u16 {
    let span = (lb_common::DEFAULT_NAT_PORT_MAX - lb_common::DEFAULT_NAT_PORT_MIN) as u32 + 1;
    lb_common::DEFAULT_NAT_PORT_MIN + hash::ring_slot(hash::flow_hash(&lb_common::v4_bytes(client), port, proto), span) as u16
}

#[test]
fn the_balancer_encapsulates_byte_for_byte() {
    for hook in INGRESS_HOOKS {
        uplink_namespace().run(move || the_balancer_encapsulates_on(hook)).unwrap();
    }
}

fn the_balancer_encapsulates_on(hook: Hook) {
    let mut f = balancer(hook);
    let (node, backend) = (v4(10, 202, 0, 2), v4(10, 202, 0, 10));
    let client = (v4(10, 202, 0, 1), 40000);
    let vip = (v4(10, 0, 0, 1), 80);
    let syn = syn_with_mss(client, vip, 1460);
    // 1500 (up0's MTU) - 36 (the encapsulation) - 20 (IPv4) - 20 (TCP).
    let syn_out = encapsulated(&syn_with_mss(client, vip, 1424), node, backend, 31000, client, 6);
    let small_syn = syn_with_mss((client.0, 40001), vip, 536);
    let small_out = encapsulated(&small_syn, node, backend, 31000, (client.0, 40001), 6);
    let data = tcp(client, vip, ACK, b"hello");
    let data_out = encapsulated(&data, node, backend, 31000, client, 6);
    let datagram = udp((client.0, 5353), (vip.0, 53), b"query");
    let datagram_out = encapsulated(&datagram, node, backend, 31053, (client.0, 5353), 17);
    // 20 + 8 + 1452 = 1480 bytes of IP: 36 more do not fit 1500.
    let jumbo = udp((client.0, 5354), (vip.0, 53), &[7; 1452]);
    let jumbo_out = too_big(vip.0, client.0, 1464, &jumbo[14..14 + 28]);
    let legacy = tcp(client, (v4(10, 0, 0, 2), 80), TcpFlags { syn: true, ..Default::default() }, b"");
    let nat_port = first_nat_port([10, 202, 0, 1], 40000, 6);
    let legacy_out = reframed(&tcp((node, nat_port), (v4(10, 202, 0, 11), 31000), TcpFlags { syn: true, ..Default::default() }, b""), UP_MAC, OTHER_MAC, 63);
    let b = "10.202.0.10:31000";
    f.run_table(&[
        Case { name: "a SYN: encapsulated to the backend's node, its MSS clamped", counters: forwarded(syn.len(), "fwd_dsr", "web", b, true), input: syn, verdict: XDP_TX, output: syn_out },
        Case { name: "a SYN whose MSS fits: encapsulated as it is", counters: forwarded(small_syn.len(), "fwd_dsr", "web", b, true), input: small_syn, verdict: XDP_TX, output: small_out },
        Case { name: "the flow's data: encapsulated unchanged", counters: forwarded(data.len(), "fwd_dsr", "web", b, false), input: data, verdict: XDP_TX, output: data_out },
        Case { name: "a UDP datagram: encapsulated", counters: forwarded(datagram.len(), "fwd_dsr", "dns", "10.202.0.10:31053", true), input: datagram, verdict: XDP_TX, output: datagram_out },
        Case { name: "a datagram too big once encapsulated: ICMP fragmentation needed", counters: verdict(jumbo.len(), "too_big"), input: jumbo, verdict: XDP_TX, output: jumbo_out },
        Case { name: "a backend outside --dsr-nodes: full NAT", counters: forwarded(legacy.len(), "fwd_nat", "legacy", "10.202.0.11:31000", true), input: legacy, verdict: XDP_TX, output: legacy_out },
    ]);
    let client6 = (v6("fd02::1"), 40000);
    let vip6 = (v6("fd00::80"), 80);
    let syn6 = syn_with_mss(client6, vip6, 1440);
    // 1500 - 56 - 40 - 20.
    let syn6_out = encapsulated(&syn_with_mss(client6, vip6, 1384), v6("fd02::2"), v6("fd02::10"), 31000, client6, 6);
    f.run_table(&[Case {
        name: "an IPv6 SYN: inside IPv6, its MSS clamped, the flow label the flow's hash",
        counters: forwarded(syn6.len(), "fwd_dsr", "web6", "fd02::10:31000", true),
        input: syn6,
        verdict: XDP_TX,
        output: syn6_out,
    }]);
}

#[test]
fn the_backend_node_decapsulates_and_restores_the_replies() {
    for hook in INGRESS_HOOKS {
        uplink_namespace().run(move || the_backend_node_decapsulates_on(hook)).unwrap();
    }
}

fn the_backend_node_decapsulates_on(hook: Hook) {
    let mut f = backend_node(hook);
    let (balancer, backend) = (v4(10, 202, 0, 2), v4(10, 202, 0, 10));
    let client = (v4(10, 202, 0, 1), 40000);
    let vip = (v4(10, 0, 0, 1), 80);
    let syn = encapsulated(&syn_with_mss(client, vip, 1424), balancer, backend, 31000, client, 6);
    let delivered = reframed(&syn_with_mss(client, (backend, 31000), 1424), UP_MAC, BACKEND_MAC, 64);
    let forged = encapsulated(&syn_with_mss(client, vip, 1424), v4(10, 99, 0, 9), backend, 31000, client, 6);
    let mut bad_version = syn.clone();
    bad_version[14 + 20 + 8] = 0x41;
    let mut wrong_family = syn.clone();
    wrong_family[14 + 20 + 8 + 1] = 41;
    let mut no_port = syn.clone();
    no_port[14 + 20 + 8 + 4..14 + 20 + 8 + 6].copy_from_slice(&[0, 0]);
    let unforwarded = |name, input: Vec<u8>, verdict: u32, reason| Case { name, counters: self::verdict(input.len(), reason), output: input.clone(), input, verdict };
    f.run_table(&[
        Case { name: "from a balancer node: decapsulated, to the backend it names", counters: verdict(syn.len(), "decapsulated"), input: syn, verdict: XDP_PASS, output: delivered },
        unforwarded("from outside --decap-from: passed untouched", forged, XDP_PASS, "decap_refused"),
        unforwarded("GUE of another version: dropped", bad_version, XDP_DROP, "decap_malformed"),
        unforwarded("an IPv6 protocol around an IPv4 packet: dropped", wrong_family, XDP_DROP, "decap_malformed"),
        unforwarded("no backend port: dropped", no_port, XDP_DROP, "decap_malformed"),
    ]);
    let client6 = (v6("fd02::1"), 40000);
    let syn6 = encapsulated(&syn_with_mss(client6, (v6("fd00::80"), 80), 1384), v6("fd02::2"), v6("fd02::10"), 31000, client6, 6);
    let delivered6 = reframed(&syn_with_mss(client6, (v6("fd02::10"), 31000), 1384), UP_MAC, BACKEND_MAC, 64);
    f.run_table(&[Case { name: "IPv6: decapsulated", counters: verdict(syn6.len(), "decapsulated"), input: syn6, verdict: XDP_PASS, output: delivered6 }]);

    // The task's reply leaves from the service, straight to the client.
    f.switch_to(Hook::TcEgress).unwrap();
    let syn_ack = TcpFlags { syn: true, ack: true, ..Default::default() };
    for (from, to, service) in [((backend, 31000), client, vip), ((v6("fd02::10"), 31000), client6, (v6("fd00::80"), 80))] {
        let reply = tcp(from, to, syn_ack, b"");
        let restored = tcp(service, to, syn_ack, b"");
        let (verdict, out) = f.run_packet(&reply).unwrap();
        assert_eq!(verdict, lb_tests::fixture::TC_ACT_OK, "{hook}");
        assert!(out == restored, "{hook}: the reply was not restored: {:?}", lb_tests::fixture::packet_diff(&restored, &out));
    }
}

/// The backend a new flow from `client` to the VIP gets from the programmed ring (lb explain's
/// pick, the programs' decision).
fn ring_choice(f: &Fixture, client: (std::net::IpAddr, u16)) -> std::net::IpAddr {
    let vip = std::net::SocketAddr::new(v4(10, 0, 0, 1), 80);
    let explained = lb::inspect::explain::explain(&f.maps(), lb::desired::Proto::Tcp, client.into(), vip, None, None, None).unwrap();
    explained.new_flow_backend.expect("a backend").address
}

const BEFORE: &str = r#"{"services":[{"name":"web","address":"10.0.0.1","port":80,"backends":[
  {"address":"10.202.0.10","port":31000},{"address":"10.202.0.11","port":31000}]}]}"#;
const AFTER: &str = r#"{"services":[{"name":"web","address":"10.0.0.1","port":80,"backends":[
  {"address":"10.202.0.10","port":31000},{"address":"10.202.0.11","port":31000},{"address":"10.202.0.12","port":31000}]}]}"#;

#[test]
fn a_mid_flow_packet_this_node_does_not_hold_gets_one_second_chance() {
    for hook in INGRESS_HOOKS {
        uplink_namespace().run(move || a_second_chance_on(hook)).unwrap();
    }
}

/// A backend node whose service gained a backend (10.202.0.12): a balancer whose ring now names
/// .12 for a connection that began before the change sends its next segment there; this node
/// holds no state for it, so it goes once to the backend the previous ring chose, marked.
fn a_second_chance_on(hook: Hook) {
    let mut f = Fixture::load_dsr(hook, dsr::DECAP, &[], &BALANCERS).unwrap();
    f.apply(BEFORE, &["10.202.0.12"]).unwrap();
    f.arrive_on(uplink()).unwrap();
    let client = (v4(10, 202, 0, 1), 40000);
    let previous = ring_choice(&f, client);
    f.apply(AFTER, &["10.202.0.12"]).unwrap();
    let (balancer, named) = (v4(10, 202, 0, 2), v4(10, 202, 0, 12));
    let vip = (v4(10, 0, 0, 1), 80);
    let ack = tcp(client, vip, ACK, b"more");
    let arriving = encapsulated(&ack, balancer, named, 31000, client, 6);
    let (client_addr, _) = lb::desired::ip_bytes(client.0);
    let hash = hash::flow_hash(&client_addr, client.1, 6);
    let previous_mac = if previous == v4(10, 202, 0, 10) { BACKEND_MAC } else { OTHER_MAC };
    let onward = Gue { src_mac: UP_MAC, dst_mac: previous_mac, src: balancer, dst: previous, sport: 0xc000 | (hash & 0x3fff) as u16, dport: 6080, hash, backend_port: 31000, flags: dsr::HOP_SECOND_CHANCE };
    let forwarded_once = onward.around(&ack);
    let mut marked = arriving.clone();
    marked[14 + 20 + 8 + 6] = dsr::HOP_SECOND_CHANCE;
    let delivered = reframed(&tcp(client, (named, 31000), ACK, b"more"), UP_MAC, BACKEND_MAC, 64);
    let new_client = (client.0, 40001);
    let syn = encapsulated(&syn_with_mss(new_client, vip, 1424), balancer, named, 31000, new_client, 6);
    let syn_delivered = reframed(&syn_with_mss(new_client, (named, 31000), 1424), UP_MAC, BACKEND_MAC, 64);
    let held = encapsulated(&tcp(new_client, vip, ACK, b"x"), balancer, named, 31000, new_client, 6);
    let held_delivered = reframed(&tcp(new_client, (named, 31000), ACK, b"x"), UP_MAC, BACKEND_MAC, 64);
    f.run_table(&[
        Case { name: "not held here: to the previous ring's backend, marked", counters: verdict(arriving.len(), "second_chance"), input: arriving, verdict: XDP_TX, output: forwarded_once },
        Case { name: "already had its second chance: delivered here", counters: verdict(marked.len(), "decapsulated"), input: marked, verdict: XDP_PASS, output: delivered },
        Case { name: "a SYN opens the connection here", counters: verdict(syn.len(), "decapsulated"), input: syn, verdict: XDP_PASS, output: syn_delivered },
        Case { name: "a connection held here stays here", counters: verdict(held.len(), "decapsulated"), input: held, verdict: XDP_PASS, output: held_delivered },
    ]);
}
