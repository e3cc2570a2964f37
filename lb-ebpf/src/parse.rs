//! Stage 1: parse Ethernet → IPv4/IPv6 → TCP/UDP into [`Parsed`], or the reason not to balance.
//! Works on any [start, end) packet window (XDP data or a TC skb's linear part); every read is
//! bounds-checked against `end` as the verifier requires.

use lb_common::{Reason, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// IPv6 next-header values of extension headers (RFC 8200 §4, plus mobility/HIP/shim6).
const IPV6_FRAGMENT: u8 = 44;
const IPV6_EXTENSIONS: [u8; 7] = [0, 43, 50, 51, 60, 135, 139];

/// Offsets of the fields the rewrite stage touches.
pub const IPV4_CSUM_OFF: usize = 10;
pub const IPV4_SRC_OFF: usize = 12;
pub const IPV4_DST_OFF: usize = 16;
pub const IPV6_SRC_OFF: usize = 8;
pub const IPV6_DST_OFF: usize = 24;
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;

/// A TCP or UDP packet, as far as balancing needs it.
pub struct Parsed {
    pub family: u8,
    pub proto: u8,
    /// Offset of the IP header from the start of the frame.
    pub l3: usize,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// TCP header flags (0 for UDP): full NAT frees a mapping once its connection closes.
    pub tcp_flags: u8,
}

impl Parsed {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4 + if self.proto == PROTO_TCP { TCP_CSUM_OFF } else { UDP_CSUM_OFF }
    }

}

#[inline(always)]
fn bytes<const N: usize>(start: usize, end: usize, off: usize) -> Result<[u8; N], Reason> {
    if start + off + N > end {
        return Err(Reason::Malformed);
    }
    // SAFETY: bounds checked above; packet data has no alignment guarantee.
    Ok(unsafe { core::ptr::read_unaligned((start + off) as *const [u8; N]) })
}

/// The `N` bytes at `off` of the window [start, end), in place.
#[inline(always)]
pub fn view<const N: usize>(start: usize, end: usize, off: usize) -> Result<&'static [u8; N], Reason> {
    if start + off + N > end {
        return Err(Reason::Malformed);
    }
    // SAFETY: bounds checked above; [u8; N] has no alignment requirement; the reference is used
    // before anything moves or resizes the packet.
    Ok(unsafe { &*((start + off) as *const [u8; N]) })
}

#[inline(always)]
fn u8_at(start: usize, end: usize, off: usize) -> Result<u8, Reason> {
    bytes::<1>(start, end, off).map(|b| b[0])
}

#[inline(always)]
fn be16(start: usize, end: usize, off: usize) -> Result<u16, Reason> {
    bytes::<2>(start, end, off).map(u16::from_be_bytes)
}

/// An IPv4 address in the 16-byte field, built from one word so no byte-wise fill is emitted.
#[inline(always)]
fn v4_in_16(octets: [u8; 4]) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size; any bytes are valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>([u32::from_ne_bytes(octets), 0, 0, 0]) }
}

/// Parses the frame in [start, end). `frame_len` is the whole frame's length, which for a TC
/// skb can exceed the linear window (payload in fragments): IP lengths are checked against it.
/// Every field is written once (no zero-initialised struct: BPF lowers those to byte loops).
#[inline(always)]
pub fn parse(start: usize, end: usize, frame_len: usize) -> Result<Parsed, Reason> {
    let l3 = ETH_LEN;
    let (family, proto, src, dst, ttl, l4, ip_end) = match be16(start, end, 12)? {
        ETH_P_IP => parse_ipv4(start, end, frame_len, l3)?,
        ETH_P_IPV6 => parse_ipv6(start, end, frame_len, l3)?,
        _ => return Err(Reason::NotIpTcpUdp),
    };
    let header_len = if proto == PROTO_TCP { TCP_LEN } else { UDP_LEN };
    // The L4 header must lie inside the IP packet, not in bytes trailing it.
    if start + l4 + header_len > end || l4 + header_len > ip_end {
        return Err(Reason::Malformed);
    }
    let sport = be16(start, end, l4)?;
    let dport = be16(start, end, l4 + 2)?;
    let mut tcp_flags = 0;
    if proto == PROTO_TCP {
        // The data offset covers at least the fixed header and ends inside the packet.
        let data_offset = (u8_at(start, end, l4 + 12)? >> 4) as usize * 4;
        if data_offset < TCP_LEN || l4 + data_offset > ip_end {
            return Err(Reason::Malformed);
        }
        tcp_flags = u8_at(start, end, l4 + 13)?;
    } else {
        // The UDP length covers at least its header and ends inside the packet.
        let udp_len = be16(start, end, l4 + 4)? as usize;
        if udp_len < UDP_LEN || l4 + udp_len > ip_end {
            return Err(Reason::Malformed);
        }
    }
    Ok(Parsed { family, proto, l3, l4, src, dst, sport, dport, ttl, tcp_flags })
}

/// (family, protocol, source, destination, TTL, L4 offset, offset where the IP packet ends) of
/// an IP header at `l3`.
type IpFields = (u8, u8, [u8; 16], [u8; 16], u8, usize, usize);

#[inline(always)]
fn parse_ipv4(start: usize, end: usize, frame_len: usize, l3: usize) -> Result<IpFields, Reason> {
    if start + l3 + IPV4_LEN > end {
        return Err(Reason::Malformed);
    }
    let version_ihl = u8_at(start, end, l3)?;
    let (version, ihl) = (version_ihl >> 4, version_ihl & 0x0f);
    let total_len = be16(start, end, l3 + 2)? as usize;
    if version != 4 || ihl < 5 || total_len < IPV4_LEN || l3 + total_len > frame_len {
        return Err(Reason::Malformed);
    }
    if be16(start, end, l3 + 6)? & 0x3fff != 0 {
        // More-fragments set or a non-zero offset.
        return Err(Reason::Fragment);
    }
    if ihl != 5 {
        return Err(Reason::IpOptions);
    }
    let proto = u8_at(start, end, l3 + 9)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Reason::NotIpTcpUdp);
    }
    let ttl = u8_at(start, end, l3 + 8)?;
    let src = v4_in_16(bytes::<4>(start, end, l3 + IPV4_SRC_OFF)?);
    let dst = v4_in_16(bytes::<4>(start, end, l3 + IPV4_DST_OFF)?);
    Ok((FAMILY_V4, proto, src, dst, ttl, l3 + IPV4_LEN, l3 + total_len))
}

#[inline(always)]
fn parse_ipv6(start: usize, end: usize, frame_len: usize, l3: usize) -> Result<IpFields, Reason> {
    if start + l3 + IPV6_LEN > end {
        return Err(Reason::Malformed);
    }
    let payload_len = be16(start, end, l3 + 4)? as usize;
    if u8_at(start, end, l3)? >> 4 != 6 || l3 + IPV6_LEN + payload_len > frame_len {
        return Err(Reason::Malformed);
    }
    let next = u8_at(start, end, l3 + 6)?;
    if next == IPV6_FRAGMENT {
        return Err(Reason::Fragment);
    }
    if IPV6_EXTENSIONS.contains(&next) {
        return Err(Reason::IpOptions);
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        return Err(Reason::NotIpTcpUdp);
    }
    let ttl = u8_at(start, end, l3 + 7)?;
    let src = bytes::<16>(start, end, l3 + IPV6_SRC_OFF)?;
    let dst = bytes::<16>(start, end, l3 + IPV6_DST_OFF)?;
    Ok((FAMILY_V6, next, src, dst, ttl, l3 + IPV6_LEN, l3 + IPV6_LEN + payload_len))
}
