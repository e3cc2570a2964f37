//! Property tests of the shared decision code: Maglev shares follow weights, incremental
//! checksum updates equal recomputation, refusals are well-formed for any offending header.

use lb_common::{csum, maglev, refusal};
use proptest::prelude::*;

/// The ring of members with these weights (none when no member has a weight: such a service
/// has no ring, as the agent programs it).
fn ring_of(weights: &[u32]) -> Vec<u32> {
    ring_of_members(&weights.iter().copied().enumerate().collect::<Vec<_>>(), 0)
}

/// The ring, sized as the agent sizes it, of backends (index, weight): backend i is
/// 10.1.x.y:31000 with x.y = i + `base`, and id i + 1 (so a backend keeps its id when another
/// leaves).
fn ring_of_members(backends: &[(usize, u32)], base: usize) -> Vec<u32> {
    let size = maglev::ring_size_for(backends.iter().map(|b| b.1));
    if size == 0 {
        return Vec::new();
    }
    let members: Vec<maglev::RingMember> = backends
        .iter()
        .map(|&(i, weight)| {
            let n = i + base;
            let addr = lb_common::v4_bytes([10, 1, (n >> 8) as u8, n as u8]);
            let (offset, skip) = maglev::preference(&addr, 31000, size);
            maglev::RingMember { id: i as u32 + 1, weight, offset, skip }
        })
        .collect();
    let mut ring = vec![0; size as usize];
    let mut next = vec![0; members.len()];
    maglev::populate(&members, &mut ring, &mut next);
    ring
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every member's share of the ring is its share of the weight, within 1 % of the ring.
    #[test]
    fn maglev_shares_follow_weights(weights in prop::collection::vec(1u32..=10, 1..40)) {
        let ring = ring_of(&weights);
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let slots = ring.iter().filter(|&&id| id == i as u32 + 1).count() as f64;
            let share = slots / ring.len() as f64;
            let want = w as f64 / total as f64;
            prop_assert!((share - want).abs() <= 0.01, "member {} weight {} of {}: {:.4} of the ring, want {:.4}", i, w, total, share, want);
        }
    }

    /// Removing one of N equal backends, when the ring keeps its size, re-maps at most 3.5/N of
    /// it, and on average over every removal at most 2.75/N (N up to 40). This is what Maglev at
    /// ~100 slots per backend gives (measured over ~5,600 backend sets: mean 1.25× the ideal
    /// 1/N at N=10, 1.6× at N=30, 1.86× at N=40; worst set 2.45×, worst single removal 3.07×),
    /// not the 1.3/N issue 14 asked for (docs/reliability.md). A removal that changes the ring's size class — every one at N ≤ 9 —
    /// builds a new ring: established flows stay through the flow table, new flows re-spread.
    #[test]
    fn maglev_removing_one_of_n_moves_little(n in 10usize..=40, base in 0usize..60000) {
        let all: Vec<(usize, u32)> = (0..n).map(|i| (i, 1)).collect();
        let before = ring_of_members(&all, base);
        let mut total = 0.0;
        for removed in 0..n {
            let rest: Vec<(usize, u32)> = all.iter().copied().filter(|&(i, _)| i != removed).collect();
            let after = ring_of_members(&rest, base);
            prop_assume!(before.len() == after.len());
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / before.len() as f64;
            prop_assert!(moved >= 0.98 / n as f64, "removing {} of {}: only {:.4} moved, less than its own share", removed, n, moved);
            prop_assert!(moved <= 3.5 / n as f64, "removing {} of {}: {:.4} of {} slots moved", removed, n, moved, before.len());
            total += moved;
        }
        let mean = total / n as f64;
        prop_assert!(mean <= 2.75 / n as f64, "N={}: {:.4} of the ring moves on average, {:.2}× the ideal", n, mean, mean * n as f64);
    }

    /// Draining members (weight 0) get no slot, and a ring with a weighted member has no hole.
    #[test]
    fn maglev_draining_members_get_nothing(weights in prop::collection::vec(0u32..=3, 1..30)) {
        let ring = ring_of(&weights);
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                prop_assert!(!ring.contains(&(i as u32 + 1)));
            }
        }
        if weights.iter().any(|&w| w > 0) {
            prop_assert!(!ring.contains(&maglev::EMPTY));
        }
    }

    /// RFC 1624 updates of a 4-byte field anywhere in a header equal recomputing the checksum.
    #[test]
    fn incremental_checksum_equals_recomputation(mut data in prop::collection::vec(any::<u8>(), 8..64), at in 0usize..15, new in any::<[u8; 4]>()) {
        if data.len() % 2 == 1 {
            data.pop();
        }
        let at = ((at * 2) % (data.len() - 3)) & !1;
        let check = csum::checksum(&data);
        let old: [u8; 4] = data[at..at + 4].try_into().unwrap();
        data[at..at + 4].copy_from_slice(&new);
        prop_assert_eq!(csum::replace(check, &old, &new), csum::checksum(&data));
    }

    /// A reset for any TCP/IPv4 header either is refused (reset, broadcast source, bad lengths)
    /// or carries valid checksums, goes back to the source and swaps the ports.
    #[test]
    fn resets_are_well_formed_for_any_header(mut frame in any::<[u8; refusal::TCP4_LEN]>()) {
        frame[14] = 0x45;
        let mut out = [0u8; refusal::TCP4_LEN];
        if refusal::tcp_reset_v4(&frame, &mut out).is_some() {
            prop_assert_eq!(csum::checksum(&out[14..34]), 0);
            prop_assert_eq!(&out[26..30], &frame[30..34]);
            prop_assert_eq!(&out[30..34], &frame[26..30]);
            prop_assert_eq!((&out[34..36], &out[36..38]), (&frame[36..38], &frame[34..36]));
            prop_assert_eq!(out[47] & 0x04, 0x04, "RST is set");
        }
    }
}
