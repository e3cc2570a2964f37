//! The routes file the agent writes for BIRD (`--bird-routes`), which the operator's
//! `bird.conf` includes and exports to its BGP sessions: one `protocol static` per address
//! family, always present (an export filter can name them even while they are empty), one
//! route per announced VIP. Pure.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

/// The names of the two static protocols (what `bird.conf`'s filters match on).
pub const PROTOCOL_V4: &str = "lb_vips4";
pub const PROTOCOL_V6: &str = "lb_vips6";

/// The file's text for `vips`. Routes are `blackhole`: the next hop BGP announces is the
/// session's own address; a `protocol kernel` must not import them (bird.conf example in
/// docs/multi-node.md).
pub fn render(vips: &BTreeSet<IpAddr>) -> String {
    let mut text = String::from("# Written by lb (the agent) for BIRD: the VIPs this node serves. Do not edit; include it from bird.conf.\n");
    for (name, channel, v6) in [(PROTOCOL_V4, "ipv4", false), (PROTOCOL_V6, "ipv6", true)] {
        let _ = writeln!(text, "protocol static {name} {{\n  {channel};");
        for vip in vips.iter().filter(|ip| ip.is_ipv6() == v6) {
            let bits = if v6 { 128 } else { 32 };
            let _ = writeln!(text, "  route {vip}/{bits} blackhole;");
        }
        text.push_str("}\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_route_per_vip_in_its_familys_protocol_and_both_protocols_always() {
        let vips: BTreeSet<IpAddr> = ["10.0.0.1", "fd00::80", "10.0.0.2"].iter().map(|a| a.parse().unwrap()).collect();
        let text = render(&vips);
        let v4 = text.find("protocol static lb_vips4").unwrap();
        let v6 = text.find("protocol static lb_vips6").unwrap();
        let (a, b, c) = (text.find("route 10.0.0.1/32 blackhole;").unwrap(), text.find("route 10.0.0.2/32").unwrap(), text.find("route fd00::80/128").unwrap());
        assert!(v4 < a && a < b && b < v6 && v6 < c, "{text}");
        let empty = render(&BTreeSet::new());
        assert!(empty.contains("protocol static lb_vips4 {\n  ipv4;\n}") && empty.contains("lb_vips6"), "{empty}");
    }
}
