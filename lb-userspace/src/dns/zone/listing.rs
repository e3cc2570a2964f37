//! The zone's records as a list: what a looked-up name holds (the answers are made from it), and
//! every record of both zones, for Mesos-DNS's `/v1/enumerate`, `lb dns` and the zone file a
//! secondary loads. Names are made from the same model the lookups parse; the tests check that
//! every listed record is what a query for its name is answered with, so the two cannot drift.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::{names, AppDns, DnsTask, Found, Lookup, Zone, ZoneId, ZoneNames, SOA_TIMERS, SRV_PRIORITY, SRV_WEIGHT};
use crate::desired::Proto;

/// One record's data. Names are absolute, without the trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv { port: u16, target: String },
    Soa { mname: String, rname: String, serial: u32, minimum: u32 },
    Ns(String),
}

/// A record: owner name (no trailing dot) and data; the TTL is the zone's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    pub name: String,
    pub data: Data,
}

/// A name's standing, with its records.
#[derive(Debug, PartialEq, Eq)]
pub enum Named {
    /// In neither zone.
    Outside,
    /// NXDOMAIN in this zone.
    NoName(ZoneId),
    /// In this zone (no records: an empty non-terminal).
    Records(ZoneId, Vec<Record>),
}

/// A record as `/dns/records` lists it and `lb dns` reads it: presentation format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub ttl: u32,
    pub data: String,
}

impl Data {
    pub fn addr(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(ip) => Data::A(ip),
            IpAddr::V6(ip) => Data::Aaaa(ip),
        }
    }

    pub fn rtype(&self) -> &'static str {
        match self {
            Data::A(_) => "A",
            Data::Aaaa(_) => "AAAA",
            Data::Srv { .. } => "SRV",
            Data::Soa { .. } => "SOA",
            Data::Ns(_) => "NS",
        }
    }
}

/// Presentation format (RFC 1035 §5.1), names with their trailing dot.
impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::A(ip) => write!(f, "{ip}"),
            Data::Aaaa(ip) => write!(f, "{ip}"),
            Data::Srv { port, target } => write!(f, "{SRV_PRIORITY} {SRV_WEIGHT} {port} {target}."),
            Data::Soa { mname, rname, serial, minimum } => {
                let [refresh, retry, expire] = SOA_TIMERS;
                write!(f, "{mname}. {rname}. {serial} {refresh} {retry} {expire} {minimum}")
            }
            Data::Ns(name) => write!(f, "{name}."),
        }
    }
}

impl Record {
    pub fn listed(&self, ttl: u32) -> Listed {
        Listed { name: format!("{}.", self.name), rtype: self.data.rtype().into(), ttl, data: self.data.to_string() }
    }
}

impl ZoneNames {
    /// The apex's SOA (minimum = the answers' TTL, which bounds negative caching).
    pub fn soa(&self, serial: u32) -> Data {
        Data::Soa { mname: self.ns_name(), rname: self.soa_rname(), serial, minimum: self.ttl }
    }

    /// The zone `name` (lowercase, no trailing dot) is in: the VIP zone first, as lookups do.
    pub fn zone_of(&self, name: &str) -> Option<ZoneId> {
        let under = |apex: &str| name == apex || name.strip_suffix(apex).is_some_and(|front| front.ends_with('.'));
        if under(&self.vip_domain) {
            return Some(ZoneId::Vips);
        }
        under(&self.domain).then_some(ZoneId::Mesos)
    }
}

impl Found {
    /// What the name holds, in answer order: addresses, SRVs, the apex's SOA and NS.
    pub fn into_data(self, names: &ZoneNames, serial: u32) -> impl Iterator<Item = Data> {
        let apex = self.apex.then(|| [names.soa(serial), Data::Ns(names.ns_name())]);
        let addrs = self.addrs.into_iter().map(Data::addr);
        let srv = self.srv.into_iter().map(|(port, target)| Data::Srv { port, target });
        addrs.chain(srv).chain(apex.into_iter().flatten())
    }
}

/// The zone at one moment, taken under the lock at the cost of a reference per app, so that
/// listing 300,000 records does not hold up the answers' updates.
#[derive(Debug)]
pub struct Snapshot {
    names: ZoneNames,
    serial: u32,
    /// By label, then app id: listings come out in a stable order.
    apps: Vec<(Box<str>, Arc<AppDns>)>,
    vips: Vec<VipEntry>,
}

/// A named VIP: label, address and (protocol, port)s.
type VipEntry = (Box<str>, IpAddr, Vec<(Proto, u16)>);

impl Zone {
    pub fn snapshot(&self) -> Snapshot {
        let mut apps: Vec<_> = self.apps.iter().flat_map(|(label, list)| list.iter().map(move |a| (label.clone(), a.clone()))).collect();
        apps.sort_by(|(l1, a1), (l2, a2)| (l1, &a1.app_id).cmp(&(l2, &a2.app_id)));
        let mut vips: Vec<_> = self
            .vip_addrs
            .iter()
            .map(|(label, addr)| (label.clone(), *addr, self.vip_ports.get(label).map(|p| p.keys().copied().collect()).unwrap_or_default()))
            .collect();
        vips.sort();
        Snapshot { names: self.names.clone(), serial: self.serial, apps, vips }
    }

    /// One name's records, or why it has none (`lb dns NAME`, the HTTP API's lookups).
    pub fn records_of(&self, name: &str) -> Named {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self.lookup(&name) {
            Lookup::Name(zone, found) => {
                let records = found.into_data(&self.names, self.serial).map(|data| Record { name: name.clone(), data }).collect();
                Named::Records(zone, records)
            }
            Lookup::NoName(zone) => Named::NoName(zone),
            Lookup::Outside => Named::Outside,
        }
    }
}

impl AppDns {
    /// One task's records in Mesos-DNS's order (generator.go `taskContextRecord`): the app's and
    /// the task's A/AAAA, the same two names under `.slave` with the agent's address, an SRV per
    /// host port under `_<app>._tcp|_udp.marathon.slave`, then per discovery port and protocol
    /// `_<app>._<proto>.marathon` (and `_<port name>._<app>…` for a named port).
    pub fn task_records(&self, label: &str, task: &DnsTask, domain: &str, mut push: impl FnMut(Record)) {
        let mut put = |name: String, data: Data| push(Record { name, data });
        let canonical = format!("{label}-{}", task.tag);
        if let Some(addr) = task.addr {
            put(format!("{label}.marathon.{domain}"), Data::addr(addr));
            put(format!("{canonical}.marathon.{domain}"), Data::addr(addr));
        }
        if let Some(host) = task.host {
            put(format!("{label}.marathon.slave.{domain}"), Data::addr(host));
            put(format!("{canonical}.marathon.slave.{domain}"), Data::addr(host));
        }
        let slave_target = format!("{canonical}.marathon.slave.{domain}");
        for &port in &task.host_ports {
            for proto in ["tcp", "udp"] {
                put(format!("_{label}._{proto}.marathon.slave.{domain}"), Data::Srv { port, target: slave_target.clone() });
            }
        }
        let target = format!("{canonical}.marathon.{domain}");
        for port in &task.ports {
            for proto in &port.protocols {
                let service = format!("_{label}._{}.marathon.{domain}", proto_label(*proto));
                let named = (!port.name.is_empty()).then(|| format!("_{}.{service}", port.name));
                put(service, Data::Srv { port: port.port, target: target.clone() });
                if let Some(named) = named {
                    put(named, Data::Srv { port: port.port, target: target.clone() });
                }
            }
        }
    }
}

fn proto_label(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

impl Snapshot {
    pub fn names(&self) -> &ZoneNames {
        &self.names
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Every record of both zones (or of one), each once: the apex's SOA, NS and name server
    /// address, the apps' records, then the VIP zone's.
    pub fn records(&self, only: Option<ZoneId>) -> Vec<Record> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut push = |record: Record| {
            if !seen.contains(&record) {
                seen.insert(record.clone());
                out.push(record);
            }
        };
        if only != Some(ZoneId::Vips) {
            self.mesos_records(&mut push);
        }
        if only != Some(ZoneId::Mesos) {
            self.vip_records(&mut push);
        }
        out
    }

    fn mesos_records(&self, push: &mut impl FnMut(Record)) {
        let domain = &self.names.domain;
        self.apex(domain, push);
        let ns = self.names.ns_name();
        self.names.ns_addrs.iter().for_each(|ip| push(Record { name: ns.clone(), data: Data::addr(*ip) }));
        for (label, app) in &self.apps {
            app.tasks.iter().for_each(|task| app.task_records(label, task, domain, &mut *push));
        }
    }

    fn vip_records(&self, push: &mut impl FnMut(Record)) {
        let vip_domain = &self.names.vip_domain;
        self.apex(vip_domain, push);
        for (label, addr, ports) in &self.vips {
            let name = format!("{label}.marathon.{vip_domain}");
            push(Record { name: name.clone(), data: Data::addr(*addr) });
            for (proto, port) in ports {
                let service = format!("_{label}._{}.marathon.{vip_domain}", proto_label(*proto));
                push(Record { name: service, data: Data::Srv { port: *port, target: name.clone() } });
            }
        }
    }

    fn apex(&self, apex: &str, push: &mut impl FnMut(Record)) {
        push(Record { name: apex.into(), data: self.names.soa(self.serial) });
        push(Record { name: apex.into(), data: Data::Ns(self.names.ns_name()) });
    }

    /// Mesos-DNS's `/v1/enumerate`: the Marathon framework's tasks, each with its records
    /// (a record another task already gave is not repeated, as Mesos-DNS's generator skips it).
    pub fn enumerate(&self) -> Enumeration {
        let mut seen = HashSet::new();
        let mut tasks = Vec::new();
        for (label, app) in &self.apps {
            for task in &app.tasks {
                let mut records = Vec::new();
                app.task_records(label, task, &self.names.domain, |record| {
                    if !seen.contains(&record) {
                        records.push(EnumeratedRecord::from(&record));
                        seen.insert(record);
                    }
                });
                tasks.push(EnumeratedTask { name: names::task_name(&app.app_id), id: task.id.to_string(), records });
            }
        }
        Enumeration { frameworks: vec![EnumeratedFramework { tasks, name: "marathon".into() }] }
    }
}

/// Mesos-DNS's `EnumerationData` (records/generator.go), field for field.
#[derive(Debug, Serialize, Deserialize)]
pub struct Enumeration {
    pub frameworks: Vec<EnumeratedFramework>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EnumeratedFramework {
    pub tasks: Vec<EnumeratedTask>,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EnumeratedTask {
    pub name: String,
    pub id: String,
    pub records: Vec<EnumeratedRecord>,
}

/// `host` is the address, or `target.:port` for SRV, as Mesos-DNS writes it.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnumeratedRecord {
    pub name: String,
    pub host: String,
    pub rtype: String,
}

impl From<&Record> for EnumeratedRecord {
    fn from(record: &Record) -> Self {
        let host = match &record.data {
            Data::Srv { port, target } => format!("{target}.:{port}"),
            other => other.to_string(),
        };
        Self { name: format!("{}.", record.name), host, rtype: record.data.rtype().into() }
    }
}

#[cfg(test)]
mod tests;
