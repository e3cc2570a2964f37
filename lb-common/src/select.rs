//! The pure part of finding a packet's service and a new flow's backend, decided once, here,
//! for the programs (lb-ebpf service.rs, ring.rs) and `lb explain`, so the two cannot drift.
//! Map reads stay the caller's (closures), as in [`crate::liveness`].

use crate::{hash, BackendInfo, NodeAddrKey, ServiceKey, BACKEND_ACTIVE};

/// The service at (`addr`, `port`, `proto`) in `family`: the address's own entry (a VIP), else
/// the service port's entry (address zero) when `addr` is one of this node's addresses.
/// `service` reads the services map, `is_node_addr` the node-address set.
#[inline(always)]
pub fn service<I>(
    addr: &[u8; 16],
    port: u16,
    proto: u8,
    family: u8,
    mut service: impl FnMut(&ServiceKey) -> Option<I>,
    is_node_addr: impl FnOnce(&NodeAddrKey) -> bool,
) -> Option<I> {
    let mut key = ServiceKey { addr: *addr, port, proto, family };
    if let Some(info) = service(&key) {
        return Some(info);
    }
    zero(&mut key.addr);
    let info = service(&key)?;
    is_node_addr(&NodeAddrKey { addr: *addr, family, _pad: 0, _pad2: 0 }).then_some(info)
}

/// Zeroes an address field with two stores (an array literal may become a byte loop in BPF).
#[inline(always)]
fn zero(addr: &mut [u8; 16]) {
    *addr = u128::to_ne_bytes(0);
}

/// The slot of a ring of `ring_size` entries a new flow from `src`:`sport` (`proto`) takes: by
/// the client only, so a client's flows to a VIP and to the same service port via a node address
/// land on the same backend (see `hash::flow_hash`).
#[inline(always)]
pub fn ring_slot(src: &[u8; 16], sport: u16, proto: u8, ring_size: u32) -> u32 {
    hash::ring_slot(hash::flow_hash(src, sport, proto), ring_size)
}

/// Whether the backend `backend_id` names, found in a ring slot, may take a new flow of
/// `family`: a real entry (id 0 is the ring's filler), active (not draining or removed), of the
/// packet's family.
#[inline(always)]
pub fn takes_new_flows(backend_id: u32, backend: &BackendInfo, family: u8) -> bool {
    backend_id != 0 && backend.state == BACKEND_ACTIVE && backend.family == family
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{v4_bytes, BACKEND_DRAINING, FAMILY_V4, FAMILY_V6, PROTO_TCP};

    const VIP: [u8; 4] = [10, 0, 0, 1];
    const NODE: [u8; 4] = [10, 201, 0, 2];

    /// A VIP service on 10.0.0.1:80 ("vip") and a service port 80 ("port").
    fn lookup(key: &ServiceKey) -> Option<&'static str> {
        match (key.addr, key.port, key.proto) {
            (a, 80, PROTO_TCP) if a == v4_bytes(VIP) => Some("vip"),
            (a, 80, PROTO_TCP) if a == [0; 16] => Some("port"),
            _ => None,
        }
    }

    fn on_node(key: &NodeAddrKey) -> bool {
        key.addr == v4_bytes(NODE)
    }

    #[test]
    fn a_vip_wins_and_a_service_port_counts_only_on_a_node_address() {
        let at = |addr: [u8; 4], port| service(&v4_bytes(addr), port, PROTO_TCP, FAMILY_V4, lookup, on_node);
        assert_eq!(at(VIP, 80), Some("vip"));
        assert_eq!(at(NODE, 80), Some("port"));
        assert_eq!(at([10, 201, 0, 3], 80), None, "not an address of this node");
        assert_eq!(at(NODE, 81), None);
    }

    #[test]
    fn the_node_address_set_is_asked_only_for_a_service_port() {
        let asked = core::cell::Cell::new(false);
        let found = service(&v4_bytes(VIP), 80, PROTO_TCP, FAMILY_V4, lookup, |_| {
            asked.set(true);
            false
        });
        assert_eq!((found, asked.get()), (Some("vip"), false));
    }

    #[test]
    fn only_active_backends_of_the_packets_family_take_new_flows() {
        let active = BackendInfo { state: BACKEND_ACTIVE, family: FAMILY_V4, ..BackendInfo::default() };
        assert!(takes_new_flows(3, &active, FAMILY_V4));
        assert!(!takes_new_flows(0, &active, FAMILY_V4), "the filler");
        assert!(!takes_new_flows(3, &active, FAMILY_V6));
        assert!(!takes_new_flows(3, &BackendInfo { state: BACKEND_DRAINING, ..active }, FAMILY_V4));
    }

    #[test]
    fn a_clients_slot_depends_on_its_address_and_port_only() {
        let a = v4_bytes([192, 0, 2, 1]);
        assert_eq!(ring_slot(&a, 40000, PROTO_TCP, 359), hash::ring_slot(hash::flow_hash(&a, 40000, PROTO_TCP), 359));
        assert!(ring_slot(&a, 40000, PROTO_TCP, 359) < 359);
        assert_eq!(ring_slot(&a, 40000, PROTO_TCP, 0), 0, "an empty ring");
    }
}
