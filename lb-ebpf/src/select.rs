//! Stages 3-4 for a new flow: the backend the service's ring picks (`ring`), how it is reached
//! (through this node's stack, or full NAT out of an uplink), and its entries (`flow`, `nat`).
//! Established flows are found by `flow::established` before any of this.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    dsr::{self, Reach},
    BackendInfo, Reason, Scratch, ServiceInfo, FLOW_DSR, FLOW_LOCAL, FLOW_NAT,
};

use crate::{
    flow::{self, FlowSlot, Target},
    forward::{self, Route},
    maps::{self, scratch, settings, DSR_NODES},
    mem, nat,
    parse::Parsed,
    ring,
};

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
    let (backend_id, backend) = ring::pick(svc, &p.src, p.sport, p.proto, p.family)?;
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    s.flow.backend_id = backend_id;
    s.flow.backend_generation = backend.generation;
    s.flow.last_seen_ns = now;
    s.flow.kind = FLOW_LOCAL;
    s.flow.nat_port = 0;
    s.flow.service_port = 0;
    mem::zero16(&mut s.flow.addrs);
    let route = match forward::to_backend(ctx, ingress, p.proto, backend_id, backend, now)? {
        Route::Local => None,
        Route::Uplink(hop) => {
            // Checked before anything is claimed: a forward the TTL forbids must not pin a flow
            // or take a NAT port (the fuzzer found both).
            if p.ttl <= 1 {
                return Err(Reason::TtlExceeded);
            }
            if remote_reach(backend) == Reach::Dsr {
                s.flow.kind = FLOW_DSR;
            } else {
                s.flow.kind = FLOW_NAT;
                s.flow.set_nat_source(&hop.src);
                s.flow.nat_port = nat::claim_port(p, backend, s, now)?;
            }
            Some(hop)
        }
    };
    if !flow::pin_by_client(p, slot, backend, s) {
        flow::pin_by_tuple(p, s)?;
        if s.flow.kind == FLOW_LOCAL {
            flow::remember_reply(p, backend, s)?;
        }
    }
    Ok(Target { service_id: svc.service_id, backend_id, backend, new_flow: true, flow: &mut s.flow, route })
}

/// How a backend the route lookup found on another node is reached (lb_common::dsr::reach).
#[inline(always)]
fn remote_reach(backend: &BackendInfo) -> Reach {
    let flags = settings().map_or(0, |s| s.dsr_flags);
    dsr::reach(true, flags, || maps::in_node_ranges(&DSR_NODES, backend.family, &backend.addr))
}
