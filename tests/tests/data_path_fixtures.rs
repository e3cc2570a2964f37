//! The service data path through BPF_PROG_TEST_RUN, on both uplink ingress programs (XDP and
//! TC, see fixture::INGRESS_HOOKS; TC egress at the end): every case states the input packet, the
//! verdict, the exact output bytes (built independently, with checksums computed from scratch,
//! so the program's incremental checksum updates are checked byte for byte) and every counter
//! that must move.

use lb::dataplane::{Bitmap, Dataplane};
use lb_common::{hash, Hook};
use lb_tests::{
    fixture::{expected_verdict, Case, Fixture, INGRESS_HOOKS, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{port_unreachable, reframed, tcp, tcp_reset, udp, v4, v6, TcpFlags, ACK, CLIENT_MAC, FIN_ACK, NODE_MAC, SYN},
};

const NODE: &str = "10.201.0.2";
const NODE6: &str = "fd00:201::2";

const SERVICES: &str = r#"{"services":[
  {"name":"web","address":"10.0.0.1","port":80,"protocol":"tcp",
   "backends":[{"address":"10.1.0.5","port":31005}]},
  {"name":"dns","address":"10.0.0.2","port":53,"protocol":"udp",
   "backends":[{"address":"10.1.0.6","port":31053}]},
  {"name":"app-port","port":10000,"protocol":"tcp",
   "backends":[{"address":"10.1.0.7","port":31700}]},
  {"name":"app-port-udp","port":10000,"protocol":"udp",
   "backends":[{"address":"10.1.0.7","port":31701}]},
  {"name":"web6","address":"fd00::80","port":80,"protocol":"tcp",
   "backends":[{"address":"fd00:1::5","port":31005}]},
  {"name":"empty","address":"10.0.0.9","port":80,"protocol":"tcp","backends":[]},
  {"name":"empty-udp","address":"10.0.0.9","port":53,"protocol":"udp","backends":[]},
  {"name":"empty6","address":"fd00::99","port":80,"protocol":"tcp","backends":[]},
  {"name":"empty6-udp","address":"fd00::99","port":53,"protocol":"udp","backends":[]}
]}"#;

fn client() -> std::net::IpAddr {
    v4(10, 201, 0, 1)
}

fn fixture(hook: Hook) -> Fixture {
    let mut f = Fixture::load_hook(hook).expect("load");
    f.apply(SERVICES, &[NODE, NODE6, "127.0.0.1"]).expect("program services");
    f
}

fn counters(service: &str, backend: &str, len: usize, new_flow: bool) -> Vec<(String, u64)> {
    let mut c = vec![
        ("verdict.fwd_local".to_string(), 1),
        (format!("service{{{service}}}.packets"), 1),
        (format!("service{{{service}}}.bytes"), len as u64),
        (format!("backend{{{backend}}}.packets"), 1),
        (format!("backend{{{backend}}}.bytes"), len as u64),
    ];
    if new_flow {
        c.push((format!("service{{{service}}}.new_flows"), 1));
        c.push((format!("backend{{{backend}}}.new_flows"), 1));
    }
    c.extend(xdp_iface(len));
    c
}

fn xdp_iface(len: usize) -> Vec<(String, u64)> {
    vec![
        (format!("iface_stats{{ifindex=1,hook={}}}.packets", Hook::XdpIngress), 1),
        (format!("iface_stats{{ifindex=1,hook={}}}.bytes", Hook::XdpIngress), len as u64),
    ]
}

fn forwarded(name: &'static str, input: Vec<u8>, output: Vec<u8>, service: &str, backend: &str, new_flow: bool) -> Case {
    let counters = counters(service, backend, input.len(), new_flow);
    Case { name, input, verdict: XDP_PASS, output, counters }
}

fn passed(name: &'static str, input: Vec<u8>, reason: &str) -> Case {
    let mut counters = xdp_iface(input.len());
    counters.push((format!("verdict.{reason}"), 1));
    Case { name, output: input.clone(), input, verdict: XDP_PASS, counters }
}

/// A TC egress case: a reply whose source becomes the service's again.
fn restored(name: &'static str, input: Vec<u8>, output: Vec<u8>) -> Case {
    let mut counters = xdp_iface(input.len());
    counters.push(("verdict.reply_rewritten".to_string(), 1));
    Case { name, input, verdict: XDP_PASS, output, counters }
}

/// A TC egress case: a packet that is no reply to a balanced flow, passed as it is, no verdict.
fn untouched(name: &'static str, input: Vec<u8>) -> Case {
    Case { name, output: input.clone(), counters: xdp_iface(input.len()), input, verdict: XDP_PASS }
}

fn dropped(name: &'static str, input: Vec<u8>, reason: &str) -> Case {
    let mut counters = xdp_iface(input.len());
    counters.push((format!("verdict.{reason}"), 1));
    Case { name, output: input.clone(), input, verdict: XDP_DROP, counters }
}

fn web(flags: TcpFlags, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (
        tcp((client(), 40000), (v4(10, 0, 0, 1), 80), flags, payload),
        tcp((client(), 40000), (v4(10, 1, 0, 5), 31005), flags, payload),
    )
}

#[test]
fn services_are_rewritten_byte_for_byte() {
    for hook in INGRESS_HOOKS {
        services_are_rewritten_byte_for_byte_on(hook);
    }
}

fn services_are_rewritten_byte_for_byte_on(hook: Hook) {
    let mut f = fixture(hook);
    let (syn, syn_out) = web(SYN, b"");
    let (ack, ack_out) = web(ACK, b"GET / HTTP/1.1\r\n\r\n");
    let (fin, fin_out) = web(FIN_ACK, b"");
    let dns = udp((client(), 5353), (v4(10, 0, 0, 2), 53), b"query");
    let dns_out = udp((client(), 5353), (v4(10, 1, 0, 6), 31053), b"query");
    let node_port = tcp((client(), 40001), (v4(10, 201, 0, 2), 10000), SYN, b"");
    let node_port_out = tcp((client(), 40001), (v4(10, 1, 0, 7), 31700), SYN, b"");
    let udp_node_port = udp((client(), 40003), (v4(10, 201, 0, 2), 10000), b"dgram");
    let udp_node_port_out = udp((client(), 40003), (v4(10, 1, 0, 7), 31701), b"dgram");
    let syn6 = tcp((v6("fd00:201::1"), 40002), (v6("fd00::80"), 80), SYN, b"");
    let syn6_out = tcp((v6("fd00:201::1"), 40002), (v6("fd00:1::5"), 31005), SYN, b"");
    let ack6 = tcp((v6("fd00:201::1"), 40002), (v6("fd00::80"), 80), ACK, b"data");
    let ack6_out = tcp((v6("fd00:201::1"), 40002), (v6("fd00:1::5"), 31005), ACK, b"data");
    f.run_table(&[
        forwarded("tcp syn to a vip: new flow", syn, syn_out, "web", "10.1.0.5:31005", true),
        forwarded("tcp ack with payload: same flow", ack, ack_out, "web", "10.1.0.5:31005", false),
        forwarded("tcp fin: same flow", fin, fin_out, "web", "10.1.0.5:31005", false),
        forwarded("udp to a vip", dns, dns_out, "dns", "10.1.0.6:31053", true),
        forwarded("service port on a node address", node_port, node_port_out, "app-port", "10.1.0.7:31700", true),
        forwarded("udp to a service port on a node address", udp_node_port, udp_node_port_out, "app-port-udp", "10.1.0.7:31701", true),
        forwarded("ipv6 syn", syn6, syn6_out, "web6", "fd00:1::5:31005", true),
        forwarded("ipv6 ack: same flow", ack6, ack6_out, "web6", "fd00:1::5:31005", false),
    ]);
}

#[test]
fn traffic_that_is_not_balanced_gets_a_named_verdict() {
    for hook in INGRESS_HOOKS {
        traffic_that_is_not_balanced_gets_a_named_verdict_on(hook);
    }
}

fn traffic_that_is_not_balanced_gets_a_named_verdict_on(hook: Hook) {
    let mut f = fixture(hook);
    let other_port = tcp((client(), 40000), (v4(10, 0, 0, 1), 81), SYN, b"");
    let service_port_elsewhere = tcp((client(), 40000), (v4(10, 99, 0, 1), 10000), SYN, b"");
    let udp_to_tcp_service = udp((client(), 40000), (v4(10, 0, 0, 1), 80), b"x");

    let full = tcp((client(), 40000), (v4(10, 0, 0, 1), 80), SYN, b"");
    let truncated_ip = full[..14 + 12].to_vec();
    let truncated_tcp = full[..14 + 20 + 10].to_vec();
    let full_udp = udp((client(), 40000), (v4(10, 0, 0, 2), 53), b"q");
    let truncated_udp = full_udp[..14 + 20 + 4].to_vec();
    let full6 = tcp((v6("fd00:201::1"), 1), (v6("fd00::80"), 80), SYN, b"");
    let truncated_ipv6 = full6[..14 + 30].to_vec();
    let mut bad_tcp_offset = full.clone();
    bad_tcp_offset[14 + 20 + 12] = 0x40; // data offset 4 words < 5
    let mut tcp_offset_past_packet = full.clone();
    tcp_offset_past_packet[14 + 20 + 12] = 0xf0; // 60 bytes of header in a 20-byte segment
    let mut udp_length_past_packet = full_udp.clone();
    udp_length_past_packet[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&200u16.to_be_bytes());
    let mut ipv6_payload_short = udp((v6("fd00:201::1"), 1), (v6("fd00::80"), 80), b"x");
    ipv6_payload_short[14 + 4..14 + 6].copy_from_slice(&1u16.to_be_bytes()); // 1 byte: not even the UDP header

    let mut options = full.clone();
    // IHL 6 with 4 bytes of NOP options inserted after the 20-byte header.
    options[14] = 0x46;
    options.splice(14 + 20..14 + 20, [1u8, 1, 1, 1]);
    let total = u16::from_be_bytes([options[16], options[17]]) + 4;
    options[16..18].copy_from_slice(&total.to_be_bytes());

    let mut fragment = full.clone();
    fragment[14 + 6] = 0x20; // more fragments
    let mut later_fragment = full.clone();
    later_fragment[14 + 7] = 0x10; // offset 16 × 8 bytes
    let mut frag6 = full6.clone();
    frag6[14 + 6] = 44; // next header: fragment
    let mut hop_by_hop6 = full6.clone();
    hop_by_hop6[14 + 6] = 0;

    let mut cases = vec![
        passed("port that is not a service", other_port, "not_service"),
        passed("service port on an address that is not the node's", service_port_elsewhere, "not_service"),
        passed("udp to a tcp-only service", udp_to_tcp_service, "not_service"),
        passed("tcp header truncated", truncated_tcp, "malformed"),
        passed("udp header truncated", truncated_udp, "malformed"),
        passed("tcp data offset below 5", bad_tcp_offset, "malformed"),
        passed("tcp data offset past the end of the packet", tcp_offset_past_packet, "malformed"),
        passed("udp length past the end of the packet", udp_length_past_packet, "malformed"),
        passed("ipv6 payload shorter than the udp header", ipv6_payload_short, "malformed"),
        passed("ipv4 options", options, "ip_options"),
        passed("first ipv4 fragment", fragment, "fragment"),
        passed("later ipv4 fragment", later_fragment, "fragment"),
        passed("ipv6 fragment header", frag6, "fragment"),
        passed("ipv6 hop-by-hop header", hop_by_hop6, "ip_options"),
    ];
    // The kernel's skb test run refuses frames whose IP header is cut short (EINVAL before the
    // program runs), so these two run on XDP only; TC parses with the same code.
    if hook == Hook::XdpIngress {
        cases.push(passed("ipv4 header truncated", truncated_ip, "malformed"));
        cases.push(passed("ipv6 header truncated", truncated_ipv6, "malformed"));
    }
    f.run_table(&cases);
}

/// The address filter in front of the flow and service lookups: a service port at an address
/// that is neither a VIP nor the node's is turned away by it; an address the node gains later
/// passes at once; maps whose filter was never completed (made before it existed) are not
/// filtered at all.
#[test]
fn the_address_filter_turns_away_only_what_no_service_can_match() {
    for hook in INGRESS_HOOKS {
        the_address_filter_turns_away_only_what_no_service_can_match_on(hook);
    }
}

fn the_address_filter_turns_away_only_what_no_service_can_match_on(hook: Hook) {
    let mut f = fixture(hook);
    let new_node_addr = tcp((client(), 40010), (v4(10, 202, 0, 9), 10000), SYN, b"");
    f.run_table(&[passed("service port at an address the node does not have", new_node_addr.clone(), "not_service")]);

    let mut maps = f.maps();
    let every = lb_common::exposure::EVERY_GROUP;
    let addrs: Vec<(std::net::IpAddr, u32)> = [NODE, NODE6, "127.0.0.1", "10.202.0.9"].iter().map(|a| (a.parse().unwrap(), every)).collect();
    lb::control::reconcile::sync_node_addrs(&addrs, &mut maps).unwrap();
    let out = tcp((client(), 40010), (v4(10, 1, 0, 7), 31700), SYN, b"");
    f.run_table(&[forwarded("the same once the node has the address", new_node_addr, out, "app-port", "10.1.0.7:31700", true)]);

    // With the VIP's bit cleared, its traffic is turned away: the filter is consulted…
    let (word, _) = lb_common::service_addr_bit(&lb_common::v4_bytes([10, 0, 0, 1]), lb_common::FAMILY_V4);
    maps.set_bitmap_word(Bitmap::ServiceAddrs, word, lb_common::SERVICE_ADDRS_COMPLETE).unwrap();
    let (syn, syn_out) = web(SYN, b"");
    f.run_table(&[passed("a VIP whose bit is clear", syn.clone(), "not_service")]);
    // …unless its word is not marked complete.
    maps.set_bitmap_word(Bitmap::ServiceAddrs, word, 0).unwrap();
    f.run_table(&[forwarded("an incomplete filter is not consulted", syn, syn_out, "web", "10.1.0.5:31005", true)]);
}

/// A new flow for a service without an active backend is refused at once, back out of the
/// interface it came in on: TCP with a reset (RFC 9293's rules for a segment that belongs to no
/// connection), UDP with an ICMP/ICMPv6 port unreachable quoting the IP and UDP headers. What
/// may not be answered (a reset, a multicast source) is dropped.
#[test]
fn new_flows_to_an_empty_service_are_refused() {
    for hook in INGRESS_HOOKS {
        new_flows_to_an_empty_service_are_refused_on(hook);
    }
}

fn new_flows_to_an_empty_service_are_refused_on(hook: Hook) {
    let mut f = fixture(hook);
    let (empty, empty6, client6) = (v4(10, 0, 0, 9), v6("fd00::99"), v6("fd00:201::1"));
    let syn = tcp((client(), 40000), (empty, 80), SYN, b"");
    let data = tcp((client(), 40001), (empty, 80), ACK, b"GET /");
    let fin = tcp((client(), 40002), (empty, 80), TcpFlags { fin: true, ..TcpFlags::default() }, b"abc");
    let rst = tcp((client(), 40003), (empty, 80), TcpFlags { rst: true, ..TcpFlags::default() }, b"");
    let multicast_source = tcp((v4(224, 0, 0, 1), 40004), (empty, 80), SYN, b"");
    let dgram = udp((client(), 5353), (empty, 53), b"query");
    let syn6 = tcp((client6, 40005), (empty6, 80), SYN, b"");
    let dgram6 = udp((client6, 5354), (empty6, 53), b"query6");
    // tcp() sends seq 1000 and, with ACK, ack 2000.
    f.run_table(&[
        refused("syn: rst|ack of seq + 1", syn, tcp_reset((empty, 80), (client(), 40000), 0, Some(1001))),
        refused("segment with ack: rst at its ack", data, tcp_reset((empty, 80), (client(), 40001), 2000, None)),
        refused("fin with data: ack counts both", fin, tcp_reset((empty, 80), (client(), 40002), 0, Some(1004))),
        refused("udp: icmp port unreachable", dgram.clone(), port_unreachable(empty, client(), &dgram[14..14 + 28])),
        refused("ipv6 syn", syn6, tcp_reset((empty6, 80), (client6, 40005), 0, Some(1001))),
        refused("ipv6 udp: icmpv6 port unreachable", dgram6.clone(), port_unreachable(empty6, client6, &dgram6[14..14 + 48])),
        dropped("a reset is never answered (it belongs to no flow)", rst, "reset_no_flow"),
        dropped("a multicast source is never answered", multicast_source, "no_backend"),
    ]);
}

/// The flow entry pinning the connection `from` → `to` of `proto`, if any.
fn flow_of(f: &Fixture, from: (std::net::IpAddr, u16), to: (std::net::IpAddr, u16), proto: u8) -> Option<lb_common::FlowInfo> {
    let (src, family) = lb::desired::ip_bytes(from.0);
    let (dst, _) = lb::desired::ip_bytes(to.0);
    f.maps().flow(&lb_common::FlowKey { src, dst, sport: from.1, dport: to.1, proto, family, _pad: 0 }).unwrap()
}

const RST: TcpFlags = TcpFlags { rst: true, syn: false, ack: false, fin: false };

/// The same frame with IPv4 TTL `ttl` (checksum recomputed).
fn with_ttl(frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    reframed(&frame, CLIENT_MAC, NODE_MAC, ttl)
}

/// What is not forwarded claims nothing, on the path to backends behind this node's stack. A
/// reset that belongs to no flow is no new flow: dropped (`reset_no_flow`), nothing pinned,
/// while the reset of a pinned flow is forwarded like its other segments. TTL 0 or 1 does not
/// stop destination NAT: the packet goes to this node's stack, which delivers it to a local
/// task or, forwarding it, answers with ICMP time exceeded itself, exactly as without the
/// balancer; so it is balanced and pinned like any other (the TTL is left as it came).
#[test]
fn the_local_path_pins_no_reset_without_a_flow_and_balances_low_ttls() {
    for hook in INGRESS_HOOKS {
        the_local_path_pins_no_reset_without_a_flow_and_balances_low_ttls_on(hook);
    }
}

fn the_local_path_pins_no_reset_without_a_flow_and_balances_low_ttls_on(hook: Hook) {
    let mut f = fixture(hook);
    let (web_vip, node) = ((v4(10, 0, 0, 1), 80), (v4(10, 201, 0, 2), 10000));
    let to_web = |port, flags, ttl| with_ttl(tcp((client(), port), web_vip, flags, b""), ttl);
    let at_web = |port, flags, ttl| with_ttl(tcp((client(), port), (v4(10, 1, 0, 5), 31005), flags, b""), ttl);
    let dns_ttl_0 = with_ttl(udp((client(), 40104), (v4(10, 0, 0, 2), 53), b"q"), 0);
    let dns_ttl_0_out = with_ttl(udp((client(), 40104), (v4(10, 1, 0, 6), 31053), b"q"), 0);
    let (syn, syn_out) = web(SYN, b"");
    f.run_table(&[
        dropped("a reset to a vip, no flow", to_web(40100, RST, 64), "reset_no_flow"),
        dropped("a reset to a service port, no flow", tcp((client(), 40101), node, RST, b""), "reset_no_flow"),
        forwarded("syn with TTL 0: to the stack", to_web(40102, SYN, 0), at_web(40102, SYN, 0), "web", "10.1.0.5:31005", true),
        forwarded("syn with TTL 1: to the stack", to_web(40103, SYN, 1), at_web(40103, SYN, 1), "web", "10.1.0.5:31005", true),
        forwarded("udp with TTL 0: to the stack", dns_ttl_0, dns_ttl_0_out, "dns", "10.1.0.6:31053", true),
        forwarded("syn of a connection", syn, syn_out, "web", "10.1.0.5:31005", true),
        forwarded("its reset: forwarded on its flow", to_web(40000, RST, 64), at_web(40000, RST, 64), "web", "10.1.0.5:31005", false),
    ]);
    assert_eq!(flow_of(&f, (client(), 40100), web_vip, 6), None, "{hook}: a reset without a flow pinned one");
    assert_eq!(flow_of(&f, (client(), 40101), node, 6), None, "{hook}: a reset without a flow pinned one");
    for port in [40102, 40103] {
        assert!(flow_of(&f, (client(), port), web_vip, 6).is_some(), "{hook}: the TTL-{} syn was balanced but not pinned", port - 40102);
    }
}

fn refused(name: &'static str, input: Vec<u8>, output: Vec<u8>) -> Case {
    let mut counters = xdp_iface(input.len());
    counters.push(("verdict.no_backend_rejected".to_string(), 1));
    Case { name, input, verdict: XDP_TX, output, counters }
}

/// TC egress sees every packet the node sends on an uplink. What is not a reply to a balanced
/// flow passes uncounted; a packet whose headers it does not look up (so a local backend's reply
/// among them would leave with the backend's address) passes and is counted under its own name.
#[test]
fn a_client_endpoint_with_two_connections_keeps_both() {
    for hook in INGRESS_HOOKS {
        a_client_endpoint_with_two_connections_keeps_both_on(hook);
    }
}

/// A connection is keyed by its client's address and port, which its replies carry: while that
/// connection lives, a second one from the same address and port (to another service) is keyed
/// by its whole tuple with a reply entry. Both keep their backend, both get their service
/// address back on replies, and a backend's packets to the client that belong to neither (the
/// task reached directly) leave untouched.
fn a_client_endpoint_with_two_connections_keeps_both_on(hook: Hook) {
    let mut f = fixture(hook);
    let to_port = |flags, payload: &[u8]| tcp((client(), 40000), (v4(10, 201, 0, 2), 10000), flags, payload);
    let to_port_out = |flags, payload: &[u8]| tcp((client(), 40000), (v4(10, 1, 0, 7), 31700), flags, payload);
    let (syn, syn_out) = web(SYN, b"");
    let (ack, ack_out) = web(ACK, b"to web");
    f.run_table(&[
        forwarded("syn to the vip: keyed by the client", syn, syn_out, "web", "10.1.0.5:31005", true),
        forwarded("syn from the same address and port to a service port", to_port(SYN, b""), to_port_out(SYN, b""), "app-port", "10.1.0.7:31700", true),
        forwarded("the first connection's data", ack, ack_out, "web", "10.1.0.5:31005", false),
        forwarded("the second connection's data", to_port(ACK, b"to app"), to_port_out(ACK, b"to app"), "app-port", "10.1.0.7:31700", false),
    ]);
    let maps = f.maps();
    for (dst, dport, backend) in [(v4(10, 0, 0, 1), 80, [10, 1, 0, 5]), (v4(10, 201, 0, 2), 10000, [10, 1, 0, 7])] {
        let flow = flow_of(&f, (client(), 40000), (dst, dport), 6).unwrap_or_else(|| panic!("{hook}: no flow to {dst}:{dport}"));
        let pinned = maps.backends().unwrap()[flow.backend_id as usize];
        assert_eq!(pinned.addr[..4], backend, "{hook}: {dst}:{dport}");
    }

    f.switch_to(Hook::TcEgress).unwrap();
    f.run_table(&[
        restored(
            "the vip's backend replies",
            tcp((v4(10, 1, 0, 5), 31005), (client(), 40000), ACK, b"from web"),
            tcp((v4(10, 0, 0, 1), 80), (client(), 40000), ACK, b"from web"),
        ),
        restored(
            "the service port's backend replies",
            tcp((v4(10, 1, 0, 7), 31700), (client(), 40000), ACK, b"from app"),
            tcp((v4(10, 201, 0, 2), 10000), (client(), 40000), ACK, b"from app"),
        ),
        untouched("the vip's backend to another port of the client", tcp((v4(10, 1, 0, 5), 31005), (client(), 40001), ACK, b"direct")),
        untouched("another task to the client's port", tcp((v4(10, 1, 0, 6), 31005), (client(), 40000), ACK, b"direct")),
        untouched("the vip's backend from another port", tcp((v4(10, 1, 0, 5), 31006), (client(), 40000), ACK, b"direct")),
    ]);
}

#[test]
fn a_client_port_reused_for_another_service_of_the_same_task_gets_its_replies() {
    for hook in INGRESS_HOOKS {
        a_client_port_reused_for_another_service_of_the_same_task_gets_its_replies_on(hook);
    }
}

/// A client that reuses its address and port for another service whose pick is the same task
/// address and port: its first connection has ended (the task cannot hold both), so the new one
/// takes the client key, and the task's replies get the new service's address, not the old
/// one's (found by the end-to-end spread test, whose client reuses ports across services).
fn a_client_port_reused_for_another_service_of_the_same_task_gets_its_replies_on(hook: Hook) {
    let mut f = Fixture::load_hook(hook).unwrap();
    f.apply(
        r#"{"services":[
          {"name":"web","address":"10.0.0.1","port":80,"backends":[{"address":"10.1.0.5","port":31005}]},
          {"name":"web-port","port":10080,"backends":[{"address":"10.1.0.5","port":31005}]}]}"#,
        &[NODE],
    )
    .unwrap();
    let to_port = |flags, payload: &[u8]| tcp((client(), 40000), (v4(10, 201, 0, 2), 10080), flags, payload);
    let (syn, syn_out) = web(SYN, b"");
    f.run_table(&[
        forwarded("syn to the vip", syn, syn_out, "web", "10.1.0.5:31005", true),
        forwarded("later, the same port to the service port", to_port(SYN, b""), web(SYN, b"").1, "web-port", "10.1.0.5:31005", true),
        forwarded("its data", to_port(ACK, b"x"), web(ACK, b"x").1, "web-port", "10.1.0.5:31005", false),
    ]);
    f.switch_to(Hook::TcEgress).unwrap();
    f.run_table(&[restored(
        "the task's reply: from the service port",
        tcp((v4(10, 1, 0, 5), 31005), (client(), 40000), ACK, b"reply"),
        tcp((v4(10, 201, 0, 2), 10080), (client(), 40000), ACK, b"reply"),
    )]);
}

#[test]
fn tc_egress_counts_the_packets_it_cannot_restore() {
    let mut f = fixture(Hook::TcEgress);
    let own = tcp((v4(10, 201, 0, 2), 22), (client(), 50000), ACK, b"ssh");
    let not_ip = vec![0xffu8; 14];
    let reply = tcp((v4(10, 1, 0, 5), 31005), (client(), 40000), ACK, b"reply");
    let truncated = reply[..14 + 20 + 10].to_vec();
    let mut fragment = reply.clone();
    fragment[14 + 6] = 0x20; // more fragments
    let mut options = reply.clone();
    options[14] = 0x46;
    options.splice(14 + 20..14 + 20, [1u8, 1, 1, 1]);
    let total = u16::from_be_bytes([options[16], options[17]]) + 4;
    options[16..18].copy_from_slice(&total.to_be_bytes());
    let reply6 = tcp((v6("fd00:1::5"), 31005), (v6("fd00:201::1"), 40002), ACK, b"reply");
    let mut frag6 = reply6.clone();
    frag6[14 + 6] = 44; // next header: fragment
    let mut hop_by_hop6 = reply6;
    hop_by_hop6[14 + 6] = 0;
    f.run_table(&[
        untouched("the node's own traffic", own),
        untouched("not ip", not_ip),
        passed("tcp header truncated", truncated, "egress_malformed"),
        passed("ipv4 fragment", fragment, "egress_fragment"),
        passed("ipv4 options", options, "egress_ip_options"),
        passed("ipv6 fragment header", frag6, "egress_fragment"),
        passed("ipv6 hop-by-hop header", hop_by_hop6, "egress_ip_options"),
    ]);
}

#[test]
fn draining_keeps_established_flows_and_takes_no_new_ones() {
    for hook in INGRESS_HOOKS {
        draining_keeps_established_flows_and_takes_no_new_ones_on(hook);
    }
}

fn draining_keeps_established_flows_and_takes_no_new_ones_on(hook: Hook) {
    let mut f = fixture(hook);
    let two = SERVICES.replace(
        r#"[{"address":"10.1.0.5","port":31005}]"#,
        r#"[{"address":"10.1.0.5","port":31005},{"address":"10.1.0.8","port":31008}]"#,
    );
    f.apply(&two, &[NODE]).unwrap();
    // Establish one flow per backend: walk source ports until both backends were chosen.
    let mut flow_to = std::collections::BTreeMap::new();
    for port in 41000..41100u16 {
        let (verdict, out) = f.run_packet(&tcp((client(), port), (v4(10, 0, 0, 1), 80), SYN, b"")).unwrap();
        assert_eq!(verdict, expected_verdict(hook, XDP_PASS));
        flow_to.entry(out[14 + 16..14 + 20].to_vec()).or_insert(port);
        if flow_to.len() == 2 {
            break;
        }
    }
    let drained_port = flow_to[&vec![10, 1, 0, 8]];
    let drain = two.replace(r#"{"address":"10.1.0.8","port":31008}"#, r#"{"address":"10.1.0.8","port":31008,"weight":0}"#);
    f.apply(&drain, &[NODE]).unwrap();

    let established = tcp((client(), drained_port), (v4(10, 0, 0, 1), 80), ACK, b"more");
    let established_out = tcp((client(), drained_port), (v4(10, 1, 0, 8), 31008), ACK, b"more");
    let mut cases = vec![forwarded("established flow of a draining backend", established, established_out, "web", "10.1.0.8:31008", false)];
    // Every new flow goes to the remaining active backend.
    for port in 42000..42020u16 {
        let (syn, syn_out) = (
            tcp((client(), port), (v4(10, 0, 0, 1), 80), SYN, b""),
            tcp((client(), port), (v4(10, 1, 0, 5), 31005), SYN, b""),
        );
        cases.push(forwarded("new flow while draining", syn, syn_out, "web", "10.1.0.5:31005", true));
    }
    f.run_table(&cases);

    // Removing the backend outright: its flow is re-balanced to a live backend.
    f.apply(SERVICES, &[NODE]).unwrap();
    let moved = tcp((client(), drained_port), (v4(10, 0, 0, 1), 80), ACK, b"after");
    let moved_out = tcp((client(), drained_port), (v4(10, 1, 0, 5), 31005), ACK, b"after");
    f.run_table(&[forwarded("flow of a removed backend moves", moved, moved_out, "web", "10.1.0.5:31005", true)]);
}

#[test]
fn the_kernel_picks_the_backend_the_userspace_ring_says() {
    for hook in INGRESS_HOOKS {
        the_kernel_picks_the_backend_the_userspace_ring_says_on(hook);
    }
}

fn the_kernel_picks_the_backend_the_userspace_ring_says_on(hook: Hook) {
    let mut f = fixture(hook);
    let many: Vec<String> = (1..=7).map(|i| format!(r#"{{"address":"10.1.1.{i}","port":3100{i}}}"#)).collect();
    let json = format!(r#"{{"services":[{{"name":"many","address":"10.0.0.50","port":80,"backends":[{}]}}]}}"#, many.join(","));
    f.apply(&json, &[NODE]).unwrap();
    let maps = f.maps();
    let (_, info) = maps.services().unwrap()[0];
    assert_eq!(info.ring_size, lb_common::maglev::ring_size_for([1; 7].into_iter()), "7 backends, 100 slots each");
    let ring = maps.read_ring(info.ring_start, info.ring_size).unwrap();
    let backends = maps.backends().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for port in 20000..20200u16 {
        let src = lb_common::v4_bytes([10, 201, 0, 1]);
        let slot = hash::ring_slot(hash::flow_hash(&src, port, 6), info.ring_size);
        let expected = backends[ring[slot as usize] as usize];
        let (verdict, out) = f.run_packet(&tcp((client(), port), (v4(10, 0, 0, 50), 80), SYN, b"")).unwrap();
        assert_eq!(verdict, expected_verdict(hook, XDP_PASS));
        assert_eq!(out[14 + 16..14 + 20], expected.addr[..4], "source port {port}");
        assert_eq!(u16::from_be_bytes([out[14 + 22], out[14 + 23]]), expected.port, "source port {port}");
        seen.insert(expected.port);
    }
    assert_eq!(seen.len(), 7, "200 flows should reach all 7 backends");
}

/// Full NAT through BPF_PROG_TEST_RUN, inside a namespace with a veth uplink, addresses and
/// permanent neighbours, so the FIB lookups have a known answer.
/// The uplink's and the remote backend's link-layer addresses in `uplink_namespace`.
const UP_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
const BACKEND_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x10];
/// The clients' router's, there.
const ROUTER_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
/// A TCP and a UDP service on the backend behind the uplink (full NAT).
const REMOTE_WEB: &str = r#"{"services":[
  {"name":"web","address":"10.0.0.1","port":80,"backends":[{"address":"10.202.0.10","port":31000}]},
  {"name":"dns","address":"10.0.0.1","port":53,"protocol":"udp","backends":[{"address":"10.202.0.10","port":31053}]}]}"#;

/// A namespace whose veth uplink `up0` (`UP_MAC`, 10.202.0.2/24) has permanent neighbours for
/// the clients' router 10.202.0.1 and the backend 10.202.0.10 (`BACKEND_MAC`), IPv4 forwarding
/// on: the programs' route lookups have a known answer.
fn uplink_namespace(prefix: &str) -> lb_tests::netns::Netns {
    let ns = lb_tests::netns::Netns::new(prefix).unwrap();
    ns.ip(&["link", "add", "up0", "address", "02:aa:00:00:00:02", "type", "veth", "peer", "name", "up0p"]).unwrap();
    ns.ip(&["link", "set", "up0p", "up"]).unwrap();
    ns.addr("up0", "10.202.0.2/24").unwrap();
    for (neighbour, mac) in [("10.202.0.10", "02:aa:00:00:00:10"), ("10.202.0.1", "02:aa:00:00:00:01")] {
        ns.ip(&["neigh", "add", neighbour, "lladdr", mac, "dev", "up0", "nud", "permanent"]).unwrap();
    }
    ns.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]).output().unwrap();
    ns
}

/// `hook`'s program with `services` (node address 10.202.0.2), packets arriving on the uplink
/// of `uplink_namespace` (whose thread this must run on); returns the fixture and the uplink.
fn on_the_uplink(hook: Hook, services: &str) -> (Fixture, u32) {
    let uplink = lb::node::preflight::interface_index("up0").unwrap();
    let mut f = Fixture::load_hook(hook).unwrap();
    f.apply(services, &["10.202.0.2"]).unwrap();
    f.arrive_on(uplink).unwrap();
    (f, uplink)
}

/// The NAT port the first probe of a new full-NAT flow from `client`:`port` takes.
fn first_nat_port(client: [u8; 4], port: u16, proto: u8) -> u16 {
    let span = (lb_common::DEFAULT_NAT_PORT_MAX - lb_common::DEFAULT_NAT_PORT_MIN) as u32 + 1;
    lb_common::DEFAULT_NAT_PORT_MIN + hash::ring_slot(hash::flow_hash(&lb_common::v4_bytes(client), port, proto), span) as u16
}

/// The interface counters of one packet of `len` bytes arriving on `uplink`.
fn uplink_iface(uplink: u32, len: usize) -> Vec<(String, u64)> {
    vec![
        (format!("iface_stats{{ifindex={uplink},hook={}}}.packets", Hook::XdpIngress), 1),
        (format!("iface_stats{{ifindex={uplink},hook={}}}.bytes", Hook::XdpIngress), len as u64),
    ]
}

/// A case on the uplink that is passed or dropped untouched with `reason`.
fn unforwarded(name: &'static str, input: Vec<u8>, uplink: u32, verdict: u32, reason: &str) -> Case {
    let mut counters = uplink_iface(uplink, input.len());
    counters.push((format!("verdict.{reason}"), 1));
    Case { name, output: input.clone(), input, verdict, counters }
}

/// Every full-NAT mapping, by its key.
fn nat_mappings(f: &Fixture) -> Vec<(lb_common::FlowKey, lb_common::NatReply)> {
    let mut seen = Vec::new();
    f.maps()
        .expire_nat_mappings(&mut |key, reply| {
            seen.push((*key, *reply));
            false
        })
        .unwrap();
    seen
}

#[test]
fn full_nat_forward_and_reply_byte_for_byte() {
    for hook in INGRESS_HOOKS {
        full_nat_forward_and_reply_byte_for_byte_on(hook);
    }
}

fn full_nat_forward_and_reply_byte_for_byte_on(hook: Hook) {
    uplink_namespace("lbf").run(move || {
        let (mut f, uplink) = on_the_uplink(hook, REMOTE_WEB);
        let client = v4(10, 202, 0, 1);
        let nat_port = first_nat_port([10, 202, 0, 1], 40000, 6);
        let iface = |len: usize| uplink_iface(uplink, len);
        let syn = tcp((client, 40000), (v4(10, 0, 0, 1), 80), SYN, b"");
        let syn_out = reframed(&tcp((v4(10, 202, 0, 2), nat_port), (v4(10, 202, 0, 10), 31000), SYN, b""), UP_MAC, BACKEND_MAC, 63);
        let mut counters = iface(syn.len());
        counters.extend([
            ("verdict.fwd_nat".to_string(), 1),
            ("service{web}.packets".to_string(), 1),
            ("service{web}.bytes".to_string(), syn.len() as u64),
            ("service{web}.new_flows".to_string(), 1),
            ("backend{10.202.0.10:31000}.packets".to_string(), 1),
            ("backend{10.202.0.10:31000}.bytes".to_string(), syn.len() as u64),
            ("backend{10.202.0.10:31000}.new_flows".to_string(), 1),
        ]);
        let reply = tcp((v4(10, 202, 0, 10), 31000), (v4(10, 202, 0, 2), nat_port), ACK, b"hello");
        let reply_out = reframed(&tcp((v4(10, 0, 0, 1), 80), (client, 40000), ACK, b"hello"), UP_MAC, ROUTER_MAC, 63);
        let mut reply_counters = iface(reply.len());
        reply_counters.push(("verdict.nat_reply".to_string(), 1));
        let mut low_ttl = tcp((v4(10, 202, 0, 10), 31000), (v4(10, 202, 0, 2), nat_port), ACK, b"x");
        low_ttl[14 + 8] = 1;
        let mut low_ttl_counters = iface(low_ttl.len());
        low_ttl_counters.push(("verdict.ttl_exceeded".to_string(), 1));
        let mut dying_syn = tcp((client, 40001), (v4(10, 0, 0, 1), 80), SYN, b"");
        dying_syn[14 + 8] = 1;
        let mut dying_counters = iface(dying_syn.len());
        dying_counters.push(("verdict.ttl_exceeded".to_string(), 1));
        f.run_table(&[
            Case { name: "syn with TTL 1 to a remote backend: to the stack, nothing claimed", output: dying_syn.clone(), input: dying_syn, verdict: XDP_PASS, counters: dying_counters },
            Case { name: "syn to a remote backend: full NAT, sent back out", input: syn, verdict: XDP_TX, output: syn_out, counters },
            Case { name: "the backend's reply: back to the client from the VIP", input: reply, verdict: XDP_TX, output: reply_out, counters: reply_counters },
            Case { name: "reply with TTL 1 goes to the stack", output: low_ttl.clone(), input: low_ttl, verdict: XDP_PASS, counters: low_ttl_counters },
        ]);
        // The dying SYN pinned no flow (and so took no NAT port): found by the fuzzer.
        let (client_addr, family) = lb::desired::ip_bytes(client);
        let (vip, _) = lb::desired::ip_bytes(v4(10, 0, 0, 1));
        let key = lb_common::FlowKey { src: client_addr, dst: vip, sport: 40001, dport: 80, proto: 6, family, _pad: 0 };
        assert_eq!(f.maps().flow(&key).unwrap(), None, "{hook}: a SYN that was not forwarded pinned a flow");

        // The connection's flow entry is evicted (a full table) while its NAT mapping stays: its
        // next segment is pinned again with the same NAT port, so the backend sees the same
        // connection.
        // (The client's only connection: keyed by its address and port.)
        let flow4 = lb_common::FlowKey4::client([10, 202, 0, 1], 40000, 6);
        let pinned = aya::maps::MapData::from_pin(f.pins.path().join("flows4")).unwrap();
        let mut flows: aya::maps::HashMap<_, lb_common::FlowKey4, lb_common::FlowInfo> = aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(pinned)).unwrap();
        flows.remove(&flow4).unwrap();
        let data = tcp((client, 40000), (v4(10, 0, 0, 1), 80), ACK, b"more");
        let (verdict, out) = f.run_packet(&data).unwrap();
        let same_port = reframed(&tcp((v4(10, 202, 0, 2), nat_port), (v4(10, 202, 0, 10), 31000), ACK, b"more"), UP_MAC, BACKEND_MAC, 63);
        assert_eq!(verdict, lb_tests::fixture::expected_verdict(hook, XDP_TX), "{hook}");
        assert!(out == same_port, "{hook}: the re-pinned connection left from another port: {:?}", lb_tests::fixture::packet_diff(&same_port, &out));
    })
    .unwrap();
}

#[test]
fn udp_flows_time_out_and_rebalance() {
    for hook in INGRESS_HOOKS {
        udp_flows_time_out_and_rebalance_on(hook);
    }
}

fn udp_flows_time_out_and_rebalance_on(hook: Hook) {
    let fixture = lb_tests::fixture::FIXTURE_LIMITS;
    let limits = lb::dataplane::loader::LoadConfig {
        settings: lb::dataplane::loader::RuntimeSettings { udp_timeout_secs: 1, ..fixture.settings },
        ..fixture
    };
    let mut f = Fixture::load_with(hook, limits).unwrap();
    let two = r#"{"services":[{"name":"dns","address":"10.0.0.2","port":53,"protocol":"udp","backends":[
        {"address":"10.1.0.6","port":31053},{"address":"10.1.0.7","port":31053}]}]}"#;
    f.apply(two, &[NODE]).unwrap();
    let query = udp((client(), 5353), (v4(10, 0, 0, 2), 53), b"q");
    let (_, out) = f.run_packet(&query).unwrap();
    let first = out[14 + 16..14 + 20].to_vec();
    let (drained, other) = if first == [10, 1, 0, 6] { ("10.1.0.6", [10, 1, 0, 7]) } else { ("10.1.0.7", [10, 1, 0, 6]) };
    f.apply(&two.replace(&format!(r#""address":"{drained}","port":31053}}"#), &format!(r#""address":"{drained}","port":31053,"weight":0}}"#)), &[NODE])
        .unwrap();
    let (_, out) = f.run_packet(&query).unwrap();
    assert_eq!(out[14 + 16..14 + 20], first[..], "a live UDP flow stays on its draining backend");
    // `lb explain` decides as the programs do (lb_common::liveness), from the pinned settings.
    let explain = |f: &Fixture| {
        let clock = lb::inspect::explain::udp_clock(f.pins.path());
        lb::inspect::explain::explain(&f.maps(), lb::desired::Proto::Udp, "10.201.0.1:5353".parse().unwrap(), "10.0.0.2:53".parse().unwrap(), clock, None, None).unwrap()
    };
    assert_eq!(explain(&f).flow, "existing", "{hook}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let explained = explain(&f);
    assert_eq!(explained.flow, "new", "{hook}: idle past --udp-timeout, explain says the flow is gone");
    let (_, out) = f.run_packet(&query).unwrap();
    assert_eq!(out[14 + 16..14 + 20], other, "after the idle timeout the flow is re-balanced");
    let predicted = explained.backend.map(|b| b.address);
    assert_eq!(predicted, Some(std::net::IpAddr::from(<[u8; 4]>::try_from(&out[14 + 16..14 + 20]).unwrap())), "{hook}: where explain said");
}

#[test]
fn flows_written_by_layout_1_keep_working_after_an_upgrade() {
    for hook in INGRESS_HOOKS {
        flows_written_by_layout_1_keep_working_after_an_upgrade_on(hook);
    }
}

/// Maps of layout 1 key every IPv4 flow by its whole tuple and keep a reply entry per local
/// flow. An agent of this layout adopting them must still find those flows (not re-pin them as
/// new) and restore their replies.
fn flows_written_by_layout_1_keep_working_after_an_upgrade_on(hook: Hook) {
    use aya::maps::{Array, HashMap, Map, MapData};
    let mut f = fixture(hook);
    let pin = |name: &str| MapData::from_pin(f.pins.path().join(name)).unwrap();
    let mut settings: Array<_, lb_common::Settings> = Array::try_from(Map::Array(pin("settings"))).unwrap();
    let layout_1 = lb_common::Settings { layout: 1, ..settings.get(&0, 0).unwrap() };
    settings.set(0, layout_1, 0).unwrap();
    let backend_id = f.maps().backends().unwrap().iter().position(|b| b.addr[..4] == [10, 1, 0, 5] && b.port == 31005).unwrap() as u32;
    let backend = f.maps().backends().unwrap()[backend_id as usize];
    let mut flows: HashMap<_, lb_common::FlowKey4, lb_common::FlowInfo> = HashMap::try_from(Map::LruHashMap(pin("flows4"))).unwrap();
    let tuple = lb_common::FlowKey4 { src: [10, 201, 0, 1], dst: [10, 0, 0, 1], sport: 40000, dport: 80, proto: 6, _pad: 0, _pad2: 0 };
    let flow = lb_common::FlowInfo { backend_id, backend_generation: backend.generation, ..Default::default() };
    flows.insert(tuple, flow, 0).unwrap();
    let mut replies: HashMap<_, lb_common::FlowKey4, lb_common::ReplyInfo> = HashMap::try_from(Map::LruHashMap(pin("replies4"))).unwrap();
    let reply_key = lb_common::FlowKey4 { src: [10, 1, 0, 5], dst: [10, 201, 0, 1], sport: 31005, dport: 40000, proto: 6, _pad: 0, _pad2: 0 };
    let reply = lb_common::ReplyInfo { service_addr: lb_common::v4_bytes([10, 0, 0, 1]), service_port: 80, ..Default::default() };
    replies.insert(reply_key, reply, 0).unwrap();

    // The upgrade: this version's agent loads the same pins (its programs replace the old ones).
    let _adopted = lb::dataplane::loader::load_object(f.pins.path(), &lb_tests::fixture::FIXTURE_LIMITS).unwrap();
    let (ack, ack_out) = web(ACK, b"after the upgrade");
    f.run_table(&[forwarded("a layout-1 flow's data: found, not new", ack, ack_out, "web", "10.1.0.5:31005", false)]);
    f.switch_to(Hook::TcEgress).unwrap();
    f.run_table(&[restored(
        "its reply: restored from the layout-1 reply entry",
        tcp((v4(10, 1, 0, 5), 31005), (client(), 40000), ACK, b"reply"),
        tcp((v4(10, 0, 0, 1), 80), (client(), 40000), ACK, b"reply"),
    )]);
}

#[test]
fn new_flows_and_full_nat_follow_a_route_change() {
    for hook in INGRESS_HOOKS {
        new_flows_and_full_nat_follow_a_route_change_on(hook);
    }
}

/// The route to a backend is looked up once per `ROUTE_TTL_NS` and re-used meanwhile: after a
/// route change, new flows and established full-NAT flows take the new next hop, and a backend
/// that became one of this node's addresses is reached through the stack.
fn new_flows_and_full_nat_follow_a_route_change_on(hook: Hook) {
    // Routers 10.202.0.10 and .20 on the uplink; the backend behind the first at first.
    let ns = uplink_namespace("lbr");
    ns.ip(&["neigh", "add", "10.202.0.20", "lladdr", "02:aa:00:00:00:20", "dev", "up0", "nud", "permanent"]).unwrap();
    ns.ip(&["route", "add", "10.99.0.1/32", "via", "10.202.0.10"]).unwrap();
    let ns_name = ns.name().to_owned();
    ns.run(move || {
        let (mut f, _) =
            on_the_uplink(hook, r#"{"services":[{"name":"web","address":"10.0.0.1","port":80,"backends":[{"address":"10.99.0.1","port":31000}]}]}"#);
        let mut send = |port: u16, flags| {
            let (verdict, out) = f.run_packet(&tcp((v4(10, 202, 0, 1), port), (v4(10, 0, 0, 1), 80), flags, b"")).unwrap();
            (verdict, out[..6].to_vec(), out[14 + 16..14 + 20].to_vec())
        };
        let via = |router: u8| vec![0x02, 0xaa, 0, 0, 0, router];
        let tx = expected_verdict(hook, XDP_TX);
        assert_eq!(send(40000, SYN), (tx, via(0x10), vec![10, 99, 0, 1]), "{hook}: first flow via the first router");
        assert_eq!(send(40001, SYN), (tx, via(0x10), vec![10, 99, 0, 1]), "{hook}: second flow, the same route");

        lb_tests::netns::ip(&["-n", &ns_name, "route", "replace", "10.99.0.1/32", "via", "10.202.0.20"]).unwrap();
        std::thread::sleep(std::time::Duration::from_nanos(lb_common::ROUTE_TTL_NS) * 3 / 2);
        assert_eq!(send(40002, SYN), (tx, via(0x20), vec![10, 99, 0, 1]), "{hook}: a new flow after the change");
        assert_eq!(send(40000, ACK), (tx, via(0x20), vec![10, 99, 0, 1]), "{hook}: an established full-NAT flow after the change");

        lb_tests::netns::ip(&["-n", &ns_name, "addr", "add", "10.99.0.1/32", "dev", "lo"]).unwrap();
        std::thread::sleep(std::time::Duration::from_nanos(lb_common::ROUTE_TTL_NS) * 3 / 2);
        let (verdict, _, dst) = send(40003, SYN);
        assert_eq!((verdict, dst), (expected_verdict(hook, XDP_PASS), vec![10, 99, 0, 1]), "{hook}: now a local address: to the stack");
    })
    .unwrap();
}

#[test]
fn full_nat_claims_nothing_for_what_it_does_not_forward() {
    for hook in INGRESS_HOOKS {
        full_nat_claims_nothing_for_what_it_does_not_forward_on(hook);
    }
}

/// A forward out of an uplink needs a TTL above 1: with TTL 0 or 1 the packet goes to the stack
/// (`ttl_exceeded`, which answers with ICMP time exceeded), decided before any flow entry or NAT
/// port is claimed, for a new flow as for an established one (whose mapping is not stamped: a
/// dying reset does not close it, a UDP flow's idle timer is not reset). A reset without a flow is dropped (`reset_no_flow`) and
/// claims nothing either. The reset with TTL 0 to a full-NAT service is seed 663931354's case
/// 10429; its flow there had been pinned by an earlier (mutated) frame of the same tuple.
fn full_nat_claims_nothing_for_what_it_does_not_forward_on(hook: Hook) {
    uplink_namespace("lbt").run(move || {
        let (mut f, uplink) = on_the_uplink(hook, REMOTE_WEB);
        let (client, vip) = (v4(10, 202, 0, 1), v4(10, 0, 0, 1));
        let to_web = |port, flags, ttl| with_ttl(tcp((client, port), (vip, 80), flags, b""), ttl);
        let to_dns = |port, ttl| with_ttl(udp((client, port), (vip, 53), b"q"), ttl);
        let pass = |name, input, reason| unforwarded(name, input, uplink, XDP_PASS, reason);
        f.run_table(&[
            unforwarded("a reset, no flow", to_web(40000, RST, 64), uplink, XDP_DROP, "reset_no_flow"),
            unforwarded("a reset with TTL 0, no flow", to_web(40001, RST, 0), uplink, XDP_DROP, "reset_no_flow"),
            pass("syn with TTL 0", to_web(40002, SYN, 0), "ttl_exceeded"),
            pass("syn with TTL 1", to_web(40003, SYN, 1), "ttl_exceeded"),
            pass("udp with TTL 0", to_dns(40004, 0), "ttl_exceeded"),
            pass("udp with TTL 1", to_dns(40005, 1), "ttl_exceeded"),
        ]);
        for (port, proto, dport) in [(40000, 6, 80), (40001, 6, 80), (40002, 6, 80), (40003, 6, 80), (40004, 17, 53), (40005, 17, 53)] {
            assert_eq!(flow_of(&f, (client, port), (vip, dport), proto), None, "{hook}: client port {port} got a flow");
        }
        assert_eq!(nat_mappings(&f), vec![], "{hook}: a packet that was not forwarded took a NAT port");

        let tx = expected_verdict(hook, XDP_TX);
        assert_eq!(f.run_packet(&to_web(40010, SYN, 64)).unwrap().0, tx, "{hook}: the connection's syn");
        let opened = nat_mappings(&f);
        assert_eq!(opened.len(), 1, "{hook}");
        f.run_table(&[
            pass("the connection's reset with TTL 0", to_web(40010, RST, 0), "ttl_exceeded"),
            pass("its data with TTL 1", to_web(40010, ACK, 1), "ttl_exceeded"),
        ]);
        assert_eq!(nat_mappings(&f), opened, "{hook}: a reset that was not forwarded stamped the mapping");
        assert!(flow_of(&f, (client, 40010), (vip, 80), 6).is_some(), "{hook}: the connection lost its flow");

        // A UDP flow's idle timer runs from its last forwarded packet, not from one that was not.
        assert_eq!(f.run_packet(&to_dns(40011, 64)).unwrap().0, tx, "{hook}: the udp flow's first datagram");
        let stamped = flow_of(&f, (client, 40011), (vip, 53), 17).expect("the udp flow").last_seen_ns;
        f.run_table(&[pass("its datagram with TTL 1", to_dns(40011, 1), "ttl_exceeded")]);
        let after = flow_of(&f, (client, 40011), (vip, 53), 17).expect("the udp flow").last_seen_ns;
        assert_eq!(after, stamped, "{hook}: a datagram that was not forwarded kept the flow alive");
    })
    .unwrap();
}
