//! Seeded packet fuzzing through the real ingress programs (BPF_PROG_TEST_RUN) against a loaded
//! service set: valid frames of every kind, then mutated (truncated at any byte, header fields
//! set to odd values, VLAN tags, zero UDP checksums, TTL 0/1, IPv6 extension headers, random
//! bytes). Every frame is checked against oracles that hold whatever the input:
//! - the program returns a verdict its hook defines (never XDP_ABORTED), and exactly one outcome
//!   counter moves;
//! - a drop is one of the outcomes that drop, a transmit one of those that transmit;
//! - a frame that is passed without being balanced leaves unchanged;
//! - a forwarded frame re-parses, goes to a configured backend of the service its destination
//!   names with the client's source kept, and its checksums are valid exactly when the input's
//!   were (incremental updates neither repair nor break them);
//! - a refusal is a well-formed reset or ICMP error, with valid checksums, back to the source;
//! - no flow is pinned for a frame that was not forwarded.
//!
//! Deterministic for a seed (xorshift), so a failure is replayed from its seed and case number.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use anyhow::Result;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb::dataplane::Dataplane;
use lb_common::{FlowKey, Hook, Reason};

use crate::{
    fixture::{expected_verdict, Fixture, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    packet::{tcp, udp, v4, v6, TcpFlags, ACK, SYN},
};

const SERVICES: &str = r#"{"services":[
  {"name":"web","address":"10.0.0.1","port":80,"protocol":"tcp",
   "backends":[{"address":"10.1.0.5","port":31005},{"address":"10.1.0.6","port":31006}]},
  {"name":"dns","address":"10.0.0.2","port":53,"protocol":"udp","backends":[{"address":"10.1.0.6","port":31053}]},
  {"name":"app-port","port":10000,"protocol":"udp,tcp","backends":[{"address":"10.1.0.7","port":31700}]},
  {"name":"web6","address":"fd00::80","port":80,"protocol":"tcp","backends":[{"address":"fd00:1::5","port":31005}]},
  {"name":"draining","address":"10.0.0.3","port":80,"protocol":"tcp","backends":[{"address":"10.1.0.8","port":31008,"weight":0}]},
  {"name":"empty","address":"10.0.0.9","port":80,"protocol":"tcp","backends":[]},
  {"name":"empty6-udp","address":"fd00::99","port":53,"protocol":"udp","backends":[]}
]}"#;
const NODE_ADDRS: [&str; 3] = ["10.201.0.2", "fd00:201::2", "127.0.0.1"];

/// Where each service's traffic may go: every backend address:port of the service set.
fn backends() -> Result<BTreeSet<SocketAddr>> {
    let services = lb::services_file::parse(SERVICES, "fuzz services")?;
    Ok(services.values().flat_map(|s| &s.backends).map(|b| SocketAddr::new(b.addr, b.port)).collect())
}

/// One frame the oracles rejected.
#[derive(Debug)]
pub struct Violation {
    pub case: u32,
    pub frame: Vec<u8>,
    pub why: String,
}

/// A run's outcome.
#[derive(Debug, Default)]
pub struct Report {
    pub cases: u32,
    /// Frames the skb test run refuses before any program runs (shorter than an Ethernet + IP
    /// header): TC only.
    pub not_runnable: u32,
    pub violations: Vec<Violation>,
}

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The program of one hook, loaded with the service set, and what the oracles need.
pub struct Harness {
    hook: Hook,
    fixture: Fixture,
    maps: lb::dataplane::pinned::PinnedMaps,
    backends: BTreeSet<SocketAddr>,
}

impl Harness {
    pub fn new(hook: Hook) -> Result<Self> {
        let mut fixture = Fixture::load_hook(hook)?;
        fixture.apply(SERVICES, &NODE_ADDRS)?;
        let maps = fixture.maps();
        Ok(Self { hook, fixture, maps, backends: backends()? })
    }

    /// Frames shorter than this the kernel refuses to test-run (EINVAL before the program runs):
    /// an Ethernet header for XDP, room for an Ethernet and IP header for an skb.
    fn shortest_runnable(&self) -> usize {
        if self.hook == Hook::XdpIngress { ETH } else { ETH + 40 }
    }

    /// Runs one frame: None if the kernel refuses to run it (see `shortest_runnable`), else the
    /// oracles' verdict.
    pub fn case(&mut self, frame: &[u8]) -> Result<Option<Result<(), String>>> {
        let before = self.maps.verdicts()?;
        let (verdict, output) = match self.fixture.run_packet(frame) {
            Ok(ran) => ran,
            Err(_) if frame.len() < self.shortest_runnable() => return Ok(None),
            Err(err) => return Err(err.context(format!("a {}-byte frame", frame.len()))),
        };
        let after = self.maps.verdicts()?;
        Ok(Some(check(self.hook, frame, verdict, &output, &before, &after, &self.backends, &self.maps)))
    }
}

/// Runs `cases` frames from `seed` through the program of `hook`.
pub fn run(seed: u64, cases: u32, hook: Hook) -> Result<Report> {
    let mut harness = Harness::new(hook)?;
    let mut rng = Rng::new(seed);
    let mut report = Report::default();
    for case in 0..cases {
        let base = base_frame(&mut rng, case);
        let frame = mutate(&mut rng, base);
        match harness.case(&frame).map_err(|e| e.context(format!("case {case}")))? {
            None => report.not_runnable += 1,
            Some(Ok(())) => report.cases += 1,
            Some(Err(why)) => {
                report.cases += 1;
                report.violations.push(Violation { case, frame, why });
            }
        }
    }
    Ok(report)
}

/// A valid frame of one of the kinds the service set can see, from a source unique to the case
/// (so a flow found afterwards was made by this frame).
fn base_frame(rng: &mut Rng, case: u32) -> Vec<u8> {
    let sport = 1024 + (case % 60000) as u16;
    let src4 = v4(10, 100 + (case / 60000) as u8, 0, 1);
    let src6 = v6(&format!("fd00:9::{:x}", 1 + case / 60000));
    let flags = [SYN, ACK, TcpFlags { fin: true, ack: true, ..TcpFlags::default() }, TcpFlags { rst: true, ..TcpFlags::default() }];
    let flag = flags[rng.below(flags.len())];
    let payload: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
    match rng.below(10) {
        0 => tcp((src4, sport), (v4(10, 0, 0, 1), 80), flag, &payload),
        1 => udp((src4, sport), (v4(10, 0, 0, 2), 53), &payload),
        2 => tcp((src4, sport), (v4(10, 201, 0, 2), 10000), flag, &payload),
        3 => udp((src4, sport), (v4(127, 0, 0, 1), 10000), &payload),
        4 => tcp((src6, sport), (v6("fd00::80"), 80), flag, &payload),
        5 => tcp((src4, sport), (v4(10, 0, 0, 3), 80), flag, &payload),
        6 => tcp((src4, sport), (v4(10, 0, 0, 9), 80), flag, &payload),
        7 => udp((src6, sport), (v6("fd00::99"), 53), &payload),
        8 => tcp((src4, sport), (v4(10, 99, 0, 1), 80), flag, &payload),
        _ => udp((src4, sport), (v4(10, 0, 0, 1), 9999), &payload),
    }
}

const ETH: usize = 14;

fn is_v4(frame: &[u8]) -> bool {
    frame.len() > 13 && frame[12..14] == [0x08, 0x00]
}

/// One mutation (or none) of a valid frame.
fn mutate(rng: &mut Rng, mut frame: Vec<u8>) -> Vec<u8> {
    let l4 = if is_v4(&frame) { ETH + 20 } else { ETH + 40 };
    let set = |frame: &mut Vec<u8>, at: usize, value: u8| {
        if at < frame.len() {
            frame[at] = value;
        }
    };
    match rng.below(14) {
        0 | 1 => {}
        2 => frame.truncate(rng.below(frame.len())),
        3 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(frame.len());
                frame[at] = rng.next() as u8;
            }
        }
        4 => frame = (0..rng.below(128)).map(|_| rng.next() as u8).collect(),
        5 if is_v4(&frame) => set(&mut frame, ETH, 0x40 | rng.below(16) as u8),
        6 => {
            let at = if is_v4(&frame) { ETH + 2 } else { ETH + 4 };
            let len = rng.next() as u16;
            set(&mut frame, at, (len >> 8) as u8);
            set(&mut frame, at + 1, len as u8);
        }
        7 if is_v4(&frame) => {
            set(&mut frame, ETH + 6, rng.next() as u8);
            set(&mut frame, ETH + 7, rng.next() as u8);
        }
        8 => set(&mut frame, l4 + 12, (rng.below(16) as u8) << 4),
        9 => {
            frame.splice(12..12, [0x81, 0x00, 0x00, rng.next() as u8]);
        }
        10 => {
            set(&mut frame, l4 + 6, 0);
            set(&mut frame, l4 + 7, 0);
        }
        11 => {
            let at = if is_v4(&frame) { ETH + 8 } else { ETH + 7 };
            set(&mut frame, at, rng.below(2) as u8);
        }
        12 if !is_v4(&frame) => set(&mut frame, ETH + 6, [0, 43, 44, 50, 51, 60, 135, 139, 59][rng.below(9)]),
        _ => frame.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
    }
    frame
}

#[allow(clippy::too_many_arguments)]
fn check(
    hook: Hook,
    input: &[u8],
    verdict: u32,
    output: &[u8],
    before: &[u64],
    after: &[u64],
    backends: &BTreeSet<SocketAddr>,
    maps: &lb::dataplane::pinned::PinnedMaps,
) -> Result<(), String> {
    let moved: Vec<(Reason, u64)> = Reason::ALL
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a != b)
        .map(|(r, (b, a))| (*r, a - b))
        .collect();
    let [(reason, 1)] = moved[..] else {
        return Err(format!("expected exactly one outcome counted, got {moved:?}"));
    };
    let action = |xdp: u32| expected_verdict(hook, xdp);
    let allowed = match reason {
        Reason::FwdLocal | Reason::NotService | Reason::NotIpTcpUdp | Reason::Malformed | Reason::Fragment | Reason::IpOptions | Reason::TtlExceeded => action(XDP_PASS),
        Reason::NoBackendRejected => action(XDP_TX),
        Reason::FwdNat | Reason::NatReply => return Err(format!("{reason:?}: no full-NAT backend is configured")),
        r if r.drops() => action(XDP_DROP),
        r => return Err(format!("outcome {r:?} cannot come from an ingress hook")),
    };
    let redirect = action(XDP_REDIRECT);
    if verdict != allowed && !(reason == Reason::NoBackendRejected && verdict == redirect) {
        return Err(format!("{reason:?} with verdict {verdict}"));
    }
    match reason {
        Reason::FwdLocal => check_forward(input, output, backends),
        Reason::NoBackendRejected => check_refusal(input, output),
        _ if verdict == action(XDP_PASS) && output != input => Err(format!("{reason:?}: passed, but the frame was changed")),
        _ => check_no_flow(input, maps),
    }
}

/// The (source, destination, protocol, ports) of a parsable TCP/UDP frame.
fn tuple(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, u8)> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match packet.net.as_ref()? {
        NetSlice::Ipv4(ip) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        NetSlice::Ipv6(ip) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        _ => return None,
    };
    match packet.transport.as_ref()? {
        TransportSlice::Tcp(t) => Some((SocketAddr::new(src, t.source_port()), SocketAddr::new(dst, t.destination_port()), 6)),
        TransportSlice::Udp(u) => Some((SocketAddr::new(src, u.source_port()), SocketAddr::new(dst, u.destination_port()), 17)),
        _ => None,
    }
}

/// Whether every checksum of the frame is right (a zero UDP checksum over IPv4 counts as right).
fn checksums_valid(frame: &[u8]) -> bool {
    let fields = crate::packet::describe(frame);
    let ok = |k: &str| fields.iter().find(|f| f.0 == k).is_none_or(|f| f.1 == "true");
    ["ipv4.checksum_ok", "tcp.checksum_ok", "udp.checksum_ok", "icmp.checksum_ok", "icmpv6.checksum_ok"].into_iter().all(ok)
        && !fields.iter().any(|f| f.0 == "unparsed")
}

fn check_forward(input: &[u8], output: &[u8], backends: &BTreeSet<SocketAddr>) -> Result<(), String> {
    let (src, _, proto) = tuple(input).ok_or("forwarded a frame that does not parse")?;
    let (out_src, out_dst, out_proto) = tuple(output).ok_or("the forwarded frame does not parse")?;
    if (out_src, out_proto) != (src, proto) {
        return Err(format!("source or protocol changed: {src} → {out_src}"));
    }
    if !backends.contains(&out_dst) {
        return Err(format!("forwarded to {out_dst}, which is no configured backend"));
    }
    if checksums_valid(input) != checksums_valid(output) {
        return Err(format!("checksums valid before: {}, after: {}", checksums_valid(input), checksums_valid(output)));
    }
    Ok(())
}

fn check_refusal(input: &[u8], output: &[u8]) -> Result<(), String> {
    let (src, dst, _) = tuple(input).ok_or("refused a frame that does not parse")?;
    if !checksums_valid(output) {
        return Err("the refusal's checksums are wrong".into());
    }
    let fields = crate::packet::describe(output);
    let get = |k: &str| fields.iter().find(|f| f.0 == k).map(|f| f.1.clone()).unwrap_or_default();
    let (to, from) = if src.is_ipv4() { (get("ipv4.dst"), get("ipv4.src")) } else { (get("ipv6.dst"), get("ipv6.src")) };
    if to != src.ip().to_string() || from != dst.ip().to_string() {
        return Err(format!("refusal from {from} to {to}, expected from {} to {}", dst.ip(), src.ip()));
    }
    let is_reset = get("tcp.flags").contains("RST");
    let is_icmp = fields.iter().any(|f| f.0 == "icmp.type" || f.0 == "icmpv6.type");
    if !(is_reset || is_icmp) {
        return Err(format!("a refusal that is neither a reset nor an ICMP error: {fields:?}"));
    }
    Ok(())
}

fn check_no_flow(input: &[u8], maps: &lb::dataplane::pinned::PinnedMaps) -> Result<(), String> {
    let Some((src, dst, proto)) = tuple(input) else { return Ok(()) };
    let (src_addr, family) = lb::model::ip_bytes(src.ip());
    let (dst_addr, _) = lb::model::ip_bytes(dst.ip());
    let key = FlowKey { src: src_addr, dst: dst_addr, sport: src.port(), dport: dst.port(), proto, family, _pad: 0 };
    match maps.flow(&key) {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(format!("a flow was pinned for {src} → {dst}, which was not forwarded")),
        Err(err) => Err(format!("reading the flow table: {err}")),
    }
}

/// A violation as a reproducible line: seed, case, frame in hex.
pub fn describe(seed: u64, hook: Hook, v: &Violation) -> String {
    format!("{hook} seed {seed} case {}: {}\n  frame {}", v.case, v.why, crate::packet::hex(&v.frame))
}
