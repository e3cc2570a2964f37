//! Where services come from besides the command line: Marathon (client, event watch, the state
//! translation keeps between syncs) and the services file (re-read when it changes).

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use tracing::warn;

use super::config::MarathonConfig;
use crate::marathon::{
    client::MarathonClient,
    cluster::ClusterModel,
    model::{HealthMemory, Translator},
    vip::VipRange,
    watch::{DnsCache, EventWatch},
};

/// Marathon client, event watch and translation state.
pub struct MarathonSource {
    pub client: MarathonClient,
    pub watch: EventWatch,
    pub health: HealthMemory,
    pub dns: DnsCache,
    pub vips: VipRange,
    pub resync: Duration,
    /// Every app as last read or as events changed it.
    pub model: ClusterModel,
    /// The model's translation into services, kept per app.
    pub translator: Translator,
    /// Marathon has answered once: until then the pinned services of a previous agent stay.
    pub answered: bool,
}

impl MarathonSource {
    pub fn new(config: &MarathonConfig) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: MarathonClient::new(config.urls.clone(), config.auth.clone(), config.timeout)?,
            watch: EventWatch::new(config.event_stall),
            health: HealthMemory::default(),
            dns: DnsCache::default(),
            vips: config.vips,
            resync: config.resync,
            model: ClusterModel::default(),
            translator: Translator::default(),
            answered: false,
        })
    }
}

/// The services file's modification time, to notice changes by polling (editors replace files,
/// which inotify on the file itself would miss).
pub fn modified(path: &Path) -> Option<SystemTime> {
    match std::fs::metadata(path).and_then(|m| m.modified()) {
        Ok(t) => Some(t),
        Err(err) => {
            warn!("{}: {err}", path.display());
            None
        }
    }
}
