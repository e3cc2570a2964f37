//! Test support for the load balancer: everything an end-to-end or packet test needs, each piece
//! cleaning up after itself on every exit path (Drop runs on panics too).

pub mod agent;
pub mod bench;
pub mod bench_report;
pub mod bird;
pub mod certs;
pub mod cluster;
pub mod fixture;
pub mod fuzz;
pub mod marathon_cluster;
pub mod marathon_server;
pub mod netns;
pub mod packet;
pub mod rng;
pub mod servers;

use std::sync::atomic::{AtomicU32, Ordering};

/// A short name unique to this process and call, e.g. `lbt4f2a3`. Kept short because interface
/// names are limited to 15 bytes and get suffixes.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() & 0xffff)
}

/// The command line of a test binary (benchmarks, fuzzer, soak), parsed by clap. A usage error
/// is printed and exits 64 (EX_USAGE, as `lb` does); `--help` prints and exits 0.
pub fn command_line<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|err| {
        let _ = err.print();
        std::process::exit(if err.use_stderr() { 64 } else { 0 });
    })
}
