//! The model every source (static file, Marathon) is turned into: services and their backends,
//! in the exact form the maps need. Pure code.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use lb_common::{v4_bytes, ServiceKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use serde::Serialize;

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// `tcp`, `udp`, or both as Marathon writes it (`udp,tcp`).
    pub fn list(text: &str) -> Result<Vec<Proto>, String> {
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

    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Self::Tcp),
            PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Where a service is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceAddr {
    /// A virtual IP.
    Vip(IpAddr),
    /// A service port: every node address (and 127.0.0.1 / ::1 for local clients) of this family.
    NodePort { v6: bool },
}

/// A service as the data path keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    pub addr: ServiceAddr,
    pub port: u16,
    pub proto: Proto,
}

impl ServiceId {
    pub fn is_v6(&self) -> bool {
        match self.addr {
            ServiceAddr::Vip(ip) => ip.is_ipv6(),
            ServiceAddr::NodePort { v6 } => v6,
        }
    }

    /// The TCP services of service port `port`, IPv4 and IPv6.
    pub fn node_port_tcp(port: u16) -> [ServiceId; 2] {
        [false, true].map(|v6| ServiceId { addr: ServiceAddr::NodePort { v6 }, port, proto: Proto::Tcp })
    }

    pub fn key(&self) -> ServiceKey {
        let (addr, family) = match self.addr {
            ServiceAddr::Vip(ip) => ip_bytes(ip),
            ServiceAddr::NodePort { v6 } => ([0; 16], if v6 { FAMILY_V6 } else { FAMILY_V4 }),
        };
        ServiceKey { addr, port: self.port, proto: self.proto.number(), family }
    }

    pub fn from_key(key: &ServiceKey) -> Option<Self> {
        let proto = Proto::from_number(key.proto)?;
        let addr = if key.addr == [0; 16] {
            ServiceAddr::NodePort { v6: key.family == FAMILY_V6 }
        } else {
            ServiceAddr::Vip(bytes_ip(&key.addr, key.family)?)
        };
        Some(Self { addr, port: key.port, proto })
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            ServiceAddr::Vip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}/{}", self.port, self.proto.as_str()),
            ServiceAddr::Vip(ip) => write!(f, "{ip}:{}/{}", self.port, self.proto.as_str()),
            ServiceAddr::NodePort { v6: false } => write!(f, "*:{}/{}", self.port, self.proto.as_str()),
            ServiceAddr::NodePort { v6: true } => write!(f, "[*]:{}/{}", self.port, self.proto.as_str()),
        }
    }
}

/// One backend of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// Maglev weight; 0 = draining (no new flows, existing ones continue).
    pub weight: u32,
}

/// The groups a service is in (marathon-lb's `HAPROXY_GROUP`), which decide where
/// `lb run --expose` serves it; empty: none given (`--default-group` applies).
pub type Groups = BTreeSet<String>;

/// A group name as marathon-lb's labels carry it: letters, digits, `-`, `_`, `.`; or `*`.
pub fn check_group(group: &str) -> Result<(), String> {
    let valid = group == "*" || (!group.is_empty() && group.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    if valid {
        Ok(())
    } else {
        Err(format!("{group:?} is not a group name (letters, digits, '-', '_', '.'; or '*' for every group)"))
    }
}

/// A comma-separated list of groups (`internal,external`), as marathon-lb splits `HAPROXY_GROUP`.
pub fn parse_groups(text: &str) -> Result<Groups, String> {
    text.split(',').map(str::trim).map(|g| check_group(g).map(|()| g.to_owned())).collect()
}

/// The clients a service admits (marathon-lb's `HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`);
/// empty: every client. Prefixes are stored truncated (`10.1.2.3/8` is `10.0.0.0/8`).
pub type Sources = BTreeSet<IpNet>;

/// Source ranges as marathon-lb's label writes them: addresses or CIDR prefixes, IPv4 or IPv6,
/// separated by spaces (commas are accepted too). A bare address is one host.
pub fn parse_sources<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Sources, String> {
    let mut sources = Sources::new();
    for word in words.into_iter().flat_map(|w| w.split([' ', ',', '\t', '\n'])).filter(|w| !w.is_empty()) {
        let net = match word.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match word.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => return Err(format!("{word:?} is not an IP address or CIDR prefix (e.g. 10.0.0.0/8, 2001:db8::/32)")),
            },
        };
        sources.insert(net.trunc());
    }
    Ok(sources)
}

/// Whether `sources` admits a client at `ip` (the kernel's rule, for `lb explain` and tests).
pub fn admits(sources: &Sources, ip: IpAddr) -> bool {
    sources.is_empty() || sources.iter().any(|net| net.contains(&ip))
}

/// The desired state of one service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    pub id: ServiceId,
    pub name: String,
    pub groups: Groups,
    /// Clients allowed new flows; empty: every client.
    pub sources: Sources,
    /// Sorted by (address, port), unique.
    pub backends: Vec<Backend>,
}

/// Desired services, keyed by what the data path keys them by.
pub type Desired = BTreeMap<ServiceId, Service>;

/// An address as the maps store it.
pub fn ip_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => (v4_bytes(v4.octets()), FAMILY_V4),
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address the maps store, back as an `IpAddr`.
pub fn bytes_ip(bytes: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for id in [
            ServiceId { addr: ServiceAddr::Vip("10.0.0.1".parse().unwrap()), port: 80, proto: Proto::Tcp },
            ServiceId { addr: ServiceAddr::Vip("fd00::1".parse().unwrap()), port: 53, proto: Proto::Udp },
            ServiceId { addr: ServiceAddr::NodePort { v6: false }, port: 10000, proto: Proto::Tcp },
            ServiceId { addr: ServiceAddr::NodePort { v6: true }, port: 10000, proto: Proto::Udp },
        ] {
            assert_eq!(ServiceId::from_key(&id.key()), Some(id), "{id}");
        }
    }

    #[test]
    fn group_lists_split_like_marathon_lb_and_refuse_what_is_no_name() {
        assert_eq!(parse_groups("internal, external").unwrap(), ["external", "internal"].map(String::from).into());
        assert!(parse_groups("internal,,external").unwrap_err().contains("\"\" is not a group name"));
        assert!(parse_groups("a b").is_err());
    }

    #[test]
    fn source_ranges_read_like_haproxys_src_acl_and_refuse_what_is_no_prefix() {
        let sources = parse_sources(["167.114.239.226 167.114.238.0/22", "2001:db8::/32,10.1.2.3/8"]).unwrap();
        let text: Vec<String> = sources.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["10.0.0.0/8", "167.114.236.0/22", "167.114.239.226/32", "2001:db8::/32"]);
        assert!(admits(&sources, "10.9.9.9".parse().unwrap()));
        assert!(!admits(&sources, "192.0.2.1".parse().unwrap()));
        assert!(admits(&Sources::new(), "192.0.2.1".parse().unwrap()), "no ranges: every client");
        for bad in ["10.0.0.0/33", "10.0.0", "any", "fe80::/129"] {
            assert!(parse_sources([bad]).unwrap_err().contains(bad), "{bad}");
        }
    }
}
