//! Read-only views of the pinned maps and the agent's status: the `lb` tables (`report`),
//! `lb explain` (`explain`), how each backend is reached (`reach`), Prometheus metrics and the
//! status page (`metrics`).

pub mod explain;
pub mod metrics;
pub mod reach;
pub mod report;
