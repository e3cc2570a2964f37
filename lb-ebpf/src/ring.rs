//! Stage 3, backend selection: the active backend a service's Maglev ring assigns to a hash.

use lb_common::{hash, ring_pool, BackendInfo, Reason, ServiceInfo, BACKEND_ACTIVE};

use crate::maps::{BACKENDS, RINGS};

/// The active backend the service's ring assigns to `flow_hash`.
#[inline(always)]
pub fn pick(svc: &ServiceInfo, flow_hash: u32, family: u8) -> Result<(u32, &'static BackendInfo), Reason> {
    if svc.active_backends == 0 {
        return Err(Reason::NoBackend);
    }
    let entry = hash::ring_slot(flow_hash, svc.ring_size);
    let backend_id = ring_entry(ring_pool::slot(svc.ring_start, entry))?;
    let backend = BACKENDS.get(backend_id).ok_or(Reason::BadBackend)?;
    if backend_id == 0 || backend.state != BACKEND_ACTIVE || backend.family != family {
        return Err(Reason::BadBackend);
    }
    Ok((backend_id, backend))
}

/// Backend id in `slot` of the ring pool (layout: lb_common::ring_pool).
#[inline(always)]
fn ring_entry(slot: u32) -> Result<u32, Reason> {
    let element = *RINGS.get(ring_pool::element_of(slot)).ok_or(Reason::BadBackend)?;
    Ok(ring_pool::slot_value(element, slot))
}
