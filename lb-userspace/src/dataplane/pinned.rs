//! [`Dataplane`] over the maps pinned in the pin directory: works whether `lb run` is running or
//! not, and whether the maps were created by this process or by an earlier agent.

use std::{
    cell::OnceCell,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use lb_common::{
    names, BackendInfo, FlowInfo, FlowKey, FlowKey4, IfaceCounters, NodeAddrKey, ServiceInfo, ServiceKey, ServiceName,
    TrafficCounters, SERVICE_NAME_LEN, SPARE_RINGS,
};

use super::{Dataplane, DataplaneError, IfaceStat, Limits};

/// File name of a map's pin: the kernel symbol in lower case (`IFACE_STATS` → `iface_stats`).
pub fn pin_name(map: &str) -> String {
    map.to_ascii_lowercase()
}

pub struct PinnedMaps {
    pin_dir: PathBuf,
    rings: OnceCell<MapData>,
    limits: OnceCell<Limits>,
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

impl PinnedMaps {
    pub fn new(pin_dir: &Path) -> Self {
        Self { pin_dir: pin_dir.to_owned(), rings: OnceCell::new(), limits: OnceCell::new() }
    }

    fn open(&self, name: &'static str) -> Result<MapData> {
        let path = self.pin_dir.join(pin_name(name));
        if !path.exists() {
            return Err(DataplaneError::NotPinned { name, path });
        }
        MapData::from_pin(&path).map_err(map_err(name))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<HashMap<MapData, K, V>> {
        let data = self.open(name)?;
        // The typed wrappers only check the map type they were handed; every hash flavour
        // shares the element API.
        HashMap::try_from(Map::HashMap(data)).map_err(map_err(name))
    }

    fn array<V: aya::Pod>(&self, name: &'static str) -> Result<Array<MapData, V>> {
        Array::try_from(Map::Array(self.open(name)?)).map_err(map_err(name))
    }

    fn per_cpu_array<V: aya::Pod>(&self, name: &'static str) -> Result<PerCpuArray<MapData, V>> {
        PerCpuArray::try_from(Map::PerCpuArray(self.open(name)?)).map_err(map_err(name))
    }

    fn max_entries(&self, name: &'static str) -> Result<u32> {
        Ok(self.open(name)?.info().map_err(map_err(name))?.max_entries())
    }

    fn read_limits(&self) -> Result<Limits> {
        let max_services = self.max_entries(names::MAP_SERVICES)?;
        let rings = max_services + SPARE_RINGS;
        // Two u32 slots per u64 element, rounded up: the pool holds rings × ring_size slots
        // plus at most one.
        let slots = self.max_entries(names::MAP_RINGS)? * 2;
        let ring_size = slots / rings;
        if slots - ring_size * rings > 1 {
            return Err(DataplaneError::Layout {
                name: names::MAP_RINGS,
                detail: format!("{slots} slots is not a whole number of rings for {rings} rings"),
            });
        }
        Ok(Limits { ring_size, max_services, rings, max_backends: self.max_entries(names::MAP_BACKENDS)? })
    }

    fn sum_traffic(&self, name: &'static str, index: u32) -> Result<TrafficCounters> {
        let values = self.per_cpu_array::<TrafficCounters>(name)?.get(&index, 0).map_err(map_err(name))?;
        let mut total = TrafficCounters::default();
        values.iter().for_each(|v| total.add(v));
        Ok(total)
    }

    fn reset_traffic(&mut self, name: &'static str, index: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Map { name, source: MapError::from(e) })?;
        let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); cpus])
            .map_err(|e| DataplaneError::Map { name, source: MapError::from(e) })?;
        self.per_cpu_array::<TrafficCounters>(name)?.set(index, zeros, 0).map_err(map_err(name))
    }

    /// The RINGS map, opened once.
    fn rings(&self) -> Result<&MapData> {
        if let Some(map) = self.rings.get() {
            return Ok(map);
        }
        let map = self.open(names::MAP_RINGS)?;
        Ok(self.rings.get_or_init(|| map))
    }
}

fn hash_entries<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    limit: usize,
) -> Result<Vec<(K, V)>> {
    // A key deleted between listing and lookup is skipped: the maps change under a live agent.
    let mut out = Vec::new();
    for key in map.keys() {
        if out.len() >= limit {
            break;
        }
        let key = key.map_err(map_err(name))?;
        match map.get(&key, 0) {
            Ok(value) => out.push((key, value)),
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(out)
}

impl Dataplane for PinnedMaps {
    fn limits(&self) -> Result<Limits> {
        // Fixed when the maps were created: read once.
        if let Some(limits) = self.limits.get() {
            return Ok(*limits);
        }
        let limits = self.read_limits()?;
        Ok(*self.limits.get_or_init(|| limits))
    }

    fn iface_stats(&self) -> Result<Vec<IfaceStat>> {
        let name = names::MAP_IFACE_STATS;
        let map = self.per_cpu_array::<IfaceCounters>(name)?;
        let mut stats = Vec::new();
        for (slot, per_cpu) in map.iter().enumerate() {
            let per_cpu = per_cpu.map_err(map_err(name))?;
            let mut total = IfaceCounters::default();
            per_cpu.iter().for_each(|c| total.add(c));
            if total != IfaceCounters::default() {
                let (ifindex, hook) = lb_common::iface_of_slot(slot as u32);
                stats.push(IfaceStat::new(ifindex, hook, total));
            }
        }
        Ok(stats)
    }

    fn verdicts(&self) -> Result<Vec<u64>> {
        let name = names::MAP_VERDICTS;
        let map = self.per_cpu_array::<u64>(name)?;
        map.iter().map(|v| v.map(|per_cpu| per_cpu.iter().sum()).map_err(map_err(name))).collect()
    }

    fn service_stats(&self, service_id: u32) -> Result<TrafficCounters> {
        self.sum_traffic(names::MAP_SERVICE_STATS, service_id)
    }

    fn backend_stats(&self, backend_id: u32) -> Result<TrafficCounters> {
        self.sum_traffic(names::MAP_BACKEND_STATS, backend_id)
    }

    fn reset_service_stats(&mut self, service_id: u32) -> Result<()> {
        self.reset_traffic(names::MAP_SERVICE_STATS, service_id)
    }

    fn reset_backend_stats(&mut self, backend_id: u32) -> Result<()> {
        self.reset_traffic(names::MAP_BACKEND_STATS, backend_id)
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceInfo)>> {
        let map = self.hash::<ServiceKey, ServiceInfo>(names::MAP_SERVICES)?;
        hash_entries(&map, names::MAP_SERVICES, usize::MAX)
    }

    fn set_service(&mut self, key: &ServiceKey, info: &ServiceInfo) -> Result<()> {
        let mut map = self.hash::<ServiceKey, ServiceInfo>(names::MAP_SERVICES)?;
        map.insert(key, info, 0).map_err(map_err(names::MAP_SERVICES))
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        let mut map = self.hash::<ServiceKey, ServiceInfo>(names::MAP_SERVICES)?;
        match map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::MAP_SERVICES)(e)),
        }
    }

    fn service_name(&self, service_id: u32) -> Result<String> {
        let name = names::MAP_SERVICE_NAMES;
        let raw = self.array::<ServiceName>(name)?.get(&service_id, 0).map_err(map_err(name))?;
        let len = raw.name.iter().position(|&b| b == 0).unwrap_or(SERVICE_NAME_LEN);
        Ok(String::from_utf8_lossy(&raw.name[..len]).into_owned())
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
        self.array::<ServiceName>(name)?.set(service_id, raw, 0).map_err(map_err(name))
    }

    fn backends(&self) -> Result<Vec<BackendInfo>> {
        let name = names::MAP_BACKENDS;
        self.array::<BackendInfo>(name)?.iter().map(|v| v.map_err(map_err(name))).collect()
    }

    fn set_backend(&mut self, backend_id: u32, info: &BackendInfo) -> Result<()> {
        let name = names::MAP_BACKENDS;
        self.array::<BackendInfo>(name)?.set(backend_id, info, 0).map_err(map_err(name))
    }

    fn write_ring(&mut self, index: u32, ring: &[u32]) -> Result<()> {
        let ring_size = self.limits()?.ring_size;
        if ring.len() != ring_size as usize {
            return Err(DataplaneError::Layout {
                name: names::MAP_RINGS,
                detail: format!("ring of {} entries, maps have {ring_size}", ring.len()),
            });
        }
        let window = RingWindow::open(self.rings()?, index, ring_size)?;
        // SAFETY: the window holds ring_size slots; the kernel reads them only once a service
        // points at this ring, which happens after this copy.
        unsafe { std::ptr::copy_nonoverlapping(ring.as_ptr(), window.ring, ring.len()) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn read_ring(&self, index: u32) -> Result<Vec<u32>> {
        let ring_size = self.limits()?.ring_size;
        let window = RingWindow::open(self.rings()?, index, ring_size)?;
        // SAFETY: the window holds ring_size slots.
        Ok(unsafe { std::slice::from_raw_parts(window.ring, ring_size as usize) }.to_vec())
    }

    fn service_port_words(&self) -> Result<Vec<u64>> {
        let name = names::MAP_SERVICE_PORTS;
        self.array::<u64>(name)?.iter().map(|v| v.map_err(map_err(name))).collect()
    }

    fn set_service_port_word(&mut self, index: u32, word: u64) -> Result<()> {
        let name = names::MAP_SERVICE_PORTS;
        self.array::<u64>(name)?.set(index, word, 0).map_err(map_err(name))
    }

    fn node_addrs(&self) -> Result<Vec<NodeAddrKey>> {
        let map = self.hash::<NodeAddrKey, u32>(names::MAP_NODE_ADDRS)?;
        Ok(hash_entries(&map, names::MAP_NODE_ADDRS, usize::MAX)?.into_iter().map(|(k, _)| k).collect())
    }

    fn add_node_addr(&mut self, addr: &NodeAddrKey) -> Result<()> {
        let mut map = self.hash::<NodeAddrKey, u32>(names::MAP_NODE_ADDRS)?;
        map.insert(addr, 1, 0).map_err(map_err(names::MAP_NODE_ADDRS))
    }

    fn remove_node_addr(&mut self, addr: &NodeAddrKey) -> Result<()> {
        let mut map = self.hash::<NodeAddrKey, u32>(names::MAP_NODE_ADDRS)?;
        match map.remove(addr) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::MAP_NODE_ADDRS)(e)),
        }
    }

    fn uplinks(&self) -> Result<Vec<u32>> {
        let map = self.hash::<u32, u32>(names::MAP_UPLINKS)?;
        Ok(hash_entries(&map, names::MAP_UPLINKS, usize::MAX)?.into_iter().map(|(k, _)| k).collect())
    }

    fn add_uplink(&mut self, ifindex: u32) -> Result<()> {
        let mut map = self.hash::<u32, u32>(names::MAP_UPLINKS)?;
        map.insert(ifindex, 1, 0).map_err(map_err(names::MAP_UPLINKS))
    }

    fn remove_uplink(&mut self, ifindex: u32) -> Result<()> {
        let mut map = self.hash::<u32, u32>(names::MAP_UPLINKS)?;
        match map.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::MAP_UPLINKS)(e)),
        }
    }

    fn flows(&self, limit: usize) -> Result<Vec<(FlowKey, FlowInfo)>> {
        let v4 = self.hash::<FlowKey4, FlowInfo>(names::MAP_FLOWS4)?;
        let mut flows: Vec<(FlowKey, FlowInfo)> =
            hash_entries(&v4, names::MAP_FLOWS4, limit)?.into_iter().map(|(k, v)| (k.widen(), v)).collect();
        let v6 = self.hash::<FlowKey, FlowInfo>(names::MAP_FLOWS)?;
        flows.extend(hash_entries(&v6, names::MAP_FLOWS, limit - flows.len())?);
        Ok(flows)
    }
}

/// One ring of the RINGS array mapped into this process (BPF_F_MMAPABLE): it is written with one
/// copy instead of one syscall per slot. Only the pages of that ring are mapped, and only while
/// it is written, so a full sync of thousands of services does not grow the agent's memory.
struct RingWindow {
    base: *mut libc::c_void,
    len: usize,
    ring: *mut u32,
}

impl RingWindow {
    fn open(map: &MapData, index: u32, ring_size: u32) -> Result<Self> {
        let name = names::MAP_RINGS;
        let elements = map.info().map_err(map_err(name))?.max_entries() as usize;
        // Seen from here the pool is one array of u32 slots (two per u64 element, low first on
        // this little-endian host, matching the kernel's split).
        let pool_bytes = elements * std::mem::size_of::<u64>();
        let start = index as usize * ring_size as usize * std::mem::size_of::<u32>();
        let end = start + ring_size as usize * std::mem::size_of::<u32>();
        if end > pool_bytes {
            return Err(DataplaneError::Layout { name, detail: format!("ring {index} is out of range") });
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let offset = start / page * page;
        let len = end - offset;
        // SAFETY: a shared mapping of a BPF_F_MMAPABLE array fd, within its size.
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
            return Err(DataplaneError::Layout {
                name,
                detail: format!("mmap failed: {} (created without BPF_F_MMAPABLE?)", std::io::Error::last_os_error()),
            });
        }
        // SAFETY: start - offset < len, inside the mapping.
        let ring = unsafe { base.cast::<u8>().add(start - offset).cast::<u32>() };
        Ok(Self { base, len, ring })
    }
}

impl Drop for RingWindow {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open() mapped.
        unsafe { libc::munmap(self.base, self.len) };
    }
}
