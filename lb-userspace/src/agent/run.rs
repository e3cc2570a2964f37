//! The agent's run loop: programs the merged services, re-reads the services file when it
//! changes, follows Marathon (events, periodic re-reads, retries), and reports in the status file.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::IpAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_common::{nat_state, FlowKey, NatReply};
use tracing::{debug, error, info, warn};

use super::{
    policy::{self, RelistPacing},
    sources::{self, MarathonSource},
};
use crate::{
    dataplane::Dataplane,
    marathon::{
        client::SseEvent,
        events::Delta,
        model::parse_apps,
        watch::Signal,
    },
    metrics,
    model::{Desired, ServiceId},
    neighbours::NeighbourResolver,
    node_addrs,
    reconcile::{self, Reconciler},
    services_file,
    status::{self, AgentStatus, MarathonStatus},
};

pub struct Agent<D: Dataplane> {
    pub dataplane: D,
    reconciler: Reconciler,
    /// Explicit node addresses (empty: every address of the node).
    node_ips: Vec<IpAddr>,
    nat_ports: (u16, u16),
    /// `--udp-timeout`: UDP full-NAT mappings idle this long are freed.
    udp_timeout_ns: u64,
    uplinks: Vec<u32>,
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
}

impl<D: Dataplane> Agent<D> {
    pub fn new(dataplane: D, node_ips: Vec<IpAddr>, nat_ports: (u16, u16), uplinks: Vec<u32>, static_services: Desired, status: AgentStatus) -> Self {
        Self {
            dataplane,
            reconciler: Reconciler::default(),
            node_ips,
            nat_ports,
            udp_timeout_ns: lb_common::DEFAULT_UDP_TIMEOUT_SECS * 1_000_000_000,
            uplinks,
            static_services,
            status,
            neighbours: None,
            write_status_file: true,
            vips_published: None,
            metrics: None,
            http: None,
        }
    }

    pub fn with_udp_timeout(mut self, secs: u64) -> Self {
        self.udp_timeout_ns = secs.saturating_mul(1_000_000_000);
        self
    }

    /// Frees full-NAT mappings whose connections closed or idled out, so their ports can be
    /// taken again (the programs only stamp them: see `nat_state`).
    fn expire_nat_mappings(&mut self) {
        let (now, udp_timeout) = (crate::report::monotonic_ns(), self.udp_timeout_ns);
        let mut expired = |key: &FlowKey, reply: &NatReply| nat_state::expired(reply.state, now, key.proto, udp_timeout);
        match self.dataplane.expire_nat_mappings(&mut expired) {
            Ok(0) => {}
            Ok(freed) => debug!(freed, "full-NAT mappings expired"),
            Err(err) => warn!("expiring full-NAT mappings: {err}"),
        }
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
        let addrs = if self.node_ips.is_empty() {
            node_addrs::discover().context("listing this node's addresses")?
        } else {
            node_addrs::with_loopback(self.node_ips.clone())
        };
        reconcile::sync_node_addrs(&addrs, &mut self.dataplane)?;
        let (merged, clashes) = policy::merge(&self.static_services, marathon);
        for id in clashes {
            warn!(service = %id, "defined both in the services file and by Marathon; Marathon's definition wins");
        }
        let (desired, excluded) = policy::exclude_nat_ports(merged, self.nat_ports);
        let (min, max) = self.nat_ports;
        for service in &excluded {
            error!(service = %service.id, name = %service.name, "service port is inside --nat-ports {min}-{max}: not programmed");
        }
        let report = self.reconciler.apply_changes(&desired, changed, &mut self.dataplane)?;
        self.status.not_programmed = report.failed;
        // Only full NAT forwards in XDP/TC to a next hop the kernel must have resolved, and
        // full NAT only goes out of uplinks.
        if let Some(resolver) = self.neighbours.as_mut().filter(|_| !self.uplinks.is_empty()) {
            let backends: BTreeSet<IpAddr> = desired.values().flat_map(|s| s.backends.iter().map(|b| b.addr)).collect();
            match resolver.request(&backends, &self.uplinks) {
                Ok(sent) if sent > 0 => debug!(sent, "asked the kernel to resolve backends' next hops"),
                Ok(_) => {}
                Err(err) => warn!("resolving backends' next hops: {}", crate::error_chain(&err)),
            }
        }
        self.status.services = desired.len();
        self.status.ring_slots_in_use = self.reconciler.ring_slots_in_use();
        self.write_status();
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
    fn reload(&mut self, path: &Path, marathon: Option<&Desired>) {
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

    /// Reads every app from Marathon (`why` goes to the log and the status) and programs the
    /// result. On failure nothing changes (the last good state stays programmed) and the status
    /// says why.
    pub async fn relist(&mut self, m: &mut MarathonSource, why: &str) {
        let started = Instant::now();
        let status = self.status.marathon.get_or_insert_with(MarathonStatus::default);
        status.urls = m.client.urls().to_vec();
        status.relists += 1;
        status.last_relist_reason = why.to_owned();
        info!("reading every app from Marathon: {why}");
        let body = match m.client.apps().await {
            Ok(body) => body,
            Err(err) => return self.marathon_failed(crate::error_chain(&err), m),
        };
        let fetched = started.elapsed();
        let unparsed = match m.model.replace_from(&body) {
            Ok(unparsed) => unparsed,
            Err(err) => return self.marathon_failed(crate::error_chain(&err), m),
        };
        drop(body);
        for (app, why) in &unparsed {
            warn!(app, "app definition not usable (its last good definition stays): {why}");
        }
        m.dns.refresh(m.model.apps()).await;
        m.translator.rebuild(m.model.apps(), &mut m.dns, &mut m.health, &m.vips);
        self.program_model(m);
        info!(fetch_ms = fetched.as_millis() as u64, elapsed_ms = started.elapsed().as_millis() as u64, apps = m.model.len(), "synced from Marathon");
    }

    /// Applies a burst of events to the model (re-reading single apps where an event lacks what
    /// the model needs) and programs the result. Returns why a full re-list is needed instead,
    /// when the model cannot be trusted.
    pub async fn apply_events(&mut self, m: &mut MarathonSource, events: &[SseEvent]) -> Option<String> {
        let started = Instant::now();
        let mut delta = Delta::of(events);
        if let Some(why) = delta.relist.take() {
            return Some(why);
        }
        if delta.is_empty() {
            return None;
        }
        for id in &delta.remove {
            m.model.remove(id);
        }
        for update in &delta.tasks {
            if !m.model.apply_task(update) {
                delta.refresh.insert(update.app_id.clone());
            }
        }
        for id in &delta.refresh {
            if let Err(why) = self.read_app(m, id).await {
                return Some(format!("reading {id} alone failed ({why})"));
            }
        }
        let mut changed: BTreeSet<String> = delta.refresh.iter().chain(&delta.remove).cloned().collect();
        changed.extend(delta.tasks.iter().map(|t| t.app_id.clone()));
        let model = &m.model;
        m.dns.refresh(changed.iter().filter_map(|id| model.get(id))).await;
        m.translator.update(model.apps(), |id| model.get(id), &changed, &mut m.dns, &mut m.health, &m.vips);
        let status = self.status.marathon.get_or_insert_with(MarathonStatus::default);
        status.events_applied += events.len() as u64;
        status.app_reads += delta.refresh.len() as u64;
        self.program_model(m);
        if let Some(shared) = &self.metrics {
            shared.event_to_maps.observe(started.elapsed().as_secs_f64());
        }
        debug!(events = events.len(), apps_read = delta.refresh.len(), elapsed_ms = started.elapsed().as_millis() as u64, "events applied");
        None
    }

    /// Reads one app into the model (gone from Marathon: dropped).
    async fn read_app(&mut self, m: &mut MarathonSource, id: &str) -> Result<(), String> {
        let body = m.client.app(id).await.map_err(|err| crate::error_chain(&err))?;
        let Some(body) = body else {
            m.model.remove(id);
            return Ok(());
        };
        let (mut apps, unparsed) = parse_apps(&body).map_err(|err| crate::error_chain(&err))?;
        match (apps.pop(), unparsed.into_iter().next()) {
            (Some(app), _) => m.model.upsert(id, Ok(app)),
            (None, Some((_, why))) => {
                warn!(app = id, "app definition not usable (its last good definition stays): {why}");
                m.model.upsert(id, Err(why));
            }
            (None, None) => return Err("the answer holds no app".into()),
        }
        Ok(())
    }

    /// Programs the model's translation (host names were resolved before it, outside the
    /// apply).
    fn program_model(&mut self, m: &mut MarathonSource) {
        let mut skipped_apps: BTreeMap<String, String> = m.model.degraded().clone();
        skipped_apps.extend(m.translator.app_errors());
        let mut skipped: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (app, what) in m.translator.warnings() {
            skipped.entry(app.clone()).or_default().push(what.clone());
        }
        let status = self.status.marathon.get_or_insert_with(MarathonStatus::default);
        status.current = m.client.current().to_owned();
        status.last_sync = Some(status::now());
        status.last_error = None;
        status.failures_in_a_row = 0;
        status.apps = m.model.len();
        status.state = if skipped_apps.is_empty() { "ok".into() } else { "degraded".into() };
        status.skipped_apps = skipped_apps;
        status.skipped_tasks = skipped.values().map(Vec::len).sum();
        status.skipped = skipped;
        status.named_vips = m.translator.named_vips().len();
        status.event_stream = m.watch.connected_to().map(str::to_owned);
        // The VIP names are published before the maps serve them, so `lb vips` never lags.
        self.publish_vips(m);
        m.answered = true;
        if let Err(err) = self.apply_changes(Some(m.translator.desired()), m.translator.changed()) {
            error!("applying Marathon's services: {err:#}");
        }
        // After the maps: the HTTP path's backends are the ones the L4 path already serves.
        if let Some(http) = &self.http {
            let routes = http.update(m.translator.http_ports(), m.translator.desired());
            if let Some(status) = self.status.http.as_mut().filter(|s| s.routes != routes) {
                status.routes = routes;
                self.write_status();
            }
        }
    }

    /// Writes the named-VIP table when the allocation changed since the last write.
    fn publish_vips(&mut self, m: &MarathonSource) {
        if !self.write_status_file || self.vips_published == Some(m.translator.vips_epoch()) {
            return;
        }
        let vips = m.translator.named_vips().iter().map(|(name, ip)| (name.clone(), ip.to_string())).collect();
        match status::write_vips(Path::new(&self.status.pin_dir), &vips) {
            Ok(()) => self.vips_published = Some(m.translator.vips_epoch()),
            Err(err) => warn!("writing the named-VIP table: {err}"),
        }
    }

    fn marathon_failed(&mut self, why: String, m: &MarathonSource) {
        warn!("Marathon: {why}; keeping the services already programmed");
        let status = self.status.marathon.get_or_insert_with(MarathonStatus::default);
        status.state = "failing".into();
        status.last_error = Some(why);
        status.failures_in_a_row += 1;
        status.failures += 1;
        status.event_stream = m.watch.connected_to().map(str::to_owned);
        self.write_status();
    }

    fn marathon_failing(&self) -> bool {
        self.status.marathon.as_ref().is_some_and(|s| s.last_error.is_some())
    }

    /// Brings the maps to the sources' state once, says `ready`, then follows the sources until
    /// SIGINT/SIGTERM.
    pub async fn serve(&mut self, services: Option<&Path>, mut marathon: Option<MarathonSource>) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut stop = StopSignals::install()?;
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        match marathon.as_mut() {
            // Until Marathon has answered once, the services already pinned (a restart) stay
            // exactly as they are: an empty or unreachable source never flushes them.
            Some(m) => {
                // The event stream first, so nothing that happens during the first read is
                // missed; that read then also answers the stream's (re)connect (one full read at
                // start, not two). A stream that does not open in time does not hold the start up.
                let opened = tokio::time::timeout(m.client.timeout(), m.watch.next(&mut m.client));
                if stop.unless_stopped(opened).await.is_none() || stop.unless_stopped(self.relist(m, "start")).await.is_none() {
                    return Ok(());
                }
            }
            None => self.apply(None)?,
        }
        println!("ready");
        std::io::stdout().flush()?;
        // systemd (Type=notify): started means programmed. Without NOTIFY_SOCKET this does nothing.
        if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            warn!("telling systemd the agent is ready: {err}");
        }

        let mut poll = tokio::time::interval(Duration::from_secs(1));
        let mut nat_sweep = tokio::time::interval(NAT_SWEEP_EVERY);
        nat_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = services.and_then(sources::modified);
        let resync_every = marathon.as_ref().map_or(Duration::from_secs(3600), |m| m.resync);
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + resync_every, resync_every);
        let mut pacing = RelistPacing::default();
        if marathon.is_some() {
            pacing.ran(Instant::now(), self.marathon_failing());
        }
        loop {
            let event = async {
                match marathon.as_mut() {
                    Some(m) => m.watch.next(&mut m.client).await,
                    None => std::future::pending().await,
                }
            };
            let due_at = pacing.due();
            let due = async {
                match due_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let mut work = None;
            let mut paced = |why: &str| pacing.ask(Instant::now(), why).then(|| MarathonWork::Relist(why.to_owned()));
            tokio::select! {
                _ = stop.signalled() => return Ok(()),
                _ = hup.recv() => {
                    if let Some(path) = services {
                        info!("SIGHUP: reloading {}", path.display());
                        seen = sources::modified(path);
                        self.reload(path, marathon_services(&marathon));
                    }
                    if marathon.is_some() {
                        work = Some(MarathonWork::Relist("SIGHUP".to_owned()));
                    }
                }
                _ = poll.tick() => {
                    if let Some(path) = services {
                        let now = sources::modified(path);
                        if now != seen {
                            seen = now;
                            info!("{} changed: reloading", path.display());
                            self.reload(path, marathon_services(&marathon));
                        }
                    }
                }
                signal = event => {
                    work = match signal {
                        Signal::Events(events) => Some(MarathonWork::Events(events)),
                        Signal::Relist => paced("the event stream (re)connected: events have no replay"),
                        Signal::Lost => paced("the event stream is lost"),
                    };
                }
                _ = nat_sweep.tick() => self.expire_nat_mappings(),
                _ = resync.tick() => if marathon.is_some() { work = paced("--resync interval") },
                _ = due => work = pacing.take_due().map(MarathonWork::Relist),
            }
            let (Some(m), Some(work)) = (marathon.as_mut(), work) else { continue };
            // Signals stay answered while Marathon or DNS is slow: the work is dropped.
            let relist = match work {
                MarathonWork::Relist(why) => Some(why),
                MarathonWork::Events(events) => match stop.unless_stopped(self.apply_events(m, &events)).await {
                    None => return Ok(()),
                    Some(follow_up) => follow_up.filter(|why| pacing.ask(Instant::now(), why)),
                },
            };
            if let Some(why) = relist {
                if stop.unless_stopped(self.relist(m, &why)).await.is_none() {
                    return Ok(());
                }
                pacing.ran(Instant::now(), self.marathon_failing());
            }
        }
    }
}

/// SIGTERM and SIGINT: both stop the agent (programs stay attached, maps pinned).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    /// Completes when either arrives.
    async fn signalled(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM"),
            _ = self.int.recv() => info!("SIGINT"),
        }
    }

    /// `work`'s result, or None when a stop signal came first (the work is dropped).
    async fn unless_stopped<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            _ = self.signalled() => None,
        }
    }
}

/// Marathon's services, once Marathon has answered.
fn marathon_services(marathon: &Option<MarathonSource>) -> Option<&Desired> {
    marathon.as_ref().filter(|m| m.answered).map(|m| m.translator.desired())
}

/// How often closed and idle full-NAT mappings are freed: a closed connection's port is free
/// again at most this long after its linger (`nat_state::CLOSED_LINGER`).
const NAT_SWEEP_EVERY: Duration = Duration::from_secs(2);

/// What the Marathon source asks for after one wake-up.
enum MarathonWork {
    Relist(String),
    Events(Vec<SseEvent>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::FlowInfo;
    use crate::{
        dataplane::fake::FakeDataplane,
        model::{Backend, Proto, Service, ServiceAddr, ServiceId},
    };

    fn service(addr: ServiceAddr, port: u16, name: &str, backend: &str) -> Service {
        let id = ServiceId { addr, port, proto: Proto::Tcp };
        Service { id, name: name.into(), backends: vec![Backend { addr: backend.parse().unwrap(), port: 31000, weight: 1 }] }
    }

    fn desired(services: Vec<Service>) -> Desired {
        services.into_iter().map(|s| (s.id, s)).collect()
    }

    fn agent(static_services: Desired) -> Agent<FakeDataplane> {
        let mut agent = Agent::new(
            FakeDataplane::new(16, 64, lb_common::ring_pool::CHUNK_SLOTS),
            vec!["10.0.0.1".parse().unwrap()],
            (61000, 65535),
            Vec::new(),
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
        let flow = FlowInfo { kind: lb_common::FLOW_NAT, nat_port: port, nat_addr: key.dst, ..FlowInfo::default() };
        dp.flows.push((nat_state::client_flow(&key, &reply), flow));
        dp.nat_replies.push((key, reply));
    }

    #[test]
    fn closed_and_idle_nat_mappings_are_freed_with_their_flows_and_open_ones_kept() {
        let mut agent = agent(Desired::new());
        let now = crate::report::monotonic_ns();
        let unit = 1u64 << nat_state::CLOCK_SHIFT;
        let dp = &mut agent.dataplane;
        nat_mapping(dp, 61000, nat_state::after_packet(0, now, lb_common::TCP_ACK, true));
        nat_mapping(dp, 61001, nat_state::after_packet(0, now - 10 * unit, lb_common::TCP_FIN, false));
        nat_mapping(dp, 61002, nat_state::after_packet(0, now - 10 * unit, lb_common::TCP_FIN, true));
        nat_mapping(dp, 61003, nat_state::after_packet(0, now - (nat_state::TCP_IDLE as u64 + 5) * unit, lb_common::TCP_ACK, true));
        agent.expire_nat_mappings();
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
                let addr = crate::model::bytes_ip(&backend.addr, backend.family).unwrap();
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
