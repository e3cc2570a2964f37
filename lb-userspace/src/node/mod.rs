//! Facts about this node: privileges, interfaces, cgroups and forwarding (`preflight`), its
//! addresses (`addrs`), and its neighbours' resolution (`neighbours`).

pub mod addrs;
pub mod neighbours;
pub mod preflight;
