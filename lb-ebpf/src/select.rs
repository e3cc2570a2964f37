//! Stage 2: service lookup, then the connection's backend: its pinned flow if the backend still
//! exists, else a Maglev pick from the service's live ring, pinned for the rest of the flow.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    hash, reasons, BackendInfo, FlowInfo, FlowKey, NodeAddrKey, ReplyInfo, ServiceInfo, ServiceKey,
    BACKEND_ACTIVE, BACKEND_UNUSED, PROTO_UDP,
};

use crate::{
    maps::{BACKENDS, FLOWS, NODE_ADDRS, REPLIES, RINGS, RING_SIZE, SERVICES, UDP_TIMEOUT_NS},
    parse::Parsed,
};

/// Where a packet goes.
pub struct Target {
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: &'static BackendInfo,
    pub new_flow: bool,
}

/// The service a packet is addressed to: (dst, port, proto) exactly, else a service port when
/// the destination is one of this node's addresses.
#[inline(always)]
pub fn service(p: &Parsed) -> Option<ServiceInfo> {
    service_at(&p.dst, p.dport, p.proto, p.family)
}

/// The service at (addr, port, proto) in `family`, VIP first, then a service port on a node address.
#[inline(always)]
pub fn service_at(addr: &[u8; 16], port: u16, proto: u8, family: u8) -> Option<ServiceInfo> {
    let mut key = ServiceKey { addr: *addr, port, proto, family };
    if let Some(info) = unsafe { SERVICES.get(key) } {
        return Some(*info);
    }
    key.addr = [0; 16];
    let info = *unsafe { SERVICES.get(key) }?;
    let node = NodeAddrKey { addr: *addr, family, _pad: [0; 3] };
    unsafe { NODE_ADDRS.get(node) }.map(|_| info)
}

/// The backend for this packet's connection to `svc`.
#[inline(always)]
pub fn backend(p: &Parsed, svc: &ServiceInfo) -> Result<Target, u32> {
    let key = FlowKey { src: p.src, dst: p.dst, sport: p.sport, dport: p.dport, proto: p.proto, family: p.family, _pad: [0; 2] };
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        let flow = unsafe { &mut *flow };
        if let Some(target) = pinned(p, svc, flow, now) {
            return Ok(target);
        }
    }
    pick(p, svc, &key, now)
}

/// The flow's pinned backend, if it still exists (same generation) and a UDP flow has not idled
/// out. Draining backends keep their flows.
#[inline(always)]
fn pinned(p: &Parsed, svc: &ServiceInfo, flow: &mut FlowInfo, now: u64) -> Option<Target> {
    let backend = BACKENDS.get(flow.backend_id)?;
    if backend.state == BACKEND_UNUSED || backend.generation != flow.backend_generation {
        return None;
    }
    if p.proto == PROTO_UDP {
        if now.wrapping_sub(flow.last_seen_ns) > UDP_TIMEOUT_NS.load() {
            return None;
        }
        flow.last_seen_ns = now;
    }
    Some(Target { service_id: svc.service_id, backend_id: flow.backend_id, backend, new_flow: false })
}

/// A new flow: Maglev slot → backend id → pin the flow and remember how to rewrite replies.
#[inline(always)]
fn pick(p: &Parsed, svc: &ServiceInfo, key: &FlowKey, now: u64) -> Result<Target, u32> {
    let (backend_id, backend) = ring_pick(svc, hash::flow_hash(&p.src, p.sport, p.proto), p.family)?;
    let flow = FlowInfo { backend_id, backend_generation: backend.generation, last_seen_ns: now };
    FLOWS.insert(key, flow, 0).map_err(|_| reasons::FLOW_TABLE_FULL)?;
    let reply_key = FlowKey {
        src: backend.addr,
        dst: p.src,
        sport: backend.port,
        dport: p.sport,
        proto: p.proto,
        family: p.family,
        _pad: [0; 2],
    };
    let reply = ReplyInfo { service_addr: p.dst, service_port: p.dport, _pad: [0; 6] };
    REPLIES.insert(reply_key, reply, 0).map_err(|_| reasons::FLOW_TABLE_FULL)?;
    Ok(Target { service_id: svc.service_id, backend_id, backend, new_flow: true })
}

/// The active backend the service's ring assigns to `flow_hash`.
#[inline(always)]
pub fn ring_pick(svc: &ServiceInfo, flow_hash: u32, family: u8) -> Result<(u32, &'static BackendInfo), u32> {
    if svc.active_backends == 0 {
        return Err(reasons::NO_BACKEND);
    }
    let ring_size = RING_SIZE.load();
    let slot = hash::ring_slot(flow_hash, ring_size);
    let backend_id = ring_entry(svc.ring_index.wrapping_mul(ring_size).wrapping_add(slot))?;
    let backend = BACKENDS.get(backend_id).ok_or(reasons::BAD_BACKEND)?;
    if backend_id == 0 || backend.state != BACKEND_ACTIVE || backend.family != family {
        return Err(reasons::BAD_BACKEND);
    }
    Ok((backend_id, backend))
}

/// Backend id at u32 position `index` of the ring pool (two per u64 element, low half first).
#[inline(always)]
fn ring_entry(index: u32) -> Result<u32, u32> {
    let pair = *RINGS.get(index / 2).ok_or(reasons::BAD_BACKEND)?;
    Ok(if index & 1 == 0 { pair as u32 } else { (pair >> 32) as u32 })
}

/// How to restore the service address on a reply from a backend, if this is one.
#[inline(always)]
pub fn reply(p: &Parsed) -> Option<ReplyInfo> {
    let key = FlowKey { src: p.src, dst: p.dst, sport: p.sport, dport: p.dport, proto: p.proto, family: p.family, _pad: [0; 2] };
    unsafe { REPLIES.get(key) }.copied()
}
