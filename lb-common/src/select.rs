//! The pure part of finding a packet's service and a new flow's backend, decided once, here,
//! for the programs (lb-ebpf service.rs, ring.rs, sockhooks.rs) and `lb explain`, so they
//! cannot drift. Map reads stay the caller's, through [`ServiceMaps`].

use crate::{
    exposure, hash, sources, BackendInfo, NodeAddrKey, ServiceInfo, ServiceKey, BACKEND_ACTIVE,
};

/// The maps a service lookup reads (the programs' maps, or `lb explain`'s copy of them).
pub trait ServiceMaps {
    fn service(&self, key: &ServiceKey) -> Option<ServiceInfo>;
    /// The group word (lb_common::exposure) of a node address; None if it is not one.
    fn node_addr(&self, key: &NodeAddrKey) -> Option<u32>;
    /// The group word of the service `service_id`.
    fn service_groups(&self, service_id: u32) -> u32;
    /// The group word of the uplink `ifindex`.
    fn uplink_groups(&self, ifindex: u32) -> u32;
    /// How many source ranges the service `service_id` has (`SERVICE_SOURCES`); 0: none, every
    /// client is allowed.
    fn source_ranges(&self, service_id: u32) -> u32;
    /// Whether `client` (of `family`) is in one of the service's ranges (`SOURCE_RANGES`).
    fn in_source_ranges(&self, service_id: u32, family: u8, client: &[u8; 16]) -> bool;
}

/// Where a packet for a service comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A socket on this node.
    Local,
    /// The network, through the uplink `ifindex`.
    Uplink(u32),
}

/// What a service lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The service, served where the packet came from.
    Service(ServiceInfo),
    /// The service, not exposed where the packet came from (exposure::exposed).
    NotExposed(ServiceInfo),
    /// The service, exposed there, but the client is outside its source ranges.
    SourceRefused(ServiceInfo),
    /// No service at that address and port.
    None,
}

/// The service at (`addr`, `port`, `proto`) in `family` for a packet from `client` arriving
/// `from`: the address's own entry (a VIP), else the service port's entry (address zero) when
/// `addr` is one of this node's addresses; then whether its groups are exposed there, then
/// whether the client is in its source ranges. Only what is found is read further (a VIP never
/// reads the node-address set). A local client's `client` is the address it bound (zero if none:
/// see sources::local_client).
#[inline(always)]
pub fn service(maps: &impl ServiceMaps, addr: &[u8; 16], port: u16, proto: u8, family: u8, from: Origin, client: &[u8; 16]) -> Lookup {
    let mut key = ServiceKey { addr: *addr, port, proto, family };
    let (info, node_addr) = match maps.service(&key) {
        Some(info) => (info, None),
        None => {
            zero(&mut key.addr);
            let Some(info) = maps.service(&key) else { return Lookup::None };
            let Some(word) = maps.node_addr(&NodeAddrKey { addr: *addr, family, _pad: 0, _pad2: 0 }) else { return Lookup::None };
            (info, Some(word))
        }
    };
    let client = match from {
        // Local clients reach every group: no group word is read for them.
        Origin::Local => sources::local_client(client, addr, node_addr.is_some(), family),
        Origin::Uplink(ifindex) => {
            if !exposure::exposed(maps.service_groups(info.service_id), node_addr, maps.uplink_groups(ifindex)) {
                return Lookup::NotExposed(info);
            }
            *client
        }
    };
    if maps.source_ranges(info.service_id) != 0 && !maps.in_source_ranges(info.service_id, family, &client) {
        return Lookup::SourceRefused(info);
    }
    Lookup::Service(info)
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
    const INTERNAL: u32 = exposure::WRITTEN | 1;

    /// A VIP service on 10.0.0.1:80 (id 1) and a service port 80 (id 2), both internal; the
    /// node's address NODE is internal, uplink 7 external, uplink 8 internal.
    struct Maps(core::cell::Cell<bool>);

    impl ServiceMaps for Maps {
        fn service(&self, key: &ServiceKey) -> Option<ServiceInfo> {
            let info = |service_id| Some(ServiceInfo { service_id, ..ServiceInfo::default() });
            match (key.addr, key.port, key.proto) {
                (a, 80, PROTO_TCP) if a == v4_bytes(VIP) => info(1),
                (a, 80, PROTO_TCP) if a == [0; 16] => info(2),
                _ => None,
            }
        }
        fn node_addr(&self, key: &NodeAddrKey) -> Option<u32> {
            self.0.set(true);
            (key.addr == v4_bytes(NODE)).then_some(INTERNAL)
        }
        fn service_groups(&self, _: u32) -> u32 {
            INTERNAL
        }
        fn uplink_groups(&self, ifindex: u32) -> u32 {
            if ifindex == 8 { INTERNAL } else { exposure::WRITTEN | 2 }
        }
        /// Service 2 (the service port) allows 10.0.0.0/8 only.
        fn source_ranges(&self, service_id: u32) -> u32 {
            (service_id == 2) as u32
        }
        fn in_source_ranges(&self, _: u32, family: u8, client: &[u8; 16]) -> bool {
            family == FAMILY_V4 && client[0] == 10
        }
    }

    const CLIENT: [u8; 4] = [10, 9, 0, 1];

    fn at(addr: [u8; 4], port: u16, from: Origin) -> Lookup {
        from_client(CLIENT, addr, port, from)
    }

    fn from_client(client: [u8; 4], addr: [u8; 4], port: u16, from: Origin) -> Lookup {
        service(&Maps(Default::default()), &v4_bytes(addr), port, PROTO_TCP, FAMILY_V4, from, &v4_bytes(client))
    }

    fn id(found: Lookup) -> Option<u32> {
        match found {
            Lookup::Service(info) => Some(info.service_id),
            _ => None,
        }
    }

    #[test]
    fn a_vip_wins_and_a_service_port_counts_only_on_a_node_address() {
        assert_eq!(id(at(VIP, 80, Origin::Uplink(8))), Some(1));
        assert_eq!(id(at(NODE, 80, Origin::Uplink(8))), Some(2));
        assert_eq!(at([10, 201, 0, 3], 80, Origin::Uplink(8)), Lookup::None, "not an address of this node");
        assert_eq!(at(NODE, 81, Origin::Uplink(8)), Lookup::None);
    }

    #[test]
    fn a_service_outside_the_uplinks_groups_is_found_but_not_exposed_except_to_local_clients() {
        // Local clients reach every group, even one no --expose entry serves.
        assert!(matches!(at(VIP, 80, Origin::Uplink(7)), Lookup::NotExposed(info) if info.service_id == 1));
        assert!(matches!(at(NODE, 80, Origin::Uplink(7)), Lookup::NotExposed(info) if info.service_id == 2));
        assert_eq!(id(at(NODE, 80, Origin::Local)), Some(2));
        assert_eq!(id(at(VIP, 80, Origin::Local)), Some(1));
    }

    #[test]
    fn the_node_address_set_is_asked_only_for_a_service_port() {
        let maps = Maps(Default::default());
        let found = service(&maps, &v4_bytes(VIP), 80, PROTO_TCP, FAMILY_V4, Origin::Uplink(8), &v4_bytes(CLIENT));
        assert_eq!((id(found), maps.0.get()), (Some(1), false));
    }

    #[test]
    fn a_client_outside_the_source_ranges_is_refused_after_exposure_is_checked() {
        let outside = [192, 0, 2, 1];
        assert!(matches!(from_client(outside, NODE, 80, Origin::Uplink(8)), Lookup::SourceRefused(info) if info.service_id == 2));
        assert!(matches!(from_client(outside, NODE, 80, Origin::Uplink(7)), Lookup::NotExposed(_)), "exposure first");
        assert_eq!(id(from_client(outside, VIP, 80, Origin::Uplink(8))), Some(1), "the VIP has no ranges");
        // A local client is its bound address, else the node address it connects to.
        assert!(matches!(from_client(outside, NODE, 80, Origin::Local), Lookup::SourceRefused(_)));
        assert_eq!(id(from_client([0; 4], NODE, 80, Origin::Local)), Some(2), "unbound: checked as 10.201.0.2");
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
