//! VIP labels (`VIP_0: "10.0.0.1:80"` or `"/web:80"`) and the allocation of addresses to named
//! VIPs, the same on every node because it depends only on the set of names.

use std::{collections::BTreeMap, net::IpAddr};

/// What a VIP label asks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VipTarget {
    Ip(IpAddr),
    /// The name verbatim as the label has it (`/web`, `web` and `/group/app` are distinct).
    Named(String),
}

impl VipTarget {
    /// The address it stands for: its own, or a named VIP's as `named` allocated it (None: not
    /// allocated, e.g. the range is full).
    pub fn address(&self, named: &BTreeMap<String, IpAddr>) -> Option<IpAddr> {
        match self {
            VipTarget::Ip(ip) => Some(*ip),
            VipTarget::Named(name) => named.get(name).copied(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipLabel {
    pub target: VipTarget,
    pub port: u16,
}

/// Why a VIP label cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VipLabelError {
    #[error("{key}={value:?}: no :port")]
    NoPort { key: String, value: String },
    #[error("{key}={value:?}: {port:?} is not a port")]
    BadPort { key: String, value: String, port: String },
    #[error("{key}={value:?}: no address or name")]
    NoTarget { key: String, value: String },
}

/// `Some` if `key` is a VIP label key (it starts with `VIP` or `vip`), with the parsed value or
/// why it is not usable. The value is split at its last `:` (IPv6 VIPs are written without
/// brackets: `fd01:d::1:80`); the part before is an IP address or else a name.
pub fn parse_label(key: &str, value: &str) -> Option<Result<VipLabel, VipLabelError>> {
    if !(key.starts_with("VIP") || key.starts_with("vip")) {
        return None;
    }
    let (key, text) = (key.to_owned(), value.to_owned());
    let Some((host, port)) = value.rsplit_once(':') else {
        return Some(Err(VipLabelError::NoPort { key, value: text }));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Some(Err(VipLabelError::BadPort { key, value: text, port: port.to_owned() })),
    };
    if host.is_empty() {
        return Some(Err(VipLabelError::NoTarget { key, value: text }));
    }
    let target = match host.parse::<IpAddr>() {
        Ok(ip) => VipTarget::Ip(ip),
        Err(_) => VipTarget::Named(host.to_owned()),
    };
    Some(Ok(VipLabel { target, port }))
}

/// An IPv4 range for named VIPs (`--vip-cidr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipRange {
    base: u32,
    size: u32,
}

/// Why a `--vip-cidr` is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VipRangeError {
    #[error("{0:?} is not an IPv4 CIDR (ADDRESS/PREFIX, e.g. 11.0.0.0/8)")]
    NotCidr(String),
    #[error("{0:?}: the prefix length must be 8..30 (enough addresses, and not a whole /0)")]
    PrefixLength(String),
}

impl std::str::FromStr for VipRange {
    type Err = VipRangeError;

    fn from_str(cidr: &str) -> Result<Self, Self::Err> {
        let net: ipnet::Ipv4Net = cidr.parse().map_err(|_| VipRangeError::NotCidr(cidr.to_owned()))?;
        if !(8..=30).contains(&net.prefix_len()) {
            return Err(VipRangeError::PrefixLength(cidr.to_owned()));
        }
        Ok(Self { base: u32::from(net.network()), size: 1u32 << (32 - net.prefix_len()) })
    }
}

impl VipRange {
    /// Usable addresses: the network and broadcast addresses are left out.
    fn usable(&self) -> u32 {
        self.size - 2
    }
}

/// Gives every name an address of `range`: a hash of the name picks a slot; names are placed in
/// order (by slot, then name), a taken slot moves a name to the next free one. The result
/// depends only on the set of names, so every node computes the same. `None` for names beyond
/// the range's capacity.
pub fn allocate(names: &[String], range: &VipRange) -> BTreeMap<String, Option<IpAddr>> {
    let usable = range.usable() as u64;
    let mut ordered: Vec<(u64, &String)> = names.iter().map(|n| (fnv64(n.as_bytes()) % usable, n)).collect();
    ordered.sort();
    ordered.dedup_by(|a, b| a.1 == b.1);
    let mut taken = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for (slot, name) in ordered {
        let free = (0..usable).map(|step| (slot + step) % usable).find(|s| !taken.contains(s));
        let ip = free.map(|s| {
            taken.insert(s);
            IpAddr::V4((range.base + 1 + s as u32).into())
        });
        out.insert(name.clone(), ip);
    }
    out
}

fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(key: &str, value: &str) -> VipLabel {
        parse_label(key, value).unwrap().unwrap()
    }

    #[test]
    fn label_grammar() {
        assert_eq!(ok("VIP_0", "10.0.0.1:80"), VipLabel { target: VipTarget::Ip("10.0.0.1".parse().unwrap()), port: 80 });
        assert_eq!(ok("vip0", "fd01:d::1:80"), VipLabel { target: VipTarget::Ip("fd01:d::1".parse().unwrap()), port: 80 });
        assert_eq!(ok("VIP_1", "/web:80").target, VipTarget::Named("/web".into()));
        assert_eq!(ok("VIP_2", "merp:5000").target, VipTarget::Named("merp".into()));
        assert_eq!(ok("VIP_3", "/group/app:443").port, 443);
        // split at the last colon: `invalid-port::1234` is the name `invalid-port:`
        assert_eq!(ok("VIP_0", "invalid-port::1234").target, VipTarget::Named("invalid-port:".into()));
        assert!(parse_label("VIP_0", "missing-port").unwrap().is_err());
        assert!(parse_label("VIP_0", "/web:0").unwrap().is_err());
        assert!(parse_label("VIP_0", "/web:http").unwrap().is_err());
        assert!(parse_label("HAPROXY_GROUP", "external").is_none());
        assert!(parse_label("my_VIP", "/web:80").is_none(), "the key must start with VIP");
    }

    #[test]
    fn allocation_is_deterministic_and_unique() {
        let range = "11.0.0.0/8".parse::<VipRange>().unwrap();
        let names: Vec<String> = (0..500).map(|i| format!("/app-{i}")).collect();
        let a = allocate(&names, &range);
        let mut reversed = names.clone();
        reversed.reverse();
        assert_eq!(a, allocate(&reversed, &range), "order of discovery must not matter");
        let ips: std::collections::BTreeSet<_> = a.values().map(|v| v.unwrap()).collect();
        assert_eq!(ips.len(), 500);
        assert!(ips.iter().all(|ip| matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 11)));
    }

    #[test]
    fn collisions_are_resolved_and_a_full_range_says_so() {
        let range = "10.9.0.0/30".parse::<VipRange>().unwrap(); // 2 usable addresses
        let names: Vec<String> = ["/a", "/b", "/c"].iter().map(|s| s.to_string()).collect();
        let a = allocate(&names, &range);
        assert_eq!(a.values().filter(|v| v.is_some()).count(), 2);
        assert_eq!(a.values().filter(|v| v.is_none()).count(), 1);
        assert!("10.0.0.0/31".parse::<VipRange>().is_err());
        assert!("fd00::/64".parse::<VipRange>().is_err());
    }
}
