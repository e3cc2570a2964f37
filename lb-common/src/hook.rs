//! The programs that see packets on an uplink, one name each for counters, status and pins.

/// Which program saw a packet: the `IFACE_STATS` slot within an interface (`hook as u32`), and
/// what operators read in `lb stats` and `lb status`. The numbers are the map's layout, kept
/// across versions.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum Hook {
    /// XDP on uplink ingress: balances packets for services, sends full-NAT replies back out.
    XdpIngress = 0,
    /// TC (TCX) on uplink egress: restores the service address on local backends' replies.
    TcEgress = 1,
    /// TC (TCX) on uplink ingress: the same balancing as `XdpIngress`, on the skb.
    TcIngress = 2,
}

impl Hook {
    /// Every hook, in slot order (`Hook::ALL[h as usize] == h`).
    pub const ALL: [Hook; 3] = [Hook::XdpIngress, Hook::TcEgress, Hook::TcIngress];

    /// The hook counted in slot `index` of an interface, if there is one.
    pub fn from_index(index: u32) -> Option<Hook> {
        Self::ALL.get(index as usize).copied()
    }

    /// The one spelling operators read (`lb stats`, `lb status`, JSON): `xdp_ingress`,
    /// `tc_ingress`, `tc_egress`.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::XdpIngress => "xdp_ingress",
            Hook::TcEgress => "tc_egress",
            Hook::TcIngress => "tc_ingress",
        }
    }

    /// The link's pin file is `links/<pin_name>@<iface>`. These names are on disk under pinned
    /// links of running agents, so they keep the spelling they were created with (`xdp`, not
    /// `xdp_ingress`): a restarted agent must find its predecessor's links.
    pub const fn pin_name(self) -> &'static str {
        match self {
            Hook::XdpIngress => "xdp",
            Hook::TcEgress => "tc_egress",
            Hook::TcIngress => "tc_ingress",
        }
    }
}

impl core::fmt::Display for Hook {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_sits_at_its_own_slot() {
        for (slot, hook) in Hook::ALL.iter().enumerate() {
            assert_eq!(*hook as usize, slot, "{hook:?}");
            assert_eq!(Hook::from_index(slot as u32), Some(*hook));
        }
        assert_eq!(Hook::from_index(Hook::ALL.len() as u32), None);
    }

    #[test]
    fn pin_names_are_the_ones_already_on_disk() {
        let pins = Hook::ALL.map(Hook::pin_name);
        assert_eq!(pins, ["xdp", "tc_egress", "tc_ingress"]);
    }
}
