//! Map keys and values. Layouts are checked at compile time.

/// Where a packet was counted: which program saw it.
pub const HOOK_XDP_INGRESS: u32 = 0;
pub const HOOK_TC_EGRESS: u32 = 1;

/// Key of `IFACE_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceKey {
    /// Kernel interface index the packet was seen on.
    pub ifindex: u32,
    /// `HOOK_XDP_INGRESS` or `HOOK_TC_EGRESS`.
    pub hook: u32,
}

/// Value of `IFACE_STATS` (one per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl IfaceCounters {
    /// Folds another CPU's counters into these.
    pub fn add(&mut self, other: &Self) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

const _: () = assert!(core::mem::size_of::<IfaceKey>() == 8);
const _: () = assert!(core::mem::size_of::<IfaceCounters>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain integers with no padding holes.
    unsafe impl aya::Pod for super::IfaceKey {}
    unsafe impl aya::Pod for super::IfaceCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_fold_across_cpus() {
        let mut total = IfaceCounters::default();
        total.add(&IfaceCounters { packets: 2, bytes: 120 });
        total.add(&IfaceCounters { packets: 3, bytes: 300 });
        assert_eq!(total, IfaceCounters { packets: 5, bytes: 420 });
    }
}
