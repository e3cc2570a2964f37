//! Stage 2: the connection's pinned flow if its backend still exists; else the service lookup
//! and a Maglev pick from the service's live ring, pinned for the rest of the flow.
//! A new flow also decides how the backend is reached: through this node's stack (destination
//! NAT) or, when the route to it leaves through an uplink, with full NAT from a node address.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use lb_common::{
    hash, liveness::{self, UdpClock}, nat_state, ring_pool, v4_bytes, BackendInfo, FlowInfo, FlowKey, FlowKey4, NatReply, NodeAddrKey, ReplyInfo, Scratch, ServiceInfo, ServiceKey,
    service_addr_bit, service_port_bit, Reason, BACKEND_ACTIVE, SERVICE_ADDRS_COMPLETE, BACKEND_UNUSED, FAMILY_V4, FLOW_LOCAL, FLOW_NAT,
    PROTO_UDP,
};

use crate::{
    forward::{self, Route},
    mem,
    maps::{
        scratch, settings, BACKENDS, FLOWS, FLOWS4, NAT_REPLIES, NODE_ADDRS, REPLIES, REPLIES4, RINGS, SERVICES,
        SERVICE_ADDRS, SERVICE_PORTS, TUPLE_FLOWS4,
    },
    parse::Parsed,
};

/// Where a packet goes.
pub struct Target {
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: &'static BackendInfo,
    pub new_flow: bool,
    /// The pinned flow: how the backend is reached (`kind`) and, for full NAT, from where.
    pub flow: &'static mut FlowInfo,
}

/// Whether some service uses the packet's (protocol, destination port): one array lookup that
/// turns most traffic that is not ours away before any hash lookup.
#[inline(always)]
pub fn service_port_used(p: &Parsed) -> bool {
    port_used(p.dport, p.proto)
}

/// Whether the packet's destination may be an address a service is served on (a VIP or a node
/// address): false means no flow or service can match, whatever the port. Checked after
/// `service_port_used`, before the flow lookup (a flow's key has the address the client used).
#[inline(always)]
pub fn service_addr_possible(p: &Parsed) -> bool {
    let (word, bit) = service_addr_bit(&p.dst, p.family);
    // A filter the agent has not completed (maps made before it existed) proves nothing.
    SERVICE_ADDRS.get(word).is_none_or(|w| *w & SERVICE_ADDRS_COMPLETE == 0 || *w & bit != 0)
}

#[inline(always)]
fn port_used(port: u16, proto: u8) -> bool {
    let (word, bit) = service_port_bit(port, proto);
    SERVICE_PORTS.get(word).is_some_and(|w| *w & bit != 0)
}

/// The service a packet is addressed to: (dst, port, proto) exactly, else a service port when
/// the destination is one of this node's addresses. The caller has checked
/// `service_port_used`.
#[inline(always)]
pub fn service(p: &Parsed) -> Option<ServiceInfo> {
    lookup_service(&p.dst, p.dport, p.proto, p.family)
}

/// The service at (addr, port, proto) in `family`, VIP first, then a service port on a node address.
#[inline(always)]
pub fn service_at(addr: &[u8; 16], port: u16, proto: u8, family: u8) -> Option<ServiceInfo> {
    if !port_used(port, proto) {
        return None;
    }
    lookup_service(addr, port, proto, family)
}

#[inline(always)]
fn lookup_service(addr: &[u8; 16], port: u16, proto: u8, family: u8) -> Option<ServiceInfo> {
    let mut key = ServiceKey { addr: *addr, port, proto, family };
    // SAFETY: Map::get is unsafe because the element may be updated or reused while a reference is
    // held; the value is copied out in this statement, so no reference outlives it.
    if let Some(info) = unsafe { SERVICES.get(key) } {
        return Some(*info);
    }
    mem::zero16(&mut key.addr);
    // SAFETY: Map::get is unsafe because the element may be updated or reused while a reference is
    // held; the value is copied out in this statement, so no reference outlives it.
    let info = *unsafe { SERVICES.get(key) }?;
    let node = NodeAddrKey { addr: *addr, family, _pad: 0, _pad2: 0 };
    // SAFETY: only whether the key exists is read; no reference into the element is kept.
    unsafe { NODE_ADDRS.get(node) }.map(|_| info)
}

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
fn flow_key(p: &Parsed) -> FlowKey {
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

/// The pinned backend of an established connection, looked up before the service: a flow is
/// only ever created for a service, and its backend entry names the service it belongs to (a
/// removed service's backends are marked unused, which ends its flows here too). Without one,
/// how the new flow is to be keyed.
#[inline(always)]
pub fn established(p: &Parsed) -> Result<Target, FlowSlot> {
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
    Some(Target { service_id: backend.service_id, backend_id: flow.backend_id, backend, new_flow: false, flow })
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

/// A backend for a connection to `svc` that has no live pinned flow.
#[inline(always)]
pub fn new_flow(ctx: *mut core::ffi::c_void, ingress: u32, p: &Parsed, svc: &ServiceInfo, slot: FlowSlot) -> Result<Target, Reason> {
    let s = scratch()?;
    pick(ctx, ingress, p, svc, slot, s)
}

/// A new flow: Maglev slot → backend → how to reach it → pin the flow (and, unless its entry is
/// keyed by the client, remember how to rewrite its replies).
#[inline(always)]
fn pick(ctx: *mut core::ffi::c_void, ingress: u32, p: &Parsed, svc: &ServiceInfo, slot: FlowSlot, s: &'static mut Scratch) -> Result<Target, Reason> {
    let (backend_id, backend) = ring_pick(svc, hash::flow_hash(&p.src, p.sport, p.proto), p.family)?;
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    s.flow.backend_id = backend_id;
    s.flow.backend_generation = backend.generation;
    s.flow.last_seen_ns = now;
    s.flow.kind = FLOW_LOCAL;
    s.flow.nat_port = 0;
    s.flow.service_port = 0;
    mem::zero16(&mut s.flow.nat_addr);
    match forward::to_backend(ctx, ingress, p.proto, backend_id, backend, now)? {
        Route::Local => {}
        Route::Uplink { src, .. } => {
            // Checked before anything is claimed: a forward the TTL forbids must not pin a flow
            // or take a NAT port (the fuzzer found both).
            if p.ttl <= 1 {
                return Err(Reason::TtlExceeded);
            }
            s.flow.kind = FLOW_NAT;
            s.flow.nat_addr = src;
            s.flow.nat_port = nat_port(p, backend, s, now)?;
        }
    }
    if !pin_by_client(p, slot, backend, s) {
        pin_by_tuple(p, s)?;
        if s.flow.kind == FLOW_LOCAL {
            remember_reply(p, backend, s)?;
        }
    }
    Ok(Target { service_id: svc.service_id, backend_id, backend, new_flow: true, flow: &mut s.flow })
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
fn pin_by_client(p: &Parsed, slot: FlowSlot, backend: &BackendInfo, s: &mut Scratch) -> bool {
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
    s.flow.service_port = 0;
    s.flow.nat_addr = s.flow.nat_source(p.family);
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
fn pin_by_tuple(p: &Parsed, s: &mut Scratch) -> Result<(), Reason> {
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
fn remember_reply(p: &Parsed, backend: &BackendInfo, s: &mut Scratch) -> Result<(), Reason> {
    s.reply.service_addr = p.dst;
    s.reply.service_port = p.dport;
    let remembered = if p.family == FAMILY_V4 {
        s.reply_key4 = FlowKey4 { src: v4_of(&backend.addr), dst: v4_of(&p.src), sport: backend.port, dport: p.sport, proto: p.proto, _pad: 0, _pad2: 0 };
        REPLIES4.insert(&s.reply_key4, &s.reply, 0)
    } else {
        s.reply_key = FlowKey { src: backend.addr, dst: p.src, sport: backend.port, dport: p.sport, proto: p.proto, family: p.family, _pad: 0 };
        REPLIES.insert(&s.reply_key, &s.reply, 0)
    };
    remembered.map_err(|_| Reason::FlowTableFull)
}

/// Probes for a free NAT source port towards `backend` and claims it with the reply mapping
/// (freed by the agent once the connection has closed or idled out, see `nat_state`).
#[inline(always)]
fn nat_port(p: &Parsed, backend: &BackendInfo, s: &mut Scratch, now: u64) -> Result<u16, Reason> {
    let settings = settings().ok_or(Reason::NatPortsExhausted)?;
    let min = settings.nat_port_min as u32;
    if min == 0 {
        // The agent has not written its settings: no range to take a port from.
        return Err(Reason::NatPortsExhausted);
    }
    let span = (settings.nat_port_max as u32).saturating_sub(min) + 1;
    s.nat_reply.client_addr = p.src;
    s.nat_reply.service_addr = p.dst;
    s.nat_reply.client_port = p.sport;
    s.nat_reply.service_port = p.dport;
    s.nat_reply.state = nat_state::after_packet(0, now, p.tcp_flags, false);
    let start = hash::flow_hash(&p.src, p.sport, p.proto);
    s.reply_key = nat_key(p, backend, &s.flow.nat_addr, 0);
    for attempt in 0..4u32 {
        // Odd strides from a per-client start: different clients spread, retries do not repeat.
        let port = min + hash::ring_slot(start.wrapping_add(attempt.wrapping_mul(7919)), span);
        s.reply_key.dport = port as u16;
        if NAT_REPLIES.insert(&s.reply_key, &s.nat_reply, BPF_NOEXIST as u64).is_ok() || reclaim(&s.reply_key, &s.nat_reply) {
            return Ok(port as u16);
        }
    }
    Err(Reason::NatPortsExhausted)
}

/// Whether the mapping under `key` is already this connection's: its flow entry was evicted
/// (LRU) while the mapping stayed. It keeps its port, so the backend still sees the same
/// connection, and the mapping is stamped as the new one would have been.
#[inline(always)]
fn reclaim(key: &FlowKey, want: &NatReply) -> bool {
    let Some(have) = NAT_REPLIES.get_ptr_mut(key) else { return false };
    // SAFETY: a non-null pointer into the map's element, kept allocated until this run ends (RCU).
    let have = unsafe { &mut *have };
    let same = have.client_port == want.client_port
        && have.service_port == want.service_port
        && mem::eq16(&have.client_addr, &want.client_addr)
        && mem::eq16(&have.service_addr, &want.service_addr);
    if same {
        have.state = want.state;
    }
    same
}

/// The active backend the service's ring assigns to `flow_hash`.
#[inline(always)]
pub fn ring_pick(svc: &ServiceInfo, flow_hash: u32, family: u8) -> Result<(u32, &'static BackendInfo), Reason> {
    if svc.active_backends == 0 {
        return Err(Reason::NoBackend);
    }
    let entry = hash::ring_slot(flow_hash, svc.ring_size);
    let backend_id = ring_entry(ring_pool::slot(svc.ring_start, entry))?;
    let backend = BACKENDS.get(backend_id).ok_or(Reason::BadBackend)?;
    if backend_id == 0 || backend.state != BACKEND_ACTIVE || backend.family != family {
        return Err(Reason::BadBackend);
    }
    Ok((backend_id, backend))
}

/// Backend id in `slot` of the ring pool (layout: lb_common::ring_pool).
#[inline(always)]
fn ring_entry(slot: u32) -> Result<u32, Reason> {
    let element = *RINGS.get(ring_pool::element_of(slot)).ok_or(Reason::BadBackend)?;
    Ok(ring_pool::slot_value(element, slot))
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

/// How to send a full-NAT backend's reply back to its client, if this is one. The mapping is
/// stamped with the time and any close the reply carries.
#[inline(always)]
pub fn nat_reply(p: &Parsed) -> Option<&'static NatReply> {
    let settings = settings()?;
    if p.dport < settings.nat_reply_port_min || p.dport > settings.nat_reply_port_max {
        return None;
    }
    let s = scratch().ok()?;
    s.flow_key = flow_key(p);
    let reply = NAT_REPLIES.get_ptr_mut(&s.flow_key)?;
    // SAFETY: a non-null pointer into the map's element, which the kernel keeps allocated until
    // this run ends (RCU); the caller only reads it during the run. Another CPU stamping the same
    // mapping races only on the plain `state` word.
    let reply = unsafe { &mut *reply };
    stamp(reply, p.tcp_flags, true);
    Some(reply)
}

/// A full-NAT client's FIN or reset: marks its mapping closed (the agent frees the port after the
/// linger `nat_state` gives it).
#[inline(always)]
pub fn nat_closing(p: &Parsed, backend: &BackendInfo, flow: &FlowInfo) {
    let Ok(s) = scratch() else { return };
    s.reply_key = nat_key(p, backend, &flow.nat_source(p.family), flow.nat_port);
    if let Some(reply) = NAT_REPLIES.get_ptr_mut(&s.reply_key) {
        // SAFETY: as in `nat_reply`.
        stamp(unsafe { &mut *reply }, p.tcp_flags, false);
    }
}

/// The key of a full-NAT mapping: the backend's reply to `nat_addr`:`nat_port`.
#[inline(always)]
fn nat_key(p: &Parsed, backend: &BackendInfo, nat_addr: &[u8; 16], nat_port: u16) -> FlowKey {
    FlowKey { src: backend.addr, dst: *nat_addr, sport: backend.port, dport: nat_port, proto: p.proto, family: p.family, _pad: 0 }
}

#[inline(always)]
fn stamp(reply: &mut NatReply, tcp_flags: u8, from_backend: bool) {
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    reply.state = nat_state::after_packet(reply.state, now, tcp_flags, from_backend);
}
