//! Stage 3, backend selection: the active backend a service's Maglev ring assigns to a client
//! (its slot and who may take it: lb_common::select).

use lb_common::{ring_pool, select, BackendInfo, Reason, ServiceInfo};

use crate::maps::{BACKENDS, RINGS};

/// The active backend the service's ring assigns to the client `src`:`sport` (`proto`).
#[inline(always)]
pub fn pick(svc: &ServiceInfo, src: &[u8; 16], sport: u16, proto: u8, family: u8) -> Result<(u32, &'static BackendInfo), Reason> {
    if svc.active_backends == 0 {
        return Err(Reason::NoBackend);
    }
    let entry = select::ring_slot(src, sport, proto, svc.ring_size);
    let backend_id = ring_entry(ring_pool::slot(svc.ring_start, entry))?;
    let backend = BACKENDS.get(backend_id).ok_or(Reason::BadBackend)?;
    if !select::takes_new_flows(backend_id, backend, family) {
        return Err(Reason::BadBackend);
    }
    Ok((backend_id, backend))
}

/// Backend id in `slot` of the ring pool (layout: lb_common::ring_pool).
#[inline(always)]
pub fn ring_entry(slot: u32) -> Result<u32, Reason> {
    let element = *RINGS.get(ring_pool::element_of(slot)).ok_or(Reason::BadBackend)?;
    Ok(ring_pool::slot_value(element, slot))
}
