//! `lb run`'s flags → one validated [`AgentConfig`], before anything touches the kernel. Values
//! with a syntax (CIDRs, URLs, ranges, credentials, ring sizes) are checked by clap value parsers
//! defined here; what depends on the machine (interfaces, bpffs, cgroup, the services file, the
//! node's ephemeral ports) is checked by [`AgentConfig::from_args`]. Every failure is a
//! [`ConfigError`]: exit code 64, one line, nothing attached or pinned.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;

use crate::{
    cli::RunArgs,
    control::exposure::{Exposure, Target},
    node::serving::{Serving, Uplink},
    dataplane::{
        dsr::DsrConfig,
        loader::{AttachPlan, LoadConfig, MapSizes, RuntimeSettings},
    },
    sources::marathon::{self, client::Auth},
    desired::Desired,
    node::preflight::{self, PreflightError},
    sources::services_file::{self, ServicesFileError},
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("give --services FILE and/or --marathon URL: without either there is nothing to balance")]
    NoSource,
    #[error("--bird-routes {0}: its directory does not exist (bird.conf includes this file: put it where BIRD reads, e.g. /etc/bird/lb-vips.conf)")]
    BirdRoutesDir(String),
    #[error("give either --marathon-credentials or --marathon-token, not both")]
    TwoAuths,
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    ServicesFile(#[from] ServicesFileError),
    #[error("--max-flows {given} is below {min} on this machine's {cpus} CPUs: the kernel's LRU tables hand each CPU free entries in batches of {LRU_BATCH}, and a smaller table evicts connections while they are in use; give at least {min}")]
    FlowTableTooSmall { given: u32, min: u64, cpus: usize },
    #[error("--nat-ports {min}-{max} overlaps this node's ephemeral ports {eph_min}-{eph_max} (net.ipv4.ip_local_port_range): full-NAT flows would collide with the node's own connections; pick a range outside it")]
    NatPortsOverlapEphemeral { min: u16, max: u16, eph_min: u16, eph_max: u16 },
    #[error("--expose {group}={iface}: {}", if *exists { format!("{iface} is not an uplink: add --iface {iface} (only traffic arriving on uplinks is balanced)") } else { format!("there is no interface {iface} on this node") })]
    ExposeNotUplink { group: String, iface: String, exists: bool },
    #[error("{0}")]
    Expose(String),
    #[error(transparent)]
    PinnedMaps(#[from] crate::dataplane::loader::PinnedMapsError),
    #[error("--metrics-listen {0} is not a loopback address: the metrics and status page would be open to the network; add --metrics-listen-public if that is intended")]
    MetricsNotLoopback(std::net::SocketAddr),
    #[error("--metrics-listen {addr}: {why}; pick another address or port, or --metrics-listen off")]
    MetricsBind { addr: std::net::SocketAddr, why: String },
    #[error(transparent)]
    Certificates(#[from] crate::http::tls::CertError),
    #[error("HTTP path: cannot listen on {addr}: {why}; pick another address or port")]
    HttpBind { addr: std::net::SocketAddr, why: String },
    #[error("--dns-listen {addr}: {why}; pick another address or port (53 is often taken by a local resolver)")]
    DnsBind { addr: std::net::SocketAddr, why: String },
    #[error("--dns-domain and --vip-domain are both {0}: give the named VIPs a domain of their own")]
    DnsDomainsClash(String),
    #[error("--dns-upstream: listing this node's networks for --dns-allow: {0}")]
    DnsAllow(String),
}

/// DNS's flags; `--dns-allow` defaults to loopback and this node's networks.
fn dns_config(args: &RunArgs) -> Result<Option<crate::dns::DnsConfig>, ConfigError> {
    if args.dns_listen.is_empty() {
        return Ok(None);
    }
    if args.dns_domain == args.vip_domain {
        return Err(ConfigError::DnsDomainsClash(args.dns_domain.clone()));
    }
    let mut allow = args.dns_allow.clone();
    if allow.is_empty() && !args.dns_upstream.is_empty() {
        allow = crate::node::addrs::networks().map_err(|e| ConfigError::DnsAllow(e.to_string()))?;
        allow.extend(["127.0.0.0/8", "::1/128"].iter().filter_map(|n| n.parse::<ipnet::IpNet>().ok()));
    }
    Ok(Some(crate::dns::DnsConfig {
        listen: args.dns_listen.clone(),
        domain: args.dns_domain.clone(),
        vip_domain: args.vip_domain.clone(),
        ttl: args.dns_ttl,
        forward: crate::dns::Forward { upstreams: args.dns_upstream.clone(), allow },
    }))
}

/// The HTTP path's flags, with the certificates read (a directory that does not read whole is
/// refused before anything starts).
fn http_config(args: &RunArgs) -> Result<Option<crate::http::HttpConfig>, ConfigError> {
    if args.http_listen.is_none() && args.https_listen.is_none() {
        return Ok(None);
    }
    let https = match (args.https_listen, &args.ssl_certs) {
        (Some(addr), Some(dir)) => Some((addr, dir.clone(), crate::http::tls::CertSet::load(dir)?)),
        _ => None,
    };
    let groups = crate::http::routes::Groups(args.groups.clone());
    Ok(Some(crate::http::HttpConfig { http: args.http_listen, https, groups }))
}

/// Everything `lb run` needs, checked.
#[derive(Debug)]
pub struct AgentConfig {
    pub plan: AttachPlan,
    /// The uplinks (in plan order), node addresses and where each group is served.
    pub serving: Serving,
    pub services_file: Option<PathBuf>,
    /// The services file's contents at start.
    pub static_services: Desired,
    pub marathon: Option<marathon::Config>,
    /// Where `/metrics` and the status page are served (None: `--metrics-listen off`).
    pub metrics: Option<std::net::SocketAddr>,
    /// The HTTP path, when a listener is given.
    pub http: Option<crate::http::HttpConfig>,
    /// VIPs announced through BIRD, when `--bird-socket` is given.
    pub bird: Option<crate::announce::BirdConfig>,
    /// `--second-chance-secs`.
    pub second_chance_secs: u64,
    /// DNS, when `--dns-listen` is given.
    pub dns: Option<crate::dns::DnsConfig>,
}

impl AgentConfig {
    /// Validates `args` against this machine. Reads only: the one exception is mounting cgroup v2
    /// at /run/lb/cgroup2 when the machine has no cgroup v2 mount and no `--cgroup` was given.
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        if args.services.is_none() && args.marathon.is_empty() {
            return Err(ConfigError::NoSource);
        }
        let dsr = dsr_config(args);
        let load = load_config(args, &dsr);
        require_lru_batches(load.sizes.max_flows)?;
        let marathon = marathon_config(args)?;
        let metrics = args.metrics_listen.0;
        if let Some(addr) = metrics.filter(|a| !a.ip().is_loopback() && !args.metrics_listen_public) {
            return Err(ConfigError::MetricsNotLoopback(addr));
        }
        preflight::require_pin_dir(&args.pins.pin_dir)?;
        let uplinks = args.ifaces.iter().map(|name| Ok(Uplink { name: name.clone(), ifindex: preflight::interface_index(name)? }));
        let uplinks = uplinks.collect::<Result<Vec<_>, PreflightError>>()?;
        let exposure = exposure(args, &uplinks)?;
        if let Some((eph_min, eph_max)) = preflight::ephemeral_ports() {
            let (min, max) = load.settings.nat_ports;
            if min <= eph_max && eph_min <= max {
                return Err(ConfigError::NatPortsOverlapEphemeral { min, max, eph_min, eph_max });
            }
        }
        let cgroup = match &args.cgroup {
            Some(dir) => dir.clone(),
            None => preflight::cgroup2_root()?,
        };
        preflight::require_cgroup2(&cgroup)?;
        let static_services = match &args.services {
            Some(path) => services_file::load(path)?,
            None => Desired::new(),
        };
        let http = http_config(args)?;
        let dns = dns_config(args)?;
        let bird = bird_config(args)?;
        let plan = AttachPlan {
            pin_dir: args.pins.pin_dir.clone(),
            ifaces: args.ifaces.clone(),
            cgroup,
            load,
            ingress_hook: args.ingress_hook,
            dsr,
        };
        Ok(Self {
            plan,
            serving: Serving::new(args.node_ips.clone(), uplinks, exposure),
            services_file: args.services.clone(),
            static_services,
            marathon,
            metrics,
            http,
            bird,
            second_chance_secs: args.second_chance_secs,
            dns,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.plan.pin_dir
    }
}

/// `--expose` and `--default-group`: every interface an entry names must be an uplink (traffic
/// arriving elsewhere is never balanced, so exposing a group there would serve nothing).
fn exposure(args: &RunArgs, uplinks: &[Uplink]) -> Result<Exposure, ConfigError> {
    for entry in &args.expose {
        for target in &entry.targets {
            let Target::Iface(iface) = target else { continue };
            if !uplinks.iter().any(|u| &u.name == iface) {
                let exists = preflight::interface_index(iface).is_ok();
                return Err(ConfigError::ExposeNotUplink { group: entry.group.clone(), iface: iface.clone(), exists });
            }
        }
    }
    Exposure::new(args.expose.clone(), &args.default_group).map_err(ConfigError::Expose)
}

/// Free entries a CPU takes from a shared LRU table at once (`LOCAL_FREE_TARGET` in the
/// kernel's bpf_lru_list.c). Measured here: 64-entry tables on 2 CPUs broke held connections
/// on overflow; 256 and more evicted only the least recently used ones.
const LRU_BATCH: u64 = 128;

fn require_lru_batches(max_flows: u32) -> Result<(), ConfigError> {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1));
    let min = LRU_BATCH * cpus as u64;
    if u64::from(max_flows) < min {
        return Err(ConfigError::FlowTableTooSmall { given: max_flows, min, cpus });
    }
    Ok(())
}

/// `--bird-socket` and `--bird-routes` (clap makes them come together). The socket is not
/// checked here: a BIRD that is down is reported and retried at run time.
fn bird_config(args: &RunArgs) -> Result<Option<crate::announce::BirdConfig>, ConfigError> {
    let (Some(socket), Some(routes)) = (&args.bird_socket, &args.bird_routes) else { return Ok(None) };
    let dir = routes.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(ConfigError::BirdRoutesDir(routes.display().to_string()));
    }
    Ok(Some(crate::announce::BirdConfig { socket: socket.clone(), routes: routes.clone(), withdraw_on_stop: args.withdraw_on_stop }))
}

fn load_config(args: &RunArgs, dsr: &DsrConfig) -> LoadConfig {
    LoadConfig {
        sizes: MapSizes {
            ring_slots: args.ring_slots,
            max_services: args.max_services,
            max_backends: args.max_backends,
            max_flows: args.max_flows,
            max_source_ranges: args.max_source_ranges,
        },
        settings: RuntimeSettings { udp_timeout_secs: args.udp_timeout, nat_ports: args.nat_ports, dsr: (dsr.port, dsr.flags()) },
    }
}

/// `--dsr`, `--dsr-nodes`, `--decap-from`, `--dsr-port` (clap makes `--dsr` and `--dsr-nodes`
/// come together).
fn dsr_config(args: &RunArgs) -> DsrConfig {
    let nodes = if args.dsr { args.dsr_nodes.clone() } else { Vec::new() };
    DsrConfig { port: args.dsr_port, nodes, decap_from: args.decap_from.clone() }
}

fn marathon_config(args: &RunArgs) -> Result<Option<marathon::Config>, ConfigError> {
    if args.marathon.is_empty() {
        return Ok(None);
    }
    let mut auth = match (&args.marathon_credentials, &args.marathon_token) {
        (Some(_), Some(_)) => return Err(ConfigError::TwoAuths),
        (Some(cred), None) => cred.clone(),
        (None, Some(token)) => Auth::Token(token.clone()),
        (None, None) => Auth::None,
    };
    let mut urls = Vec::new();
    for url in &args.marathon {
        let mut url = url.clone();
        // Credentials in a URL are used when no flag gives any, and never logged with it.
        if !url.username().is_empty() {
            if matches!(auth, Auth::None) {
                auth = Auth::Basic { user: url.username().to_owned(), password: url.password().unwrap_or_default().to_owned() };
            }
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        urls.push(url.to_string());
    }
    Ok(Some(marathon::Config {
        urls,
        auth,
        timeout: Duration::from_secs(args.marathon_timeout),
        event_stall: Duration::from_secs(args.event_stall),
        resync: Duration::from_secs(args.resync),
        vips: args.vip_cidr,
    }))
}

