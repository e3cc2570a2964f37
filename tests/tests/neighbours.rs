//! Neighbour resolution for full-NAT backends (root): the agent asks the kernel to resolve the
//! next hop of a backend behind an uplink, and sends the backend nothing.
//!
//! ```text
//!  peer ns  10.203.0.1, .3 ──veth (uplink)── node ns ──veth── other ns 10.204.0.2
//!           fd00:203::1, ::3                  10.99.0.0/24 via 10.203.0.3, fd00:99::/64 via fd00:203::3
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb::node::neighbours::NeighbourResolver;
use lb_tests::netns::{veth, Netns};

struct Topology {
    node: Netns,
    peer: Netns,
    other: Netns,
    uplink: String,
    other_link: String,
}

impl Topology {
    fn new() -> Result<Self> {
        let node = Netns::new("lbn")?;
        let peer = Netns::new("lbp")?;
        let other = Netns::new("lbo")?;
        let (uplink, peer_end) = veth(&node, &peer)?;
        node.addr(&uplink, "10.203.0.2/24")?;
        node.addr(&uplink, "fd00:203::2/64")?;
        for cidr in ["10.203.0.1/24", "10.203.0.3/24", "fd00:203::1/64", "fd00:203::3/64"] {
            peer.addr(&peer_end, cidr)?;
        }
        node.route("10.99.0.0/24", ip("10.203.0.3"))?;
        node.route("fd00:99::/64", ip("fd00:203::3"))?;
        let (other_link, other_end) = veth(&node, &other)?;
        node.addr(&other_link, "10.204.0.1/24")?;
        node.addr(&other_link, "fd00:204::1/64")?;
        other.addr(&other_end, "10.204.0.2/24")?;
        other.addr(&other_end, "fd00:204::2/64")?;
        Ok(Self { node, peer, other, uplink, other_link })
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn ifindex(ns: &Netns, dev: &str) -> Result<u32> {
    let out = ns.command("ip").args(["-j", "link", "show", "dev", dev]).output()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
    let index = links[0]["ifindex"].as_u64().with_context(|| format!("no ifindex for {dev}: {links}"))?;
    Ok(u32::try_from(index)?)
}

/// `ip neigh show to ADDR dev DEV` in `ns`: the entry's line, empty if there is none.
fn neighbour(ns: &Netns, addr: &str, dev: &str) -> Result<String> {
    let out = ns.command("ip").args(["neigh", "show", "to", addr, "dev", dev]).output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Waits for `addr` to be resolved on `dev`: REACHABLE, or STALE/DELAY once it aged.
fn wait_resolved(ns: &Netns, addr: &str, dev: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entry = neighbour(ns, addr, dev)?;
        if ["REACHABLE", "STALE", "DELAY"].iter().any(|state| entry.contains(state)) {
            return Ok(entry);
        }
        anyhow::ensure!(Instant::now() < deadline, "{addr} on {dev} not resolved: {entry:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The UDP and TCP counters of a namespace (`/proc/net/snmp` and `snmp6`, e.g.
/// `Udp:InDatagrams`, `Udp6NoPorts`): any datagram or segment that arrives moves one of them.
fn udp_tcp_counters(ns: &Netns) -> Result<BTreeMap<String, String>> {
    let mut counters = BTreeMap::new();
    let snmp = String::from_utf8(ns.command("cat").arg("/proc/net/snmp").output()?.stdout)?;
    let lines: Vec<&str> = snmp.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (group, names) = names.split_once(' ').context("/proc/net/snmp")?;
        for (name, value) in names.split(' ').zip(values.split(' ').skip(1)) {
            counters.insert(format!("{group}{name}"), value.to_string());
        }
    }
    let snmp6 = String::from_utf8(ns.command("cat").arg("/proc/net/snmp6").output()?.stdout)?;
    for line in snmp6.lines() {
        if let Some((name, value)) = line.split_once(char::is_whitespace) {
            counters.insert(name.to_string(), value.trim().to_string());
        }
    }
    counters.retain(|name, _| name.starts_with("Udp") || name.starts_with("Tcp"));
    anyhow::ensure!(counters.contains_key("Udp:InDatagrams") && counters.contains_key("Udp6NoPorts"), "{counters:?}");
    Ok(counters)
}

#[test]
fn next_hops_behind_the_uplink_are_resolved_without_traffic() {
    let topo = Topology::new().unwrap();
    let uplink = ifindex(&topo.node, &topo.uplink).unwrap();
    let peer_before = udp_tcp_counters(&topo.peer).unwrap();
    let other_before = udp_tcp_counters(&topo.other).unwrap();
    let on_link = ["10.203.0.1", "fd00:203::1"];
    let behind_gateway = ["10.99.0.5", "fd00:99::5"];
    let not_behind_uplink = ["10.204.0.2", "fd00:204::2"];
    let backends: BTreeSet<IpAddr> = on_link.iter().chain(&behind_gateway).chain(&not_behind_uplink).map(|a| ip(a)).collect();

    let sent = topo
        .node
        .run(move || {
            let mut resolver = NeighbourResolver::new().unwrap();
            let first = resolver.request(&backends, &[uplink]).unwrap();
            let again = resolver.request(&backends, &[uplink]).unwrap();
            let mut without_one = backends.clone();
            without_one.remove(&ip("10.203.0.1"));
            let after_removal = resolver.request(&without_one, &[uplink]).unwrap();
            let back = resolver.request(&backends, &[uplink]).unwrap();
            [first, again, after_removal, back]
        })
        .unwrap();
    assert_eq!(sent, [4, 0, 0, 1], "requests sent: first, repeated, one removed, it comes back");

    for next_hop in ["10.203.0.1", "10.203.0.3", "fd00:203::1", "fd00:203::3"] {
        wait_resolved(&topo.node, next_hop, &topo.uplink).unwrap();
    }
    for backend in behind_gateway {
        assert_eq!(neighbour(&topo.node, backend, &topo.uplink).unwrap(), "", "{backend} is behind a gateway");
    }
    for backend in not_behind_uplink {
        assert_eq!(neighbour(&topo.node, backend, &topo.other_link).unwrap(), "", "{backend} is not behind an uplink");
    }
    assert_eq!(udp_tcp_counters(&topo.peer).unwrap(), peer_before, "no datagram or segment reached the peer");
    assert_eq!(udp_tcp_counters(&topo.other).unwrap(), other_before, "nothing reached the non-uplink backend");
}
