//! Map keys and values. Layouts are checked at compile time. Padding is spelled as scalar
//! fields, not byte arrays: zeroing a byte array in the BPF build becomes a byte-loop memset call.
//!
//! Addresses are `[u8; 16]` in network byte order with an explicit `family`: an IPv4 address
//! occupies the first 4 bytes and the rest is zero. Ports are in host byte order. Both choices make
//! bpftool's BTF dump readable (byte arrays and plain port numbers) and let one map serve both
//! families.

use crate::Hook;

/// `family` values.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// `proto` values (IANA protocol numbers).
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// TCP header flags the programs read or write.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Counter slots per interface, one per hook.
pub const HOOKS_PER_IFACE: u32 = Hook::ALL.len() as u32;

/// Interface indexes below this are counted in `IFACE_STATS` (a per-CPU array: one slot per
/// interface and hook, so counting costs an array lookup, not a hash lookup).
pub const MAX_COUNTED_IFINDEX: u32 = 4096;

/// The `IFACE_STATS` slot of (ifindex, hook), if the interface is within the counted range.
#[inline(always)]
pub fn iface_slot(ifindex: u32, hook: Hook) -> Option<u32> {
    (ifindex < MAX_COUNTED_IFINDEX).then(|| ifindex * HOOKS_PER_IFACE + hook as u32)
}

/// (ifindex, hook) of an `IFACE_STATS` slot.
pub fn iface_of_slot(slot: u32) -> (u32, Hook) {
    // The remainder is below HOOKS_PER_IFACE, which is the number of hooks.
    (slot / HOOKS_PER_IFACE, Hook::ALL[(slot % HOOKS_PER_IFACE) as usize])
}

/// Value of `IFACE_STATS` (one per CPU and slot).
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

/// An IPv4 address in the 16-byte address field (first 4 bytes, rest zero).
pub const fn v4_bytes(octets: [u8; 4]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0] = octets[0];
    bytes[1] = octets[1];
    bytes[2] = octets[2];
    bytes[3] = octets[3];
    bytes
}

/// Key of `SERVICES`: what a client connects to. A service port (served on every node address)
/// has an all-zero `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Index into `SERVICE_STATS`.
    pub service_id: u32,
    /// The service's live ring in the `RINGS` pool: `ring_size` slots (a prime, sized from the
    /// backends) from slot `ring_start` (layout: crate::ring_pool). The agent fills a free ring
    /// and then points these fields at it: the swap is one map update, so no packet ever sees
    /// half a ring.
    pub ring_start: u32,
    pub ring_size: u32,
    /// Backends that take new flows; 0 means new flows get the "no live backend" verdict (and
    /// the service has no ring).
    pub active_backends: u32,
}

/// Value of `BACKENDS` (an array indexed by backend id; id 0 is never used).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    /// `BACKEND_*` state.
    pub state: u8,
    /// Bumped whenever the id is given to a different backend, so flows pinned to the old one
    /// notice it is gone.
    pub generation: u32,
    /// The service this backend entry belongs to (one entry per service membership).
    pub service_id: u32,
    /// Maglev weight as configured (informational for the kernel: the ring encodes it).
    pub weight: u32,
}

/// Value of `SERVICE_NAMES` (by service id): the agent's name for a service, NUL-padded UTF-8.
/// Not read by the programs; it lets `lb services` and a restarted agent recover names.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    pub name: [u8; SERVICE_NAME_LEN],
}

pub const SERVICE_NAME_LEN: usize = 128;

impl Default for ServiceName {
    fn default() -> Self {
        Self { name: [0; SERVICE_NAME_LEN] }
    }
}

/// `BackendInfo::state` values.
pub const BACKEND_UNUSED: u8 = 0;
pub const BACKEND_ACTIVE: u8 = 1;
/// Takes no new flows, keeps its established ones.
pub const BACKEND_DRAINING: u8 = 2;

/// Key of `FLOWS4` and `REPLIES4`: an IPv4 connection as the packet carries it. IPv4 flows have their own map
/// because the kernel hashes the whole key on every lookup: 16 bytes here against `FlowKey`'s
/// 40 (jhash of the 40-byte key was ~30% of an established packet's cost, docs/performance.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: u8,
    pub _pad2: u16,
}

impl FlowKey4 {
    /// The key of a client-keyed entry of `FLOWS4`: the client's address and port alone, which a
    /// reply carries as its destination, so one entry serves both directions (no reply entry
    /// per flow). The client's other simultaneous connections from that address and port are
    /// keyed by the whole tuple (and have reply entries).
    #[inline(always)]
    pub fn client(addr: [u8; 4], port: u16, proto: u8) -> Self {
        FlowKey4 { src: addr, dst: [0; 4], sport: port, dport: 0, proto, _pad: 0, _pad2: 0 }
    }

    /// Whether this is a client key (no destination port: every connection has one).
    pub fn is_client_key(&self) -> bool {
        self.dport == 0
    }

    /// The same connection as a `FlowKey` (addresses in the first 4 bytes, family 4).
    pub fn widen(&self) -> FlowKey {
        FlowKey {
            src: v4_bytes(self.src),
            dst: v4_bytes(self.dst),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            family: FAMILY_V4,
            _pad: 0,
        }
    }
}

impl FlowKey {
    /// The same IPv4 connection as a `FlowKey4` (the key of `FLOWS4`).
    pub fn narrow(&self) -> FlowKey4 {
        FlowKey4 {
            src: [self.src[0], self.src[1], self.src[2], self.src[3]],
            dst: [self.dst[0], self.dst[1], self.dst[2], self.dst[3]],
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// Key of `FLOWS` and `REPLIES` (IPv6 connections), and of `NAT_REPLIES`: a connection as the
/// packet carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}

/// Value of `FLOWS`: the backend a connection is pinned to, and how it is reached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowInfo {
    pub backend_id: u32,
    pub backend_generation: u32,
    /// Monotonic time of the last packet (bpf_ktime_get_ns), for UDP idle timeouts.
    pub last_seen_ns: u64,
    /// `FLOW_LOCAL` or `FLOW_NAT`.
    pub kind: u8,
    pub _pad: u8,
    /// Full NAT only: the source port this node uses towards the backend.
    pub nat_port: u16,
    /// A client-keyed IPv4 entry (`FlowKey4::client`): the service port the client connected
    /// to. 0 in a connection-keyed entry (no service port is 0).
    pub service_port: u16,
    pub _pad2: u16,
    /// Two addresses in one field, read and written through the methods below: full NAT's
    /// source address towards the backend (`nat_source`: all 16 bytes for IPv6, bytes 0..4 for
    /// IPv4) and, in a client-keyed IPv4 entry, the service address its connection is to
    /// (`v4_service`: bytes 4..8). Shared so that the entry stays 40 bytes.
    pub addrs: [u8; 16],
}

impl FlowInfo {
    /// Marks a client-keyed IPv4 entry with the service (address, port) its connection is to.
    #[inline(always)]
    pub fn set_v4_service(&mut self, addr: &[u8; 16], port: u16) {
        self.addrs[4] = addr[0];
        self.addrs[5] = addr[1];
        self.addrs[6] = addr[2];
        self.addrs[7] = addr[3];
        self.service_port = port;
    }

    /// Whether this client-keyed IPv4 entry is the connection to (`addr`, `port`) (the client's
    /// address and port are its key): its other connections are keyed by the whole tuple.
    #[inline(always)]
    pub fn is_v4_connection_to(&self, addr: &[u8; 16], port: u16) -> bool {
        self.v4_service() == Some(([addr[0], addr[1], addr[2], addr[3]], port))
    }

    /// The service (address, port) of a client-keyed IPv4 entry, if this is one.
    #[inline(always)]
    pub fn v4_service(&self) -> Option<([u8; 4], u16)> {
        let a = &self.addrs;
        (self.service_port != 0).then_some(([a[4], a[5], a[6], a[7]], self.service_port))
    }

    /// The full-NAT source address of an entry of `family` (an IPv4 one without the service
    /// address a client-keyed entry keeps beside it).
    #[inline(always)]
    pub fn nat_source(&self, family: u8) -> [u8; 16] {
        if family == FAMILY_V4 {
            v4_bytes([self.addrs[0], self.addrs[1], self.addrs[2], self.addrs[3]])
        } else {
            self.addrs
        }
    }

    /// Sets the full-NAT source address (of either family: an IPv4 one is in bytes 0..4 of
    /// `src`, the rest zero) of an entry whose service address is set after it.
    #[inline(always)]
    pub fn set_nat_source(&mut self, src: &[u8; 16]) {
        self.addrs = *src;
    }

    /// Forgets the service address of what was to be a client-keyed IPv4 entry (now keyed by
    /// its tuple), keeping its full-NAT source.
    #[inline(always)]
    pub fn clear_v4_service(&mut self, family: u8) {
        self.service_port = 0;
        self.addrs = self.nat_source(family);
    }
}

/// `FlowInfo::kind`: the backend is reached through this node's stack (destination NAT only,
/// client address preserved).
pub const FLOW_LOCAL: u8 = 0;
/// `FlowInfo::kind`: the backend is on another node, reached back out of the uplink with source
/// and destination rewritten (full NAT).
pub const FLOW_NAT: u8 = 1;
/// `FlowInfo::kind`: the backend is on another node that decapsulates, reached back out of the
/// uplink inside the encapsulation, the packet itself unchanged (crate::dsr); its replies go
/// to the client directly.
pub const FLOW_DSR: u8 = 2;

/// Value of `NAT_REPLIES` (key: the backend's reply, backend → node address and NAT port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReply {
    pub client_addr: [u8; 16],
    pub service_addr: [u8; 16],
    pub client_port: u16,
    pub service_port: u16,
    /// When the mapping last carried a packet and whether its connection closed: see
    /// [`crate::nat_state`] (the agent frees the NAT port once this says so).
    pub state: u32,
}

/// Value of `ROUTES` (by backend id): the route to a backend as the last FIB lookup found it.
/// New flows and full-NAT packets re-use it for `ROUTE_TTL_NS` instead of a lookup each (a
/// FIB lookup was ~120 ns of a new flow's cost, docs/performance.md §5), so a route or
/// neighbour change reaches them within that time; an unresolved neighbour is never cached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedRoute {
    /// When it was looked up (bpf_ktime_get_ns); 0: never.
    pub looked_up_ns: u64,
    /// The generation of the backend id it was looked up for: an id given to another backend
    /// does not find it.
    pub generation: u32,
    /// The interface the looked-up packet arrived on (an input of the lookup).
    pub ingress: u32,
    /// `hop.ifindex` 0: through this node's stack (`Route::Local`); else the uplink it leaves by.
    pub hop: UplinkHop,
}

/// A route out of an uplink as a FIB lookup found it: what a frame sent that way is given.
/// Programs pass it by reference (into `ROUTES` or `Scratch`), not by value: the 32 bytes
/// would not fit beside the rest of a new full-NAT flow on the 512-byte BPF stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// The source address the route gives (full NAT's source).
    pub src: [u8; 16],
}

/// How long a `CachedRoute` is used: short enough that a changed route or next hop is followed
/// within a tenth of a second (also with no agent running), long enough that a connection storm
/// to a backend pays one lookup per tenth of a second instead of one per connection.
pub const ROUTE_TTL_NS: u64 = 100_000_000;

/// `struct bpf_fib_lookup` (include/uapi/linux/bpf.h), the value of the per-CPU `FIB_SCRATCH`
/// map: the route lookup's parameters live there instead of on the 512-byte BPF stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibParams {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u8,
    pub l4_protocol: u8,
    pub sport: u16,
    pub dport: u16,
    /// In: total length; out: MTU.
    pub tot_len: u16,
    /// In: ingress ifindex; out: egress ifindex.
    pub ifindex: u32,
    pub flowinfo: u32,
    /// IPv4 in the first 4 bytes; with BPF_FIB_LOOKUP_SRC the source is filled in.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub tbid: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Value of the per-CPU `SCRATCH` map: the ingress programs' large temporaries (map keys and
/// values under construction, a refusal frame), kept off the 512-byte BPF stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch {
    pub flow_key: FlowKey,
    pub flow_key4: FlowKey4,
    pub reply_key: FlowKey,
    pub reply_key4: FlowKey4,
    pub flow: FlowInfo,
    pub reply: ReplyInfo,
    pub nat_reply: NatReply,
    /// The answer of the last uncached route lookup out of an uplink (to a full-NAT reply's
    /// client, or one the route cache then copies).
    pub looked_up_hop: UplinkHop,
    /// A refusal (lb_common::refusal) built before it replaces the frame: room for the longest.
    pub refusal: [u8; REFUSAL_ROOM],
    /// A `SOURCE_RANGES` lookup key (one client of one service).
    pub source_key: crate::sources::SourceRangeKey,
    pub _pad: u32,
    /// A `DSR_NODES` / `DECAP_FROM` lookup key.
    pub node_key: crate::dsr::NodeRangeKey,
    /// The outer headers of a DSR packet (crate::dsr) before they are written in front of it:
    /// room for the longest (IPv6).
    pub outer: [u8; OUTER_ROOM],
    /// The local backend a decapsulated DSR packet names (its outer destination).
    pub decap_backend: [u8; 16],
    /// The backend id a DSR packet's second chance goes to.
    pub second_chance: u32,
    /// The local backend's port a decapsulated DSR packet names.
    pub decap_port: u16,
    pub _pad3: u16,
}

/// `Scratch::outer`'s size: the IPv6 outer headers, rounded up to whole words.
pub const OUTER_ROOM: usize = crate::dsr::OUTER6_LEN.next_multiple_of(8);

/// Value of `PREVIOUS_RINGS` (by service id): the ring a service had before its last change,
/// kept in the pool for a while, so a node that receives a mid-flow packet for a connection it
/// does not hold can send it once to the backend the previous ring chose (the second chance,
/// lb-ebpf/src/dsr.rs). `ring_size` 0: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreviousRing {
    pub ring_start: u32,
    pub ring_size: u32,
    /// Until when (bpf_ktime_get_ns) it is used; the agent frees it after that.
    pub until_ns: u64,
}

/// `Scratch::refusal`'s size: the longest refusal (ICMPv6), rounded up to whole words.
pub const REFUSAL_ROOM: usize = crate::refusal::ICMP6_LEN.next_multiple_of(8);

/// Version of what the pinned maps' contents mean, beyond their sizes (which are checked
/// against the object): bumped whenever a field is reinterpreted, so an agent never adopts maps
/// whose entries it would misread. 1: rings of per-service sizes (`ring_start`, `ring_size`).
/// 2: client-keyed IPv4 flows (`FlowKey4::client`), which agents of layout 1 would not find.
pub const LAYOUT_VERSION: u32 = 2;
/// Earlier layouts this one reads as they are: layout 1's IPv4 flows are all connection-keyed,
/// which the programs still look up once `TUPLE_FLOWS4` says such entries may exist.
pub const ADOPTABLE_LAYOUTS: [u32; 2] = [1, LAYOUT_VERSION];
/// The first layout whose IPv4 flows are keyed by their client (`FlowKey4::client`).
pub const CLIENT_KEYED_LAYOUT: u32 = 2;

/// Default full-NAT source ports: above Linux's default ephemeral range (32768–60999), so NAT'd
/// flows never collide with the node's own connections.
pub const DEFAULT_NAT_PORT_MIN: u16 = 61000;
pub const DEFAULT_NAT_PORT_MAX: u16 = 65535;

/// The one entry of `SETTINGS`: the agent's runtime settings, read by the programs on every new
/// flow (and NAT reply check) rather than fixed at load time, so a restarted agent's new
/// `--nat-ports`/`--udp-timeout` take effect with one map write, and `lb status` and bpftool
/// read the values in force from the pin.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`LAYOUT_VERSION`] of the agent that created the maps: what their contents mean.
    pub layout: u32,
    /// UDP port of the DSR encapsulation (crate::dsr), and whether this node encapsulates and
    /// decapsulates (`dsr::ENCAP`, `dsr::DECAP`); all zero: neither.
    pub dsr_port: u16,
    pub dsr_flags: u16,
    /// Idle time after which a UDP flow is re-balanced.
    pub udp_timeout_ns: u64,
    /// Source ports new full-NAT flows get (inclusive); 0 = not configured yet: no full NAT.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Ports on which replies to full-NAT flows are looked up: the hull of every NAT range used
    /// since the maps were created, so flows of an earlier range keep working after a change.
    pub nat_reply_port_min: u16,
    pub nat_reply_port_max: u16,
}

impl Settings {
    pub fn new(udp_timeout_secs: u64, (min, max): (u16, u16), (dsr_port, dsr_flags): (u16, u16), previous: Option<&Settings>) -> Self {
        let (mut reply_min, mut reply_max) = (min, max);
        if let Some(prev) = previous.filter(|p| p.nat_reply_port_min != 0) {
            reply_min = reply_min.min(prev.nat_reply_port_min);
            reply_max = reply_max.max(prev.nat_reply_port_max);
        }
        Self {
            layout: LAYOUT_VERSION,
            dsr_port,
            dsr_flags,
            udp_timeout_ns: udp_timeout_secs.saturating_mul(1_000_000_000),
            nat_port_min: min,
            nat_port_max: max,
            nat_reply_port_min: reply_min,
            nat_reply_port_max: reply_max,
        }
    }
}

/// Value of `REPLIES` and `REPLIES4`: what the reply's source must be rewritten back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyInfo {
    pub service_addr: [u8; 16],
    pub service_port: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

/// Words of the `SERVICE_PORTS` bitmap: one bit per (protocol, port) that some service uses,
/// 1024 u64 words per protocol (TCP first, then UDP).
pub const SERVICE_PORT_WORDS: u32 = 2048;

/// The `SERVICE_PORTS` word and bit of (port, proto): a packet whose bit is clear is not for any
/// service, which one array lookup tells (most traffic on a node is not balanced).
#[inline(always)]
pub fn service_port_bit(port: u16, proto: u8) -> (u32, u64) {
    let base = if proto == PROTO_UDP { 1024 } else { 0 };
    (base + (port as u32 >> 6), 1u64 << (port & 63))
}

/// Words of the `SERVICE_ADDRS` filter: bits for hashes of the addresses services are served
/// on (VIPs and node addresses), 63 per word. A packet to a service port whose destination's
/// bit is clear is for no service: one array lookup instead of the flow, service and
/// node-address lookups. Bits are shared by hash collisions (harmless: such a packet takes the
/// full path).
pub const SERVICE_ADDR_WORDS: u32 = 1024;

/// Bit 0 of every `SERVICE_ADDRS` word: set once the agent has written the whole filter, so the
/// word a packet looks up also says whether to trust it. While clear (maps made by an agent
/// without the filter) the programs do not filter.
pub const SERVICE_ADDRS_COMPLETE: u64 = 1;

/// The `SERVICE_ADDRS` word and bit of an address (never bit 0).
#[inline(always)]
pub fn service_addr_bit(addr: &[u8; 16], family: u8) -> (u32, u64) {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let mixed = word(0) ^ word(4).rotate_left(8) ^ word(8).rotate_left(16) ^ word(12).rotate_left(24) ^ family as u32;
    let h = crate::hash::mix32(mixed);
    (h % SERVICE_ADDR_WORDS, 1u64 << (1 + (h / SERVICE_ADDR_WORDS) % 63))
}

/// Key of `NODE_ADDRS`: an address of this node, where service ports are served.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: u8,
    pub _pad2: u16,
}

/// Default limits (all configurable at load time): 10,000 apps of 3 tasks, each app with a
/// service port and a VIP (20,000 services, 60,000 backend entries), with kernel map memory
/// under 128 MiB on a 2-CPU node, flows included (README: memory). Per-CPU maps grow with the
/// CPUs: ~2.4 MiB per CPU at these limits.
pub const DEFAULT_MAX_SERVICES: u32 = 32768;
pub const DEFAULT_MAX_BACKENDS: u32 = 65536;
/// Source ranges of all services together (`SOURCE_RANGES`, an LPM trie: memory is taken per
/// range stored, ~100 B each, not for the whole capacity).
pub const DEFAULT_MAX_SOURCE_RANGES: u32 = 65536;
/// Per flow table; ~760 B of kernel memory per flow across the six tables.
pub const DEFAULT_MAX_FLOWS: u32 = 100_000;
pub const DEFAULT_UDP_TIMEOUT_SECS: u64 = 120;

/// Key of `SOCK_REPLIES`: a local socket (by cookie) and the backend the socket hooks sent it to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    pub _pad2: u32,
}

/// Value of `SERVICE_STATS` and `BACKEND_STATS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl TrafficCounters {
    pub fn add(&mut self, other: &Self) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
    }
}

const _: () = assert!(core::mem::size_of::<IfaceCounters>() == 16);
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 16);
const _: () = assert!(core::mem::size_of::<BackendInfo>() == 32);
const _: () = assert!(core::mem::size_of::<ServiceName>() == SERVICE_NAME_LEN);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowInfo>() == 40);
const _: () = assert!(core::mem::size_of::<NatReply>() == 40);
const _: () = assert!(core::mem::size_of::<FibParams>() == 64);
const _: () = assert!(core::mem::size_of::<CachedRoute>() == 48);
const _: () = assert!(core::mem::size_of::<Scratch>() == 248 + REFUSAL_ROOM + 32 + 24 + OUTER_ROOM + 24);
const _: () = assert!(core::mem::size_of::<UplinkHop>() == 32);
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);
const _: () = assert!(core::mem::size_of::<ReplyInfo>() == 24);
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 24);
const _: () = assert!(core::mem::size_of::<NodeAddrKey>() == 20);
const _: () = assert!(core::mem::size_of::<SockKey>() == 32);
const _: () = assert!(core::mem::size_of::<Settings>() == 24);
const _: () = assert!(core::mem::size_of::<PreviousRing>() == 16);

#[cfg(feature = "user")]
mod pod {
    /// Marks map keys and values as plain old data for aya.
    macro_rules! pod {
        ($($ty:ty),+ $(,)?) => {$(
            // SAFETY: aya copies these to and from the kernel as raw bytes. Each is #[repr(C)]
            // with only integer and byte-array fields, so every bit pattern is a valid value,
            // and every padding byte is a named field (the size asserts above fail otherwise),
            // so no uninitialised byte is ever read.
            unsafe impl aya::Pod for $ty {}
        )+};
    }

    pod!(
        super::IfaceCounters,
        super::Settings,
        super::ServiceKey,
        super::ServiceInfo,
        super::BackendInfo,
        super::FlowKey,
        super::FlowKey4,
        super::FlowInfo,
        super::ReplyInfo,
        super::TrafficCounters,
        super::NodeAddrKey,
        super::SockKey,
        super::NatReply,
        super::FibParams,
        super::Scratch,
        super::ServiceName,
        super::PreviousRing,
        crate::sources::SourceRange,
        crate::dsr::NodeRange,
    );
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

    #[test]
    fn nat_reply_ports_cover_every_range_used() {
        let first = Settings::new(120, (61000, 65535), (0, 0), None);
        assert_eq!((first.nat_reply_port_min, first.nat_reply_port_max), (61000, 65535));
        assert_eq!(first.udp_timeout_ns, 120_000_000_000);
        let moved = Settings::new(30, (40000, 41000), (0, 0), Some(&first));
        assert_eq!((moved.nat_port_min, moved.nat_port_max), (40000, 41000));
        assert_eq!((moved.nat_reply_port_min, moved.nat_reply_port_max), (40000, 65535));
        // An all-zero entry (maps created by this start) is no earlier range.
        let fresh = Settings::new(30, (40000, 41000), (0, 0), Some(&Settings::default()));
        assert_eq!((fresh.nat_reply_port_min, fresh.nat_reply_port_max), (40000, 41000));
    }

    #[test]
    fn iface_slots_round_trip_every_hook() {
        for hook in Hook::ALL {
            let slot = iface_slot(7, hook).unwrap();
            assert_eq!(iface_of_slot(slot), (7, hook));
        }
        assert_eq!(iface_slot(MAX_COUNTED_IFINDEX, Hook::TcEgress), None);
    }

    #[test]
    fn service_addr_bits_stay_off_the_complete_flag() {
        for last in 0..=255u8 {
            let (word, bit) = service_addr_bit(&crate::v4_bytes([10, 0, 0, last]), FAMILY_V4);
            assert!(word < SERVICE_ADDR_WORDS);
            assert_ne!(bit, SERVICE_ADDRS_COMPLETE, "10.0.0.{last}");
        }
        let v4 = service_addr_bit(&crate::v4_bytes([10, 0, 0, 1]), FAMILY_V4);
        assert_ne!(v4, service_addr_bit(&crate::v4_bytes([10, 0, 0, 2]), FAMILY_V4));
    }

    #[test]
    fn service_port_bits_are_distinct_per_port_and_protocol() {
        assert_eq!(service_port_bit(0, PROTO_TCP), (0, 1));
        assert_eq!(service_port_bit(65535, PROTO_TCP), (1023, 1 << 63));
        assert_eq!(service_port_bit(80, PROTO_UDP), (1025, 1 << 16));
        assert!(service_port_bit(65535, PROTO_UDP).0 < SERVICE_PORT_WORDS);
    }

    #[test]
    fn v4_addresses_fill_the_first_four_bytes() {
        let a = v4_bytes([10, 0, 0, 1]);
        assert_eq!(a[..4], [10, 0, 0, 1]);
        assert!(a[4..].iter().all(|&b| b == 0));
    }
}
