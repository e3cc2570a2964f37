//! What `--dsr`, `--dsr-nodes`, `--decap-from` and `--dsr-port` give the programs
//! (lb_common::dsr): the DSR word of the settings and the two node-range tries, both rewritten at
//! every start; and how a backend is reached, as `lb services` and `lb explain` tell it.

use std::{borrow::BorrowMut, net::IpAddr};

use aya::maps::{lpm_trie::Key, LpmTrie, MapData};
use ipnet::IpNet;
use lb_common::{
    dsr::{self, NodeRange, Reach},
    names,
};

/// The DSR configuration of one start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DsrConfig {
    /// UDP port of the encapsulation.
    pub port: u16,
    /// Backend addresses whose agents decapsulate (`--dsr-nodes`); empty without `--dsr`.
    pub nodes: Vec<IpNet>,
    /// Balancer nodes whose packets this node decapsulates (`--decap-from`).
    pub decap_from: Vec<IpNet>,
}

impl Default for DsrConfig {
    fn default() -> Self {
        Self { port: dsr::DEFAULT_PORT, nodes: Vec::new(), decap_from: Vec::new() }
    }
}

impl DsrConfig {
    /// What `lb status` shows of it (None: this node does neither).
    pub fn status(&self) -> Option<crate::status::DsrStatus> {
        let text = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect();
        (self.flags() != 0).then(|| crate::status::DsrStatus { port: self.port, nodes: text(&self.nodes), decap_from: text(&self.decap_from) })
    }

    /// `Settings::dsr_flags`: what this node does.
    pub fn flags(&self) -> u16 {
        let encap = if self.nodes.is_empty() { 0 } else { dsr::ENCAP };
        let decap = if self.decap_from.is_empty() { 0 } else { dsr::DECAP };
        encap | decap
    }
}

/// One of the two node-range tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRanges {
    /// `DSR_NODES` (`--dsr-nodes`).
    DsrNodes,
    /// `DECAP_FROM` (`--decap-from`).
    DecapFrom,
}

impl NodeRanges {
    pub fn map(self) -> &'static str {
        match self {
            NodeRanges::DsrNodes => names::MAP_DSR_NODES,
            NodeRanges::DecapFrom => names::MAP_DECAP_FROM,
        }
    }
}

/// The trie key of a range.
pub fn key(net: &IpNet) -> Key<NodeRange> {
    let (addr, family) = crate::desired::ip_bytes(net.addr());
    let (prefix_len, range) = NodeRange::new(family, &addr, net.prefix_len());
    Key::new(prefix_len, range)
}

/// The range a trie key stands for (None: not one this agent writes).
pub fn net_of(key: &Key<NodeRange>) -> Option<IpNet> {
    let range = key.data();
    let prefix = key.prefix_len().checked_sub(dsr::NODE_FIXED_BITS)? as u8;
    let addr = crate::desired::bytes_ip(&range.addr, range.family)?;
    IpNet::new(addr, prefix).ok()
}

/// Makes the trie hold exactly `wanted`: the new ranges first, then the old ones removed (a
/// range in both is never missing in between).
pub fn replace<T: BorrowMut<MapData>>(trie: &mut LpmTrie<T, NodeRange, u32>, wanted: &[IpNet]) -> Result<(), aya::maps::MapError> {
    let present = trie.keys().collect::<Result<Vec<_>, _>>()?;
    let wanted: Vec<Key<NodeRange>> = wanted.iter().map(key).collect();
    for key in &wanted {
        trie.insert(key, 1, 0)?;
    }
    for key in present.iter().filter(|k| !wanted.iter().any(|w| same_key(w, k))) {
        match trie.remove(key) {
            Err(aya::maps::MapError::KeyNotFound) | Ok(()) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn same_key(a: &Key<NodeRange>, b: &Key<NodeRange>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}

/// What this node does with remote backends, as the pinned settings and `DSR_NODES` say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DsrView {
    pub flags: u16,
    pub nodes: Vec<IpNet>,
}

impl DsrView {
    /// How a backend at `addr` is reached, given whether its route leaves through an uplink:
    /// the programs' decision (lb_common::dsr::reach).
    pub fn reach(&self, addr: IpAddr, via_uplink: bool) -> Reach {
        dsr::reach(via_uplink, self.flags, || self.nodes.iter().any(|n| n.contains(&addr)))
    }
}
