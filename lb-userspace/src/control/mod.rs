//! Desired services → the maps: how the sources merge (`merge`), where each is served
//! (`exposure`), the minimal ordered writes (`reconcile`), where each ring goes in the pool
//! (`ring_alloc`), the rings kept for the second chance (`previous_rings`), and which clients
//! each service admits (`source_ranges`).

pub mod exposure;
pub mod merge;
pub mod previous_rings;
pub mod reconcile;
pub mod ring_alloc;
pub mod source_ranges;
