//! Uplink ingress, for either hook (crate::frame): parse → flow or service → backend → rewrite
//! → send.
//! Local backends get destination NAT and go to the stack; backends on other nodes get full NAT,
//! or the DSR encapsulation (crate::dsr), and leave at once; replies of full-NAT flows go back to
//! their clients, DSR packets from balancer nodes are decapsulated for the local path.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{dsr::HOP_SECOND_CHANCE, select::Lookup, BackendInfo, NatReply, Reason, UplinkHop, FLOW_DSR, FLOW_NAT, PROTO_UDP, TCP_FIN, TCP_RST};

use crate::{
    dsr,
    flow::{self, Target},
    forward::{self, Route},
    frame::Frame,
    parse::{self, Parsed},
    refuse::{self, Refused},
    maps::{scratch, BACKENDS},
    rewrite::Nat,
    nat, select, service, stats,
};

/// Balances one frame and counts its outcome; returns the hook's action.
#[inline(always)]
pub fn run<F: Frame>(frame: &F, ingress: u32) -> u32 {
    let (reason, action) = match balance(frame, ingress) {
        Ok(forwarded) => forwarded,
        Err(reason) if reason.drops() => (reason, F::DROP),
        Err(reason) => (reason, F::PASS),
    };
    stats::count_verdict(reason);
    action
}

/// Returns (reason, action) of a forward, or the reason not to forward.
#[inline(always)]
fn balance<F: Frame>(frame: &F, ingress: u32) -> Result<(Reason, u32), Reason> {
    frame.prepare()?;
    let (start, end) = frame.window();
    let mut packet = parse::parse(start, end, frame.frame_len())?;
    if !service::service_port_used(&packet) || !service::service_addr_possible(&packet) {
        if packet.proto == PROTO_UDP && dsr::is_encapsulated(&packet) {
            return decapsulated(frame, ingress, &mut packet);
        }
        return not_for_a_service(frame, ingress, &packet);
    }
    // Established connections first: one flow lookup, no service lookup.
    let mut target = match flow::established(&packet) {
        flow::Established::Pinned(target) => target,
        flow::Established::New(slot) => {
            let service = match service::service(&packet, ingress) {
                Lookup::Service(service) => service,
                Lookup::NotExposed(_) => return Err(Reason::NotExposed),
                Lookup::SourceRefused(service) => {
                    stats::count_source_refusal(service.service_id);
                    return refuse::new_flow(frame, ingress, &packet, Refused::Source);
                }
                Lookup::None => return not_for_a_service(frame, ingress, &packet),
            };
            // Before any state is claimed (see Reason::ResetNoFlow).
            if packet.tcp_flags & TCP_RST != 0 {
                return Err(Reason::ResetNoFlow);
            }
            if service.active_backends == 0 {
                return refuse::new_flow(frame, ingress, &packet, Refused::NoBackend);
            }
            select::new_flow(frame.ctx_ptr(), ingress, &packet, &service, slot)?
        }
    };
    let len = frame.frame_len() as u64;
    let backend = target.backend;
    if target.flow.kind == FLOW_DSR {
        return forward_dsr(frame, ingress, &packet, target, len);
    }
    if target.flow.kind == FLOW_NAT {
        let hop = backend_route(frame, ingress, &packet, target.route.take(), target.backend_id, backend)?;
        flow::forwarded(&packet, &mut target);
        let flow = &*target.flow;
        if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 && !target.new_flow {
            nat::closing(&packet, backend, flow);
        }
        let src = flow.nat_source(packet.family);
        let to = Nat { src: &src, sport: flow.nat_port, dst: &backend.addr, dport: backend.port, hop: true };
        let action = route_out(frame, ingress, &packet, &to, hop)?;
        stats::count_traffic(target.service_id, target.backend_id, len, target.new_flow);
        return Ok((Reason::FwdNat, action));
    }
    flow::forwarded(&packet, &mut target);
    let to = Nat { src: &packet.src, sport: packet.sport, dst: &backend.addr, dport: backend.port, hop: false };
    frame.nat(&packet, &to)?;
    stats::count_traffic(target.service_id, target.backend_id, len, target.new_flow);
    Ok((Reason::FwdLocal, F::PASS))
}

/// A DSR flow's packet: encapsulated to its backend's node, or answered if it would not fit.
#[inline(always)]
fn forward_dsr<F: Frame>(frame: &F, ingress: u32, packet: &Parsed, mut target: Target, len: u64) -> Result<(Reason, u32), Reason> {
    let backend = target.backend;
    let hop = backend_route(frame, ingress, packet, target.route.take(), target.backend_id, backend)?;
    match dsr::encapsulate(frame, packet, backend, hop, 0)? {
        dsr::Encapsulated::Sent(action) => {
            flow::forwarded(packet, &mut target);
            stats::count_traffic(target.service_id, target.backend_id, len, target.new_flow);
            Ok((Reason::FwdDsr, action))
        }
        dsr::Encapsulated::TooBig(mtu) => refuse::too_big(frame, ingress, packet, mtu),
    }
}

/// The hop to a remote flow's backend: `found` by a new flow's pick, else looked up.
#[inline(always)]
fn backend_route<F: Frame>(
    frame: &F,
    ingress: u32,
    packet: &Parsed,
    found: Option<&'static UplinkHop>,
    backend_id: u32,
    backend: &BackendInfo,
) -> Result<&'static UplinkHop, Reason> {
    match found {
        Some(hop) => Ok(hop),
        None => uplink_route(packet, || {
            // SAFETY: a helper without arguments or preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            forward::to_backend(frame.ctx_ptr(), ingress, packet.proto, backend_id, backend, now)
        }),
    }
}

/// A DSR packet from a balancer node: out of its encapsulation, to the local backend it names
/// (crate::dsr), through the stack as a local flow's packets go.
#[inline(always)]
fn decapsulated<F: Frame>(frame: &F, ingress: u32, packet: &mut Parsed) -> Result<(Reason, u32), Reason> {
    let port = dsr::decapsulate(frame, packet)?;
    if port == 0 {
        return second_chance(frame, ingress, packet);
    }
    let backend = &scratch()?.decap_backend;
    let to = Nat { src: &packet.src, sport: packet.sport, dst: backend, dport: port, hop: false };
    frame.nat(packet, &to)?;
    Ok((Reason::Decapsulated, F::PASS))
}

/// A decapsulated packet the previous ring sends elsewhere (`Scratch::second_chance`):
/// encapsulated once more to that backend's node, marked so it goes no further; a backend at
/// one of this node's addresses gets it through the local path. A route lookup that finds no
/// uplink for another node's backend (forwarding disabled here) leaves it with the backend the
/// packet named, as without a second chance.
#[inline(always)]
fn second_chance<F: Frame>(frame: &F, ingress: u32, packet: &Parsed) -> Result<(Reason, u32), Reason> {
    let s = scratch()?;
    let id = s.second_chance;
    let backend = BACKENDS.get(id).ok_or(Reason::BadBackend)?;
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Route::Uplink(hop) = forward::to_backend(frame.ctx_ptr(), ingress, packet.proto, id, backend, now)? {
        return match dsr::encapsulate(frame, packet, backend, hop, HOP_SECOND_CHANCE)? {
            dsr::Encapsulated::Sent(action) => Ok((Reason::SecondChance, action)),
            dsr::Encapsulated::TooBig(mtu) => refuse::too_big(frame, ingress, packet, mtu),
        };
    }
    let (addr, port) = if service::is_node_addr(&backend.addr, backend.family) { (backend.addr, backend.port) } else { (s.decap_backend, s.decap_port) };
    flow::remember_service(packet, &addr, port, s)?;
    let to = Nat { src: &packet.src, sport: packet.sport, dst: &addr, dport: port, hop: false };
    frame.nat(packet, &to)?;
    Ok((Reason::Decapsulated, F::PASS))
}

/// A packet for no service: a full-NAT backend's reply, or not ours.
#[inline(always)]
fn not_for_a_service<F: Frame>(frame: &F, ingress: u32, packet: &Parsed) -> Result<(Reason, u32), Reason> {
    let reply = nat::reply_mapping(packet).ok_or(Reason::NotService)?;
    nat_reply(frame, ingress, packet, reply)
}

/// A full-NAT backend's reply: from the service, to the client, out towards the client.
#[inline(always)]
fn nat_reply<F: Frame>(frame: &F, ingress: u32, packet: &Parsed, reply: &NatReply) -> Result<(Reason, u32), Reason> {
    let hop = uplink_route(packet, || forward::lookup(frame.ctx_ptr(), ingress, packet.family, packet.proto, &reply.client_addr))?;
    let to = Nat { src: &reply.service_addr, sport: reply.service_port, dst: &reply.client_addr, dport: reply.client_port, hop: true };
    Ok((Reason::NatReply, route_out(frame, ingress, packet, &to, hop)?))
}

/// The route `route` finds, which must leave through an uplink (the NAT paths never hand off to
/// the stack: it would see this node's own address as a forwarded packet's source).
#[inline(always)]
fn uplink_route(packet: &Parsed, route: impl FnOnce() -> Result<Route, Reason>) -> Result<&'static UplinkHop, Reason> {
    if packet.ttl <= 1 {
        return Err(Reason::TtlExceeded);
    }
    match route()? {
        Route::Local => Err(Reason::FibFailure),
        Route::Uplink(hop) => Ok(hop),
    }
}

/// Rewrites the packet for `hop` and returns the action that sends it.
#[inline(always)]
fn route_out<F: Frame>(frame: &F, ingress: u32, packet: &Parsed, to: &Nat, hop: &UplinkHop) -> Result<u32, Reason> {
    frame.nat(packet, to)?;
    frame.set_macs(&hop.smac, &hop.dmac)?;
    Ok(frame.send(ingress, hop.ifindex))
}
