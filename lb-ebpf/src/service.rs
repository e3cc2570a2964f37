//! Stage 2, service lookup: whether a packet can be for a service at all (the port and address
//! filters), and the service it is addressed to (its address exactly, else a service port on one
//! of this node's addresses) if it is exposed where the packet came from and the client is in
//! its source ranges.

use lb_common::{
    select::{self, Lookup, Origin, ServiceMaps},
    service_addr_bit, service_port_bit, NodeAddrKey, ServiceInfo, ServiceKey, SERVICE_ADDRS_COMPLETE,
};

use crate::{
    maps::{self, NODE_ADDRS, SERVICES, SERVICE_ADDRS, SERVICE_GROUPS, SERVICE_PORTS, SERVICE_SOURCES, UPLINKS},
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

/// The service a packet arriving on uplink `ingress` is addressed to: (dst, port, proto)
/// exactly, else a service port when the destination is one of this node's addresses; and
/// whether it is exposed there. The caller has checked `service_port_used`.
#[inline(always)]
pub fn service(p: &Parsed, ingress: u32) -> Lookup {
    select::service(&Maps, &p.dst, p.dport, p.proto, p.family, Origin::Uplink(ingress), &p.src)
}

/// The service a local socket bound to `client` (zero if unbound) reaches at (addr, port,
/// proto) in `family` (local clients reach every group).
#[inline(always)]
pub fn service_at(addr: &[u8; 16], port: u16, proto: u8, family: u8, client: &[u8; 16]) -> Lookup {
    if !port_used(port, proto) {
        return Lookup::None;
    }
    select::service(&Maps, addr, port, proto, family, Origin::Local, client)
}

/// Whether `addr` is one of this node's addresses (`NODE_ADDRS`).
#[inline(always)]
pub fn is_node_addr(addr: &[u8; 16], family: u8) -> bool {
    // SAFETY: only whether the key exists is read.
    unsafe { NODE_ADDRS.get(&NodeAddrKey { addr: *addr, family, _pad: 0, _pad2: 0 }) }.is_some()
}

/// lb_common::select's view of the programs' maps.
struct Maps;

impl ServiceMaps for Maps {
    #[inline(always)]
    fn service(&self, key: &ServiceKey) -> Option<ServiceInfo> {
        // SAFETY: Map::get is unsafe because the element may be updated or reused while a
        // reference is held; the value is copied out here, so no reference outlives it.
        unsafe { SERVICES.get(key) }.copied()
    }

    #[inline(always)]
    fn node_addr(&self, key: &NodeAddrKey) -> Option<u32> {
        // SAFETY: as above.
        unsafe { NODE_ADDRS.get(key) }.copied()
    }

    #[inline(always)]
    fn service_groups(&self, service_id: u32) -> u32 {
        // Out of range (no such service) is no group word: every group, as for an entry an
        // earlier agent made.
        SERVICE_GROUPS.get(service_id).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn uplink_groups(&self, ifindex: u32) -> u32 {
        // SAFETY: as above.
        unsafe { UPLINKS.get(ifindex) }.copied().unwrap_or(0)
    }

    #[inline(always)]
    fn source_ranges(&self, service_id: u32) -> u32 {
        SERVICE_SOURCES.get(service_id).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn in_source_ranges(&self, service_id: u32, family: u8, client: &[u8; 16]) -> bool {
        maps::in_source_ranges(service_id, family, client)
    }
}
