//! [`Source`]: everything Marathon, behind one interface. It waits for a reason to act (an
//! event burst, a reconnected or lost stream, the resync interval, a paced retry), re-reads
//! single apps or all of them, resolves task host names, translates, and tells the agent only
//! what came of it ([`Outcome`]): which services may have changed, and why.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{
    app::{parse_apps, App},
    client::{Auth, MarathonClient, SseEvent},
    pod::{self, Pod, PodStatus},
    cluster::Cluster,
    events::Delta,
    pacing::RelistPacing,
    resolve::DnsCache,
    translate::{HealthMemory, Translator},
    vip::VipRange,
    watch::{EventWatch, Signal},
};
use crate::{
    desired::{Desired, ServiceId},
    http::labels::HttpPort,
    status::{self, MarathonStatus},
};

/// Where Marathon is and how to talk to it.
#[derive(Clone, Debug)]
pub struct Config {
    pub urls: Vec<String>,
    pub auth: Auth,
    pub timeout: Duration,
    pub event_stall: Duration,
    pub resync: Duration,
    pub vips: VipRange,
}

pub struct Source {
    client: MarathonClient,
    watch: EventWatch,
    /// Every app as last read or as events changed it.
    cluster: Cluster,
    hosts: DnsCache,
    health: HealthMemory,
    /// The cluster's translation into services, kept per app.
    translator: Translator,
    vips: VipRange,
    resync: tokio::time::Interval,
    pacing: RelistPacing,
    status: MarathonStatus,
    /// Marathon has answered once: until then the pinned services of a previous agent stay.
    answered: bool,
}

/// What the source has to do, once woken ([`Source::next_work`]).
#[derive(Debug)]
pub enum Work {
    /// Read every app, for this reason.
    Relist(String),
    /// Apply a burst of events.
    Events(Vec<SseEvent>),
}

/// What came of [`Source::run`].
#[derive(Debug)]
pub enum Outcome {
    /// The services may have changed ([`Source::changed`] says which): program them.
    Changed(Change),
    /// Marathon did not answer; nothing changed (the status says why).
    Failed,
    /// Nothing changed (events that change no service, or a re-read postponed by the pacing).
    Unchanged,
}

#[derive(Debug)]
pub struct Change {
    pub why: ChangeReason,
    /// When the work began (event-to-maps latency).
    pub started: Instant,
}

#[derive(Debug)]
pub enum ChangeReason {
    Relist(String),
    Events(usize),
}

impl Source {
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let client = MarathonClient::new(config.urls.clone(), config.auth.clone(), config.timeout)?;
        let resync = tokio::time::interval_at(tokio::time::Instant::now() + config.resync, config.resync);
        let status = MarathonStatus { urls: client.urls().to_vec(), ..MarathonStatus::default() };
        Ok(Self {
            client,
            watch: EventWatch::new(config.event_stall),
            cluster: Cluster::default(),
            hosts: DnsCache::default(),
            health: HealthMemory::default(),
            translator: Translator::default(),
            vips: config.vips,
            resync,
            pacing: RelistPacing::default(),
            status,
            answered: false,
        })
    }

    /// The first sync: the event stream first, so nothing that happens during the first read
    /// is missed; that read then also answers the stream's (re)connect (one full read at
    /// start, not two). A stream that does not open in time does not hold the start up.
    pub async fn start(&mut self) -> Outcome {
        let _ = tokio::time::timeout(self.client.timeout(), self.watch.next(&mut self.client)).await;
        self.relist("start").await
    }

    /// Waits for something to do. Cancel-safe: the agent selects on it beside its signals.
    pub async fn next_work(&mut self) -> Work {
        loop {
            let due = self.pacing.due();
            let asked = tokio::select! {
                signal = self.watch.next(&mut self.client) => match signal {
                    Signal::Events(events) => return Work::Events(events),
                    Signal::Relist => "the event stream (re)connected: events have no replay",
                    Signal::Lost => "the event stream is lost",
                },
                _ = self.resync.tick() => "--resync interval",
                _ = sleep_until(due) => match self.pacing.take_due() {
                    Some(why) => return Work::Relist(why),
                    None => continue,
                },
            };
            if self.pacing.ask(Instant::now(), asked) {
                return Work::Relist(asked.to_owned());
            }
        }
    }

    /// Does `work`. Not cancel-safe (a half-applied burst leaves the cluster ahead of its
    /// translation): only a stop may drop it.
    pub async fn run(&mut self, work: Work) -> Outcome {
        let why = match work {
            Work::Relist(why) => why,
            Work::Events(events) => match self.apply_events(&events).await {
                Ok(outcome) => return outcome,
                Err(why) if self.pacing.ask(Instant::now(), &why) => why,
                Err(_) => return Outcome::Unchanged,
            },
        };
        self.relist(&why).await
    }

    /// Marathon's services, once Marathon has answered.
    pub fn desired(&self) -> Option<&Desired> {
        self.answered.then(|| self.translator.desired())
    }

    /// The services the last change can have touched (None: any).
    pub fn changed(&self) -> Option<&BTreeSet<ServiceId>> {
        self.translator.changed()
    }

    /// Every app's translation, once Marathon has answered (DNS reads its records there).
    pub fn translator(&self) -> Option<&Translator> {
        self.answered.then_some(&self.translator)
    }

    /// The app ports the HTTP path routes.
    pub fn http_ports(&self) -> impl Iterator<Item = (&str, &HttpPort)> + '_ {
        self.translator.http_ports()
    }

    pub fn named_vips(&self) -> &BTreeMap<String, IpAddr> {
        self.translator.named_vips()
    }

    /// Changes whenever the named-VIP allocation does.
    pub fn vips_epoch(&self) -> u64 {
        self.translator.vips_epoch()
    }

    pub fn status(&self) -> &MarathonStatus {
        &self.status
    }

    /// Reads every app (`why` goes to the log and the status). On failure nothing changes (the
    /// last good state stays programmed) and the status says why.
    async fn relist(&mut self, why: &str) -> Outcome {
        let started = Instant::now();
        self.status.relists += 1;
        self.status.last_relist_reason = why.to_owned();
        info!("reading every app from Marathon: {why}");
        let outcome = match self.read_all().await {
            Ok(fetched) => {
                self.synced();
                let elapsed_ms = started.elapsed().as_millis() as u64;
                info!(fetch_ms = fetched.as_millis() as u64, elapsed_ms, apps = self.cluster.len(), "synced from Marathon");
                Outcome::Changed(Change { why: ChangeReason::Relist(why.to_owned()), started })
            }
            Err(why) => self.failed(why),
        };
        self.pacing.ran(Instant::now(), matches!(outcome, Outcome::Failed));
        outcome
    }

    /// Replaces the cluster with Marathon's apps and re-translates it; returns how long the
    /// read took.
    async fn read_all(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        let body = self.client.apps().await.map_err(|err| crate::error_chain(&err))?;
        let fetched = started.elapsed();
        let unparsed = self.cluster.replace_from(&body).map_err(|err| crate::error_chain(&err))?;
        drop(body);
        for (app, why) in &unparsed {
            warn!(app, "app definition not usable (its last good definition stays): {why}");
        }
        self.read_pods().await?;
        self.hosts.refresh(self.cluster.apps()).await;
        self.translator.rebuild(self.cluster.apps(), &mut self.hosts, &mut self.health, &self.vips);
        Ok(fetched)
    }

    /// Replaces the cluster's pods with Marathon's (none before Marathon 1.4, which has no pods
    /// API): definitions from `/v2/pods`, instances from `/v2/pods/::status`.
    async fn read_pods(&mut self) -> Result<(), String> {
        let Some((definitions, statuses)) = self.client.pods().await.map_err(|err| crate::error_chain(&err))? else {
            self.cluster.replace_pods(Vec::new());
            return Ok(());
        };
        let (definitions, mut unusable) = pod::parse_each::<Pod>(&definitions).map_err(|err| crate::error_chain(&err))?;
        let (statuses, bad_statuses) = pod::parse_each::<PodStatus>(&statuses).map_err(|err| crate::error_chain(&err))?;
        unusable.extend(bad_statuses.into_iter().map(|(id, why)| (id, format!("status: {why}"))));
        let mut instances: BTreeMap<String, Vec<pod::Instance>> = statuses.into_iter().map(|s| (s.id, s.instances.unwrap_or_default())).collect();
        for (pod, why) in &unusable {
            warn!(pod, "pod definition not usable (its last good definition stays): {why}");
        }
        let unusable_ids: BTreeSet<String> = unusable.iter().map(|(id, _)| id.clone()).collect();
        let mut pods: Vec<Result<App, (String, String)>> = unusable.into_iter().map(Err).collect();
        for definition in definitions.into_iter().filter(|d| !unusable_ids.contains(&d.id)) {
            let of_pod = instances.remove(&definition.id).unwrap_or_default();
            pods.push(Ok(pod::to_app(definition, &of_pod)));
        }
        self.cluster.replace_pods(pods);
        Ok(())
    }

    /// Reads one pod with its instances into the cluster (gone from Marathon: dropped).
    async fn read_pod(&mut self, id: &str) -> Result<(), String> {
        let Some(body) = self.client.pod(id).await.map_err(|err| crate::error_chain(&err))? else {
            self.cluster.remove(id);
            return Ok(());
        };
        let (mut statuses, unparsed) = pod::parse_each::<PodStatus>(&body).map_err(|err| crate::error_chain(&err))?;
        let pod = match (statuses.pop(), unparsed.into_iter().next()) {
            (Some(PodStatus { spec: Some(spec), instances, .. }), _) => Ok(pod::to_app(spec, instances.as_deref().unwrap_or_default())),
            (Some(_), _) => Err("the status holds no spec".to_owned()),
            (None, Some((_, why))) => Err(why),
            (None, None) => return Err("the answer holds no pod".into()),
        };
        if let Err(why) = &pod {
            warn!(pod = id, "pod definition not usable (its last good definition stays): {why}");
        }
        self.cluster.upsert_pod(id, pod);
        Ok(())
    }

    /// Applies a burst of events (re-reading single apps where an event lacks what the cluster
    /// needs). Err: why a full re-read is needed instead, when the cluster cannot be trusted.
    async fn apply_events(&mut self, events: &[SseEvent]) -> Result<Outcome, String> {
        let started = Instant::now();
        let mut delta = Delta::of(events);
        if let Some(why) = delta.relist.take() {
            return Err(why);
        }
        if delta.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        for id in &delta.remove {
            self.cluster.remove(id);
        }
        for update in &delta.tasks {
            if !self.cluster.apply_task(update) {
                delta.refresh.insert(update.app_id.clone());
            }
        }
        let mut changed: BTreeSet<String> = BTreeSet::new();
        if delta.all_pods {
            changed.extend(self.cluster.pod_ids().cloned());
            self.read_pods().await.map_err(|why| format!("reading the pods failed ({why})"))?;
            changed.extend(self.cluster.pod_ids().cloned());
        }
        // Each id once; pods the full read above just brought are not read again alone.
        let alone: BTreeSet<&String> = delta.refresh.iter().chain(&delta.pods).filter(|id| !(delta.all_pods && self.cluster.is_pod(id))).collect();
        for id in alone {
            let read = if self.cluster.is_pod(id) || delta.pods.contains(id) { self.read_pod(id).await } else { self.read_app(id).await };
            read.map_err(|why| format!("reading {id} alone failed ({why})"))?;
        }
        changed.extend(delta.refresh.iter().chain(&delta.remove).chain(&delta.pods).cloned());
        changed.extend(delta.tasks.iter().map(|t| t.app_id.clone()));
        let cluster = &self.cluster;
        self.hosts.refresh(changed.iter().filter_map(|id| cluster.get(id))).await;
        self.translator.update(cluster.apps(), |id| cluster.get(id), &changed, &mut self.hosts, &mut self.health, &self.vips);
        self.status.events_applied += events.len() as u64;
        self.status.app_reads += (delta.refresh.len() + delta.pods.len()) as u64;
        self.synced();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        debug!(events = events.len(), apps_read = delta.refresh.len(), elapsed_ms, "events applied");
        Ok(Outcome::Changed(Change { why: ChangeReason::Events(events.len()), started }))
    }

    /// Reads one app into the cluster (gone from Marathon: dropped). An id Marathon has no app
    /// for may be a pod the cluster does not know yet (an instance event before the pod's).
    async fn read_app(&mut self, id: &str) -> Result<(), String> {
        let body = self.client.app(id).await.map_err(|err| crate::error_chain(&err))?;
        let Some(body) = body else {
            self.cluster.remove(id);
            return self.read_pod(id).await;
        };
        let (mut apps, unparsed) = parse_apps(&body).map_err(|err| crate::error_chain(&err))?;
        match (apps.pop(), unparsed.into_iter().next()) {
            (Some(app), _) => self.cluster.upsert(id, Ok(app)),
            (None, Some((_, why))) => {
                warn!(app = id, "app definition not usable (its last good definition stays): {why}");
                self.cluster.upsert(id, Err(why));
            }
            (None, None) => return Err("the answer holds no app".into()),
        }
        Ok(())
    }

    /// The status after a successful sync: what was skipped, and why.
    fn synced(&mut self) {
        let mut skipped_apps: BTreeMap<String, String> = self.cluster.degraded();
        skipped_apps.extend(self.translator.app_errors());
        let mut skipped: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (app, what) in self.translator.warnings() {
            skipped.entry(app.clone()).or_default().push(what.clone());
        }
        let status = &mut self.status;
        status.current = self.client.current().to_owned();
        status.last_sync = Some(status::now());
        status.last_error = None;
        status.failures_in_a_row = 0;
        status.apps = self.cluster.len();
        status.pods = self.cluster.pod_ids().count();
        status.state = if skipped_apps.is_empty() { "ok" } else { "degraded" }.into();
        status.skipped_apps = skipped_apps;
        status.skipped_tasks = skipped.values().map(Vec::len).sum();
        status.skipped = skipped;
        status.named_vips = self.translator.named_vips().len();
        status.event_stream = self.watch.connected_to().map(str::to_owned);
        self.answered = true;
    }

    fn failed(&mut self, why: String) -> Outcome {
        warn!("Marathon: {why}; keeping the services already programmed");
        let status = &mut self.status;
        status.state = "failing".into();
        status.last_error = Some(why);
        status.failures_in_a_row += 1;
        status.failures += 1;
        status.event_stream = self.watch.connected_to().map(str::to_owned);
        Outcome::Failed
    }
}

/// Sleeps until `at`; never completes without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
