//! Uplink ingress, for either hook (crate::frame): parse → flow or service → backend → rewrite
//! → send.
//! Local backends get destination NAT and go to the stack; backends on other nodes get full NAT
//! and leave at once; replies of full-NAT flows go back to their clients.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{select::Lookup, NatReply, Reason, FLOW_NAT, TCP_FIN, TCP_RST};

use crate::{
    forward::{self, Route},
    frame::Frame,
    parse::{self, Parsed},
    refuse::{self, Refused},
    rewrite::Nat,
    flow, nat, select, service, stats,
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
    let packet = parse::parse(start, end, frame.frame_len())?;
    if !service::service_port_used(&packet) || !service::service_addr_possible(&packet) {
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
    if target.flow.kind == FLOW_NAT {
        let route = match target.route.take() {
            Some(route) => route,
            None => uplink_route(&packet, || {
                // SAFETY: a helper without arguments or preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                forward::to_backend(frame.ctx_ptr(), ingress, packet.proto, target.backend_id, backend, now)
            })?,
        };
        flow::forwarded(&packet, &mut target);
        let flow = &*target.flow;
        if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 && !target.new_flow {
            nat::closing(&packet, backend, flow);
        }
        let src = flow.nat_source(packet.family);
        let to = Nat { src: &src, sport: flow.nat_port, dst: &backend.addr, dport: backend.port, hop: true };
        let action = route_out(frame, ingress, &packet, &to, &route)?;
        stats::count_traffic(target.service_id, target.backend_id, len, target.new_flow);
        return Ok((Reason::FwdNat, action));
    }
    flow::forwarded(&packet, &mut target);
    let to = Nat { src: &packet.src, sport: packet.sport, dst: &backend.addr, dport: backend.port, hop: false };
    frame.nat(&packet, &to)?;
    stats::count_traffic(target.service_id, target.backend_id, len, target.new_flow);
    Ok((Reason::FwdLocal, F::PASS))
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
    let route = uplink_route(packet, || forward::lookup(frame.ctx_ptr(), ingress, packet.family, packet.proto, &reply.client_addr))?;
    let to = Nat { src: &reply.service_addr, sport: reply.service_port, dst: &reply.client_addr, dport: reply.client_port, hop: true };
    Ok((Reason::NatReply, route_out(frame, ingress, packet, &to, &route)?))
}

/// The route `route` finds, which must leave through an uplink (the NAT paths never hand off to
/// the stack: it would see this node's own address as a forwarded packet's source).
#[inline(always)]
fn uplink_route(packet: &Parsed, route: impl FnOnce() -> Result<Route, Reason>) -> Result<Route, Reason> {
    if packet.ttl <= 1 {
        return Err(Reason::TtlExceeded);
    }
    match route()? {
        Route::Local => Err(Reason::FibFailure),
        route => Ok(route),
    }
}

/// Rewrites the packet for `route` and returns the action that sends it.
#[inline(always)]
fn route_out<F: Frame>(frame: &F, ingress: u32, packet: &Parsed, to: &Nat, route: &Route) -> Result<u32, Reason> {
    let Route::Uplink(hop) = route else { return Err(Reason::FibFailure) };
    frame.nat(packet, to)?;
    frame.set_macs(&hop.smac, &hop.dmac)?;
    Ok(frame.send(ingress, hop.ifindex))
}
