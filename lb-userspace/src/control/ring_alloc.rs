//! Where rings go in the pool (layout: `lb_common::ring_pool`): chunks of one ring size each,
//! taken from the free chunks when a size has no free ring and given back when their last ring
//! is freed. Rings of one size are interchangeable, so freeing and allocating never fragments a
//! chunk; the waste is at most one partly used chunk per size in use.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::ring_pool::{self, CHUNK_SLOTS};

/// A ring in the pool: `size` slots from slot `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ring {
    pub start: u32,
    pub size: u32,
}

#[derive(Debug)]
pub struct RingAllocator {
    free_chunks: BTreeSet<u32>,
    sizes: BTreeMap<u32, SizeClass>,
}

/// The chunks given to one ring size.
#[derive(Debug, Default)]
struct SizeClass {
    /// Free rings by start (lowest first, so the low chunks fill up and the high ones empty).
    free: BTreeSet<u32>,
    /// Rings in use per chunk.
    used: HashMap<u32, u32>,
}

/// A ring of the maps that this layout could not have placed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("ring of {} slots at slot {} {why}", ring.size, ring.start)]
pub struct Misplaced {
    pub ring: Ring,
    pub why: &'static str,
}

impl RingAllocator {
    /// An allocator for a pool of `slots` slots (whole chunks; a partial one is not used) with
    /// `used` rings already live.
    pub fn new(slots: u32, used: impl IntoIterator<Item = Ring>) -> Result<Self, Misplaced> {
        let chunks = slots / CHUNK_SLOTS;
        let mut this = Self { free_chunks: (0..chunks).collect(), sizes: BTreeMap::new() };
        let mut used: Vec<Ring> = used.into_iter().collect();
        used.sort_unstable();
        for ring in used {
            this.claim(ring, chunks)?;
        }
        Ok(this)
    }

    /// Marks a live ring as used, giving its chunk to its size if it is the first there.
    fn claim(&mut self, ring: Ring, chunks: u32) -> Result<(), Misplaced> {
        let misplaced = |why| Misplaced { ring, why };
        let (chunk, offset) = (ring.start / CHUNK_SLOTS, ring.start % CHUNK_SLOTS);
        if ring.size == 0 || ring.size > CHUNK_SLOTS || chunk >= chunks {
            return Err(misplaced("is outside the pool"));
        }
        if !offset.is_multiple_of(ring.size) || offset / ring.size >= ring_pool::rings_per_chunk(ring.size) {
            return Err(misplaced("is not on a ring boundary of its chunk"));
        }
        if self.free_chunks.remove(&chunk) {
            self.sizes.entry(ring.size).or_default().add_chunk(chunk, ring.size);
        }
        let class = self
            .sizes
            .get_mut(&ring.size)
            .filter(|c| c.used.contains_key(&chunk))
            .ok_or_else(|| misplaced("shares its chunk with rings of another size"))?;
        if !class.free.remove(&ring.start) {
            return Err(misplaced("is used twice"));
        }
        *class.used.entry(chunk).or_default() += 1;
        Ok(())
    }

    /// A free ring of `size` slots, or None when no chunk is left for it.
    pub fn allocate(&mut self, size: u32) -> Option<Ring> {
        let class = self.sizes.entry(size).or_default();
        if class.free.is_empty() {
            let chunk = self.free_chunks.pop_first()?;
            class.add_chunk(chunk, size);
        }
        let start = class.free.pop_first()?;
        *class.used.entry(start / CHUNK_SLOTS).or_default() += 1;
        Some(Ring { start, size })
    }

    /// Gives back a ring allocated here (or claimed by `new`).
    pub fn free(&mut self, ring: Ring) {
        let chunk = ring.start / CHUNK_SLOTS;
        let Some(class) = self.sizes.get_mut(&ring.size) else { return };
        let Some(used) = class.used.get_mut(&chunk) else { return };
        if !class.free.insert(ring.start) {
            return;
        }
        *used -= 1;
        if *used == 0 {
            class.used.remove(&chunk);
            for index in 0..ring_pool::rings_per_chunk(ring.size) {
                class.free.remove(&ring_pool::ring_start(chunk, index, ring.size));
            }
            self.free_chunks.insert(chunk);
        }
    }

    /// Slots of the rings handed out and not given back: a leak shows as more than the live
    /// rings (and those waiting to be reused) hold.
    pub fn used_slots(&self) -> u64 {
        self.sizes.iter().map(|(size, class)| u64::from(*size) * class.used.values().map(|&n| u64::from(n)).sum::<u64>()).sum()
    }

    /// Slots not in any chunk: what rings of a size not in use yet can get.
    pub fn free_chunk_slots(&self) -> u64 {
        self.free_chunks.len() as u64 * CHUNK_SLOTS as u64
    }
}

impl SizeClass {
    fn add_chunk(&mut self, chunk: u32, size: u32) {
        self.used.insert(chunk, 0);
        self.free.extend((0..ring_pool::rings_per_chunk(size)).map(|index| ring_pool::ring_start(chunk, index, size)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_slots_follow_allocations_and_frees() {
        let mut alloc = RingAllocator::new(4 * CHUNK_SLOTS, [Ring { start: 0, size: 359 }]).unwrap();
        assert_eq!(alloc.used_slots(), 359);
        let a = alloc.allocate(421).unwrap();
        let b = alloc.allocate(359).unwrap();
        assert_eq!(alloc.used_slots(), 359 * 2 + 421);
        alloc.free(a);
        alloc.free(b);
        alloc.free(b);
        assert_eq!(alloc.used_slots(), 359, "a double free gives nothing back twice");
    }

    const POOL: u32 = 4 * CHUNK_SLOTS;

    #[test]
    fn rings_of_one_size_share_a_chunk_and_the_empty_chunk_goes_back() {
        let mut alloc = RingAllocator::new(POOL, []).unwrap();
        let a = alloc.allocate(331).unwrap();
        let b = alloc.allocate(331).unwrap();
        assert_eq!((a.start, b.start), (0, 331));
        let big = alloc.allocate(65521).unwrap();
        assert_eq!(big.start, CHUNK_SLOTS, "another size takes another chunk");
        assert_eq!(alloc.free_chunk_slots(), 2 * CHUNK_SLOTS as u64);
        alloc.free(a);
        assert_eq!(alloc.allocate(331).unwrap(), a, "a freed ring is reused first");
        alloc.free(a);
        alloc.free(b);
        assert_eq!(alloc.free_chunk_slots(), 3 * CHUNK_SLOTS as u64, "the chunk is free again");
        assert_eq!(alloc.allocate(127).unwrap().start, 0, "and another size can take it");
    }

    #[test]
    fn a_full_pool_says_so_and_frees_make_room() {
        let mut alloc = RingAllocator::new(POOL, []).unwrap();
        let rings: Vec<Ring> = (0..4).map(|_| alloc.allocate(65521).unwrap()).collect();
        assert_eq!(alloc.allocate(65521), None);
        assert_eq!(alloc.allocate(127), None, "no chunk left for another size");
        alloc.free(rings[2]);
        assert_eq!(alloc.allocate(127).unwrap().start, 2 * CHUNK_SLOTS);
    }

    #[test]
    fn live_rings_of_the_maps_are_claimed_and_the_rest_is_free() {
        let used = [Ring { start: 331, size: 331 }, Ring { start: CHUNK_SLOTS, size: 127 }];
        let mut alloc = RingAllocator::new(POOL, used).unwrap();
        assert_eq!(alloc.allocate(331).unwrap().start, 0);
        assert_eq!(alloc.allocate(331).unwrap().start, 662);
        assert_eq!(alloc.allocate(127).unwrap().start, CHUNK_SLOTS + 127);
        assert_eq!(alloc.allocate(409).unwrap().start, 2 * CHUNK_SLOTS);
    }

    #[test]
    fn rings_this_layout_cannot_have_placed_are_refused() {
        let refused = |used: &[Ring]| RingAllocator::new(POOL, used.iter().copied()).unwrap_err().why;
        assert_eq!(refused(&[Ring { start: 5, size: 331 }]), "is not on a ring boundary of its chunk");
        assert_eq!(refused(&[Ring { start: POOL, size: 127 }]), "is outside the pool");
        assert_eq!(refused(&[Ring { start: 0, size: 331 }, Ring { start: 0, size: 331 }]), "is used twice");
        assert_eq!(refused(&[Ring { start: 0, size: 331 }, Ring { start: 409, size: 409 }]), "shares its chunk with rings of another size");
        // The last ring of a chunk would cross into the next one when the size does not divide it.
        assert_eq!(refused(&[Ring { start: 197 * 331, size: 331 }]), "is not on a ring boundary of its chunk");
    }
}
