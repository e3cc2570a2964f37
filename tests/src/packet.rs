//! Packet crafting (via etherparse) and a field-by-field description used for readable diffs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// TCP flags for [`tcp`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

pub const SYN: TcpFlags = TcpFlags { syn: true, ack: false, fin: false, rst: false };
pub const ACK: TcpFlags = TcpFlags { syn: false, ack: true, fin: false, rst: false };
pub const FIN_ACK: TcpFlags = TcpFlags { syn: false, ack: true, fin: true, rst: false };

/// Ethernet (from `src_mac` to `dst_mac`) and IP headers, TTL / hop limit 64.
fn ip_builder(src_mac: [u8; 6], dst_mac: [u8; 6], src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families {src} → {dst}"),
    }
}

/// The same frame with other Ethernet addresses and an IPv4 TTL / IPv6 hop limit (which the
/// builders set to 64), checksums recomputed.
pub fn reframed(frame: &[u8], src_mac: [u8; 6], dst_mac: [u8; 6], ttl: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&src_mac);
    if u16::from_be_bytes([out[12], out[13]]) == 0x0800 {
        out[14 + 8] = ttl;
        out[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let check = lb_common::csum::checksum(&out[14..34]);
        out[14 + 10..14 + 12].copy_from_slice(&check.to_be_bytes());
    } else {
        out[14 + 7] = ttl;
    }
    out
}

/// An Ethernet/IP/UDP frame with valid checksums.
pub fn udp(src: (IpAddr, u16), dst: (IpAddr, u16), payload: &[u8]) -> Vec<u8> {
    let builder = ip_builder(CLIENT_MAC, NODE_MAC, src.0, dst.0).udp(src.1, dst.1);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("writing UDP packet");
    out
}

/// An Ethernet/IP/TCP frame with valid checksums.
pub fn tcp(src: (IpAddr, u16), dst: (IpAddr, u16), flags: TcpFlags, payload: &[u8]) -> Vec<u8> {
    let mut builder = ip_builder(CLIENT_MAC, NODE_MAC, src.0, dst.0).tcp(src.1, dst.1, 1000, 64240);
    if flags.syn {
        builder = builder.syn();
    }
    if flags.ack {
        builder = builder.ack(2000);
    }
    if flags.fin {
        builder = builder.fin();
    }
    if flags.rst {
        builder = builder.rst();
    }
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("writing TCP packet");
    out
}

/// A client's SYN announcing `mss` (its only option).
pub fn syn_with_mss(src: (IpAddr, u16), dst: (IpAddr, u16), mss: u16) -> Vec<u8> {
    let builder = ip_builder(CLIENT_MAC, NODE_MAC, src.0, dst.0)
        .tcp(src.1, dst.1, 1000, 64240)
        .syn()
        .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(mss)])
        .expect("an MSS option fits");
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write(&mut out, &[]).expect("writing a SYN");
    out
}

/// `frame` (Ethernet + an IP packet) inside the DSR encapsulation (lb_common::dsr, written out
/// here from the GUE draft, not with the programs' builder): Ethernet `src_mac` → `dst_mac`,
/// outer IP `src` → `dst` (TTL 64, IPv4 DF, the IPv6 flow label `hash`'s low 20 bits), UDP from
/// `sport` to `dport` with a zero checksum, GUE variant 0 with one word of private data: the
/// backend's port and `flags`.
pub struct Gue {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub hash: u32,
    pub backend_port: u16,
    pub flags: u8,
}

impl Gue {
    pub fn around(&self, frame: &[u8]) -> Vec<u8> {
        let inner = &frame[14..];
        let proto = if self.src.is_ipv4() { 4 } else { 41 };
        let port = self.backend_port.to_be_bytes();
        let mut payload = vec![0x01, proto, 0, 0, port[0], port[1], self.flags, 0];
        payload.extend_from_slice(inner);
        let builder = ip_builder(self.src_mac, self.dst_mac, self.src, self.dst).udp(self.sport, self.dport);
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, &payload).expect("writing the encapsulation");
        let udp = if self.src.is_ipv4() { 14 + 20 } else { 14 + 40 };
        out[udp + 6..udp + 8].copy_from_slice(&[0, 0]);
        if !self.src.is_ipv4() {
            let first = 0x6000_0000u32 | (self.hash & 0x000f_ffff);
            out[14..18].copy_from_slice(&first.to_be_bytes());
        }
        out
    }
}

/// An ICMP fragmentation needed (IPv4) or ICMPv6 packet too big announcing `mtu`, from the node
/// back to the client, quoting `quote`.
pub fn too_big(src: IpAddr, dst: IpAddr, mtu: u16, quote: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let ip = ip_builder(NODE_MAC, CLIENT_MAC, src, dst);
    if src.is_ipv4() {
        let kind = Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu });
        ip.icmpv4(kind).write(&mut out, quote).expect("writing ICMP");
    } else {
        ip.icmpv6(Icmpv6Type::PacketTooBig { mtu: mtu as u32 }).write(&mut out, quote).expect("writing ICMPv6");
    }
    out
}

/// A TCP reset from the node back to the client (Ethernet addresses swapped), window 0, as a
/// refused connection gets it: `ack` = Some(n) for RST|ACK, None for a bare RST.
pub fn tcp_reset(src: (IpAddr, u16), dst: (IpAddr, u16), seq: u32, ack: Option<u32>) -> Vec<u8> {
    let mut builder = ip_builder(NODE_MAC, CLIENT_MAC, src.0, dst.0).tcp(src.1, dst.1, seq, 0).rst();
    if let Some(ack) = ack {
        builder = builder.ack(ack);
    }
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write(&mut out, &[]).expect("writing TCP reset");
    out
}

/// An ICMP (IPv4) or ICMPv6 port unreachable from the node back to the client, quoting `quote`.
pub fn port_unreachable(src: IpAddr, dst: IpAddr, quote: &[u8]) -> Vec<u8> {
    unreachable(src, dst, quote, icmpv4::DestUnreachableHeader::Port, icmpv6::DestUnreachableCode::Port)
}

/// An ICMP "communication administratively prohibited" (code 13; ICMPv6 code 1) from the node
/// back to the client, quoting `quote`.
pub fn prohibited(src: IpAddr, dst: IpAddr, quote: &[u8]) -> Vec<u8> {
    unreachable(src, dst, quote, icmpv4::DestUnreachableHeader::FilterProhibited, icmpv6::DestUnreachableCode::Prohibited)
}

fn unreachable(src: IpAddr, dst: IpAddr, quote: &[u8], v4: icmpv4::DestUnreachableHeader, v6: icmpv6::DestUnreachableCode) -> Vec<u8> {
    let mut out = Vec::new();
    let ip = ip_builder(NODE_MAC, CLIENT_MAC, src, dst);
    if src.is_ipv4() {
        ip.icmpv4(Icmpv4Type::DestinationUnreachable(v4)).write(&mut out, quote).expect("writing ICMP");
    } else {
        ip.icmpv6(Icmpv6Type::DestinationUnreachable(v6)).write(&mut out, quote).expect("writing ICMPv6");
    }
    out
}

pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

pub fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("IPv6 literal"))
}

/// The named fields of a frame, in wire order, e.g. `("ipv4.dst", "10.0.0.1")`. Checksums are
/// described both as values and as `*.checksum_ok`, so a diff says which one is wrong. Bytes that
/// do not parse are described as such, with what did parse before them.
pub fn describe(frame: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut put = |k: &str, v: String| fields.push((k.to_owned(), v));
    let headers = match PacketHeaders::from_ethernet_slice(frame) {
        Ok(h) => h,
        Err(err) => {
            put("unparsed", format!("{err} ({} bytes)", frame.len()));
            return fields;
        }
    };
    if let Some(eth) = headers.link.clone().and_then(|l| l.ethernet2()) {
        put("eth.dst", mac(eth.destination));
        put("eth.src", mac(eth.source));
        put("eth.type", format!("{:#06x}", eth.ether_type.0));
    }
    let payload = headers.payload.slice();
    match &headers.net {
        Some(NetHeaders::Ipv4(ip, _)) => describe_ipv4(&mut put, ip, &headers.transport, payload),
        Some(NetHeaders::Ipv6(ip, _)) => describe_ipv6(&mut put, ip, &headers.transport, payload),
        _ => {}
    }
    put("payload", hex(payload));
    fields
}

fn describe_ipv4(put: &mut impl FnMut(&str, String), ip: &etherparse::Ipv4Header, transport: &Option<TransportHeader>, payload: &[u8]) {
    put("ipv4.src", Ipv4Addr::from(ip.source).to_string());
    put("ipv4.dst", Ipv4Addr::from(ip.destination).to_string());
    put("ipv4.proto", ip.protocol.0.to_string());
    put("ipv4.ttl", ip.time_to_live.to_string());
    put("ipv4.total_len", ip.total_len.to_string());
    put("ipv4.id", ip.identification.to_string());
    put("ipv4.frag", format!("df={} mf={} off={}", ip.dont_fragment, ip.more_fragments, ip.fragment_offset.value()));
    put("ipv4.options", format!("{} bytes", ip.options.len()));
    put("ipv4.checksum", format!("{:#06x}", ip.header_checksum));
    put("ipv4.checksum_ok", (ip.calc_header_checksum() == ip.header_checksum).to_string());
    match transport {
        Some(TransportHeader::Tcp(t)) => {
            describe_tcp(put, t);
            let ok = t.calc_checksum_ipv4(ip, payload).map(|c| c == t.checksum);
            put("tcp.checksum_ok", format!("{}", ok.unwrap_or(false)));
        }
        Some(TransportHeader::Udp(u)) => {
            describe_udp(put, u);
            let ok = u.checksum == 0 || u.calc_checksum_ipv4(ip, payload).map(|c| c == u.checksum).unwrap_or(false);
            put("udp.checksum_ok", ok.to_string());
        }
        Some(TransportHeader::Icmpv4(i)) => {
            put("icmp.type", format!("{:?}", i.icmp_type));
            put("icmp.checksum", format!("{:#06x}", i.checksum));
            put("icmp.checksum_ok", (i.icmp_type.calc_checksum(payload) == i.checksum).to_string());
        }
        _ => {}
    }
}

fn describe_ipv6(put: &mut impl FnMut(&str, String), ip: &etherparse::Ipv6Header, transport: &Option<TransportHeader>, payload: &[u8]) {
    put("ipv6.src", Ipv6Addr::from(ip.source).to_string());
    put("ipv6.dst", Ipv6Addr::from(ip.destination).to_string());
    put("ipv6.next_header", ip.next_header.0.to_string());
    put("ipv6.hop_limit", ip.hop_limit.to_string());
    put("ipv6.payload_len", ip.payload_length.to_string());
    match transport {
        Some(TransportHeader::Tcp(t)) => {
            describe_tcp(put, t);
            let ok = t.calc_checksum_ipv6(ip, payload).map(|c| c == t.checksum);
            put("tcp.checksum_ok", format!("{}", ok.unwrap_or(false)));
        }
        Some(TransportHeader::Udp(u)) => {
            describe_udp(put, u);
            let ok = u.calc_checksum_ipv6(ip, payload).map(|c| c == u.checksum);
            put("udp.checksum_ok", format!("{}", ok.unwrap_or(false)));
        }
        Some(TransportHeader::Icmpv6(i)) => {
            put("icmpv6.type", format!("{:?}", i.icmp_type));
            put("icmpv6.checksum", format!("{:#06x}", i.checksum));
            let ok = i.icmp_type.calc_checksum(ip.source, ip.destination, payload).map(|c| c == i.checksum);
            put("icmpv6.checksum_ok", ok.unwrap_or(false).to_string());
        }
        _ => {}
    }
}

fn describe_tcp(put: &mut impl FnMut(&str, String), t: &etherparse::TcpHeader) {
    put("tcp.src_port", t.source_port.to_string());
    put("tcp.dst_port", t.destination_port.to_string());
    put("tcp.seq", t.sequence_number.to_string());
    put("tcp.ack", t.acknowledgment_number.to_string());
    let flags = [(t.syn, "SYN"), (t.ack, "ACK"), (t.fin, "FIN"), (t.rst, "RST"), (t.psh, "PSH")];
    put("tcp.flags", flags.iter().filter(|f| f.0).map(|f| f.1).collect::<Vec<_>>().join("|"));
    put("tcp.checksum", format!("{:#06x}", t.checksum));
}

fn describe_udp(put: &mut impl FnMut(&str, String), u: &etherparse::UdpHeader) {
    put("udp.src_port", u.source_port.to_string());
    put("udp.dst_port", u.destination_port.to_string());
    put("udp.length", u.length.to_string());
    put("udp.checksum", format!("{:#06x}", u.checksum));
}

fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_describe_with_valid_checksums() {
        let frame = udp((v4(10, 0, 0, 1), 5000), (v4(10, 0, 0, 2), 53), b"hi");
        let fields = describe(&frame);
        let get = |k: &str| fields.iter().find(|f| f.0 == k).map(|f| f.1.clone()).unwrap();
        assert_eq!(get("ipv4.dst"), "10.0.0.2");
        assert_eq!(get("udp.dst_port"), "53");
        assert_eq!(get("ipv4.checksum_ok"), "true");
        assert_eq!(get("udp.checksum_ok"), "true");
        let frame6 = tcp((v6("fd00::1"), 40000), (v6("fd00::2"), 80), SYN, b"");
        let fields = describe(&frame6);
        assert!(fields.contains(&("tcp.flags".into(), "SYN".into())), "{fields:?}");
        assert!(fields.contains(&("tcp.checksum_ok".into(), "true".into())), "{fields:?}");
    }

    #[test]
    fn truncated_frame_is_described_not_panicking() {
        let frame = udp((v4(10, 0, 0, 1), 5000), (v4(10, 0, 0, 2), 53), b"hi");
        let fields = describe(&frame[..20]);
        assert_eq!(fields[0].0, "unparsed", "{fields:?}");
    }
}
