//! Source ranges: a service's allow-list of client prefixes (marathon-lb's
//! `HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`), checked for new flows only. One LPM trie holds
//! every service's ranges, keyed by (service id, family, address), so a lookup costs one trie
//! walk whatever the number of ranges (no scan): the key's first 40 bits (id and family) always
//! match exactly, the rest is the range's prefix. `SERVICE_SOURCES` (by service id) says whether
//! a service has ranges at all, so services without any never touch the trie.

use crate::{FAMILY_V4, FAMILY_V6};

/// Bits of a `SOURCE_RANGES` key before the address: the service id and the family.
pub const FIXED_BITS: u32 = 40;

/// Data of a `SOURCE_RANGES` key (the trie's key is this behind a u32 prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    /// Big-endian: the trie matches keys bit by bit from the first byte.
    pub service_id: [u8; 4],
    pub family: u8,
    /// IPv4 in the first 4 bytes, the rest zero (as every address field).
    pub addr: [u8; 16],
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<SourceRange>() == 24);

/// A whole `SOURCE_RANGES` key, laid out as the trie's (a u32 prefix length, then the data, no
/// padding: `SourceRange` is all bytes): the programs build the lookup key in their per-CPU
/// scratch area, as 28 more bytes of BPF stack did not fit (lb_common::Scratch).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRangeKey {
    pub prefix_len: u32,
    pub range: SourceRange,
}

const _: () = assert!(core::mem::size_of::<SourceRangeKey>() == 28);

impl SourceRangeKey {
    /// Makes this the lookup key of one client of service `service_id`: its whole address.
    #[inline(always)]
    pub fn set_client(&mut self, service_id: u32, family: u8, client: &[u8; 16]) {
        self.prefix_len = FIXED_BITS + if family == FAMILY_V4 { 32 } else { 128 };
        self.range.service_id = service_id.to_be_bytes();
        self.range.family = family;
        self.range.addr = *client;
    }
}

impl SourceRange {
    /// The key data and prefix length of the range `addr`/`prefix` of service `service_id`
    /// (`prefix` at most 32 for IPv4, 128 for IPv6); bits past the prefix are cleared.
    pub fn new(service_id: u32, family: u8, addr: &[u8; 16], prefix: u8) -> (u32, Self) {
        let addr = masked(addr, prefix);
        (FIXED_BITS + prefix as u32, Self { service_id: service_id.to_be_bytes(), family, addr, _pad: [0; 3] })
    }

    /// The service, family and prefix length of a key read back from the trie.
    pub fn parts(&self, prefix_len: u32) -> (u32, u8, u8) {
        (u32::from_be_bytes(self.service_id), self.family, prefix_len.saturating_sub(FIXED_BITS) as u8)
    }
}

/// `addr` with every bit past the first `prefix` cleared: what an LPM trie key of that range
/// holds (the trie compares only the prefix, but two keys of one range must be equal to be one
/// entry).
pub fn masked(addr: &[u8; 16], prefix: u8) -> [u8; 16] {
    let mut masked = *addr;
    for (i, byte) in masked.iter_mut().enumerate() {
        let kept = (prefix as usize).saturating_sub(i * 8).min(8);
        *byte &= !(0xffu16 >> kept) as u8;
    }
    masked
}

/// The address a local client is checked as: the one it bound to, else the one Linux would
/// give it — the node address it connects to (a local destination is its own source), or the
/// loopback address for a VIP (whose backend is chosen only at connect()).
#[inline(always)]
pub fn local_client(bound: &[u8; 16], dst: &[u8; 16], dst_is_node_addr: bool, family: u8) -> [u8; 16] {
    if u128::from_ne_bytes(*bound) != 0 {
        *bound
    } else if dst_is_node_addr {
        *dst
    } else if family == FAMILY_V6 {
        u128::to_be_bytes(1)
    } else {
        u128::to_be_bytes(0x7f00_0001 << 96)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v4_bytes;

    #[test]
    fn a_range_key_clears_the_bits_past_its_prefix() {
        let (len, key) = SourceRange::new(7, FAMILY_V4, &v4_bytes([10, 1, 255, 3]), 12);
        assert_eq!(len, 52);
        assert_eq!(key.addr, v4_bytes([10, 0, 0, 0]));
        assert_eq!(key.service_id, [0, 0, 0, 7]);
        assert_eq!(key.parts(len), (7, FAMILY_V4, 12));
        let (_, all) = SourceRange::new(7, FAMILY_V6, &[0xff; 16], 0);
        assert_eq!(all.addr, [0; 16]);
        let (len, whole) = SourceRange::new(7, FAMILY_V6, &[0xff; 16], 128);
        assert_eq!(whole.addr, [0xff; 16]);
        let mut client = SourceRangeKey::default();
        client.set_client(7, FAMILY_V6, &[0xff; 16]);
        assert_eq!((client.prefix_len, client.range), (len, whole), "a client is its own /128");
    }

    #[test]
    fn a_local_client_is_its_bound_address_else_where_linux_would_send_it_from() {
        let node = v4_bytes([10, 0, 0, 5]);
        let bound = v4_bytes([192, 0, 2, 9]);
        assert_eq!(local_client(&bound, &node, true, FAMILY_V4), bound);
        assert_eq!(local_client(&[0; 16], &node, true, FAMILY_V4), node);
        assert_eq!(local_client(&[0; 16], &v4_bytes([10, 9, 0, 1]), false, FAMILY_V4), v4_bytes([127, 0, 0, 1]));
        let mut v6_loopback = [0; 16];
        v6_loopback[15] = 1;
        assert_eq!(local_client(&[0; 16], &[0xfd; 16], false, FAMILY_V6), v6_loopback);
    }
}
