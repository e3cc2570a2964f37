//! Refusals of new connections to a service that has no active backend, or from a client outside
//! its source ranges, built as whole frames from a copy of the offending frame's headers: a TCP
//! reset (RFC 9293 §3.10.7.1, a segment for no connection) or an ICMP/ICMPv6 destination
//! unreachable (RFC 792, RFC 4443 §3.1) — port unreachable, or communication administratively
//! prohibited (RFC 1812 §5.2.7.1 code 13; RFC 4443 code 1), what a filtering router sends — and,
//! for a packet that would not fit a DSR backend's path once encapsulated, fragmentation needed /
//! packet too big with the MTU that fits (RFC 1191, RFC 4443 §3.2), what a router sends. The kernel
//! programs send them back out of the interface the frame came in on; kube-proxy and Cilium
//! answer the same way, so a client fails at once instead of waiting out its connect timeout.
//!
//! Inputs are fixed-size copies (the parser has checked an option-free IPv4 header or an IPv6
//! header without extensions, and the whole L4 header), so these are pure functions over arrays
//! that the BPF build unrolls and the host tests run as they are.
//!
//! An ICMP error quotes only the offending IP header and 8 bytes of its UDP header — what the
//! sender's stack needs to find the socket (RFC 792's minimum). RFC 4443 asks for as much of the
//! packet as fits; the fixed quote keeps every refusal at most 28 bytes (IPv4) / 48 bytes (IPv6)
//! longer than the smallest datagram that provokes it, so a spoofed source gains little by
//! reflecting off a VIP.

use crate::{csum, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

const ETH_LEN: usize = 14;
const ETH_SRC: usize = 6;
const ETH_TYPE: usize = 12;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const ICMP_LEN: usize = 8;
const TTL: u8 = 64;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;

/// Why a datagram is refused: the code of the destination unreachable sent back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// No backend: ICMP code 3, ICMPv6 code 4 (port unreachable).
    Port,
    /// Its source is not allowed: ICMP code 13, ICMPv6 code 1 (administratively prohibited).
    Prohibited,
    /// It does not fit the next hop's MTU (given beside it): ICMP fragmentation needed (code 4,
    /// RFC 1191 §4), ICMPv6 packet too big (type 2, RFC 4443 §3.2). Answered for any protocol.
    /// (No payload in the variant: an enum with data is passed to a BPF subprogram in two
    /// registers, the second left undefined for the other variants, which the verifier refuses.)
    TooBig,
}

impl Unreachable {
    /// The ICMP header's first 8 bytes (type, code, checksum 0, rest of header).
    #[inline(always)]
    const fn header_v4(self, mtu: u16) -> [u8; ICMP_LEN] {
        let (code, mtu) = match self {
            Unreachable::Port => (3, 0u16),
            Unreachable::Prohibited => (13, 0),
            Unreachable::TooBig => (4, mtu),
        };
        let mtu = mtu.to_be_bytes();
        [ICMP_DEST_UNREACH, code, 0, 0, 0, 0, mtu[0], mtu[1]]
    }

    #[inline(always)]
    const fn header_v6(self, mtu: u16) -> [u8; ICMP_LEN] {
        let (kind, code, mtu) = match self {
            Unreachable::Port => (ICMPV6_DEST_UNREACH, 4, 0u32),
            Unreachable::Prohibited => (ICMPV6_DEST_UNREACH, 1, 0),
            Unreachable::TooBig => (ICMPV6_PACKET_TOO_BIG, 0, mtu as u32),
        };
        let mtu = mtu.to_be_bytes();
        [kind, code, 0, 0, mtu[0], mtu[1], mtu[2], mtu[3]]
    }
}

/// Offending TCP/IPv4 frame headers in; reset out (same size: Ethernet + IPv4 + TCP).
pub const TCP4_LEN: usize = ETH_LEN + IPV4_LEN + TCP_LEN;
/// Offending TCP/IPv6 frame headers in; reset out.
pub const TCP6_LEN: usize = ETH_LEN + IPV6_LEN + TCP_LEN;
/// Offending UDP/IPv4 frame headers in (for a too-big packet of either protocol: Ethernet, IPv4
/// and the first 8 bytes of its L4 header, all an ICMP error quotes).
pub const UDP4_LEN: usize = ETH_LEN + IPV4_LEN + UDP_LEN;
/// Offending UDP/IPv6 frame headers in (the same for a too-big packet).
pub const UDP6_LEN: usize = ETH_LEN + IPV6_LEN + UDP_LEN;
/// ICMP port unreachable out: Ethernet + IPv4 + ICMP + the quoted IPv4 and UDP headers.
pub const ICMP4_LEN: usize = ETH_LEN + IPV4_LEN + ICMP_LEN + IPV4_LEN + UDP_LEN;
/// ICMPv6 port unreachable out: Ethernet + IPv6 + ICMPv6 + the quoted IPv6 and UDP headers.
pub const ICMP6_LEN: usize = ETH_LEN + IPV6_LEN + ICMP_LEN + IPV6_LEN + UDP_LEN;

/// The reset for a TCP/IPv4 segment, or None when none may be sent: the segment is itself a
/// reset, its source is not one host (RFC 1122 §4.2.3.10), or its lengths do not add up.
pub fn tcp_reset_v4(offending: &[u8; TCP4_LEN], out: &mut [u8; TCP4_LEN]) -> Option<()> {
    let ip = ETH_LEN;
    let (src, dst) = (&offending[ip + 12..ip + 16], &offending[ip + 16..ip + 20]);
    if !unicast_v4(src) {
        return None;
    }
    let total_len = be16(offending, ip + 2) as usize;
    let data_len = total_len.checked_sub(IPV4_LEN + tcp_header_len(offending, ip + IPV4_LEN))?;
    out.fill(0);
    ethernet_reply(offending, out, 0x0800);
    ipv4_header(out, TCP4_LEN - ETH_LEN, PROTO_TCP, dst, src);
    reset_segment(offending, out, ip + IPV4_LEN, data_len)?;
    let pseudo = pseudo(dst, src, PROTO_TCP, TCP_LEN);
    let check = checksum(pseudo, &out[ip + IPV4_LEN..]);
    put16(out, ip + IPV4_LEN + 16, check);
    Some(())
}

/// The reset for a TCP/IPv6 segment, or None (as for IPv4; a multicast or unspecified source).
pub fn tcp_reset_v6(offending: &[u8; TCP6_LEN], out: &mut [u8; TCP6_LEN]) -> Option<()> {
    let ip = ETH_LEN;
    let (src, dst) = (&offending[ip + 8..ip + 24], &offending[ip + 24..ip + 40]);
    if !unicast_v6(src) {
        return None;
    }
    let payload_len = be16(offending, ip + 4) as usize;
    let data_len = payload_len.checked_sub(tcp_header_len(offending, ip + IPV6_LEN))?;
    out.fill(0);
    ethernet_reply(offending, out, 0x86dd);
    ipv6_header(out, TCP_LEN, PROTO_TCP, dst, src);
    reset_segment(offending, out, ip + IPV6_LEN, data_len)?;
    let pseudo = pseudo(dst, src, PROTO_TCP, TCP_LEN);
    let check = checksum(pseudo, &out[ip + IPV6_LEN..]);
    put16(out, ip + IPV6_LEN + 16, check);
    Some(())
}

/// The ICMP destination unreachable (`why`) for a UDP/IPv4 datagram, or None for a source that
/// is not one host (RFC 1122 §3.2.2: no ICMP error to a broadcast, multicast or zero source).
pub fn unreachable_v4(offending: &[u8; UDP4_LEN], out: &mut [u8; ICMP4_LEN], why: Unreachable, mtu: u16) -> Option<()> {
    let ip = ETH_LEN;
    let (src, dst) = (&offending[ip + 12..ip + 16], &offending[ip + 16..ip + 20]);
    if !unicast_v4(src) {
        return None;
    }
    out.fill(0);
    ethernet_reply(offending, out, 0x0800);
    ipv4_header(out, ICMP4_LEN - ETH_LEN, PROTO_ICMP, dst, src);
    let icmp = ip + IPV4_LEN;
    out[icmp..icmp + ICMP_LEN].copy_from_slice(&why.header_v4(mtu));
    out[icmp + ICMP_LEN..].copy_from_slice(&offending[ip..]);
    let check = checksum(0, &out[icmp..]);
    put16(out, icmp + 2, check);
    Some(())
}

/// The ICMPv6 destination unreachable (`why`) for a UDP/IPv6 datagram, or None for a multicast
/// or unspecified source (RFC 4443 §2.4 (e)).
pub fn unreachable_v6(offending: &[u8; UDP6_LEN], out: &mut [u8; ICMP6_LEN], why: Unreachable, mtu: u16) -> Option<()> {
    let ip = ETH_LEN;
    let (src, dst) = (&offending[ip + 8..ip + 24], &offending[ip + 24..ip + 40]);
    if !unicast_v6(src) {
        return None;
    }
    out.fill(0);
    ethernet_reply(offending, out, 0x86dd);
    let icmp_len = ICMP6_LEN - ETH_LEN - IPV6_LEN;
    ipv6_header(out, icmp_len, PROTO_ICMPV6, dst, src);
    let icmp = ip + IPV6_LEN;
    out[icmp..icmp + ICMP_LEN].copy_from_slice(&why.header_v6(mtu));
    out[icmp + ICMP_LEN..].copy_from_slice(&offending[ip..]);
    let pseudo = pseudo(dst, src, PROTO_ICMPV6, icmp_len);
    let check = checksum(pseudo, &out[icmp..]);
    put16(out, icmp + 2, check);
    Some(())
}

/// Source and destination MACs swapped: the reply goes back to the hop that sent the frame.
fn ethernet_reply(offending: &[u8], out: &mut [u8], ether_type: u16) {
    out[..ETH_SRC].copy_from_slice(&offending[ETH_SRC..ETH_TYPE]);
    out[ETH_SRC..ETH_TYPE].copy_from_slice(&offending[..ETH_SRC]);
    put16(out, ETH_TYPE, ether_type);
}

/// An option-free IPv4 header from `src` to `dst`, with its checksum. Don't-fragment is set:
/// a refusal is far smaller than any MTU.
fn ipv4_header(out: &mut [u8], total_len: usize, proto: u8, src: &[u8], dst: &[u8]) {
    let ip = ETH_LEN;
    out[ip] = 0x45;
    put16(out, ip + 2, total_len as u16);
    out[ip + 6] = 0x40;
    out[ip + 8] = TTL;
    out[ip + 9] = proto;
    out[ip + 12..ip + 16].copy_from_slice(src);
    out[ip + 16..ip + 20].copy_from_slice(dst);
    put16(out, ip + 10, checksum(0, &out[ip..ip + IPV4_LEN]));
}

/// An IPv6 header from `src` to `dst` (traffic class and flow label 0).
fn ipv6_header(out: &mut [u8], payload_len: usize, next: u8, src: &[u8], dst: &[u8]) {
    let ip = ETH_LEN;
    out[ip] = 0x60;
    put16(out, ip + 4, payload_len as u16);
    out[ip + 6] = next;
    out[ip + 7] = TTL;
    out[ip + 8..ip + 24].copy_from_slice(src);
    out[ip + 24..ip + 40].copy_from_slice(dst);
}

/// The reset's TCP header at `tcp` (same offset in both frames), checksum left zero: to a
/// segment carrying ACK, seq = its ack; otherwise seq 0 and ack = its seq + its length (SYN and
/// FIN count one each). None when the segment is itself a reset.
fn reset_segment(offending: &[u8], out: &mut [u8], tcp: usize, data_len: usize) -> Option<()> {
    let flags = offending[tcp + 13];
    if flags & TCP_RST != 0 {
        return None;
    }
    out[tcp..tcp + 2].copy_from_slice(&offending[tcp + 2..tcp + 4]);
    out[tcp + 2..tcp + 4].copy_from_slice(&offending[tcp..tcp + 2]);
    if flags & TCP_ACK != 0 {
        out[tcp + 4..tcp + 8].copy_from_slice(&offending[tcp + 8..tcp + 12]);
        out[tcp + 13] = TCP_RST;
    } else {
        let seq = be32(offending, tcp + 4);
        let length = data_len as u32 + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        out[tcp + 8..tcp + 12].copy_from_slice(&seq.wrapping_add(length).to_be_bytes());
        out[tcp + 13] = TCP_RST | TCP_ACK;
    }
    out[tcp + 12] = (TCP_LEN as u8 / 4) << 4;
    Some(())
}

/// Length of the TCP header at `tcp`, from its data offset.
fn tcp_header_len(frame: &[u8], tcp: usize) -> usize {
    (frame[tcp + 12] >> 4) as usize * 4
}

/// The pseudo-header sum (IPv4 or IPv6: addresses, protocol, upper-layer length).
fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    csum::sum_words(csum::sum_words(0, src), dst) + proto as u32 + len as u32
}

/// The Internet checksum of `bytes` (even length) on top of a pseudo-header sum. Not inlined:
/// unrolled into its callers, the sums' spills took half the BPF stack.
#[inline(never)]
fn checksum(pseudo: u32, bytes: &[u8]) -> u16 {
    !csum::fold(csum::sum_words(pseudo, bytes))
}

/// One host's address: not 0.0.0.0/8, multicast, reserved or broadcast (224.0.0.0 and up).
fn unicast_v4(addr: &[u8]) -> bool {
    addr[0] != 0 && addr[0] < 224
}

/// One host's address: not multicast (ff00::/8) or unspecified (::).
fn unicast_v6(addr: &[u8]) -> bool {
    addr[0] != 0xff && addr.iter().any(|b| *b != 0)
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn put16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn reset_v4(offending: &[u8; TCP4_LEN]) -> Option<[u8; TCP4_LEN]> {
        let mut out = [0xaa; TCP4_LEN];
        tcp_reset_v4(offending, &mut out).map(|()| out)
    }

    /// A TCP/IPv4 frame's headers: 10.201.0.1:40000 → 10.0.0.9:80, seq 1000, ack 2000.
    fn tcp4(flags: u8, total_len: u16) -> [u8; TCP4_LEN] {
        let mut f = [0u8; TCP4_LEN];
        f[..6].copy_from_slice(&NODE_MAC);
        f[6..12].copy_from_slice(&CLIENT_MAC);
        put16(&mut f, 12, 0x0800);
        f[14] = 0x45;
        put16(&mut f, 16, total_len);
        f[22] = 64;
        f[23] = PROTO_TCP;
        f[26..30].copy_from_slice(&[10, 201, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 9]);
        put16(&mut f, 34, 40000);
        put16(&mut f, 36, 80);
        f[38..42].copy_from_slice(&1000u32.to_be_bytes());
        f[42..46].copy_from_slice(&2000u32.to_be_bytes());
        f[46] = 0x50;
        f[47] = flags;
        f
    }

    #[test]
    fn a_syn_is_answered_with_rst_ack_of_its_sequence_plus_one() {
        let rst = reset_v4(&tcp4(TCP_SYN, 40)).expect("reset");
        assert_eq!(&rst[..6], &CLIENT_MAC);
        assert_eq!(&rst[26..30], &[10, 0, 0, 9], "from the service address");
        assert_eq!(&rst[30..34], &[10, 201, 0, 1]);
        assert_eq!((be16(&rst, 34), be16(&rst, 36)), (80, 40000));
        assert_eq!(be32(&rst, 38), 0);
        assert_eq!(be32(&rst, 42), 1001);
        assert_eq!(rst[47], TCP_RST | TCP_ACK);
        assert_eq!(csum::checksum(&rst[14..34]), 0, "IPv4 header checksum");
        let pseudo = pseudo(&[10, 0, 0, 9], &[10, 201, 0, 1], PROTO_TCP, TCP_LEN);
        assert_eq!(!csum::fold(csum::sum_words(pseudo, &rst[34..])), 0, "TCP checksum");
    }

    #[test]
    fn a_segment_with_ack_is_answered_with_a_bare_rst_at_its_ack() {
        let rst = reset_v4(&tcp4(TCP_ACK, 40 + 5)).expect("reset");
        assert_eq!(be32(&rst, 38), 2000);
        assert_eq!(rst[47], TCP_RST);
    }

    #[test]
    fn data_and_fin_count_in_the_acknowledged_length() {
        let rst = reset_v4(&tcp4(TCP_FIN, 40 + 5)).expect("reset");
        assert_eq!(be32(&rst, 42), 1000 + 5 + 1);
    }

    #[test]
    fn resets_broadcast_sources_and_bad_lengths_get_no_answer() {
        assert_eq!(reset_v4(&tcp4(TCP_RST, 40)), None);
        assert_eq!(reset_v4(&tcp4(TCP_SYN, 39)), None, "total length shorter than the headers");
        let mut broadcast = tcp4(TCP_SYN, 40);
        broadcast[26..30].copy_from_slice(&[255, 255, 255, 255]);
        assert_eq!(reset_v4(&broadcast), None);
        let mut unspecified = [0u8; UDP6_LEN];
        unspecified[14] = 0x60;
        assert_eq!(unreachable_v6(&unspecified, &mut [0; ICMP6_LEN], Unreachable::Port, 0), None);
    }

    #[test]
    fn a_port_unreachable_quotes_the_ip_and_udp_headers_with_a_valid_checksum() {
        let mut udp = [0u8; UDP4_LEN];
        udp[..34].copy_from_slice(&tcp4(0, 28)[..34]);
        udp[23] = 17;
        udp[34..42].copy_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        let mut icmp = [0xaa; ICMP4_LEN];
        unreachable_v4(&udp, &mut icmp, Unreachable::Port, 0).expect("icmp");
        assert_eq!((icmp[23], icmp[34], icmp[35]), (PROTO_ICMP, 3, 3));
        assert_eq!(&icmp[42..], &udp[14..]);
        assert_eq!(csum::checksum(&icmp[34..]), 0);
        unreachable_v4(&udp, &mut icmp, Unreachable::Prohibited, 0).expect("icmp");
        assert_eq!((icmp[34], icmp[35]), (3, 13), "administratively prohibited");
        assert_eq!(csum::checksum(&icmp[34..]), 0);
        unreachable_v4(&udp, &mut icmp, Unreachable::TooBig, 1464).expect("icmp");
        assert_eq!((icmp[34], icmp[35], u16::from_be_bytes([icmp[40], icmp[41]])), (3, 4, 1464), "fragmentation needed");
        assert_eq!(csum::checksum(&icmp[34..]), 0);
    }

    #[test]
    fn a_packet_too_big_carries_the_mtu_in_its_32_bits() {
        let mut udp = [0u8; UDP6_LEN];
        udp[14] = 0x60;
        udp[14 + 6] = 17;
        udp[14 + 8] = 0xfd;
        udp[14 + 23] = 1;
        let mut icmp = [0; ICMP6_LEN];
        unreachable_v6(&udp, &mut icmp, Unreachable::TooBig, 1444).expect("icmpv6");
        let at = 14 + 40;
        assert_eq!((icmp[at], icmp[at + 1]), (2, 0));
        assert_eq!(u32::from_be_bytes(icmp[at + 4..at + 8].try_into().unwrap()), 1444);
        assert_eq!(&icmp[at + 8..], &udp[14..]);
    }
}
