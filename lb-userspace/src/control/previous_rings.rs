//! The previous ring of each service, kept in the pool for `--second-chance-secs` after a change
//! and named in `PREVIOUS_RINGS`, so a DSR packet that reaches a backend node holding no state
//! for its connection can be sent once to the backend the previous ring chose (the second
//! chance, lb-ebpf/src/dsr.rs): a balancer node that dies while the backend set changes then
//! breaks no connection whose ring slot moved.
//!
//! Write order, as for live rings: a ring stops being named (its entry replaced or cleared)
//! before it is freed, and freed rings wait out the reconciler's quarantine before they are
//! rewritten, so the programs never read a previous ring that is being reused.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::PreviousRing;

use crate::{
    control::ring_alloc::Ring,
    dataplane::{monotonic_ns, Dataplane, DataplaneError},
};

/// Default `--second-chance-secs`: long enough for a BGP hold time and TCP's retransmissions
/// after a balancer node's loss many times over, short enough that a cluster's deploys keep
/// few extra rings in the pool.
pub const DEFAULT_SECS: u64 = 600;

/// The previous rings held, by service id.
#[derive(Debug, Default)]
pub struct PreviousRings {
    /// How long a previous ring is kept (0: none is).
    keep_ns: u64,
    held: BTreeMap<u32, (Ring, u64)>,
}

impl PreviousRings {
    pub fn new(keep_secs: u64) -> Self {
        Self { keep_ns: keep_secs.saturating_mul(1_000_000_000), held: BTreeMap::new() }
    }

    /// The rings `PREVIOUS_RINGS` names for the live services `live` (by id) while they are
    /// kept; entries of other services, and expired ones, are cleared. What a restarted agent or
    /// a pass without a mirror starts from.
    pub fn adopt(keep_secs: u64, live: &BTreeSet<u32>, ids: u32, dp: &mut dyn Dataplane) -> Result<Self, DataplaneError> {
        let mut rings = Self::new(keep_secs);
        let now = monotonic_ns();
        for (id, entry) in dp.previous_rings(ids)?.into_iter().enumerate() {
            let id = id as u32;
            if entry.ring_size == 0 {
                continue;
            }
            if live.contains(&id) && entry.until_ns > now && rings.keep_ns != 0 {
                rings.held.insert(id, (Ring { start: entry.ring_start, size: entry.ring_size }, entry.until_ns));
            } else {
                dp.set_previous_ring(id, &PreviousRing::default())?;
            }
        }
        Ok(rings)
    }

    /// The rings held (in use in the pool).
    pub fn rings(&self) -> impl Iterator<Item = Ring> + '_ {
        self.held.values().map(|(ring, _)| *ring)
    }

    /// Service `service_id`'s live ring `old` was just replaced: it becomes its previous ring
    /// (the one held before goes to `freed`). Without keeping (0 s) it goes to `freed` itself.
    pub fn hold(&mut self, service_id: u32, old: Option<Ring>, dp: &mut dyn Dataplane, freed: &mut BTreeSet<Ring>) -> Result<(), DataplaneError> {
        if self.keep_ns == 0 {
            freed.extend(old);
            return Ok(());
        }
        // A service that had no ring (no active backend) keeps the previous one it had.
        let Some(old) = old else { return Ok(()) };
        let until_ns = monotonic_ns().saturating_add(self.keep_ns);
        dp.set_previous_ring(service_id, &PreviousRing { ring_start: old.start, ring_size: old.size, until_ns })?;
        if let Some((before, _)) = self.held.insert(service_id, (old, until_ns)) {
            freed.insert(before);
        }
        Ok(())
    }

    /// Service `service_id` is gone (or keeps no previous ring): its entry is cleared, then its
    /// ring goes to `freed`.
    pub fn release(&mut self, service_id: u32, dp: &mut dyn Dataplane, freed: &mut BTreeSet<Ring>) -> Result<(), DataplaneError> {
        if let Some((ring, _)) = self.held.remove(&service_id) {
            dp.set_previous_ring(service_id, &PreviousRing::default())?;
            freed.insert(ring);
        }
        Ok(())
    }

    /// Releases every ring whose time is up at `now_ns`; returns how many.
    pub fn expire(&mut self, now_ns: u64, dp: &mut dyn Dataplane, freed: &mut BTreeSet<Ring>) -> Result<usize, DataplaneError> {
        let due: Vec<u32> = self.held.iter().filter(|(_, (_, until))| *until <= now_ns).map(|(id, _)| *id).collect();
        for id in &due {
            self.release(*id, dp, freed)?;
        }
        Ok(due.len())
    }

    /// Releases every ring at once, for a pool that has no room for a live ring otherwise: the
    /// second chance is the one to give way. Returned for immediate reuse: a program that read
    /// an entry just before it was cleared may then read a slot being rewritten, which sends at
    /// most that one packet to another backend (whose node delivers or resets it).
    pub fn release_all(&mut self, dp: &mut dyn Dataplane) -> Result<Vec<Ring>, DataplaneError> {
        let mut freed = BTreeSet::new();
        let ids: Vec<u32> = self.held.keys().copied().collect();
        for id in ids {
            self.release(id, dp, &mut freed)?;
        }
        Ok(freed.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::FakeDataplane;

    fn ring(start: u32) -> Ring {
        Ring { start, size: 7 }
    }

    #[test]
    fn a_replaced_ring_is_named_until_the_next_replacement_frees_it() {
        let mut dp = FakeDataplane::new(8, 16, lb_common::ring_pool::CHUNK_SLOTS);
        let (mut rings, mut freed) = (PreviousRings::new(60), BTreeSet::new());
        rings.hold(3, Some(ring(0)), &mut dp, &mut freed).unwrap();
        assert_eq!(dp.previous_rings[&3].ring_start, 0);
        assert!(freed.is_empty(), "held, not freed");
        rings.hold(3, Some(ring(7)), &mut dp, &mut freed).unwrap();
        assert_eq!(dp.previous_rings[&3].ring_start, 7);
        assert_eq!(freed, BTreeSet::from([ring(0)]), "the one held before");
        assert_eq!(rings.rings().collect::<Vec<_>>(), vec![ring(7)]);
        rings.release(3, &mut dp, &mut freed).unwrap();
        assert!(!dp.previous_rings.contains_key(&3));
        assert!(freed.contains(&ring(7)));
        // Cleared before freed.
        assert_eq!(dp.log.last().unwrap(), "previous_ring 3 0+0");
    }

    #[test]
    fn rings_expire_and_none_is_kept_with_zero_seconds() {
        let mut dp = FakeDataplane::new(8, 16, lb_common::ring_pool::CHUNK_SLOTS);
        let (mut rings, mut freed) = (PreviousRings::new(60), BTreeSet::new());
        rings.hold(1, Some(ring(0)), &mut dp, &mut freed).unwrap();
        assert_eq!(rings.expire(monotonic_ns(), &mut dp, &mut freed).unwrap(), 0);
        assert_eq!(rings.expire(monotonic_ns() + 61_000_000_000, &mut dp, &mut freed).unwrap(), 1);
        assert!(dp.previous_rings.is_empty() && freed.contains(&ring(0)));
        let mut off = PreviousRings::new(0);
        off.hold(1, Some(ring(14)), &mut dp, &mut freed).unwrap();
        assert!(dp.previous_rings.is_empty() && freed.contains(&ring(14)), "freed at once");
    }

    #[test]
    fn a_restart_adopts_the_live_services_rings_and_clears_the_rest() {
        let mut dp = FakeDataplane::new(8, 16, lb_common::ring_pool::CHUNK_SLOTS);
        let until_ns = monotonic_ns() + 30_000_000_000;
        dp.previous_rings.insert(1, PreviousRing { ring_start: 0, ring_size: 7, until_ns });
        dp.previous_rings.insert(2, PreviousRing { ring_start: 7, ring_size: 7, until_ns });
        dp.previous_rings.insert(4, PreviousRing { ring_start: 14, ring_size: 7, until_ns: 1 });
        let rings = PreviousRings::adopt(60, &BTreeSet::from([1, 4]), 8, &mut dp).unwrap();
        assert_eq!(rings.rings().collect::<Vec<_>>(), vec![ring(0)], "2 is no live service, 4's time is up");
        assert_eq!(dp.previous_rings.keys().copied().collect::<Vec<_>>(), vec![1]);
    }
}
