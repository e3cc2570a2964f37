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

/// Hash of a connection's (source, source port, protocol) towards one service. The destination is
/// implied by the service the ring belongs to, so it is left out: a client's connection to a VIP
/// and to the same service port via a node address land on the same backend.
/// Written without loops or slice indexing, so the BPF build has no panic paths.
#[inline(always)]
pub fn flow_hash(src: &[u8; 16], sport: u16, proto: u8) -> u32 {
    let words = [
        u32::from_ne_bytes([src[0], src[1], src[2], src[3]]),
        u32::from_ne_bytes([src[4], src[5], src[6], src[7]]),
        u32::from_ne_bytes([src[8], src[9], src[10], src[11]]),
        u32::from_ne_bytes([src[12], src[13], src[14], src[15]]),
    ];
    let mut h: u32 = 0x9747_b28c;
    h = round(h, words[0]);
    h = round(h, words[1]);
    h = round(h, words[2]);
    h = round(h, words[3]);
    mix32(h ^ ((sport as u32) << 8) ^ proto as u32)
}

#[inline(always)]
const fn round(h: u32, word: u32) -> u32 {
    mix32(h ^ word).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// Ring slot of a hash for a ring of `ring_size` entries (slot 0 for an empty ring, so the BPF
/// build has no division-by-zero panic path).
#[inline(always)]
pub fn ring_slot(hash: u32, ring_size: u32) -> u32 {
    hash.checked_rem(ring_size).unwrap_or_default()
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
