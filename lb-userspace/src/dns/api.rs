//! Mesos-DNS's HTTP API on the metrics listener, with its JSON shapes (resolver.go's `Rest*`
//! handlers, docs/docs/http.md), so tools written for Mesos-DNS work; and `/dns/records`, the
//! listing `lb dns` prints. Everything is read from the zone the DNS answers come from.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use hyper::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    server::Counters,
    zone::{Data, Listed, Named, Record, Zone, ZoneId, ZoneNames, SOA_TIMERS, SRV_WEIGHT},
    DnsConfig,
};

/// What the listener serves DNS answers from.
#[derive(Debug)]
pub struct Api {
    zone: Arc<RwLock<Zone>>,
    counters: Arc<Counters>,
    /// `/v1/config` without the serial (read at each request).
    config: Value,
}

/// A response: status and JSON body.
pub type Response = (StatusCode, String);

/// `/dns/records`: one name's records or a zone's (or both zones'), and the name's standing.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct RecordsReply {
    pub serial: u32,
    /// `records` (the name is in a zone), `nxdomain`, `outside` (in neither zone).
    pub standing: String,
    pub zone: Option<String>,
    pub records: Vec<Listed>,
}

impl Api {
    pub fn new(zone: Arc<RwLock<Zone>>, counters: Arc<Counters>, dns: &DnsConfig, listen: &[SocketAddr], http: Option<SocketAddr>) -> Self {
        let names = zone.read().unwrap_or_else(|e| e.into_inner()).names().clone();
        Self { config: mesos_dns_config(dns, &names, listen, http), zone, counters }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    fn zone(&self) -> std::sync::RwLockReadGuard<'_, Zone> {
        self.zone.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The response for `path` (and its query string), None for a path that is not the API's.
    pub fn respond(&self, path: &str, query: Option<&str>) -> Option<Response> {
        let ok = |body: String| Some((StatusCode::OK, body));
        match path.strip_prefix("/v1/") {
            Some("version") => ok(json!({"Service": "lb", "URL": "docs/dns.md", "Version": env!("CARGO_PKG_VERSION")}).to_string()),
            Some("config") => ok(self.config_now().to_string()),
            Some("enumerate") => {
                let snapshot = self.zone().snapshot();
                ok(serde_json::to_string(&snapshot.enumerate()).unwrap_or_default())
            }
            Some(rest) => Some(self.lookup(rest)),
            None if path == "/dns/records" => Some(self.records(query)),
            None => None,
        }
    }

    fn config_now(&self) -> Value {
        let mut config = self.config.clone();
        config["SOASerial"] = self.zone().serial().into();
        config
    }

    /// `/v1/hosts/{host}`, `/v1/services/{service}`; 501 for `/v1/hosts/{host}/ports`, which
    /// Mesos-DNS leaves unimplemented too.
    fn lookup(&self, rest: &str) -> Response {
        if let Some(host) = rest.strip_prefix("hosts/") {
            if host.ends_with("/ports") {
                return (StatusCode::NOT_IMPLEMENTED, "To be implemented...".into());
            }
            return (StatusCode::OK, serde_json::to_string(&self.hosts(host)).unwrap_or_default());
        }
        if let Some(service) = rest.strip_prefix("services/") {
            return (StatusCode::OK, serde_json::to_string(&self.services(service)).unwrap_or_default());
        }
        let paths = "/v1/version, /v1/config, /v1/hosts/{host}, /v1/services/{service}, /v1/enumerate";
        (StatusCode::NOT_FOUND, json!({ "error": format!("not found: Mesos-DNS's API is {paths}") }).to_string())
    }

    /// The name's A and AAAA records; Mesos-DNS answers one empty record for a name without.
    fn hosts(&self, host: &str) -> Vec<HostRecord> {
        let dom = absolute(host);
        let mut records: Vec<HostRecord> = self
            .addresses(&dom)
            .into_iter()
            .map(|ip| HostRecord { host: dom.clone(), ip: ip.to_string() })
            .collect();
        if records.is_empty() {
            records.push(HostRecord::default());
        }
        records
    }

    /// The name's SRV records with each target's first IPv4 and first IPv6 address.
    fn services(&self, service: &str) -> Vec<ServiceRecord> {
        let dom = absolute(service);
        let zone = self.zone();
        let mut records = Vec::new();
        let srv = match zone.records_of(&dom) {
            Named::Records(_, records) => records,
            _ => Vec::new(),
        };
        for record in srv {
            let Data::Srv { port, target } = record.data else { continue };
            let addrs = addresses_in(&zone, &target);
            let v4 = addrs.iter().find(|ip| ip.is_ipv4());
            let v6 = addrs.iter().find(|ip| ip.is_ipv6());
            for ip in v4.into_iter().chain(v6) {
                let (service, host) = (service.to_owned(), format!("{target}."));
                records.push(ServiceRecord { service, host, ip: ip.to_string(), port: port.to_string() });
            }
        }
        if records.is_empty() {
            records.push(ServiceRecord::default());
        }
        records
    }

    fn addresses(&self, name: &str) -> Vec<std::net::IpAddr> {
        addresses_in(&self.zone(), name)
    }

    /// `/dns/records`, `?name=NAME` (that name's records) or `?zone=APEX` (one zone's).
    fn records(&self, query: Option<&str>) -> Response {
        let param = |key: &str| query?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='));
        let zone = self.zone();
        let names = zone.names().clone();
        let apex = |id: ZoneId| Some(names.apex(id).to_owned());
        let listed = |records: Vec<Record>| records.iter().map(|r| r.listed(names.ttl)).collect();
        let reply = |standing: &str, zone: Option<String>, records| RecordsReply { serial: 0, standing: standing.into(), zone, records };
        let mut reply = if let Some(name) = param("name") {
            match zone.records_of(name) {
                Named::Records(id, records) => reply("records", apex(id), listed(records)),
                Named::NoName(id) => reply("nxdomain", apex(id), Vec::new()),
                Named::Outside => reply("outside", None, Vec::new()),
            }
        } else {
            let only = match param("zone").map(|z| z.trim_end_matches('.').to_ascii_lowercase()) {
                None => None,
                Some(z) if z == names.domain => Some(ZoneId::Mesos),
                Some(z) if z == names.vip_domain => Some(ZoneId::Vips),
                Some(z) => {
                    let why = format!("{z} is not served: the zones are {} and {}", names.domain, names.vip_domain);
                    return (StatusCode::BAD_REQUEST, json!({ "error": why }).to_string());
                }
            };
            let snapshot = zone.snapshot();
            drop(zone);
            reply("records", only.and_then(apex), listed(snapshot.records(only)))
        };
        reply.serial = self.zone().serial();
        (StatusCode::OK, serde_json::to_string(&reply).unwrap_or_default())
    }
}

fn addresses_in(zone: &Zone, name: &str) -> Vec<std::net::IpAddr> {
    match zone.records_of(name) {
        Named::Records(_, records) => records
            .into_iter()
            .filter_map(|r| match r.data {
                Data::A(ip) => Some(ip.into()),
                Data::Aaaa(ip) => Some(ip.into()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Mesos-DNS's clean-up of a path parameter: lowercase, `.*` wildcards out, a trailing dot.
fn absolute(name: &str) -> String {
    let mut dom = name.replace(".*", "").to_ascii_lowercase();
    if !dom.ends_with('.') {
        dom.push('.');
    }
    dom
}

#[derive(Debug, Default, Serialize)]
struct HostRecord {
    host: String,
    ip: String,
}

#[derive(Debug, Default, Serialize)]
struct ServiceRecord {
    service: String,
    host: String,
    ip: String,
    port: String,
}

/// Mesos-DNS's `records.Config` as `/v1/config` encodes it (every key, Go's field names), with
/// what this agent does in each: no Mesos master or ZooKeeper is read (Marathon's events are,
/// so `RefreshSeconds` is 0), forwarding is recursion.
fn mesos_dns_config(dns: &DnsConfig, names: &ZoneNames, listen: &[SocketAddr], http: Option<SocketAddr>) -> Value {
    let forwards = !dns.forward.upstreams.is_empty();
    let [refresh, retry, expire] = SOA_TIMERS;
    json!({
        "RefreshSeconds": 0, "Port": listen.first().map_or(0, SocketAddr::port), "Timeout": super::server::UPSTREAM_WAIT.as_secs(),
        "StateTimeoutSeconds": 0, "ZkDetectionTimeout": 0, "HttpPort": http.map_or(0, |h| h.port()),
        "TTL": dns.ttl, "SRVRecordDefaultWeight": SRV_WEIGHT,
        "SOASerial": 0, "SOARefresh": refresh, "SOARetry": retry, "SOAExpire": expire, "SOAMinttl": dns.ttl,
        "SOAMname": format!("{}.", names.ns_name()), "SOARname": format!("{}.", names.soa_rname()),
        "Masters": null, "ZoneResolvers": {}, "Resolvers": dns.forward.upstreams.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
        "IPSources": ["netinfo", "host"], "Zk": "", "Domain": dns.domain, "File": "",
        "Listener": listen.first().map(|l| l.ip().to_string()).unwrap_or_default(),
        "HTTPListener": http.map(|h| h.ip().to_string()).unwrap_or_default(),
        "RecurseOn": forwards, "DnsOn": true, "HttpOn": http.is_some(), "ExternalOn": forwards,
        "EnforceRFC952": false, "SetTruncateBit": true, "EnumerationOn": true, "MesosHTTPSOn": false,
        "CACertFile": "", "CertFile": "", "KeyFile": "", "MesosCredentials": {"Principal": "", "Secret": ""},
        "IAMConfigFile": "", "MesosAuthentication": "",
        "VIPDomain": dns.vip_domain,
    })
}

#[cfg(test)]
mod tests;
