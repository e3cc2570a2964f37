//! The records the agent serves, as a model of apps rather than a table of names: a query name
//! is parsed into its Mesos-DNS shape (`<app>.marathon.<domain>`, `_<app>._tcp.marathon.…`,
//! `<task>.marathon.slave.…`) and answered from the app it names. A 10,000-app cluster so
//! costs one entry per app and one small record per active task, not the ~12 names per app
//! (and their empty non-terminals) a table of every name would hold; an event replaces the
//! entries of the apps it changed, nothing else.

use std::{
    collections::HashMap,
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
        Self { tag: format!("{}-{tail}", names::task_hash(task_id)), addr: None, host: None, ports: Vec::new(), host_ports: Vec::new() }
    }
}

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

/// A named VIP: its address and the ports served on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipDns {
    pub addr: Option<IpAddr>,
    /// (protocol, port), sorted, without repeats.
    pub ports: Vec<(Proto, u16)>,
}

/// Every app's records, by the label its name starts with.
#[derive(Debug)]
pub struct Zone {
    names: ZoneNames,
    /// App label → the apps with that label (almost always one; `/a/b` and `/b-a` share one).
    apps: HashMap<Box<str>, Vec<Arc<AppDns>>>,
    /// App id → its label, to remove an app that changed.
    labels: HashMap<Box<str>, Box<str>>,
    /// Named-VIP label → the VIP.
    vips: HashMap<Box<str>, VipDns>,
    /// SOA serial: bumped by every change, so secondaries and `lb dns` see one.
    serial: u32,
}

/// Which of the two zones a name is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl Zone {
    pub fn new(names: ZoneNames) -> Self {
        Self { names, apps: HashMap::new(), labels: HashMap::new(), vips: HashMap::new(), serial: 1 }
    }

    pub fn names(&self) -> &ZoneNames {
        &self.names
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Replaces one app's records (None: the app is gone).
    pub fn set_app(&mut self, app_id: &str, app: Option<AppDns>) {
        if let Some(label) = self.labels.remove(app_id) {
            if let Some(list) = self.apps.get_mut(&label) {
                list.retain(|a| a.app_id != app_id);
                if list.is_empty() {
                    self.apps.remove(&label);
                }
            }
        }
        if let Some(app) = app {
            let label: Box<str> = names::app_label(app_id).into();
            if !label.is_empty() {
                self.labels.insert(app_id.into(), label.clone());
                self.apps.entry(label).or_default().push(Arc::new(app));
            }
        }
        self.serial = self.serial.wrapping_add(1);
    }

    /// Replaces every named VIP: name → address, and the ports the apps serve on each.
    pub fn set_vips(&mut self, vips: impl IntoIterator<Item = (String, VipDns)>) {
        self.vips.clear();
        for (name, vip) in vips {
            let label = names::vip_label(&name);
            if label.is_empty() {
                continue;
            }
            let entry = self.vips.entry(label.into()).or_default();
            entry.addr = entry.addr.or(vip.addr);
            entry.ports.extend(vip.ports);
            entry.ports.sort();
            entry.ports.dedup();
        }
        self.serial = self.serial.wrapping_add(1);
    }

    pub fn clear_apps(&mut self) {
        self.apps.clear();
        self.labels.clear();
    }

    /// Records served: one per address, SRV target and VIP (the apex's SOA and NS aside).
    pub fn record_count(&self) -> usize {
        let app = |a: &AppDns| a.tasks.iter().map(|t| 4 + t.ports.iter().map(|p| p.protocols.len() * if p.name.is_empty() { 1 } else { 2 }).sum::<usize>() + 2 * t.host_ports.len()).sum::<usize>();
        let apps: usize = self.apps.values().flatten().map(|a| app(a)).sum();
        apps + self.vips.values().map(|v| 1 + v.ports.len()).sum::<usize>()
    }

    /// App labels and VIP labels, for `lb dns` and the HTTP API's enumeration.
    pub fn apps(&self) -> impl Iterator<Item = (&str, &AppDns)> {
        self.apps.iter().flat_map(|(label, list)| list.iter().map(move |a| (&**label, &**a)))
    }

    pub fn vips(&self) -> impl Iterator<Item = (&str, &VipDns)> {
        self.vips.iter().map(|(label, v)| (&**label, v))
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
        if let Some(vip) = self.vips.get(front) {
            return found(Found { addrs: vip.addr.into_iter().collect(), ..Found::default() });
        }
        let srv = front.rsplit_once('.').and_then(|(label, proto)| {
            let proto = match proto {
                "_tcp" => Proto::Tcp,
                "_udp" => Proto::Udp,
                _ => return None,
            };
            let label = label.strip_prefix('_')?;
            let vip = self.vips.get(label)?;
            let target = format!("{label}.marathon.{}", self.names.vip_domain);
            let srv: Vec<(u16, String)> = vip.ports.iter().filter(|(p, _)| *p == proto).map(|(_, port)| (*port, target.clone())).collect();
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

#[cfg(test)]
mod tests;
