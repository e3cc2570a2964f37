//! Types and pure logic shared by the kernel programs (lb-ebpf) and the agent (lb).
//!
//! Every BPF map key and value lives here: `#[repr(C)]`, explicit padding, a size assert,
//! and no `Option`/`bool`/enum fields, so both sides agree on the bytes and bpftool can
//! print them with field names from BTF.
#![no_std]

pub mod maps;
pub mod names;

pub use maps::*;
