//! The HTTP path's route table: host and path prefix → a route with its backends, built from the
//! app ports' labels and the same desired services the L4 path programs (so task liveness,
//! health, draining and deployments mean the same on both paths). A table is immutable once
//! built; the proxy reads the current one through an `ArcSwap`, and a rebuild swaps it whole.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use hyper::http::uri::Authority;
use ipnet::IpNet;

use super::{
    labels::{host_without_port, Balance, HttpPort},
    metrics::{Metrics, StatusCounters},
};
use crate::desired::{Desired, ServiceId};

/// Which apps this node's HTTP path serves (`--group`; `*` = all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Groups(pub Vec<String>);

impl Groups {
    /// Whether an app whose group label is `group` is served: one of the label's
    /// comma-separated groups is given (marathon-lb splits `HAPROXY_GROUP` on commas), or `*`.
    pub fn serves(&self, group: Option<&str>) -> bool {
        let labelled = |g: &str| group.is_some_and(|label| label.split(',').any(|l| l.trim() == g));
        self.0.iter().any(|g| g == "*" || labelled(g))
    }
}

/// A backend as requests see it. The counters outlive table swaps: a rebuilt table takes the
/// previous table's state for the same address, so least-connections keeps counting requests
/// already in flight.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Takes new requests (weight > 0); a draining backend only finishes what it has.
    pub active: bool,
    pub state: Arc<BackendState>,
}

#[derive(Debug)]
pub struct BackendState {
    /// Requests in flight.
    pub in_flight: AtomicUsize,
    /// The sticky cookie's value naming this backend: the same on every node.
    pub cookie: String,
    /// `address:port` as a request URI's authority (the pool keys connections by it).
    pub authority: Authority,
}

/// One app port's route.
#[derive(Debug)]
pub struct Route {
    /// `app:port index`, as the L4 service of the port is named (`/web:0`).
    pub name: String,
    pub redirect_to_https: bool,
    pub hsts: bool,
    pub sticky: bool,
    pub balance: Balance,
    pub allowed: Vec<IpNet>,
    pub backends: Vec<Backend>,
    /// Indexes of the backends taking new requests.
    active: Vec<usize>,
    next: AtomicUsize,
    path: String,
    pub requests: StatusCounters,
}

impl Route {
    /// Whether a client at `ip` may use this route.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed.is_empty() || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// A backend for a new request: the sticky cookie's backend while it takes requests, else
    /// by the balance policy; `except` is skipped (a retry after it failed). None when no backend
    /// takes requests.
    pub fn pick(&self, cookie: Option<&str>, except: Option<SocketAddr>) -> Option<&Backend> {
        let usable = |b: &&Backend| b.active && Some(b.addr) != except;
        if let Some(cookie) = cookie {
            if let Some(b) = self.backends.iter().filter(usable).find(|b| b.state.cookie == cookie) {
                return Some(b);
            }
        }
        match self.balance {
            Balance::RoundRobin if except.is_none() => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                let index = *self.active.get(turn % self.active.len().max(1))?;
                Some(&self.backends[index])
            }
            Balance::RoundRobin => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                let n = self.backends.len().max(1);
                (0..self.backends.len()).map(|i| &self.backends[(turn + i) % n]).find(usable)
            }
            Balance::LeastConn => {
                // Ties go round robin, so idle backends share a burst.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let n = self.backends.len().max(1);
                (0..self.backends.len())
                    .map(|i| &self.backends[(start + i) % n])
                    .filter(usable)
                    .min_by_key(|b| b.state.in_flight.load(Ordering::Relaxed))
            }
        }
    }
}

/// Host → routes, longest path prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    hosts: HashMap<String, Vec<Arc<Route>>>,
    /// Routes of ports with a path and no host: for any host.
    any_host: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds the table of `ports` ((app id, port) pairs) served to `groups`, with backends from
    /// `desired`; backend state is carried over from `previous`.
    pub fn build<'a>(
        ports: impl Iterator<Item = (&'a str, &'a HttpPort)>,
        desired: &Desired,
        groups: &Groups,
        previous: &RouteTable,
        metrics: &Metrics,
    ) -> Self {
        let mut states: HashMap<SocketAddr, Arc<BackendState>> = previous.backend_states();
        // Counters are looked up in the registry once per route, not at every rebuild.
        let counters: HashMap<&str, &StatusCounters> = previous.routes().map(|r| (r.name.as_str(), &r.requests)).collect();
        let mut table = RouteTable::default();
        for (app, port) in ports.filter(|(_, p)| groups.serves(p.group.as_deref())) {
            let name = format!("{app}:{}", port.index);
            let backends = backends(desired, &port.services, &mut states);
            let route = Arc::new(Route {
                requests: counters.get(name.as_str()).map_or_else(|| metrics.route(&name), |c| (*c).clone()),
                name,
                redirect_to_https: port.redirect_to_https,
                hsts: port.hsts,
                sticky: port.sticky,
                balance: port.balance,
                allowed: port.allowed.clone(),
                active: (0..backends.len()).filter(|&i| backends[i].active).collect(),
                backends,
                next: AtomicUsize::new(0),
                path: port.path.clone(),
            });
            if port.hosts.is_empty() {
                table.any_host.push(route);
            } else {
                for host in &port.hosts {
                    table.hosts.entry(host.clone()).or_default().push(route.clone());
                }
            }
        }
        // Longest prefix first; equal prefixes in app order, so the winner is deterministic.
        let order = |routes: &mut Vec<Arc<Route>>| routes.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then_with(|| a.name.cmp(&b.name)));
        table.hosts.values_mut().for_each(order);
        order(&mut table.any_host);
        table
    }

    /// The route for a request to `host` (a Host header or :authority, port ignored, any case)
    /// and `path`: the host's longest matching prefix, else a `*.domain` entry's, else a route
    /// for any host.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = host_without_port(host).trim_end_matches('.');
        // Host names usually arrive in lower case: no copy then.
        let host: std::borrow::Cow<str> =
            if host.bytes().any(|b| b.is_ascii_uppercase()) { host.to_ascii_lowercase().into() } else { host.into() };
        let host = host.as_ref();
        if let Some(route) = self.hosts.get(host).and_then(|routes| longest_prefix(routes, path)) {
            return Some(route);
        }
        let wildcard = host.split_once('.').and_then(|(_, domain)| self.hosts.get(&format!("*.{domain}")));
        wildcard.and_then(|routes| longest_prefix(routes, path)).or_else(|| longest_prefix(&self.any_host, path))
    }

    /// Every route once (for metrics and the status).
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        let mut seen = std::collections::HashSet::new();
        self.hosts.values().flatten().chain(&self.any_host).filter(move |r| seen.insert(Arc::as_ptr(r)))
    }

    fn backend_states(&self) -> HashMap<SocketAddr, Arc<BackendState>> {
        self.routes().flat_map(|r| &r.backends).map(|b| (b.addr, b.state.clone())).collect()
    }
}

/// The first (longest) route whose prefix `path` starts with.
fn longest_prefix<'t>(routes: &'t [Arc<Route>], path: &str) -> Option<&'t Arc<Route>> {
    routes.iter().find(|r| path.starts_with(&r.path))
}

/// The service port's backends (IPv4 and IPv6 services), draining ones included.
fn backends(desired: &Desired, services: &[ServiceId], states: &mut HashMap<SocketAddr, Arc<BackendState>>) -> Vec<Backend> {
    let mut out: Vec<Backend> = services
        .iter()
        .filter_map(|id| desired.get(id))
        .flat_map(|service| &service.backends)
        .map(|b| {
            let addr = SocketAddr::new(b.addr, b.port);
            let state = states.entry(addr).or_insert_with(|| Arc::new(BackendState::new(addr))).clone();
            Backend { addr, active: b.weight > 0, state }
        })
        .collect();
    out.sort_by_key(|b| b.addr);
    out.dedup_by_key(|b| b.addr);
    out
}

impl BackendState {
    fn new(addr: SocketAddr) -> Self {
        let authority = Authority::try_from(addr.to_string()).expect("a socket address is a valid authority");
        Self { in_flight: AtomicUsize::new(0), cookie: cookie_for(addr), authority }
    }
}

/// A backend's sticky-cookie value: a hash of its address, so every node names it alike and the
/// cookie does not show the address (FNV-1a, 64 bits).
fn cookie_for(addr: SocketAddr) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in addr.to_string().bytes() {
        hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// An IPv4-mapped IPv6 client (a dual-stack listener) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Backend as ModelBackend, Proto, Service, ServiceAddr};

    fn port(index: usize, service_port: u16, hosts: &[&str], path: &str) -> HttpPort {
        HttpPort {
            index,
            services: ServiceId::node_port_tcp(service_port).to_vec(),
            group: Some("external".into()),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path: path.into(),
            redirect_to_https: false,
            hsts: false,
            sticky: false,
            balance: Balance::RoundRobin,
            allowed: Vec::new(),
        }
    }

    fn desired(services: &[(u16, &[(&str, u32)])]) -> Desired {
        services
            .iter()
            .map(|(port, backends)| {
                let id = ServiceId { addr: ServiceAddr::NodePort { v6: false }, port: *port, proto: Proto::Tcp };
                let backends = backends.iter().map(|(a, w)| ModelBackend { addr: a.parse().unwrap(), port: 31000, weight: *w }).collect();
                (id, Service { id, name: format!("svc{port}"), groups: Default::default(), sources: Default::default(), backends })
            })
            .collect()
    }

    fn external() -> Groups {
        Groups(vec!["external".into()])
    }

    #[test]
    fn longest_prefix_wins_and_hosts_match_without_case_or_port() {
        let ports = [port(0, 10000, &["web.example.com"], "/"), port(0, 10001, &["web.example.com"], "/api"), port(0, 10002, &[], "/static")];
        let apps = [("/web", &ports[0]), ("/api", &ports[1]), ("/static", &ports[2])];
        let d = desired(&[(10000, &[("10.0.0.1", 1)]), (10001, &[("10.0.0.2", 1)]), (10002, &[("10.0.0.3", 1)])]);
        let table = RouteTable::build(apps.into_iter(), &d, &external(), &RouteTable::default(), &Metrics::default());
        let name = |host: &str, path: &str| table.find(host, path).map(|r| r.name.clone());
        assert_eq!(name("WEB.example.com:8080", "/api/v1"), Some("/api:0".into()));
        assert_eq!(name("web.example.com", "/index.html"), Some("/web:0".into()));
        assert_eq!(name("other.example.com", "/static/a.css"), Some("/static:0".into()), "a path without a host serves any host");
        assert_eq!(name("other.example.com", "/"), None);
    }

    #[test]
    fn a_comma_separated_group_label_is_served_by_each_of_its_groups() {
        let groups = Groups(vec!["internal".into()]);
        assert!(groups.serves(Some("external, internal")));
        assert!(!groups.serves(Some("external,internal-2")));
        assert!(!groups.serves(None));
    }

    #[test]
    fn other_groups_are_not_served_and_star_serves_all() {
        let mut internal = port(0, 10000, &["a.example"], "/");
        internal.group = Some("internal".into());
        let d = desired(&[(10000, &[("10.0.0.1", 1)])]);
        let table = RouteTable::build([("/a", &internal)].into_iter(), &d, &external(), &RouteTable::default(), &Metrics::default());
        assert!(table.find("a.example", "/").is_none());
        let all = RouteTable::build([("/a", &internal)].into_iter(), &d, &Groups(vec!["*".into()]), &RouteTable::default(), &Metrics::default());
        assert!(all.find("a.example", "/").is_some());
    }

    #[test]
    fn round_robin_skips_draining_backends_and_sticky_falls_back() {
        let p = port(0, 10000, &["a.example"], "/");
        let d = desired(&[(10000, &[("10.0.0.1", 1), ("10.0.0.2", 0), ("10.0.0.3", 1)])]);
        let table = RouteTable::build([("/a", &p)].into_iter(), &d, &external(), &RouteTable::default(), &Metrics::default());
        let route = table.find("a.example", "/").unwrap();
        let picks: Vec<String> = (0..4).map(|_| route.pick(None, None).unwrap().addr.ip().to_string()).collect();
        assert_eq!(picks, ["10.0.0.1", "10.0.0.3", "10.0.0.1", "10.0.0.3"]);
        let draining = route.backends.iter().find(|b| !b.active).unwrap();
        assert_ne!(route.pick(Some(&draining.state.cookie), None).unwrap().addr, draining.addr, "a draining pin is replaced");
        let third = &route.backends[2];
        assert_eq!(route.pick(Some(&third.state.cookie), None).unwrap().addr, third.addr);
        assert_eq!(route.pick(None, Some(route.backends[0].addr)).unwrap().addr, third.addr, "a retry avoids the failed backend");
    }

    #[test]
    fn backend_state_survives_a_rebuild() {
        let p = port(0, 10000, &["a.example"], "/");
        let d = desired(&[(10000, &[("10.0.0.1", 1)])]);
        let first = RouteTable::build([("/a", &p)].into_iter(), &d, &external(), &RouteTable::default(), &Metrics::default());
        first.find("a.example", "/").unwrap().backends[0].state.in_flight.fetch_add(1, Ordering::Relaxed);
        let second = RouteTable::build([("/a", &p)].into_iter(), &d, &external(), &first, &Metrics::default());
        assert_eq!(second.find("a.example", "/").unwrap().backends[0].state.in_flight.load(Ordering::Relaxed), 1);
    }
}
