//! How this node reaches a backend — through its own stack, full NAT or DSR — decided as the
//! programs decide it (lb_common::dsr::reach) from the kernel's route to the backend (out of an
//! uplink or not: an RTM_GETROUTE, where the programs ask bpf_fib_lookup) and the node's DSR
//! flags and `--dsr-nodes`; for an established flow, from its entry's kind.

use std::net::IpAddr;

use anyhow::Result;
use lb_common::dsr::Reach;

use crate::{
    dataplane::{dsr::DsrView, Dataplane},
    node::neighbours::NeighbourResolver,
};

/// Answers "how is this backend reached" for one `lb` command.
pub struct Reacher {
    dsr: DsrView,
    uplinks: Vec<u32>,
    /// None when no rtnetlink socket could be opened: every answer is then unknown.
    routes: Option<NeighbourResolver>,
}

impl Reacher {
    pub fn new(dp: &dyn Dataplane) -> Result<Self> {
        let uplinks = dp.uplinks()?.into_iter().map(|(ifindex, _)| ifindex).collect();
        Ok(Self { dsr: dp.dsr_view()?, uplinks, routes: NeighbourResolver::new().ok() })
    }

    /// How a new flow to the backend at `addr` would reach it; None when this namespace has no
    /// route to it.
    pub fn reach(&mut self, addr: IpAddr) -> Option<Reach> {
        let ifindex = self.routes.as_mut()?.route_interface(addr).ok()?;
        Some(self.dsr.reach(addr, self.uplinks.contains(&ifindex)))
    }
}

/// The name `lb services` and `lb explain` print for an answer of [`Reacher::reach`].
pub fn name(reach: Option<Reach>) -> &'static str {
    reach.map_or("unknown", Reach::name)
}
