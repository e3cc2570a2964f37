//! Route lookups (bpf_fib_lookup) and sending a rewritten frame on: back out of the interface it
//! came in on (XDP_TX) or out of another one (XDP_REDIRECT).

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LOOKUP_SRC},
    helpers::{bpf_fib_lookup as fib_lookup_helper, bpf_redirect},
};
use lb_common::{BackendInfo, FibParams, Reason, UplinkHop, FAMILY_V4, ROUTE_TTL_NS};

use crate::{
    maps::{scratch, FIB_SCRATCH, ROUTES, UPLINKS},
    mem,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;
const MIN_IP_PACKET: u16 = 68;

/// Where a destination is.
#[derive(Clone, Copy)]
pub enum Route {
    /// One of this node's addresses, or reached through a non-uplink interface: the stack
    /// delivers or forwards the destination-rewritten packet itself.
    Local,
    /// Out of an uplink: the hop as the lookup found it, in the route cache's entry or in this
    /// CPU's scratch (lb_common::UplinkHop says why not by value).
    Uplink(&'static UplinkHop),
}

/// The route from `ingress` to backend `backend_id`: the cached one (lb_common::CachedRoute)
/// while it is fresh and was found for this backend and ingress, else looked up and cached.
#[inline(always)]
pub fn to_backend(
    ctx: *mut core::ffi::c_void,
    ingress: u32,
    proto: u8,
    backend_id: u32,
    backend: &BackendInfo,
    now: u64,
) -> Result<Route, Reason> {
    let cached = ROUTES.get_ptr_mut(backend_id).ok_or(Reason::FibFailure)?;
    // SAFETY: an array element, allocated as long as the map. CPUs refreshing the same entry at
    // once write the same lookup's answer; one reading meanwhile may mix two answers only if the
    // route changed in between, which costs that one packet.
    let cached = unsafe { &mut *cached };
    let fresh = cached.looked_up_ns != 0 && now.wrapping_sub(cached.looked_up_ns) < ROUTE_TTL_NS;
    if !(fresh && cached.generation == backend.generation && cached.ingress == ingress) {
        // An unresolved neighbour is an error here: not cached, looked up again by the next packet.
        match lookup(ctx, ingress, backend.family, proto, &backend.addr)? {
            Route::Local => cached.hop.ifindex = 0,
            Route::Uplink(hop) => cached.hop = *hop,
        }
        cached.generation = backend.generation;
        cached.ingress = ingress;
        cached.looked_up_ns = now;
    }
    Ok(match cached.hop.ifindex {
        0 => Route::Local,
        _ => Route::Uplink(&cached.hop),
    })
}

/// Looks up the route from `ingress` to `dst` (of `family`), as the stack would forward it.
#[inline(always)]
pub fn lookup(ctx: *mut core::ffi::c_void, ingress: u32, family: u8, l4_protocol: u8, dst: &[u8; 16]) -> Result<Route, Reason> {
    let params = FIB_SCRATCH.get_ptr_mut(0).ok_or(Reason::FibFailure)?;
    // SAFETY: a per-CPU map value, ours for the duration of this program run.
    let params = unsafe { &mut *params };
    // Field by field: a struct literal with defaults becomes a byte-loop memset (see mem.rs).
    // The helper reads family, protocol, ports, length, ifindex, tos/flowinfo, src and dst.
    params.family = if family == FAMILY_V4 { AF_INET } else { AF_INET6 };
    params.l4_protocol = l4_protocol;
    params.sport = 0;
    params.dport = 0;
    // A size within any MTU: this is a route lookup, not an MTU check. With 0, a TC skb longer
    // than the egress MTU would come back FRAG_NEEDED and be taken for a local destination.
    params.tot_len = MIN_IP_PACKET;
    params.ifindex = ingress;
    params.flowinfo = 0;
    mem::zero16(&mut params.src);
    params.dst = *dst;
    params.tbid = 0;
    let size = core::mem::size_of::<FibParams>() as i32;
    // SAFETY: FibParams has the layout of struct bpf_fib_lookup (size asserted in lb-common).
    let ret = unsafe { fib_lookup_helper(ctx, (params as *mut FibParams).cast::<bpf_fib_lookup>(), size, BPF_FIB_LOOKUP_SRC) };
    // SAFETY: only whether the key exists is read; no reference into the element is kept.
    let via_uplink = unsafe { UPLINKS.get(params.ifindex) }.is_some();
    match ret {
        FIB_SUCCESS if via_uplink => {
            let hop = &mut scratch().map_err(|_| Reason::FibFailure)?.looked_up_hop;
            hop.ifindex = params.ifindex;
            hop.smac = params.smac;
            hop.dmac = params.dmac;
            hop.src = params.src;
            Ok(Route::Uplink(hop))
        }
        FIB_NO_NEIGH if via_uplink => Err(Reason::FibNoNeigh),
        // Everything else is the stack's business: a local address (not forwarded), a next hop
        // behind another interface (the stack resolves its neighbour), forwarding disabled or no
        // route (the stack drops or answers with ICMP, as it would without us).
        _ => Ok(Route::Local),
    }
}

/// Sends the frame out of `egress`: XDP_TX when that is where it came in.
#[inline(always)]
pub fn send(ingress: u32, egress: u32) -> u32 {
    if ingress == egress {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call; returns XDP_REDIRECT or XDP_ABORTED.
        unsafe { bpf_redirect(egress, 0) as u32 }
    }
}
