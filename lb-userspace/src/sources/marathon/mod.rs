//! Marathon as a source of services: its JSON (`app`, `pod`: pods become apps), the REST client and event stream
//! (`client`, `watch`, `events`), the cluster as last read (`cluster`), task host names
//! (`resolve`), what the apps mean (`translate`, `vip`), and the [`Source`] that owns them all.

pub mod app;
pub mod backoff;
pub mod client;
pub mod cluster;
pub mod events;
mod pacing;
pub mod pod;
pub mod resolve;
mod source;
pub mod translate;
pub mod vip;
pub mod watch;

pub use source::{Change, ChangeReason, Config, Outcome, Source, Work};
