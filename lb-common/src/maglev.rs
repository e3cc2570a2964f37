//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights.
//!
//! The agent fills one ring per service; the kernel indexes it with [`crate::hash::flow_hash`].
//! Every node computes the same ring from the same backends, so a flow that ECMP moves to another
//! node still reaches the same backend. Alloc-free: the caller provides the ring and scratch.

/// Ring entry that means "no backend" (backend ids start at 1).
pub const EMPTY: u32 = 0;

/// Default ring size (prime). Measured (mean over every backend removed, M = ring size):
/// slots re-mapped when one of N backends goes, relative to the ideal 1/N —
/// M=4093: N=10 1.13×, N=30 1.57×; M=16381: N=10 1.05×, N=30 1.24×, N=100 2.4×;
/// M=65537: N=30 1.12×, N=100 1.58×. 16381 keeps services of up to ~30 backends within 1.25× of
/// ideal at 64 KiB per ring; services with more backends want `--ring-size 65537`.
pub const DEFAULT_RING_SIZE: u32 = 16381;

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
pub fn is_prime(n: u32) -> bool {
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

    const M: u32 = DEFAULT_RING_SIZE;

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
            // N=30 sits at ~1.24× ideal with the default ring (see DEFAULT_RING_SIZE).
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
    fn primes() {
        assert!(is_prime(DEFAULT_RING_SIZE));
        assert!(is_prime(65537));
        assert!(!is_prime(4096));
        assert!(!is_prime(1));
    }
}
