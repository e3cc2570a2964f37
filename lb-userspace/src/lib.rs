//! The agent (`lb`): loads and attaches the kernel programs, owns every BPF map write, and
//! reads the pinned maps back for the CLI.

pub mod agent;
pub mod cli;
pub mod dataplane;
pub mod marathon;
pub mod model;
pub mod neighbours;
pub mod node_addrs;
pub mod preflight;
pub mod reconcile;
pub mod report;
pub mod services_file;
pub mod status;
