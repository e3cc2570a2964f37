//! The agent's programming side: merges the sources' services, writes them to the maps
//! through the reconciler, keeps the status (file, metrics snapshot, named-VIP table) and the
//! HTTP path's routes in step, and sweeps closed full-NAT mappings. The run loop (`serve`)
//! decides when; this decides what.

use std::{collections::BTreeSet, net::IpAddr, path::Path, sync::Arc};

use anyhow::{Context as _, Result};
use lb_common::{nat_state, FlowKey, NatReply};
use tracing::{debug, error, warn};

use crate::{
    announce::{self, Announcer},
    control::{
        merge,
        reconcile::{self, Reconciler},
    },
    dataplane::Dataplane,
    desired::{Desired, ServiceId},
    inspect::metrics,
    node::{neighbours::NeighbourResolver, serving::Serving},
    sources::{
        marathon::{self, ChangeReason, Outcome},
        services_file,
    },
    status::{self, AgentStatus},
};

pub struct Agent<D: Dataplane> {
    pub dataplane: D,
    reconciler: Reconciler,
    /// The node's addresses and uplinks, and where each group is served.
    serving: Serving,
    nat_ports: (u16, u16),
    /// `--udp-timeout`: UDP full-NAT mappings idle this long are freed.
    udp_timeout_ns: u64,
    static_services: Desired,
    pub status: AgentStatus,
    /// Asks the kernel to resolve the next hops of backends behind uplinks (full NAT can only
    /// forward to resolved neighbours). None in the host tests.
    neighbours: Option<NeighbourResolver>,
    /// Whether to write the status file (the host tests do not).
    write_status_file: bool,
    /// The translator's VIP epoch last written to the named-VIP table.
    vips_published: Option<u64>,
    /// What the metrics listener reads (None: `--metrics-listen off`, and the host tests).
    metrics: Option<Arc<metrics::Shared>>,
    /// The HTTP path, given every change Marathon's apps make (None: no HTTP listener).
    http: Option<crate::http::HttpPath>,
    /// The DNS server, given every change of Marathon's apps (None: no `--dns-listen`).
    dns: Option<crate::dns::Dns>,
    /// VIPs announced through BIRD (None: no `--bird-socket`).
    announcer: Option<Announcer>,
}

impl<D: Dataplane> Agent<D> {
    pub fn new(dataplane: D, serving: Serving, nat_ports: (u16, u16), static_services: Desired, status: AgentStatus) -> Self {
        Self {
            dataplane,
            reconciler: Reconciler::new(serving.exposure().clone()),
            serving,
            nat_ports,
            udp_timeout_ns: lb_common::DEFAULT_UDP_TIMEOUT_SECS * 1_000_000_000,
            static_services,
            status,
            neighbours: None,
            write_status_file: true,
            vips_published: None,
            metrics: None,
            http: None,
            dns: None,
            announcer: None,
        }
    }

    pub fn with_announcer(mut self, announcer: Announcer) -> Self {
        self.announcer = Some(announcer);
        self
    }

    /// The agent stops: the announced VIPs are withdrawn (`--withdraw-on-stop`).
    pub fn stop_announcing(&mut self) {
        if let Some(announcer) = self.announcer.as_mut() {
            announcer.stop();
            self.status.bgp = Some(announcer.status().clone());
            self.write_status();
        }
    }

    /// Keeps replaced rings as previous rings for `secs` (`--second-chance-secs`).
    pub fn with_second_chance(mut self, secs: u64) -> Self {
        self.reconciler = std::mem::take(&mut self.reconciler).with_second_chance(secs);
        self
    }

    pub fn with_udp_timeout(mut self, secs: u64) -> Self {
        self.udp_timeout_ns = secs.saturating_mul(1_000_000_000);
        self
    }

    /// The periodic work between syncs: full-NAT mappings and previous rings expired, the announcer told the data
    /// path's state (and retried after a failure), and the node's addresses (DHCP, an operator's
    /// `ip addr add`) and their group words followed.
    pub fn housekeep(&mut self, now_ns: u64) {
        self.expire_nat_mappings(now_ns);
        match self.reconciler.expire_previous_rings(now_ns, &mut self.dataplane) {
            Ok(0) => {}
            Ok(freed) => debug!(freed, "previous rings expired"),
            Err(err) => warn!("expiring previous rings: {err}"),
        }
        if let Some(announcer) = self.announcer.as_mut() {
            let before = announcer.status().clone();
            // A retry after a failure, or a change of the data path's state.
            announcer.data_path(data_path_check(&self.serving));
            if *announcer.status() != before {
                self.status.bgp = Some(announcer.status().clone());
                self.write_status();
            }
        }
        if let Err(err) = self.sync_node() {
            warn!("following this node's addresses: {}", crate::error_chain(err.as_ref()));
        }
    }

    /// Frees full-NAT mappings whose connections closed or idled out, so their ports can be
    /// taken again (the programs only stamp them: see `nat_state`). `now_ns` is a reading of
    /// the programs' clock (`dataplane::monotonic_ns`).
    pub fn expire_nat_mappings(&mut self, now_ns: u64) {
        let (now, udp_timeout) = (now_ns, self.udp_timeout_ns);
        let mut expired = |key: &FlowKey, reply: &NatReply| nat_state::expired(reply.state, now, key.proto, udp_timeout);
        match self.dataplane.expire_nat_mappings(&mut expired) {
            Ok(0) => {}
            Ok(freed) => debug!(freed, "full-NAT mappings expired"),
            Err(err) => warn!("expiring full-NAT mappings: {err}"),
        }
    }

    pub fn with_dns(mut self, dns: crate::dns::Dns) -> Self {
        self.dns = Some(dns);
        self
    }

    pub fn with_http(mut self, http: crate::http::HttpPath) -> Self {
        self.http = Some(http);
        self
    }

    pub fn with_neighbours(mut self, resolver: NeighbourResolver) -> Self {
        self.neighbours = Some(resolver);
        self
    }

    pub fn with_metrics(mut self, shared: Arc<metrics::Shared>) -> Self {
        self.metrics = Some(shared);
        self
    }

    /// Programs the services file's services plus Marathon's (Marathon wins a clash; None until
    /// Marathon has answered once); service ports inside the NAT range are left out with an
    /// error naming them.
    pub fn apply(&mut self, marathon: Option<&Desired>) -> Result<()> {
        self.apply_changes(marathon, None)
    }

    /// [`Agent::apply`] when only Marathon's services in `changed` can differ from the last
    /// apply (None: any may).
    fn apply_changes(&mut self, marathon: Option<&Desired>, changed: Option<&BTreeSet<ServiceId>>) -> Result<()> {
        self.sync_node()?;
        let (merged, clashes) = merge::merge(&self.static_services, marathon);
        for id in clashes {
            warn!(service = %id, "defined both in the services file and by Marathon; Marathon's definition wins");
        }
        let (desired, excluded) = merge::exclude_nat_ports(merged, self.nat_ports);
        let (min, max) = self.nat_ports;
        for service in &excluded {
            error!(service = %service.id, name = %service.name, "service port is inside --nat-ports {min}-{max}: not programmed");
        }
        let report = self.reconciler.apply_changes(&desired, changed, &mut self.dataplane)?;
        self.status.not_programmed = report.failed;
        // Only full NAT forwards in XDP/TC to a next hop the kernel must have resolved, and
        // full NAT only goes out of uplinks.
        let uplinks: Vec<u32> = self.serving.uplinks().iter().map(|u| u.ifindex).collect();
        if let Some(resolver) = self.neighbours.as_mut().filter(|_| !uplinks.is_empty()) {
            let backends: BTreeSet<IpAddr> = desired.values().flat_map(|s| s.backends.iter().map(|b| b.addr)).collect();
            match resolver.request(&backends, &uplinks) {
                Ok(sent) if sent > 0 => debug!(sent, "asked the kernel to resolve backends' next hops"),
                Ok(_) => {}
                Err(err) => warn!("resolving backends' next hops: {}", crate::error_chain(&err)),
            }
        }
        self.status.services = desired.len();
        self.status.ring_slots_in_use = self.reconciler.ring_slots_in_use();
        if let Some(announcer) = self.announcer.as_mut() {
            announcer.sync(announce::announced(&desired, self.reconciler.unfit()));
            self.status.bgp = Some(announcer.status().clone());
        }
        self.write_status();
        Ok(())
    }

    /// Brings the node's addresses (they come and go) and its uplinks, with the groups each
    /// exposes, into the maps. Also done at start, before the first sync: routes out of an
    /// uplink mean full NAT from the first packet on.
    pub fn sync_node(&mut self) -> Result<()> {
        let words = self.serving.words().context("listing this node's addresses")?;
        reconcile::sync_node_addrs(&words.addrs, &mut self.dataplane)?;
        reconcile::sync_uplinks(&words.uplinks, &mut self.dataplane)?;
        Ok(())
    }

    fn write_status(&mut self) {
        self.status.updated = status::now();
        if let Some(shared) = &self.metrics {
            if let Ok(mut snapshot) = shared.status.lock() {
                *snapshot = self.status.clone();
            }
        }
        if !self.write_status_file {
            return;
        }
        if let Err(err) = status::write(&self.status) {
            warn!("writing the status file: {err}");
        }
    }

    /// Re-reads the services file; an invalid file changes nothing.
    pub fn reload(&mut self, path: &Path, marathon: Option<&Desired>) {
        match services_file::load(path) {
            Ok(desired) => {
                self.static_services = desired;
                if let Err(err) = self.apply(marathon) {
                    error!("applying {}: {err:#}", path.display());
                }
            }
            Err(err) => error!("{}; keeping the services already programmed", crate::error_chain(&err)),
        }
    }

    /// Programs what came of Marathon's work: its services when they changed (the named-VIP
    /// table first, the HTTP path's routes after), its status in any case.
    pub fn follow_marathon(&mut self, source: &marathon::Source, outcome: &Outcome) {
        // Unchanged work changes no status either: nothing to copy.
        if matches!(outcome, Outcome::Unchanged) {
            return;
        }
        self.status.marathon = Some(source.status().clone());
        let Outcome::Changed(change) = outcome else { return self.write_status() };
        // The VIP names are published before the maps serve them, so `lb vips` never lags.
        self.publish_vips(source);
        if let Err(err) = self.apply_changes(source.desired(), source.changed()) {
            error!("applying Marathon's services: {err:#}");
        }
        self.follow_dns(source);
        // After the maps: the HTTP path's backends are the ones the L4 path already serves.
        if let (Some(http), Some(desired)) = (&self.http, source.desired()) {
            let routes = http.update(source.http_ports(), desired);
            if let Some(status) = self.status.http.as_mut().filter(|s| s.routes != routes) {
                status.routes = routes;
                self.write_status();
            }
        }
        if let (Some(shared), ChangeReason::Events(_)) = (&self.metrics, &change.why) {
            shared.event_to_maps.observe(change.started.elapsed().as_secs_f64());
        }
    }

    /// DNS names change in the pass that reprogrammed the services they name.
    fn follow_dns(&mut self, source: &marathon::Source) {
        let (Some(dns), Some(translator)) = (&mut self.dns, source.translator()) else { return };
        dns.follow(translator, source.named_vips(), source.vips_epoch());
        let records = dns.record_count();
        if let Some(status) = self.status.dns.as_mut().filter(|s| s.records != records) {
            status.records = records;
            self.write_status();
        }
    }

    /// Writes the named-VIP table when the allocation changed since the last write.
    fn publish_vips(&mut self, source: &marathon::Source) {
        if !self.write_status_file || self.vips_published == Some(source.vips_epoch()) {
            return;
        }
        let vips = source.named_vips().iter().map(|(name, ip)| (name.clone(), ip.to_string())).collect();
        match status::write_vips(Path::new(&self.status.pin_dir), &vips) {
            Ok(()) => self.vips_published = Some(source.vips_epoch()),
            Err(err) => warn!("writing the named-VIP table: {err}"),
        }
    }
}

/// The data path's own check, before VIPs are announced: at least one uplink (`--iface`)
/// still exists with the index the programs were attached to (traffic for a VIP can only
/// arrive through one).
fn data_path_check(serving: &Serving) -> Result<(), String> {
    let uplinks = serving.uplinks();
    let present = |u: &crate::node::serving::Uplink| crate::node::preflight::interface_index(&u.name).ok() == Some(u.ifindex);
    if uplinks.is_empty() || uplinks.iter().any(present) {
        return Ok(());
    }
    let names: Vec<&str> = uplinks.iter().map(|u| u.name.as_str()).collect();
    Err(format!("no uplink left ({} gone)", names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::FlowInfo;
    use crate::{
        dataplane::fake::FakeDataplane,
        desired::{Backend, Proto, Service, ServiceAddr, ServiceId},
    };

    fn service(addr: ServiceAddr, port: u16, name: &str, backend: &str) -> Service {
        let id = ServiceId { addr, port, proto: Proto::Tcp };
        Service { id, name: name.into(), groups: Default::default(), sources: Default::default(), backends: vec![Backend { addr: backend.parse().unwrap(), port: 31000, weight: 1 }] }
    }

    fn desired(services: Vec<Service>) -> Desired {
        services.into_iter().map(|s| (s.id, s)).collect()
    }

    fn agent(static_services: Desired) -> Agent<FakeDataplane> {
        let mut agent = Agent::new(
            FakeDataplane::new(16, 64, lb_common::ring_pool::CHUNK_SLOTS),
            Serving::new(vec!["10.0.0.1".parse().unwrap()], Vec::new(), Default::default()),
            (61000, 65535),
            static_services,
            AgentStatus::default(),
        );
        agent.write_status_file = false;
        agent
    }

    /// A full-NAT mapping towards backend 10.1.0.1:31000 from NAT port `port`, for client port
    /// `port` too, stamped `state`, and its client's flow pinned to it.
    fn nat_mapping(dp: &mut FakeDataplane, port: u16, state: u32) {
        let v4 = lb_common::v4_bytes;
        let key = FlowKey { src: v4([10, 1, 0, 1]), dst: v4([10, 0, 0, 9]), sport: 31000, dport: port, proto: lb_common::PROTO_TCP, family: lb_common::FAMILY_V4, _pad: 0 };
        let reply = NatReply { client_addr: v4([192, 0, 2, 7]), service_addr: v4([10, 0, 0, 1]), client_port: port, service_port: 80, state };
        let mut flow = FlowInfo { kind: lb_common::FLOW_NAT, nat_port: port, ..FlowInfo::default() };
        flow.set_nat_source(&key.dst);
        dp.flows.push((nat_state::client_flow(&key, &reply), flow));
        dp.nat_replies.push((key, reply));
    }

    #[test]
    fn closed_and_idle_nat_mappings_are_freed_with_their_flows_and_open_ones_kept() {
        let mut agent = agent(Desired::new());
        // Any reading of the clock will do (the sweep is given it): an hour after boot, so the
        // stamps below are not "before boot" on a machine that has just started.
        let now = 3_600_000_000_000u64;
        let unit = 1u64 << nat_state::CLOCK_SHIFT;
        let dp = &mut agent.dataplane;
        nat_mapping(dp, 61000, nat_state::after_packet(0, now, lb_common::TCP_ACK, true));
        nat_mapping(dp, 61001, nat_state::after_packet(0, now - 10 * unit, lb_common::TCP_FIN, false));
        nat_mapping(dp, 61002, nat_state::after_packet(0, now - 10 * unit, lb_common::TCP_FIN, true));
        nat_mapping(dp, 61003, nat_state::after_packet(0, now - (nat_state::TCP_IDLE as u64 + 5) * unit, lb_common::TCP_ACK, true));
        agent.expire_nat_mappings(now);
        let ports = |v: &[(FlowKey, NatReply)]| v.iter().map(|(k, _)| k.dport).collect::<Vec<_>>();
        assert_eq!(ports(&agent.dataplane.nat_replies), [61000, 61002], "open, and in the backend's TIME_WAIT, stay");
        let flow_ports: Vec<u16> = agent.dataplane.flows.iter().map(|(_, f)| f.nat_port).collect();
        assert_eq!(flow_ports, [61000, 61002], "the freed mappings' flows go with them");
    }

    /// (port, name, first backend) of every programmed service.
    fn programmed(agent: &Agent<FakeDataplane>) -> Vec<(u16, String, String)> {
        let dp = &agent.dataplane;
        let mut out: Vec<_> = dp
            .services
            .iter()
            .map(|(key, info)| {
                let ring = dp.ring(info);
                let backend = dp.backends[ring[0] as usize];
                let addr = crate::desired::bytes_ip(&backend.addr, backend.family).unwrap();
                (key.port, dp.names[&info.service_id].clone(), addr.to_string())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn marathon_wins_a_clash_and_both_sources_apply() {
        let node = ServiceAddr::NodePort { v6: false };
        let mut agent = agent(desired(vec![service(node, 10000, "file-web", "10.1.0.1"), service(node, 10001, "file-only", "10.1.0.2")]));
        agent.apply(None).unwrap();
        assert_eq!(programmed(&agent)[0], (10000, "file-web".into(), "10.1.0.1".into()));
        agent.apply(Some(&desired(vec![service(node, 10000, "/web:0", "10.2.0.1")]))).unwrap();
        assert_eq!(
            programmed(&agent),
            [(10000, "/web:0".into(), "10.2.0.1".into()), (10001, "file-only".into(), "10.1.0.2".into())]
        );
        // Marathon dropping the app hands the port back to the file's definition.
        agent.apply(Some(&Desired::new())).unwrap();
        assert_eq!(programmed(&agent)[0], (10000, "file-web".into(), "10.1.0.1".into()));
    }

    #[test]
    fn service_ports_in_the_nat_range_are_left_out_and_vips_are_not() {
        let node = ServiceAddr::NodePort { v6: false };
        let vip = ServiceAddr::Vip("10.9.0.1".parse().unwrap());
        let mut agent = agent(desired(vec![
            service(node, 61000, "in-range", "10.1.0.1"),
            service(node, 60999, "below", "10.1.0.2"),
            service(vip, 62000, "vip-in-range", "10.1.0.3"),
        ]));
        agent.apply(None).unwrap();
        let names: Vec<String> = programmed(&agent).into_iter().map(|(_, name, _)| name).collect();
        assert_eq!(names, ["below", "vip-in-range"]);
        assert_eq!(agent.status.services, 2);
    }
}
