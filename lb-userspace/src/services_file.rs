//! The static services file (`lb run --services FILE`), as DESIGN.md specifies it:
//! `{"services":[{"name","address"?,"port","protocol","backends":[{"address","port","weight"?}]}]}`.
//! Validation is complete before anything is programmed; an error names the service and field.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use serde::Deserialize;
use thiserror::Error;

use crate::model::{Backend, Desired, Proto, Service, ServiceAddr, ServiceId};

#[derive(Debug, Error)]
pub enum ServicesFileError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not a services file: {source}")]
    Syntax { path: String, source: serde_json::Error },
    #[error("{path}: service {service}: {field}: {problem}")]
    Invalid { path: String, service: String, field: String, problem: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    services: Vec<ServiceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    name: Option<String>,
    address: Option<String>,
    port: u32,
    #[serde(default = "default_protocol")]
    protocol: String,
    #[serde(default)]
    backends: Vec<BackendSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSpec {
    address: String,
    port: u32,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_protocol() -> String {
    "tcp".into()
}

fn default_weight() -> u32 {
    1
}

/// Largest accepted weight: keeps Maglev's weighted rounds short.
pub const MAX_WEIGHT: u32 = 1000;

/// Reads and validates a services file.
pub fn load(path: &Path) -> Result<Desired, ServicesFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ServicesFileError::Read { path: shown.clone(), source })?;
    parse(&text, &shown)
}

/// Parses and validates the text of a services file (`path` only names it in errors).
pub fn parse(text: &str, path: &str) -> Result<Desired, ServicesFileError> {
    let file: File =
        serde_json::from_str(text).map_err(|source| ServicesFileError::Syntax { path: path.into(), source })?;
    let mut desired = Desired::new();
    let mut origin: BTreeMap<ServiceId, String> = BTreeMap::new();
    for (index, spec) in file.services.iter().enumerate() {
        let label = match &spec.name {
            Some(name) => format!("{index} ({name:?})"),
            None => index.to_string(),
        };
        let invalid = |field: &str, problem: String| ServicesFileError::Invalid {
            path: path.into(),
            service: label.clone(),
            field: field.into(),
            problem,
        };
        for service in expand(spec).map_err(|(field, problem)| invalid(&field, problem))? {
            if let Some(first) = origin.get(&service.id) {
                return Err(invalid("address/port/protocol", format!("{} is already defined by service {first}", service.id)));
            }
            origin.insert(service.id, label.clone());
            desired.insert(service.id, service);
        }
    }
    Ok(desired)
}

/// One spec → its services: one per protocol, and for a service port one per address family of
/// its backends.
fn expand(spec: &ServiceSpec) -> Result<Vec<Service>, (String, String)> {
    let port = port_of(spec.port).map_err(|p| ("port".to_string(), p))?;
    let protos = protocols(&spec.protocol).map_err(|p| ("protocol".to_string(), p))?;
    let vip = match &spec.address {
        Some(text) => Some(text.parse::<IpAddr>().map_err(|_| ("address".to_string(), format!("{text:?} is not an IP address")))?),
        None => None,
    };
    let mut backends = Vec::new();
    for (i, b) in spec.backends.iter().enumerate() {
        let field = |f: &str| format!("backends[{i}].{f}");
        let addr: IpAddr = b.address.parse().map_err(|_| (field("address"), format!("{:?} is not an IP address", b.address)))?;
        if addr.is_unspecified() || addr.is_multicast() {
            return Err((field("address"), format!("{addr} cannot be a backend")));
        }
        if let Some(vip) = vip {
            if vip.is_ipv6() != addr.is_ipv6() {
                return Err((field("address"), format!("{addr} is not the same address family as the service address {vip}")));
            }
        }
        let bport = port_of(b.port).map_err(|p| (field("port"), p))?;
        if b.weight > MAX_WEIGHT {
            return Err((field("weight"), format!("{} is above the maximum {MAX_WEIGHT}", b.weight)));
        }
        if backends.iter().any(|x: &Backend| x.addr == addr && x.port == bport) {
            return Err((field("address"), format!("{addr}:{bport} is listed twice")));
        }
        backends.push(Backend { addr, port: bport, weight: b.weight });
    }
    backends.sort();
    let addrs: Vec<ServiceAddr> = match vip {
        Some(ip) => vec![ServiceAddr::Vip(ip)],
        None => {
            let mut families = vec![];
            for v6 in [false, true] {
                if backends.iter().any(|b| b.addr.is_ipv6() == v6) {
                    families.push(ServiceAddr::NodePort { v6 });
                }
            }
            if families.is_empty() {
                // No backends yet: served (with no live backend) on IPv4 node addresses.
                families.push(ServiceAddr::NodePort { v6: false });
            }
            families
        }
    };
    let mut services = Vec::new();
    for addr in addrs {
        for &proto in &protos {
            let id = ServiceId { addr, port, proto };
            let family_backends: Vec<Backend> =
                backends.iter().copied().filter(|b| b.addr.is_ipv6() == id.is_v6()).collect();
            let name = spec.name.clone().unwrap_or_else(|| id.to_string());
            services.push(Service { id, name, backends: family_backends });
        }
    }
    Ok(services)
}

fn port_of(p: u32) -> Result<u16, String> {
    match u16::try_from(p) {
        Ok(0) | Err(_) => Err(format!("{p} is not a port (1-65535)")),
        Ok(p) => Ok(p),
    }
}

/// `tcp`, `udp`, or both as Marathon writes it (`udp,tcp`).
pub fn protocols(text: &str) -> Result<Vec<Proto>, String> {
    let mut protos = Vec::new();
    for part in text.split(',') {
        let proto = match part.trim().to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => return Err(format!("{other:?} is not tcp, udp or udp,tcp")),
        };
        if !protos.contains(&proto) {
            protos.push(proto);
        }
    }
    Ok(protos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, "svc.json").unwrap_err().to_string()
    }

    #[test]
    fn the_design_example_parses() {
        let d = parse(
            r#"{"services":[{"name":"web","address":"10.0.0.1","port":80,"protocol":"tcp",
              "backends":[{"address":"10.1.0.5","port":31005,"weight":1}]}]}"#,
            "svc.json",
        )
        .unwrap();
        let svc = d.values().next().unwrap();
        assert_eq!(svc.id.to_string(), "10.0.0.1:80/tcp");
        assert_eq!(svc.name, "web");
        assert_eq!(svc.backends, vec![Backend { addr: "10.1.0.5".parse().unwrap(), port: 31005, weight: 1 }]);
    }

    #[test]
    fn service_ports_split_by_family_and_protocol() {
        let d = parse(
            r#"{"services":[{"name":"dns","port":10053,"protocol":"udp,tcp",
              "backends":[{"address":"10.1.0.5","port":31005},{"address":"fd00::5","port":31005}]}]}"#,
            "svc.json",
        )
        .unwrap();
        let ids: Vec<String> = d.keys().map(|k| k.to_string()).collect();
        assert_eq!(ids, ["*:10053/tcp", "*:10053/udp", "[*]:10053/tcp", "[*]:10053/udp"]);
        assert!(d.values().all(|s| s.backends.len() == 1));
    }

    #[test]
    fn errors_name_the_service_and_field() {
        let e = err(r#"{"services":[{"name":"web","address":"10.0.0.1","port":80,"backends":[{"address":"10.1.0.x","port":1}]}]}"#);
        assert!(e.contains(r#"service 0 ("web"): backends[0].address: "10.1.0.x" is not an IP address"#), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":70000}]}"#);
        assert!(e.contains(r#"service 0 ("a"): port: 70000 is not a port"#), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80,"protocol":"sctp"}]}"#);
        assert!(e.contains("protocol: \"sctp\" is not tcp, udp or udp,tcp"), "{e}");
        let e = err(r#"{"services":[{"name":"a","address":"10.0.0.1","port":80,"backends":[{"address":"fd00::1","port":1}]}]}"#);
        assert!(e.contains("backends[0].address") && e.contains("address family"), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80},{"name":"b","port":80}]}"#);
        assert!(e.contains(r#"service 1 ("b")"#) && e.contains("already defined by service 0"), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80,"backends":[{"address":"10.0.0.2","port":1,"weight":5000}]}]}"#);
        assert!(e.contains("backends[0].weight: 5000 is above the maximum"), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80,"colour":"red"}]}"#);
        assert!(e.contains("unknown field `colour`"), "{e}");
    }
}
