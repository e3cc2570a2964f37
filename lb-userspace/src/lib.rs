//! The agent (`lb`): loads and attaches the kernel programs, owns every BPF map write, and
//! reads the pinned maps back for the CLI.

pub mod cli;
pub mod dataplane;
pub mod preflight;
