//! `lb explain PROTO CLIENT SERVICE`: which backend a connection gets, decided by the code the
//! programs decide it with (lb_common::liveness for a pinned flow, lb_common::select for the
//! service and the ring's pick; the entry looked up as lb-ebpf/src/flow.rs does), from the
//! pinned maps: an established flow's
//! pinned backend first; otherwise the service (the address's own, else the service port when
//! the address is one of the node's), and the backend in its ring's slot for the client's hash.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
};

use anyhow::{bail, Result};
use lb_common::{
    dsr::Reach,
    liveness::{self, UdpClock},
    select::{self, Lookup, Origin, ServiceMaps},
    BackendInfo, FlowKey, NodeAddrKey, ServiceInfo, ServiceKey,
};
use serde::Serialize;

use crate::{
    control::source_ranges,
    dataplane::Dataplane,
    desired::{admits, bytes_ip, ip_bytes, Proto, Sources},
    inspect::{
        reach::{self, Reacher},
        report::uplink_name,
    },
    status::AgentStatus,
};

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    pub protocol: Proto,
    pub client: SocketAddr,
    pub service: SocketAddr,
    /// The programmed service the packet matches, if any.
    pub service_name: Option<String>,
    /// `existing`: the flow table pins this connection; `new`: a first packet would be balanced
    /// now; `none`: no service (the packet is passed untouched) or no active backend (refused).
    pub flow: &'static str,
    /// Where the connection goes (the pinned backend of an existing flow).
    pub backend: Option<BackendAddr>,
    /// How this node reaches `backend` (lb_common::dsr::Reach: `local`, `full-nat`, `dsr`, or
    /// `unknown` without a route): an existing flow's entry says; for a new one the caller asks
    /// the routes ([`with_reach`]).
    pub reach: Option<&'static str>,
    /// Where a new connection with this tuple would go: Maglev's pick.
    pub new_flow_backend: Option<BackendAddr>,
    /// The slot of the service's ring Maglev's pick is in, and the ring's size.
    pub ring_slot: Option<u32>,
    pub ring_size: Option<u32>,
    /// Why there is no backend, when there is none.
    pub reason: Option<String>,
    /// The uplinks a new connection to the service is balanced on, and those it is not
    /// exposed on (`lb run --expose`).
    pub exposed_on: Vec<String>,
    pub not_exposed_on: Vec<String>,
    /// The service's source ranges (empty: every client).
    pub source_ranges: Vec<String>,
}

impl Explanation {
    fn new(protocol: Proto, client: SocketAddr, service: SocketAddr) -> Self {
        Self {
            protocol,
            client,
            service,
            service_name: None,
            flow: "none",
            backend: None,
            reach: None,
            new_flow_backend: None,
            ring_slot: None,
            ring_size: None,
            reason: None,
            exposed_on: Vec::new(),
            not_exposed_on: Vec::new(),
            source_ranges: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
pub struct BackendAddr {
    pub address: IpAddr,
    pub port: u16,
}

fn addr_of(b: &BackendInfo) -> Option<BackendAddr> {
    Some(BackendAddr { address: bytes_ip(&b.addr, b.family)?, port: b.port })
}

/// `udp_clock`: the programs' clock now and the pinned UDP timeout (see [`udp_clock`]), which decide
/// whether a UDP flow has idled out, as they do in the programs. `via`: the uplink (ifindex)
/// the packet arrives on; None: any uplink (the answer says where the service is exposed).
/// `status`: the running agent's, for the names of its uplinks.
pub fn explain(
    dp: &dyn Dataplane,
    protocol: Proto,
    client: SocketAddr,
    service: SocketAddr,
    udp_clock: Option<UdpClock>,
    via: Option<u32>,
    status: Option<&AgentStatus>,
) -> Result<Explanation> {
    if client.is_ipv4() != service.is_ipv4() {
        bail!("{client} and {service} are of different address families");
    }
    let (src, family) = ip_bytes(client.ip());
    let proto = protocol.number();
    let backends = dp.backends()?;
    let mut out = Explanation::new(protocol, client, service);
    let flow_key = FlowKey { src, dst: ip_bytes(service.ip()).0, sport: client.port(), dport: service.port(), proto, family, _pad: 0 };
    let pinned = dp
        .flow(&flow_key)?
        .and_then(|flow| backends.get(flow.backend_id as usize).filter(|b| liveness::flow_alive(&flow, b, proto, || udp_clock)).map(|b| (b, flow.kind)));
    if let Some((backend, kind)) = pinned {
        out.flow = "existing";
        out.backend = addr_of(backend);
        out.reach = Some(Reach::of_flow(kind).name());
    }
    let Some(info) = exposed_service(dp, &mut out, via, status)? else {
        return Ok(out);
    };
    out.service_name = Some(dp.service_name(info.service_id)?);
    if info.active_backends == 0 || info.ring_size == 0 {
        if pinned.is_none() {
            out.reason = Some("no active backend: a new connection is refused".into());
        }
        return Ok(out);
    }
    let (slot, picked) = ring_pick(dp, &backends, &info, &src, client.port(), proto, family)?;
    out.new_flow_backend = picked.and_then(addr_of);
    out.ring_slot = Some(slot);
    out.ring_size = Some(info.ring_size);
    if pinned.is_none() {
        out.flow = "new";
        out.backend = out.new_flow_backend;
    }
    Ok(out)
}

/// `e` with how a new flow's backend is reached, as `reacher` finds it (an existing flow's is
/// in its entry already).
pub fn with_reach(mut e: Explanation, reacher: &mut Reacher) -> Explanation {
    if let (None, Some(b)) = (e.reach, &e.backend) {
        e.reach = Some(reach::name(reacher.reach(b.address)));
    }
    e
}

/// The service `out` asks about, if it is served where the packet comes from (`via`, else any
/// uplink) to its client; otherwise None with the reason in `out`. Fills in the uplinks it is
/// (not) exposed on and its source ranges.
fn exposed_service(dp: &dyn Dataplane, out: &mut Explanation, via: Option<u32>, status: Option<&AgentStatus>) -> Result<Option<ServiceInfo>> {
    let (dst, family) = ip_bytes(out.service.ip());
    let (src, _) = ip_bytes(out.client.ip());
    let (port, proto) = (out.service.port(), out.protocol.number());
    let mut maps = Maps { services: dp.services()?, node_addrs: dp.node_addrs()?, uplinks: dp.uplinks()?, service_groups: 0, sources: Sources::new() };
    let lookup = |maps: &Maps, from| select::service(maps, &dst, port, proto, family, from, &src);
    let (Lookup::Service(info) | Lookup::SourceRefused(info)) = lookup(&maps, Origin::Local) else {
        out.reason.get_or_insert_with(|| "not a service: passed to the stack untouched".into());
        return Ok(None);
    };
    maps.service_groups = dp.service_groups(info.service_id)?;
    maps.sources = source_ranges::in_maps(dp)?.remove(&info.service_id).unwrap_or_default();
    out.source_ranges = maps.sources.iter().map(ToString::to_string).collect();
    for &(ifindex, _) in &maps.uplinks {
        let name = uplink_name(status, ifindex);
        match lookup(&maps, Origin::Uplink(ifindex)) {
            Lookup::NotExposed(_) => out.not_exposed_on.push(name),
            _ => out.exposed_on.push(name),
        }
    }
    let here = match via {
        Some(ifindex) => lookup(&maps, Origin::Uplink(ifindex)),
        None if !maps.uplinks.is_empty() && out.exposed_on.is_empty() => Lookup::NotExposed(info),
        None => lookup(&maps, Origin::Local),
    };
    if out.flow == "existing" {
        return Ok(Some(info));
    }
    let arrival = via.map_or("any uplink".to_owned(), |i| uplink_name(status, i));
    out.reason = match here {
        Lookup::NotExposed(_) => Some(format!("not exposed on {arrival} (--expose): passed to the stack untouched (not_exposed); local clients reach it")),
        Lookup::SourceRefused(_) => Some(format!(
            "{} is outside the service's source ranges ({}): a new connection is refused (source_refused)",
            out.client.ip(),
            out.source_ranges.join(" ")
        )),
        _ => return Ok(Some(info)),
    };
    out.service_name = Some(dp.service_name(info.service_id)?);
    Ok(None)
}

/// lb_common::select's view of the pinned maps, with the group word of the one service asked
/// about.
struct Maps {
    services: Vec<(ServiceKey, ServiceInfo)>,
    node_addrs: Vec<(NodeAddrKey, u32)>,
    uplinks: Vec<(u32, u32)>,
    service_groups: u32,
    sources: Sources,
}

impl ServiceMaps for Maps {
    fn service(&self, key: &ServiceKey) -> Option<ServiceInfo> {
        self.services.iter().find(|(k, _)| k == key).map(|(_, i)| *i)
    }

    fn node_addr(&self, key: &NodeAddrKey) -> Option<u32> {
        self.node_addrs.iter().find(|(k, _)| k == key).map(|(_, w)| *w)
    }

    fn service_groups(&self, _: u32) -> u32 {
        self.service_groups
    }

    fn uplink_groups(&self, ifindex: u32) -> u32 {
        self.uplinks.iter().find(|(i, _)| *i == ifindex).map_or(0, |(_, w)| *w)
    }

    fn source_ranges(&self, _: u32) -> u32 {
        self.sources.len() as u32
    }

    fn in_source_ranges(&self, _: u32, family: u8, client: &[u8; 16]) -> bool {
        bytes_ip(client, family).is_some_and(|ip| admits(&self.sources, ip))
    }
}

/// The slot of `info`'s ring a new flow from `src`:`sport` takes, and its backend if that one
/// takes new flows.
fn ring_pick<'b>(
    dp: &dyn Dataplane,
    backends: &'b [BackendInfo],
    info: &ServiceInfo,
    src: &[u8; 16],
    sport: u16,
    proto: u8,
    family: u8,
) -> Result<(u32, Option<&'b BackendInfo>)> {
    let slot = select::ring_slot(src, sport, proto, info.ring_size);
    let ring = dp.read_ring(info.ring_start, info.ring_size)?;
    let id = ring[slot as usize];
    Ok((slot, backends.get(id as usize).filter(|b| select::takes_new_flows(id, b, family))))
}

/// The programs' clock now and the UDP timeout pinned under `pin_dir` (None: no settings
/// pinned, so no UDP flow holds, as in the programs).
pub fn udp_clock(pin_dir: &std::path::Path) -> Option<UdpClock> {
    let settings = crate::dataplane::loader::read_settings(pin_dir)?;
    Some(UdpClock { now_ns: crate::dataplane::monotonic_ns(), timeout_ns: settings.udp_timeout_ns })
}

pub fn print(e: &Explanation, json: bool, out: &mut impl Write) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, e)?;
        writeln!(out)?;
        return Ok(());
    }
    let show = |b: &BackendAddr| SocketAddr::new(b.address, b.port).to_string();
    let name = e.service_name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
    write!(out, "{} {} → {}{name}: ", e.protocol.as_str(), e.client, e.service)?;
    match (e.flow, &e.backend, &e.new_flow_backend) {
        ("existing", Some(b), Some(new)) if b != new => {
            writeln!(out, "existing flow pinned to {} (a new flow would get {})", show(b), show(new))?
        }
        ("existing", Some(b), _) => writeln!(out, "existing flow pinned to {}", show(b))?,
        ("new", Some(b), _) => writeln!(
            out,
            "new flow → {} (Maglev slot {} of {})",
            show(b),
            e.ring_slot.unwrap_or_default(),
            e.ring_size.unwrap_or_default()
        )?,
        _ => writeln!(out, "{}", e.reason.as_deref().unwrap_or("no backend"))?,
    }
    if let Some(reach) = e.reach {
        writeln!(out, "  reached by {reach}: {}", reach_text(reach))?;
    }
    if !e.source_ranges.is_empty() {
        writeln!(out, "  source ranges: {}", e.source_ranges.join(" "))?;
    }
    if !e.not_exposed_on.is_empty() {
        let on = if e.exposed_on.is_empty() { "no uplink".to_owned() } else { e.exposed_on.join(", ") };
        writeln!(out, "  exposed on {on}; not on {}", e.not_exposed_on.join(", "))?;
    }
    Ok(())
}

/// What each way of reaching a backend means for the connection.
fn reach_text(reach: &str) -> &'static str {
    match reach {
        "local" => "destination rewritten, delivered through this node's stack",
        "full-nat" => "source and destination rewritten, out of the uplink; replies come back through this node",
        "dsr" => "encapsulated to the backend's node, which delivers it; replies go from there to the client",
        _ => "this node has no route to the backend",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dataplane::fake::FakeDataplane, control::reconcile::Reconciler, sources::services_file};

    fn programmed() -> FakeDataplane {
        // A chunk per ring size in use (359 and 127).
        let mut dp = FakeDataplane::new(8, 32, 2 * lb_common::ring_pool::CHUNK_SLOTS);
        let desired = services_file::parse(
            r#"{"services":[
              {"name":"web","address":"10.0.0.1","port":80,"backends":[
                {"address":"10.1.0.5","port":31005},{"address":"10.1.0.6","port":31006},{"address":"10.1.0.7","port":31007}]},
              {"name":"app","port":10000,"backends":[{"address":"10.1.0.8","port":31008}]},
              {"name":"empty","address":"10.0.0.2","port":80,"backends":[{"address":"10.1.0.9","port":1,"weight":0}]}]}"#,
            "t.json",
        )
        .unwrap();
        Reconciler::default().apply(&desired, &mut dp).unwrap();
        crate::control::reconcile::sync_node_addrs(&[("10.201.0.2".parse().unwrap(), lb_common::exposure::EVERY_GROUP)], &mut dp).unwrap();
        dp
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_new_flow_gets_the_backend_of_its_ring_slot() {
        let dp = programmed();
        let e = explain(&dp, Proto::Tcp, at("10.9.0.1:40000"), at("10.0.0.1:80"), None, None, None).unwrap();
        assert_eq!((e.flow, e.service_name.as_deref(), e.ring_size), ("new", Some("web"), Some(359)));
        let info = dp.services.values().find(|i| dp.names[&i.service_id] == "web").unwrap();
        let expected = dp.backends[dp.ring(info)[e.ring_slot.unwrap() as usize] as usize];
        assert_eq!(e.backend, Some(BackendAddr { address: bytes_ip(&expected.addr, 4).unwrap(), port: expected.port }));
        // Different source ports spread over the backends.
        let seen: std::collections::BTreeSet<u16> = (40000..40100)
            .map(|port| explain(&dp, Proto::Tcp, SocketAddr::new("10.9.0.1".parse().unwrap(), port), at("10.0.0.1:80"), None, None, None).unwrap())
            .map(|e| e.backend.unwrap().port)
            .collect();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn an_existing_flow_wins_over_the_ring() {
        let mut dp = programmed();
        let fresh = explain(&dp, Proto::Tcp, at("10.9.0.1:40000"), at("10.0.0.1:80"), None, None, None).unwrap();
        let elsewhere = (1..dp.backends.len() as u32)
            .find(|&id| dp.backends[id as usize].state == lb_common::BACKEND_ACTIVE && Some(dp.backends[id as usize].port) != fresh.backend.map(|b| b.port) && dp.backends[id as usize].port != 31008)
            .unwrap();
        let key = FlowKey { src: lb_common::v4_bytes([10, 9, 0, 1]), dst: lb_common::v4_bytes([10, 0, 0, 1]), sport: 40000, dport: 80, proto: 6, family: 4, _pad: 0 };
        let info = lb_common::FlowInfo { backend_id: elsewhere, backend_generation: dp.backends[elsewhere as usize].generation, ..Default::default() };
        dp.flows.push((key, info));
        let e = explain(&dp, Proto::Tcp, at("10.9.0.1:40000"), at("10.0.0.1:80"), None, None, None).unwrap();
        assert_eq!(e.flow, "existing");
        assert_eq!(e.backend.unwrap().port, dp.backends[elsewhere as usize].port);
        assert_eq!(e.new_flow_backend, fresh.backend, "and says where a new one would go");
        let mut text = Vec::new();
        print(&e, false, &mut text).unwrap();
        assert!(String::from_utf8(text).unwrap().contains("a new flow would get"));
    }

    #[test]
    fn a_udp_flow_idle_past_the_timeout_is_gone_as_in_the_programs() {
        let mut dp = programmed();
        let dns = crate::sources::services_file::parse(
            r#"{"services":[{"name":"dns","address":"10.0.0.3","port":53,"protocol":"udp","backends":[{"address":"10.1.0.9","port":31053}]}]}"#,
            "t.json",
        )
        .unwrap();
        Reconciler::default().apply(&dns, &mut dp).unwrap();
        let id = (1..dp.backends.len()).find(|&id| dp.backends[id].port == 31053).unwrap();
        let key = FlowKey { src: lb_common::v4_bytes([10, 9, 0, 1]), dst: lb_common::v4_bytes([10, 0, 0, 3]), sport: 5353, dport: 53, proto: 17, family: 4, _pad: 0 };
        let second = 1_000_000_000;
        let info = lb_common::FlowInfo { backend_id: id as u32, backend_generation: dp.backends[id].generation, last_seen_ns: 100 * second, ..Default::default() };
        dp.flows.push((key, info));
        let at_time = |now: u64| Some(UdpClock { now_ns: now * second, timeout_ns: 30 * second });
        let e = explain(&dp, Proto::Udp, at("10.9.0.1:5353"), at("10.0.0.3:53"), at_time(129), None, None).unwrap();
        assert_eq!(e.flow, "existing", "idle 29 s of 30");
        let e = explain(&dp, Proto::Udp, at("10.9.0.1:5353"), at("10.0.0.3:53"), at_time(131), None, None).unwrap();
        assert_eq!(e.flow, "new", "idle 31 s of 30: the programs re-balance it");
    }

    #[test]
    fn service_ports_count_only_on_node_addresses_and_empty_services_refuse() {
        let dp = programmed();
        assert_eq!(explain(&dp, Proto::Tcp, at("10.9.0.1:40000"), at("10.201.0.2:10000"), None, None, None).unwrap().backend.unwrap().port, 31008);
        let elsewhere = explain(&dp, Proto::Tcp, at("10.9.0.1:40000"), at("10.201.0.3:10000"), None, None, None).unwrap();
        assert_eq!((elsewhere.flow, elsewhere.backend), ("none", None));
        assert!(elsewhere.reason.unwrap().starts_with("not a service"));
        let empty = explain(&dp, Proto::Tcp, at("10.9.0.1:40000"), at("10.0.0.2:80"), None, None, None).unwrap();
        assert_eq!((empty.flow, empty.service_name.as_deref()), ("none", Some("empty")));
        assert!(empty.reason.unwrap().starts_with("no active backend"));
        assert!(explain(&dp, Proto::Udp, at("10.9.0.1:40000"), at("10.0.0.1:80"), None, None, None).unwrap().reason.unwrap().starts_with("not a service"));
    }
}
