//! The records the agent serves, as a model of apps rather than a table of names: a query name
//! is parsed into its Mesos-DNS shape (`<app>.marathon.<domain>`, `_<app>._tcp.marathon.…`,
//! `<task>.marathon.slave.…`) and answered from the app it names. A 10,000-app cluster so
//! costs one entry per app and one small record per active task, not the ~12 names per app
//! (and their empty non-terminals) a table of every name would hold; an event replaces the
//! entries of the apps it changed, nothing else.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use crate::desired::Proto;

use super::names;

/// What DNS serves of one app, made in the same translation that makes its services (so the
/// same tasks are active, at the same addresses).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppDns {
    /// The Marathon app id.
    pub app_id: String,
    /// The app's active tasks: running, healthy where checked, not being replaced.
    pub tasks: Vec<DnsTask>,
    /// Named VIPs on the app's ports: (name as labelled, protocol, VIP port).
    pub vips: Vec<(String, Proto, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsTask {
    /// The Mesos task id (Mesos-DNS's enumeration lists it).
    pub id: Box<str>,
    /// Mesos-DNS's per-task label suffix: `<hash of the task id>-<agent id tail>`.
    pub tag: String,
    /// Where a client reaches the task: the balancer's backend address (the agent's address for
    /// host and bridge networking, the container's on container networks).
    pub addr: Option<IpAddr>,
    /// The agent (host) running the task.
    pub host: Option<IpAddr>,
    /// The task's ports as discovery announces them (host ports; container ports on container
    /// networks), with their protocols and names.
    pub ports: Vec<DnsPort>,
    /// The task's host ports (`task.ports`), whatever the networking.
    pub host_ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPort {
    pub port: u16,
    pub protocols: Vec<Proto>,
    /// The port's name, already a label (empty when unnamed).
    pub name: String,
}

impl DnsTask {
    pub fn new(task_id: &str, slave_id: Option<&str>) -> Self {
        let tail = names::slave_tail(slave_id.unwrap_or_default());
        Self { id: task_id.into(), tag: format!("{}-{tail}", names::task_hash(task_id)), addr: None, host: None, ports: Vec::new(), host_ports: Vec::new() }
    }
}

/// Every SRV record's priority and weight, Mesos-DNS's (`SRVRecordDefaultWeight` 1).
pub const SRV_PRIORITY: u16 = 0;
pub const SRV_WEIGHT: u16 = 1;
/// The SOA's refresh, retry and expire: Mesos-DNS's defaults.
pub const SOA_TIMERS: [i32; 3] = [60, 600, 86400];

/// Where a zone's names are, and what its SOA says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneNames {
    /// The Mesos-DNS domain (`--dns-domain`), lowercase, no trailing dot.
    pub domain: String,
    /// The named VIPs' domain (`--vip-domain`).
    pub vip_domain: String,
    /// TTL of every answer (and the SOA's negative-caching minimum).
    pub ttl: u32,
    /// The addresses the name server's own name (`ns1.<domain>`) resolves to.
    pub ns_addrs: Vec<IpAddr>,
}

impl ZoneNames {
    /// A zone's apex.
    pub fn apex(&self, zone: ZoneId) -> &str {
        match zone {
            ZoneId::Mesos => &self.domain,
            ZoneId::Vips => &self.vip_domain,
        }
    }

    /// The name server's name, in both zones' NS and SOA (Mesos-DNS's `SOAMname`).
    pub fn ns_name(&self) -> String {
        format!("ns1.{}", self.domain)
    }

    /// The SOA's mailbox (Mesos-DNS's `SOARname`).
    pub fn soa_rname(&self) -> String {
        format!("root.ns1.{}", self.domain)
    }
}

/// Every app's records, by the label its name starts with.
#[derive(Debug)]
pub struct Zone {
    names: ZoneNames,
    /// App label → the apps with that label (almost always one; `/a/b` and `/b-a` share one).
    apps: HashMap<Box<str>, Vec<Arc<AppDns>>>,
    /// App id → its label, to remove an app that changed.
    labels: HashMap<Box<str>, Box<str>>,
    /// Named-VIP label → its address (the allocation; changes rarely).
    vip_addrs: HashMap<Box<str>, IpAddr>,
    /// Named-VIP label → (protocol, port) → how many of the apps' labels ask for it (apps may
    /// share a VIP): kept by [`Zone::set_app`], so a change costs the apps it touched.
    vip_ports: HashMap<Box<str>, BTreeMap<(Proto, u16), usize>>,
    /// Records the apps hold (addresses and SRV targets), kept by [`Zone::set_app`].
    app_records: usize,
    /// SOA serial: bumped by every change, so secondaries and `lb dns` see one.
    serial: u32,
}

/// Which of the two zones a name is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneId {
    Mesos,
    Vips,
}

/// What a name holds, found from the model.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub addrs: Vec<IpAddr>,
    /// (port, target name without the trailing dot).
    pub srv: Vec<(u16, String)>,
    /// The zone's apex: SOA and NS.
    pub apex: bool,
}

/// A query name's standing.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not in either zone: refused or forwarded.
    Outside,
    /// In a zone, no such name.
    NoName(ZoneId),
    /// In a zone; may hold no record of the type asked (an empty non-terminal holds none).
    Name(ZoneId, Found),
}

impl AppDns {
    /// The records this app's names hold: per task its address and agent under two names
    /// each, an SRV per protocol of each port (twice for a named port), and one per host port
    /// under each `.slave` protocol.
    fn records(&self) -> usize {
        let port = |p: &DnsPort| p.protocols.len() * if p.name.is_empty() { 1 } else { 2 };
        self.tasks.iter().map(|t| 4 + t.ports.iter().map(port).sum::<usize>() + 2 * t.host_ports.len()).sum()
    }
}

impl Zone {
    pub fn new(names: ZoneNames) -> Self {
        Self {
            names,
            apps: HashMap::new(),
            labels: HashMap::new(),
            vip_addrs: HashMap::new(),
            vip_ports: HashMap::new(),
            app_records: 0,
            serial: 1,
        }
    }

    pub fn names(&self) -> &ZoneNames {
        &self.names
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Replaces one app's records (None: the app is gone).
    pub fn set_app(&mut self, app_id: &str, app: Option<AppDns>) {
        if let Some(old) = self.remove_app(app_id) {
            self.app_records -= old.records();
            self.count_vip_ports(&old, false);
        }
        if let Some(app) = app {
            let label: Box<str> = names::app_label(app_id).into();
            if !label.is_empty() {
                self.app_records += app.records();
                self.count_vip_ports(&app, true);
                self.labels.insert(app_id.into(), label.clone());
                self.apps.entry(label).or_default().push(Arc::new(app));
            }
        }
        self.serial = self.serial.wrapping_add(1);
    }

    fn remove_app(&mut self, app_id: &str) -> Option<Arc<AppDns>> {
        let label = self.labels.remove(app_id)?;
        let list = self.apps.get_mut(&label)?;
        let old = list.iter().position(|a| a.app_id == app_id).map(|at| list.swap_remove(at));
        if list.is_empty() {
            self.apps.remove(&label);
        }
        old
    }

    /// Adds (or takes away) the VIP ports `app`'s labels ask for.
    fn count_vip_ports(&mut self, app: &AppDns, add: bool) {
        for (name, proto, port) in &app.vips {
            let label = names::vip_label(name);
            if label.is_empty() {
                continue;
            }
            let ports = self.vip_ports.entry(label.as_str().into()).or_default();
            let count = ports.entry((*proto, *port)).or_default();
            if add {
                *count += 1;
                continue;
            }
            *count = count.saturating_sub(1);
            if *count == 0 {
                ports.remove(&(*proto, *port));
            }
            if ports.is_empty() {
                self.vip_ports.remove(label.as_str());
            }
        }
    }

    /// Replaces the named VIPs' addresses (name as labelled → address).
    pub fn set_vip_addrs<'a>(&mut self, vips: impl IntoIterator<Item = (&'a String, &'a IpAddr)>) {
        self.vip_addrs.clear();
        for (name, addr) in vips {
            let label = names::vip_label(name);
            if !label.is_empty() {
                self.vip_addrs.entry(label.into()).or_insert(*addr);
            }
        }
        self.serial = self.serial.wrapping_add(1);
    }

    /// Takes `fresh`'s records, keeping the serial increasing (a full re-read is built off the
    /// lock, then swapped in).
    pub fn replace_with(&mut self, mut fresh: Zone) {
        fresh.serial = self.serial.wrapping_add(1);
        *self = fresh;
    }

    /// Records served: one per address and SRV target (the apex's SOA and NS aside).
    pub fn record_count(&self) -> usize {
        let vips: usize = self.vip_addrs.keys().map(|label| 1 + self.vip_ports.get(label).map_or(0, BTreeMap::len)).sum();
        self.app_records + vips
    }

    /// Every app with its label (for `lb dns` and the HTTP API's enumeration).
    pub fn apps(&self) -> impl Iterator<Item = (&str, &AppDns)> {
        self.apps.iter().flat_map(|(label, list)| list.iter().map(move |a| (&**label, &**a)))
    }

    /// Looks a lowercase name (no trailing dot) up.
    pub fn lookup(&self, name: &str) -> Lookup {
        if let Some(rest) = under(name, &self.names.vip_domain) {
            return self.lookup_vip(rest);
        }
        if let Some(rest) = under(name, &self.names.domain) {
            return self.lookup_mesos(rest);
        }
        Lookup::Outside
    }

    fn lookup_mesos(&self, rest: &str) -> Lookup {
        let labels: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('.').collect() };
        let found = |f: Found| Lookup::Name(ZoneId::Mesos, f);
        match labels.as_slice() {
            [] => found(Found { apex: true, ..Found::default() }),
            ["ns1"] => found(Found { addrs: self.names.ns_addrs.clone(), ..Found::default() }),
            ["marathon"] | ["marathon", "slave"] | ["_tcp" | "_udp", "marathon"] | ["_tcp" | "_udp", "marathon", "slave"] => found(Found::default()),
            [name, "marathon"] => self.addrs(name, false),
            [name, "marathon", "slave"] => self.addrs(name, true),
            [app, proto @ ("_tcp" | "_udp"), "marathon"] => self.srv(app, proto, None, false),
            [port, app, proto @ ("_tcp" | "_udp"), "marathon"] => self.srv(app, proto, Some(port), false),
            [app, proto @ ("_tcp" | "_udp"), "marathon", "slave"] => self.srv(app, proto, None, true),
            _ => Lookup::NoName(ZoneId::Mesos),
        }
    }

    /// `<app>` or `<app>-<tag>` (one task): the tasks' addresses, or their hosts'.
    fn addrs(&self, name: &str, hosts: bool) -> Lookup {
        let pick = |t: &DnsTask| if hosts { t.host } else { t.addr };
        let mut addrs: Vec<IpAddr> = match self.apps.get(name) {
            Some(apps) => apps.iter().flat_map(|a| &a.tasks).filter_map(pick).collect(),
            None => self.task(name).map(|t| pick(t).into_iter().collect()).unwrap_or_default(),
        };
        // A host running several of the app's tasks is one address.
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Lookup::NoName(ZoneId::Mesos);
        }
        Lookup::Name(ZoneId::Mesos, Found { addrs, ..Found::default() })
    }

    /// A task's canonical label, `<app>-<hash>-<agent tail>`: the hash and tail carry no `-`.
    fn task(&self, name: &str) -> Option<&DnsTask> {
        let mut parts = name.rsplitn(3, '-');
        let (tail, hash, app) = (parts.next()?, parts.next()?, parts.next()?);
        let tag_len = hash.len() + 1 + tail.len();
        let tag = &name[name.len() - tag_len..];
        self.apps.get(app)?.iter().flat_map(|a| &a.tasks).find(|t| t.tag == tag)
    }

    /// `_<app>._<proto>` (discovery ports, target the task's name), `_<port name>._<app>…`, and
    /// the `.slave` form (every host port, target the task's agent name).
    fn srv(&self, app: &str, proto: &str, port_name: Option<&str>, slave: bool) -> Lookup {
        let (Some(app), Some(proto)) = (app.strip_prefix('_'), proto.strip_prefix('_')) else { return Lookup::NoName(ZoneId::Mesos) };
        let port_name = match port_name.map(|p| p.strip_prefix('_')) {
            Some(None) => return Lookup::NoName(ZoneId::Mesos),
            Some(Some(name)) => Some(name),
            None => None,
        };
        let want = if proto == "tcp" { Proto::Tcp } else { Proto::Udp };
        let domain = &self.names.domain;
        let mut srv = Vec::new();
        for task in self.apps.get(app).into_iter().flatten().flat_map(|a| &a.tasks) {
            if slave {
                let target = format!("{app}-{}.marathon.slave.{domain}", task.tag);
                srv.extend(task.host_ports.iter().map(|&p| (p, target.clone())));
                continue;
            }
            let target = format!("{app}-{}.marathon.{domain}", task.tag);
            let ports = task.ports.iter().filter(|p| p.protocols.contains(&want) && port_name.is_none_or(|n| n == p.name));
            srv.extend(ports.map(|p| (p.port, target.clone())));
        }
        if srv.is_empty() {
            return Lookup::NoName(ZoneId::Mesos);
        }
        Lookup::Name(ZoneId::Mesos, Found { srv, ..Found::default() })
    }

    fn lookup_vip(&self, rest: &str) -> Lookup {
        let found = |f: Found| Lookup::Name(ZoneId::Vips, f);
        if rest.is_empty() {
            return found(Found { apex: true, ..Found::default() });
        }
        let Some(front) = rest.strip_suffix("marathon").filter(|f| f.is_empty() || f.ends_with('.')) else {
            return Lookup::NoName(ZoneId::Vips);
        };
        let front = front.trim_end_matches('.');
        if front.is_empty() || front == "_tcp" || front == "_udp" {
            return found(Found::default());
        }
        if let Some(addr) = self.vip_addrs.get(front) {
            return found(Found { addrs: vec![*addr], ..Found::default() });
        }
        let srv = front.rsplit_once('.').and_then(|(label, proto)| {
            let proto = match proto {
                "_tcp" => Proto::Tcp,
                "_udp" => Proto::Udp,
                _ => return None,
            };
            let label = label.strip_prefix('_').filter(|l| self.vip_addrs.contains_key(*l))?;
            let target = format!("{label}.marathon.{}", self.names.vip_domain);
            let ports = self.vip_ports.get(label)?.keys().filter(|(p, _)| *p == proto);
            let srv: Vec<(u16, String)> = ports.map(|(_, port)| (*port, target.clone())).collect();
            (!srv.is_empty()).then_some(srv)
        });
        match srv {
            Some(srv) => found(Found { srv, ..Found::default() }),
            None => Lookup::NoName(ZoneId::Vips),
        }
    }
}

/// The part of `name` before `.zone` ("" for the zone itself); None outside it.
fn under<'a>(name: &'a str, zone: &str) -> Option<&'a str> {
    if name == zone {
        return Some("");
    }
    name.strip_suffix(zone)?.strip_suffix('.')
}

mod listing;
pub use listing::{Data, Enumeration, Listed, Named, Record, Snapshot};

#[cfg(test)]
mod tests;
