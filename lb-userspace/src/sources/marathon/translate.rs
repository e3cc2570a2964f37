//! Marathon apps → desired services. Pure: DNS goes through [`Resolver`], and the health
//! verdicts that must survive a Marathon failover live in a [`HealthMemory`] the caller keeps.
//!
//! The rules (see docs/marathon-api.md for what real consumers do):
//! - network mode as marathon-lb decides it (1.4 `ipAddress`/`docker.network`, 1.5 `networks`);
//! - every port of an app with a service port is a service on the node addresses; every VIP
//!   label on a port (`VIP_*`/`vip*`) is a service on that VIP; `udp,tcp` gives both;
//! - backends: host and bridge networking → the task's host (resolved) : `task.ports[i]`;
//!   container networks → `task.ipAddresses[0]` : the container port;
//! - liveness: TASK_RUNNING (or no state, as ≤0.15 sent) with health results all alive is
//!   active; an unhealthy result, TASK_KILLING, TASK_UNREACHABLE/LOST, or a task of an old
//!   version while a deployment has healthy new tasks is draining (weight 0: no new flows,
//!   established ones continue); staging/starting/terminal tasks are not backends. A task
//!   reported without health results (grace period, Marathon failover) keeps its last verdict.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    net::IpAddr,
};

use super::{
    app::{App, DiscoveryPort, PortDefinition, PortMapping, Task},
    resolve::Resolver,
    vip::{self, VipRange, VipTarget},
};
use crate::{
    dns::zone::{AppDns, DnsPort, DnsTask},
    http::{self, labels::HttpPort},
    desired::{parse_groups, parse_sources, Backend, Desired, Groups, Proto, Service, ServiceAddr, ServiceId, Sources},
};

/// Last health verdict per task id, so that results missing for a moment (Marathon failover,
/// a new leader that has not run the checks yet) do not take healthy backends away.
#[derive(Debug, Default)]
pub struct HealthMemory {
    verdicts: HashMap<TaskKey, bool>,
}

/// A task id as 64 bits. The health memory and each app's task list keep these rather than
/// copies of the ids (Marathon's are ~60 bytes; two ids of a 30,000-task cluster share a key
/// with probability ~10^-11, and then only share a remembered health verdict).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct TaskKey(u64);

impl TaskKey {
    fn of(id: &str) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        id.hash(&mut hasher);
        Self(hasher.finish())
    }
}

/// What translating one app produces. The named VIPs are borrowed: every app reads the same
/// cluster-wide allocation (cloning it per app made a 10,000-app sync quadratic).
struct AppTranslation<'a> {
    desired: Desired,
    dns: AppDns,
    /// Tasks, ports or labels that were skipped: (app id, what and why).
    warnings: Vec<(String, String)>,
    named_vips: &'a BTreeMap<String, IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NetMode {
    Host,
    Bridge,
    Container,
}

/// One port of an app.
struct AppPort<'a> {
    index: usize,
    service_port: Option<u16>,
    protocols: Vec<Proto>,
    container_port: Option<u16>,
    name: Option<&'a str>,
    labels: &'a [(String, String)],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Liveness {
    Active,
    Draining,
    Excluded,
}

/// What one app contributes: its services (with only its own backends), what was skipped,
/// and the tasks and named VIPs it has (to forget or re-allocate when it changes).
#[derive(Debug, Default)]
struct AppPart {
    services: Vec<Service>,
    /// Ports the HTTP path routes (marathon-lb's labels).
    http: Vec<HttpPort>,
    warnings: Vec<(String, String)>,
    error: Option<String>,
    tasks: Vec<TaskKey>,
    /// Sorted, without repeats.
    vip_names: Vec<String>,
    /// What DNS serves of the app: its active tasks as the services above have them.
    dns: AppDns,
}

/// The translation of every app, kept so that a change to a few apps re-translates only those
/// and re-merges only the services they contribute to: an event costs work in proportion to
/// the apps it touches, not to the cluster. Named VIP addresses depend on the set of all
/// names, so a change to that set re-translates everything (rare: a label added or removed).
#[derive(Debug, Default)]
pub struct Translator {
    /// By app id; the ids are shared with `contributors` (one allocation per app, not per
    /// service).
    parts: BTreeMap<Arc<str>, AppPart>,
    /// Apps whose part has an error or warnings: what the status lists, found without a walk
    /// over every app at every event.
    flagged: BTreeSet<Arc<str>>,
    /// Service → the apps contributing to it (usually one; apps may share a VIP).
    /// (Sorted lists: almost always one app, where a set would cost a tree node per service.)
    contributors: BTreeMap<ServiceId, Vec<Arc<str>>>,
    desired: Desired,
    named_vips: BTreeMap<String, IpAddr>,
    /// Bumped whenever `named_vips` changes, so readers copy it only then.
    vips_epoch: u64,
    /// Named VIPs that did not fit `--vip-cidr`.
    vip_warnings: Vec<(String, String)>,
    /// The services the last update re-merged; None after a rebuild (any may have changed).
    changed: Option<BTreeSet<ServiceId>>,
    /// Apps with ports the HTTP path routes: the route table is built from these alone.
    http_apps: BTreeSet<Arc<str>>,
    /// The apps the last update re-translated; None after a rebuild (any may have changed).
    changed_apps: Option<BTreeSet<String>>,
}

impl Translator {
    /// Translates every app from scratch.
    pub fn rebuild<'a>(
        &mut self,
        apps: impl Iterator<Item = &'a App> + Clone,
        resolver: &mut dyn Resolver,
        health: &mut HealthMemory,
        vips: &VipRange,
    ) {
        let names: BTreeSet<String> = apps.clone().flat_map(vip_names).collect();
        self.allocate(&names, vips);
        let mut seen_tasks = BTreeSet::new();
        self.parts.clear();
        self.flagged.clear();
        self.http_apps.clear();
        for app in apps {
            let part = self.translate_one(app, resolver, health);
            seen_tasks.extend(part.tasks.iter().copied());
            self.insert_part(Arc::from(app.id.as_str()), part);
        }
        health.verdicts.retain(|task, _| seen_tasks.contains(task));
        self.contributors.clear();
        for (app, part) in &self.parts {
            for service in &part.services {
                add_contributor(self.contributors.entry(service.id).or_default(), app);
            }
        }
        self.desired.clear();
        let ids: Vec<ServiceId> = self.contributors.keys().copied().collect();
        self.merge(ids);
        self.changed = None;
        self.changed_apps = None;
    }

    /// Re-translates the apps `changed` names (those `apps` no longer has are dropped).
    pub fn update<'a>(
        &mut self,
        apps: impl Iterator<Item = &'a App> + Clone,
        find: impl Fn(&str) -> Option<&'a App>,
        changed: &BTreeSet<String>,
        resolver: &mut dyn Resolver,
        health: &mut HealthMemory,
        vips: &VipRange,
    ) {
        // Only when a changed app's named VIPs differ can the set of names (and so every
        // allocation) differ; only then is the whole set compared.
        let names_touched = changed.iter().any(|id| {
            let old = self.parts.get(id.as_str()).map(|p| &p.vip_names);
            let new = find(id).map(vip_names).unwrap_or_default();
            old.map_or(!new.is_empty(), |old| *old != new)
        });
        if names_touched {
            let mut names: BTreeSet<String> =
                self.parts.iter().filter(|(id, _)| !changed.contains(&***id)).flat_map(|(_, p)| p.vip_names.iter().cloned()).collect();
            names.extend(changed.iter().filter_map(|id| find(id)).flat_map(vip_names));
            if names != self.named_vips.keys().cloned().chain(self.vip_warnings.iter().map(|(n, _)| n.clone())).collect() {
                return self.rebuild(apps, resolver, health, vips);
            }
        }
        let mut touched = BTreeSet::new();
        for id in changed {
            if let Some(old) = self.remove_part(id) {
                for service in &old.services {
                    touched.insert(service.id);
                    if let Some(apps) = self.contributors.get_mut(&service.id) {
                        apps.retain(|app| **app != **id);
                    }
                }
                let kept: BTreeSet<TaskKey> = find(id).into_iter().flat_map(|a| a.tasks.iter().flatten().map(|t| TaskKey::of(&t.id))).collect();
                for task in old.tasks.iter().filter(|t| !kept.contains(t)) {
                    health.verdicts.remove(task);
                }
            }
            let Some(app) = find(id) else { continue };
            let part = self.translate_one(app, resolver, health);
            let app_id: Arc<str> = Arc::from(id.as_str());
            for service in &part.services {
                touched.insert(service.id);
                add_contributor(self.contributors.entry(service.id).or_default(), &app_id);
            }
            self.insert_part(app_id, part);
        }
        self.merge(touched.iter().copied());
        self.changed = Some(touched);
        self.changed_apps = Some(changed.clone());
    }

    /// The apps whose DNS records the last update may have changed; None after a rebuild.
    pub fn changed_apps(&self) -> Option<&BTreeSet<String>> {
        self.changed_apps.as_ref()
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// What DNS serves of the app `id` (None: no such app).
    pub fn dns(&self, id: &str) -> Option<&AppDns> {
        self.parts.get(id).map(|p| &p.dns)
    }

    /// Every app's DNS records.
    pub fn all_dns(&self) -> impl Iterator<Item = &AppDns> {
        self.parts.values().map(|p| &p.dns)
    }

    /// The services whose desired state the last update may have changed; None after a
    /// rebuild, where any may have.
    pub fn changed(&self) -> Option<&BTreeSet<ServiceId>> {
        self.changed.as_ref()
    }

    pub fn named_vips(&self) -> &BTreeMap<String, IpAddr> {
        &self.named_vips
    }

    /// Changes whenever the named VIPs do.
    pub fn vips_epoch(&self) -> u64 {
        self.vips_epoch
    }

    /// (app id, why) for apps skipped whole.
    pub fn app_errors(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.flagged.iter().filter_map(|id| self.parts.get(id)?.error.clone().map(|e| (id.to_string(), e)))
    }

    /// (app id, what and why) for skipped tasks, ports and labels; full VIP ranges by name.
    pub fn warnings(&self) -> impl Iterator<Item = &(String, String)> + '_ {
        let parts = self.flagged.iter().filter_map(|id| self.parts.get(id));
        self.vip_warnings.iter().chain(parts.flat_map(|p| p.warnings.iter()))
    }

    /// (app id, port) of every app port the HTTP path routes.
    pub fn http_ports(&self) -> impl Iterator<Item = (&str, &HttpPort)> + '_ {
        self.http_apps.iter().filter_map(|id| self.parts.get(id).map(|p| (&**id, p))).flat_map(|(id, p)| p.http.iter().map(move |port| (id, port)))
    }

    fn insert_part(&mut self, id: Arc<str>, part: AppPart) {
        if part.error.is_some() || !part.warnings.is_empty() {
            self.flagged.insert(id.clone());
        }
        if !part.http.is_empty() {
            self.http_apps.insert(id.clone());
        }
        self.parts.insert(id, part);
    }

    fn remove_part(&mut self, id: &str) -> Option<AppPart> {
        self.flagged.remove(id);
        self.http_apps.remove(id);
        self.parts.remove(id)
    }

    fn allocate(&mut self, names: &BTreeSet<String>, vips: &VipRange) {
        let mut named_vips = BTreeMap::new();
        self.vip_warnings.clear();
        let names: Vec<String> = names.iter().cloned().collect();
        for (name, ip) in vip::allocate(&names, vips) {
            match ip {
                Some(ip) => {
                    named_vips.insert(name, ip);
                }
                None => self.vip_warnings.push((name.clone(), format!("named VIP {name}: --vip-cidr is full"))),
            }
        }
        if named_vips != self.named_vips {
            self.named_vips = named_vips;
            self.vips_epoch += 1;
        }
    }

    fn translate_one(&self, app: &App, resolver: &mut dyn Resolver, health: &mut HealthMemory) -> AppPart {
        let mut out = AppTranslation { desired: Desired::new(), dns: AppDns::default(), warnings: Vec::new(), named_vips: &self.named_vips };
        let mut tasks = BTreeSet::new();
        let error = translate_app(app, resolver, health, &mut out, &mut tasks).err().map(|e| e.to_string());
        let http = if error.is_none() { http_ports(app, &self.named_vips, &mut out.warnings) } else { Vec::new() };
        AppPart {
            services: out.desired.into_values().collect(),
            http,
            warnings: out.warnings,
            error,
            tasks: tasks.into_iter().collect(),
            vip_names: vip_names(app),
            dns: out.dns,
        }
    }

    /// Recomputes the merged services `ids` from their contributors' parts.
    fn merge(&mut self, ids: impl IntoIterator<Item = ServiceId>) {
        for id in ids {
            let apps = self.contributors.get(&id).filter(|apps| !apps.is_empty());
            let Some(apps) = apps else {
                self.contributors.remove(&id);
                self.desired.remove(&id);
                continue;
            };
            let mut merged: Option<Service> = None;
            for app in apps {
                let Some(part) = self.parts.get(app).and_then(|p| p.services.iter().find(|s| s.id == id)) else { continue };
                match &mut merged {
                    Some(service) => {
                        service.backends.extend(part.backends.iter().copied());
                        // One service: served wherever any of its apps asks, to the clients any
                        // of them admits (an app without ranges does not open it to all).
                        service.groups.extend(part.groups.iter().cloned());
                        service.sources.extend(part.sources.iter().copied());
                    }
                    None => merged = Some(part.clone()),
                }
            }
            let Some(mut service) = merged else {
                self.desired.remove(&id);
                continue;
            };
            service.backends.sort();
            service.backends.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
            // A service port is offered for IPv6 only where some task serves IPv6.
            if id.addr == (ServiceAddr::NodePort { v6: true }) && service.backends.is_empty() {
                self.desired.remove(&id);
            } else {
                self.desired.insert(id, service);
            }
        }
    }
}

/// Adds `app` to a service's sorted contributor list.
fn add_contributor(apps: &mut Vec<Arc<str>>, app: &Arc<str>) {
    if let Err(at) = apps.binary_search(app) {
        // Almost always the only one: room for exactly one, not the four a push reserves.
        apps.reserve_exact(1);
        apps.insert(at, app.clone());
    }
}

/// The named VIPs an app's labels ask for, sorted, without repeats.
fn vip_names(app: &App) -> Vec<String> {
    let mut names: Vec<String> = named_vip_labels(&app_ports(app, network_mode(app))).map(|(_, name, _)| name).collect();
    names.sort();
    names.dedup();
    names
}

/// Each readable named-VIP label on `ports`: (its port, the VIP name, the VIP port).
fn named_vip_labels<'a>(ports: &'a [AppPort<'a>]) -> impl Iterator<Item = (&'a AppPort<'a>, String, u16)> + 'a {
    ports.iter().flat_map(|port| {
        port.labels.iter().filter_map(move |(key, value)| match vip::parse_label(key, value)?.ok()? {
            vip::VipLabel { target: VipTarget::Named(name), port: vip_port, .. } => Some((port, name, vip_port)),
            _ => None,
        })
    })
}

/// The app's ports the HTTP path routes; a port whose labels cannot be read is left out, with
/// the reason among the app's warnings.
fn http_ports(app: &App, named_vips: &BTreeMap<String, IpAddr>, warnings: &mut Vec<(String, String)>) -> Vec<HttpPort> {
    let mut out = Vec::new();
    if !app.labels.0.iter().any(|(key, _)| key.starts_with("HAPROXY_")) {
        return out;
    }
    for port in app_ports(app, network_mode(app)).iter().filter(|p| p.protocols.contains(&Proto::Tcp)) {
        let services = http_services(port, named_vips);
        if services.is_empty() {
            continue;
        }
        match http::labels::port(&app.labels.0, port.index, services) {
            Ok(Some(http)) => out.push(http),
            Ok(None) => {}
            Err(err) => warnings.push((app.id.clone(), format!("port {}: not on the HTTP path: {err}", port.index))),
        }
    }
    out
}

/// The TCP services whose backends the HTTP path routes a port to: its service port's, else
/// (a pod endpoint has none) its VIPs'.
fn http_services(port: &AppPort, named_vips: &BTreeMap<String, IpAddr>) -> Vec<ServiceId> {
    if let Some(service_port) = port.service_port {
        return ServiceId::node_port_tcp(service_port).to_vec();
    }
    let vip = |(key, value): &(String, String)| {
        let label = vip::parse_label(key, value)?.ok()?;
        Some(ServiceId { addr: ServiceAddr::Vip(label.target.address(named_vips)?), port: label.port, proto: Proto::Tcp })
    };
    port.labels.iter().filter_map(vip).collect()
}

/// Why a whole app is skipped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum AppSkip {
    #[error("no id")]
    NoId,
}

fn translate_app(
    app: &App,
    resolver: &mut dyn Resolver,
    health: &mut HealthMemory,
    out: &mut AppTranslation,
    seen_tasks: &mut BTreeSet<TaskKey>,
) -> Result<(), AppSkip> {
    if app.id.is_empty() {
        return Err(AppSkip::NoId);
    }
    let mode = network_mode(app);
    let ports = app_ports(app, mode);
    let tasks = app.tasks.as_deref().unwrap_or_default();
    let has_checks = app.health_checks.as_ref().is_some_and(|c| !c.is_empty());
    let mut liveness: Vec<Liveness> = tasks.iter().map(|t| task_liveness(t, has_checks, health)).collect();
    seen_tasks.extend(tasks.iter().map(|t| TaskKey::of(&t.id)));
    demote_replaced(app, tasks, &mut liveness);
    out.dns = app_dns(app, tasks, &liveness, &ports, mode, resolver);

    for port in &ports {
        let (groups, sources) = match port_groups(app, port.index).and_then(|g| Ok((g, port_sources(app, port.index)?))) {
            Ok(found) => found,
            Err(why) => {
                // Off rather than served where no group would put it.
                out.warnings.push((app.id.clone(), format!("port {}: not served: {why}", port.index)));
                continue;
            }
        };
        let ids = service_ids(app, port, out);
        if ids.is_empty() {
            continue;
        }
        let mut backends = Vec::new();
        for (task, live) in tasks.iter().zip(&liveness) {
            if *live == Liveness::Excluded {
                continue;
            }
            match task_backend(task, port, mode, resolver) {
                Ok(addr_port) => backends.push((addr_port, *live)),
                Err(why) => out.warnings.push((app.id.clone(), format!("task {} port {}: {why}", task.id, port.index))),
            }
        }
        for (id, name) in ids {
            let service = out.desired.entry(id).or_insert_with(|| Service { id, name, groups: groups.clone(), sources: sources.clone(), backends: Vec::new() });
            for ((addr, bport), live) in &backends {
                if addr.is_ipv6() != id.is_v6() {
                    continue;
                }
                let weight = if *live == Liveness::Active { 1 } else { 0 };
                service.backends.push(Backend { addr: *addr, port: *bport, weight });
            }
        }
    }
    Ok(())
}

/// The app's active tasks as DNS names them: where each is reached (the backend address the
/// services use), its agent, and its ports by protocol and name.
fn app_dns(app: &App, tasks: &[Task], liveness: &[Liveness], ports: &[AppPort], mode: NetMode, resolver: &mut dyn Resolver) -> AppDns {
    let mut dns = AppDns { app_id: app.id.clone(), ..AppDns::default() };
    for (task, _) in tasks.iter().zip(liveness).filter(|(_, l)| **l == Liveness::Active) {
        let mut record = DnsTask::new(&task.id, task.slave_id.as_deref());
        let host = task.host.as_deref().filter(|h| !h.is_empty());
        record.host = host.and_then(|h| h.parse().ok().or_else(|| resolver.resolve(h)));
        record.host_ports = task.ports.iter().flatten().filter_map(|p| port16(*p)).collect();
        for port in ports {
            let Ok((addr, number)) = task_backend(task, port, mode, resolver) else { continue };
            record.addr.get_or_insert(addr);
            let name = port.name.map(crate::dns::names::label).unwrap_or_default();
            record.ports.push(DnsPort { port: number, protocols: port.protocols.clone(), name });
        }
        if record.addr.is_none() && mode != NetMode::Container {
            record.addr = record.host;
        }
        dns.tasks.push(record);
    }
    for (port, name, vip_port) in named_vip_labels(ports) {
        dns.vips.extend(port.protocols.iter().map(|&proto| (name.clone(), proto, vip_port)));
    }
    dns
}

/// The groups of the app's port `index`: `HAPROXY_{index}_GROUP`, else `HAPROXY_GROUP` (app
/// labels, comma-separated, as marathon-lb reads them); empty if neither is set.
fn port_groups(app: &App, index: usize) -> Result<Groups, String> {
    let label = |key: &str| app.labels.0.iter().find(|(k, _)| k == key).map(|(k, v)| (k.clone(), v));
    let Some((key, value)) = label(&format!("HAPROXY_{index}_GROUP")).or_else(|| label("HAPROXY_GROUP")) else {
        return Ok(Groups::new());
    };
    parse_groups(value).map_err(|why| format!("{key}: {why}"))
}

/// The source ranges of the app's port `index`: `HAPROXY_{index}_BACKEND_NETWORK_ALLOWED_ACL`,
/// space-separated addresses and prefixes as marathon-lb puts them in HAProxy's `src` ACL;
/// empty (every client) if unset or blank, as marathon-lb ignores a blank one.
fn port_sources(app: &App, index: usize) -> Result<Sources, String> {
    let key = format!("HAPROXY_{index}_BACKEND_NETWORK_ALLOWED_ACL");
    let Some((_, value)) = app.labels.0.iter().find(|(k, _)| *k == key) else { return Ok(Sources::new()) };
    parse_sources([value.as_str()]).map_err(|why| format!("{key}: {why}"))
}

/// marathon-lb's rule: host by default; 1.4 `ipAddress` → container, `docker.network` USER →
/// container, BRIDGE → bridge; then each 1.5 `networks[].mode` overrides (last wins).
fn network_mode(app: &App) -> NetMode {
    let mut mode = NetMode::Host;
    if app.ip_address.is_some() {
        mode = NetMode::Container;
    }
    match app.container.as_ref().and_then(|c| c.docker.as_ref()).and_then(|d| d.network.as_deref()) {
        Some("USER") => mode = NetMode::Container,
        Some("BRIDGE") => mode = NetMode::Bridge,
        _ => {}
    }
    for network in app.networks.iter().flatten() {
        mode = match network.mode.as_deref() {
            Some("host") => NetMode::Host,
            Some("container/bridge") => NetMode::Bridge,
            _ => NetMode::Container,
        };
    }
    mode
}

fn protocols(text: Option<&str>) -> Vec<Proto> {
    Proto::list(text.unwrap_or("tcp")).unwrap_or_default()
}

fn port16(p: Option<u32>) -> Option<u16> {
    p.and_then(|p| u16::try_from(p).ok()).filter(|&p| p > 0)
}

/// The app's ports in order, from whichever fields its networking mode uses.
fn app_ports(app: &App, mode: NetMode) -> Vec<AppPort<'_>> {
    let container = app.container.as_ref();
    let mappings = container
        .and_then(|c| c.docker.as_ref().and_then(|d| d.port_mappings.as_ref()).filter(|m| !m.is_empty()))
        .or_else(|| container.and_then(|c| c.port_mappings.as_ref()));
    match (mode, mappings) {
        (NetMode::Bridge | NetMode::Container, Some(mappings)) if !mappings.is_empty() => mapped_ports(mappings),
        (NetMode::Container, _) => discovery_ports(app),
        _ => defined_ports(app),
    }
}

/// Bridge and container networks: the port mappings.
fn mapped_ports<'a>(mappings: &'a [PortMapping]) -> Vec<AppPort<'a>> {
    let port = |(index, m): (usize, &'a PortMapping)| AppPort {
        index,
        service_port: port16(m.service_port),
        protocols: protocols(m.protocol.as_deref()),
        container_port: port16(m.container_port),
        name: m.name.as_deref(),
        labels: &m.labels.0,
    };
    mappings.iter().enumerate().map(port).collect()
}

/// Marathon 1.4's IP-per-task without mappings: discovery ports, no service ports.
fn discovery_ports<'a>(app: &'a App) -> Vec<AppPort<'a>> {
    let ports = app.ip_address.as_ref().and_then(|i| i.discovery.as_ref()).and_then(|d| d.ports.as_ref());
    let port = |(index, p): (usize, &'a DiscoveryPort)| AppPort {
        index,
        service_port: None,
        protocols: protocols(p.protocol.as_deref()),
        container_port: port16(p.number),
        name: p.name.as_deref(),
        labels: &p.labels.0,
    };
    ports.into_iter().flatten().enumerate().map(port).collect()
}

/// Host networking: `portDefinitions`, else the older `ports` (TCP, no labels).
fn defined_ports<'a>(app: &'a App) -> Vec<AppPort<'a>> {
    let Some(defs) = &app.port_definitions else {
        let port = |(index, p): (usize, &Option<u32>)| AppPort { index, service_port: port16(*p), protocols: vec![Proto::Tcp], container_port: None, name: None, labels: &[] };
        return app.ports.iter().flatten().enumerate().map(port).collect();
    };
    let port = |(index, d): (usize, &'a PortDefinition)| AppPort {
        index,
        service_port: port16(d.port),
        protocols: protocols(d.protocol.as_deref()),
        container_port: None,
        name: d.name.as_deref(),
        labels: &d.labels.0,
    };
    defs.iter().enumerate().map(port).collect()
}

/// The services one port asks for, with their names: its service port (`<app>:<index>`) on
/// the node addresses, for both address families, and each VIP label (named by its value).
fn service_ids(app: &App, port: &AppPort, out: &mut AppTranslation) -> Vec<(ServiceId, String)> {
    let mut ids = Vec::new();
    for &proto in &port.protocols {
        if let Some(service_port) = port.service_port {
            for v6 in [false, true] {
                let id = ServiceId { addr: ServiceAddr::NodePort { v6 }, port: service_port, proto };
                ids.push((id, format!("{}:{}", app.id, port.index)));
            }
        }
        for (key, value) in port.labels {
            match vip::parse_label(key, value) {
                None => {}
                Some(Err(why)) => out.warnings.push((app.id.clone(), format!("port {}: {why}", port.index))),
                Some(Ok(label)) => {
                    let Some(addr) = label.target.address(out.named_vips) else { continue };
                    let id = ServiceId { addr: ServiceAddr::Vip(addr), port: label.port, proto };
                    ids.push((id, value.clone()));
                }
            }
        }
    }
    ids
}

fn task_liveness(task: &Task, has_checks: bool, health: &mut HealthMemory) -> Liveness {
    let state = match task.state.as_deref() {
        None | Some("TASK_RUNNING") => Liveness::Active,
        Some("TASK_KILLING" | "TASK_UNREACHABLE" | "TASK_LOST") => Liveness::Draining,
        Some(_) => return Liveness::Excluded,
    };
    if !has_checks || state != Liveness::Active {
        return state;
    }
    let key = TaskKey::of(&task.id);
    let Some(verdict) = task.all_alive else {
        // No results: keep the last verdict; a task never seen healthy is not a backend yet.
        return match health.verdicts.get(&key) {
            Some(true) => Liveness::Active,
            Some(false) => Liveness::Draining,
            None => Liveness::Excluded,
        };
    };
    health.verdicts.insert(key, verdict);
    if verdict { Liveness::Active } else { Liveness::Draining }
}

/// During a deployment, tasks of an older app version drain once a task of the current version
/// is active (so the service never runs out of active backends while new tasks come up).
fn demote_replaced(app: &App, tasks: &[Task], liveness: &mut [Liveness]) {
    let deploying = app.deployments.as_ref().is_some_and(|d| !d.is_empty());
    let Some(current) = app.version.as_deref() else { return };
    if !deploying {
        return;
    }
    let is_current = |t: &Task| t.version.as_deref().is_none_or(|v| v == current);
    let new_active = tasks.iter().zip(liveness.iter()).any(|(t, l)| is_current(t) && *l == Liveness::Active);
    if !new_active {
        return;
    }
    for (task, live) in tasks.iter().zip(liveness.iter_mut()) {
        if !is_current(task) && *live == Liveness::Active {
            *live = Liveness::Draining;
        }
    }
}

/// Why a task is not (yet) a backend for one of its app's ports.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum TaskSkip {
    #[error("no ipAddresses yet")]
    NoIpAddresses,
    #[error("ipAddress {0:?} is not an address")]
    BadIpAddress(String),
    #[error("no container port")]
    NoContainerPort,
    #[error("no host")]
    NoHost,
    #[error("no host port for this index")]
    NoHostPort,
    #[error("host {0:?} does not resolve")]
    Unresolved(String),
}

/// The (address, port) a task serves `port` on.
fn task_backend(task: &Task, port: &AppPort, mode: NetMode, resolver: &mut dyn Resolver) -> Result<(IpAddr, u16), TaskSkip> {
    if mode == NetMode::Container {
        let ip = task
            .ip_addresses
            .iter()
            .flatten()
            .find_map(|i| i.ip_address.as_deref())
            .ok_or(TaskSkip::NoIpAddresses)?;
        let ip: IpAddr = ip.parse().map_err(|_| TaskSkip::BadIpAddress(ip.to_owned()))?;
        let container_port = port.container_port.ok_or(TaskSkip::NoContainerPort)?;
        return Ok((ip, container_port));
    }
    let host = task.host.as_deref().filter(|h| !h.is_empty()).ok_or(TaskSkip::NoHost)?;
    let host_port = task
        .ports
        .as_ref()
        .and_then(|p| p.get(port.index).copied().flatten())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p > 0)
        .ok_or(TaskSkip::NoHostPort)?;
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => resolver.resolve(host).ok_or_else(|| TaskSkip::Unresolved(host.to_owned()))?,
    };
    Ok((ip, host_port))
}

#[cfg(test)]
mod tests;
