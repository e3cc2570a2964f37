//! marathon-lb's HTTP labels on one app port → how the HTTP path routes it. Pure.
//!
//! Labels are app labels: `HAPROXY_GROUP` and `HAPROXY_{n}_*` for the app's port `n`
//! (docs/http.md lists which marathon-lb labels are supported). A port is routed over HTTP when
//! it has services to take backends from (its service port; a pod endpoint's VIPs) and a
//! `HAPROXY_{n}_VHOST` or `HAPROXY_{n}_PATH`; a label that cannot be
//! read keeps the port off the HTTP path (with a warning) rather than serving it wider than asked.

use ipnet::IpNet;

use crate::desired::ServiceId;

/// How requests pick among a route's backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
}

/// One app port as the HTTP path serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpPort {
    /// The app port's index (`n` of the labels).
    pub index: usize,
    /// The services whose backends it routes to: its service port's (both families), or for a
    /// port without one (a pod endpoint) its VIPs'.
    pub services: Vec<ServiceId>,
    /// `HAPROXY_{n}_GROUP`, else `HAPROXY_GROUP`.
    pub group: Option<String>,
    /// Lower-case host names, without ports; empty: any host (a `PATH` alone).
    pub hosts: Vec<String>,
    /// Path prefix, `/` when only hosts are given.
    pub path: String,
    pub redirect_to_https: bool,
    pub hsts: bool,
    pub sticky: bool,
    pub balance: Balance,
    /// Source networks allowed; empty: everyone.
    pub allowed: Vec<IpNet>,
}

/// Why a port is not routed although it asks to be.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("{key}={value:?}: not a host name")]
    Host { key: String, value: String },
    #[error("{key}={value:?}: a path prefix starts with /")]
    Path { key: String, value: String },
    #[error("{key}={value:?}: expected true or false")]
    Bool { key: String, value: String },
    #[error("{key}={value:?}: supported are roundrobin and leastconn")]
    Balance { key: String, value: String },
    #[error("{key}={value:?}: {entry:?} is not an address or CIDR")]
    Network { key: String, value: String, entry: String },
}

/// The HTTP routing of port `index` (backends from `services`) from the app's labels (sorted by
/// key, HAPROXY_ ones at least); None when the port asks for none or `HAPROXY_{n}_ENABLED` is
/// false.
pub fn port(labels: &[(String, String)], index: usize, services: Vec<ServiceId>) -> Result<Option<HttpPort>, LabelError> {
    let prefix = format!("HAPROXY_{index}_");
    let get = |name: &str| -> Option<(String, &str)> {
        let key = format!("{prefix}{name}");
        let value = labels.iter().find(|(k, _)| *k == key)?.1.as_str();
        Some((key, value))
    };
    if let Some((key, value)) = get("ENABLED") {
        if !boolean(&key, value)? {
            return Ok(None);
        }
    }
    let hosts = match get("VHOST") {
        Some((key, value)) => hosts(&key, value)?,
        None => Vec::new(),
    };
    let path = match get("PATH") {
        Some((_, value)) if value.starts_with('/') && !value.contains(char::is_whitespace) => Some(value.to_owned()),
        Some((key, value)) => return Err(LabelError::Path { key, value: value.to_owned() }),
        None => None,
    };
    if hosts.is_empty() && path.is_none() {
        return Ok(None);
    }
    let flag = |name: &str| get(name).map(|(key, value)| boolean(&key, value)).transpose().map(Option::unwrap_or_default);
    let balance = match get("BALANCE") {
        None => Balance::RoundRobin,
        Some((_, v)) if v.eq_ignore_ascii_case("roundrobin") => Balance::RoundRobin,
        Some((_, v)) if v.eq_ignore_ascii_case("leastconn") => Balance::LeastConn,
        Some((key, value)) => return Err(LabelError::Balance { key, value: value.to_owned() }),
    };
    let allowed = match get("BACKEND_NETWORK_ALLOWED_ACL") {
        Some((key, value)) => networks(&key, value)?,
        None => Vec::new(),
    };
    let group = get("GROUP").map(|(_, v)| v).or_else(|| labels.iter().find(|(k, _)| k == "HAPROXY_GROUP").map(|(_, v)| v.as_str()));
    Ok(Some(HttpPort {
        index,
        services,
        group: group.map(str::to_owned),
        hosts,
        path: path.unwrap_or_else(|| "/".to_owned()),
        redirect_to_https: flag("REDIRECT_TO_HTTPS")?,
        hsts: flag("USE_HSTS")?,
        sticky: flag("STICKY")?,
        balance,
        allowed,
    }))
}

fn boolean(key: &str, value: &str) -> Result<bool, LabelError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(LabelError::Bool { key: key.to_owned(), value: value.to_owned() }),
    }
}

/// `a.example.com, B.example.com:8080` → `["a.example.com", "b.example.com"]` (ports are
/// ignored, as marathon-lb's host match ignores them).
fn hosts(key: &str, value: &str) -> Result<Vec<String>, LabelError> {
    let mut hosts = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let host = host_without_port(entry).to_ascii_lowercase();
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'));
        if !valid {
            return Err(LabelError::Host { key: key.to_owned(), value: value.to_owned() });
        }
        hosts.push(host);
    }
    hosts.sort();
    hosts.dedup();
    Ok(hosts)
}

/// A Host header's or label's name without its port (`[v6]:port` keeps the brackets' content).
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Space- or comma-separated addresses and CIDRs.
fn networks(key: &str, value: &str) -> Result<Vec<IpNet>, LabelError> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| LabelError::Network { key: key.to_owned(), value: value.to_owned(), entry: entry.to_owned() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::ServiceId;

    /// The services of service port `port` (as translate gives a port with one).
    fn svc(port: u16) -> Vec<ServiceId> {
        ServiceId::node_port_tcp(port).to_vec()
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut l: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        l.sort();
        l
    }

    #[test]
    fn a_vhost_label_routes_its_port_and_only_its_port() {
        let l = labels(&[("HAPROXY_GROUP", "external"), ("HAPROXY_0_VHOST", "Web.Example.com, api.example.com:8080")]);
        let p = port(&l, 0, svc(10000)).unwrap().unwrap();
        assert_eq!(p.hosts, ["api.example.com", "web.example.com"]);
        assert_eq!((p.path.as_str(), p.group.as_deref(), p.services.clone()), ("/", Some("external"), svc(10000)));
        assert_eq!(port(&l, 1, svc(10001)).unwrap(), None, "port 1 has no HTTP labels");
    }

    #[test]
    fn per_port_labels_override_and_options_parse() {
        let l = labels(&[
            ("HAPROXY_GROUP", "external"),
            ("HAPROXY_1_GROUP", "internal"),
            ("HAPROXY_1_PATH", "/api"),
            ("HAPROXY_1_STICKY", "true"),
            ("HAPROXY_1_BALANCE", "leastconn"),
            ("HAPROXY_1_REDIRECT_TO_HTTPS", "true"),
            ("HAPROXY_1_USE_HSTS", "TRUE"),
            ("HAPROXY_1_BACKEND_NETWORK_ALLOWED_ACL", "10.0.0.0/8 192.168.1.7"),
        ]);
        let p = port(&l, 1, svc(10001)).unwrap().unwrap();
        assert_eq!(p.group.as_deref(), Some("internal"));
        assert!(p.hosts.is_empty());
        assert_eq!(p.path, "/api");
        assert!(p.sticky && p.redirect_to_https && p.hsts);
        assert_eq!(p.balance, Balance::LeastConn);
        assert_eq!(p.allowed, vec!["10.0.0.0/8".parse::<IpNet>().unwrap(), "192.168.1.7/32".parse().unwrap()]);
    }

    #[test]
    fn disabled_or_unreadable_ports_are_not_routed() {
        let disabled = labels(&[("HAPROXY_0_VHOST", "a.example"), ("HAPROXY_0_ENABLED", "false")]);
        assert_eq!(port(&disabled, 0, svc(10000)).unwrap(), None);
        for bad in [
            ("HAPROXY_0_VHOST", "a b"),
            ("HAPROXY_0_PATH", "api"),
            ("HAPROXY_0_STICKY", "sometimes"),
            ("HAPROXY_0_BALANCE", "source"),
            ("HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL", "10.0.0.0/33"),
        ] {
            let mut map = std::collections::BTreeMap::from([("HAPROXY_0_VHOST", "a.example")]);
            map.insert(bad.0, bad.1);
            let l = labels(&map.into_iter().collect::<Vec<_>>());
            assert!(port(&l, 0, svc(10000)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_ports_and_brackets_are_stripped() {
        assert_eq!(host_without_port("a.example:8080"), "a.example");
        assert_eq!(host_without_port("[fd00::1]:443"), "fd00::1");
        assert_eq!(host_without_port("a.example"), "a.example");
    }
}
