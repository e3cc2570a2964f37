//! Every map of the data path, in one place. All are BTF-typed so bpftool prints field names;
//! the agent pins them under its pin directory.

use aya_ebpf::{btf_maps::PerCpuHashMap, macros::btf_map};
use lb_common::{IfaceCounters, IfaceKey};

/// Packets and bytes seen per (interface, hook), per CPU.
#[btf_map]
pub static IFACE_STATS: PerCpuHashMap<IfaceKey, IfaceCounters, 1024> = PerCpuHashMap::new();
