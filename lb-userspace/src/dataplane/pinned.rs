//! [`Dataplane`] over the maps pinned in the pin directory: works whether `lb run` is running or
//! not, and whether the maps were created by this process or by an earlier agent.

use std::{
    cell::OnceCell,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    sys::SyscallError,
};
use lb_common::{
    names, ring_pool, sources::SourceRange, BackendInfo, FlowInfo, FlowKey, FlowKey4, IfaceCounters, NatReply, NodeAddrKey, ReplyInfo, ServiceInfo,
    ServiceKey, ServiceName, SockKey, TrafficCounters, SERVICE_NAME_LEN,
};

use super::{Bitmap, Dataplane, DataplaneError, IfaceStat, MapSizes};

/// File name of a map's pin: the kernel symbol in lower case (`IFACE_STATS` → `iface_stats`).
pub fn pin_name(map: &str) -> String {
    map.to_ascii_lowercase()
}

pub struct PinnedMaps {
    pin_dir: PathBuf,
    /// The maps of `names::PINNED_MAPS`, in that order, each opened from its pin at first use and
    /// kept: one BPF_OBJ_GET per map for the life of this value, not one per call.
    opened: [OnceCell<Map>; names::PINNED_MAPS.len()],
    limits: OnceCell<MapSizes>,
    /// The pool chunk rings were last written to, kept mapped: a full sync writes thousands of
    /// rings chunk by chunk (the allocator fills the lowest chunk first), and a mapping per ring
    /// cost a fifth of a 10,000-app sync. At most one chunk (256 KiB) stays mapped.
    ring_chunk: Option<(u32, RingWindow)>,
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// Whether opening a pin failed for lack of privileges (bpffs is root-only, BPF_OBJ_GET needs
/// CAP_BPF).
fn is_permission_error(err: &MapError) -> bool {
    matches!(err, MapError::SyscallError(SyscallError { io_error, .. })
        if matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES)))
}

impl std::fmt::Debug for PinnedMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedMaps").field("pin_dir", &self.pin_dir).finish_non_exhaustive()
    }
}

impl PinnedMaps {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_owned(),
            opened: std::array::from_fn(|_| OnceCell::new()),
            limits: OnceCell::new(),
            ring_chunk: None,
        }
    }

    /// Position of `name` in `opened`.
    fn slot(name: &'static str) -> usize {
        names::PINNED_MAPS.iter().position(|pinned| *pinned == name).expect("every map read here is one the agent pins")
    }

    /// Opens the pin of `name`.
    fn open(&self, name: &'static str) -> Result<Map> {
        let path = self.pin_dir.join(pin_name(name));
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DataplaneError::NotPinned { name, path }),
            // bpffs is usually mode 0700: a user cannot even see whether the pin exists.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(DataplaneError::PermissionDenied { name, path })
            }
            // Anything else is reported by BPF_OBJ_GET below, with its own cause.
            _ => {}
        }
        let data = MapData::from_pin(&path).map_err(|source| {
            if is_permission_error(&source) {
                DataplaneError::PermissionDenied { name, path: path.clone() }
            } else {
                DataplaneError::Map { name, source }
            }
        })?;
        Map::from_map_data(data).map_err(map_err(name))
    }

    /// The map `name`, opened at first use.
    fn map(&self, name: &'static str) -> Result<&Map> {
        let cell = &self.opened[Self::slot(name)];
        if let Some(map) = cell.get() {
            return Ok(map);
        }
        let map = self.open(name)?;
        Ok(cell.get_or_init(|| map))
    }

    /// The map `name`, opened at first use, for writing.
    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map> {
        self.map(name)?;
        Ok(self.opened[Self::slot(name)].get_mut().expect("opened by map() just above"))
    }

    /// The kernel object of `name`, for what the typed wrappers do not offer (info, mmap).
    fn data(&self, name: &'static str) -> Result<&MapData> {
        match self.map(name)? {
            Map::HashMap(data) | Map::LruHashMap(data) | Map::Array(data) | Map::PerCpuArray(data) | Map::LpmTrie(data) => Ok(data),
            _ => Err(DataplaneError::Layout { name, detail: "not a hash, array or LPM trie map".into() }),
        }
    }

    // The typed wrappers only check the map type they are handed: every hash flavour (LRU
    // included) shares the element API.
    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<HashMap<&MapData, K, V>> {
        HashMap::try_from(self.map(name)?).map_err(map_err(name))
    }

    fn hash_mut<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str) -> Result<HashMap<&mut MapData, K, V>> {
        HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))
    }

    fn array<V: aya::Pod>(&self, name: &'static str) -> Result<Array<&MapData, V>> {
        Array::try_from(self.map(name)?).map_err(map_err(name))
    }

    fn array_mut<V: aya::Pod>(&mut self, name: &'static str) -> Result<Array<&mut MapData, V>> {
        Array::try_from(self.map_mut(name)?).map_err(map_err(name))
    }

    fn source_trie(&self) -> Result<LpmTrie<&MapData, SourceRange, u32>> {
        LpmTrie::try_from(self.map(names::MAP_SOURCE_RANGES)?).map_err(map_err(names::MAP_SOURCE_RANGES))
    }

    fn source_trie_mut(&mut self) -> Result<LpmTrie<&mut MapData, SourceRange, u32>> {
        LpmTrie::try_from(self.map_mut(names::MAP_SOURCE_RANGES)?).map_err(map_err(names::MAP_SOURCE_RANGES))
    }

    /// Removes the entries of flow map `name` (keys `K`) that `forget` picks, seen as `FlowKey`
    /// connections through `connection`.
    fn forget_in<K: aya::Pod + Default>(
        &mut self,
        name: &'static str,
        connection: impl Fn(&K, &FlowInfo) -> FlowKey,
        forget: &mut dyn FnMut(&FlowKey, &FlowInfo) -> bool,
    ) -> Result<usize> {
        let mut picked: Vec<K> = Vec::new();
        super::sys::for_each_batch::<K, FlowInfo>(self.data(name)?.fd().as_fd(), 1, |keys, values| {
            picked.extend(keys.iter().zip(values).filter(|(k, v)| forget(&connection(k, v), v)).map(|(k, _)| *k));
            true
        })
        .map_err(|e| DataplaneError::Map { name, source: MapError::from(e) })?;
        let mut map = self.hash_mut::<K, FlowInfo>(name)?;
        for key in &picked {
            ignore_missing(map.remove(key), name)?;
        }
        Ok(picked.len())
    }

    fn per_cpu_array_mut<V: aya::Pod>(&mut self, name: &'static str) -> Result<PerCpuArray<&mut MapData, V>> {
        PerCpuArray::try_from(self.map_mut(name)?).map_err(map_err(name))
    }

    /// Up to `limit` entries of hash map `name`, in batches.
    fn entries<K: aya::Pod + Default, V: aya::Pod + Default>(&self, name: &'static str, limit: usize) -> Result<Vec<(K, V)>> {
        super::sys::read_hash(self.data(name)?.fd().as_fd(), limit).map_err(|e| DataplaneError::Map { name, source: MapError::from(e) })
    }

    /// Entries in a hash map (BPF keeps no element count for LRU maps: they are read).
    fn count<K: aya::Pod + Default, V: aya::Pod + Default>(&self, name: &'static str) -> Result<u32> {
        Ok(self.entries::<K, V>(name, usize::MAX)?.len() as u32)
    }

    fn max_entries(&self, name: &'static str) -> Result<u32> {
        Ok(self.data(name)?.info().map_err(map_err(name))?.max_entries())
    }

    fn read_limits(&self) -> Result<MapSizes> {
        let slots = ring_pool::slots(self.max_entries(names::MAP_RINGS)?);
        let ring_slots = u32::try_from(slots).map_err(|_| DataplaneError::Layout {
            name: names::MAP_RINGS,
            detail: format!("{slots} slots do not fit the 32-bit ring_start"),
        })?;
        Ok(MapSizes {
            ring_slots,
            max_services: self.max_entries(names::MAP_SERVICES)?,
            max_backends: self.max_entries(names::MAP_BACKENDS)?,
            max_flows: self.max_entries(names::MAP_FLOWS4)?,
            max_source_ranges: self.max_entries(names::MAP_SOURCE_RANGES)?,
        })
    }

    /// Elements `0..count` of array map `name` (at most all of them; a per-CPU one: every CPU's
    /// value of each element in turn), in batches.
    fn read_first<V: aya::Pod + Default>(&self, name: &'static str, per_cpu: bool, count: u32) -> Result<Vec<V>> {
        let copies = if per_cpu { cpus(name)? } else { 1 };
        let entries = self.max_entries(name)?.min(count);
        super::sys::read_array(self.data(name)?.fd().as_fd(), entries, copies)
            .map_err(|e| DataplaneError::Map { name, source: MapError::from(e) })
    }

    /// Elements `0..count` of per-CPU array `name`, each one's CPU values folded by `add`.
    fn read_summed<V: aya::Pod + Default>(&self, name: &'static str, count: u32, add: impl Fn(&mut V, &V)) -> Result<Vec<V>> {
        let cpus = cpus(name)?;
        let values = self.read_first::<V>(name, true, count)?;
        Ok(values
            .chunks(cpus)
            .map(|per_cpu| {
                let mut total = V::default();
                per_cpu.iter().for_each(|v| add(&mut total, v));
                total
            })
            .collect())
    }

    /// Zeroes element `index` of per-CPU array `name` on every CPU.
    fn reset_per_cpu<V: aya::Pod + Default + Clone>(&mut self, name: &'static str, index: u32) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![V::default(); cpus(name)?]).map_err(|e| DataplaneError::Map { name, source: MapError::from(e) })?;
        self.per_cpu_array_mut::<V>(name)?.set(index, zeros, 0).map_err(map_err(name))
    }
}

impl Dataplane for PinnedMaps {
    fn limits(&self) -> Result<MapSizes> {
        // Fixed when the maps were created: read once.
        if let Some(limits) = self.limits.get() {
            return Ok(*limits);
        }
        let limits = self.read_limits()?;
        Ok(*self.limits.get_or_init(|| limits))
    }

    fn iface_stats(&self) -> Result<Vec<IfaceStat>> {
        let totals = self.read_summed::<IfaceCounters>(names::MAP_IFACE_STATS, u32::MAX, IfaceCounters::add)?;
        Ok(totals
            .into_iter()
            .enumerate()
            .filter(|(_, total)| *total != IfaceCounters::default())
            .map(|(slot, total)| {
                let (ifindex, hook) = lb_common::iface_of_slot(slot as u32);
                IfaceStat::new(ifindex, hook, total)
            })
            .collect())
    }

    fn verdicts(&self) -> Result<Vec<u64>> {
        self.read_summed::<u64>(names::MAP_VERDICTS, u32::MAX, |total, v| *total = total.wrapping_add(*v))
    }

    fn service_stats(&self, ids: u32) -> Result<Vec<TrafficCounters>> {
        self.read_summed(names::MAP_SERVICE_STATS, ids, TrafficCounters::add)
    }

    fn backend_stats(&self, ids: u32) -> Result<Vec<TrafficCounters>> {
        self.read_summed(names::MAP_BACKEND_STATS, ids, TrafficCounters::add)
    }

    fn reset_service_stats(&mut self, service_id: u32) -> Result<()> {
        self.reset_per_cpu::<TrafficCounters>(names::MAP_SERVICE_STATS, service_id)?;
        self.reset_per_cpu::<u64>(names::MAP_SOURCE_REFUSALS, service_id)
    }

    fn reset_backend_stats(&mut self, backend_id: u32) -> Result<()> {
        self.reset_per_cpu::<TrafficCounters>(names::MAP_BACKEND_STATS, backend_id)
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceInfo)>> {
        self.entries(names::MAP_SERVICES, usize::MAX)
    }

    fn set_service(&mut self, key: &ServiceKey, info: &ServiceInfo) -> Result<()> {
        let mut map = self.hash_mut::<ServiceKey, ServiceInfo>(names::MAP_SERVICES)?;
        map.insert(key, info, 0).map_err(map_err(names::MAP_SERVICES))
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        ignore_missing(self.hash_mut::<ServiceKey, ServiceInfo>(names::MAP_SERVICES)?.remove(key), names::MAP_SERVICES)
    }

    fn service_name(&self, service_id: u32) -> Result<String> {
        let name = names::MAP_SERVICE_NAMES;
        Ok(name_text(&self.array::<ServiceName>(name)?.get(&service_id, 0).map_err(map_err(name))?))
    }

    fn service_names(&self, ids: u32) -> Result<Vec<String>> {
        Ok(self.read_first::<ServiceName>(names::MAP_SERVICE_NAMES, false, ids)?.iter().map(name_text).collect())
    }

    fn set_service_name(&mut self, service_id: u32, text: &str) -> Result<()> {
        let name = names::MAP_SERVICE_NAMES;
        let mut raw = ServiceName::default();
        // Truncate on a character boundary so the stored name stays valid UTF-8.
        let mut len = text.len().min(SERVICE_NAME_LEN);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        raw.name[..len].copy_from_slice(&text.as_bytes()[..len]);
        self.array_mut::<ServiceName>(name)?.set(service_id, raw, 0).map_err(map_err(name))
    }

    fn backends(&self) -> Result<Vec<BackendInfo>> {
        let name = names::MAP_BACKENDS;
        super::sys::read_mapped(self.data(name)?.fd().as_fd(), self.max_entries(name)?)
            .map_err(|source| DataplaneError::Mmap { name, what: "the backends".into(), source })
    }

    fn set_backend(&mut self, backend_id: u32, info: &BackendInfo) -> Result<()> {
        let name = names::MAP_BACKENDS;
        self.array_mut::<BackendInfo>(name)?.set(backend_id, info, 0).map_err(map_err(name))
    }

    fn write_ring(&mut self, start: u32, ring: &[u32]) -> Result<()> {
        let limits = self.limits()?;
        let chunk = start / ring_pool::CHUNK_SLOTS;
        let chunk_start = chunk * ring_pool::CHUNK_SLOTS;
        let in_chunk = (start - chunk_start) as usize + ring.len() <= ring_pool::CHUNK_SLOTS as usize
            && chunk_start as u64 + ring_pool::CHUNK_SLOTS as u64 <= limits.ring_slots as u64;
        if !in_chunk {
            let window = RingWindow::open(self.data(names::MAP_RINGS)?, &limits, start, ring.len())?;
            window.write(start, ring);
            return Ok(());
        }
        if self.ring_chunk.as_ref().is_none_or(|(mapped, _)| *mapped != chunk) {
            // The previous chunk is unmapped first: never two chunks mapped at once.
            self.ring_chunk = None;
            let window = RingWindow::open(self.data(names::MAP_RINGS)?, &limits, chunk_start, ring_pool::CHUNK_SLOTS as usize)?;
            self.ring_chunk = Some((chunk, window));
        }
        let (_, window) = self.ring_chunk.as_ref().expect("mapped just above");
        window.write(start, ring);
        Ok(())
    }

    fn read_ring(&self, start: u32, size: u32) -> Result<Vec<u32>> {
        let limits = self.limits()?;
        let window = RingWindow::open(self.data(names::MAP_RINGS)?, &limits, start, size as usize)?;
        Ok(window.read(start, size as usize))
    }

    fn bitmap_words(&self, bitmap: Bitmap) -> Result<Vec<u64>> {
        let name = bitmap.map();
        self.array::<u64>(name)?.iter().map(|v| v.map_err(map_err(name))).collect()
    }

    fn set_bitmap_word(&mut self, bitmap: Bitmap, index: u32, word: u64) -> Result<()> {
        let name = bitmap.map();
        self.array_mut::<u64>(name)?.set(index, word, 0).map_err(map_err(name))
    }

    fn service_groups(&self, service_id: u32) -> Result<u32> {
        let name = names::MAP_SERVICE_GROUPS;
        self.array::<u32>(name)?.get(&service_id, 0).map_err(map_err(name))
    }

    fn service_group_words(&self, ids: u32) -> Result<Vec<u32>> {
        self.read_first::<u32>(names::MAP_SERVICE_GROUPS, false, ids)
    }

    fn set_service_groups(&mut self, service_id: u32, groups: u32) -> Result<()> {
        let name = names::MAP_SERVICE_GROUPS;
        self.array_mut::<u32>(name)?.set(service_id, groups, 0).map_err(map_err(name))
    }

    fn source_ranges(&self) -> Result<Vec<(u32, SourceRange)>> {
        let keys = self.source_trie()?.keys().collect::<std::result::Result<Vec<_>, _>>().map_err(map_err(names::MAP_SOURCE_RANGES))?;
        Ok(keys.into_iter().map(|key| (key.prefix_len(), key.data())).collect())
    }

    fn set_source_range(&mut self, prefix_len: u32, range: &SourceRange) -> Result<()> {
        self.source_trie_mut()?.insert(&Key::new(prefix_len, *range), 1, 0).map_err(map_err(names::MAP_SOURCE_RANGES))
    }

    fn remove_source_range(&mut self, prefix_len: u32, range: &SourceRange) -> Result<()> {
        ignore_missing(self.source_trie_mut()?.remove(&Key::new(prefix_len, *range)), names::MAP_SOURCE_RANGES)
    }

    fn previous_rings(&self, ids: u32) -> Result<Vec<lb_common::PreviousRing>> {
        self.read_first::<lb_common::PreviousRing>(names::MAP_PREVIOUS_RINGS, false, ids)
    }

    fn set_previous_ring(&mut self, service_id: u32, ring: &lb_common::PreviousRing) -> Result<()> {
        let name = names::MAP_PREVIOUS_RINGS;
        self.array_mut::<lb_common::PreviousRing>(name)?.set(service_id, *ring, 0).map_err(map_err(name))
    }

    fn service_source_counts(&self, ids: u32) -> Result<Vec<u32>> {
        self.read_first::<u32>(names::MAP_SERVICE_SOURCES, false, ids)
    }

    fn set_service_sources(&mut self, service_id: u32, count: u32) -> Result<()> {
        let name = names::MAP_SERVICE_SOURCES;
        self.array_mut::<u32>(name)?.set(service_id, count, 0).map_err(map_err(name))
    }

    fn source_refusals(&self, ids: u32) -> Result<Vec<u64>> {
        self.read_summed::<u64>(names::MAP_SOURCE_REFUSALS, ids, |total, v| *total = total.wrapping_add(*v))
    }

    fn node_addrs(&self) -> Result<Vec<(NodeAddrKey, u32)>> {
        self.entries::<NodeAddrKey, u32>(names::MAP_NODE_ADDRS, usize::MAX)
    }

    fn set_node_addr(&mut self, addr: &NodeAddrKey, groups: u32) -> Result<()> {
        let mut map = self.hash_mut::<NodeAddrKey, u32>(names::MAP_NODE_ADDRS)?;
        map.insert(addr, groups, 0).map_err(map_err(names::MAP_NODE_ADDRS))
    }

    fn remove_node_addr(&mut self, addr: &NodeAddrKey) -> Result<()> {
        ignore_missing(self.hash_mut::<NodeAddrKey, u32>(names::MAP_NODE_ADDRS)?.remove(addr), names::MAP_NODE_ADDRS)
    }

    fn uplinks(&self) -> Result<Vec<(u32, u32)>> {
        self.entries::<u32, u32>(names::MAP_UPLINKS, usize::MAX)
    }

    fn dsr_view(&self) -> Result<super::dsr::DsrView> {
        let name = names::MAP_SETTINGS;
        let settings = self.array::<lb_common::Settings>(name)?.get(&0, 0).map_err(map_err(name))?;
        let name = names::MAP_DSR_NODES;
        let trie: LpmTrie<&MapData, lb_common::dsr::NodeRange, u32> = LpmTrie::try_from(self.map(name)?).map_err(map_err(name))?;
        let keys = trie.keys().collect::<std::result::Result<Vec<_>, _>>().map_err(map_err(name))?;
        Ok(super::dsr::DsrView { flags: settings.dsr_flags, nodes: keys.iter().filter_map(super::dsr::net_of).collect() })
    }

    fn set_uplink(&mut self, ifindex: u32, groups: u32) -> Result<()> {
        let mut map = self.hash_mut::<u32, u32>(names::MAP_UPLINKS)?;
        map.insert(ifindex, groups, 0).map_err(map_err(names::MAP_UPLINKS))
    }

    fn remove_uplink(&mut self, ifindex: u32) -> Result<()> {
        ignore_missing(self.hash_mut::<u32, u32>(names::MAP_UPLINKS)?.remove(&ifindex), names::MAP_UPLINKS)
    }

    fn flows(&self, limit: usize) -> Result<Vec<(FlowKey, FlowInfo)>> {
        let v4 = self.entries::<FlowKey4, FlowInfo>(names::MAP_FLOWS4, limit)?;
        let mut flows: Vec<(FlowKey, FlowInfo)> = v4.into_iter().map(|(k, v)| (connection_of(&k, &v), v)).collect();
        flows.extend(self.entries::<FlowKey, FlowInfo>(names::MAP_FLOWS, limit - flows.len())?);
        Ok(flows)
    }

    fn flow_table_fill(&self) -> Result<Vec<(&'static str, u32, u32)>> {
        let mut out = Vec::new();
        for name in names::FLOW_MAPS {
            let entries = match name {
                names::MAP_FLOWS4 => self.count::<FlowKey4, FlowInfo>(name)?,
                names::MAP_REPLIES4 => self.count::<FlowKey4, ReplyInfo>(name)?,
                names::MAP_FLOWS => self.count::<FlowKey, FlowInfo>(name)?,
                names::MAP_REPLIES => self.count::<FlowKey, ReplyInfo>(name)?,
                names::MAP_NAT_REPLIES => self.count::<FlowKey, NatReply>(name)?,
                _ => self.count::<SockKey, ReplyInfo>(name)?,
            };
            out.push((name, entries, self.max_entries(name)?));
        }
        Ok(out)
    }

    fn expire_nat_mappings(&mut self, expired: &mut dyn FnMut(&FlowKey, &NatReply) -> bool) -> Result<usize> {
        let name = names::MAP_NAT_REPLIES;
        let mut found: Vec<(FlowKey, NatReply)> = Vec::new();
        super::sys::for_each_batch::<FlowKey, NatReply>(self.data(name)?.fd().as_fd(), 1, |keys, values| {
            found.extend(keys.iter().zip(values).filter(|(k, v)| expired(k, v)).map(|(k, v)| (*k, *v)));
            found.len() < super::MAX_EXPIRED_PER_CALL
        })
        .map_err(|e| DataplaneError::Map { name, source: MapError::from(e) })?;
        found.truncate(super::MAX_EXPIRED_PER_CALL);
        for (key, reply) in &found {
            // The flow first: a packet of it meanwhile re-pins (new port) instead of using a
            // mapping that is gone.
            self.forget_flow_using(key, reply)?;
            ignore_missing(self.hash_mut::<FlowKey, NatReply>(name)?.remove(key), name)?;
        }
        Ok(found.len())
    }

    fn flow(&self, key: &FlowKey) -> Result<Option<FlowInfo>> {
        Ok(self.flow_entry(key)?.map(|(_, info)| info))
    }

    fn forget_flows(&mut self, forget: &mut dyn FnMut(&FlowKey, &FlowInfo) -> bool) -> Result<usize> {
        let v4 = self.forget_in::<FlowKey4>(names::MAP_FLOWS4, connection_of, forget)?;
        Ok(v4 + self.forget_in::<FlowKey>(names::MAP_FLOWS, |key, _| *key, forget)?)
    }
}

/// The connection a `FLOWS4` entry pins, as the client sent it: a client-keyed entry keeps the
/// service it connected to in its value.
fn connection_of(key: &FlowKey4, info: &FlowInfo) -> FlowKey {
    let mut connection = key.widen();
    if let (true, Some((addr, port))) = (key.is_client_key(), info.v4_service()) {
        connection.dst = lb_common::v4_bytes(addr);
        connection.dport = port;
    }
    connection
}

impl PinnedMaps {
    /// The entry pinning the connection `key` (as the client sent it): an IPv4 connection's
    /// under its client key if that entry is this connection's, else under its whole tuple.
    /// Returns the map key (widened) with the value.
    fn flow_entry(&self, key: &FlowKey) -> Result<Option<(FlowKey, FlowInfo)>> {
        let lookup = |name, found: std::result::Result<FlowInfo, MapError>| match found {
            Ok(info) => Ok(Some(info)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Map { name, source }),
        };
        if key.family != lb_common::FAMILY_V4 {
            let found = lookup(names::MAP_FLOWS, self.hash::<FlowKey, FlowInfo>(names::MAP_FLOWS)?.get(key, 0))?;
            return Ok(found.map(|info| (*key, info)));
        }
        let flows = self.hash::<FlowKey4, FlowInfo>(names::MAP_FLOWS4)?;
        let narrow = key.narrow();
        let client = FlowKey4::client(narrow.src, narrow.sport, narrow.proto);
        if let Some(info) = lookup(names::MAP_FLOWS4, flows.get(&client, 0))? {
            if info.is_v4_connection_to(&key.dst, key.dport) {
                return Ok(Some((client.widen(), info)));
            }
        }
        Ok(lookup(names::MAP_FLOWS4, flows.get(&narrow, 0))?.map(|info| (*key, info)))
    }

    /// Removes the client's flow entry of a NAT mapping if it still sends through it.
    fn forget_flow_using(&mut self, key: &FlowKey, reply: &NatReply) -> Result<()> {
        let flow_key = lb_common::nat_state::client_flow(key, reply);
        let Some((entry_key, flow)) = self.flow_entry(&flow_key)? else { return Ok(()) };
        if !lb_common::nat_state::flow_uses(&flow, key) {
            return Ok(());
        }
        if flow_key.family == lb_common::FAMILY_V4 {
            ignore_missing(self.hash_mut::<FlowKey4, FlowInfo>(names::MAP_FLOWS4)?.remove(&entry_key.narrow()), names::MAP_FLOWS4)
        } else {
            ignore_missing(self.hash_mut::<FlowKey, FlowInfo>(names::MAP_FLOWS)?.remove(&entry_key), names::MAP_FLOWS)
        }
    }
}

/// A removal that found nothing (the kernel evicted or removed the entry first) is done.
fn ignore_missing(removed: std::result::Result<(), MapError>, name: &'static str) -> Result<()> {
    match removed {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// A stored name as text (NUL-padded UTF-8).
fn name_text(raw: &ServiceName) -> String {
    let len = raw.name.iter().position(|&b| b == 0).unwrap_or(SERVICE_NAME_LEN);
    String::from_utf8_lossy(&raw.name[..len]).into_owned()
}

/// Possible CPUs: the values a per-CPU map holds per element.
fn cpus(name: &'static str) -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Map { name, source: MapError::from(e) })
}

/// Slots of the RINGS pool mapped into this process (BPF_F_MMAPABLE): a ring is written with one
/// copy instead of one syscall per slot. Only the pages of a ring or a chunk are mapped, so a
/// full sync of thousands of services does not grow the agent's memory.
struct RingWindow {
    base: *mut libc::c_void,
    len: usize,
    /// Slot `first` of the pool, and how many slots from it are mapped.
    slots: *mut u32,
    first: u32,
    count: u32,
}

// SAFETY: the window is a shared mapping of a BPF map owned by this process, valid from any
// thread until it is unmapped in drop; the pointers are only dereferenced through &self/&mut self
// of the PinnedMaps that owns the window, so moving it to another thread races with nothing.
unsafe impl Send for RingWindow {}

impl RingWindow {
    fn open(map: &MapData, limits: &MapSizes, ring_start: u32, size: usize) -> Result<Self> {
        let name = names::MAP_RINGS;
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        // limits.ring_slots is the pool's size as the kernel reports it (read_limits).
        if size == 0 || ring_start as u64 + size as u64 > limits.ring_slots as u64 {
            return Err(DataplaneError::Layout {
                name,
                detail: format!("ring of {size} slots at slot {ring_start} is outside the pool of {} slots", limits.ring_slots),
            });
        }
        let bytes = ring_pool::ring_bytes(ring_start, size);
        let (start, end) = (bytes.start as usize, bytes.end as usize);
        // SAFETY: sysconf has no memory-safety preconditions; _SC_PAGESIZE is always defined.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let offset = start / page * page;
        let len = end - offset;
        // SAFETY: a new shared mapping (null hint: the kernel picks the address, so no existing
        // memory is replaced) of a BPF_F_MMAPABLE array fd, `offset` page-aligned and
        // `offset + len` within the pool (checked above); failure is reported as MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            let what = format!("the ring at slot {ring_start}");
            return Err(DataplaneError::Mmap { name, what, source: std::io::Error::last_os_error() });
        }
        // SAFETY: start - offset < len, so the result points inside the mapping just created.
        let slots = unsafe { base.cast::<u8>().add(start - offset).cast::<u32>() };
        Ok(Self { base, len, slots, first: ring_start, count: size })
    }

    /// Where slots `start..start + len` are, which must lie within the window.
    fn at(&self, start: u32, len: usize) -> *mut u32 {
        assert!(start >= self.first && (start - self.first) as usize + len <= self.count as usize, "slots outside the window");
        // SAFETY: in bounds of the mapped slots (asserted above).
        unsafe { self.slots.add((start - self.first) as usize) }
    }

    fn write(&self, start: u32, ring: &[u32]) {
        let to = self.at(start, ring.len());
        // SAFETY: `to` points at ring.len() writable, u32-aligned mapped slots (at() checks the
        // bounds; a slot is 4 bytes into a page-aligned mapping); `ring` is this process's
        // heap memory, not the mapping, so they do not overlap. The kernel reads these slots
        // only once a service points at this ring, which happens after this copy.
        unsafe { std::ptr::copy_nonoverlapping(ring.as_ptr(), to, ring.len()) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    fn read(&self, start: u32, len: usize) -> Vec<u32> {
        let from = self.at(start, len);
        // SAFETY: `from` points at len readable, u32-aligned mapped slots (at() checks the
        // bounds) that stay mapped while `self` lives, which outlasts the copy. The kernel
        // never writes rings.
        unsafe { std::slice::from_raw_parts(from, len) }.to_vec()
    }
}

impl Drop for RingWindow {
    fn drop(&mut self) {
        // SAFETY: base and len are exactly what open() mapped, and no slice of the window
        // outlives it (read_ring copies out, write_ring copies in, both before the drop).
        unsafe { libc::munmap(self.base, self.len) };
    }
}
