//! In-memory [`Dataplane`] for tests of the code above the maps (reconciler, CLI).

use std::collections::BTreeMap;

use lb_common::{
    reasons, sources::SourceRange, BackendInfo, FlowInfo, FlowKey, Hook, IfaceCounters, NatReply, NodeAddrKey, ServiceInfo, ServiceKey,
    TrafficCounters,
};

use super::{Bitmap, Dataplane, DataplaneError, IfaceStat, MapSizes};

#[derive(Debug)]
pub struct FakeDataplane {
    pub limits: MapSizes,
    /// Per-CPU counters by (ifindex, hook), as the kernel would keep them.
    pub iface_counters: BTreeMap<(u32, Hook), Vec<IfaceCounters>>,
    pub verdicts: Vec<u64>,
    pub service_stats: BTreeMap<u32, TrafficCounters>,
    pub backend_stats: BTreeMap<u32, TrafficCounters>,
    pub services: BTreeMap<ServiceKey, ServiceInfo>,
    pub names: BTreeMap<u32, String>,
    pub backends: Vec<BackendInfo>,
    /// The ring pool, one entry per slot.
    pub pool: Vec<u32>,
    pub node_addrs: BTreeMap<NodeAddrKey, u32>,
    /// Group words by service id (absent: 0, as in the array map).
    pub service_groups: BTreeMap<u32, u32>,
    /// `SOURCE_RANGES` keys (prefix length, data).
    pub source_ranges: std::collections::BTreeSet<(u32, SourceRange)>,
    /// Range counts by service id (absent: 0).
    pub service_sources: BTreeMap<u32, u32>,
    pub source_refusals: BTreeMap<u32, u64>,
    pub flows: Vec<(FlowKey, FlowInfo)>,
    /// Full-NAT mappings, keyed by the backend's reply.
    pub nat_replies: Vec<(FlowKey, NatReply)>,
    pub uplinks: BTreeMap<u32, u32>,
    pub service_ports: Vec<u64>,
    pub service_addrs: Vec<u64>,
    /// The settings' DSR flags and `DSR_NODES`.
    pub dsr: super::dsr::DsrView,
    /// `PREVIOUS_RINGS` by service id (absent: none).
    pub previous_rings: BTreeMap<u32, lb_common::PreviousRing>,
    /// Every write, in order, for tests of write ordering.
    pub log: Vec<String>,
}

impl FakeDataplane {
    /// A fake with small limits.
    pub fn new(max_services: u32, max_backends: u32, ring_slots: u32) -> Self {
        Self {
            limits: MapSizes { ring_slots, max_services, max_backends, max_flows: 1024, max_source_ranges: 64 },
            iface_counters: BTreeMap::new(),
            verdicts: vec![0; reasons::COUNT as usize],
            service_stats: BTreeMap::new(),
            backend_stats: BTreeMap::new(),
            services: BTreeMap::new(),
            names: BTreeMap::new(),
            backends: vec![BackendInfo::default(); max_backends as usize],
            pool: vec![0; ring_slots as usize],
            node_addrs: BTreeMap::new(),
            service_groups: BTreeMap::new(),
            source_ranges: Default::default(),
            service_sources: BTreeMap::new(),
            source_refusals: BTreeMap::new(),
            flows: Vec::new(),
            nat_replies: Vec::new(),
            uplinks: BTreeMap::new(),
            service_ports: vec![0; lb_common::SERVICE_PORT_WORDS as usize],
            service_addrs: vec![0; lb_common::SERVICE_ADDR_WORDS as usize],
            dsr: Default::default(),
            previous_rings: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    /// The live ring of a service.
    pub fn ring(&self, info: &ServiceInfo) -> &[u32] {
        &self.pool[info.ring_start as usize..][..info.ring_size as usize]
    }
}

type Result<T> = std::result::Result<T, DataplaneError>;

impl Dataplane for FakeDataplane {
    fn limits(&self) -> Result<MapSizes> {
        Ok(self.limits)
    }

    fn iface_stats(&self) -> Result<Vec<IfaceStat>> {
        Ok(self
            .iface_counters
            .iter()
            .map(|(&(ifindex, hook), per_cpu)| {
                let mut total = IfaceCounters::default();
                per_cpu.iter().for_each(|c| total.add(c));
                IfaceStat::new(ifindex, hook, total)
            })
            .collect())
    }

    fn verdicts(&self) -> Result<Vec<u64>> {
        Ok(self.verdicts.clone())
    }

    fn service_stats(&self, ids: u32) -> Result<Vec<TrafficCounters>> {
        Ok((0..ids.min(self.limits.max_services)).map(|id| self.service_stats.get(&id).copied().unwrap_or_default()).collect())
    }

    fn backend_stats(&self, ids: u32) -> Result<Vec<TrafficCounters>> {
        Ok((0..ids.min(self.limits.max_backends)).map(|id| self.backend_stats.get(&id).copied().unwrap_or_default()).collect())
    }

    fn reset_service_stats(&mut self, service_id: u32) -> Result<()> {
        self.service_stats.remove(&service_id);
        self.source_refusals.remove(&service_id);
        Ok(())
    }

    fn reset_backend_stats(&mut self, backend_id: u32) -> Result<()> {
        self.backend_stats.remove(&backend_id);
        Ok(())
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceInfo)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn set_service(&mut self, key: &ServiceKey, info: &ServiceInfo) -> Result<()> {
        self.log.push(format!("service {} port {} -> ring {}", info.service_id, key.port, info.ring_start));
        self.services.insert(*key, *info);
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.log.push(format!("remove service port {}", key.port));
        self.services.remove(key);
        Ok(())
    }

    fn service_name(&self, service_id: u32) -> Result<String> {
        Ok(self.names.get(&service_id).cloned().unwrap_or_default())
    }

    fn service_names(&self, ids: u32) -> Result<Vec<String>> {
        Ok((0..ids.min(self.limits.max_services)).map(|id| self.names.get(&id).cloned().unwrap_or_default()).collect())
    }

    fn set_service_name(&mut self, service_id: u32, name: &str) -> Result<()> {
        self.names.insert(service_id, name.to_owned());
        Ok(())
    }

    fn backends(&self) -> Result<Vec<BackendInfo>> {
        Ok(self.backends.clone())
    }

    fn set_backend(&mut self, backend_id: u32, info: &BackendInfo) -> Result<()> {
        self.log.push(format!("backend {backend_id} state {}", info.state));
        self.backends[backend_id as usize] = *info;
        Ok(())
    }

    fn write_ring(&mut self, start: u32, ring: &[u32]) -> Result<()> {
        self.log.push(format!("ring {start}"));
        self.pool[start as usize..][..ring.len()].copy_from_slice(ring);
        Ok(())
    }

    fn read_ring(&self, start: u32, size: u32) -> Result<Vec<u32>> {
        Ok(self.pool[start as usize..][..size as usize].to_vec())
    }

    fn bitmap_words(&self, bitmap: Bitmap) -> Result<Vec<u64>> {
        Ok(match bitmap {
            Bitmap::ServicePorts => self.service_ports.clone(),
            Bitmap::ServiceAddrs => self.service_addrs.clone(),
        })
    }

    fn set_bitmap_word(&mut self, bitmap: Bitmap, index: u32, word: u64) -> Result<()> {
        let words = match bitmap {
            Bitmap::ServicePorts => {
                self.log.push(format!("ports {index}"));
                &mut self.service_ports
            }
            Bitmap::ServiceAddrs => {
                self.log.push(format!("addrs {index}"));
                &mut self.service_addrs
            }
        };
        words[index as usize] = word;
        Ok(())
    }

    fn service_groups(&self, service_id: u32) -> Result<u32> {
        Ok(self.service_groups.get(&service_id).copied().unwrap_or(0))
    }

    fn service_group_words(&self, ids: u32) -> Result<Vec<u32>> {
        Ok((0..ids).map(|id| self.service_groups.get(&id).copied().unwrap_or(0)).collect())
    }

    fn set_service_groups(&mut self, service_id: u32, groups: u32) -> Result<()> {
        self.log.push(format!("groups {service_id} {groups:#x}"));
        self.service_groups.insert(service_id, groups);
        Ok(())
    }

    fn source_ranges(&self) -> Result<Vec<(u32, SourceRange)>> {
        Ok(self.source_ranges.iter().copied().collect())
    }

    fn set_source_range(&mut self, prefix_len: u32, range: &SourceRange) -> Result<()> {
        let (service_id, _, prefix) = range.parts(prefix_len);
        self.log.push(format!("source {service_id} +/{prefix}"));
        self.source_ranges.insert((prefix_len, *range));
        Ok(())
    }

    fn remove_source_range(&mut self, prefix_len: u32, range: &SourceRange) -> Result<()> {
        let (service_id, _, prefix) = range.parts(prefix_len);
        self.log.push(format!("source {service_id} -/{prefix}"));
        self.source_ranges.remove(&(prefix_len, *range));
        Ok(())
    }

    fn service_source_counts(&self, ids: u32) -> Result<Vec<u32>> {
        Ok((0..ids).map(|id| self.service_sources.get(&id).copied().unwrap_or(0)).collect())
    }

    fn set_service_sources(&mut self, service_id: u32, count: u32) -> Result<()> {
        self.log.push(format!("sources {service_id} {count}"));
        self.service_sources.insert(service_id, count);
        Ok(())
    }

    fn source_refusals(&self, ids: u32) -> Result<Vec<u64>> {
        Ok((0..ids).map(|id| self.source_refusals.get(&id).copied().unwrap_or(0)).collect())
    }

    fn node_addrs(&self) -> Result<Vec<(NodeAddrKey, u32)>> {
        Ok(self.node_addrs.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn set_node_addr(&mut self, addr: &NodeAddrKey, groups: u32) -> Result<()> {
        self.node_addrs.insert(*addr, groups);
        Ok(())
    }

    fn remove_node_addr(&mut self, addr: &NodeAddrKey) -> Result<()> {
        self.node_addrs.remove(addr);
        Ok(())
    }

    fn uplinks(&self) -> Result<Vec<(u32, u32)>> {
        Ok(self.uplinks.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dsr_view(&self) -> Result<super::dsr::DsrView> {
        Ok(self.dsr.clone())
    }

    fn previous_rings(&self, ids: u32) -> Result<Vec<lb_common::PreviousRing>> {
        Ok((0..ids).map(|id| self.previous_rings.get(&id).copied().unwrap_or_default()).collect())
    }

    fn set_previous_ring(&mut self, service_id: u32, ring: &lb_common::PreviousRing) -> Result<()> {
        self.log.push(format!("previous_ring {service_id} {}+{}", ring.ring_start, ring.ring_size));
        match ring.ring_size {
            0 => self.previous_rings.remove(&service_id),
            _ => self.previous_rings.insert(service_id, *ring),
        };
        Ok(())
    }

    fn set_uplink(&mut self, ifindex: u32, groups: u32) -> Result<()> {
        self.uplinks.insert(ifindex, groups);
        Ok(())
    }

    fn remove_uplink(&mut self, ifindex: u32) -> Result<()> {
        self.uplinks.remove(&ifindex);
        Ok(())
    }

    fn flows(&self, limit: usize) -> Result<Vec<(FlowKey, FlowInfo)>> {
        Ok(self.flows.iter().take(limit).copied().collect())
    }

    fn flow_table_fill(&self) -> Result<Vec<(&'static str, u32, u32)>> {
        Ok(vec![(lb_common::names::MAP_FLOWS4, self.flows.len() as u32, 4096)])
    }

    fn expire_nat_mappings(&mut self, expired: &mut dyn FnMut(&FlowKey, &NatReply) -> bool) -> Result<usize> {
        let (gone, kept): (Vec<_>, Vec<_>) = self.nat_replies.drain(..).partition(|(k, v)| expired(k, v));
        self.nat_replies = kept;
        for (key, reply) in &gone {
            let client = lb_common::nat_state::client_flow(key, reply);
            self.flows.retain(|(k, f)| !(k == &client && lb_common::nat_state::flow_uses(f, key)));
        }
        Ok(gone.len())
    }

    fn flow(&self, key: &FlowKey) -> Result<Option<FlowInfo>> {
        Ok(self.flows.iter().find(|(k, _)| k == key).map(|(_, info)| *info))
    }

    fn forget_flows(&mut self, forget: &mut dyn FnMut(&FlowKey, &FlowInfo) -> bool) -> Result<usize> {
        let before = self.flows.len();
        self.flows.retain(|(k, f)| !forget(k, f));
        Ok(before - self.flows.len())
    }
}
