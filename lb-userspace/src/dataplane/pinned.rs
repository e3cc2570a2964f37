//! [`Dataplane`] over the maps pinned in the pin directory: works whether `lb run` is running or
//! not, and whether the maps were created by this process or by an earlier agent.

use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, PerCpuHashMap};
use lb_common::{names, IfaceCounters, IfaceKey};

use super::{Dataplane, DataplaneError, IfaceStat};

/// File name of a map's pin: the kernel symbol in lower case (`IFACE_STATS` → `iface_stats`).
pub fn pin_name(map: &str) -> String {
    map.to_ascii_lowercase()
}

pub struct PinnedMaps {
    pin_dir: PathBuf,
}

impl PinnedMaps {
    pub fn new(pin_dir: &Path) -> Self {
        Self { pin_dir: pin_dir.to_owned() }
    }

    fn open(&self, name: &'static str) -> Result<MapData, DataplaneError> {
        let path = self.pin_dir.join(pin_name(name));
        if !path.exists() {
            return Err(DataplaneError::NotPinned { name, path });
        }
        MapData::from_pin(&path).map_err(|source| DataplaneError::Map { name, source })
    }
}

impl Dataplane for PinnedMaps {
    fn iface_stats(&self) -> Result<Vec<IfaceStat>, DataplaneError> {
        let name = names::MAP_IFACE_STATS;
        let map = Map::PerCpuHashMap(self.open(name)?);
        let map: PerCpuHashMap<_, IfaceKey, IfaceCounters> =
            PerCpuHashMap::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        let mut stats = Vec::new();
        for entry in map.iter() {
            let (key, per_cpu) = entry.map_err(|source| DataplaneError::Map { name, source })?;
            let mut total = IfaceCounters::default();
            per_cpu.iter().for_each(|c| total.add(c));
            stats.push(IfaceStat::new(key.ifindex, key.hook, total));
        }
        stats.sort_by_key(|s| (s.ifindex, s.hook as u8));
        Ok(stats)
    }
}
