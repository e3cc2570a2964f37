//! Full NAT's state: a source port per connection towards a backend on another node, claimed
//! with the reply mapping, and the mappings' stamps (lb_common::nat_state) as packets pass.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use lb_common::{hash, nat_state, BackendInfo, FlowInfo, FlowKey, NatReply, Reason, Scratch};

use crate::{
    flow::flow_key,
    maps::{scratch, settings, NAT_REPLIES},
    mem,
    parse::Parsed,
};

/// Probes for a free NAT source port towards `backend` and claims it with the reply mapping
/// (freed by the agent once the connection has closed or idled out, see `nat_state`).
#[inline(always)]
pub fn claim_port(p: &Parsed, backend: &BackendInfo, s: &mut Scratch, now: u64) -> Result<u16, Reason> {
    let settings = settings().ok_or(Reason::NatPortsExhausted)?;
    let min = settings.nat_port_min as u32;
    if min == 0 {
        // The agent has not written its settings: no range to take a port from.
        return Err(Reason::NatPortsExhausted);
    }
    let span = (settings.nat_port_max as u32).saturating_sub(min) + 1;
    s.nat_reply.client_addr = p.src;
    s.nat_reply.service_addr = p.dst;
    s.nat_reply.client_port = p.sport;
    s.nat_reply.service_port = p.dport;
    s.nat_reply.state = nat_state::after_packet(0, now, p.tcp_flags, false);
    let start = hash::flow_hash(&p.src, p.sport, p.proto);
    s.reply_key = nat_key(p, backend, &s.flow.nat_source(p.family), 0);
    for attempt in 0..4u32 {
        // Odd strides from a per-client start: different clients spread, retries do not repeat.
        let port = min + hash::ring_slot(start.wrapping_add(attempt.wrapping_mul(7919)), span);
        s.reply_key.dport = port as u16;
        if NAT_REPLIES.insert(&s.reply_key, &s.nat_reply, BPF_NOEXIST as u64).is_ok() || reclaim(&s.reply_key, &s.nat_reply) {
            return Ok(port as u16);
        }
    }
    Err(Reason::NatPortsExhausted)
}

/// Whether the mapping under `key` is already this connection's: its flow entry was evicted
/// (LRU) while the mapping stayed. It keeps its port, so the backend still sees the same
/// connection, and the mapping is stamped as the new one would have been.
#[inline(always)]
fn reclaim(key: &FlowKey, want: &NatReply) -> bool {
    let Some(have) = NAT_REPLIES.get_ptr_mut(key) else { return false };
    // SAFETY: a non-null pointer into the map's element, kept allocated until this run ends (RCU).
    let have = unsafe { &mut *have };
    let same = have.client_port == want.client_port
        && have.service_port == want.service_port
        && mem::eq16(&have.client_addr, &want.client_addr)
        && mem::eq16(&have.service_addr, &want.service_addr);
    if same {
        have.state = want.state;
    }
    same
}

/// How to send a full-NAT backend's reply back to its client, if this is one. The mapping is
/// stamped with the time and any close the reply carries.
#[inline(always)]
pub fn reply_mapping(p: &Parsed) -> Option<&'static NatReply> {
    let settings = settings()?;
    if p.dport < settings.nat_reply_port_min || p.dport > settings.nat_reply_port_max {
        return None;
    }
    let s = scratch().ok()?;
    s.flow_key = flow_key(p);
    let reply = NAT_REPLIES.get_ptr_mut(&s.flow_key)?;
    // SAFETY: a non-null pointer into the map's element, which the kernel keeps allocated until
    // this run ends (RCU); the caller only reads it during the run. Another CPU stamping the same
    // mapping races only on the plain `state` word.
    let reply = unsafe { &mut *reply };
    stamp(reply, p.tcp_flags, true);
    Some(reply)
}

/// A full-NAT client's FIN or reset: marks its mapping closed (the agent frees the port after the
/// linger `nat_state` gives it).
#[inline(always)]
pub fn closing(p: &Parsed, backend: &BackendInfo, flow: &FlowInfo) {
    let Ok(s) = scratch() else { return };
    s.reply_key = nat_key(p, backend, &flow.nat_source(p.family), flow.nat_port);
    if let Some(reply) = NAT_REPLIES.get_ptr_mut(&s.reply_key) {
        // SAFETY: as in `nat_reply`.
        stamp(unsafe { &mut *reply }, p.tcp_flags, false);
    }
}

/// The key of a full-NAT mapping: the backend's reply to `nat_addr`:`nat_port`.
#[inline(always)]
fn nat_key(p: &Parsed, backend: &BackendInfo, nat_addr: &[u8; 16], nat_port: u16) -> FlowKey {
    FlowKey { src: backend.addr, dst: *nat_addr, sport: backend.port, dport: nat_port, proto: p.proto, family: p.family, _pad: 0 }
}

#[inline(always)]
fn stamp(reply: &mut NatReply, tcp_flags: u8, from_backend: bool) {
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    reply.state = nat_state::after_packet(reply.state, now, tcp_flags, from_backend);
}
