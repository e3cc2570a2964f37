//! Desired services → the maps: how the sources merge (`merge`), the minimal ordered writes
//! (`reconcile`), and where each ring goes in the pool (`ring_alloc`).

pub mod merge;
pub mod reconcile;
pub mod ring_alloc;
