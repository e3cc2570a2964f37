//! Facts about this node: privileges, interfaces, cgroups and forwarding (`preflight`), its
//! addresses (`addrs`), where it serves services (`serving`), and its neighbours' resolution
//! (`neighbours`).

pub mod addrs;
pub mod neighbours;
pub mod preflight;
pub mod serving;
