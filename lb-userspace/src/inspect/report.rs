//! What `lb services`, `lb flows` and `lb stats` show, read through the [`Dataplane`] trait.

use std::{collections::BTreeMap, io::Write, net::IpAddr};

use anyhow::Result;
use lb_common::{exposure::exposed, BackendInfo, Reason, BACKEND_ACTIVE, BACKEND_UNUSED};
use serde::Serialize;

use crate::{
    control::exposure::group_names,
    dataplane::{Dataplane, IfaceStat},
    status::AgentStatus,
    desired::{bytes_ip, Proto, ServiceAddr, ServiceId},
    node::preflight,
};

/// One element of `lb services --json` (address, port, protocol, name, groups, served_on, backends).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ServiceView {
    /// The VIP, or 0.0.0.0 / :: for a service port (every node address).
    pub address: String,
    pub port: u16,
    pub protocol: Proto,
    pub name: String,
    /// Its groups (`*`: every group, no `--expose`).
    pub groups: Vec<String>,
    /// Where a new connection from the network is balanced: the uplinks (a VIP) or node
    /// addresses (a service port) that expose one of its groups; local clients reach it too.
    pub served_on: Vec<String>,
    /// The clients it admits (empty: every client).
    pub source_ranges: Vec<String>,
    pub backends: Vec<BackendView>,
    /// Index of its counters (not part of the documented JSON).
    #[serde(skip)]
    pub id: u32,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct BackendView {
    pub address: String,
    pub port: u16,
    pub weight: u32,
    /// `active` or `draining`.
    pub state: &'static str,
    /// How this node reaches it: `local` (through its stack), `full-nat`, `dsr`, or `unknown`
    /// (no route here); empty where not asked (see [`services_served`]).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reach: &'static str,
    #[serde(skip)]
    pub id: u32,
}

fn service_address(id: &ServiceId) -> String {
    match id.addr {
        ServiceAddr::Vip(ip) => ip.to_string(),
        ServiceAddr::NodePort { v6: false } => "0.0.0.0".into(),
        ServiceAddr::NodePort { v6: true } => "::".into(),
    }
}

fn backend_view(id: u32, b: &BackendInfo) -> Option<BackendView> {
    let ip = bytes_ip(&b.addr, b.family)?;
    let state = if b.state == BACKEND_ACTIVE { "active" } else { "draining" };
    Some(BackendView { address: ip.to_string(), port: b.port, weight: b.weight, state, reach: "", id })
}

/// Where the maps serve each group word from the network, what the groups are called, and
/// which clients each service admits.
struct Exposure {
    named: Vec<String>,
    node_addrs: Vec<(lb_common::NodeAddrKey, u32)>,
    uplinks: Vec<(String, u32)>,
    sources: BTreeMap<u32, Vec<String>>,
}

impl Exposure {
    fn read(dp: &dyn Dataplane, status: Option<&AgentStatus>) -> Result<Self> {
        let uplinks = dp.uplinks()?.into_iter().map(|(i, w)| (uplink_name(status, i), w)).collect();
        let named = status.and_then(|s| s.exposure.as_ref()).map(|e| e.groups.clone()).unwrap_or_default();
        let text = |ranges: crate::desired::Sources| {
            let mut text: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            text.sort();
            text
        };
        let sources = crate::control::source_ranges::in_maps(dp)?.into_iter().map(|(id, ranges)| (id, text(ranges))).collect();
        Ok(Self { named, node_addrs: dp.node_addrs()?, uplinks, sources })
    }

    /// The uplinks (VIP) or addresses (service port) a service of group word `word` is served on.
    fn served_on(&self, id: &ServiceId, word: u32) -> Vec<String> {
        let exposed_via = |addr: Option<u32>| self.uplinks.iter().filter(move |(_, uplink)| exposed(word, addr, *uplink));
        if matches!(id.addr, ServiceAddr::Vip(_)) {
            return exposed_via(None).map(|(name, _)| name.clone()).collect();
        }
        let family = if id.is_v6() { lb_common::FAMILY_V6 } else { lb_common::FAMILY_V4 };
        let addrs = self.node_addrs.iter().filter(|(key, _)| key.family == family);
        let served = addrs.filter(|(_, addr)| exposed_via(Some(*addr)).next().is_some());
        served.filter_map(|(key, _)| bytes_ip(&key.addr, key.family)).map(|ip| ip.to_string()).collect()
    }
}

/// The name of uplink `ifindex` as the agent sees it (its status: `lb` may run in another
/// network namespace than the agent), else as this namespace names the index.
pub fn uplink_name(status: Option<&AgentStatus>, ifindex: u32) -> String {
    let agents = status.and_then(|s| s.uplinks.iter().find(|u| u.ifindex == ifindex)).map(|u| u.name.clone());
    agents.or_else(|| preflight::interface_name(ifindex)).unwrap_or_else(|| format!("ifindex {ifindex}"))
}

/// Every programmed service with its backends, sorted by (protocol, address, port); `groups`
/// and `served_on` are left empty (see [`services_served`]).
pub fn services(dp: &dyn Dataplane) -> Result<Vec<ServiceView>> {
    views(dp, None)
}

/// [`services`] with each one's groups and where it is served (`lb services`); `status`: the
/// running agent's, for the names of groups and uplinks.
pub fn services_served(dp: &dyn Dataplane, status: Option<&AgentStatus>) -> Result<Vec<ServiceView>> {
    views(dp, Some(&Exposure::read(dp, status)?))
}

/// `views` with how each backend is reached, as `reacher` finds it (`lb services`).
pub fn with_reach(mut views: Vec<ServiceView>, reacher: &mut crate::inspect::reach::Reacher) -> Vec<ServiceView> {
    for backend in views.iter_mut().flat_map(|v| v.backends.iter_mut()) {
        let addr = backend.address.parse().ok();
        backend.reach = crate::inspect::reach::name(addr.and_then(|a| reacher.reach(a)));
    }
    views
}

fn views(dp: &dyn Dataplane, exposure: Option<&Exposure>) -> Result<Vec<ServiceView>> {
    let backends = dp.backends()?;
    let mut by_service: BTreeMap<u32, Vec<BackendView>> = BTreeMap::new();
    for (id, b) in backends.iter().enumerate().skip(1) {
        if b.state != BACKEND_UNUSED {
            if let Some(view) = backend_view(id as u32, b) {
                by_service.entry(b.service_id).or_default().push(view);
            }
        }
    }
    let services = dp.services()?;
    // Ids are handed out lowest first: the names up to the highest in use are one short read.
    let ids = services.iter().map(|(_, i)| i.service_id + 1).max().unwrap_or(0);
    let names = dp.service_names(ids)?;
    let words = if exposure.is_some() { dp.service_group_words(ids)? } else { Vec::new() };
    let mut out = Vec::new();
    for (key, info) in services {
        let Some(id) = ServiceId::from_key(&key) else { continue };
        let mut backends = by_service.remove(&info.service_id).unwrap_or_default();
        backends.sort_by_key(|b| (b.address.parse::<IpAddr>().ok(), b.port));
        let word = words.get(info.service_id as usize).copied().unwrap_or(0);
        let (groups, served_on) = exposure.map_or((Vec::new(), Vec::new()), |e| (group_names(&e.named, word), e.served_on(&id, word)));
        let source_ranges = exposure.and_then(|e| e.sources.get(&info.service_id)).cloned().unwrap_or_default();
        out.push((id, ServiceView {
            address: service_address(&id),
            port: id.port,
            protocol: id.proto,
            name: names.get(info.service_id as usize).cloned().unwrap_or_default(),
            groups,
            served_on,
            source_ranges,
            backends,
            id: info.service_id,
        }));
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

pub fn print_services(services: &[ServiceView], json: bool, out: &mut impl Write) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, services)?;
        writeln!(out)?;
        return Ok(());
    }
    let header = ("SERVICE", "PROTO", "NAME", "BACKEND", "WEIGHT", "STATE", "REACH", "GROUP", "SERVED ON");
    let h = header;
    writeln!(out, "{:<28} {:<5} {:<24} {:<28} {:>6} {:<8} {:<8} {:<12} {:<24} SOURCES", h.0, h.1, h.2, h.3, h.4, h.5, h.6, h.7, h.8)?;
    for s in services {
        let service = format!("{}:{}", bracket(&s.address), s.port);
        let (groups, served_on) = (s.groups.join(","), if s.served_on.is_empty() { "local clients only".to_owned() } else { s.served_on.join(",") });
        let sources = match s.source_ranges.len() {
            0 => "any".to_owned(),
            1..=3 => s.source_ranges.join(","),
            n => format!("{n} ranges (--json lists them)"),
        };
        let row = |b: &BackendView| (format!("{}:{}", bracket(&b.address), b.port), b.weight.to_string(), b.state, b.reach);
        let rows: Vec<(String, String, &str, &str)> = match s.backends.is_empty() {
            true => vec![("-".into(), "-".into(), "-", "-")],
            false => s.backends.iter().map(row).collect(),
        };
        for (backend, weight, state, reach) in rows {
            writeln!(out, "{service:<28} {:<5} {:<24} {backend:<28} {weight:>6} {state:<8} {reach:<8} {groups:<12} {served_on:<24} {sources}", s.protocol.as_str(), s.name)?;
        }
    }
    Ok(())
}

/// An address as it goes before `:port` (IPv6 in brackets).
pub(crate) fn bracket(addr: &str) -> String {
    if addr.contains(':') { format!("[{addr}]") } else { addr.to_string() }
}

impl ServiceView {
    /// Whether `selector` names this service: its name, or its `address:port` as `lb services`
    /// prints it (`10.0.0.1:80`, `[fd00::1]:80`, `0.0.0.0:10001` for a service port).
    pub fn is(&self, selector: &str) -> bool {
        self.name == selector || format!("{}:{}", bracket(&self.address), self.port) == selector
    }
}

/// The services `selector` names (all of them without one); an error when it names none.
pub fn select(services: Vec<ServiceView>, selector: Option<&str>) -> Result<Vec<ServiceView>> {
    let Some(selector) = selector else { return Ok(services) };
    let chosen: Vec<ServiceView> = services.into_iter().filter(|s| s.is(selector)).collect();
    if chosen.is_empty() {
        anyhow::bail!("no service is named or listens on {selector:?} (`lb services` lists them)");
    }
    Ok(chosen)
}

/// One flow-table entry.
#[derive(Debug, Serialize)]
pub struct FlowView {
    pub client: String,
    pub client_port: u16,
    pub service: String,
    pub service_port: u16,
    pub protocol: String,
    /// The pinned backend, or null when its backend is gone (the next packet re-balances).
    pub backend: Option<String>,
    pub backend_port: Option<u16>,
    /// How this node reaches the backend: `local`, `full-nat` or `dsr` (lb_common::dsr::Reach).
    pub reach: &'static str,
    /// Full NAT: the source port this node uses towards the backend (null for local backends).
    pub nat_port: Option<u16>,
    /// TCP: seconds since the flow's first packet (when it was pinned).
    pub age_secs: Option<u64>,
    /// UDP: seconds since its last packet (it re-balances after `--udp-timeout`).
    pub idle_secs: Option<u64>,
}

/// Up to `limit` flows, those of the services `only` holds (by service id) when given.
/// A flow that no longer holds its backend (gone, or a UDP flow idle past the timeout:
/// `lb_common::liveness`, as the programs decide) is listed without one.
pub fn flows(dp: &dyn Dataplane, limit: usize, only: Option<&[u32]>, udp_clock: Option<lb_common::liveness::UdpClock>) -> Result<Vec<FlowView>> {
    let backends = dp.backends()?;
    let now = crate::dataplane::monotonic_ns();
    let mut out = Vec::new();
    for (key, info) in dp.flows(limit)? {
        let (Some(client), Some(service)) = (bytes_ip(&key.src, key.family), bytes_ip(&key.dst, key.family)) else { continue };
        let pinned = backends
            .get(info.backend_id as usize)
            .filter(|b| lb_common::liveness::flow_alive(&info, b, key.proto, || udp_clock));
        if only.is_some_and(|ids| !pinned.is_some_and(|b| ids.contains(&b.service_id))) {
            continue;
        }
        let backend = pinned.and_then(|b| Some((bytes_ip(&b.addr, b.family)?, b.port)));
        // The programs stamp TCP flows once (when pinned) and UDP flows on every packet.
        // Wrapping: on a machine up for less time than the test's made-up ages, a stamp "before
        // boot" still reads as that long ago.
        let since = now.wrapping_sub(info.last_seen_ns) / 1_000_000_000;
        let udp = key.proto == lb_common::PROTO_UDP;
        out.push(FlowView {
            client: client.to_string(),
            client_port: key.sport,
            service: service.to_string(),
            service_port: key.dport,
            protocol: Proto::from_number(key.proto).map(|p| p.as_str().to_string()).unwrap_or_else(|| key.proto.to_string()),
            backend: backend.map(|(ip, _)| ip.to_string()),
            backend_port: backend.map(|(_, port)| port),
            reach: lb_common::dsr::Reach::of_flow(info.kind).name(),
            nat_port: (info.kind == lb_common::FLOW_NAT).then_some(info.nat_port),
            age_secs: (!udp).then_some(since),
            idle_secs: udp.then_some(since),
        });
    }
    Ok(out)
}

pub fn print_flows(flows: &[FlowView], json: bool, out: &mut impl Write) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, flows)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{:<5} {:<44} {:<44} {:<44} {:<8} {:>12}", "PROTO", "CLIENT", "SERVICE", "BACKEND", "REACH", "AGE/IDLE")?;
    for f in flows {
        let backend = match (&f.backend, f.backend_port) {
            (Some(a), Some(p)) => format!("{}:{p}", bracket(a)),
            _ => "(gone)".into(),
        };
        let time = match (f.age_secs, f.idle_secs) {
            (Some(age), _) => format!("{age} s"),
            (_, Some(idle)) => format!("idle {idle} s"),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{:<5} {:<44} {:<44} {:<44} {:<8} {:>12}",
            f.protocol,
            format!("{}:{}", bracket(&f.client), f.client_port),
            format!("{}:{}", bracket(&f.service), f.service_port),
            backend,
            f.reach,
            time
        )?;
    }
    Ok(())
}

/// Everything `lb stats` shows.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Packets per outcome (forwards and every other verdict), by name.
    pub verdicts: BTreeMap<&'static str, u64>,
    pub services: Vec<ServiceStats>,
    pub interfaces: Vec<IfaceStat>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStats {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub protocol: Proto,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// New flows refused: the client was outside the service's source ranges.
    pub source_refused: u64,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Serialize)]
pub struct BackendStats {
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub state: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

pub fn stats(dp: &dyn Dataplane) -> Result<Stats> {
    let verdicts = dp.verdicts()?;
    let verdicts = Reason::ALL.iter().zip(verdicts).map(|(reason, n)| (reason.name(), n)).collect();
    let views = self::services(dp)?;
    let service_ids = views.iter().map(|v| v.id + 1).max().unwrap_or(0);
    let backend_ids = views.iter().flat_map(|v| v.backends.iter().map(|b| b.id + 1)).max().unwrap_or(0);
    let (service_stats, backend_stats) = (dp.service_stats(service_ids)?, dp.backend_stats(backend_ids)?);
    let refusals = dp.source_refusals(service_ids)?;
    let mut services = Vec::new();
    for view in views {
        let total = service_stats.get(view.id as usize).copied().unwrap_or_default();
        let mut backends = Vec::new();
        for b in &view.backends {
            let c = backend_stats.get(b.id as usize).copied().unwrap_or_default();
            backends.push(BackendStats {
                address: b.address.clone(),
                port: b.port,
                weight: b.weight,
                state: b.state,
                packets: c.packets,
                bytes: c.bytes,
                new_flows: c.new_flows,
            });
        }
        services.push(ServiceStats {
            name: view.name,
            address: view.address,
            port: view.port,
            protocol: view.protocol,
            packets: total.packets,
            bytes: total.bytes,
            new_flows: total.new_flows,
            source_refused: refusals.get(view.id as usize).copied().unwrap_or_default(),
            backends,
        });
    }
    Ok(Stats { verdicts, services, interfaces: dp.iface_stats()? })
}

/// `lb stats`; `names` maps the agent's uplink indexes to their names (else the index is
/// looked up in this process's network namespace).
pub fn print_stats(stats: &Stats, names: &std::collections::BTreeMap<u32, String>, json: bool, out: &mut impl Write) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, stats)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{:<24} {:>12}", "OUTCOME", "PACKETS")?;
    for (name, n) in &stats.verdicts {
        writeln!(out, "{name:<24} {n:>12}")?;
    }
    writeln!(out, "\n{:<28} {:<5} {:<24} {:>12} {:>14} {:>10} {:>8}", "SERVICE/BACKEND", "PROTO", "NAME", "PACKETS", "BYTES", "NEW FLOWS", "REFUSED")?;
    for s in &stats.services {
        let service = format!("{}:{}", bracket(&s.address), s.port);
        let row = (s.protocol.as_str(), &s.name, s.packets, s.bytes, s.new_flows, s.source_refused);
        writeln!(out, "{service:<28} {:<5} {:<24} {:>12} {:>14} {:>10} {:>8}", row.0, row.1, row.2, row.3, row.4, row.5)?;
        for b in &s.backends {
            let backend = format!("  → {}:{}", bracket(&b.address), b.port);
            writeln!(out, "{backend:<28} {:<5} {:<24} {:>12} {:>14} {:>10}", "", b.state, b.packets, b.bytes, b.new_flows)?;
        }
    }
    writeln!(out, "\n{:<16} {:>7} {:<12} {:>12} {:>14}", "IFACE", "IFINDEX", "HOOK", "PACKETS", "BYTES")?;
    for i in &stats.interfaces {
        let name = names.get(&i.ifindex).cloned().or_else(|| preflight::interface_name(i.ifindex)).unwrap_or_else(|| "-".into());
        writeln!(out, "{name:<16} {:>7} {:<12} {:>12} {:>14}", i.ifindex, i.hook, i.packets, i.bytes)?;
    }
    Ok(())
}

/// The announcer's line of `lb status`.
fn print_bgp(bgp: &crate::status::BgpStatus, out: &mut impl Write) -> Result<()> {
    let state = match (&bgp.last_error, &bgp.data_path_error) {
        (Some(err), _) => format!("FAILING ({} failures): {err}", bgp.failures),
        (None, Some(why)) => format!("every VIP withdrawn: {why}"),
        (None, None) => format!("announcing {} VIPs", bgp.announced.len()),
    };
    writeln!(out, "BGP via BIRD ({}, routes in {}): {state}", bgp.socket, bgp.routes)?;
    Ok(())
}

/// The direct-server-return line of `lb status`.
/// What a running agent serves besides the data path: metrics, the HTTP path, DNS (with
/// whether its answers are Marathon's last good ones).
fn print_listeners(status: &crate::status::AgentStatus, out: &mut impl Write) -> std::io::Result<()> {
    if let Some(at) = status.metrics_listen.as_deref() {
        writeln!(out, "metrics: http://{at}/metrics  status page: http://{at}/")?;
    }
    if let Some(http) = &status.http {
        writeln!(out, "HTTP path: {} routes on {}", http.routes, http.listen.join(", "))?;
    }
    if let Some(dns) = &status.dns {
        let stale = status.marathon.as_ref().is_some_and(|m| m.failures_in_a_row > 0);
        let stale = if stale { " (Marathon unreachable: serving the last good answers)" } else { "" };
        writeln!(out, "DNS: {} records for {} and {} on {}{stale}", dns.records, dns.domain, dns.vip_domain, dns.listen.join(", "))?;
    }
    Ok(())
}

fn print_dsr(dsr: &crate::status::DsrStatus, out: &mut impl Write) -> Result<()> {
    let list = |l: &[String]| if l.is_empty() { "nowhere".to_owned() } else { l.join(", ") };
    writeln!(out, "DSR (GUE on UDP {}): encapsulating to {}; decapsulating from {}", dsr.port, list(&dsr.nodes), list(&dsr.decap_from))?;
    Ok(())
}

/// `lb status`.
pub fn print_status(view: &crate::status::StatusView, json: bool, out: &mut impl Write) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, view)?;
        writeln!(out)?;
        return Ok(());
    }
    let status = &view.agent;
    let ago = |t: u64| format!("{} s ago", crate::status::now().saturating_sub(t));
    if view.running {
        writeln!(out, "agent: running, pid {}  pin dir {}", status.pid, status.pin_dir)?;
    } else {
        writeln!(out, "agent: NOT RUNNING (pin dir {}); start it with `lb run`", status.pin_dir)?;
    }
    if !view.maps_pinned {
        writeln!(out, "data path: nothing pinned")?;
        return Ok(());
    }
    let serving = if view.running { "" } else { " (kept by the kernel, not updated while no agent runs)" };
    writeln!(out, "services {}{serving}  last agent report {}", status.services, ago(status.updated))?;
    for warning in &status.warnings {
        writeln!(out, "WARNING: {warning}")?;
    }
    if view.running {
        print_listeners(status, out)?;
    }
    if let Some(bgp) = &status.bgp {
        print_bgp(bgp, out)?;
    }
    if let Some(dsr) = &status.dsr {
        print_dsr(dsr, out)?;
    }
    if !status.not_programmed.is_empty() {
        writeln!(out, "NOT PROGRAMMED: {} services (limits reached)", status.not_programmed.len())?;
        for failure in &status.not_programmed {
            writeln!(out, "  {failure}")?;
        }
    }
    if let Some(settings) = &view.settings {
        writeln!(
            out,
            "settings: nat ports {} (replies recognised on {})  udp timeout {} s",
            settings.nat_ports, settings.nat_reply_ports, settings.udp_timeout_secs
        )?;
    }
    for u in &status.uplinks {
        writeln!(out, "uplink {} (ifindex {}): balancing in {}", u.name, u.ifindex, u.ingress_hook)?;
    }
    match &status.exposure {
        Some(e) => writeln!(out, "exposure: {} (apps without a group: {})", e.expose.join("  "), e.default_group)?,
        None => writeln!(out, "exposure: every app on every address and uplink (no --expose)")?,
    }
    match &status.marathon {
        Some(m) => print_marathon_status(m, out),
        None => Ok(writeln!(out, "marathon: not configured")?),
    }
}

/// The Marathon part of `lb status`.
fn print_marathon_status(m: &crate::status::MarathonStatus, out: &mut impl Write) -> Result<()> {
    let ago = |t: u64| format!("{} s ago", crate::status::now().saturating_sub(t));
    writeln!(out, "marathon: {}", m.urls.join(", "))?;
    writeln!(out, "  answering:    {}", if m.current.is_empty() { "-" } else { &m.current })?;
    writeln!(out, "  event stream: {}", m.event_stream.as_deref().unwrap_or("not connected"))?;
    writeln!(out, "  last sync:    {}", m.last_sync.map_or("never".to_string(), ago))?;
    match &m.last_error {
        Some(err) => writeln!(out, "  FAILING ({} in a row, last programmed state kept): {err}", m.failures_in_a_row)?,
        None if !m.skipped_apps.is_empty() => writeln!(out, "  state:        DEGRADED (apps below keep their last good definition, if any)")?,
        None => writeln!(out, "  state:        ok")?,
    }
    writeln!(out, "  apps {} (pods {})  skipped apps {}  skipped tasks/ports {}", m.apps, m.pods, m.skipped_apps.len(), m.skipped_tasks)?;
    for (app, why) in &m.skipped_apps {
        writeln!(out, "    {app}: {why}")?;
    }
    for (app, what) in &m.skipped {
        for item in what {
            writeln!(out, "    {app}: skipped {item}")?;
        }
    }
    writeln!(
        out,
        "  events applied {}  single-app reads {}  full re-lists {} (last: {})",
        m.events_applied, m.app_reads, m.relists, m.last_relist_reason
    )?;
    Ok(())
}

/// `lb vips`.
pub fn print_vips(vips: &std::collections::BTreeMap<String, String>, json: bool, out: &mut impl Write) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, vips)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{:<40} ADDRESS", "NAME")?;
    for (name, addr) in vips {
        writeln!(out, "{name:<40} {addr}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dataplane::fake::FakeDataplane, control::reconcile::Reconciler, sources::services_file};

    fn programmed() -> FakeDataplane {
        let mut dp = FakeDataplane::new(8, 32, lb_common::ring_pool::CHUNK_SLOTS);
        let desired = services_file::parse(
            r#"{"services":[
              {"name":"web","address":"10.0.0.1","port":80,"source_ranges":["10.0.0.0/8","2001:db8::/32"],"backends":[
                {"address":"10.1.0.6","port":31006,"weight":0},{"address":"10.1.0.5","port":31005,"weight":2}]},
              {"name":"dns","port":10053,"protocol":"udp","backends":[{"address":"fd00::7","port":53}]}]}"#,
            "t.json",
        )
        .unwrap();
        Reconciler::default().apply(&desired, &mut dp).unwrap();
        dp
    }

    #[test]
    fn services_json_is_the_documented_shape() {
        let mut out = Vec::new();
        print_services(&services_served(&programmed(), None).unwrap(), true, &mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"address": "10.0.0.1", "port": 80, "protocol": "tcp", "name": "web", "groups": ["*"], "served_on": [], "source_ranges": ["10.0.0.0/8", "2001:db8::/32"], "backends": [
                    {"address": "10.1.0.5", "port": 31005, "weight": 2, "state": "active"},
                    {"address": "10.1.0.6", "port": 31006, "weight": 0, "state": "draining"}]},
                {"address": "::", "port": 10053, "protocol": "udp", "name": "dns", "groups": ["*"], "served_on": [], "source_ranges": [], "backends": [
                    {"address": "fd00::7", "port": 53, "weight": 1, "state": "active"}]}
            ])
        );
    }

    #[test]
    fn services_table_has_a_row_per_backend() {
        let mut out = Vec::new();
        print_services(&services_served(&programmed(), None).unwrap(), false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.contains("[fd00::7]:53"), "{text}");
    }

    #[test]
    fn one_service_is_chosen_by_name_or_as_listed() {
        let all = || services(&programmed()).unwrap();
        for selector in ["web", "10.0.0.1:80"] {
            let chosen = select(all(), Some(selector)).unwrap();
            assert_eq!(chosen.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["web"], "{selector}");
        }
        assert_eq!(select(all(), Some("[::]:10053")).unwrap()[0].name, "dns");
        assert_eq!(select(all(), None).unwrap().len(), 2);
        let none = select(all(), Some("10.0.0.1:81")).unwrap_err().to_string();
        assert!(none.contains("10.0.0.1:81") && none.contains("lb services"), "{none}");
    }

    #[test]
    fn flows_show_tcp_age_and_udp_idle_time_and_filter_by_service() {
        let mut dp = programmed();
        let web = services(&dp).unwrap().into_iter().find(|s| s.name == "web").unwrap();
        let dns = services(&dp).unwrap().into_iter().find(|s| s.name == "dns").unwrap();
        let backend_of = |svc: &ServiceView| svc.backends.iter().find(|b| b.state == "active").unwrap().id;
        let flow = |proto, backend: u32, seconds_ago: u64| {
            let key = lb_common::FlowKey { src: lb_common::v4_bytes([10, 9, 0, 1]), dst: lb_common::v4_bytes([10, 0, 0, 1]), sport: 40000, dport: 80, proto, family: 4, _pad: 0 };
            let generation = dp.backends[backend as usize].generation;
            let info = lb_common::FlowInfo { backend_id: backend, backend_generation: generation, last_seen_ns: crate::dataplane::monotonic_ns().wrapping_sub(seconds_ago * 1_000_000_000), ..Default::default() };
            (key, info)
        };
        let flows_in = vec![flow(lb_common::PROTO_TCP, backend_of(&web), 30), flow(lb_common::PROTO_UDP, backend_of(&dns), 7)];
        dp.flows = flows_in;
        let clock = Some(lb_common::liveness::UdpClock { now_ns: crate::dataplane::monotonic_ns(), timeout_ns: 120_000_000_000 });
        let all = flows(&dp, 10, None, clock).unwrap();
        assert_eq!((all[0].age_secs, all[0].idle_secs), (Some(30), None));
        assert_eq!((all[1].age_secs, all[1].idle_secs), (None, Some(7)));
        let only_web = flows(&dp, 10, Some(&[web.id]), clock).unwrap();
        assert_eq!(only_web.len(), 1);
        assert_eq!(only_web[0].backend_port, Some(31005));
    }

    #[test]
    fn stats_name_every_verdict_and_sum_services() {
        let mut dp = programmed();
        dp.verdicts[Reason::NoBackend as usize] = 7;
        dp.service_stats.insert(0, lb_common::TrafficCounters { packets: 3, bytes: 180, new_flows: 1 });
        let s = stats(&dp).unwrap();
        assert_eq!(s.verdicts["no_backend"], 7);
        assert_eq!(s.verdicts.len(), lb_common::reasons::COUNT as usize);
        let web = s.services.iter().find(|x| x.name == "web").unwrap();
        assert_eq!((web.packets, web.new_flows), (3, 1));
    }
}
