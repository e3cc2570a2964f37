//! Seeded packet fuzzing through the real ingress programs (BPF_PROG_TEST_RUN) against a loaded
//! service set (local and full-NAT backends; the program runs in a namespace of its own whose
//! uplink has the remote backend's neighbour resolved): valid frames of every kind, backends'
//! replies to full-NAT flows made earlier in the run among them, then mutated (truncated at any byte, header fields
//! set to odd values, VLAN tags, zero UDP checksums, TTL 0/1, IPv6 extension headers, random
//! bytes). Every frame is checked against oracles that hold whatever the input:
//! - the program returns a verdict its hook defines (never XDP_ABORTED), and exactly one outcome
//!   counter moves;
//! - a drop is one of the outcomes that drop, a transmit one of those that transmit;
//! - a frame that is passed without being balanced leaves unchanged;
//! - a forwarded frame re-parses, goes to a configured backend of the service its destination
//!   names with the client's source kept (full NAT: from the uplink's address and a NAT port),
//!   and its checksums are valid exactly when the input's were (incremental updates neither
//!   repair nor break them); a full-NAT reply goes back from a full-NAT service;
//! - a refusal is a well-formed reset or ICMP error, with valid checksums, back to the source;
//! - a client outside a service's source ranges is never forwarded to it, and only such a
//!   client is refused for its source;
//! - no flow is pinned by a frame that was not forwarded (one its tuple had before stays: a
//!   mutated frame can carry another case's client address and port, seed 663931354 case 10429).
//!
//! Deterministic for a seed (xorshift), so a failure is replayed from its seed and case number.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::mpsc,
};

use anyhow::{Context as _, Result};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb::dataplane::Dataplane;
use lb_common::{FlowKey, Hook, Reason};

use crate::{
    rng::Rng,
    fixture::{expected_verdict, Fixture, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    netns::Netns,
    packet::{tcp, udp, v4, v6, TcpFlags, ACK, SYN},
};

/// Every service is exposed (`--expose external=…`) but `internal` and `internal-port`.
const SERVICES: &str = r#"{"services":[
  {"name":"web","address":"10.0.0.1","port":80,"protocol":"tcp","group":"external",
   "backends":[{"address":"10.1.0.5","port":31005},{"address":"10.1.0.6","port":31006}]},
  {"name":"dns","address":"10.0.0.2","port":53,"protocol":"udp","group":"external","backends":[{"address":"10.1.0.6","port":31053}]},
  {"name":"app-port","port":10000,"protocol":"udp,tcp","group":"external","backends":[{"address":"10.1.0.7","port":31700}]},
  {"name":"web6","address":"fd00::80","port":80,"protocol":"tcp","group":"external","backends":[{"address":"fd00:1::5","port":31005}]},
  {"name":"draining","address":"10.0.0.3","port":80,"protocol":"tcp","group":"external","backends":[{"address":"10.1.0.8","port":31008,"weight":0}]},
  {"name":"empty","address":"10.0.0.9","port":80,"protocol":"tcp","group":"external","backends":[]},
  {"name":"empty6-udp","address":"fd00::99","port":53,"protocol":"udp","group":"external","backends":[]},
  {"name":"remote","address":"10.0.0.4","port":80,"protocol":"tcp,udp","group":"external","backends":[{"address":"10.202.0.10","port":31010}]},
  {"name":"internal","address":"10.0.0.5","port":80,"protocol":"tcp","group":"internal","backends":[{"address":"10.1.0.5","port":31005}]},
  {"name":"internal-port","port":10001,"protocol":"tcp","backends":[{"address":"10.1.0.7","port":31701}]},
  {"name":"ranged","address":"10.0.0.6","port":80,"protocol":"tcp,udp","group":"external","source_ranges":["10.100.0.0/16","10.101.0.0/17"],
   "backends":[{"address":"10.1.0.5","port":31005}]},
  {"name":"ranged6","address":"fd00::86","port":80,"protocol":"tcp","group":"external","source_ranges":["fd00:9::/112"],"backends":[{"address":"fd00:1::5","port":31005}]}
]}"#;
/// Where the internal services are: a new flow to one of them is never balanced here.
const INTERNAL: [&str; 4] = ["10.0.0.5:80", "10.201.0.2:10001", "[fd00:201::2]:10001", "127.0.0.1:10001"];
/// The uplink's address (full NAT's source) and the remote backend's (behind the uplink).
const UPLINK_ADDR: &str = "10.202.0.2";
const REMOTE_BACKEND: &str = "10.202.0.10";
const NODE_ADDRS: [&str; 3] = ["10.201.0.2", "fd00:201::2", "127.0.0.1"];

/// Where each service's traffic may go: every backend address:port of the service set.
fn backends() -> Result<BTreeSet<SocketAddr>> {
    let services = lb::sources::services_file::parse(SERVICES, "fuzz services")?;
    Ok(services.values().flat_map(|s| &s.backends).map(|b| SocketAddr::new(b.addr, b.port)).collect())
}

/// The services with source ranges (all VIPs here): (VIP:port, protocol, ranges).
fn ranged() -> Result<Vec<(SocketAddr, u8, lb::desired::Sources)>> {
    let services = lb::sources::services_file::parse(SERVICES, "fuzz services")?;
    let ranged = services.values().filter(|s| !s.sources.is_empty());
    let vip = |s: &lb::desired::Service| match s.id.addr {
        lb::desired::ServiceAddr::Vip(ip) => Some((SocketAddr::new(ip, s.id.port), s.id.proto.number(), s.sources.clone())),
        lb::desired::ServiceAddr::NodePort { .. } => None,
    };
    Ok(ranged.filter_map(vip).collect())
}

/// Whether a frame's client is admitted by the ranges of the service it is for; None: no
/// service with ranges.
fn admitted(frame: &[u8], ranged: &[(SocketAddr, u8, lb::desired::Sources)]) -> Option<bool> {
    let (src, dst, proto) = tuple(frame)?;
    let (_, _, sources) = ranged.iter().find(|(vip, p, _)| *vip == dst && *p == proto)?;
    Some(lb::desired::admits(sources, src.ip()))
}

/// `--iface up0 --node-ip …NODE_ADDRS --expose external=up0,…NODE_ADDRS`: the services of the
/// group `internal` (and those with no group) are served nowhere from the network.
fn serving() -> Result<lb::node::serving::Serving> {
    let uplink = lb::node::serving::Uplink { name: "up0".into(), ifindex: lb::node::preflight::interface_index("up0")? };
    let entry = format!("external=up0,{}", NODE_ADDRS.join(",")).parse().map_err(anyhow::Error::msg)?;
    let exposure = lb::control::exposure::Exposure::new(vec![entry], "internal").map_err(anyhow::Error::msg)?;
    let node_ips = NODE_ADDRS.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    Ok(lb::node::serving::Serving::new(node_ips, vec![uplink], exposure))
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
    /// Frames per outcome counted (what the run covered).
    pub outcomes: std::collections::BTreeMap<&'static str, u32>,
}

/// The program of one hook, loaded with the service set in a namespace of its own (its worker
/// thread lives there: route lookups are made in the caller's namespace), and what the oracles
/// need.
pub struct Harness {
    hook: Hook,
    frames: Option<mpsc::Sender<Vec<u8>>>,
    results: mpsc::Receiver<Result<(u32, Vec<u8>)>>,
    worker: Option<std::thread::JoinHandle<()>>,
    maps: lb::dataplane::pinned::PinnedMaps,
    backends: BTreeSet<SocketAddr>,
    ranged: Vec<(SocketAddr, u8, lb::desired::Sources)>,
    /// Frames per outcome counted so far.
    outcomes: std::collections::BTreeMap<&'static str, u32>,
    /// Where the last full-NAT forward went (backend, NAT source, protocol), for a reply to it.
    last_nat: Option<(SocketAddr, SocketAddr, u8)>,
    _ns: Netns,
}

impl Harness {
    pub fn new(hook: Hook) -> Result<Self> {
        let ns = Netns::new("lbfz")?;
        ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"])?;
        ns.ip(&["link", "set", "up0p", "up"])?;
        ns.addr("up0", &format!("{UPLINK_ADDR}/24"))?;
        ns.ip(&["neigh", "add", REMOTE_BACKEND, "lladdr", "02:aa:00:00:00:10", "dev", "up0", "nud", "permanent"])?;
        // The clients (10.100.0.0/16) are behind a router on the uplink: replies go back there.
        ns.ip(&["neigh", "add", "10.202.0.1", "lladdr", "02:aa:00:00:00:01", "dev", "up0", "nud", "permanent"])?;
        ns.route("10.100.0.0/16", "10.202.0.1".parse()?)?;
        // The route lookup answers "forwarding disabled" otherwise, and full NAT never happens.
        let forwarding = ns.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]).status()?;
        anyhow::ensure!(forwarding.success(), "enabling IPv4 forwarding in the fuzz namespace");
        let (frames, frame_rx) = mpsc::channel::<Vec<u8>>();
        let (result_tx, results) = mpsc::channel();
        let (maps_tx, maps_rx) = mpsc::channel();
        let worker = ns.spawn(move || {
            let loaded = (|| -> Result<Fixture> {
                let mut fixture = Fixture::load_hook(hook)?;
                fixture.serve_as(serving()?);
                fixture.apply(SERVICES, &NODE_ADDRS)?;
                fixture.arrive_on(lb::node::preflight::interface_index("up0")?)?;
                Ok(fixture)
            })();
            let mut fixture = match loaded {
                Ok(fixture) => fixture,
                Err(err) => return drop(maps_tx.send(Err(err))),
            };
            let _ = maps_tx.send(Ok(fixture.pins.path().to_path_buf()));
            for frame in frame_rx {
                let _ = result_tx.send(fixture.run_packet(&frame));
            }
        })?;
        let pins = maps_rx.recv().context("the fuzz worker ended")??;
        let maps = lb::dataplane::pinned::PinnedMaps::new(&pins);
        Ok(Self { hook, frames: Some(frames), results, worker: Some(worker), maps, backends: backends()?, ranged: ranged()?, outcomes: Default::default(), last_nat: None, _ns: ns })
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
        let pinned_before = pinned_flow(frame, &self.maps)?;
        self.frames.as_ref().context("harness stopped")?.send(frame.to_vec())?;
        let (verdict, output) = match self.results.recv()? {
            Ok(ran) => ran,
            Err(_) if frame.len() < self.shortest_runnable() => return Ok(None),
            Err(err) => return Err(err.context(format!("a {}-byte frame", frame.len()))),
        };
        let after = self.maps.verdicts()?;
        for (reason, _) in Reason::ALL.iter().zip(before.iter().zip(&after)).filter(|(_, (b, a))| a != b) {
            *self.outcomes.entry(reason.name()).or_default() += 1;
        }
        let seen = Seen { verdict, output: &output, before: &before, after: &after, pinned_before };
        let checked = check(self.hook, frame, &seen, &self.backends, &self.maps).and_then(|()| check_sources(frame, &seen, &self.ranged));
        if checked.is_ok() {
            if let Some((nat_src, backend, proto)) = tuple(&output).filter(|(src, _, _)| src.ip().to_string() == UPLINK_ADDR) {
                self.last_nat = Some((backend, nat_src, proto));
            }
        }
        Ok(Some(checked))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The worker ends with its channel; its fixture unpins before the namespace goes.
        self.frames = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Runs `cases` frames from `seed` through the program of `hook`.
pub fn run(seed: u64, cases: u32, hook: Hook) -> Result<Report> {
    let mut harness = Harness::new(hook)?;
    let mut rng = Rng::new(seed);
    let mut report = Report::default();
    for case in 0..cases {
        let base = base_frame(&mut rng, case, harness.last_nat);
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
    report.outcomes = std::mem::take(&mut harness.outcomes);
    Ok(report)
}

/// A valid frame of one of the kinds the service set can see, from a source unique to the case
/// (so a flow found afterwards was made by this frame), or a backend's reply to the last
/// full-NAT forward (`last_nat`: backend, NAT source, protocol).
fn base_frame(rng: &mut Rng, case: u32, last_nat: Option<(SocketAddr, SocketAddr, u8)>) -> Vec<u8> {
    let sport = 1024 + (case % 60000) as u16;
    let src4 = v4(10, 100 + (case / 60000) as u8, 0, 1);
    let src6 = v6(&format!("fd00:9::{:x}", 1 + case / 60000));
    let flags = [SYN, ACK, TcpFlags { fin: true, ack: true, ..TcpFlags::default() }, TcpFlags { rst: true, ..TcpFlags::default() }];
    let flag = flags[rng.below(flags.len())];
    let payload: Vec<u8> = (0..rng.below(40)).map(|_| rng.next_u64() as u8).collect();
    // Clients outside the ranged services' ranges (10.100.0.0/16, 10.101.0.0/17, fd00:9::/112).
    let (out4, out6) = (v4(10, 101, 128 + (case % 100) as u8, 1), v6(&format!("fd00:9::1:{:x}", case % 60000)));
    let (client4, client6) = if rng.below(2) == 0 { (src4, src6) } else { (out4, out6) };
    match rng.below(18) {
        15 => tcp((client4, sport), (v4(10, 0, 0, 6), 80), flag, &payload),
        16 => udp((client4, sport), (v4(10, 0, 0, 6), 80), &payload),
        17 => tcp((client6, sport), (v6("fd00::86"), 80), flag, &payload),
        13 => tcp((src4, sport), (v4(10, 0, 0, 5), 80), flag, &payload),
        14 => tcp((src4, sport), (v4(10, 201, 0, 2), 10001), flag, &payload),
        10 => tcp((src4, sport), (v4(10, 0, 0, 4), 80), flag, &payload),
        11 => udp((src4, sport), (v4(10, 0, 0, 4), 80), &payload),
        12 => match last_nat {
            Some((backend, nat, 6)) => tcp((backend.ip(), backend.port()), (nat.ip(), nat.port()), ACK, &payload),
            Some((backend, nat, _)) => udp((backend.ip(), backend.port()), (nat.ip(), nat.port()), &payload),
            None => tcp((src4, sport), (v4(10, 0, 0, 4), 80), SYN, &payload),
        },
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
                frame[at] = rng.next_u64() as u8;
            }
        }
        4 => frame = (0..rng.below(128)).map(|_| rng.next_u64() as u8).collect(),
        5 if is_v4(&frame) => set(&mut frame, ETH, 0x40 | rng.below(16) as u8),
        6 => {
            let at = if is_v4(&frame) { ETH + 2 } else { ETH + 4 };
            let len = rng.next_u64() as u16;
            set(&mut frame, at, (len >> 8) as u8);
            set(&mut frame, at + 1, len as u8);
        }
        7 if is_v4(&frame) => {
            set(&mut frame, ETH + 6, rng.next_u64() as u8);
            set(&mut frame, ETH + 7, rng.next_u64() as u8);
        }
        8 => set(&mut frame, l4 + 12, (rng.below(16) as u8) << 4),
        9 => {
            frame.splice(12..12, [0x81, 0x00, 0x00, rng.next_u64() as u8]);
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
        _ => frame.extend((0..rng.below(16)).map(|_| rng.next_u64() as u8)),
    }
    frame
}

/// What one frame's run produced: the verdict, the output frame, the outcome counters before and
/// after, and whether the frame's tuple had a pinned flow before it ran.
struct Seen<'a> {
    verdict: u32,
    output: &'a [u8],
    before: &'a [u64],
    after: &'a [u64],
    pinned_before: bool,
}

fn check(hook: Hook, input: &[u8], seen: &Seen, backends: &BTreeSet<SocketAddr>, maps: &lb::dataplane::pinned::PinnedMaps) -> Result<(), String> {
    let Seen { verdict, output, before, after, pinned_before } = *seen;
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
        Reason::FwdLocal
        | Reason::NotService
        | Reason::NotExposed
        | Reason::NotIpTcpUdp
        | Reason::Malformed
        | Reason::Fragment
        | Reason::IpOptions
        | Reason::TtlExceeded => action(XDP_PASS),
        Reason::NoBackendRejected | Reason::FwdNat | Reason::NatReply => action(XDP_TX),
        // Answered, or dropped when it may not be (a reset, a multicast source).
        Reason::SourceRefused if verdict != action(XDP_DROP) => action(XDP_TX),
        r if r.drops() => action(XDP_DROP),
        r => return Err(format!("outcome {r:?} cannot come from an ingress hook")),
    };
    let redirect = action(XDP_REDIRECT);
    let transmits = matches!(reason, Reason::NoBackendRejected | Reason::FwdNat | Reason::NatReply | Reason::SourceRefused);
    if verdict != allowed && !(transmits && verdict == redirect) {
        return Err(format!("{reason:?} with verdict {verdict}"));
    }
    match reason {
        Reason::FwdLocal => check_forward(input, output, backends),
        Reason::FwdNat => check_nat_forward(input, output, backends),
        Reason::NatReply => check_nat_reply(input, output),
        Reason::NoBackendRejected => check_refusal(input, output),
        Reason::SourceRefused if verdict != action(XDP_DROP) => check_refusal(input, output),
        Reason::NotExposed if !to_internal(input) => Err(format!("not exposed: {}, which is no internal service", describe_tuple(input))),
        _ if verdict == action(XDP_PASS) && output != input => Err(format!("{reason:?}: passed, but the frame was changed")),
        _ if pinned_before => Ok(()),
        _ => match pinned_flow(input, maps) {
            Ok(false) => Ok(()),
            Ok(true) => Err(format!("{reason:?}: a flow was pinned for {}, which was not forwarded", describe_tuple(input))),
            Err(err) => Err(format!("reading the flow table: {err}")),
        },
    }
}

/// Source ranges hold: a forward is for a client the service admits, a refusal for its source
/// one it does not.
fn check_sources(input: &[u8], seen: &Seen, ranged: &[(SocketAddr, u8, lb::desired::Sources)]) -> Result<(), String> {
    let moved = Reason::ALL.iter().zip(seen.before.iter().zip(seen.after)).find(|(_, (b, a))| a != b).map(|(r, _)| *r);
    match (moved, admitted(input, ranged)) {
        (Some(Reason::FwdLocal | Reason::FwdNat), Some(false)) => Err(format!("forwarded {}, a client outside the ranges", describe_tuple(input))),
        (Some(Reason::SourceRefused), Some(true) | None) => Err(format!("refused {} for its source, which is no client the ranges leave out", describe_tuple(input))),
        _ => Ok(()),
    }
}

/// Whether a frame is TCP to one of the `INTERNAL` services.
fn to_internal(frame: &[u8]) -> bool {
    tuple(frame).is_some_and(|(_, dst, proto)| proto == 6 && INTERNAL.iter().any(|s| s.parse::<SocketAddr>().is_ok_and(|s| s == dst)))
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
    checksums_kept(input, output)
}

fn check_nat_forward(input: &[u8], output: &[u8], backends: &BTreeSet<SocketAddr>) -> Result<(), String> {
    let (_, _, proto) = tuple(input).ok_or("forwarded a frame that does not parse")?;
    let (out_src, out_dst, out_proto) = tuple(output).ok_or("the forwarded frame does not parse")?;
    let nat_ports = lb_common::DEFAULT_NAT_PORT_MIN..=lb_common::DEFAULT_NAT_PORT_MAX;
    if out_proto != proto || out_src.ip().to_string() != UPLINK_ADDR || !nat_ports.contains(&out_src.port()) {
        return Err(format!("full NAT from {out_src}, not from {UPLINK_ADDR} and a NAT port"));
    }
    if out_dst.ip().to_string() != REMOTE_BACKEND || !backends.contains(&out_dst) {
        return Err(format!("full NAT to {out_dst}, which is not the remote backend"));
    }
    checksums_kept(input, output)
}

fn check_nat_reply(input: &[u8], output: &[u8]) -> Result<(), String> {
    let (_, _, proto) = tuple(input).ok_or("rewrote a reply that does not parse")?;
    let (out_src, _, out_proto) = tuple(output).ok_or("the rewritten reply does not parse")?;
    if out_proto != proto || out_src.ip().to_string() != "10.0.0.4" || out_src.port() != 80 {
        return Err(format!("a full-NAT reply from {out_src}, not from the service 10.0.0.4:80"));
    }
    checksums_kept(input, output)
}

/// A rewrite keeps checksums as valid as they were (incremental updates neither repair nor
/// break them).
fn checksums_kept(input: &[u8], output: &[u8]) -> Result<(), String> {
    let (before, after) = (checksums_valid(input), checksums_valid(output));
    if before != after {
        return Err(format!("checksums valid before: {before}, after: {after}"));
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

/// Whether the flow table pins the connection of a parsable TCP/UDP frame.
fn pinned_flow(frame: &[u8], maps: &lb::dataplane::pinned::PinnedMaps) -> Result<bool> {
    let Some((src, dst, proto)) = tuple(frame) else { return Ok(false) };
    let (src_addr, family) = lb::desired::ip_bytes(src.ip());
    let (dst_addr, _) = lb::desired::ip_bytes(dst.ip());
    let key = FlowKey { src: src_addr, dst: dst_addr, sport: src.port(), dport: dst.port(), proto, family, _pad: 0 };
    Ok(maps.flow(&key)?.is_some())
}

fn describe_tuple(frame: &[u8]) -> String {
    tuple(frame).map(|(src, dst, _)| format!("{src} → {dst}")).unwrap_or_default()
}

/// A violation as a reproducible line: seed, case, frame in hex.
pub fn describe(seed: u64, hook: Hook, v: &Violation) -> String {
    format!("{hook} seed {seed} case {}: {}\n  frame {}", v.case, v.why, crate::packet::hex(&v.frame))
}
