//! In-memory [`Dataplane`] for tests of the code above the maps.

use std::collections::BTreeMap;

use lb_common::{IfaceCounters, IfaceKey};

use super::{Dataplane, DataplaneError, IfaceStat};

#[derive(Debug, Default)]
pub struct FakeDataplane {
    /// Per-CPU counters as the kernel would keep them.
    pub iface_counters: BTreeMap<IfaceKey, Vec<IfaceCounters>>,
}

impl Dataplane for FakeDataplane {
    fn iface_stats(&self) -> Result<Vec<IfaceStat>, DataplaneError> {
        Ok(self
            .iface_counters
            .iter()
            .map(|(key, per_cpu)| {
                let mut total = IfaceCounters::default();
                per_cpu.iter().for_each(|c| total.add(c));
                IfaceStat::new(key.ifindex, key.hook, total)
            })
            .collect())
    }
}
