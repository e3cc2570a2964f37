//! cgroup socket hooks for local clients: connect()/sendmsg() to a service go straight to a
//! backend (no per-packet NAT at all); getpeername()/recvmsg() show the service address again.

use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
    EbpfContext,
};
use lb_common::{select::Lookup, Reason, ReplyInfo, SockKey, FAMILY_V4, PROTO_TCP, PROTO_UDP};

use crate::{maps::SOCK_REPLIES, ring, rewrite, service, stats};

/// Return values of sock_addr programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// What a denied connect()/sendmsg() to an empty service, or from a source outside its ranges,
/// fails with, as a refused connection.
const ECONNREFUSED: i32 = 111;

/// An address as the hook sees it (user_ip4/user_ip6 + user_port).
struct SockAddr {
    addr: [u8; 16],
    port: u16,
}

#[inline(always)]
fn read(ctx: &SockAddrContext, family: u8) -> SockAddr {
    // SAFETY: ctx.sock_addr is the bpf_sock_addr the kernel passed to this hook, valid for the
    // whole run.
    let sa = unsafe { &*ctx.sock_addr };
    // user_ip6 must be read one 32-bit word at a time; the words are in memory (network) order.
    let words = if family == FAMILY_V4 {
        [sa.user_ip4, 0, 0, 0]
    } else {
        [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]]
    };
    // SAFETY: same size, any bytes valid. Built from words, not a zeroed byte array (see mem.rs).
    let addr = unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) };
    // user_port holds the port in network order in its low 16 bits.
    SockAddr { addr, port: u16::from_be(sa.user_port as u16) }
}

/// The address the socket is bound to, zero if none (as the service's family sees it: a
/// dual-stack socket's IPv4-mapped address unmapped).
#[inline(always)]
fn bound(ctx: &SockAddrContext, family: u8, service_family: u8) -> [u8; 16] {
    // SAFETY: ctx.sock_addr is the bpf_sock_addr the kernel passed to this hook, valid for the
    // whole run; its sk is the socket the call is made on (never null in these hooks).
    let sk = unsafe { &*(*ctx.sock_addr).__bindgen_anon_1.sk };
    let words = if family == FAMILY_V4 { [sk.src_ip4, 0, 0, 0] } else { [sk.src_ip6[0], sk.src_ip6[1], sk.src_ip6[2], sk.src_ip6[3]] };
    // SAFETY: same size, any bytes valid. Built from words (see mem.rs).
    let addr = unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) };
    if family != service_family {
        return unmapped(&addr).unwrap_or_default();
    }
    addr
}

#[inline(always)]
fn write(ctx: &SockAddrContext, family: u8, addr: &[u8; 16], port: u16) {
    // SAFETY: ctx.sock_addr is the bpf_sock_addr the kernel passed to this hook, valid for the
    // whole run; user_ip4/user_ip6/user_port are the fields a sock_addr hook may write.
    let sa = unsafe { &mut *ctx.sock_addr };
    if family == FAMILY_V4 {
        sa.user_ip4 = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
    } else {
        sa.user_ip6[0] = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
        sa.user_ip6[1] = u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]);
        sa.user_ip6[2] = u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]);
        sa.user_ip6[3] = u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]);
    }
    sa.user_port = port.to_be() as u32;
}

#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: ctx.sock_addr is the bpf_sock_addr the kernel passed to this hook, valid for the
    // whole run.
    let sa = unsafe { &*ctx.sock_addr };
    match (sa.protocol, sa.type_) {
        (6, _) | (0, SOCK_STREAM) => Some(PROTO_TCP),
        (17, _) | (0, SOCK_DGRAM) => Some(PROTO_UDP),
        _ => None,
    }
}

/// The IPv4 address inside an IPv4-mapped IPv6 address (::ffff:a.b.c.d), as a 16-byte field.
#[inline(always)]
fn unmapped(addr: &[u8; 16]) -> Option<[u8; 16]> {
    // SAFETY: [u8; 16] and [u32; 4] have the same size and every bit pattern is a valid u32.
    let words = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*addr) };
    if words[0] != 0 || words[1] != 0 || words[2] != u32::from_ne_bytes(V4_MAPPED_PREFIX) {
        return None;
    }
    // SAFETY: same size, any bytes valid. Built from words (see mem.rs).
    Some(unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>([words[3], 0, 0, 0]) })
}

/// An IPv4 address (first 4 bytes of the field) as ::ffff:a.b.c.d.
#[inline(always)]
fn mapped(addr: &[u8; 16]) -> [u8; 16] {
    // SAFETY: same size, any bytes valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>([0, 0, u32::from_ne_bytes(V4_MAPPED_PREFIX), rewrite::word(addr, 0)]) }
}

/// Bytes 8..12 of an IPv4-mapped IPv6 address.
const V4_MAPPED_PREFIX: [u8; 4] = [0, 0, 0xff, 0xff];

/// connect() and sendmsg(): a service address becomes a backend chosen by the service's ring for
/// this socket. `new_connection` distinguishes connect (counted as a new flow) from a datagram.
/// A dual-stack IPv6 socket reaches an IPv4 service with an IPv4-mapped address: the service is
/// looked up as IPv4 and the backend written back mapped.
#[inline(always)]
pub fn redirect(ctx: &SockAddrContext, family: u8, new_connection: bool) -> i32 {
    let Some(proto) = protocol(ctx) else { return ALLOW };
    let dst = read(ctx, family);
    let v4_in_v6 = if family == FAMILY_V4 { None } else { unmapped(&dst.addr) };
    let (service_addr, service_family) = match v4_in_v6 {
        Some(v4) => (v4, FAMILY_V4),
        None => (dst.addr, family),
    };
    let client = bound(ctx, family, service_family);
    let service = match service::service_at(&service_addr, dst.port, proto, service_family, &client) {
        Lookup::Service(service) => service,
        Lookup::SourceRefused(service) => {
            stats::count_source_refusal(service.service_id);
            return refuse(Reason::SourceRefused);
        }
        Lookup::NotExposed(_) | Lookup::None => return ALLOW,
    };
    // SAFETY: ctx.as_ptr() is this hook's own context, the argument the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: same size, any bytes valid.
    let cookie_bytes = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([cookie, 0]) };
    // By the socket, not its address: a local client's port is not yet chosen here.
    match ring::pick(&service, &cookie_bytes, 0, proto, service_family) {
        Ok((backend_id, backend)) => {
            // The backend as this socket will see it (getpeername, recvmsg): mapped on a
            // dual-stack socket.
            let backend_addr = if v4_in_v6.is_some() { mapped(&backend.addr) } else { backend.addr };
            let key = SockKey { cookie, addr: backend_addr, port: backend.port, family, _pad: 0, _pad2: 0 };
            let reply = ReplyInfo { service_addr: dst.addr, service_port: dst.port, _pad: 0, _pad2: 0 };
            if SOCK_REPLIES.insert(key, reply, 0).is_err() {
                stats::count_verdict(Reason::FlowTableFull);
                return DENY;
            }
            write(ctx, family, &backend_addr, backend.port);
            stats::count_verdict(Reason::FwdSocket);
            if new_connection {
                stats::count_socket_flow(service.service_id, backend_id);
            }
            ALLOW
        }
        // No active backend: fail the call at once, as a refused connection, instead of a
        // connect that hangs.
        Err(Reason::NoBackend) => refuse(Reason::NoBackendRejected),
        Err(reason) => {
            // A torn ring: fail the call (EPERM) rather than send it anywhere else.
            stats::count_verdict(reason);
            DENY
        }
    }
}

/// Fails the call as a refused connection, counted as `verdict`.
#[inline(always)]
fn refuse(verdict: Reason) -> i32 {
    // SAFETY: plain helper call; sets the error a denied call returns.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    stats::count_verdict(verdict);
    DENY
}

/// getpeername() and recvmsg(): a backend address this socket was sent to shows as the service.
#[inline(always)]
pub fn restore(ctx: &SockAddrContext, family: u8) -> i32 {
    let peer = read(ctx, family);
    // SAFETY: ctx.as_ptr() is this hook's own context, the argument the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let service = |addr: [u8; 16], family: u8| {
        let key = SockKey { cookie, addr, port: peer.port, family, _pad: 0, _pad2: 0 };
        // SAFETY: Map::get is unsafe because the element may be updated or reused while a reference
        // is held; the value is copied out in this statement, so no reference outlives it.
        unsafe { SOCK_REPLIES.get(key) }.map(|reply| (reply.service_addr, reply.service_port))
    };
    // A dual-stack UDP socket sending to a mapped address takes the kernel's IPv4 path (sendmsg4
    // stored the mapping as IPv4), while recvmsg6 shows the peer mapped.
    let found = service(peer.addr, family).or_else(|| {
        let v4 = if family == FAMILY_V4 { None } else { unmapped(&peer.addr) }?;
        service(v4, FAMILY_V4).map(|(addr, port)| (mapped(&addr), port))
    });
    if let Some((addr, port)) = found {
        write(ctx, family, &addr, port);
        stats::count_verdict(Reason::SocketReplyRewritten);
    }
    ALLOW
}
