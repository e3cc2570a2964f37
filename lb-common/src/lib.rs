//! Types and pure logic shared by the kernel programs (lb-ebpf) and the agent (lb).
//!
//! Every BPF map key and value lives here: `#[repr(C)]`, explicit padding, a size assert,
//! and no `Option`/`bool`/enum fields, so both sides agree on the bytes and bpftool can
//! print them with field names from BTF. The decision code (flow hash, Maglev, checksums)
//! lives here too, so it is unit-tested on the host.
#![no_std]

pub mod csum;
pub mod dsr;
pub mod exposure;
pub mod hash;
pub mod liveness;
mod hook;
pub mod maglev;
pub mod maps;
pub mod nat_state;
pub mod names;
pub mod reasons;
pub mod refusal;
pub mod ring_pool;
pub mod select;
pub mod sources;

pub use hook::Hook;
pub use maps::*;
pub use reasons::Reason;
