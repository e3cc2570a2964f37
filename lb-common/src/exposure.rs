//! Where a service is served (`lb run --expose GROUP=ADDR|IFACE…`): each service belongs to
//! groups, each node address and uplink exposes groups, and a new flow arriving from the
//! network is balanced only where they meet. Decided here for the programs and `lb explain`.
//!
//! A group set is a 32-bit word: bits 0..=29 are the groups `--expose` names (in name order),
//! `OTHER_GROUPS` stands for every group it does not name (`*` exposes it too), and `WRITTEN`
//! marks a word an agent that knows exposure wrote. A word without it (a map entry made by an
//! earlier agent, or one not yet written after an upgrade's programs attached) means every
//! group: such an agent served everything everywhere, and the upgrade keeps that until the new
//! agent's first write.

/// Set in every group word an exposure-aware agent writes.
pub const WRITTEN: u32 = 1 << 31;
/// The groups `--expose` does not name (including a service's own that no entry mentions).
pub const OTHER_GROUPS: u32 = 1 << 30;
/// How many groups `--expose` may name.
pub const MAX_NAMED_GROUPS: u32 = 30;
/// Every group: what `*` exposes, and what every word holds without `--expose`.
pub const EVERY_GROUP: u32 = WRITTEN | (WRITTEN - 1);

/// The groups a word stands for.
#[inline(always)]
pub const fn groups(word: u32) -> u32 {
    if word & WRITTEN == 0 {
        EVERY_GROUP & !WRITTEN
    } else {
        word & !WRITTEN
    }
}

/// Whether a new flow to a service in `service` groups, arriving on the uplink whose UPLINKS
/// word is `uplink`, is balanced: a VIP (`node_addr` None) where its uplink exposes one of the
/// service's groups; a service port on a node address (`node_addr`: that address's word) where
/// the address and the uplink both do (so a packet for a private address arriving on the public
/// uplink is not served either: Linux accepts any of its addresses on any interface). Local
/// sockets are not asked about: they reach every group (lb_common::select).
#[inline(always)]
pub fn exposed(service: u32, node_addr: Option<u32>, uplink: u32) -> bool {
    let mut allowed = groups(service) & groups(uplink);
    if let Some(addr) = node_addr {
        allowed &= groups(addr);
    }
    allowed != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERNAL: u32 = 1 << 0;
    const EXTERNAL: u32 = 1 << 1;

    #[test]
    fn a_service_port_needs_its_group_on_the_address_and_the_uplink() {
        let (public, private) = (WRITTEN | EXTERNAL, WRITTEN | INTERNAL);
        let internal = WRITTEN | INTERNAL;
        assert!(exposed(internal, Some(WRITTEN | INTERNAL), private));
        assert!(!exposed(internal, Some(WRITTEN | EXTERNAL), public), "on the public address");
        assert!(!exposed(internal, Some(WRITTEN | INTERNAL), public), "the private address through the public uplink");
        assert!(!exposed(internal, Some(WRITTEN | EXTERNAL), private), "the public address through the private uplink");
        assert!(exposed(WRITTEN | INTERNAL | EXTERNAL, Some(WRITTEN | EXTERNAL), public), "a service in both groups");
    }

    #[test]
    fn a_vip_needs_its_group_on_the_uplink() {
        assert!(exposed(WRITTEN | EXTERNAL, None, WRITTEN | EXTERNAL));
        assert!(!exposed(WRITTEN | INTERNAL, None, WRITTEN | EXTERNAL));
    }

    #[test]
    fn a_service_in_no_exposed_group_is_served_only_where_every_group_is() {
        let nowhere = WRITTEN;
        assert!(!exposed(nowhere, None, WRITTEN | INTERNAL));
        let other = WRITTEN | OTHER_GROUPS;
        assert!(exposed(other, None, EVERY_GROUP), "`*` takes the groups no entry names");
        assert!(!exposed(other, None, WRITTEN | INTERNAL));
    }

    #[test]
    fn words_an_earlier_agent_left_mean_every_group() {
        // Its UPLINKS and NODE_ADDRS values were 1; services had no word (0).
        assert!(exposed(0, Some(1), 1));
        assert!(exposed(WRITTEN | INTERNAL, Some(1), 1));
        assert!(!exposed(WRITTEN, Some(1), 1), "an exposure-aware word keeps its meaning");
        assert_eq!(groups(EVERY_GROUP), !WRITTEN);
    }
}
