//! Counter updates. Per-CPU values: plain adds, no atomics needed.

use lb_common::{iface_slot, Hook, Reason, TrafficCounters};

use crate::maps::{BACKEND_STATS, IFACE_STATS, SERVICE_STATS, SOURCE_REFUSALS, VERDICTS};

/// Counts one packet of `len` bytes seen by `hook` on `ifindex`.
#[inline(always)]
pub fn count_iface(ifindex: u32, hook: Hook, len: u64) {
    let Some(slot) = iface_slot(ifindex, hook) else { return };
    if let Some(counters) = IFACE_STATS.get_ptr_mut(slot) {
        // SAFETY: the pointer is the non-null one get_ptr_mut returned into this CPU's slot of a
        // per-CPU array, allocated for the map's life; only programs on this CPU touch it, so a
        // nested program can at worst lose an increment.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += len;
        }
    }
}

/// Counts one packet with outcome `reason`.
#[inline(always)]
pub fn count_verdict(reason: Reason) {
    if let Some(counter) = VERDICTS.get_ptr_mut(reason as u32) {
        // SAFETY: the pointer is the non-null one get_ptr_mut returned into this CPU's slot of a
        // per-CPU array, allocated for the map's life; only programs on this CPU touch it, so a
        // nested program can at worst lose an increment.
        unsafe { *counter += 1 };
    }
}

/// Counts a forwarded packet against its service and backend.
#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, len: u64, new_flow: bool) {
    // Two separate checks: combining the null tests lets LLVM OR the pointers, which the
    // verifier rejects.
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        add(counters, len, new_flow);
    }
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(backend_id) {
        add(counters, len, new_flow);
    }
}

#[inline(always)]
fn add(counters: *mut TrafficCounters, len: u64, new_flow: bool) {
    // SAFETY: counters is a non-null pointer into this CPU's slot of a per-CPU array (see
    // count_traffic), allocated for the map's life; only programs on this CPU touch it.
    unsafe {
        (*counters).packets += 1;
        (*counters).bytes += len;
        (*counters).new_flows += new_flow as u64;
    }
}

/// Counts a new connection placed by a socket hook (no packet passes through the programs).
#[inline(always)]
pub fn count_socket_flow(service_id: u32, backend_id: u32) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: the pointer is the non-null one get_ptr_mut returned into this CPU's slot of a
        // per-CPU array, allocated for the map's life; only programs on this CPU touch it, so a
        // nested program can at worst lose an increment.
        unsafe { (*counters).new_flows += 1 };
    }
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: the pointer is the non-null one get_ptr_mut returned into this CPU's slot of a
        // per-CPU array, allocated for the map's life; only programs on this CPU touch it, so a
        // nested program can at worst lose an increment.
        unsafe { (*counters).new_flows += 1 };
    }
}

/// Counts a new flow to service `service_id` refused for its source against the service (the
/// verdict is counted by the caller).
#[inline(always)]
pub fn count_source_refusal(service_id: u32) {
    if let Some(counter) = SOURCE_REFUSALS.get_ptr_mut(service_id) {
        // SAFETY: as in count_verdict: this CPU's slot of a per-CPU array.
        unsafe { *counter += 1 };
    }
}
