//! The flow hash: which ring slot a connection lands on. Shared by the XDP program, the socket
//! hooks and the host tests, so all agree on where a given 5-tuple goes.

/// murmur3's 32-bit finalizer: full avalanche, cheap, no tables (BPF-friendly).
#[inline(always)]
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
fn word(bytes: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([bytes[i * 4], bytes[i * 4 + 1], bytes[i * 4 + 2], bytes[i * 4 + 3]])
}

/// Hash of a connection's (source, source port, protocol) towards one service. The destination is
/// implied by the service the ring belongs to, so it is left out: a client's connection to a VIP
/// and to the same service port via a node address land on the same backend.
#[inline(always)]
pub fn flow_hash(src: &[u8; 16], sport: u16, proto: u8) -> u32 {
    let mut h: u32 = 0x9747_b28c;
    let mut i = 0;
    while i < 4 {
        h = mix32(h ^ word(src, i)).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        i += 1;
    }
    mix32(h ^ ((sport as u32) << 8) ^ proto as u32)
}

/// Ring slot of a hash for a ring of `ring_size` entries.
#[inline(always)]
pub fn ring_slot(hash: u32, ring_size: u32) -> u32 {
    hash % ring_size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_spreads_source_ports_evenly() {
        let src = crate::v4_bytes([10, 1, 2, 3]);
        let mut buckets = [0u32; 16];
        for port in 1024..(1024 + 16 * 1000) {
            buckets[(flow_hash(&src, port, 6) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn flow_hash_depends_on_every_input() {
        let a = crate::v4_bytes([10, 1, 2, 3]);
        let mut b = a;
        b[15] = 1;
        assert_ne!(flow_hash(&a, 1000, 6), flow_hash(&b, 1000, 6));
        assert_ne!(flow_hash(&a, 1000, 6), flow_hash(&a, 1001, 6));
        assert_ne!(flow_hash(&a, 1000, 6), flow_hash(&a, 1000, 17));
    }
}
