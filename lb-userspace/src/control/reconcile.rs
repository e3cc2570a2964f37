//! Desired services → the maps, writing only what changed, in an order where no packet sees a
//! half-updated service:
//! 1. backend entries that will take flows are written (new ones, or draining → active);
//! 2. a new ring (sized from the backends, `maglev::ring_size_for`) is written into a free ring
//!    of the pool, then the service entry is pointed at it (one map update: the atomic swap);
//! 3. only then are entries demoted (active → draining) or freed (removed backends).
//!
//! Rings and backend ids freed in one pass are not reused in that pass nor the next one, so a
//! packet that read the old service entry just before a swap never indexes a ring or backend
//! that has already been rewritten for someone else.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{
    maglev::{self, RingMember},
    BackendInfo, NodeAddrKey, ServiceInfo, ServiceKey, BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_UNUSED,
};
use tracing::{error, info};

use crate::{
    control::{exposure::Exposure, previous_rings::{self, PreviousRings}, source_ranges::SourceTable},
    dataplane::{limits::Limit, Bitmap, Dataplane, DataplaneError, MapSizes},
    desired::{ip_bytes, Backend, Desired, Service, ServiceId},
    control::ring_alloc::{Ring, RingAllocator},
};

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Services that could not be programmed (limits reached), with why; all others were.
    pub failed: Vec<String>,
}

/// Reconciler state that outlives a pass: what was freed by the previous one, and what the
/// maps hold.
#[derive(Debug, Default)]
pub struct Reconciler {
    quarantined_rings: BTreeSet<Ring>,
    quarantined_backends: BTreeSet<u32>,
    /// None until a pass has read the maps, and again after a pass that failed.
    mirror: Option<Mirror>,
    /// Services the last pass could not program (limits reached): retried by every pass.
    unfit: BTreeSet<ServiceId>,
    /// Where services are served: their groups' words.
    exposure: Exposure,
    /// How long a replaced ring stays the service's previous ring (`--second-chance-secs`).
    second_chance: KeepSecs,
}

/// Seconds a previous ring is kept (control::previous_rings), its default when not configured.
#[derive(Debug, Clone, Copy)]
struct KeepSecs(u64);

impl Default for KeepSecs {
    fn default() -> Self {
        Self(previous_rings::DEFAULT_SECS)
    }
}

/// The maps as the last successful pass left them. The agent is the only writer (one agent per
/// pin directory), so the next pass starts from this instead of reading every map, and skips
/// the services whose desired state is what it programmed: a pass costs map I/O in proportion
/// to the change, not to the cluster.
#[derive(Debug)]
struct Mirror {
    services: BTreeMap<ServiceKey, ServiceInfo>,
    /// The allocator as the pass ended (free lists, backends, membership): rebuilding it from
    /// the maps would cost a pass time in proportion to the limits.
    alloc: Allocator,
    /// The fingerprint of the desired state each programmed service was last brought to.
    programmed: BTreeMap<ServiceKey, u64>,
}

/// Free ids and rings during one pass, and which backend entries belong to which service.
/// Free lists and the membership index keep a pass linear in the number of services and
/// backends (a full sync of a large cluster is one pass). Kept between passes in the mirror, so
/// the membership index is maintained by every write that changes it.
#[derive(Debug)]
struct Allocator {
    limits: MapSizes,
    free_services: BTreeSet<u32>,
    rings: RingAllocator,
    free_backends: BTreeSet<u32>,
    backends: Vec<BackendInfo>,
    /// Service id → its backend entries (ids), as the pass started.
    members: HashMap<u32, Vec<u32>>,
    freed_rings: BTreeSet<Ring>,
    freed_backends: BTreeSet<u32>,
    /// Every service's source ranges, and room for more.
    sources: SourceTable,
    /// Every service's previous ring, while it is kept.
    previous: PreviousRings,
}

impl Allocator {
    fn service_id(&mut self) -> Result<u32, DataplaneError> {
        self.free_services.pop_first().ok_or(DataplaneError::Full {
            what: "service slots",
            limit: self.limits.max_services,
            flag: Limit::Services.flag(),
        })
    }

    fn release_service_id(&mut self, id: u32) {
        self.free_services.insert(id);
    }

    /// A free ring of `size` slots; None for size 0 (a service with no active backend has no
    /// ring). A pool with no room left gives up the previous rings first.
    fn ring(&mut self, size: u32, dp: &mut dyn Dataplane) -> Result<Option<Ring>, DataplaneError> {
        if size == 0 {
            return Ok(None);
        }
        if let Some(ring) = self.rings.allocate(size) {
            return Ok(Some(ring));
        }
        for ring in self.previous.release_all(dp)? {
            self.rings.free(ring);
        }
        let ring = self.rings.allocate(size).ok_or(DataplaneError::Full {
            what: "ring slots",
            limit: self.limits.ring_slots,
            flag: Limit::RingSlots.flag(),
        })?;
        Ok(Some(ring))
    }

    /// A ring no longer live: reusable from the pass after next (see the module comment).
    fn free_ring(&mut self, info: &ServiceInfo) {
        if let Some(ring) = ring_of(info) {
            self.freed_rings.insert(ring);
        }
    }

    fn backend_ids(&mut self, count: usize) -> Result<Vec<u32>, DataplaneError> {
        if self.free_backends.len() < count {
            return Err(DataplaneError::Full {
                what: "backend slots",
                limit: self.limits.max_backends.saturating_sub(1),
                flag: Limit::Backends.flag(),
            });
        }
        Ok((0..count).filter_map(|_| self.free_backends.pop_first()).collect())
    }

    /// The backend entries of service `sid` that are in use.
    fn members_of(&self, sid: u32) -> Vec<(u32, BackendInfo)> {
        self.members
            .get(&sid)
            .into_iter()
            .flatten()
            .map(|&id| (id, self.backends[id as usize]))
            .filter(|(_, b)| b.state != BACKEND_UNUSED && b.service_id == sid)
            .collect()
    }
}

impl Reconciler {
    /// A reconciler that serves services where `exposure` says.
    pub fn new(exposure: Exposure) -> Self {
        Self { exposure, ..Self::default() }
    }

    /// Keeps each service's replaced ring as its previous ring for `secs` (0: none).
    pub fn with_second_chance(mut self, secs: u64) -> Self {
        self.second_chance = KeepSecs(secs);
        self
    }

    /// Frees the previous rings whose time is up at `now_ns` (the programs' clock); returns how
    /// many. Nothing without a mirror: the next pass adopts only the rings still kept.
    pub fn expire_previous_rings(&mut self, now_ns: u64, dp: &mut dyn Dataplane) -> Result<usize, DataplaneError> {
        let Some(mirror) = self.mirror.as_mut() else { return Ok(0) };
        let alloc = &mut mirror.alloc;
        alloc.previous.expire(now_ns, dp, &mut alloc.freed_rings)
    }

    /// The allocator for maps holding `current` and `backends` (read from the kernel); what the
    /// previous pass freed stays out of the free lists.
    fn allocator_from_maps(
        &self,
        limits: MapSizes,
        current: &BTreeMap<ServiceKey, ServiceInfo>,
        backends: Vec<BackendInfo>,
        sources: SourceTable,
        dp: &mut dyn Dataplane,
    ) -> Result<Allocator, DataplaneError> {
        let used_services: BTreeSet<u32> = current.values().map(|i| i.service_id).collect();
        let previous = PreviousRings::adopt(self.second_chance.0, &used_services, limits.max_services, dp)?;
        let used_rings = current.values().filter_map(ring_of).chain(self.quarantined_rings.iter().copied()).chain(previous.rings());
        let rings = RingAllocator::new(limits.ring_slots, used_rings)
            .map_err(|err| DataplaneError::Layout { name: lb_common::names::MAP_SERVICES, detail: err.to_string() })?;
        let mut members: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut free_backends = BTreeSet::new();
        for (id, b) in backends.iter().enumerate().skip(1) {
            let id = id as u32;
            if b.state != BACKEND_UNUSED {
                members.entry(b.service_id).or_default().push(id);
            } else if !self.quarantined_backends.contains(&id) {
                free_backends.insert(id);
            }
        }
        Ok(Allocator {
            limits,
            free_services: (0..limits.max_services).filter(|id| !used_services.contains(id)).collect(),
            rings,
            free_backends,
            backends,
            members,
            freed_rings: BTreeSet::new(),
            freed_backends: BTreeSet::new(),
            sources,
            previous,
        })
    }

    /// Services the last pass could not program (a limit reached).
    pub fn unfit(&self) -> &BTreeSet<ServiceId> {
        &self.unfit
    }

    /// Ring slots the allocator has handed out (live rings and those waiting to be reused).
    pub fn ring_slots_in_use(&self) -> u64 {
        self.mirror.as_ref().map_or(0, |m| m.alloc.rings.used_slots())
    }

    pub fn apply(&mut self, desired: &Desired, dp: &mut dyn Dataplane) -> Result<Report, DataplaneError> {
        self.apply_changes(desired, None, dp)
    }

    /// Makes the maps equal to `desired` when the caller knows that only the services in
    /// `changed` can differ from the previous pass's (None: any may): a pass then costs work in
    /// proportion to the change, not to the cluster. Services that did not fit before are
    /// retried in every pass. Without a mirror of the maps (first pass, or after a failed one)
    /// every service is compared.
    pub fn apply_changes(
        &mut self,
        desired: &Desired,
        changed: Option<&BTreeSet<ServiceId>>,
        dp: &mut dyn Dataplane,
    ) -> Result<Report, DataplaneError> {
        let limits = dp.limits()?;
        // Taken: a pass that fails part-way leaves no mirror, and the next one reads the maps.
        let (mut pass, changed) = match self.mirror.take() {
            Some(mirror) => (Pass { maps: mirror, report: Report::default() }, changed),
            None => {
                let services: BTreeMap<ServiceKey, ServiceInfo> = dp.services()?.into_iter().collect();
                let sources = SourceTable::read(dp, limits.max_services, limits.max_source_ranges)?;
                let backends = dp.backends()?;
                let alloc = self.allocator_from_maps(limits, &services, backends, sources, dp)?;
                (Pass { maps: Mirror { services, alloc, programmed: BTreeMap::new() }, report: Report::default() }, None)
            }
        };
        // Reported when they stop fitting, not again by every pass that retries them.
        let was_unfit = std::mem::take(&mut self.unfit);
        self.write_services(desired, changed, &mut pass, &was_unfit, dp)?;
        let Pass { maps: mut mirror, report } = pass;
        mirror.alloc.sources.forget_refused_flows(&mirror.alloc.backends, dp)?;
        if report.added + report.removed > 0 || mirror.programmed.is_empty() {
            sync_service_ports(mirror.services.keys(), dp)?;
            sync_service_addrs(mirror.services.keys(), dp)?;
        }
        self.rotate_quarantine(&mut mirror.alloc);
        self.mirror = Some(mirror);
        if report.added + report.updated + report.removed > 0 {
            info!(added = report.added, updated = report.updated, removed = report.removed, unchanged = report.unchanged, "services applied");
        }
        Ok(report)
    }

    /// Writes the services `changed` names (and those that did not fit before), or, without
    /// it, every desired service, removing what is no longer desired.
    fn write_services(
        &mut self,
        desired: &Desired,
        changed: Option<&BTreeSet<ServiceId>>,
        pass: &mut Pass,
        was_unfit: &BTreeSet<ServiceId>,
        dp: &mut dyn Dataplane,
    ) -> Result<(), DataplaneError> {
        match changed {
            Some(changed) => {
                let mut ids = was_unfit.clone();
                ids.extend(changed);
                for id in ids {
                    let key = id.key();
                    match desired.get(&id) {
                        Some(service) => self.program(service, pass, was_unfit, dp)?,
                        None => pass.remove(&key, dp)?,
                    }
                }
            }
            None => {
                for service in desired.values() {
                    self.program(service, pass, was_unfit, dp)?;
                }
                let wanted = |key: &ServiceKey| ServiceId::from_key(key).is_some_and(|id| desired.contains_key(&id));
                let unwanted: Vec<ServiceKey> = pass.maps.services.keys().filter(|k| !wanted(k)).copied().collect();
                for key in &unwanted {
                    pass.remove(key, dp)?;
                }
            }
        }
        Ok(())
    }

    /// What the previous pass freed is reusable from the next pass on; what this one freed
    /// waits one more pass.
    fn rotate_quarantine(&mut self, alloc: &mut Allocator) {
        for ring in std::mem::take(&mut self.quarantined_rings) {
            alloc.rings.free(ring);
        }
        // (extend, not append: append rebuilds the whole tree.)
        alloc.free_backends.extend(std::mem::take(&mut self.quarantined_backends));
        self.quarantined_rings = std::mem::take(&mut alloc.freed_rings);
        self.quarantined_backends = std::mem::take(&mut alloc.freed_backends);
    }

    /// Brings one desired service into the maps (unless they hold it as desired already); one
    /// that does not fit is reported, remembered for the next pass, and leaves no trace.
    fn program(&mut self, service: &Service, pass: &mut Pass, was_unfit: &BTreeSet<ServiceId>, dp: &mut dyn Dataplane) -> Result<(), DataplaneError> {
        let key = service.id.key();
        let groups = self.exposure.service_word(&service.groups);
        let maps = &mut pass.maps;
        let outcome = match maps.services.get(&key) {
            Some(_) if maps.programmed.get(&key) == Some(&fingerprint(service)) => {
                pass.report.unchanged += 1;
                return Ok(());
            }
            None => add(service, &key, groups, dp, &mut maps.alloc).inspect(|_| pass.report.added += 1),
            Some(info) => update(service, &key, info, groups, dp, &mut maps.alloc).map(|(changed, info)| {
                if changed {
                    pass.report.updated += 1
                } else {
                    pass.report.unchanged += 1
                }
                info
            }),
        };
        match outcome {
            Ok(info) => {
                maps.services.insert(key, info);
                maps.programmed.insert(key, fingerprint(service));
                Ok(())
            }
            Err(err @ DataplaneError::Full { .. }) => {
                if !was_unfit.contains(&service.id) {
                    error!(service = %service.id, name = %service.name, "not programmed: {err}");
                }
                pass.report.failed.push(format!("{} ({}): {err}", service.id, service.name));
                self.unfit.insert(service.id);
                Ok(())
            }
            Err(other) => Err(other),
        }
    }
}

/// One reconciler pass: the maps as it goes, and what it did.
struct Pass {
    maps: Mirror,
    report: Report,
}

impl Pass {
    fn remove(&mut self, key: &ServiceKey, dp: &mut dyn Dataplane) -> Result<(), DataplaneError> {
        if let Some(info) = self.maps.services.remove(key) {
            remove(key, &info, dp, &mut self.maps.alloc)?;
            self.maps.programmed.remove(key);
            self.report.removed += 1;
        }
        Ok(())
    }
}

/// A service's desired state (name and backends) as 64 bits: the mirror keeps this instead of
/// a copy of every service (~250 bytes each, 5 MB at 20,000 services). Two different states
/// share a fingerprint with probability 2^-64.
fn fingerprint(service: &Service) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    service.hash(&mut hasher);
    hasher.finish()
}

fn state_for(weight: u32) -> u8 {
    if weight == 0 { BACKEND_DRAINING } else { BACKEND_ACTIVE }
}

fn backend_info(b: &Backend, service_id: u32, generation: u32) -> BackendInfo {
    let (addr, family) = ip_bytes(b.addr);
    BackendInfo { addr, port: b.port, family, state: state_for(b.weight), generation, service_id, weight: b.weight }
}

/// A service's live ring, if it has one.
fn ring_of(info: &ServiceInfo) -> Option<Ring> {
    (info.ring_size != 0).then_some(Ring { start: info.ring_start, size: info.ring_size })
}

/// The ring for these (id, backend) members, of the size their weights call for (empty when
/// none takes flows); members must be sorted by address and port.
pub fn build_ring(members: &[(u32, Backend)]) -> Vec<u32> {
    let ring_size = maglev::ring_size_for(members.iter().map(|(_, b)| b.weight));
    if ring_size == 0 {
        return Vec::new();
    }
    let ring_members: Vec<RingMember> = members
        .iter()
        .map(|(id, b)| {
            let (addr, _) = ip_bytes(b.addr);
            let (offset, skip) = maglev::preference(&addr, b.port, ring_size);
            RingMember { id: *id, weight: b.weight, offset, skip }
        })
        .collect();
    let mut ring = vec![0; ring_size as usize];
    let mut next = vec![0; ring_members.len()];
    maglev::populate(&ring_members, &mut ring, &mut next);
    ring
}

/// Writes `ring` into `slot` (none for an empty ring) and returns the service entry that
/// points at it.
fn place_ring(service_id: u32, slot: Option<Ring>, ring: &[u32], active_backends: u32, dp: &mut dyn Dataplane) -> Result<ServiceInfo, DataplaneError> {
    let Some(slot) = slot else {
        return Ok(ServiceInfo { service_id, ring_start: 0, ring_size: 0, active_backends });
    };
    dp.write_ring(slot.start, ring)?;
    Ok(ServiceInfo { service_id, ring_start: slot.start, ring_size: slot.size, active_backends })
}

fn active_count(members: &[(u32, Backend)]) -> u32 {
    members.iter().filter(|(_, b)| b.weight > 0).count() as u32
}

/// Returns the service's entry as written. Its group word (`groups`) and source ranges are
/// written before the entry: a slot's word may be another service's, or none (which means every
/// group).
fn add(service: &Service, key: &ServiceKey, groups: u32, dp: &mut dyn Dataplane, alloc: &mut Allocator) -> Result<ServiceInfo, DataplaneError> {
    // Allocate everything first: a service that does not fit leaves no trace.
    let service_id = alloc.service_id()?;
    if let Err(err) = alloc.sources.check_room(service_id, &service.sources) {
        alloc.release_service_id(service_id);
        return Err(err);
    }
    let ids = match alloc.backend_ids(service.backends.len()) {
        Ok(ids) => ids,
        Err(err) => {
            alloc.release_service_id(service_id);
            return Err(err);
        }
    };
    let members: Vec<(u32, Backend)> = ids.iter().copied().zip(service.backends.iter().copied()).collect();
    let ring = build_ring(&members);
    let slot = match alloc.ring(ring.len() as u32, dp) {
        Ok(slot) => slot,
        Err(err) => {
            alloc.release_service_id(service_id);
            alloc.free_backends.extend(ids);
            return Err(err);
        }
    };
    dp.set_service_name(service_id, &service.name)?;
    dp.set_service_groups(service_id, groups)?;
    alloc.sources.write(service_id, &service.sources, dp)?;
    for (id, backend) in &members {
        let generation = alloc.backends[*id as usize].generation.wrapping_add(1);
        let info = backend_info(backend, service_id, generation);
        dp.set_backend(*id, &info)?;
        alloc.backends[*id as usize] = info;
    }
    alloc.members.insert(service_id, ids);
    let info = place_ring(service_id, slot, &ring, active_count(&members), dp)?;
    dp.set_service(key, &info)?;
    Ok(info)
}

/// Returns whether anything changed, and the service's entry as it is now. The write order
/// never lets a packet see a half-updated service: entries that take flows first, then the new
/// ring, then demotions and frees.
fn update(
    service: &Service,
    key: &ServiceKey,
    info: &ServiceInfo,
    groups: u32,
    dp: &mut dyn Dataplane,
    alloc: &mut Allocator,
) -> Result<(bool, ServiceInfo), DataplaneError> {
    let sid = info.service_id;
    let mut changed = false;
    if dp.service_name(sid)? != service.name {
        dp.set_service_name(sid, &service.name)?;
        changed = true;
    }
    if dp.service_groups(sid)? != groups {
        dp.set_service_groups(sid, groups)?;
        changed = true;
    }
    changed |= alloc.sources.write(sid, &service.sources, dp)?;
    let current: BTreeMap<(IpAddr, u16), (u32, BackendInfo)> = alloc
        .members_of(sid)
        .into_iter()
        .filter_map(|(id, b)| Some(((crate::desired::bytes_ip(&b.addr, b.family)?, b.port), (id, b))))
        .collect();
    let admitted = admit_backends(service, sid, &current, dp, alloc)?;
    let (swapped, info) = swap_ring(&admitted.members, key, info, dp, alloc)?;
    let freed = demote_and_free(service, admitted.demotions, &current, dp, alloc)?;
    Ok((changed || admitted.changed || swapped || freed, info))
}

/// What step 1 of [`update`] wrote, and what it left for step 3.
struct Admitted {
    members: Vec<(u32, Backend)>,
    /// Backends going from active to draining: demoted once the new ring is live.
    demotions: Vec<(u32, BackendInfo)>,
    changed: bool,
}

/// Step 1: entries that take flows: new backends, and existing ones whose weight or state
/// changes towards active. Demotions wait until the new ring is live.
fn admit_backends(
    service: &Service,
    sid: u32,
    current: &BTreeMap<(IpAddr, u16), (u32, BackendInfo)>,
    dp: &mut dyn Dataplane,
    alloc: &mut Allocator,
) -> Result<Admitted, DataplaneError> {
    let new_backends = service.backends.iter().filter(|b| !current.contains_key(&(b.addr, b.port))).count();
    let mut new_ids = alloc.backend_ids(new_backends)?.into_iter();
    let mut out = Admitted { members: Vec::with_capacity(service.backends.len()), demotions: Vec::new(), changed: false };
    for backend in &service.backends {
        let id = match current.get(&(backend.addr, backend.port)) {
            Some((id, old)) => {
                let wanted = BackendInfo { weight: backend.weight, state: state_for(backend.weight), ..*old };
                if wanted != *old {
                    if wanted.state == BACKEND_DRAINING && old.state == BACKEND_ACTIVE {
                        out.demotions.push((*id, wanted));
                    } else {
                        dp.set_backend(*id, &wanted)?;
                        alloc.backends[*id as usize] = wanted;
                    }
                    out.changed = true;
                }
                *id
            }
            None => {
                let id = new_ids.next().expect("allocated one id per new backend");
                let generation = alloc.backends[id as usize].generation.wrapping_add(1);
                let entry = backend_info(backend, sid, generation);
                dp.set_backend(id, &entry)?;
                alloc.backends[id as usize] = entry;
                alloc.members.entry(sid).or_default().push(id);
                out.changed = true;
                id
            }
        };
        out.members.push((id, *backend));
    }
    Ok(out)
}

/// Step 2: swaps in the new ring if it differs from the live one.
fn swap_ring(
    members: &[(u32, Backend)],
    key: &ServiceKey,
    info: &ServiceInfo,
    dp: &mut dyn Dataplane,
    alloc: &mut Allocator,
) -> Result<(bool, ServiceInfo), DataplaneError> {
    let ring = build_ring(members);
    let active = active_count(members);
    let live = match ring_of(info) {
        Some(live) => dp.read_ring(live.start, live.size)?,
        None => Vec::new(),
    };
    if ring == live && active == info.active_backends {
        return Ok((false, *info));
    }
    let slot = alloc.ring(ring.len() as u32, dp)?;
    let swapped = place_ring(info.service_id, slot, &ring, active, dp)?;
    dp.set_service(key, &swapped)?;
    // Named as the previous ring only now, once no packet can read it as the live one.
    alloc.previous.hold(info.service_id, ring_of(info), dp, &mut alloc.freed_rings)?;
    Ok((true, swapped))
}

/// Step 3: demotes, and frees the backends the service no longer has.
fn demote_and_free(
    service: &Service,
    demotions: Vec<(u32, BackendInfo)>,
    current: &BTreeMap<(IpAddr, u16), (u32, BackendInfo)>,
    dp: &mut dyn Dataplane,
    alloc: &mut Allocator,
) -> Result<bool, DataplaneError> {
    for (id, entry) in demotions {
        dp.set_backend(id, &entry)?;
        alloc.backends[id as usize] = entry;
    }
    let wanted: BTreeSet<(IpAddr, u16)> = service.backends.iter().map(|b| (b.addr, b.port)).collect();
    let mut freed = false;
    for (addr_port, (id, old)) in current {
        if !wanted.contains(addr_port) {
            free_backend(*id, old, dp, alloc)?;
            freed = true;
        }
    }
    Ok(freed)
}

fn free_backend(id: u32, old: &BackendInfo, dp: &mut dyn Dataplane, alloc: &mut Allocator) -> Result<(), DataplaneError> {
    // The generation stays: the next owner of this id bumps it, which is what unpins old flows.
    let entry = BackendInfo { state: BACKEND_UNUSED, ..*old };
    dp.set_backend(id, &entry)?;
    if let Some(ids) = alloc.members.get_mut(&old.service_id) {
        ids.retain(|&member| member != id);
    }
    // Counters are zeroed when an id is freed, so a new owner starts from zero without a
    // write per allocation (a full sync of a large cluster allocates tens of thousands).
    dp.reset_backend_stats(id)?;
    alloc.backends[id as usize] = entry;
    // Not back on the free list this pass: reusable from the pass after next.
    alloc.freed_backends.insert(id);
    Ok(())
}

fn remove(key: &ServiceKey, info: &ServiceInfo, dp: &mut dyn Dataplane, alloc: &mut Allocator) -> Result<(), DataplaneError> {
    dp.remove_service(key)?;
    alloc.sources.write(info.service_id, &Default::default(), dp)?;
    let owned = alloc.members_of(info.service_id);
    for (id, old) in owned {
        free_backend(id, &old, dp, alloc)?;
    }
    dp.set_service_name(info.service_id, "")?;
    dp.reset_service_stats(info.service_id)?;
    alloc.members.remove(&info.service_id);
    alloc.previous.release(info.service_id, dp, &mut alloc.freed_rings)?;
    alloc.free_ring(info);
    alloc.release_service_id(info.service_id);
    Ok(())
}

/// Makes the SERVICE_PORTS bitmap match the programmed services. It runs after the services
/// are written, so a new service becomes reachable once complete and a removed one stops
/// matching after its entry is gone.
fn sync_service_ports<'a>(services: impl Iterator<Item = &'a ServiceKey>, dp: &mut dyn Dataplane) -> Result<(), DataplaneError> {
    let mut wanted = vec![0u64; Bitmap::ServicePorts.words()];
    for key in services {
        let (word, bit) = lb_common::service_port_bit(key.port, key.proto);
        wanted[word as usize] |= bit;
    }
    write_bitmap(Bitmap::ServicePorts, &wanted, dp)
}

/// Makes the SERVICE_ADDRS filter hold exactly the programmed VIPs and this node's addresses
/// (where service ports are served), marked complete. Like the ports, after the services are
/// written.
fn sync_service_addrs<'a>(services: impl Iterator<Item = &'a ServiceKey>, dp: &mut dyn Dataplane) -> Result<(), DataplaneError> {
    let mut wanted = vec![lb_common::SERVICE_ADDRS_COMPLETE; Bitmap::ServiceAddrs.words()];
    let vips = services.filter(|k| k.addr != [0; 16]).map(|k| (k.addr, k.family));
    for (addr, family) in vips.chain(dp.node_addrs()?.into_iter().map(|(n, _)| (n.addr, n.family))) {
        let (word, bit) = lb_common::service_addr_bit(&addr, family);
        wanted[word as usize] |= bit;
    }
    write_bitmap(Bitmap::ServiceAddrs, &wanted, dp)
}

/// Writes the words of `bitmap` that differ from `wanted`.
fn write_bitmap(bitmap: Bitmap, wanted: &[u64], dp: &mut dyn Dataplane) -> Result<(), DataplaneError> {
    let current = dp.bitmap_words(bitmap)?;
    for (index, (want, have)) in wanted.iter().zip(current.iter()).enumerate() {
        if want != have {
            dp.set_bitmap_word(bitmap, index as u32, *want)?;
        }
    }
    Ok(())
}

/// Makes NODE_ADDRS equal to `addrs` (where service ports are served), each with its group word.
pub fn sync_node_addrs(addrs: &[(IpAddr, u32)], dp: &mut dyn Dataplane) -> Result<(), DataplaneError> {
    let wanted: BTreeMap<NodeAddrKey, u32> = addrs
        .iter()
        .map(|(ip, groups)| {
            let (addr, family) = ip_bytes(*ip);
            (NodeAddrKey { addr, family, _pad: 0, _pad2: 0 }, *groups)
        })
        .collect();
    let current = dp.node_addrs()?;
    let added = sync_words(&wanted, current, dp, |dp, addr, groups| dp.set_node_addr(addr, groups), |dp, addr| dp.remove_node_addr(addr))?;
    // A new address passes the filter at once; a removed one's bit stays until the filter is
    // next rewritten whole (a stale bit only sends packets down the full path).
    if !added.is_empty() {
        let mut words = dp.bitmap_words(Bitmap::ServiceAddrs)?;
        for addr in added {
            let (word, bit) = lb_common::service_addr_bit(&addr.addr, addr.family);
            if words[word as usize] & bit == 0 {
                words[word as usize] |= bit;
                dp.set_bitmap_word(Bitmap::ServiceAddrs, word, words[word as usize])?;
            }
        }
    }
    Ok(())
}

/// Makes UPLINKS equal to `uplinks` (ifindex, group word): routes out of these mean "another
/// node" (full NAT), and VIPs arriving on one are served for the groups of its word.
pub fn sync_uplinks(uplinks: &[(u32, u32)], dp: &mut dyn Dataplane) -> Result<(), DataplaneError> {
    let wanted: BTreeMap<u32, u32> = uplinks.iter().copied().collect();
    let current = dp.uplinks()?;
    sync_words(&wanted, current, dp, |dp, ifindex, groups| dp.set_uplink(*ifindex, groups), |dp, ifindex| dp.remove_uplink(*ifindex))?;
    Ok(())
}

type SetWord<K> = fn(&mut dyn Dataplane, &K, u32) -> Result<(), DataplaneError>;
type RemoveKey<K> = fn(&mut dyn Dataplane, &K) -> Result<(), DataplaneError>;

/// Makes a map of keys to group words (`current` as read) equal to `wanted`: writes the words
/// that differ, removes the keys not wanted. Returns the keys that were not there before.
fn sync_words<K: Ord + Copy>(
    wanted: &BTreeMap<K, u32>,
    current: Vec<(K, u32)>,
    dp: &mut dyn Dataplane,
    set: SetWord<K>,
    remove: RemoveKey<K>,
) -> Result<Vec<K>, DataplaneError> {
    let current: BTreeMap<K, u32> = current.into_iter().collect();
    let mut added = Vec::new();
    for (key, groups) in wanted {
        match current.get(key) {
            Some(have) if have == groups => {}
            have => {
                set(dp, key, *groups)?;
                if have.is_none() {
                    added.push(*key);
                }
            }
        }
    }
    for key in current.keys().filter(|k| !wanted.contains_key(k)) {
        remove(dp, key)?;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dataplane::fake::FakeDataplane, sources::services_file};

    /// Two chunks: enough for these tests, and a ring of each of two sizes fills it.
    const RING: u32 = 2 * lb_common::ring_pool::CHUNK_SLOTS;

    fn desired(json: &str) -> Desired {
        services_file::parse(json, "test.json").unwrap()
    }

    fn web(backends: &[(&str, u16, u32)]) -> Desired {
        let list: Vec<String> = backends
            .iter()
            .map(|(a, p, w)| format!(r#"{{"address":"{a}","port":{p},"weight":{w}}}"#))
            .collect();
        desired(&format!(r#"{{"services":[{{"name":"web","address":"10.0.0.1","port":80,"backends":[{}]}}]}}"#, list.join(",")))
    }

    fn live_ring(dp: &FakeDataplane) -> Vec<u32> {
        dp.ring(dp.services.values().next().unwrap()).to_vec()
    }

    fn id_of(dp: &FakeDataplane, port: u16) -> u32 {
        dp.backends.iter().position(|b| b.port == port && b.state != BACKEND_UNUSED).unwrap() as u32
    }

    #[test]
    fn a_pass_touches_only_the_services_that_changed() {
        let many = |changed_port: u16| {
            let services: Vec<String> = (0..20u16)
                .map(|i| {
                    let port = if i == 7 { changed_port } else { 31000 };
                    format!(r#"{{"name":"s{i}","address":"10.0.0.{i}","port":80,"backends":[{{"address":"10.1.0.{i}","port":{port}}}]}}"#)
                })
                .collect();
            desired(&format!(r#"{{"services":[{}]}}"#, services.join(",")))
        };
        let mut dp = FakeDataplane::new(32, 64, RING);
        let mut reconciler = Reconciler::default();
        reconciler.apply(&many(31000), &mut dp).unwrap();
        let writes = dp.log.len();
        let report = reconciler.apply(&many(31000), &mut dp).unwrap();
        assert_eq!((report.unchanged, dp.log.len()), (20, writes), "an unchanged pass writes nothing");
        let report = reconciler.apply(&many(32000), &mut dp).unwrap();
        assert_eq!((report.updated, report.unchanged), (1, 19));
        assert!(dp.log[writes..].iter().all(|w| !w.contains("service ") || w.contains(&format!("service {}", dp.services.values().find(|i| dp.names[&i.service_id] == "s7").unwrap().service_id))), "{:?}", &dp.log[writes..]);
        // A new reconciler (a restarted agent) reads the maps and finds nothing to do.
        let report = Reconciler::default().apply(&many(32000), &mut dp).unwrap();
        assert_eq!((report.updated, report.unchanged), (0, 20));
    }

    #[test]
    fn adds_a_service_groups_and_backends_first_then_ring_then_service() {
        let mut dp = FakeDataplane::new(8, 32, RING);
        let report = Reconciler::default().apply(&web(&[("10.1.0.1", 31001, 1), ("10.1.0.2", 31002, 1)]), &mut dp).unwrap();
        assert_eq!(report.added, 1);
        let order: Vec<&str> = dp.log.iter().map(|l| l.split(' ').next().unwrap()).collect();
        // The group word before the entry (a slot's old word could be another service's); the
        // filter's first write marks every word complete, with the VIP's bit.
        assert_eq!(order[..6], ["groups", "backend", "backend", "ring", "service", "ports"]);
        assert!(order[6..].iter().all(|w| *w == "addrs") && order.len() > 6, "{order:?}");
        let (word, bit) = lb_common::service_port_bit(80, lb_common::PROTO_TCP);
        assert_eq!(dp.service_ports[word as usize], bit, "port 80/tcp marked after the service is complete");
        let (word, bit) = lb_common::service_addr_bit(&lb_common::v4_bytes([10, 0, 0, 1]), lb_common::FAMILY_V4);
        assert_ne!(dp.service_addrs[word as usize] & bit, 0, "the VIP passes the address filter");
        assert!(dp.service_addrs.iter().all(|w| w & lb_common::SERVICE_ADDRS_COMPLETE != 0), "and the filter is complete");
        let ring = live_ring(&dp);
        assert!(ring.iter().all(|&id| id == id_of(&dp, 31001) || id == id_of(&dp, 31002)));
        assert_eq!(dp.names[&0], "web");
    }

    #[test]
    fn an_unchanged_desired_state_writes_nothing() {
        let mut dp = FakeDataplane::new(8, 32, RING);
        let mut r = Reconciler::default();
        let d = web(&[("10.1.0.1", 31001, 1)]);
        r.apply(&d, &mut dp).unwrap();
        dp.log.clear();
        let report = r.apply(&d, &mut dp).unwrap();
        assert_eq!(report, Report { unchanged: 1, ..Report::default() });
        assert!(dp.log.is_empty(), "{:?}", dp.log);
    }

    #[test]
    fn draining_swaps_the_ring_before_demoting_the_backend() {
        let mut dp = FakeDataplane::new(8, 32, RING);
        let mut r = Reconciler::default();
        r.apply(&web(&[("10.1.0.1", 31001, 1), ("10.1.0.2", 31002, 1)]), &mut dp).unwrap();
        let drained = id_of(&dp, 31002);
        dp.log.clear();
        r.apply(&web(&[("10.1.0.1", 31001, 1), ("10.1.0.2", 31002, 0)]), &mut dp).unwrap();
        assert_eq!(dp.log[0].split(' ').next().unwrap(), "ring");
        assert!(dp.log[1].starts_with("service"));
        // The replaced ring is named as the previous one (the second chance) once it is no
        // longer live, and still holds the drained backend.
        assert!(dp.log[2].starts_with("previous_ring"), "{:?}", dp.log);
        assert_eq!(dp.log[3], format!("backend {drained} state {BACKEND_DRAINING}"));
        assert!(!live_ring(&dp).contains(&drained));
        let info = *dp.services.values().next().unwrap();
        assert_eq!(info.active_backends, 1);
        let previous = dp.previous_rings[&info.service_id];
        assert!(dp.pool[previous.ring_start as usize..][..previous.ring_size as usize].contains(&drained));
        // Another change frees it (the new previous ring replaces it); removal clears the entry.
        r.apply(&web(&[("10.1.0.1", 31001, 1), ("10.1.0.3", 31003, 1)]), &mut dp).unwrap();
        assert_eq!(dp.previous_rings[&info.service_id].ring_start, info.ring_start, "the ring live before the change");
        r.apply(&Desired::default(), &mut dp).unwrap();
        assert!(dp.previous_rings.is_empty(), "{:?}", dp.previous_rings);
    }

    #[test]
    fn removal_frees_after_the_swap_and_quarantines_ids_and_rings_for_one_pass() {
        let mut dp = FakeDataplane::new(8, 4, RING);
        let mut r = Reconciler::default();
        r.apply(&web(&[("10.1.0.1", 31001, 1), ("10.1.0.2", 31002, 1), ("10.1.0.3", 31003, 1)]), &mut dp).unwrap();
        let gone = id_of(&dp, 31003);
        let old_ring = dp.services.values().next().unwrap().ring_start;
        r.apply(&web(&[("10.1.0.1", 31001, 1), ("10.1.0.2", 31002, 1)]), &mut dp).unwrap();
        assert_eq!(dp.backends[gone as usize].state, BACKEND_UNUSED);
        assert_ne!(dp.services.values().next().unwrap().ring_start, old_ring, "a new ring was swapped in");
        // Only 3 usable ids (1..=3) and the freed one is quarantined for one more pass: a new
        // backend does not fit yet, is reported, and the service keeps its two backends.
        let three = web(&[("10.1.0.1", 31001, 1), ("10.1.0.2", 31002, 1), ("10.1.0.4", 31004, 1)]);
        let report = r.apply(&three, &mut dp).unwrap();
        assert_eq!(report.failed.len(), 1, "{report:?}");
        let report = r.apply(&three, &mut dp).unwrap();
        assert_eq!(report.failed.len(), 0, "{report:?}");
        let reused = id_of(&dp, 31004);
        assert_eq!(reused, gone);
        assert_eq!(dp.backends[reused as usize].generation, 2, "re-use bumps the generation");
    }

    #[test]
    fn group_words_follow_the_groups_and_reach_services_an_earlier_agent_left() {
        use lb_common::exposure::{EVERY_GROUP, OTHER_GROUPS, WRITTEN};
        let mut dp = FakeDataplane::new(8, 32, RING);
        let mut d = web(&[("10.1.0.1", 31001, 1)]);
        Reconciler::default().apply(&d, &mut dp).unwrap();
        let sid = dp.services.values().next().unwrap().service_id;
        assert_eq!(dp.service_groups[&sid], EVERY_GROUP, "without --expose: every group");
        // An agent started with --expose finds the service as programmed: only its word changes.
        let exposure = Exposure::new(vec!["internal=eth1".parse().unwrap()], "internal").unwrap();
        let mut reconciler = Reconciler::new(exposure);
        let before = dp.log.len();
        assert_eq!(reconciler.apply(&d, &mut dp).unwrap().updated, 1);
        assert_eq!(dp.service_groups[&sid], WRITTEN | 1, "no group: --default-group internal");
        assert_eq!(dp.log[before..], [format!("groups {sid} {:#x}", WRITTEN | 1)]);
        // The app moves to a group no --expose names: served nowhere from the network.
        d.values_mut().next().unwrap().groups = ["external".to_owned()].into();
        assert_eq!(reconciler.apply(&d, &mut dp).unwrap().updated, 1);
        assert_eq!(dp.service_groups[&sid], WRITTEN | OTHER_GROUPS);
    }

    #[test]
    fn a_service_that_does_not_fit_is_reported_and_the_others_apply() {
        let mut dp = FakeDataplane::new(8, 3, RING);
        let d = desired(
            r#"{"services":[
              {"name":"big","address":"10.0.0.1","port":80,"backends":[{"address":"10.1.0.1","port":1},{"address":"10.1.0.2","port":1},{"address":"10.1.0.3","port":1}]},
              {"name":"small","address":"10.0.0.2","port":80,"backends":[{"address":"10.1.0.9","port":1}]}]}"#,
        );
        let report = Reconciler::default().apply(&d, &mut dp).unwrap();
        assert_eq!(report.added, 1);
        assert_eq!(report.failed.len(), 1);
        assert!(report.failed[0].contains("big") && report.failed[0].contains("--max-backends"), "{report:?}");
        assert_eq!(dp.services.len(), 1);
    }

    #[test]
    fn rings_are_sized_from_the_active_backends() {
        let mut dp = FakeDataplane::new(8, 32, RING);
        let mut r = Reconciler::default();
        let three = [("10.1.0.1", 31001, 1), ("10.1.0.2", 31002, 1), ("10.1.0.3", 31003, 1)];
        r.apply(&web(&three), &mut dp).unwrap();
        let info = *dp.services.values().next().unwrap();
        assert_eq!(info.ring_size, 359);
        // A fourth backend needs a larger size: a ring of another chunk, the old one freed.
        let mut four = three.to_vec();
        four.push(("10.1.0.4", 31004, 1));
        r.apply(&web(&four), &mut dp).unwrap();
        let grown = *dp.services.values().next().unwrap();
        assert_eq!(grown.ring_size, 421);
        assert_eq!(grown.ring_start, lb_common::ring_pool::CHUNK_SLOTS, "another size, another chunk");
        assert_eq!(live_ring(&dp).iter().collect::<BTreeSet<_>>().len(), 4);
        // Draining every backend leaves no ring at all: no new flow, established ones stay.
        let drained: Vec<_> = four.iter().map(|&(a, p, _)| (a, p, 0)).collect();
        r.apply(&web(&drained), &mut dp).unwrap();
        let none = *dp.services.values().next().unwrap();
        assert_eq!((none.ring_size, none.active_backends), (0, 0));
        assert!(dp.backends.iter().filter(|b| b.state == BACKEND_DRAINING).count() == 4);
    }

    #[test]
    fn a_full_ring_pool_is_reported_with_its_flag_and_frees_make_room() {
        let mut r = Reconciler::default();
        // 700 backends take the largest ring, one chunk each: two services fill the pool.
        let big = |name: &str, net: u8| {
            let list: Vec<String> =
                (0..700u32).map(|i| format!(r#"{{"address":"10.{net}.{}.{}","port":1}}"#, i / 256, i % 256)).collect();
            format!(r#"{{"name":"{name}","address":"10.0.0.{net}","port":80,"backends":[{}]}}"#, list.join(","))
        };
        let mut dp = FakeDataplane::new(8, 4096, RING);
        let two = desired(&format!(r#"{{"services":[{},{}]}}"#, big("a", 1), big("b", 2)));
        assert!(r.apply(&two, &mut dp).unwrap().failed.is_empty());
        let three = desired(&format!(r#"{{"services":[{},{},{}]}}"#, big("a", 1), big("b", 2), big("c", 3)));
        let report = r.apply(&three, &mut dp).unwrap();
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert!(report.failed[0].contains("(c)") && report.failed[0].contains("--ring-slots"), "{report:?}");
        assert_eq!(dp.backends.iter().filter(|b| b.state != BACKEND_UNUSED).count(), 1400, "c left no backend behind");
        let one_and_c = desired(&format!(r#"{{"services":[{},{}]}}"#, big("a", 1), big("c", 3)));
        // b's ring is reusable from the pass after the one that freed it (see the module
        // comment), then c fits.
        assert_eq!(r.apply(&one_and_c, &mut dp).unwrap().failed.len(), 1);
        assert_eq!(r.apply(&one_and_c, &mut dp).unwrap().failed.len(), 1);
        let report = r.apply(&one_and_c, &mut dp).unwrap();
        assert!(report.failed.is_empty() && dp.services.len() == 2, "{report:?}");
    }

    #[test]
    fn a_pass_given_the_changed_services_compares_only_those_and_retries_the_unfit() {
        let one = |name: &str, addr: &str, weight: u32| {
            format!(r#"{{"name":"{name}","address":"{addr}","port":80,"backends":[{{"address":"10.1.0.1","port":1,"weight":{weight}}}]}}"#)
        };
        let state = |services: &[String]| desired(&format!(r#"{{"services":[{}]}}"#, services.join(",")));
        // Two backend ids: a and b fit, c does not.
        let mut dp = FakeDataplane::new(8, 3, RING);
        let mut r = Reconciler::default();
        let first = state(&[one("a", "10.0.0.1", 1), one("b", "10.0.0.2", 1), one("c", "10.0.0.3", 1)]);
        assert_eq!(r.apply(&first, &mut dp).unwrap().failed.len(), 1);
        // a and b change, but only a is said to: b is not looked at.
        let second = state(&[one("a", "10.0.0.1", 2), one("b", "10.0.0.2", 2), one("c", "10.0.0.3", 1)]);
        let a = ServiceId::from_key(&first.values().next().unwrap().id.key()).unwrap();
        let report = r.apply_changes(&second, Some(&BTreeSet::from([a])), &mut dp).unwrap();
        assert_eq!((report.updated, report.failed.len()), (1, 1), "a updated, c retried: {report:?}");
        let weights: Vec<u32> = dp.backends.iter().filter(|b| b.state != BACKEND_UNUSED).map(|b| b.weight).collect();
        assert_eq!(weights, [2, 1], "b keeps weight 1 until it is named");
        // a goes away (named as changed): its id frees up for c, retried without being named.
        let third = state(&[one("b", "10.0.0.2", 2), one("c", "10.0.0.3", 1)]);
        let report = r.apply_changes(&third, Some(&BTreeSet::from([a])), &mut dp).unwrap();
        assert_eq!(report.removed, 1, "{report:?}");
        r.apply_changes(&third, Some(&BTreeSet::new()), &mut dp).unwrap();
        let report = r.apply_changes(&third, Some(&BTreeSet::new()), &mut dp).unwrap();
        assert_eq!((report.added, report.failed.len()), (1, 0), "c fits once a's id is out of quarantine: {report:?}");
        assert_eq!(dp.services.len(), 2);
    }

    #[test]
    fn services_not_desired_are_removed_service_entry_first() {
        let mut dp = FakeDataplane::new(8, 32, RING);
        let mut r = Reconciler::default();
        r.apply(&web(&[("10.1.0.1", 31001, 1)]), &mut dp).unwrap();
        dp.log.clear();
        let report = r.apply(&Desired::new(), &mut dp).unwrap();
        assert_eq!(report.removed, 1);
        assert!(dp.log[0].starts_with("remove service"));
        let last_service_write = dp.log.iter().rposition(|w| !w.starts_with("ports") && !w.starts_with("addrs")).unwrap();
        assert!(dp.log[last_service_write + 1..].iter().any(|w| w.starts_with("ports")), "the port bit clears last: {:?}", dp.log);
        assert!(dp.service_ports.iter().all(|&w| w == 0));
        assert!(dp.service_addrs.iter().all(|&w| w == lb_common::SERVICE_ADDRS_COMPLETE), "only the complete flags are left");
        assert!(dp.services.is_empty());
        assert!(dp.backends.iter().all(|b| b.state == BACKEND_UNUSED));
    }

    #[test]
    fn uplinks_and_their_group_words_are_synced_both_ways() {
        let mut dp = FakeDataplane::new(8, 32, RING);
        sync_uplinks(&[(2, 1), (3, 1)], &mut dp).unwrap();
        sync_uplinks(&[(3, 5)], &mut dp).unwrap();
        assert_eq!(dp.uplinks, [(3, 5)].into());
    }

    #[test]
    fn node_addresses_and_their_group_words_are_synced_both_ways() {
        let mut dp = FakeDataplane::new(8, 32, RING);
        let (a, lo): (IpAddr, IpAddr) = ("10.0.0.5".parse().unwrap(), "127.0.0.1".parse().unwrap());
        sync_node_addrs(&[(a, 1), (lo, 1)], &mut dp).unwrap();
        assert_eq!(dp.node_addrs.len(), 2);
        sync_node_addrs(&[(a, 3)], &mut dp).unwrap();
        assert_eq!(dp.node_addrs.into_values().collect::<Vec<_>>(), [3]);
    }
}
