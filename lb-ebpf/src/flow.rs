//! Stage 1, connection tracking: the flow table. A connection's pinned backend (live as
//! lb_common::liveness decides), how a new flow is keyed (client key or whole tuple: `FlowSlot`),
//! its entries once pinned, and the reply entries TC egress restores service addresses from.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use lb_common::{
    liveness::{self, UdpClock},
    v4_bytes, BackendInfo, FlowInfo, FlowKey, FlowKey4, Reason, ReplyInfo, Scratch, UplinkHop, FAMILY_V4, FLOW_LOCAL, PROTO_UDP,
};

use crate::{
    maps::{scratch, settings, BACKENDS, FLOWS, FLOWS4, REPLIES, REPLIES4, TUPLE_FLOWS4},
    mem,
    parse::Parsed,
};

#[inline(always)]
fn flow_key4(p: &Parsed) -> FlowKey4 {
    FlowKey4 { src: v4_of(&p.src), dst: v4_of(&p.dst), sport: p.sport, dport: p.dport, proto: p.proto, _pad: 0, _pad2: 0 }
}

/// The IPv4 address in the first 4 bytes of an address field.
#[inline(always)]
fn v4_of(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// The client key of an IPv4 packet from the client (`FlowKey4::client`).
#[inline(always)]
fn client_key4(p: &Parsed) -> FlowKey4 {
    FlowKey4::client(v4_of(&p.src), p.sport, p.proto)
}

/// Whether `FLOWS4` may hold connection-keyed entries (see `TUPLE_FLOWS4`).
#[inline(always)]
fn tuple_flows4_exist() -> bool {
    TUPLE_FLOWS4.get(0).is_some_and(|used| *used != 0)
}

/// Records that a connection-keyed IPv4 entry exists from now on.
#[inline(always)]
fn note_tuple_flow4() {
    if let Some(used) = TUPLE_FLOWS4.get_ptr_mut(0) {
        // SAFETY: an array element, allocated as long as the map; every writer stores 1, and
        // reading first keeps the cache line shared once it is set.
        unsafe {
            if *used == 0 {
                *used = 1;
            }
        }
    }
}

#[inline(always)]
pub fn flow_key(p: &Parsed) -> FlowKey {
    FlowKey { src: p.src, dst: p.dst, sport: p.sport, dport: p.dport, proto: p.proto, family: p.family, _pad: 0 }
}

/// How a connection without a live pinned flow gets its entry: an IPv4 one by its client's
/// address and port when no other live connection holds that key (one entry for both
/// directions), else, and for IPv6, by its whole tuple with a reply entry beside it.
#[derive(Clone, Copy)]
pub enum FlowSlot {
    /// No entry under the client key.
    ClientFree,
    /// The client key holds this connection's entry whose backend is gone, or another
    /// connection's that has ended (backend gone, UDP idle): overwritten.
    ClientStale,
    /// The client key holds another connection's live entry, pinned to `backend` (`local`:
    /// reached through this node's stack).
    ClientHeld { backend: &'static BackendInfo, local: bool },
    /// Keyed by the whole tuple (IPv6).
    Tuple,
}

/// Where a packet goes.
pub struct Target {
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: &'static BackendInfo,
    pub new_flow: bool,
    /// The pinned flow: how the backend is reached (`kind`) and, for full NAT, from where.
    pub flow: &'static mut FlowInfo,
    /// The hop to a remote (full-NAT or DSR) backend when a stage before forwarding already found
    /// it: a new flow's, looked up (with the TTL checked) before its state was claimed. None for
    /// an established flow, whose route is looked up when it is forwarded. (A reference, not a
    /// `Route`: an `Option<Route>` is a tag beside a pointer, which LLVM spilled as 32 bits of
    /// a pointer, and the verifier refuses that.)
    pub route: Option<&'static UplinkHop>,
}

/// What the flow table holds for a packet's connection.
pub enum Established {
    /// A live pinned flow: its backend.
    Pinned(Target),
    /// None (or one that has ended): the new flow is to be keyed as the slot says.
    New(FlowSlot),
}

/// The pinned backend of an established connection, looked up before the service: a flow is
/// only ever created for a service, and its backend entry names the service it belongs to (a
/// removed service's backends are marked unused, which ends its flows here too). Without one,
/// how the new flow is to be keyed.
#[inline(always)]
pub fn established(p: &Parsed) -> Established {
    match lookup(p) {
        Ok(target) => Established::Pinned(target),
        Err(slot) => Established::New(slot),
    }
}

/// [`established`], with the slot as the early return of each miss.
#[inline(always)]
fn lookup(p: &Parsed) -> Result<Target, FlowSlot> {
    let s = scratch().map_err(|_| FlowSlot::Tuple)?;
    if p.family != FAMILY_V4 {
        s.flow_key = flow_key(p);
        let flow = FLOWS.get_ptr_mut(&s.flow_key).ok_or(FlowSlot::Tuple)?;
        // SAFETY: flow is the non-null pointer get_ptr_mut returned into the flow table's
        // element, which the kernel keeps allocated for this program run (RCU); another CPU
        // updating the same flow races only on plain scalars, never on memory safety.
        return pinned(p, unsafe { &mut *flow }).ok_or(FlowSlot::Tuple);
    }
    s.flow_key4 = client_key4(p);
    let slot = match FLOWS4.get_ptr_mut(&s.flow_key4) {
        None => FlowSlot::ClientFree,
        Some(flow) => {
            // SAFETY: as above.
            let flow = unsafe { &mut *flow };
            if flow.is_v4_connection_to(&p.dst, p.dport) {
                return pinned(p, flow).ok_or(FlowSlot::ClientStale);
            }
            match live_backend(p, flow) {
                Some(backend) => FlowSlot::ClientHeld { backend, local: flow.kind == FLOW_LOCAL },
                None => FlowSlot::ClientStale,
            }
        }
    };
    if !tuple_flows4_exist() {
        return Err(slot);
    }
    s.flow_key4 = flow_key4(p);
    let flow = FLOWS4.get_ptr_mut(&s.flow_key4).ok_or(slot)?;
    // SAFETY: as above.
    pinned(p, unsafe { &mut *flow }).ok_or(slot)
}

/// The flow's pinned backend, if it still exists (same generation) and a UDP flow has not idled
/// out. Draining backends keep their flows. Nothing is written: a packet found here may still
/// not be forwarded (see `forwarded`).
#[inline(always)]
fn pinned(p: &Parsed, flow: &'static mut FlowInfo) -> Option<Target> {
    let backend = live_backend(p, flow)?;
    Some(Target { service_id: backend.service_id, backend_id: flow.backend_id, backend, new_flow: false, flow, route: None })
}

/// The backend of a flow that has not ended: its backend id still names the same backend, and a
/// UDP flow has not idled out.
#[inline(always)]
fn live_backend(p: &Parsed, flow: &FlowInfo) -> Option<&'static BackendInfo> {
    let backend = BACKENDS.get(flow.backend_id)?;
    let clock = || {
        // SAFETY: a helper without arguments or preconditions.
        let now_ns = unsafe { bpf_ktime_get_ns() };
        Some(UdpClock { now_ns, timeout_ns: settings()?.udp_timeout_ns })
    };
    liveness::flow_alive(flow, backend, p.proto, clock).then_some(backend)
}

/// Stamps an established UDP flow with the time of a packet being forwarded on it (its idle
/// timeout runs from the last one). Called once the packet is known to be forwarded, so one
/// that is not (TTL 1 towards an uplink) keeps nothing alive.
#[inline(always)]
pub fn forwarded(p: &Parsed, target: &mut Target) {
    if p.proto == PROTO_UDP && !target.new_flow {
        // SAFETY: a helper without arguments or preconditions.
        target.flow.last_seen_ns = unsafe { bpf_ktime_get_ns() };
    }
}

/// Pins an IPv4 flow under its client key if `slot` allows; false if it is to be keyed by its
/// tuple (IPv6, a live connection holding the key, or another CPU taking it meanwhile).
#[inline(always)]
pub fn pin_by_client(p: &Parsed, slot: FlowSlot, backend: &BackendInfo, s: &mut Scratch) -> bool {
    let flags = match slot {
        FlowSlot::Tuple => return false,
        FlowSlot::ClientHeld { backend: held, local } if !(local && s.flow.kind == FLOW_LOCAL && same_task(held, backend)) => {
            return false;
        }
        FlowSlot::ClientHeld { .. } | FlowSlot::ClientStale => 0,
        FlowSlot::ClientFree => BPF_NOEXIST as u64,
    };
    s.flow.set_v4_service(&p.dst, p.dport);
    s.flow_key4 = client_key4(p);
    if FLOWS4.insert(&s.flow_key4, &s.flow, flags).is_ok() {
        return true;
    }
    s.flow.clear_v4_service(p.family);
    false
}

/// Whether two backend entries are the same task address and port. A local connection holding
/// the client key (alive as far as its entry tells) whose task is the new local flow's has in
/// fact ended: the task cannot hold two connections from one client address and port, and
/// that one's entry would restore the new one's replies with its service (the newest
/// connection's entry must win, as a reply entry written last does).
#[inline(always)]
fn same_task(a: &BackendInfo, b: &BackendInfo) -> bool {
    a.port == b.port && mem::eq16(&a.addr, &b.addr)
}

/// Pins a flow under its whole tuple.
#[inline(always)]
pub fn pin_by_tuple(p: &Parsed, s: &mut Scratch) -> Result<(), Reason> {
    let pinned = if p.family == FAMILY_V4 {
        note_tuple_flow4();
        s.flow_key4 = flow_key4(p);
        FLOWS4.insert(&s.flow_key4, &s.flow, 0)
    } else {
        s.flow_key = flow_key(p);
        FLOWS.insert(&s.flow_key, &s.flow, 0)
    };
    pinned.map_err(|_| Reason::FlowTableFull)
}

/// The reply entry of a tuple-keyed local flow: the backend's replies to the client get the
/// service address back as their source.
#[inline(always)]
pub fn remember_reply(p: &Parsed, backend: &BackendInfo, s: &mut Scratch) -> Result<(), Reason> {
    s.reply.service_addr = p.dst;
    s.reply.service_port = p.dport;
    set_reply_key(p, &backend.addr, backend.port, s);
    let remembered = if p.family == FAMILY_V4 { REPLIES4.insert(&s.reply_key4, &s.reply, 0) } else { REPLIES.insert(&s.reply_key, &s.reply, 0) };
    remembered.map_err(|_| Reason::FlowTableFull)
}

/// The reply key (in the scratch area) of the connection `p` once its destination is the backend
/// `addr`:`port`.
#[inline(always)]
fn set_reply_key(p: &Parsed, addr: &[u8; 16], port: u16, s: &mut Scratch) {
    if p.family == FAMILY_V4 {
        s.reply_key4 = FlowKey4 { src: v4_of(addr), dst: v4_of(&p.src), sport: port, dport: p.sport, proto: p.proto, _pad: 0, _pad2: 0 };
    } else {
        s.reply_key = FlowKey { src: *addr, dst: p.src, sport: port, dport: p.sport, proto: p.proto, family: p.family, _pad: 0 };
    }
}

/// Whether this node holds a decapsulated DSR packet `p`'s connection to the local backend
/// `addr`:`port`: a reply entry restoring `p`'s destination (its service). Leaves the entry's
/// key in the scratch area for [`remember_service`].
#[inline(always)]
pub fn reply_known(p: &Parsed, addr: &[u8; 16], port: u16, s: &mut Scratch) -> bool {
    set_reply_key(p, addr, port, s);
    let same = |have: &ReplyInfo| have.service_port == p.dport && mem::eq16(&have.service_addr, &p.dst);
    if p.family == FAMILY_V4 {
        // SAFETY: read during this run only; the kernel keeps the element allocated until it ends.
        unsafe { REPLIES4.get(&s.reply_key4) }.is_some_and(same)
    } else {
        // SAFETY: as above.
        unsafe { REPLIES.get(&s.reply_key) }.is_some_and(same)
    }
}

/// Writes the reply entry of a decapsulated DSR packet `p` for the local backend `addr`:`port`
/// (its service is `p`'s destination), unless [`reply_known`]: one lookup per packet, so an
/// entry evicted or lost with a restart is back with the next packet. Connection-keyed, as the
/// balancer, not this node, pinned the flow.
#[inline(always)]
pub fn remember_service(p: &Parsed, addr: &[u8; 16], port: u16, s: &mut Scratch) -> Result<(), Reason> {
    if reply_known(p, addr, port, s) {
        return Ok(());
    }
    s.reply.service_addr = p.dst;
    s.reply.service_port = p.dport;
    let remembered = if p.family == FAMILY_V4 {
        note_tuple_flow4();
        REPLIES4.insert(&s.reply_key4, &s.reply, 0)
    } else {
        REPLIES.insert(&s.reply_key, &s.reply, 0)
    };
    remembered.map_err(|_| Reason::FlowTableFull)
}

/// How to restore the service address on a reply from a local backend, if this is one.
#[inline(always)]
pub fn reply(p: &Parsed) -> Option<&'static ReplyInfo> {
    if p.family == FAMILY_V4 {
        if let Some(reply) = client_keyed_reply(p) {
            return Some(reply);
        }
        if !tuple_flows4_exist() {
            return None;
        }
        // SAFETY: the reference is used only during this program run (the caller copies the fields
        // it rewrites), and the kernel keeps the element allocated until the run ends (RCU); a
        // concurrent update of the key writes the same connection's values.
        unsafe { REPLIES4.get(flow_key4(p)) }
    } else {
        // SAFETY: the reference is used only during this program run (the caller copies the fields
        // it rewrites), and the kernel keeps the element allocated until the run ends (RCU); a
        // concurrent update of the key writes the same connection's values.
        unsafe { REPLIES.get(flow_key(p)) }
    }
}

/// The service address of an IPv4 reply whose connection is keyed by its client (the reply's
/// destination): only if it comes from the backend that connection is pinned to, so the task's
/// replies to clients that reach it directly keep its own address.
#[inline(always)]
fn client_keyed_reply(p: &Parsed) -> Option<&'static ReplyInfo> {
    let s = scratch().ok()?;
    s.flow_key4 = FlowKey4::client(v4_of(&p.dst), p.dport, p.proto);
    // SAFETY: read during this run only; the kernel keeps the element allocated until it ends.
    let flow = unsafe { FLOWS4.get(&s.flow_key4) }?;
    let (service_addr, service_port) = flow.v4_service()?;
    let backend = BACKENDS.get(flow.backend_id)?;
    if flow.kind != FLOW_LOCAL || backend.port != p.sport || v4_of(&backend.addr) != v4_of(&p.src) {
        return None;
    }
    s.reply.service_addr = v4_bytes(service_addr);
    s.reply.service_port = service_port;
    Some(&s.reply)
}
