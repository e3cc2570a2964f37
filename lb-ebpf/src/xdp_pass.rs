//! Programs that only pass packets. A veth accepts frames sent to it with XDP_TX or
//! XDP_REDIRECT only while an XDP program runs on it, so `lb_xdp_pass` goes on the far end of
//! veth links that receive the balancer's forwarded frames (test topologies, container veths).
//! Both are the benchmarks' floors: the cost of running any program at all on that hook.
#![no_std]
#![no_main]

mod runtime;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn lb_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}
