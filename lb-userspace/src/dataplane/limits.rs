//! What the data path is sized and set with: the maps' sizes, fixed when the maps are created
//! ([`MapSizes`]), and the runtime settings the programs read from the pinned settings map,
//! rewritten at every start ([`RuntimeSettings`]). [`Limit`] is the one table of which flag
//! sizes which maps, used by the loader, the reconciler's "did not fit" messages and the docs.

use lb_common::{names, ring_pool};

/// Entries of the sized maps. A pinned map of another size is refused (`lb down` resizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Slots of the ring pool (a multiple of `ring_pool::CHUNK_SLOTS`).
    pub ring_slots: u32,
    pub max_services: u32,
    pub max_backends: u32,
    /// Per address family.
    pub max_flows: u32,
    /// All services' source ranges together.
    pub max_source_ranges: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            ring_slots: ring_pool::DEFAULT_RING_SLOTS,
            max_services: lb_common::DEFAULT_MAX_SERVICES,
            max_backends: lb_common::DEFAULT_MAX_BACKENDS,
            max_flows: lb_common::DEFAULT_MAX_FLOWS,
            max_source_ranges: lb_common::DEFAULT_MAX_SOURCE_RANGES,
        }
    }
}

/// What the programs read from the settings map; a start rewrites it, and programs already
/// attached follow at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeSettings {
    pub udp_timeout_secs: u64,
    /// Source ports of full NAT (inclusive).
    pub nat_ports: (u16, u16),
    /// The DSR encapsulation's UDP port and what this node does (`Settings::dsr_flags`; see
    /// crate::dataplane::dsr::DsrConfig).
    pub dsr: (u16, u16),
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            udp_timeout_secs: lb_common::DEFAULT_UDP_TIMEOUT_SECS,
            nat_ports: (lb_common::DEFAULT_NAT_PORT_MIN, lb_common::DEFAULT_NAT_PORT_MAX),
            dsr: (lb_common::dsr::DEFAULT_PORT, 0),
        }
    }
}

/// Both, as a start loads the data path with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadConfig {
    pub sizes: MapSizes,
    pub settings: RuntimeSettings,
}

/// A sized limit: the flag that sets it and the maps it sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    RingSlots,
    Services,
    Backends,
    Flows,
    SourceRanges,
}

impl Limit {
    pub const ALL: [Limit; 5] = [Limit::RingSlots, Limit::Services, Limit::Backends, Limit::Flows, Limit::SourceRanges];

    /// The `lb run` flag (and `lb.toml` key, without the dashes) that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            Limit::RingSlots => "--ring-slots",
            Limit::Services => "--max-services",
            Limit::Backends => "--max-backends",
            Limit::Flows => "--max-flows",
            Limit::SourceRanges => "--max-source-ranges",
        }
    }

    /// The maps it sizes.
    pub fn maps(self) -> &'static [&'static str] {
        match self {
            Limit::RingSlots => &[names::MAP_RINGS],
            Limit::Services => &[
                names::MAP_SERVICES,
                names::MAP_SERVICE_NAMES,
                names::MAP_SERVICE_GROUPS,
                names::MAP_SERVICE_SOURCES,
                names::MAP_SOURCE_REFUSALS,
                names::MAP_SERVICE_STATS,
                names::MAP_PREVIOUS_RINGS,
            ],
            Limit::Backends => &[names::MAP_BACKENDS, names::MAP_BACKEND_STATS, names::MAP_ROUTES],
            Limit::Flows => &names::FLOW_MAPS,
            Limit::SourceRanges => &[names::MAP_SOURCE_RANGES],
        }
    }

    /// The value `sizes` gives it.
    pub fn value(self, sizes: &MapSizes) -> u32 {
        match self {
            Limit::RingSlots => sizes.ring_slots,
            Limit::Services => sizes.max_services,
            Limit::Backends => sizes.max_backends,
            Limit::Flows => sizes.max_flows,
            Limit::SourceRanges => sizes.max_source_ranges,
        }
    }

    /// Entries each of its maps gets for `sizes` (the ring pool holds two slots an element).
    pub fn entries(self, sizes: &MapSizes) -> u32 {
        match self {
            Limit::RingSlots => ring_pool::elements(sizes.ring_slots),
            other => other.value(sizes),
        }
    }
}

/// (map, entries, flag) of every sized map for `sizes`.
pub fn map_entries(sizes: &MapSizes) -> impl Iterator<Item = (&'static str, u32, &'static str)> + '_ {
    Limit::ALL.into_iter().flat_map(move |limit| limit.maps().iter().map(move |&map| (map, limit.entries(sizes), limit.flag())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sized_map_is_sized_by_one_limit() {
        let maps: Vec<&str> = map_entries(&MapSizes::default()).map(|(map, _, _)| map).collect();
        let mut unique = maps.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), maps.len(), "a map sized twice: {maps:?}");
        assert!(maps.iter().all(|m| names::PINNED_MAPS.contains(m)), "{maps:?}");
    }
}
