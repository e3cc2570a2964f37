//! Counter updates. Per-CPU values: plain adds, no atomics needed.

use lb_common::{IfaceCounters, IfaceKey};

use crate::maps::IFACE_STATS;

/// Counts one packet of `len` bytes seen by `hook` on `ifindex`.
#[inline(always)]
pub fn count_iface(ifindex: u32, hook: u32, len: u64) {
    let key = IfaceKey { ifindex, hook };
    match IFACE_STATS.get_ptr_mut(key) {
        Some(counters) => unsafe {
            (*counters).packets += 1;
            (*counters).bytes += len;
        },
        None => {
            // First packet on this CPU for this key. A concurrent insert on another CPU may win;
            // BPF_ANY keeps whichever lands, losing at most this one packet's count.
            let first = IfaceCounters { packets: 1, bytes: len };
            let _ = IFACE_STATS.insert(key, first, 0);
        }
    }
}
