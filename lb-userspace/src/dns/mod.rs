//! DNS service discovery (`--dns-listen`): Mesos-DNS's names for Marathon's apps and
//! dcos-net's for named VIPs, answered from the same translation that programs the services
//! ([`zone`]), so an app's names change in the pass that reprograms it. [`names`] makes the
//! labels, [`answer`] the replies, [`server`] owns the sockets (threads of their own: a flood
//! of queries does not hold up the agent's loop).

mod answer;
pub mod metrics;
pub mod names;
mod server;
pub mod zone;

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

pub use server::Counters;
use zone::{VipDns, Zone, ZoneNames};

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
    pub fn admits(&self, client: std::net::IpAddr) -> bool {
        let client = client.to_canonical();
        !self.upstreams.is_empty() && self.allow.iter().any(|net| net.contains(&client))
    }
}

/// The listeners, bound before the kernel is touched.
pub struct Bound {
    sockets: server::Sockets,
    names: ZoneNames,
    forward: Forward,
}

/// The running server: the zone it answers from and its counters.
pub struct Dns {
    zone: Arc<RwLock<Zone>>,
    counters: Arc<Counters>,
    listen: Vec<SocketAddr>,
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
        Ok(Bound { sockets, names, forward: self.forward.clone() })
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
        self.sockets.serve(zone.clone(), counters.clone(), Arc::new(self.forward))?;
        Ok(Dns { zone, counters, listen })
    }
}

impl Dns {
    /// Takes in what the last translation changed: the apps it re-translated (every app after
    /// a full read), and the named VIPs.
    pub fn follow(&self, translator: &Translator, named_vips: &std::collections::BTreeMap<String, std::net::IpAddr>) {
        let mut zone = self.zone.write().unwrap_or_else(|e| e.into_inner());
        match translator.changed_apps() {
            Some(ids) => {
                for id in ids {
                    zone.set_app(id, translator.dns(id).cloned());
                }
            }
            None => {
                zone.clear_apps();
                for app in translator.all_dns() {
                    zone.set_app(&app.app_id.clone(), Some(app.clone()));
                }
            }
        }
        let mut vips: std::collections::BTreeMap<String, VipDns> =
            named_vips.iter().map(|(name, ip)| (name.clone(), VipDns { addr: Some(*ip), ports: Vec::new() })).collect();
        for app in translator.all_dns() {
            for (name, proto, port) in &app.vips {
                if let Some(vip) = vips.get_mut(name) {
                    vip.ports.push((*proto, *port));
                }
            }
        }
        zone.set_vips(vips);
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn listen(&self) -> &[SocketAddr] {
        &self.listen
    }

    pub fn record_count(&self) -> usize {
        self.zone.read().unwrap_or_else(|e| e.into_inner()).record_count()
    }
}
