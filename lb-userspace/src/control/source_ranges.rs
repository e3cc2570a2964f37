//! Services' source ranges in the maps (lb_common::sources): what `SOURCE_RANGES` and
//! `SERVICE_SOURCES` hold per service id, kept by the reconciler between passes, and the
//! writes that bring one service to its desired ranges without a moment where a client it
//! admits before and after is refused:
//! 1. new ranges are inserted, 2. the count is written (0 → n turns the check on), 3. ranges
//!    no longer wanted are removed — and when none is wanted any more, the count goes to 0
//!    first, so no packet sees the check on with an empty trie.
//!
//! New flows are checked in the kernel; flows pinned before a service's ranges narrowed are
//! forgotten here ([`SourceTable::forget_refused_flows`]), so their next packet is judged as a
//! new flow and refused like any other from outside the ranges.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;
use lb_common::{sources::SourceRange, BackendInfo, FlowKey};
use tracing::info;

use crate::{
    dataplane::{limits::Limit, Dataplane, DataplaneError},
    desired::{admits, bytes_ip, ip_bytes, Sources},
};

/// The source ranges the maps hold, by service id.
#[derive(Debug, Default)]
pub struct SourceTable {
    by_service: HashMap<u32, Sources>,
    /// `SERVICE_SOURCES` as the maps hold it (services with a non-zero count): after an agent
    /// stopped between writing a service's ranges and its count, they differ, and the next
    /// write of that service must write the count even though its ranges are in place.
    counts: HashMap<u32, u32>,
    /// Ranges stored, all services together, against `limit` (`--max-source-ranges`).
    used: usize,
    limit: u32,
    /// Services whose ranges lost a prefix since the last flow sweep.
    narrowed: BTreeSet<u32>,
}

/// The trie key of `net` for service `service_id`.
fn key(service_id: u32, net: &IpNet) -> (u32, SourceRange) {
    let (addr, family) = ip_bytes(net.addr());
    SourceRange::new(service_id, family, &addr, net.prefix_len())
}

/// Every service's source ranges as `SOURCE_RANGES` holds them, by service id (the one reading
/// of the trie: the reconciler's, `lb services`' and `lb explain`'s).
pub fn in_maps(dp: &dyn Dataplane) -> Result<BTreeMap<u32, Sources>, DataplaneError> {
    let mut by_service: BTreeMap<u32, Sources> = BTreeMap::new();
    for (prefix_len, range) in dp.source_ranges()? {
        let (service_id, family, prefix) = range.parts(prefix_len);
        if let Some(net) = bytes_ip(&range.addr, family).and_then(|ip| IpNet::new(ip, prefix).ok()) {
            by_service.entry(service_id).or_default().insert(net);
        }
    }
    Ok(by_service)
}

impl SourceTable {
    /// The table of the maps `dp` holds (ranges of service slots `0..services`), with room for
    /// `limit` ranges.
    pub fn read(dp: &dyn Dataplane, services: u32, limit: u32) -> Result<Self, DataplaneError> {
        let by_service: HashMap<u32, Sources> = in_maps(dp)?.into_iter().collect();
        let counts = dp.service_source_counts(services)?.into_iter().enumerate();
        let counts = counts.filter(|(_, n)| *n != 0).map(|(id, n)| (id as u32, n)).collect();
        let used = by_service.values().map(BTreeSet::len).sum();
        Ok(Self { by_service, counts, used, limit, narrowed: BTreeSet::new() })
    }

    /// Brings service `service_id`'s ranges to `wanted` (module comment for the order). Returns
    /// whether anything was written. Err(Full) before any write when the new ranges do not fit.
    pub fn write(&mut self, service_id: u32, wanted: &Sources, dp: &mut dyn Dataplane) -> Result<bool, DataplaneError> {
        let current = self.by_service.get(&service_id).cloned().unwrap_or_default();
        let count = wanted.len() as u32;
        if current == *wanted && self.counts.get(&service_id).copied().unwrap_or(0) == count {
            return Ok(false);
        }
        self.check_room(service_id, wanted)?;
        let added: Vec<&IpNet> = wanted.difference(&current).collect();
        for net in &added {
            let (prefix_len, range) = key(service_id, net);
            dp.set_source_range(prefix_len, &range)?;
            self.used += 1;
        }
        dp.set_service_sources(service_id, count)?;
        if count == 0 {
            self.counts.remove(&service_id);
        } else {
            self.counts.insert(service_id, count);
        }
        let removed: Vec<&IpNet> = current.difference(wanted).collect();
        for net in &removed {
            let (prefix_len, range) = key(service_id, net);
            dp.remove_source_range(prefix_len, &range)?;
            self.used -= 1;
        }
        if !removed.is_empty() && !wanted.is_empty() {
            self.narrowed.insert(service_id);
        }
        if wanted.is_empty() {
            self.by_service.remove(&service_id);
        } else {
            self.by_service.insert(service_id, wanted.clone());
        }
        Ok(true)
    }

    /// Err(Full) if bringing service `service_id` to `wanted` would store more ranges than the
    /// limit (new ones are added before old ones go).
    pub fn check_room(&self, service_id: u32, wanted: &Sources) -> Result<(), DataplaneError> {
        let added = match self.by_service.get(&service_id) {
            Some(current) => wanted.difference(current).count(),
            None => wanted.len(),
        };
        if self.used + added > self.limit as usize {
            return Err(DataplaneError::Full { what: "source ranges", limit: self.limit, flag: Limit::SourceRanges.flag() });
        }
        Ok(())
    }

    /// Forgets the flows of services whose ranges narrowed that come from clients no longer
    /// admitted (`backends`: the backend entries, by id, to find a flow's service).
    pub fn forget_refused_flows(&mut self, backends: &[BackendInfo], dp: &mut dyn Dataplane) -> Result<(), DataplaneError> {
        if self.narrowed.is_empty() {
            return Ok(());
        }
        let narrowed = std::mem::take(&mut self.narrowed);
        let by_service = &self.by_service;
        let refused = |key: &FlowKey, backend_id: u32| {
            let Some(backend) = backends.get(backend_id as usize) else { return false };
            let Some(sources) = by_service.get(&backend.service_id).filter(|_| narrowed.contains(&backend.service_id)) else { return false };
            client(key).is_some_and(|ip| !admits(sources, ip))
        };
        let forgotten = dp.forget_flows(&mut |key, flow| refused(key, flow.backend_id))?;
        if forgotten > 0 {
            info!(flows = forgotten, "flows from clients outside narrowed source ranges forgotten");
        }
        Ok(())
    }
}

/// The client address of a connection.
fn client(key: &FlowKey) -> Option<IpAddr> {
    bytes_ip(&key.src, key.family)
}

#[cfg(test)]
mod tests {
    use lb_common::{FlowInfo, FAMILY_V4, PROTO_TCP};

    use super::*;
    use crate::{dataplane::fake::FakeDataplane, desired::parse_sources};

    fn table() -> SourceTable {
        SourceTable { limit: 4, ..SourceTable::default() }
    }

    #[test]
    fn ranges_are_added_before_the_count_and_removed_after_it() {
        let (mut dp, mut t) = (FakeDataplane::new(8, 8, 64), table());
        assert!(t.write(3, &parse_sources(["10.0.0.0/8 192.0.2.0/24"]).unwrap(), &mut dp).unwrap());
        assert_eq!(dp.log, ["source 3 +/8", "source 3 +/24", "sources 3 2"]);
        dp.log.clear();
        assert!(t.write(3, &parse_sources(["10.0.0.0/8 2001:db8::/32"]).unwrap(), &mut dp).unwrap());
        assert_eq!(dp.log, ["source 3 +/32", "sources 3 2", "source 3 -/24"]);
        dp.log.clear();
        assert!(!t.write(3, &parse_sources(["2001:db8::/32 10.0.0.0/8"]).unwrap(), &mut dp).unwrap());
        assert!(t.write(3, &Sources::new(), &mut dp).unwrap());
        assert_eq!(dp.log, ["sources 3 0", "source 3 -/8", "source 3 -/32"], "off before the trie empties");
        assert!(dp.source_ranges.is_empty());
    }

    #[test]
    fn ranges_that_do_not_fit_are_refused_before_any_write_and_a_restart_reads_them_back() {
        let (mut dp, mut t) = (FakeDataplane::new(8, 8, 64), table());
        t.write(1, &parse_sources(["10.0.0.0/8 10.1.0.0/16 10.2.0.0/16"]).unwrap(), &mut dp).unwrap();
        let before = dp.log.len();
        let err = t.write(2, &parse_sources(["192.0.2.0/24 198.51.100.0/24"]).unwrap(), &mut dp).unwrap_err();
        assert!(err.to_string().contains("--max-source-ranges"), "{err}");
        assert_eq!(dp.log.len(), before);
        let mut again = SourceTable::read(&dp, 8, 4).unwrap();
        assert_eq!((again.used, again.by_service[&1].len()), (3, 3));
        assert!(!again.write(1, &parse_sources(["10.0.0.0/8 10.1.0.0/16 10.2.0.0/16"]).unwrap(), &mut dp).unwrap(), "nothing to write");
    }

    #[test]
    fn ranges_whose_count_was_never_written_get_it_after_a_restart() {
        // An agent stopped after writing service 2's ranges, before its count: the kernel does
        // not check them. The next agent finds the ranges in place and still writes the count.
        let (mut dp, mut t) = (FakeDataplane::new(8, 8, 64), table());
        let wanted = parse_sources(["10.0.0.0/8"]).unwrap();
        t.write(2, &wanted, &mut dp).unwrap();
        dp.service_sources.clear();
        dp.log.clear();
        let mut again = SourceTable::read(&dp, 8, 4).unwrap();
        assert!(again.write(2, &wanted, &mut dp).unwrap());
        assert_eq!(dp.log, ["sources 2 1"]);
        // And a stale count over no ranges (a slot's earlier service) is cleared.
        dp.service_sources.insert(5, 3);
        let mut again = SourceTable::read(&dp, 8, 4).unwrap();
        assert!(again.write(5, &Sources::new(), &mut dp).unwrap());
        assert_eq!(dp.service_sources.get(&5), Some(&0));
    }

    #[test]
    fn narrowing_forgets_only_the_flows_of_clients_left_out() {
        let (mut dp, mut t) = (FakeDataplane::new(8, 8, 64), table());
        let mut backends = vec![BackendInfo::default(); 4];
        backends[1].service_id = 5;
        backends[2].service_id = 6;
        t.write(5, &parse_sources(["10.0.0.0/8 192.0.2.0/24"]).unwrap(), &mut dp).unwrap();
        t.write(6, &parse_sources(["192.0.2.0/24"]).unwrap(), &mut dp).unwrap();
        let flow = |src: [u8; 4], backend_id| {
            let key = FlowKey { src: lb_common::v4_bytes(src), proto: PROTO_TCP, family: FAMILY_V4, ..FlowKey::default() };
            (key, FlowInfo { backend_id, ..FlowInfo::default() })
        };
        dp.flows = vec![flow([10, 0, 0, 1], 1), flow([192, 0, 2, 1], 1), flow([192, 0, 2, 1], 2)];
        t.forget_refused_flows(&backends, &mut dp).unwrap();
        assert_eq!(dp.flows.len(), 3, "nothing narrowed yet");
        t.write(5, &parse_sources(["10.0.0.0/8"]).unwrap(), &mut dp).unwrap();
        t.forget_refused_flows(&backends, &mut dp).unwrap();
        assert_eq!(dp.flows, [flow([10, 0, 0, 1], 1), flow([192, 0, 2, 1], 2)]);
    }
}
