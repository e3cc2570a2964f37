//! This node's addresses: where service ports are served.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every address configured on an interface of the current network namespace, plus loopback.
pub fn discover() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut addrs = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        if let Some(ip) = unsafe { sockaddr_ip(entry.ifa_addr) } {
            addrs.push(ip);
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(with_loopback(addrs))
}

/// `addrs` plus 127.0.0.1 and ::1 (local clients use service ports there), sorted, unique.
pub fn with_loopback(mut addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    addrs.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    addrs.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    addrs.retain(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80));
    addrs.sort();
    addrs.dedup();
    addrs
}

unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match unsafe { (*sa).sa_family } as i32 {
        libc::AF_INET => {
            let sin = unsafe { &*(sa as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
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
    fn discovery_includes_loopback() {
        let addrs = discover().unwrap();
        assert!(addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn link_local_v6_is_left_out() {
        let addrs = with_loopback(vec!["fe80::1".parse().unwrap(), "10.0.0.1".parse().unwrap()]);
        assert_eq!(addrs.len(), 3, "{addrs:?}");
    }
}
