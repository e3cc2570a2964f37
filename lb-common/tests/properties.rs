//! Property tests of the shared decision code: Maglev shares follow weights, incremental
//! checksum updates equal recomputation, refusals are well-formed for any offending header.

use lb_common::{csum, maglev, refusal};
use proptest::prelude::*;

/// The ring of members with these weights (none when no member has a weight: such a service
/// has no ring, as the agent programs it).
fn ring_of(weights: &[u32]) -> Vec<u32> {
    let size = maglev::ring_size_for(weights.iter().copied());
    if size == 0 {
        return Vec::new();
    }
    let members: Vec<maglev::RingMember> = weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            let addr = lb_common::v4_bytes([10, 1, (i >> 8) as u8, i as u8]);
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
