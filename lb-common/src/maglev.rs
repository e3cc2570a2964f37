//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights.
//!
//! The agent fills one ring per service; the kernel indexes it with [`crate::hash::flow_hash`].
//! Every node computes the same ring from the same backends, so a flow that ECMP moves to another
//! node still reaches the same backend. Alloc-free: the caller provides the ring and scratch.

/// Ring entry that means "no backend" (backend ids start at 1).
pub const EMPTY: u32 = 0;

/// Ring slots per weight unit (a backend of the smallest weight): with at least 100 slots per
/// backend, Maglev's shares differ by at most ~1% of the fair share (the imbalance is 1/ratio).
/// Measured (every backend removed in turn, M = the class for N backends): slots re-mapped
/// relative to the ideal 1/N — N=3 (M=307) 1.02×, N=5 1.20×, N=10 1.26×, N=30 1.62×,
/// N=100 2.55×; doubling the ratio buys little (N=30 at 200 per backend: 1.56×), while memory
/// doubles.
pub const SLOTS_PER_WEIGHT_UNIT: u64 = 100;

/// Every ring size, smallest first: the largest prime at or below 128·2^(k/4) for k = 0..=36,
/// four sizes per doubling (so a ring is at most ~19% larger than its backends need) up to the
/// largest prime below 65,536. Every node derives a service's size from its backends with the
/// same table, so rings stay identical across nodes.
pub const RING_SIZES: [u32; 37] = ring_sizes();

/// The largest ring: services with more than ~650 weight units share it (shares then differ by
/// up to units/65,521 of the fair share).
pub const MAX_RING_SIZE: u32 = RING_SIZES[RING_SIZES.len() - 1];

const fn ring_sizes() -> [u32; 37] {
    // 2^(k/4) for k mod 4, in ten-thousandths.
    const ROOTS: [u64; 4] = [10_000, 11_892, 14_142, 16_818];
    let mut sizes = [0u32; 37];
    let mut k = 0;
    while k < sizes.len() {
        let mut n = ((128u64 << (k / 4)) * ROOTS[k % 4] / 10_000) as u32;
        while !is_prime(n) {
            n -= 1;
        }
        sizes[k] = n;
        k += 1;
    }
    sizes
}

/// The ring size for members of these weights: the smallest size with
/// [`SLOTS_PER_WEIGHT_UNIT`] slots per unit, a unit being the smallest non-zero weight (so equal
/// weights count backends). 0 when no member has a weight: such a service has no ring.
pub fn ring_size_for(weights: impl Iterator<Item = u32> + Clone) -> u32 {
    let Some(unit) = weights.clone().filter(|&w| w > 0).min() else { return 0 };
    let units: u64 = weights.map(|w| (w as u64).div_ceil(unit as u64)).sum();
    let wanted = units.saturating_mul(SLOTS_PER_WEIGHT_UNIT);
    RING_SIZES.iter().copied().find(|&size| size as u64 >= wanted).unwrap_or(MAX_RING_SIZE)
}

/// One backend as Maglev sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingMember {
    /// Value written into the ring (the kernel's backend id, ≥ 1).
    pub id: u32,
    /// Relative share of the ring; 0 takes no slots (draining).
    pub weight: u32,
    /// Where this backend's preference list starts and how it steps; see [`preference`].
    pub offset: u32,
    pub skip: u32,
}

/// The (offset, skip) of a backend identified by its address and port, for a ring of `size`
/// (prime) slots. Depends only on the backend, never on the other members.
pub fn preference(addr: &[u8; 16], port: u16, size: u32) -> (u32, u32) {
    let h1 = fnv1a(addr, port, 0x811c_9dc5);
    let h2 = fnv1a(addr, port, 0x050c_5d1f);
    (h1 % size, h2 % (size - 1) + 1)
}

fn fnv1a(addr: &[u8; 16], port: u16, seed: u32) -> u32 {
    let mut h = seed;
    for &b in addr.iter().chain(port.to_be_bytes().iter()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    crate::hash::mix32(h)
}

/// Fills `ring` (whose length must be prime) from `members`, which must be sorted the same way
/// on every node (the agent sorts by address and port). `next` is scratch, one entry per member.
/// Members with weight 0 get no slots; with no weighted member the ring is all [`EMPTY`].
pub fn populate(members: &[RingMember], ring: &mut [u32], next: &mut [u32]) {
    assert_eq!(next.len(), members.len(), "one scratch entry per member");
    ring.fill(EMPTY);
    let size = ring.len() as u32;
    let max_weight = members.iter().map(|m| m.weight).max().unwrap_or(0) as u64;
    if max_weight == 0 || size == 0 {
        return;
    }
    // next[i] is member i's next preferred slot: offset, offset + skip, … (mod size).
    for (slot, member) in next.iter_mut().zip(members) {
        *slot = member.offset % size;
    }
    // Weighted turns: in round r a member has claimed floor(r * weight / max_weight) slots, so
    // slots are shared in proportion to weight and equal weights reduce to classic Maglev.
    // When every member has the full weight or none (the usual case: equal weights, draining
    // members at 0) a turn is one claim each, without the two divisions per member and round
    // that otherwise cost as much as the probing (profiled: a 10,000-service sync spent a third
    // of its time here).
    let uniform = members.iter().all(|m| m.weight as u64 == max_weight || m.weight == 0);
    let mut filled = 0u32;
    let mut round = 0u64;
    loop {
        round += 1;
        for (i, member) in members.iter().enumerate() {
            let turns = if uniform {
                u64::from(member.weight != 0)
            } else {
                round * member.weight as u64 / max_weight - (round - 1) * member.weight as u64 / max_weight
            };
            for _ in 0..turns {
                claim(member, &mut next[i], ring, size);
                filled += 1;
                if filled == size {
                    return;
                }
            }
        }
    }
}

/// Gives `member` its next preferred slot that is still empty; `next` is where its preference
/// list continues (advanced by an add and a conditional subtract, not a multiply and a modulo).
#[inline(always)]
fn claim(member: &RingMember, next: &mut u32, ring: &mut [u32], size: u32) {
    loop {
        let slot = *next;
        *next += member.skip;
        if *next >= size {
            *next -= size;
        }
        if ring[slot as usize] == EMPTY {
            ring[slot as usize] = member.id;
            return;
        }
    }
}

/// Whether `n` is prime (ring sizes must be, so every skip visits every slot).
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;
    use crate::v4_bytes;

    /// A ring larger than the classes give small services, so the disruption bounds below hold
    /// up to N=30.
    const M: u32 = 16381;

    fn member(i: u32, weight: u32) -> RingMember {
        let addr = v4_bytes([10, 1, (i >> 8) as u8, i as u8]);
        let (offset, skip) = preference(&addr, 31000 + i as u16, M);
        RingMember { id: i + 1, weight, offset, skip }
    }

    fn ring(members: &[RingMember]) -> Vec<u32> {
        let mut ring = vec![0; M as usize];
        let mut next = vec![0; members.len()];
        populate(members, &mut ring, &mut next);
        ring
    }

    fn share(ring: &[u32], id: u32) -> usize {
        ring.iter().filter(|&&x| x == id).count()
    }

    fn changed(a: &[u32], b: &[u32]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn equal_weights_share_the_ring_evenly() {
        for n in [1, 2, 3, 7, 20] {
            let members: Vec<_> = (0..n).map(|i| member(i, 1)).collect();
            let ring = ring(&members);
            assert!(ring.iter().all(|&x| x != EMPTY));
            let fair = M as f64 / n as f64;
            for m in &members {
                let s = share(&ring, m.id) as f64;
                assert!((s - fair).abs() <= fair * 0.02 + 1.0, "n={n} id={} share {s} fair {fair}", m.id);
            }
        }
    }

    #[test]
    fn weights_are_proportional_and_zero_weight_gets_nothing() {
        let members = [member(0, 3), member(1, 1), member(2, 0)];
        let ring = ring(&members);
        let (a, b) = (share(&ring, 1) as f64, share(&ring, 2) as f64);
        assert!((a / b - 3.0).abs() < 0.05, "3:1 weights gave {a}:{b}");
        assert_eq!(share(&ring, 3), 0);
    }

    #[test]
    fn removing_one_of_n_remaps_close_to_one_nth() {
        for n in [3u32, 5, 10, 30] {
            // N=30 sits at ~1.24× ideal with M=16381 (see SLOTS_PER_WEIGHT_UNIT).
            let all: Vec<_> = (0..n).map(|i| member(i, 1)).collect();
            let before = ring(&all);
            let without: Vec<_> = all.iter().copied().filter(|m| m.id != 2).collect();
            let after = ring(&without);
            let moved = changed(&before, &after) as f64 / M as f64;
            let ideal = 1.0 / n as f64;
            assert!(moved >= ideal * 0.98 && moved <= ideal * 1.3, "n={n}: moved {moved:.4}, ideal {ideal:.4}");
            // Every slot that did not belong to the removed backend mostly stays put.
            let kept_elsewhere = before.iter().zip(&after).filter(|(b, a)| **b != 2 && a != b).count();
            assert!((kept_elsewhere as f64) < M as f64 * 0.3 / n as f64, "n={n}: {kept_elsewhere} survivors' slots moved");
        }
    }

    #[test]
    fn adding_one_to_n_takes_close_to_its_share() {
        let n = 10u32;
        let before = ring(&(0..n).map(|i| member(i, 1)).collect::<Vec<_>>());
        let after = ring(&(0..=n).map(|i| member(i, 1)).collect::<Vec<_>>());
        let moved = changed(&before, &after) as f64 / M as f64;
        let ideal = 1.0 / (n + 1) as f64;
        assert!(moved >= ideal * 0.98 && moved <= ideal * 1.3, "moved {moved:.4}, ideal {ideal:.4}");
    }

    #[test]
    fn no_weighted_member_leaves_the_ring_empty() {
        assert!(ring(&[member(0, 0)]).iter().all(|&x| x == EMPTY));
        assert!(ring(&[]).iter().all(|&x| x == EMPTY));
    }

    #[test]
    fn ring_sizes_are_increasing_primes_within_a_quarter_doubling() {
        assert_eq!((RING_SIZES[0], MAX_RING_SIZE), (127, 65521));
        for pair in RING_SIZES.windows(2) {
            assert!(pair[0] < pair[1] && is_prime(pair[1]));
            assert!(pair[1] as f64 / pair[0] as f64 <= 1.25, "{pair:?}");
        }
    }

    #[test]
    fn ring_size_gives_every_weight_unit_a_hundred_slots() {
        let size = |weights: &[u32]| ring_size_for(weights.iter().copied());
        assert_eq!(size(&[]), 0);
        assert_eq!(size(&[0, 0]), 0, "draining members only: no ring");
        assert_eq!(size(&[1]), 127);
        assert_eq!(size(&[1, 1, 1]), 359, "3 backends: the smallest size ≥ 300");
        assert_eq!(size(&[5, 5, 5]), 359, "only ratios count");
        assert_eq!(size(&[1, 1, 1, 0]), 359, "a draining member takes no slots");
        assert_eq!(size(&[3, 1]), 421, "3:1 is four units");
        assert_eq!(size(&[1; 1000]), MAX_RING_SIZE);
        for n in 1..=655u32 {
            let s = size(&vec![1; n as usize]);
            assert!(s as u64 >= n as u64 * SLOTS_PER_WEIGHT_UNIT && (s as f64) < (n * 100) as f64 * 1.2 + 127.0, "n={n}: {s}");
        }
    }

    #[test]
    fn balance_within_one_percent_at_the_class_size() {
        for n in [2u32, 3, 5, 10, 30] {
            let m = ring_size_for((0..n).map(|_| 1));
            let members: Vec<_> = (0..n)
                .map(|i| {
                    let addr = v4_bytes([10, 1, 0, i as u8]);
                    let (offset, skip) = preference(&addr, 31000, m);
                    RingMember { id: i + 1, weight: 1, offset, skip }
                })
                .collect();
            let mut ring = vec![0; m as usize];
            populate(&members, &mut ring, &mut vec![0; n as usize]);
            let shares: Vec<usize> = (1..=n).map(|id| share(&ring, id)).collect();
            let spread = (shares.iter().max().unwrap() - shares.iter().min().unwrap()) as f64;
            assert!(spread <= (m as f64 / n as f64) * 0.011 + 1.0, "n={n} m={m}: shares {shares:?}");
        }
    }

    #[test]
    fn primes() {
        assert!(is_prime(16381));
        assert!(is_prime(65537));
        assert!(!is_prime(4096));
        assert!(!is_prime(1));
    }
}
