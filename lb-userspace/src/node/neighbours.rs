//! Neighbour resolution for full-NAT backends, without sending them traffic.
//!
//! A backend reached through an uplink is forwarded to with `bpf_fib_lookup`, which fails with
//! `fib_no_neigh` (the packet is dropped) while the next hop's link-layer address is unknown.
//! The agent therefore asks the kernel, over rtnetlink, which next hop a backend's traffic takes
//! (RTM_GETROUTE) and, when it leaves through an uplink, to resolve that neighbour as if it had
//! been used (RTM_NEWNEIGH with NTF_USE and state NUD_NONE): the kernel probes it with ARP or
//! neighbour discovery, creates no permanent entry and leaves an existing entry as it is.

use std::{collections::BTreeSet, io, net::IpAddr};

use netlink_packet_core::{
    DecodeError, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteVia},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use thiserror::Error;
use tracing::warn;

#[derive(Debug, Error)]
pub enum NeighbourError {
    /// The socket itself failed: every later request would fail too.
    #[error("rtnetlink socket")]
    Socket(#[source] io::Error),
    #[error("{request}: the kernel refused")]
    Refused { request: &'static str, source: io::Error },
    #[error("{request}: undecodable answer")]
    Undecodable { request: &'static str, source: DecodeError },
    #[error("the route to {0} names no output interface")]
    NoOutputInterface(IpAddr),
}

/// The kernel's answer to one request: the message it sent back, `None` for a bare
/// acknowledgement, or the error it reported.
type Answer = Result<Option<RouteNetlinkMessage>, NeighbourError>;

/// Where a backend's traffic leaves this node: the interface, and the neighbour on it that
/// must be resolved (the gateway, or the backend itself on a directly connected network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NextHop {
    ifindex: u32,
    neighbour: IpAddr,
}

/// Asks the kernel to resolve the next hops of full-NAT backends, once per backend address.
pub struct NeighbourResolver {
    socket: Socket,
    sequence: u32,
    /// Backends already handled (requested, or found not to leave through an uplink).
    requested: BTreeSet<IpAddr>,
    /// Backends whose route or request failed, and when: retried after `RETRY`, not on every
    /// call (a cluster of unroutable backends must not cost a netlink round trip per backend
    /// per change).
    failed: std::collections::BTreeMap<IpAddr, std::time::Instant>,
}

/// How long a backend whose next hop could not be requested waits before it is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(30);

impl NeighbourResolver {
    /// Opens an rtnetlink socket in the calling thread's network namespace, which is then the
    /// namespace whose routes and neighbours every request concerns.
    pub fn new() -> Result<Self, NeighbourError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NeighbourError::Socket)?;
        socket.bind_auto().map_err(NeighbourError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(NeighbourError::Socket)?;
        // rtnetlink handles a request inside sendmsg, so its answer is queued by the time send
        // returns; non-blocking turns a missing answer into an error instead of a hung agent.
        socket.set_non_blocking(true).map_err(NeighbourError::Socket)?;
        Ok(Self { socket, sequence: 0, requested: BTreeSet::new(), failed: Default::default() })
    }

    /// Requests resolution of the next hop of every backend in `backends` not handled before
    /// whose route leaves through one of `uplinks` (ifindexes); backends no longer listed are
    /// forgotten, so one that comes back is requested again. A backend whose request fails is
    /// logged (once) and retried after `RETRY`; only a failing socket stops the call.
    /// Returns the number of neighbour requests sent.
    pub fn request(&mut self, backends: &BTreeSet<IpAddr>, uplinks: &[u32]) -> Result<usize, NeighbourError> {
        self.requested.retain(|addr| backends.contains(addr));
        self.failed.retain(|addr, _| backends.contains(addr));
        let now = std::time::Instant::now();
        let due = |addr: &IpAddr, failed: &std::collections::BTreeMap<IpAddr, std::time::Instant>| {
            failed.get(addr).is_none_or(|at| now.duration_since(*at) >= RETRY)
        };
        let new: Vec<IpAddr> = backends.difference(&self.requested).filter(|a| due(a, &self.failed)).copied().collect();
        let mut sent = 0;
        for backend in new {
            match self.resolve(backend, uplinks) {
                Ok(requested) => {
                    sent += usize::from(requested);
                    self.requested.insert(backend);
                    self.failed.remove(&backend);
                }
                Err(err @ NeighbourError::Socket(_)) => return Err(err),
                Err(err) => {
                    if self.failed.insert(backend, now).is_none() {
                        warn!("resolving the next hop of backend {backend} (retried every {} s): {}", RETRY.as_secs(), crate::error_chain(&err));
                    }
                }
            }
        }
        Ok(sent)
    }

    /// Looks up `backend`'s route and, if it leaves through an uplink, requests its next hop.
    /// Returns whether a request was sent.
    fn resolve(&mut self, backend: IpAddr, uplinks: &[u32]) -> Result<bool, NeighbourError> {
        let next_hop = self.next_hop(backend)?;
        if !uplinks.contains(&next_hop.ifindex) {
            return Ok(false);
        }
        self.transact("RTM_NEWNEIGH", use_neighbour(next_hop), NLM_F_CREATE | NLM_F_ACK)?;
        Ok(true)
    }

    /// The interface the kernel's route to `addr` leaves by (a local address: loopback).
    pub fn route_interface(&mut self, addr: IpAddr) -> Result<u32, NeighbourError> {
        self.next_hop(addr).map(|hop| hop.ifindex)
    }

    fn next_hop(&mut self, backend: IpAddr) -> Result<NextHop, NeighbourError> {
        let answer = self.transact("RTM_GETROUTE", route_query(backend), 0)?;
        match answer {
            Some(RouteNetlinkMessage::NewRoute(route)) => {
                next_hop_of(backend, &route).ok_or(NeighbourError::NoOutputInterface(backend))
            }
            _ => Err(NeighbourError::NoOutputInterface(backend)),
        }
    }

    /// Sends one request and reads its answer. Answers to earlier requests (left unread after
    /// a failure) are skipped.
    fn transact(&mut self, request: &'static str, message: RouteNetlinkMessage, flags: u16) -> Answer {
        self.sequence = self.sequence.wrapping_add(1);
        let bytes = serialize(message, NLM_F_REQUEST | flags, self.sequence);
        self.socket.send(&bytes, 0).map_err(NeighbourError::Socket)?;
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let len = self.socket.recv(&mut &mut buffer[..], 0).map_err(NeighbourError::Socket)?;
            if let Some(answer) = answer_in(&buffer[..len], self.sequence, request) {
                return answer;
            }
        }
    }
}

/// RTM_GETROUTE for one address: the kernel answers with the route it would use to send there.
fn route_query(destination: IpAddr) -> RouteNetlinkMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = family(destination);
    route.header.destination_prefix_length = if destination.is_ipv4() { 32 } else { 128 };
    route.attributes.push(RouteAttribute::Destination(RouteAddress::from(destination)));
    RouteNetlinkMessage::GetRoute(route)
}

/// RTM_NEWNEIGH that makes the kernel resolve `next_hop` as if traffic used it. NUD_NONE with
/// NTF_USE triggers resolution only: no state or link-layer address is set, and without
/// NLM_F_REPLACE an existing entry is not overridden.
fn use_neighbour(next_hop: NextHop) -> RouteNetlinkMessage {
    let mut neighbour = NeighbourMessage::default();
    neighbour.header.family = family(next_hop.neighbour);
    neighbour.header.ifindex = next_hop.ifindex;
    neighbour.header.state = NeighbourState::None;
    neighbour.header.flags = NeighbourFlags::Use;
    neighbour.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::from(next_hop.neighbour)));
    RouteNetlinkMessage::NewNeighbour(neighbour)
}

/// The next hop in the kernel's answer to a route query for `destination`: its gateway (an
/// IPv4 route may have an IPv6 one, RTA_VIA), or `destination` itself on a connected network.
fn next_hop_of(destination: IpAddr, route: &RouteMessage) -> Option<NextHop> {
    let mut ifindex = None;
    let mut gateway = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => ifindex = Some(*index),
            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
            RouteAttribute::Via(RouteVia::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Via(RouteVia::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
            _ => {}
        }
    }
    Some(NextHop { ifindex: ifindex?, neighbour: gateway.unwrap_or(destination) })
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn serialize(message: RouteNetlinkMessage, flags: u16, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

/// The answer to request number `sequence` in one received datagram, if it holds one.
fn answer_in(mut datagram: &[u8], sequence: u32, request: &'static str) -> Option<Answer> {
    while !datagram.is_empty() {
        let message = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(datagram) {
            Ok(message) => message,
            Err(source) => return Some(Err(NeighbourError::Undecodable { request, source })),
        };
        let len = netlink_align(message.header.length as usize).max(4);
        datagram = datagram.get(len..).unwrap_or_default();
        if message.header.sequence_number != sequence {
            continue;
        }
        return Some(match message.payload {
            NetlinkPayload::InnerMessage(inner) => Ok(Some(inner)),
            NetlinkPayload::Error(error) if error.code.is_some() => {
                Err(NeighbourError::Refused { request, source: error.to_io() })
            }
            _ => Ok(None),
        });
    }
    None
}

/// Netlink messages in one datagram start on 4-byte boundaries.
fn netlink_align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use netlink_packet_core::{ErrorMessage, NLM_F_EXCL, NLM_F_REPLACE};

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn route(attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.attributes = attributes;
        route
    }

    fn answer(payload: NetlinkPayload<RouteNetlinkMessage>, sequence: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = sequence;
        let mut message = NetlinkMessage::new(header, payload);
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn error(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut error = ErrorMessage::default();
        error.code = NonZeroI32::new(code);
        NetlinkPayload::Error(error)
    }

    #[test]
    fn the_next_hop_is_the_gateway_or_the_destination_itself() {
        let connected = route(vec![RouteAttribute::Oif(3)]);
        assert_eq!(next_hop_of(ip("10.0.0.5"), &connected), Some(NextHop { ifindex: 3, neighbour: ip("10.0.0.5") }));
        let gateway = route(vec![RouteAttribute::Gateway(RouteAddress::from(ip("10.0.0.1"))), RouteAttribute::Oif(3)]);
        assert_eq!(next_hop_of(ip("10.9.0.5"), &gateway), Some(NextHop { ifindex: 3, neighbour: ip("10.0.0.1") }));
        let gateway6 = route(vec![RouteAttribute::Oif(4), RouteAttribute::Gateway(RouteAddress::from(ip("fe80::1")))]);
        assert_eq!(next_hop_of(ip("fd00:9::5"), &gateway6), Some(NextHop { ifindex: 4, neighbour: ip("fe80::1") }));
        let v6_via_for_v4 = route(vec![RouteAttribute::Via(RouteVia::Inet6("fe80::1".parse().unwrap())), RouteAttribute::Oif(4)]);
        assert_eq!(next_hop_of(ip("10.9.0.5"), &v6_via_for_v4), Some(NextHop { ifindex: 4, neighbour: ip("fe80::1") }));
        assert_eq!(next_hop_of(ip("10.9.0.5"), &route(vec![])), None);
    }

    #[test]
    fn the_route_query_asks_for_one_host_route() {
        for (destination, family, prefix) in [(ip("10.1.2.3"), AddressFamily::Inet, 32), (ip("fd00::3"), AddressFamily::Inet6, 128)] {
            let RouteNetlinkMessage::GetRoute(query) = route_query(destination) else { panic!("not RTM_GETROUTE") };
            assert_eq!((query.header.address_family, query.header.destination_prefix_length), (family, prefix));
            assert_eq!(query.attributes, vec![RouteAttribute::Destination(RouteAddress::from(destination))]);
        }
    }

    #[test]
    fn the_neighbour_request_only_triggers_resolution() {
        let next_hop = NextHop { ifindex: 7, neighbour: ip("fd00::1") };
        let bytes = serialize(use_neighbour(next_hop), NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK, 9);
        let sent = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(sent.header.flags & (NLM_F_REPLACE | NLM_F_EXCL), 0, "must not override an existing entry");
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(neighbour)) = sent.payload else {
            panic!("not RTM_NEWNEIGH: {:?}", sent.payload)
        };
        assert_eq!(neighbour.header.family, AddressFamily::Inet6);
        assert_eq!(neighbour.header.ifindex, 7);
        assert_eq!(neighbour.header.state, NeighbourState::None);
        assert_eq!(neighbour.header.flags, NeighbourFlags::Use);
        assert_eq!(neighbour.attributes, vec![NeighbourAttribute::Destination(NeighbourAddress::from(ip("fd00::1")))]);
    }

    #[test]
    fn answers_are_matched_by_sequence_number() {
        let stale_then_ack = [answer(error(-libc::ENETUNREACH), 4), answer(error(0), 5)].concat();
        assert!(matches!(answer_in(&stale_then_ack, 5, "test"), Some(Ok(None))));
        let refused = answer_in(&stale_then_ack, 4, "test");
        assert!(matches!(refused, Some(Err(NeighbourError::Refused { .. }))), "{refused:?}");
        assert!(answer_in(&stale_then_ack, 6, "test").is_none());
        let routed = answer(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route(vec![RouteAttribute::Oif(2)]))), 8);
        assert!(matches!(answer_in(&routed, 8, "test"), Some(Ok(Some(RouteNetlinkMessage::NewRoute(_))))));
    }

    /// Needs no privilege: route lookups are open to every user; no neighbour is requested.
    #[test]
    fn a_backend_not_behind_an_uplink_is_handled_once_and_forgotten_when_removed() {
        let mut resolver = NeighbourResolver::new().unwrap();
        let local = BTreeSet::from([ip("127.0.0.1")]);
        assert_eq!(resolver.request(&local, &[]).unwrap(), 0);
        assert_eq!(resolver.requested, local);
        assert_eq!(resolver.request(&BTreeSet::new(), &[]).unwrap(), 0);
        assert!(resolver.requested.is_empty());
    }
}
