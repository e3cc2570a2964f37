//! Every map of the data path, in one place. All are BTF-typed so bpftool prints field names;
//! the agent pins them under its pin directory and sizes them at load time.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    btf_maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    dsr::NodeRange, reasons, ring_pool, sources::SourceRange, BackendInfo, CachedRoute, FibParams, FlowInfo, FlowKey, FlowKey4, IfaceCounters, NodeAddrKey,
    NatReply, PreviousRing, ReplyInfo, ServiceInfo, ServiceKey, ServiceName, Scratch, Settings, SockKey, TrafficCounters, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_SERVICES, DEFAULT_MAX_SOURCE_RANGES, HOOKS_PER_IFACE, MAX_COUNTED_IFINDEX, SERVICE_ADDR_WORDS, SERVICE_PORT_WORDS,
};

/// The agent's runtime settings (UDP idle timeout, NAT ports), one entry written by the agent
/// before any program is attached or replaced.
#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();

const MAX_SERVICES: usize = DEFAULT_MAX_SERVICES as usize;
const RING_POOL: usize = ring_pool::elements(ring_pool::DEFAULT_RING_SLOTS) as usize;
const MAX_BACKENDS: usize = DEFAULT_MAX_BACKENDS as usize;
const MAX_FLOWS: usize = DEFAULT_MAX_FLOWS as usize;
const MAX_SOURCE_RANGES: usize = DEFAULT_MAX_SOURCE_RANGES as usize;
const MAX_NODE_RANGES: usize = lb_common::dsr::MAX_NODE_RANGES as usize;

/// Packets and bytes seen per (interface, hook), per CPU; slot = lb_common::iface_slot.
#[btf_map]
pub static IFACE_STATS: PerCpuArray<IfaceCounters, { (HOOKS_PER_IFACE * MAX_COUNTED_IFINDEX) as usize }> = PerCpuArray::new();
/// Services by (address, port, protocol); an all-zero address is a service port.
#[btf_map]
pub static SERVICES: HashMap<ServiceKey, ServiceInfo, MAX_SERVICES> = HashMap::new();
/// Bitmap of (protocol, port) pairs some service uses: one array lookup rejects most
/// packets that are not for a service (lb_common::service_port_bit).
#[btf_map]
pub static SERVICE_PORTS: Array<u64, { SERVICE_PORT_WORDS as usize }> = Array::new();
/// Addresses services are served on, hashed to one bit each (lb_common::service_addr_bit).
#[btf_map]
pub static SERVICE_ADDRS: Array<u64, { SERVICE_ADDR_WORDS as usize }> = Array::new();
/// Names of services by id (agent metadata for the CLI and restarts; not read by programs).
#[btf_map]
pub static SERVICE_NAMES: Array<ServiceName, MAX_SERVICES> = Array::new();
/// The groups each service belongs to, by service id: a group word (lb_common::exposure).
#[btf_map]
pub static SERVICE_GROUPS: Array<u32, MAX_SERVICES> = Array::new();
/// How many source ranges each service has, by service id (0: every client is allowed, and
/// `SOURCE_RANGES` is not read).
#[btf_map]
pub static SERVICE_SOURCES: Array<u32, MAX_SERVICES> = Array::new();
/// Every service's source ranges: (service id, family, prefix) → 1 (lb_common::sources).
#[btf_map]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u32, MAX_SOURCE_RANGES> = LpmTrie::new();
/// This node's addresses, where service ports are served → the groups exposed on each (a
/// group word, lb_common::exposure).
#[btf_map]
pub static NODE_ADDRS: HashMap<NodeAddrKey, u32, 256> = HashMap::new();
/// Pool of Maglev rings of u32 backend ids, two ids per u64 element (layout:
/// lb_common::ring_pool); a service points at its ring (`ring_start`, `ring_size`).
/// Memory-mappable: the agent sees the pool as one u32 array and writes a ring with one copy
/// instead of one syscall per slot.
#[btf_map]
pub static RINGS: Array<u64, RING_POOL, { BPF_F_MMAPABLE as usize }> = Array::new();
/// The ring each service had before its last change, while it is kept (by service id; see
/// lb_common::PreviousRing): the second chance of a DSR packet (crate::dsr).
#[btf_map]
pub static PREVIOUS_RINGS: Array<PreviousRing, MAX_SERVICES> = Array::new();
/// Backends by id (id 0 unused). Memory-mappable: the agent and `lb` read all of it with one
/// copy (a metrics scrape reads every backend; one syscall per element cost ~1 µs each).
#[btf_map]
pub static BACKENDS: Array<BackendInfo, MAX_BACKENDS, { BPF_F_MMAPABLE as usize }> = Array::new();
/// IPv6 connection (as the client sent it) → the backend it is pinned to.
#[btf_map]
pub static FLOWS: LruHashMap<FlowKey, FlowInfo, MAX_FLOWS> = LruHashMap::new();
/// IPv4 connection → the backend it is pinned to (a 16-byte key). Keyed by the client's address
/// and port alone (`FlowKey4::client`) when that client endpoint has no other connection, which
/// replies find without an entry of their own; else by the whole connection.
#[btf_map]
pub static FLOWS4: LruHashMap<FlowKey4, FlowInfo, MAX_FLOWS> = LruHashMap::new();
/// Non-zero once `FLOWS4` may hold connection-keyed entries (a client address and port with
/// two connections at once, or flows of layout 1): only then do the programs look them and
/// `REPLIES4` up, so a flow or reply that misses its client key costs one lookup, not two.
/// Set by the programs (and by an agent adopting layout-1 maps), never cleared.
#[btf_map]
pub static TUPLE_FLOWS4: Array<u32, 1> = Array::new();
/// Reply direction (backend → client) → the service address to restore as the source.
#[btf_map]
pub static REPLIES: LruHashMap<FlowKey, ReplyInfo, MAX_FLOWS> = LruHashMap::new();
/// The same for IPv4 replies (a 16-byte key).
#[btf_map]
pub static REPLIES4: LruHashMap<FlowKey4, ReplyInfo, MAX_FLOWS> = LruHashMap::new();
/// Local socket (cookie) + backend → the service address getpeername()/recvmsg() must show.
#[btf_map]
pub static SOCK_REPLIES: LruHashMap<SockKey, ReplyInfo, MAX_FLOWS> = LruHashMap::new();
/// Full-NAT replies: (backend → node address, NAT port) → the client and service to restore.
#[btf_map]
pub static NAT_REPLIES: LruHashMap<FlowKey, NatReply, MAX_FLOWS> = LruHashMap::new();
/// The route to each backend (by backend id) as last looked up, re-used for a short while
/// (lb_common::CachedRoute).
#[btf_map]
pub static ROUTES: Array<CachedRoute, MAX_BACKENDS> = Array::new();
/// The uplinks (ifindex → the groups exposed on it, a group word: lb_common::exposure): a
/// backend routed out of one of these is on another node.
#[btf_map]
pub static UPLINKS: HashMap<u32, u32, 64> = HashMap::new();
/// The backend nodes this node sends DSR flows to (`--dsr-nodes`): (family, prefix) → 1.
#[btf_map]
pub static DSR_NODES: LpmTrie<NodeRange, u32, MAX_NODE_RANGES> = LpmTrie::new();
/// The balancer nodes whose encapsulated packets this node takes out (`--decap-from`).
#[btf_map]
pub static DECAP_FROM: LpmTrie<NodeRange, u32, MAX_NODE_RANGES> = LpmTrie::new();
/// Per-CPU scratch for bpf_fib_lookup parameters (kept off the BPF stack).
#[btf_map]
pub static FIB_SCRATCH: PerCpuArray<FibParams, 1> = PerCpuArray::new();
/// Per-CPU scratch for the XDP program's map keys and values under construction.
#[btf_map]
pub static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();
/// Per-service packets, bytes and new flows, per CPU, by service id.
#[btf_map]
pub static SERVICE_STATS: PerCpuArray<TrafficCounters, MAX_SERVICES> = PerCpuArray::new();
/// New flows refused for their source (Reason::SourceRefused), per CPU, by service id.
#[btf_map]
pub static SOURCE_REFUSALS: PerCpuArray<u64, MAX_SERVICES> = PerCpuArray::new();
/// Per-backend packets, bytes and new flows, per CPU, by backend id.
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters, MAX_BACKENDS> = PerCpuArray::new();
/// Packets per outcome (slot = lb_common::Reason as u32), per CPU.
#[btf_map]
pub static VERDICTS: PerCpuArray<u64, { reasons::SLOTS as usize }> = PerCpuArray::new();

/// Whether `client` is in one of service `service_id`'s source ranges: one trie walk, its key
/// built in the scratch area (no scratch: not allowed).
#[inline(always)]
pub fn in_source_ranges(service_id: u32, family: u8, client: &[u8; 16]) -> bool {
    let Ok(s) = scratch() else { return false };
    s.source_key.set_client(service_id, family, client);
    // SAFETY: SourceRangeKey is laid out as Key<SourceRange> (a u32, then 24 bytes of byte
    // fields: no padding in either, size asserted in lb_common::sources), and the reference
    // lives only for this lookup.
    let key = unsafe { &*(&raw const s.source_key).cast::<Key<SourceRange>>() };
    SOURCE_RANGES.get(key).is_some()
}

/// Whether `addr` (of `family`) is in one of the node ranges of `ranges` (`DSR_NODES` or
/// `DECAP_FROM`): one trie walk, its key built in the scratch area.
#[inline(always)]
pub fn in_node_ranges(ranges: &LpmTrie<NodeRange, u32, MAX_NODE_RANGES>, family: u8, addr: &[u8; 16]) -> bool {
    let Ok(s) = scratch() else { return false };
    s.node_key.set_addr(family, addr);
    // SAFETY: NodeRangeKey is laid out as Key<NodeRange> (a u32, then 20 bytes of byte fields:
    // no padding, sizes asserted in lb_common::dsr), and the reference lives only for this lookup.
    let key = unsafe { &*(&raw const s.node_key).cast::<Key<NodeRange>>() };
    ranges.get(key).is_some()
}

/// The agent's runtime settings (an array's only entry: always present).
#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// This CPU's scratch area (map keys and values are built there, not on the BPF stack); any
/// stage may use it, one at a time.
#[inline(always)]
pub fn scratch() -> Result<&'static mut Scratch, lb_common::Reason> {
    let ptr = SCRATCH.get_ptr_mut(0).ok_or(lb_common::Reason::FlowTableFull)?;
    // SAFETY: a per-CPU map value; a program run on this CPU is its only user.
    Ok(unsafe { &mut *ptr })
}
