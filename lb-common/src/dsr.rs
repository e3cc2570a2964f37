//! Direct server return between balancer nodes and backend nodes: how a backend is reached
//! ([`reach`], shared by the programs and `lb explain`), the encapsulation's wire format, and the
//! node ranges it is allowed between.
//!
//! A balancer node (`lb run --dsr`) sends a new flow's packets for a backend on another node,
//! when that backend's address is in `--dsr-nodes`, unchanged inside an outer IP/UDP header to
//! the backend's address; the agent there (`--decap-from`) removes the outer header, rewrites the
//! destination to the backend (as its own local path does) and remembers the service address
//! for the replies, which then leave from the service straight to the client.
//!
//! The format is GUE (draft-ietf-intarea-gue, variant 0) on UDP port 6080 (Katran's GUE port):
//! the GUE header names the inner protocol (IPIP or IPv6) and carries 4 bytes of private data,
//! the backend's port and a hop flag. IPIP has no field for either: the backend node could not
//! tell which of its tasks a flow was balanced to (a node may run several tasks of a service,
//! and it must not balance again — the balancer's choice is the one every node shares), nor a
//! packet already forwarded once by the previous ring's second chance from one to be forwarded
//! again. UDP also gives the backend node's NIC RSS entropy: the outer source port is the flow's
//! hash, where an IPIP flow from one balancer lands on one receive queue.
//!
//! Overhead: 36 bytes over IPv4 (20 IP + 8 UDP + 4 GUE + 4 private), 56 over IPv6. The outer
//! UDP checksum is zero (RFC 768 over IPv4; RFC 6935 allows it for tunnels over IPv6): the
//! inner packet keeps its own checksums end to end.

use crate::{csum, UplinkHop, FAMILY_V4};

/// Default UDP port of the encapsulation (`--dsr-port`).
pub const DEFAULT_PORT: u16 = 6080;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const TCP_LEN: usize = 20;
/// GUE header (4 bytes) and its private data (4 bytes).
pub const GUE_LEN: usize = 8;
const PROTO_UDP: u8 = 17;
const PROTO_IPIP: u8 = 4;
const PROTO_IPV6: u8 = 41;
const TTL: u8 = 64;

/// GUE's first byte: version 0, not a control message, one 32-bit word of optional data (the
/// private data).
const GUE_FIRST: u8 = 1;

/// `GuePrivate::flags`: a previous-ring second chance has already forwarded this packet once;
/// it is never forwarded again.
pub const HOP_SECOND_CHANCE: u8 = 1;

/// Frame bytes before the inner IP header once encapsulated (Ethernet + outer IP + UDP + GUE).
pub const OUTER4_LEN: usize = ETH_LEN + IPV4_LEN + UDP_LEN + GUE_LEN;
pub const OUTER6_LEN: usize = ETH_LEN + IPV6_LEN + UDP_LEN + GUE_LEN;

/// Bytes the encapsulation adds to a packet of `family`.
#[inline(always)]
pub const fn overhead(family: u8) -> usize {
    (if family == FAMILY_V4 { IPV4_LEN } else { IPV6_LEN }) + UDP_LEN + GUE_LEN
}

/// The largest TCP MSS a SYN towards a DSR backend may announce when the balancer's egress has
/// `mtu` (its IP MTU): a full segment plus the encapsulation must fit. The clamp applies to both
/// directions' SYNs that pass the balancer (only the client's do, with DSR), so the client sends
/// segments that fit once encapsulated.
#[inline(always)]
pub const fn mss_limit(mtu: u32, family: u8) -> u16 {
    let ip = if family == FAMILY_V4 { IPV4_LEN } else { IPV6_LEN };
    let fixed = (overhead(family) + ip + TCP_LEN) as u32;
    if mtu <= fixed {
        return 0;
    }
    let mss = mtu - fixed;
    if mss > u16::MAX as u32 {
        u16::MAX
    } else {
        mss as u16
    }
}

/// How a new flow reaches its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Through this node's stack: destination NAT only (the backend is here, or behind a
    /// non-uplink interface).
    Local,
    /// Out of an uplink with source and destination rewritten; replies come back here.
    FullNat,
    /// Out of an uplink inside the encapsulation; replies go straight to the client.
    Dsr,
}

impl Reach {
    /// How an established flow's entry (`FlowInfo::kind`) reaches its backend.
    pub const fn of_flow(kind: u8) -> Reach {
        match kind {
            crate::FLOW_NAT => Reach::FullNat,
            crate::FLOW_DSR => Reach::Dsr,
            _ => Reach::Local,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Reach::Local => "local",
            Reach::FullNat => "full-nat",
            Reach::Dsr => "dsr",
        }
    }
}

/// How a backend is reached: `via_uplink` is the route lookup's answer (another node, out of an
/// uplink); DSR when this node encapsulates (`Settings::dsr_flags`) and the backend's address is
/// in `--dsr-nodes` (`in_dsr_nodes`, read only then: a node running the agent that
/// decapsulates). Every other remote backend keeps full NAT.
#[inline(always)]
pub fn reach(via_uplink: bool, dsr_flags: u16, in_dsr_nodes: impl FnOnce() -> bool) -> Reach {
    if !via_uplink {
        Reach::Local
    } else if dsr_flags & ENCAP != 0 && in_dsr_nodes() {
        Reach::Dsr
    } else {
        Reach::FullNat
    }
}

/// `Settings::dsr_flags`: new flows to backends in `DSR_NODES` are encapsulated (`--dsr`).
pub const ENCAP: u16 = 1;
/// `Settings::dsr_flags`: encapsulated packets from `DECAP_FROM` are decapsulated
/// (`--decap-from`).
pub const DECAP: u16 = 2;

/// Whether a decapsulated packet is one for the previous ring's second chance: a TCP segment
/// that opens nothing (not a SYN: a new connection is the named backend's), of a connection this
/// node holds no reply entry for (`known`), not forwarded by a second chance already.
#[inline(always)]
pub const fn wants_second_chance(hop_flags: u8, proto: u8, tcp_flags: u8, known: bool) -> bool {
    hop_flags & HOP_SECOND_CHANCE == 0 && proto == crate::PROTO_TCP && tcp_flags & crate::TCP_SYN == 0 && !known
}

/// Whether the backend `backend_id` (`backend`) the previous ring of service `service_id` gives
/// a flow of `family` is a second chance for it: a real entry of that service, not removed since
/// (draining is fine: it keeps its connections), other than the backend the packet named.
#[inline(always)]
pub fn second_chance_to(backend_id: u32, backend: &crate::BackendInfo, service_id: u32, family: u8, named: &[u8; 16], named_port: u16) -> bool {
    let other = backend.port != named_port || backend.addr != *named;
    backend_id != 0 && backend.state != crate::BACKEND_UNUSED && backend.service_id == service_id && backend.family == family && other
}

/// What the outer headers of one encapsulated packet say.
pub struct Outer<'a> {
    /// The route to the backend: the link-layer addresses, and this node's address on it (the
    /// outer source).
    pub hop: &'a UplinkHop,
    /// The backend's address.
    pub dst: &'a [u8; 16],
    /// Length of the inner IP packet.
    pub inner_len: u16,
    /// The flow's hash (outer source port, IPv6 flow label).
    pub hash: u32,
    pub port: u16,
    pub backend_port: u16,
    pub hop_flags: u8,
}

/// Ethernet + IPv4 + UDP + GUE in front of an IPv4 packet.
pub fn outer_v4(o: &Outer, out: &mut [u8; OUTER4_LEN]) {
    ethernet(o, out, 0x0800);
    let ip = ETH_LEN;
    let total = IPV4_LEN + UDP_LEN + GUE_LEN + o.inner_len as usize;
    out[ip] = 0x45;
    out[ip + 1] = 0;
    put16(out, ip + 2, total as u16);
    // Identification 0 with DF: an atomic datagram (RFC 6864 §4.1), never fragmented on the way.
    put16(out, ip + 4, 0);
    put16(out, ip + 6, 0x4000);
    out[ip + 8] = TTL;
    out[ip + 9] = PROTO_UDP;
    put16(out, ip + 10, 0);
    out[ip + 12..ip + 16].copy_from_slice(&o.hop.src[..4]);
    out[ip + 16..ip + 20].copy_from_slice(&o.dst[..4]);
    let check = !csum::fold(csum::sum_words(0, &out[ip..ip + IPV4_LEN]));
    put16(out, ip + 10, check);
    udp_and_gue(o, out, ip + IPV4_LEN, PROTO_IPIP);
}

/// Ethernet + IPv6 + UDP + GUE in front of an IPv6 packet.
pub fn outer_v6(o: &Outer, out: &mut [u8; OUTER6_LEN]) {
    ethernet(o, out, 0x86dd);
    let ip = ETH_LEN;
    // Version 6, traffic class 0, the flow's hash as the flow label (ECMP entropy).
    let first = 0x6000_0000u32 | (o.hash & 0x000f_ffff);
    out[ip..ip + 4].copy_from_slice(&first.to_be_bytes());
    put16(out, ip + 4, (UDP_LEN + GUE_LEN) as u16 + o.inner_len);
    out[ip + 6] = PROTO_UDP;
    out[ip + 7] = TTL;
    out[ip + 8..ip + 24].copy_from_slice(&o.hop.src);
    out[ip + 24..ip + 40].copy_from_slice(o.dst);
    udp_and_gue(o, out, ip + IPV6_LEN, PROTO_IPV6);
}

fn ethernet(o: &Outer, out: &mut [u8], ether_type: u16) {
    out[..6].copy_from_slice(&o.hop.dmac);
    out[6..12].copy_from_slice(&o.hop.smac);
    put16(out, 12, ether_type);
}

fn udp_and_gue(o: &Outer, out: &mut [u8], udp: usize, inner_proto: u8) {
    put16(out, udp, entropy_port(o.hash));
    put16(out, udp + 2, o.port);
    put16(out, udp + 4, (UDP_LEN + GUE_LEN) as u16 + o.inner_len);
    put16(out, udp + 6, 0);
    let gue = udp + UDP_LEN;
    out[gue] = GUE_FIRST;
    out[gue + 1] = inner_proto;
    put16(out, gue + 2, 0);
    put16(out, gue + 4, o.backend_port);
    out[gue + 6] = o.hop_flags;
    out[gue + 7] = 0;
}

/// The outer UDP source port of a flow with hash `hash`: in the dynamic range (RFC 6335), so a
/// firewall on the way sees an ordinary ephemeral port.
#[inline(always)]
pub const fn entropy_port(hash: u32) -> u16 {
    0xc000 | (hash & 0x3fff) as u16
}

/// What an encapsulated packet's GUE header and private data say, if they are this format for
/// an inner packet of `family`: (the backend's port, hop flags).
#[inline(always)]
pub fn read_gue(gue: &[u8; GUE_LEN], family: u8) -> Option<(u16, u8)> {
    let proto = if family == FAMILY_V4 { PROTO_IPIP } else { PROTO_IPV6 };
    let port = u16::from_be_bytes([gue[4], gue[5]]);
    let known_flags = gue[6] & !HOP_SECOND_CHANCE == 0;
    let fits = gue[0] == GUE_FIRST && gue[1] == proto && gue[2] == 0 && gue[3] == 0 && gue[7] == 0;
    (fits && known_flags && port != 0).then_some((port, gue[6]))
}

fn put16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Entries of each node-range trie (`--dsr-nodes`, `--decap-from`): ranges of a cluster's
/// fabric, a handful each.
pub const MAX_NODE_RANGES: u32 = 256;

/// Bits of a `NodeRange` key before the address: the family.
pub const NODE_FIXED_BITS: u32 = 8;

/// Data of a `DSR_NODES` / `DECAP_FROM` key (an LPM trie: this behind a u32 prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRange {
    pub family: u8,
    /// IPv4 in the first 4 bytes, the rest zero (as every address field).
    pub addr: [u8; 16],
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<NodeRange>() == 20);

/// A whole `NodeRange` lookup key, laid out as the trie's, built in the programs' per-CPU
/// scratch area (see crate::sources::SourceRangeKey).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeRangeKey {
    pub prefix_len: u32,
    pub range: NodeRange,
}

const _: () = assert!(core::mem::size_of::<NodeRangeKey>() == 24);

impl NodeRangeKey {
    /// Makes this the lookup key of one address.
    #[inline(always)]
    pub fn set_addr(&mut self, family: u8, addr: &[u8; 16]) {
        self.prefix_len = NODE_FIXED_BITS + if family == FAMILY_V4 { 32 } else { 128 };
        self.range.family = family;
        self.range.addr = *addr;
    }
}

impl NodeRange {
    /// The key data and prefix length of the range `addr`/`prefix` (bits past the prefix
    /// cleared).
    pub fn new(family: u8, addr: &[u8; 16], prefix: u8) -> (u32, Self) {
        (NODE_FIXED_BITS + prefix as u32, Self { family, addr: crate::sources::masked(addr, prefix), _pad: [0; 3] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{v4_bytes, FAMILY_V6};

    fn outer<'a>(hop: &'a UplinkHop, dst: &'a [u8; 16]) -> Outer<'a> {
        Outer { hop, dst, inner_len: 60, hash: 0x1234_5678, port: DEFAULT_PORT, backend_port: 31000, hop_flags: 0 }
    }

    fn hop(src: [u8; 16]) -> UplinkHop {
        UplinkHop { ifindex: 3, smac: [2, 0, 0, 0, 0, 1], dmac: [2, 0, 0, 0, 0, 2], src }
    }

    #[test]
    fn the_ipv4_outer_header_is_valid_gue_with_the_backend_port() {
        let (src, dst) = (v4_bytes([10, 1, 0, 2]), v4_bytes([10, 1, 0, 9]));
        let mut out = [0u8; OUTER4_LEN];
        outer_v4(&outer(&hop(src), &dst), &mut out);
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        let ip = &out[14..34];
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 20 + 8 + 8 + 60);
        assert_eq!(csum::checksum(ip), 0, "header checksum");
        assert_eq!((ip[8], ip[9], &ip[12..16], &ip[16..20]), (64, 17, &[10, 1, 0, 2][..], &[10, 1, 0, 9][..]));
        let udp = &out[34..42];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 0xc000 | 0x1678);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 6080);
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 8 + 8 + 60);
        let gue: &[u8; 8] = out[42..50].try_into().unwrap();
        assert_eq!(read_gue(gue, FAMILY_V4), Some((31000, 0)));
        assert_eq!(read_gue(gue, FAMILY_V6), None, "an IPv4 inner packet is no IPv6 one");
        assert_eq!(OUTER4_LEN - ETH_LEN, overhead(FAMILY_V4));
    }

    #[test]
    fn the_ipv6_outer_header_carries_the_flow_hash_as_its_label() {
        let (src, dst) = ([0xfd; 16], [0xfe; 16]);
        let mut out = [0u8; OUTER6_LEN];
        outer_v6(&outer(&hop(src), &dst), &mut out);
        assert_eq!(&out[12..14], &[0x86, 0xdd]);
        assert_eq!(u32::from_be_bytes(out[14..18].try_into().unwrap()), 0x6004_5678);
        assert_eq!(u16::from_be_bytes([out[18], out[19]]), 8 + 8 + 60);
        assert_eq!((out[20], out[21]), (17, 64));
        let gue: &[u8; 8] = out[62..70].try_into().unwrap();
        assert_eq!(read_gue(gue, FAMILY_V6), Some((31000, 0)));
        assert_eq!(OUTER6_LEN - ETH_LEN, overhead(FAMILY_V6));
    }

    #[test]
    fn gue_that_is_not_this_format_is_refused() {
        let good = [1, 4, 0, 0, 0x79, 0x18, 0, 0];
        assert_eq!(read_gue(&good, FAMILY_V4), Some((31000, 0)));
        assert_eq!(read_gue(&[1, 4, 0, 0, 0x79, 0x18, HOP_SECOND_CHANCE, 0], FAMILY_V4), Some((31000, 1)));
        for (i, bad) in [0x41u8, 0x20, 2, 0].into_iter().enumerate() {
            let mut g = good;
            g[0] = bad;
            assert_eq!(read_gue(&g, FAMILY_V4), None, "first byte case {i}");
        }
        let mut unknown_flag = good;
        unknown_flag[6] = 2;
        assert_eq!(read_gue(&unknown_flag, FAMILY_V4), None);
        let mut port_zero = good;
        port_zero[4..6].copy_from_slice(&[0, 0]);
        assert_eq!(read_gue(&port_zero, FAMILY_V4), None);
        let mut gue_flags = good;
        gue_flags[2] = 0x80;
        assert_eq!(read_gue(&gue_flags, FAMILY_V4), None, "GUE optional fields are not ours");
    }

    #[test]
    fn the_mss_leaves_room_for_the_encapsulation() {
        assert_eq!(mss_limit(1500, FAMILY_V4), 1500 - 36 - 40);
        assert_eq!(mss_limit(1500, FAMILY_V6), 1500 - 56 - 60);
        assert_eq!(mss_limit(9000, FAMILY_V4), 9000 - 76);
        assert_eq!(mss_limit(60, FAMILY_V4), 0);
    }

    #[test]
    fn only_remote_backends_in_the_dsr_nodes_of_an_encapsulating_node_take_dsr() {
        let never = || -> bool { panic!("the node ranges are read only when they decide") };
        assert_eq!(reach(false, ENCAP, never), Reach::Local);
        assert_eq!(reach(true, 0, never), Reach::FullNat);
        assert_eq!(reach(true, DECAP, never), Reach::FullNat);
        assert_eq!(reach(true, ENCAP, || false), Reach::FullNat);
        assert_eq!(reach(true, ENCAP | DECAP, || true), Reach::Dsr);
    }

    #[test]
    fn a_second_chance_is_for_mid_flow_tcp_of_unknown_connections_once() {
        use crate::{PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN};
        assert!(wants_second_chance(0, PROTO_TCP, TCP_ACK, false));
        assert!(!wants_second_chance(0, PROTO_TCP, TCP_ACK, true), "this node holds it");
        assert!(!wants_second_chance(0, PROTO_TCP, TCP_SYN, false), "a new connection");
        assert!(!wants_second_chance(0, PROTO_UDP, 0, false));
        assert!(!wants_second_chance(HOP_SECOND_CHANCE, PROTO_TCP, TCP_ACK, false), "once");
        let b = crate::BackendInfo { addr: v4_bytes([10, 0, 0, 5]), port: 31000, family: FAMILY_V4, state: crate::BACKEND_DRAINING, service_id: 3, ..Default::default() };
        assert!(second_chance_to(7, &b, 3, FAMILY_V4, &v4_bytes([10, 0, 0, 6]), 31000));
        assert!(!second_chance_to(7, &b, 3, FAMILY_V4, &v4_bytes([10, 0, 0, 5]), 31000), "the one named");
        assert!(!second_chance_to(7, &b, 4, FAMILY_V4, &v4_bytes([10, 0, 0, 6]), 31000), "another service's");
        assert!(!second_chance_to(0, &b, 3, FAMILY_V4, &v4_bytes([10, 0, 0, 6]), 31000), "the ring's filler");
        let gone = crate::BackendInfo { state: crate::BACKEND_UNUSED, ..b };
        assert!(!second_chance_to(7, &gone, 3, FAMILY_V4, &v4_bytes([10, 0, 0, 6]), 31000), "removed");
    }

    #[test]
    fn node_ranges_are_masked_past_their_prefix() {
        let (bits, range) = NodeRange::new(FAMILY_V4, &v4_bytes([10, 1, 2, 3]), 16);
        assert_eq!(bits, 8 + 16);
        assert_eq!(range.addr, v4_bytes([10, 1, 0, 0]));
        let mut key = NodeRangeKey::default();
        key.set_addr(FAMILY_V6, &[1; 16]);
        assert_eq!(key.prefix_len, 136);
    }
}
