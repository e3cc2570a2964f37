//! Layout of `RINGS`, the pool of Maglev rings: one BPF array of u64 elements, each holding two
//! u32 backend-id slots (array elements are 8-byte aligned, so u32 elements would waste half the
//! pool). Seen as one u32 array (the agent's mmap view on this little-endian host), ring `r`
//! occupies slots `r * ring_size .. (r + 1) * ring_size`; slot `s` is the low half of element
//! `s / 2` when `s` is even, the high half when odd. The kernel, the agent and the tests all go
//! through these functions, so they agree on the layout.

/// Rings in the pool beyond one per service: a swap needs a free ring while the old one is
/// still live.
pub const SPARE_RINGS: u32 = 64;

/// Backend-id slots per u64 element of the pool.
const SLOTS_PER_ELEMENT: u32 = 2;

/// Bytes of one slot in the agent's u32 view of the pool.
const SLOT_BYTES: u64 = core::mem::size_of::<u32>() as u64;

/// Rings in the pool of an agent configured for `max_services` services.
pub const fn rings(max_services: u32) -> u32 {
    max_services + SPARE_RINGS
}

/// Elements of the pool array that holds `rings` rings of `ring_size` slots (the last element
/// half used when the slot count is odd), or None when the slot count does not fit a u32.
pub const fn elements(rings: u32, ring_size: u32) -> Option<u32> {
    match rings.checked_mul(ring_size) {
        Some(slots) => Some(slots.div_ceil(SLOTS_PER_ELEMENT)),
        None => None,
    }
}

/// The ring size a pool of `elements` elements was created with for `rings` rings, or None when
/// `elements` is not a pool of that many rings (maps of another layout).
pub const fn ring_size(elements: u32, rings: u32) -> Option<u32> {
    if rings == 0 {
        return None;
    }
    let ring_size = (elements as u64 * SLOTS_PER_ELEMENT as u64 / rings as u64) as u32;
    match self::elements(rings, ring_size) {
        Some(e) if e == elements => Some(ring_size),
        _ => None,
    }
}

/// Slot of entry `entry` of ring `ring` in the u32 view of the pool. Wrapping: the kernel must
/// not panic, and an out-of-range slot is refused by the element lookup anyway.
#[inline(always)]
pub const fn slot(ring: u32, ring_size: u32, entry: u32) -> u32 {
    ring.wrapping_mul(ring_size).wrapping_add(entry)
}

/// The pool element that holds `slot`.
#[inline(always)]
pub const fn element_of(slot: u32) -> u32 {
    slot / SLOTS_PER_ELEMENT
}

/// The backend id in `slot`, given the element that holds it (`element_of(slot)`).
#[inline(always)]
pub const fn slot_value(element: u64, slot: u32) -> u32 {
    if slot.is_multiple_of(SLOTS_PER_ELEMENT) {
        element as u32
    } else {
        (element >> 32) as u32
    }
}

/// Byte range of ring `ring` in the u32 view of the pool.
pub const fn ring_bytes(ring: u32, ring_size: u32) -> core::ops::Range<u64> {
    let start = ring as u64 * ring_size as u64 * SLOT_BYTES;
    start..start + ring_size as u64 * SLOT_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_slot_counts_round_up_to_a_whole_element() {
        assert_eq!(elements(3, 7), Some(11));
        assert_eq!(elements(2, 7), Some(7));
        assert_eq!(elements(u32::MAX, 2), None);
    }

    #[test]
    fn the_ring_size_is_recovered_from_the_pool_size() {
        for (max_services, ring_size) in [(1, 7), (32, 251), (1024, 16381), (5, 65537)] {
            let rings = rings(max_services);
            let pool = elements(rings, ring_size).unwrap();
            assert_eq!(self::ring_size(pool, rings), Some(ring_size));
        }
        // A pool created for other limits is not mistaken for one of these.
        assert_eq!(self::ring_size(elements(rings(32), 251).unwrap() + 1, rings(32)), None);
        assert_eq!(self::ring_size(100, 0), None);
    }

    #[test]
    fn rings_are_consecutive_slots_two_per_element_low_half_first() {
        let (ring, ring_size) = (3, 7);
        assert_eq!(slot(ring, ring_size, 0), 21);
        assert_eq!(element_of(21), 10);
        let element = (9u64 << 32) | 5;
        assert_eq!(slot_value(element, 20), 5);
        assert_eq!(slot_value(element, 21), 9);
        assert_eq!(ring_bytes(ring, ring_size), 84..112);
        // The last ring ends inside the pool.
        let pool = elements(rings(1), ring_size).unwrap();
        assert!(ring_bytes(rings(1) - 1, ring_size).end <= pool as u64 * 8);
    }
}
