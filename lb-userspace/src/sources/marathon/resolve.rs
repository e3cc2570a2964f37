//! Host names of tasks → addresses, resolved ahead of a translation (asynchronously, bounded,
//! cached), so that the translation itself never waits on DNS.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::app::App;

/// Host name → address, with whatever caching the implementation does.
pub trait Resolver {
    fn resolve(&mut self, host: &str) -> Option<IpAddr>;
}

/// Host names resolved ahead of a translation (asynchronously, with a timeout) and cached.
#[derive(Debug, Default)]
pub struct DnsCache {
    entries: HashMap<String, (Option<IpAddr>, Instant)>,
}

const DNS_TTL: Duration = Duration::from_secs(60);
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a name that did not resolve is left before it is tried again.
const DNS_RETRY: Duration = Duration::from_secs(10);
const DNS_CONCURRENCY: usize = 32;

impl DnsCache {
    /// Resolves every task host of `apps` that is a name and not freshly cached, at most
    /// `DNS_CONCURRENCY` at a time, each bounded by `DNS_TIMEOUT`: names that never answer cost
    /// one timeout per burst, not one per name. A name that does not resolve is retried after
    /// `DNS_RETRY` (its tasks are skipped meanwhile, with the reason in the status).
    pub async fn refresh<'a>(&mut self, apps: impl Iterator<Item = &'a App>) {
        let now = Instant::now();
        let stale: std::collections::BTreeSet<String> = apps
            .flat_map(|app| app.tasks.iter().flatten())
            .filter_map(|task| task.host.as_deref())
            .filter(|h| !h.is_empty() && h.parse::<IpAddr>().is_err())
            .filter(|h| self.is_stale(h, now))
            .map(str::to_owned)
            .collect();
        let lookups = futures_util::stream::iter(stale).map(|host| async move {
            let lookup = tokio::net::lookup_host((host.as_str(), 0));
            let ip = match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
                Ok(Ok(mut addrs)) => addrs.next().map(|a| a.ip()),
                _ => None,
            };
            (host, ip)
        });
        let resolved: Vec<(String, Option<IpAddr>)> = lookups.buffer_unordered(DNS_CONCURRENCY).collect().await;
        for (host, ip) in resolved {
            self.entries.insert(host, (ip, now));
        }
    }
}

impl DnsCache {
    /// Whether `host` should be looked up (again): never looked up, an answer older than
    /// `DNS_TTL`, or a failure older than `DNS_RETRY`.
    fn is_stale(&self, host: &str, now: Instant) -> bool {
        self.entries.get(host).is_none_or(|(ip, at)| now.duration_since(*at) >= if ip.is_some() { DNS_TTL } else { DNS_RETRY })
    }
}

impl Resolver for DnsCache {
    fn resolve(&mut self, host: &str) -> Option<IpAddr> {
        self.entries.get(host).and_then(|(ip, _)| *ip)
    }
}

