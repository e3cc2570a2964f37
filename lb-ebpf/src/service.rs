//! Stage 2, service lookup: whether a packet can be for a service at all (the port and address
//! filters), and the service it is addressed to (its address exactly, else a service port on one
//! of this node's addresses).

use lb_common::{select, service_addr_bit, service_port_bit, ServiceInfo, SERVICE_ADDRS_COMPLETE};

use crate::{
    maps::{NODE_ADDRS, SERVICES, SERVICE_ADDRS, SERVICE_PORTS},
    parse::Parsed,
};

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

/// lb_common::select::service over the services map and the node-address set.
#[inline(always)]
fn lookup_service(addr: &[u8; 16], port: u16, proto: u8, family: u8) -> Option<ServiceInfo> {
    select::service(
        addr,
        port,
        proto,
        family,
        // SAFETY: Map::get is unsafe because the element may be updated or reused while a
        // reference is held; the value is copied out in this closure, so no reference outlives it.
        |key| unsafe { SERVICES.get(key) }.copied(),
        // SAFETY: only whether the key exists is read; no reference into the element is kept.
        |node| unsafe { NODE_ADDRS.get(node) }.is_some(),
    )
}
