//! This node's addresses: where service ports are served.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address of this node and the interface it is on (None: loopback's, added by
/// [`with_loopback`], or an address given by `--node-ip` that no interface has now).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeAddr {
    pub ip: IpAddr,
    pub iface: Option<String>,
}

/// Every address configured on an interface of the current network namespace (link-local
/// IPv6 left out), with its interface.
pub fn discover() -> std::io::Result<Vec<NodeAddr>> {
    let mut addrs = Vec::new();
    each_address(|ip, _, iface| addrs.push(NodeAddr { ip, iface: Some(iface.to_owned()) }))?;
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// The networks this node's addresses are on (address and netmask, host bits cleared).
pub fn networks() -> std::io::Result<Vec<ipnet::IpNet>> {
    let mut nets = Vec::new();
    each_address(|ip, mask, _| {
        let prefix = mask.map_or(if ip.is_ipv4() { 32 } else { 128 }, |m| match m {
            IpAddr::V4(m) => u32::from(m).leading_ones() as u8,
            IpAddr::V6(m) => u128::from(m).leading_ones() as u8,
        });
        if let Ok(net) = ipnet::IpNet::new(ip, prefix) {
            nets.push(net.trunc());
        }
    })?;
    nets.sort();
    nets.dedup();
    Ok(nets)
}

/// Calls `f(address, netmask, interface)` for every address getifaddrs lists (link-local IPv6
/// left out).
fn each_address(mut f: impl FnMut(IpAddr, Option<IpAddr>, &str)) -> std::io::Result<()> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success getifaddrs makes it own a list that
    // is freed once below, after the last read of it.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor is non-null and points into the list getifaddrs returned, which stays
        // allocated until freeifaddrs below.
        let entry = unsafe { &*cursor };
        // SAFETY: ifa_addr is null or a sockaddr of the same list, sized for its sa_family.
        if let Some(ip) = unsafe { sockaddr_ip(entry.ifa_addr) }.filter(|ip| !is_link_local_v6(ip)) {
            // SAFETY: as ifa_addr: ifa_netmask is null or a sockaddr of the same list.
            let mask = unsafe { sockaddr_ip(entry.ifa_netmask) };
            // SAFETY: ifa_name is a NUL-terminated string of the same list.
            let iface = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }.to_string_lossy();
            f(ip, mask, &iface);
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: head came from a successful getifaddrs, is freed exactly once, and no reference
    // into the list (`entry`) lives past the loop.
    unsafe { libc::freeifaddrs(head) };
    Ok(())
}

pub fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// `addrs` plus 127.0.0.1 and ::1 (local clients use service ports there), link-local IPv6
/// left out, sorted, unique.
pub fn with_loopback(mut addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    addrs.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    addrs.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    addrs.retain(|ip| !is_link_local_v6(ip));
    addrs.sort();
    addrs.dedup();
    addrs
}

/// The address in `sa`.
///
/// # Safety
/// `sa` is null or points to a sockaddr as large as its `sa_family` says (as getifaddrs gives).
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: sa is non-null and points to a sockaddr (the caller's contract).
    match unsafe { (*sa).sa_family } as i32 {
        libc::AF_INET => {
            // SAFETY: an AF_INET sockaddr is a sockaddr_in (the caller's contract: as large as
            // its family says).
            let sin = unsafe { &*(sa as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6, as above.
            let sin6 = unsafe { &*(sa as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_includes_loopback_on_its_interface() {
        let addrs = discover().unwrap();
        assert!(addrs.iter().any(|a| a.ip == IpAddr::V4(Ipv4Addr::LOCALHOST) && a.iface.as_deref() == Some("lo")), "{addrs:?}");
    }

    #[test]
    fn networks_include_loopback() {
        let nets = networks().unwrap();
        assert!(nets.contains(&"127.0.0.0/8".parse().unwrap()), "{nets:?}");
    }

    #[test]
    fn link_local_v6_is_left_out() {
        let addrs = with_loopback(vec!["fe80::1".parse().unwrap(), "10.0.0.1".parse().unwrap()]);
        assert_eq!(addrs.len(), 3, "{addrs:?}");
    }
}
