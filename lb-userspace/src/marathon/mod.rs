//! Marathon as a source of services: its JSON (`app`), what it means (`model`, `vip`).

pub mod app;
pub mod client;
pub mod cluster;
pub mod events;
pub mod model;
pub mod vip;
pub mod watch;
