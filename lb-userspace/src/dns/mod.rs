//! DNS service discovery (`--dns-listen`): Mesos-DNS's names for Marathon's apps and
//! dcos-net's for named VIPs, answered from the same translation that programs the services
//! ([`zone`]), so an app's names change in the pass that reprograms it. [`names`] makes the
//! labels, [`answer`] the replies, [`server`] owns the sockets (threads of their own: a flood
//! of queries does not hold up the agent's loop).

mod answer;
mod api;
pub mod metrics;
pub mod names;
mod server;
pub mod zone;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
};

pub use api::{Api, RecordsReply};
pub use server::Counters;
use zone::{Zone, ZoneNames};

use crate::sources::marathon::translate::Translator;

/// TTL of every answer unless `--dns-ttl` says otherwise. Answers change within milliseconds
/// of Marathon's event, so the TTL alone bounds how stale a client's cache is; dcos-net's
/// l4lb zone uses the same 5 s, against Mesos-DNS's 60 s that, on top of its 60 s poll, left
/// moved tasks wrong for two minutes.
pub const DEFAULT_TTL: u32 = 5;

#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub listen: Vec<SocketAddr>,
    pub domain: String,
    pub vip_domain: String,
    pub ttl: u32,
    pub forward: Forward,
}

/// Where names outside the zones go, and for whom (no upstreams: refused for everyone).
#[derive(Clone, Debug, Default)]
pub struct Forward {
    pub upstreams: Vec<SocketAddr>,
    pub allow: Vec<ipnet::IpNet>,
}

impl Forward {
    pub fn admits(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        !self.upstreams.is_empty() && self.allow.iter().any(|net| net.contains(&client))
    }
}

/// The listeners, bound before the kernel is touched.
pub struct Bound {
    sockets: server::Sockets,
    names: ZoneNames,
    config: DnsConfig,
}

/// The running server: the zone it answers from and its counters.
pub struct Dns {
    zone: Arc<RwLock<Zone>>,
    counters: Arc<Counters>,
    listen: Vec<SocketAddr>,
    config: DnsConfig,
    /// The translator's VIP epoch last taken in.
    vips_epoch: Option<u64>,
}

impl DnsConfig {
    /// Binds UDP and TCP on every address: (address, why) on failure.
    pub fn bind(&self) -> Result<Bound, (SocketAddr, std::io::Error)> {
        let sockets = server::Sockets::bind(&self.listen)?;
        let mut ns_addrs: Vec<_> = self.listen.iter().map(|a| a.ip()).filter(|ip| !ip.is_unspecified()).collect();
        if ns_addrs.is_empty() {
            // Mesos-DNS's answer for a server on every address.
            ns_addrs.push(std::net::Ipv4Addr::LOCALHOST.into());
        }
        ns_addrs.sort();
        ns_addrs.dedup();
        let names = ZoneNames { domain: self.domain.clone(), vip_domain: self.vip_domain.clone(), ttl: self.ttl, ns_addrs };
        Ok(Bound { sockets, names, config: self.clone() })
    }
}

impl Bound {
    pub fn listen(&self) -> Vec<SocketAddr> {
        self.sockets.local_addrs()
    }

    /// Starts serving (an empty zone until the first sync: names answer NXDOMAIN, as they do
    /// for a Mesos-DNS that has not read the master yet).
    pub fn start(self) -> std::io::Result<Dns> {
        let zone = Arc::new(RwLock::new(Zone::new(self.names)));
        let counters = Arc::new(Counters::default());
        let listen = self.sockets.local_addrs();
        self.sockets.serve(zone.clone(), counters.clone(), Arc::new(self.config.forward.clone()))?;
        Ok(Dns { zone, counters, listen, config: self.config, vips_epoch: None })
    }
}

impl Dns {
    /// Takes in what the last translation changed: the apps it re-translated (every app after
    /// a full read, built off the lock so queries are not held up), and the named VIPs'
    /// addresses when their allocation changed (`vips_epoch`).
    pub fn follow(&mut self, translator: &Translator, named_vips: &BTreeMap<String, IpAddr>, vips_epoch: u64) {
        let vips_changed = self.vips_epoch != Some(vips_epoch);
        self.vips_epoch = Some(vips_epoch);
        let Some(ids) = translator.changed_apps() else {
            let mut fresh = Zone::new(self.zone.read().unwrap_or_else(|e| e.into_inner()).names().clone());
            for app in translator.all_dns() {
                fresh.set_app(&app.app_id, Some(app.clone()));
            }
            fresh.set_vip_addrs(named_vips);
            return self.zone.write().unwrap_or_else(|e| e.into_inner()).replace_with(fresh);
        };
        let mut zone = self.zone.write().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            zone.set_app(id, translator.dns(id).cloned());
        }
        if vips_changed {
            zone.set_vip_addrs(named_vips);
        }
    }

    /// The HTTP API and counters the metrics listener (at `http`) serves.
    pub fn api(&self, http: Option<SocketAddr>) -> Arc<Api> {
        Arc::new(Api::new(self.zone.clone(), self.counters.clone(), &self.config, &self.listen, http))
    }

    pub fn listen(&self) -> &[SocketAddr] {
        &self.listen
    }

    pub fn record_count(&self) -> usize {
        self.zone.read().unwrap_or_else(|e| e.into_inner()).record_count()
    }
}
