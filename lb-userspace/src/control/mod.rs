//! Desired services → the maps: how the sources merge (`merge`), where each is served
//! (`exposure`), the minimal ordered writes
//! (`reconcile`), and where each ring goes in the pool (`ring_alloc`).

pub mod exposure;
pub mod merge;
pub mod reconcile;
pub mod ring_alloc;
