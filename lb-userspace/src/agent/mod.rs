//! `lb run`: the agent. [`config`] turns the flags into a validated [`AgentConfig`]; [`start`]
//! takes the pin directory's lock, checks the pinned maps, brings the data path up (rolled back
//! if it fails) and hands over to the run loop (`serve`), which drives the sources and the
//! programming side (`program`).

pub mod config;
pub mod lock;
mod program;
mod serve;

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tracing::{info, warn};

pub use config::{AgentConfig, ConfigError};

use crate::{
    dataplane::{loader, pinned::PinnedMaps},
    node::neighbours::NeighbourResolver,
    sources::{marathon::Source, services_file::FileWatch},
    status::{AgentStatus, HttpStatus, UplinkStatus},
};

/// Runs the agent until SIGINT/SIGTERM. Errors that are the configuration's are returned as
/// [`ConfigError`] (exit code 64) and leave the kernel untouched.
pub fn start(mut config: AgentConfig) -> Result<()> {
    let _lock = lock::PinDirLock::acquire(config.pin_dir())?;
    loader::check_pinned_maps(config.pin_dir(), &config.plan.load.sizes).map_err(ConfigError::from)?;
    // Timers, sockets and the HTTP path are made in the runtime's context.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let context = runtime.enter();
    let marathon = config.marathon.as_ref().map(Source::new).transpose().context("building the HTTP client")?;
    let file = config.services_file.clone().map(FileWatch::new);
    // Bound before the kernel is touched: a taken port fails the start with nothing changed.
    let listeners = Listeners::bind(&mut config)?;
    init_logging();
    let loaded = loader::bring_up(&config.plan)?;
    info!(pin_dir = %config.pin_dir().display(), ifaces = ?config.plan.ifaces, "data path up");
    let status = first_status(&config, &loaded, &listeners);
    let agent = program(config, status)?;
    let mut agent = listeners.serve(agent, &runtime)?;
    drop(context);
    let served = runtime.block_on(agent.serve(file, marathon));
    // A host-name lookup still blocked in the resolver must not hold up the exit.
    runtime.shutdown_background();
    agent.stop_announcing();
    served?;
    drop(loaded);
    info!("stopping; programs stay attached and maps pinned (lb down removes them)");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    Ok(())
}

/// The sockets the agent serves on, bound before the kernel is touched.
struct Listeners {
    metrics: Option<std::net::TcpListener>,
    http: Option<crate::http::Bound>,
    http_listen: Option<HttpStatus>,
    dns: Option<crate::dns::Bound>,
}

impl Listeners {
    fn bind(config: &mut AgentConfig) -> Result<Self, ConfigError> {
        let metrics = config.metrics.map(bind_metrics).transpose()?;
        let http_listen = config.http.as_ref().map(|http| HttpStatus { listen: http.listen(), routes: 0 });
        let http = config.http.take().map(|http| http.bind()).transpose();
        let http = http.map_err(|(addr, e)| ConfigError::HttpBind { addr, why: e.to_string() })?;
        let dns = config.dns.as_ref().map(|dns| dns.bind()).transpose();
        let dns = dns.map_err(|(addr, e)| ConfigError::DnsBind { addr, why: e.to_string() })?;
        Ok(Self { metrics, http, http_listen, dns })
    }

    /// Starts the HTTP path and the metrics listener, and hands the agent what they read.
    fn serve(self, mut agent: program::Agent<PinnedMaps>, runtime: &tokio::runtime::Runtime) -> Result<program::Agent<PinnedMaps>> {
        let http_metrics = self.http.as_ref().map(|_| Arc::new(crate::http::metrics::Metrics::default()));
        if let (Some(bound), Some(metrics)) = (self.http, &http_metrics) {
            agent = agent.with_http(crate::http::HttpPath::start(bound, metrics.clone())?);
        }
        let metrics_addr = self.metrics.as_ref().and_then(|l| l.local_addr().ok());
        let mut dns_api = None;
        if let Some(bound) = self.dns {
            let dns = bound.start()?;
            info!(listen = ?dns.listen(), "DNS on UDP and TCP");
            dns_api = Some(dns.api(metrics_addr));
            agent = agent.with_dns(dns);
        }
        if let Some(listener) = self.metrics {
            let shared = crate::inspect::metrics::Shared::new(agent.status.pin_dir.clone().into(), agent.status.clone());
            agent = agent.with_metrics(shared.clone());
            let listener = tokio::net::TcpListener::from_std(listener)?;
            info!(address = %listener.local_addr()?, "metrics on /metrics, status page on /");
            runtime.spawn(crate::inspect::metrics::serve(listener, shared, http_metrics, dns_api));
        }
        Ok(agent)
    }
}

/// The status before the first sync: who, where, on which uplinks, with which warnings.
fn first_status(config: &AgentConfig, loaded: &loader::Loaded, listeners: &Listeners) -> AgentStatus {
    let mut warnings = crate::node::preflight::forwarding_warnings();
    match crate::node::addrs::discover() {
        Ok(addrs) => warnings.extend(config.serving.warnings(&addrs)),
        Err(err) => warnings.push(format!("listing this node's addresses: {err}")),
    }
    for warning in &warnings {
        warn!("{warning}");
    }
    let uplinks = loaded.ingress.iter().zip(config.serving.uplinks());
    AgentStatus {
        pid: std::process::id(),
        pin_dir: config.pin_dir().display().to_string(),
        uplinks: uplinks.map(|((name, hook), uplink)| UplinkStatus { name: name.clone(), ifindex: uplink.ifindex, ingress_hook: *hook }).collect(),
        metrics_listen: listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
        warnings,
        http: listeners.http_listen.clone(),
        exposure: config.serving.exposure().status(),
        dsr: config.plan.dsr.status(),
        dns: listeners.dns.as_ref().zip(config.dns.as_ref()).map(|(bound, dns)| crate::status::DnsStatus {
            listen: bound.listen().iter().map(|a| a.to_string()).collect(),
            domain: dns.domain.clone(),
            vip_domain: dns.vip_domain.clone(),
            records: 0,
        }),
        ..AgentStatus::default()
    }
}

/// The programming side, on the pinned maps.
fn program(config: AgentConfig, status: AgentStatus) -> Result<program::Agent<PinnedMaps>> {
    // Netlink sockets belong to the namespace they are opened in: this one is the agent's.
    let neighbours = NeighbourResolver::new()?;
    let dataplane = PinnedMaps::new(config.pin_dir());
    let settings = &config.plan.load.settings;
    let mut agent = program::Agent::new(dataplane, config.serving, settings.nat_ports, config.static_services, status)
        .with_second_chance(config.second_chance_secs);
    if let Some(bird) = config.bird {
        agent = agent.with_announcer(crate::announce::Announcer::new(bird));
    }
    agent.sync_node()?;
    Ok(agent.with_neighbours(neighbours).with_udp_timeout(settings.udp_timeout_secs))
}

fn bind_metrics(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, ConfigError> {
    let bind_error = |e: std::io::Error| ConfigError::MetricsBind { addr, why: e.to_string() };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(listener)
}

fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
