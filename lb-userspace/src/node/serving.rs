//! Where this node serves services: its addresses (all of them, or `--node-ip`'s) with the
//! group word `--expose` gives each, and its uplinks with theirs (control::exposure).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::addrs::{self, NodeAddr};
use crate::control::exposure::{Exposure, Target};

/// An uplink (`--iface`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub ifindex: u32,
}

/// The group words of the node's addresses and uplinks, as the maps take them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Words {
    pub addrs: Vec<(IpAddr, u32)>,
    pub uplinks: Vec<(u32, u32)>,
}

#[derive(Debug, Clone)]
pub struct Serving {
    /// Explicit node addresses (empty: every address of the node).
    node_ips: Vec<IpAddr>,
    uplinks: Vec<Uplink>,
    exposure: Exposure,
}

impl Serving {
    pub fn new(node_ips: Vec<IpAddr>, uplinks: Vec<Uplink>, exposure: Exposure) -> Self {
        Self { node_ips, uplinks, exposure }
    }

    pub fn uplinks(&self) -> &[Uplink] {
        &self.uplinks
    }

    pub fn exposure(&self) -> &Exposure {
        &self.exposure
    }

    /// The words for the node's addresses as they are now.
    pub fn words(&self) -> std::io::Result<Words> {
        Ok(self.words_for(&addrs::discover()?))
    }

    /// The words, given the node's addresses (`discovered`, with their interfaces).
    pub fn words_for(&self, discovered: &[NodeAddr]) -> Words {
        let addrs = self.served_addrs(discovered).into_iter();
        let addrs = addrs.map(|a| (a.ip, self.exposure.addr_word(a.ip, a.iface.as_deref()))).collect();
        let uplinks = self
            .uplinks
            .iter()
            .map(|u| {
                let own: Vec<IpAddr> = discovered.iter().filter(|a| a.iface.as_deref() == Some(u.name.as_str())).map(|a| a.ip).collect();
                (u.ifindex, self.exposure.uplink_word(&u.name, &own))
            })
            .collect();
        Words { addrs, uplinks }
    }

    /// The addresses service ports are served on: every discovered one, or `--node-ip`'s (with
    /// the interface that has each, if one does), and always 127.0.0.1 and ::1 on `lo` (a
    /// namespace whose loopback is down has no address yet).
    fn served_addrs(&self, discovered: &[NodeAddr]) -> Vec<NodeAddr> {
        let mut served: Vec<NodeAddr> = if self.node_ips.is_empty() {
            discovered.to_vec()
        } else {
            let iface_of = |ip: &IpAddr| discovered.iter().find(|a| a.ip == *ip).and_then(|a| a.iface.clone());
            self.node_ips.iter().map(|ip| NodeAddr { ip: *ip, iface: iface_of(ip) }).collect()
        };
        let ips: Vec<IpAddr> = served.iter().map(|a| a.ip).collect();
        for ip in addrs::with_loopback(Vec::new()) {
            if !ips.contains(&ip) {
                served.push(NodeAddr { ip, iface: Some("lo".to_owned()) });
            }
        }
        served.retain(|a| !addrs::is_link_local_v6(&a.ip));
        served.sort();
        served
    }

    /// What an operator should hear at start, given the node's addresses: public addresses
    /// that serve every app (no `--expose`), and `--expose` addresses the node does not have.
    pub fn warnings(&self, discovered: &[NodeAddr]) -> Vec<String> {
        let mut warnings = Vec::new();
        let public = self.publicly_exposed(discovered);
        if !public.is_empty() {
            let list = public.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
            warnings.push(format!(
                "every app is served on every address of this node, public ones too ({list}): give --expose GROUP=IFACE|ADDR to serve each group only where it belongs"
            ));
        }
        let served = self.served_addrs(discovered);
        for entry in self.exposure.entries() {
            for target in &entry.targets {
                if let Target::Addr(ip) = target {
                    if !served.iter().any(|a| a.ip == *ip) {
                        warnings.push(format!("--expose {}={ip}: this node does not serve on {ip} now; it is served there once it does", entry.group));
                    }
                }
            }
        }
        warnings
    }

    /// Without `--expose`, every service is served on every address: the public ones among
    /// `discovered` that would serve them.
    fn publicly_exposed(&self, discovered: &[NodeAddr]) -> Vec<IpAddr> {
        if self.exposure.restricts() {
            return Vec::new();
        }
        self.served_addrs(discovered).into_iter().map(|a| a.ip).filter(is_public).collect()
    }
}

/// Not private (RFC 1918, RFC 6598 shared, ULA), loopback, link-local or documentation space.
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let shared = a == 100 && (64..128).contains(&b);
            !(v4.is_private() || v4.is_loopback() || v4.is_link_local() || shared || v4.is_unspecified() || *v4 == Ipv4Addr::BROADCAST)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            let ula = first & 0xfe00 == 0xfc00;
            let link_local = first & 0xffc0 == 0xfe80;
            !(ula || link_local || v6.is_loopback() || v6.is_unspecified() || *v6 == Ipv6Addr::UNSPECIFIED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::exposure::{EVERY_GROUP, WRITTEN};

    fn at(ip: &str, iface: &str) -> NodeAddr {
        NodeAddr { ip: ip.parse().unwrap(), iface: Some(iface.to_owned()) }
    }

    fn node() -> Vec<NodeAddr> {
        vec![at("203.0.113.7", "eth0"), at("10.0.1.5", "eth1"), at("fd00::5", "eth1"), at("127.0.0.1", "lo")]
    }

    fn uplinks() -> Vec<Uplink> {
        vec![Uplink { name: "eth0".into(), ifindex: 2 }, Uplink { name: "eth1".into(), ifindex: 3 }]
    }

    #[test]
    fn addresses_and_uplinks_get_the_words_of_their_groups() {
        let entries = ["external=eth0", "internal=eth1"].iter().map(|e| e.parse().unwrap()).collect();
        let serving = Serving::new(Vec::new(), uplinks(), Exposure::new(entries, "internal").unwrap());
        let words = serving.words_for(&node());
        // Groups in name order: external is bit 0, internal bit 1.
        let word = |ip: &str| words.addrs.iter().find(|(a, _)| *a == ip.parse::<IpAddr>().unwrap()).unwrap().1;
        assert_eq!(word("203.0.113.7"), WRITTEN | 1);
        assert_eq!(word("10.0.1.5"), WRITTEN | 2);
        assert_eq!(word("fd00::5"), WRITTEN | 2);
        assert_eq!(word("127.0.0.1"), WRITTEN, "no entry names lo: local clients go through the socket hooks");
        assert_eq!(word("::1"), WRITTEN, "added even when loopback is down");
        assert_eq!(words.uplinks, vec![(2, WRITTEN | 1), (3, WRITTEN | 2)]);
    }

    #[test]
    fn node_ips_are_served_with_the_interface_that_has_them() {
        let entries = vec!["internal=eth1".parse().unwrap()];
        let serving = Serving::new(vec!["10.0.1.5".parse().unwrap()], uplinks(), Exposure::new(entries, "internal").unwrap());
        let words = serving.words_for(&node());
        assert_eq!(words.addrs.len(), 3, "the address and loopback: {:?}", words.addrs);
        assert!(words.addrs.contains(&("10.0.1.5".parse().unwrap(), WRITTEN | 1)));
    }

    #[test]
    fn without_expose_every_word_is_every_group_and_public_addresses_are_named() {
        let serving = Serving::new(Vec::new(), uplinks(), Exposure::default());
        let words = serving.words_for(&node());
        assert!(words.addrs.iter().all(|(_, w)| *w == EVERY_GROUP));
        assert!(words.uplinks.iter().all(|(_, w)| *w == EVERY_GROUP));
        assert_eq!(serving.publicly_exposed(&node()), vec!["203.0.113.7".parse::<IpAddr>().unwrap()]);
        let warnings = serving.warnings(&node());
        assert!(warnings.len() == 1 && warnings[0].contains("public ones too (203.0.113.7)"), "{warnings:?}");
    }

    #[test]
    fn an_expose_address_the_node_does_not_have_is_warned_about() {
        let entries = vec!["internal=10.0.1.5,10.9.9.9".parse().unwrap()];
        let serving = Serving::new(Vec::new(), uplinks(), Exposure::new(entries, "internal").unwrap());
        assert_eq!(serving.warnings(&node()), ["--expose internal=10.9.9.9: this node does not serve on 10.9.9.9 now; it is served there once it does"]);
    }

    #[test]
    fn private_and_special_ranges_are_not_public() {
        for ip in ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "127.0.0.1", "169.254.1.1", "fd12::1", "fe80::1", "::1"] {
            assert!(!is_public(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "203.0.113.7", "2001:db8::1", "100.128.0.1"] {
            assert!(is_public(&ip.parse().unwrap()), "{ip}");
        }
    }
}
