//! An XDP program that only passes packets. A veth accepts frames sent to it with XDP_TX or
//! XDP_REDIRECT only while an XDP program runs on it, so this goes on the far end of veth links
//! that receive the balancer's forwarded frames (test topologies, container veths). It is also
//! the benchmarks' floor: the cost of running any XDP program at all.
#![no_std]
#![no_main]

mod runtime;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
