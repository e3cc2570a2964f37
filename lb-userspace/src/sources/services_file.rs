//! The static services file (`lb run --services FILE`), as DESIGN.md specifies it:
//! `{"services":[{"name","address"?,"port","protocol","backends":[{"address","port","weight"?}]}]}`.
//! Validation is complete before anything is programmed; an error names the service and field.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use lb_common::SERVICE_NAME_LEN;
use serde_json::{Map, Value};
use thiserror::Error;
use tracing::warn;

use crate::desired::{parse_groups, parse_sources, Backend, Desired, Groups, Proto, Service, ServiceAddr, ServiceId, Sources};

#[derive(Debug, Error)]
pub enum ServicesFileError {
    #[error("reading {path}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not a services file")]
    Syntax { path: String, source: serde_json::Error },
    #[error("{path}: not a services file: {problem}")]
    Structure { path: String, problem: Invalid },
    #[error("{path}: service {service}: {problem}")]
    Service { path: String, service: String, problem: Invalid },
}

/// What is wrong with one field of the file (`backends[1].weight`), and why. An empty field
/// stands for the whole object being read (a service that is not an object).
#[derive(Debug)]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field.as_str() {
            "" => f.write_str(&self.problem),
            field => write!(f, "{field}: {}", self.problem),
        }
    }
}

impl std::error::Error for Invalid {}

impl Invalid {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
}

const FILE_FIELDS: &[&str] = &["services"];
const SERVICE_FIELDS: &[&str] = &["name", "address", "port", "protocol", "group", "source_ranges", "backends"];
const BACKEND_FIELDS: &[&str] = &["address", "port", "weight"];

/// One service of the file, with every field checked for its JSON type.
#[derive(Debug)]
struct ServiceSpec {
    name: Option<String>,
    address: Option<String>,
    port: u16,
    protocol: String,
    groups: Groups,
    sources: Sources,
    backends: Vec<BackendSpec>,
}

#[derive(Debug)]
struct BackendSpec {
    address: String,
    port: u16,
    weight: u32,
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
/// The text is parsed as JSON first (syntax errors carry a line and column), then each service
/// is read field by field, so a wrong type is reported with the service and field it is in.
pub fn parse(text: &str, path: &str) -> Result<Desired, ServicesFileError> {
    let json: Value = serde_json::from_str(text).map_err(|source| ServicesFileError::Syntax { path: path.into(), source })?;
    let structure = |problem| ServicesFileError::Structure { path: path.into(), problem };
    let file = Fields::of(&json, "", FILE_FIELDS).map_err(structure)?;
    let services = file.array("services").map_err(structure)?.ok_or_else(|| structure(Invalid::new("services", "missing")))?;
    let mut desired = Desired::new();
    let mut origin: BTreeMap<ServiceId, String> = BTreeMap::new();
    let mut named: BTreeMap<String, usize> = BTreeMap::new();
    for (index, value) in services.iter().enumerate() {
        let label = label(index, value);
        let invalid = |problem| ServicesFileError::Service { path: path.into(), service: label.clone(), problem };
        let spec = ServiceSpec::read(value).map_err(invalid)?;
        if let Some(name) = &spec.name {
            if let Some(first) = named.insert(name.clone(), index) {
                return Err(invalid(Invalid::new("name", format!("{name:?} is already the name of service {first}"))));
            }
        }
        for service in expand(&spec).map_err(invalid)? {
            if let Some(first) = origin.get(&service.id) {
                let problem = format!("{} is already defined by service {first}", service.id);
                return Err(invalid(Invalid::new("address/port/protocol", problem)));
            }
            origin.insert(service.id, label.clone());
            desired.insert(service.id, service);
        }
    }
    Ok(desired)
}

/// How errors name a service: its index, and its name when it has one.
fn label(index: usize, service: &Value) -> String {
    match service.get("name").and_then(Value::as_str) {
        Some(name) => format!("{index} ({name:?})"),
        None => index.to_string(),
    }
}

impl ServiceSpec {
    fn read(value: &Value) -> Result<Self, Invalid> {
        let fields = Fields::of(value, "", SERVICE_FIELDS)?;
        let name = fields.string("name")?.map(checked_name).transpose()?;
        let address = fields.string("address")?.map(str::to_string);
        let port = fields.required("port", Fields::port)?;
        let protocol = fields.string("protocol")?.unwrap_or("tcp").to_string();
        let groups = fields.string("group")?.map(parse_groups).transpose().map_err(|problem| Invalid::new("group", problem))?.unwrap_or_default();
        let sources = fields.array("source_ranges")?.map(source_ranges).transpose()?.unwrap_or_default();
        let backends = fields.array("backends")?.unwrap_or_default().iter().enumerate();
        let backends = backends.map(|(i, backend)| BackendSpec::read(backend, &format!("backends[{i}].")));
        Ok(Self { name, address, port, protocol, groups, sources, backends: backends.collect::<Result<_, _>>()? })
    }
}

/// `"source_ranges": ["10.0.0.0/8", "2001:db8::/32"]`: the clients allowed; left out, every
/// client (an empty list would admit nobody, which is no service: refused as a mistake).
fn source_ranges(items: &[Value]) -> Result<Sources, Invalid> {
    let field = "source_ranges";
    if items.is_empty() {
        return Err(Invalid::new(field, "empty: list the prefixes allowed, or leave the field out to admit every client"));
    }
    let words = items
        .iter()
        .enumerate()
        .map(|(i, item)| item.as_str().ok_or_else(|| Invalid::new(format!("{field}[{i}]"), "not a string (e.g. \"10.0.0.0/8\")")))
        .collect::<Result<Vec<&str>, _>>()?;
    parse_sources(words).map_err(|problem| Invalid::new(field, problem))
}

impl BackendSpec {
    fn read(value: &Value, prefix: &str) -> Result<Self, Invalid> {
        let fields = Fields::of(value, prefix, BACKEND_FIELDS)?;
        Ok(Self {
            address: fields.required("address", Fields::string)?.to_string(),
            port: fields.required("port", Fields::port)?,
            weight: fields.weight("weight")?.unwrap_or(1),
        })
    }
}

/// A name is stored in a fixed-size map value: one that does not fit would be cut.
fn checked_name(name: &str) -> Result<String, Invalid> {
    if name.is_empty() {
        return Err(Invalid::new("name", "empty"));
    }
    if name.len() > SERVICE_NAME_LEN {
        return Err(Invalid::new("name", format!("{} bytes, longer than the {SERVICE_NAME_LEN} a name may have", name.len())));
    }
    Ok(name.to_string())
}

/// One JSON object of the file, read field by field; `prefix` (`backends[1].`) places it in its
/// service for errors. A field set to `null` counts as left out.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    /// The object in `value`, refused if it has a field not in `known`.
    fn of(value: &'a Value, prefix: &'a str, known: &[&str]) -> Result<Self, Invalid> {
        let Some(object) = value.as_object() else {
            let place = prefix.strip_suffix('.').unwrap_or(prefix);
            return Err(Invalid::new(place, format!("expected an object, got {}", describe(value))));
        };
        if let Some(unknown) = object.keys().find(|key| !known.contains(&key.as_str())) {
            let problem = format!("unknown field `{unknown}`, expected one of {}", known.join(", "));
            return Err(Invalid::new(format!("{prefix}{unknown}"), problem));
        }
        Ok(Self { object, prefix })
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.object.get(key).filter(|value| !value.is_null())
    }

    fn invalid(&self, key: &str, problem: impl Into<String>) -> Invalid {
        Invalid::new(format!("{}{key}", self.prefix), problem)
    }

    /// A field that must be there, read by `read`.
    fn required<T>(&self, key: &str, read: impl Fn(&Self, &str) -> Result<Option<T>, Invalid>) -> Result<T, Invalid> {
        read(self, key)?.ok_or_else(|| self.invalid(key, "missing"))
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, Invalid> {
        self.typed(key, "a string", Value::as_str)
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>, Invalid> {
        self.typed(key, "an array", |value| value.as_array().map(Vec::as_slice))
    }

    fn port(&self, key: &str) -> Result<Option<u16>, Invalid> {
        let Some(number) = self.typed(key, "an integer 1-65535", Value::as_u64)? else { return Ok(None) };
        match u16::try_from(number) {
            Ok(0) | Err(_) => Err(self.invalid(key, format!("{number} is not a port (1-65535)"))),
            Ok(port) => Ok(Some(port)),
        }
    }

    fn weight(&self, key: &str) -> Result<Option<u32>, Invalid> {
        let expected = format!("an integer 0-{MAX_WEIGHT}");
        let Some(number) = self.typed(key, &expected, Value::as_u64)? else { return Ok(None) };
        match u32::try_from(number) {
            Ok(weight) if weight <= MAX_WEIGHT => Ok(Some(weight)),
            _ => Err(self.invalid(key, format!("{number} is above the maximum {MAX_WEIGHT}"))),
        }
    }

    /// The field read by `read`, which gives `None` for a value of another JSON type.
    fn typed<T>(&self, key: &str, expected: &str, read: impl Fn(&'a Value) -> Option<T>) -> Result<Option<T>, Invalid> {
        let Some(value) = self.get(key) else { return Ok(None) };
        match read(value) {
            Some(typed) => Ok(Some(typed)),
            None => Err(self.invalid(key, format!("expected {expected}, got {}", describe(value)))),
        }
    }
}

/// A JSON value as an error shows what was found instead: numbers and literals as written,
/// strings quoted and named (`"80"` for a port is a string, not a number).
fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => format!("a string ({text:?})"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        other => other.to_string(),
    }
}

/// One spec → its services: one per protocol, and for a service port one per address family of
/// its backends.
fn expand(spec: &ServiceSpec) -> Result<Vec<Service>, Invalid> {
    let port = spec.port;
    let protos = Proto::list(&spec.protocol).map_err(|problem| Invalid::new("protocol", problem))?;
    let vip = match &spec.address {
        Some(text) => Some(text.parse::<IpAddr>().map_err(|_| Invalid::new("address", format!("{text:?} is not an IP address")))?),
        None => None,
    };
    let mut backends = Vec::new();
    for (i, b) in spec.backends.iter().enumerate() {
        let invalid = |problem: String| Invalid::new(format!("backends[{i}].address"), problem);
        let addr: IpAddr = b.address.parse().map_err(|_| invalid(format!("{:?} is not an IP address", b.address)))?;
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(invalid(format!("{addr} cannot be a backend")));
        }
        if let Some(vip) = vip {
            if vip.is_ipv6() != addr.is_ipv6() {
                return Err(invalid(format!("{addr} is not the same address family as the service address {vip}")));
            }
        }
        if backends.iter().any(|x: &Backend| x.addr == addr && x.port == b.port) {
            return Err(invalid(format!("{addr}:{} is listed twice", b.port)));
        }
        backends.push(Backend { addr, port: b.port, weight: b.weight });
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
            services.push(Service { id, name, groups: spec.groups.clone(), sources: spec.sources.clone(), backends: family_backends });
        }
    }
    Ok(services)
}

/// Notices changes to the services file by polling its modification time once a second
/// (editors replace files, which inotify on the file itself would miss).
pub struct FileWatch {
    path: PathBuf,
    seen: Option<SystemTime>,
    poll: tokio::time::Interval,
}

impl FileWatch {
    pub fn new(path: PathBuf) -> Self {
        let seen = modified(&path);
        Self { path, seen, poll: tokio::time::interval(Duration::from_secs(1)) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Completes once the file's modification time differs from the last seen. Cancel-safe.
    pub async fn changed(&mut self) {
        loop {
            self.poll.tick().await;
            let now = modified(&self.path);
            if now != self.seen {
                self.seen = now;
                return;
            }
        }
    }

    /// The file is being re-read for another reason (SIGHUP): its current version is seen.
    pub fn mark_seen(&mut self) {
        self.seen = modified(&self.path);
    }
}

/// The services file's modification time, to notice changes by polling (editors replace files,
/// which inotify on the file itself would miss).
fn modified(path: &Path) -> Option<SystemTime> {
    match std::fs::metadata(path).and_then(|m| m.modified()) {
        Ok(t) => Some(t),
        Err(err) => {
            warn!("{}: {err}", path.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        crate::error_chain(&parse(text, "svc.json").unwrap_err())
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

    #[test]
    fn type_errors_name_the_service_field_and_expectation() {
        let e = err(r#"{"services":[{"name":"web","port":"80"}]}"#);
        assert!(e.ends_with(r#"service 0 ("web"): port: expected an integer 1-65535, got a string ("80")"#), "{e}");
        let e = err(r#"{"services":[{"name":"web","port":80,"backends":[{"address":"10.1.0.1","port":1},{"address":"10.1.0.2","port":1,"weight":-1}]}]}"#);
        assert!(e.ends_with(r#"service 0 ("web"): backends[1].weight: expected an integer 0-1000, got -1"#), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80},{"name":"b","port":80.5}]}"#);
        assert!(e.ends_with(r#"service 1 ("b"): port: expected an integer 1-65535, got 80.5"#), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80,"backends":[{"address":10,"port":1}]}]}"#);
        assert!(e.ends_with(r#"service 0 ("a"): backends[0].address: expected a string, got 10"#), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80,"backends":{"address":"10.1.0.1"}}]}"#);
        assert!(e.ends_with(r#"service 0 ("a"): backends: expected an array, got an object"#), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80,"backends":["10.1.0.1"]}]}"#);
        assert!(e.ends_with(r#"service 0 ("a"): backends[0]: expected an object, got a string ("10.1.0.1")"#), "{e}");
        let e = err(r#"{"services":[{"name":7,"port":80}]}"#);
        assert!(e.ends_with("service 0: name: expected a string, got 7"), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80,"protocol":true}]}"#);
        assert!(e.ends_with(r#"service 0 ("a"): protocol: expected a string, got true"#), "{e}");
    }

    #[test]
    fn missing_and_unknown_fields_name_the_service() {
        let e = err(r#"{"services":[{"name":"a"}]}"#);
        assert!(e.ends_with(r#"service 0 ("a"): port: missing"#), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80,"backends":[{"address":"10.1.0.1"}]}]}"#);
        assert!(e.ends_with(r#"service 0 ("a"): backends[0].port: missing"#), "{e}");
        let e = err(r#"{"services":[{"name":"a","port":80,"backends":[{"address":"10.1.0.1","port":1,"wieght":2}]}]}"#);
        assert!(e.contains(r#"service 0 ("a"): backends[0].wieght: unknown field `wieght`"#), "{e}");
    }

    #[test]
    fn the_file_itself_must_be_a_list_of_services() {
        assert!(err("[1]").ends_with("svc.json: not a services file: expected an object, got an array"));
        assert!(err("{}").ends_with("svc.json: not a services file: services: missing"));
        assert!(err(r#"{"services":{}}"#).ends_with("services: expected an array, got an object"));
        let e = err(r#"{"services":[],"extra":1}"#);
        assert!(e.contains("unknown field `extra`"), "{e}");
        let e = err(r#"{"services":[1]}"#);
        assert!(e.ends_with("service 0: expected an object, got 1"), "{e}");
        // A syntax error keeps serde's position, which is right for the text.
        assert!(err(r#"{"services":[}"#).contains("line 1 column 14"));
    }

    #[test]
    fn source_ranges_are_a_list_of_prefixes_and_an_empty_or_bad_one_is_refused() {
        let d = parse(r#"{"services":[{"name":"db","port":5432,"source_ranges":["10.0.0.0/8","2001:db8::1"]}]}"#, "svc.json").unwrap();
        let sources: Vec<String> = d.values().next().unwrap().sources.iter().map(ToString::to_string).collect();
        assert_eq!(sources, ["10.0.0.0/8", "2001:db8::1/128"]);
        let e = err(r#"{"services":[{"name":"db","port":5432,"source_ranges":[]}]}"#);
        assert!(e.ends_with(r#"service 0 ("db"): source_ranges: empty: list the prefixes allowed, or leave the field out to admit every client"#), "{e}");
        let e = err(r#"{"services":[{"name":"db","port":5432,"source_ranges":["10.0.0.0/40"]}]}"#);
        assert!(e.contains(r#"source_ranges: "10.0.0.0/40" is not an IP address or CIDR prefix"#), "{e}");
        let e = err(r#"{"services":[{"name":"db","port":5432,"source_ranges":[10]}]}"#);
        assert!(e.contains("source_ranges[0]: not a string"), "{e}");
    }

    #[test]
    fn null_counts_as_left_out() {
        let d = parse(r#"{"services":[{"name":null,"address":null,"port":80,"protocol":null,"backends":[{"address":"10.1.0.1","port":1,"weight":null}]}]}"#, "svc.json")
            .unwrap();
        let svc = d.values().next().unwrap();
        assert_eq!((svc.name.as_str(), svc.backends[0].weight), ("*:80/tcp", 1));
    }

    #[test]
    fn duplicate_names_are_refused_naming_both_services() {
        let e = err(r#"{"services":[{"name":"web","port":80},{"name":"dns","port":53},{"name":"web","port":81}]}"#);
        assert!(e.ends_with(r#"service 2 ("web"): name: "web" is already the name of service 0"#), "{e}");
    }

    #[test]
    fn names_must_fit_the_map() {
        let e = err(r#"{"services":[{"name":"","port":80}]}"#);
        assert!(e.ends_with(r#"service 0 (""): name: empty"#), "{e}");
        let fits = "n".repeat(SERVICE_NAME_LEN);
        assert!(parse(&format!(r#"{{"services":[{{"name":"{fits}","port":80}}]}}"#), "svc.json").is_ok());
        // 65 two-byte characters: 130 bytes, although only 65 characters.
        let long = "é".repeat(65);
        let e = err(&format!(r#"{{"services":[{{"name":"{long}","port":80}}]}}"#));
        assert!(e.ends_with("name: 130 bytes, longer than the 128 a name may have"), "{e}");
    }
}
