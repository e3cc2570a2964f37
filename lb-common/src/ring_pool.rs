//! Layout of `RINGS`, the pool every service's Maglev ring is carved from: one BPF array of u64
//! elements, each holding two u32 backend-id slots (array elements are 8-byte aligned, so u32
//! elements would waste half the pool). Seen as one u32 array (the agent's mmap view on this
//! little-endian host), a ring is `size` consecutive slots from `start`; slot `s` is the low half
//! of element `s / 2` when `s` is even, the high half when odd. Rings differ in size (see
//! `maglev::ring_size_for`): the pool is cut into chunks of [`CHUNK_SLOTS`], and each chunk holds
//! rings of one size, so a freed ring is reused by the next service of that size and an empty
//! chunk by any size. The kernel, the agent and the tests all go through these functions, so
//! they agree on the layout.

/// Slots per chunk: the largest ring fits one chunk.
pub const CHUNK_SLOTS: u32 = 65536;

const _: () = assert!(crate::maglev::MAX_RING_SIZE <= CHUNK_SLOTS);

/// Default pool: 128 chunks (32 MiB), 20,000 rings of 3-backend services with room to swap.
pub const DEFAULT_RING_SLOTS: u32 = 128 * CHUNK_SLOTS;

/// Backend-id slots per u64 element of the pool.
const SLOTS_PER_ELEMENT: u32 = 2;

/// Bytes of one slot in the agent's u32 view of the pool.
pub const SLOT_BYTES: u64 = core::mem::size_of::<u32>() as u64;

/// Elements of the pool array that holds `slots` slots.
pub const fn elements(slots: u32) -> u32 {
    slots.div_ceil(SLOTS_PER_ELEMENT)
}

/// Slots of a pool array of `elements` elements.
pub const fn slots(elements: u32) -> u64 {
    elements as u64 * SLOTS_PER_ELEMENT as u64
}

/// Rings of `size` slots in one chunk.
pub const fn rings_per_chunk(size: u32) -> u32 {
    CHUNK_SLOTS / size
}

/// The first slot of ring `index` of a chunk of rings of `size` slots.
pub const fn ring_start(chunk: u32, index: u32, size: u32) -> u32 {
    chunk * CHUNK_SLOTS + index * size
}

/// Slot of entry `entry` of the ring that starts at `start`. Wrapping: the kernel must not
/// panic, and an out-of-range slot is refused by the element lookup anyway.
#[inline(always)]
pub const fn slot(start: u32, entry: u32) -> u32 {
    start.wrapping_add(entry)
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

/// Byte range of the ring of `size` slots from `start`, in the u32 view of the pool.
pub const fn ring_bytes(start: u32, size: u32) -> core::ops::Range<u64> {
    let begin = start as u64 * SLOT_BYTES;
    begin..begin + size as u64 * SLOT_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_slot_counts_round_up_to_a_whole_element() {
        assert_eq!(elements(7), 4);
        assert_eq!(elements(CHUNK_SLOTS), CHUNK_SLOTS / 2);
        assert_eq!(slots(elements(DEFAULT_RING_SLOTS)), DEFAULT_RING_SLOTS as u64);
    }

    #[test]
    fn rings_are_consecutive_slots_two_per_element_low_half_first() {
        let start = ring_start(1, 2, 331);
        assert_eq!(start, 65536 + 662);
        assert_eq!(slot(start, 1), 66199);
        assert_eq!(element_of(66199), 33099);
        let element = (9u64 << 32) | 5;
        assert_eq!(slot_value(element, 66198), 5);
        assert_eq!(slot_value(element, 66199), 9);
        assert_eq!(ring_bytes(start, 331), 264_792..266_116);
        // The last ring of a chunk ends inside it.
        let last = ring_start(0, rings_per_chunk(331) - 1, 331);
        assert!(last + 331 <= CHUNK_SLOTS);
    }
}
