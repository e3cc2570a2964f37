//! Command line of `lb`.

use std::{
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use lb_common::names;
use tracing::{debug, error, info, warn};

use crate::{
    marathon::{
        client::{Auth, MarathonClient},
        model::{parse_apps, translate, HealthMemory},
        vip::VipRange,
        watch::{DnsCache, EventWatch},
    },
    status::{self, AgentStatus, MarathonStatus, UplinkStatus},
    dataplane::{
        loader::{self, AttachPlan, IngressHook, LoadLimits},
        pinned::{pin_name, PinnedMaps},
        Dataplane, DEFAULT_PIN_DIR,
    },
    model::Desired,
    node_addrs, preflight,
    reconcile::{self, Reconciler},
    report, services_file,
};

#[derive(Debug, Parser)]
#[command(name = "lb", version, about = "Kernel (XDP/TC/socket-hook) L4 load balancer for Marathon clusters")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the data path, program it, and keep it programmed until SIGINT/SIGTERM.
    /// Programs stay attached and maps pinned after exit; `lb down` removes them.
    Run(RunArgs),
    /// Services and their backends, read from the pinned maps.
    Services(ReadArgs),
    /// Entries of the flow table (connections pinned to backends).
    Flows(FlowArgs),
    /// Counters: per outcome, per service, per interface.
    Stats(ReadArgs),
    /// The agent's own view: Marathon reachability, event stream, last sync, skipped apps.
    Status(ReadArgs),
    /// Named VIPs and the addresses they were given.
    Vips(ReadArgs),
    /// Detach every program and remove every pin under the pin directory.
    Down(PinArgs),
}

#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// bpffs directory holding the agent's pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FlowArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Show at most this many flows.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Uplink to balance on (ingress) and to restore replies on (TC egress); repeat for several.
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,
    /// Program that balances on uplink ingress: `auto` = TC on veth, native XDP where the driver
    /// has it, TC otherwise; `xdp` (native, else generic); `tc`.
    #[arg(long, value_enum, default_value_t = IngressHook::Auto, value_name = "HOOK")]
    pub ingress_hook: IngressHook,
    /// Static services file (JSON, see README); reloaded on change and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub services: Option<PathBuf>,
    /// Marathon URL (http or https, optionally with user:password@); repeat for several: REST
    /// fails over between them, the event stream goes round them.
    #[arg(long = "marathon", value_name = "URL")]
    pub marathon: Vec<String>,
    /// HTTP basic credentials for Marathon (also LB_MARATHON_CREDENTIALS).
    #[arg(long, value_name = "USER:PASSWORD", env = "LB_MARATHON_CREDENTIALS", hide_env_values = true)]
    pub marathon_credentials: Option<String>,
    /// DC/OS token for Marathon, sent as `Authorization: token=…` (also LB_MARATHON_TOKEN).
    #[arg(long, value_name = "TOKEN", env = "LB_MARATHON_TOKEN", hide_env_values = true)]
    pub marathon_token: Option<String>,
    /// Range named VIPs (`/web:80` labels) get addresses from, the same on every node.
    #[arg(long, value_name = "CIDR", default_value = "11.0.0.0/8")]
    pub vip_cidr: String,
    /// Seconds between full re-reads of Marathon's apps when no event asks for one.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub resync: u64,
    /// Seconds a Marathon request may take.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub marathon_timeout: u64,
    /// Address of this node where service ports are served; repeat for several. Default: every
    /// address of every interface. 127.0.0.1 and ::1 are always included.
    #[arg(long = "node-ip", value_name = "ADDR")]
    pub node_ips: Vec<IpAddr>,
    /// cgroup v2 directory whose processes (and descendants') get the socket hooks: their
    /// connections to services go straight to a backend. Default: the cgroup v2 root (mounted
    /// at /run/lb/cgroup2 if the machine has no cgroup v2 mount).
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Entries per Maglev ring (prime). Memory: (max-services + 64) × ring-size × 4 bytes.
    #[arg(long, default_value_t = lb_common::maglev::DEFAULT_RING_SIZE)]
    pub ring_size: u32,
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_SERVICES)]
    pub max_services: u32,
    /// Backend entries (one per service membership).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_BACKENDS)]
    pub max_backends: u32,
    /// Flow-table entries (LRU), per address family (IPv4 and IPv6 flows have their own tables).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_FLOWS)]
    pub max_flows: u32,
    /// Seconds of silence after which a UDP flow may move to another backend.
    #[arg(long, default_value_t = lb_common::DEFAULT_UDP_TIMEOUT_SECS)]
    pub udp_timeout: u64,
    /// Source ports for full NAT towards backends on other nodes (MIN-MAX). Must not overlap
    /// the node's ephemeral ports (net.ipv4.ip_local_port_range) nor any service port.
    #[arg(long, value_name = "MIN-MAX", default_value = "61000-65535", value_parser = parse_port_range)]
    pub nat_ports: (u16, u16),
}

fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (min, max) = text.split_once('-').ok_or_else(|| format!("{text:?} is not MIN-MAX"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|_| format!("{p:?} is not a port"));
    Ok((port(min)?, port(max)?))
}

impl RunArgs {
    fn limits(&self) -> LoadLimits {
        LoadLimits {
            ring_size: self.ring_size,
            max_services: self.max_services,
            max_backends: self.max_backends,
            max_flows: self.max_flows,
            udp_timeout_secs: self.udp_timeout,
            nat_ports: self.nat_ports,
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_agent(args),
        Command::Services(args) => {
            let services = report::services(&PinnedMaps::new(&args.pins.pin_dir))?;
            report::print_services(&services, args.json, &mut std::io::stdout().lock())
        }
        Command::Flows(args) => {
            let flows = report::flows(&PinnedMaps::new(&args.read.pins.pin_dir), args.limit)?;
            report::print_flows(&flows, args.read.json, &mut std::io::stdout().lock())
        }
        Command::Stats(args) => {
            let stats = report::stats(&PinnedMaps::new(&args.pins.pin_dir))?;
            // Interface indexes are per network namespace: the agent's own names come first.
            let uplinks = status::read(&args.pins.pin_dir).map(|s| s.uplinks).unwrap_or_default();
            let names = uplinks.into_iter().map(|u| (u.ifindex, u.name)).collect();
            report::print_stats(&stats, &names, args.json, &mut std::io::stdout().lock())
        }
        Command::Status(args) => {
            let status = status::read(&args.pins.pin_dir)
                .with_context(|| format!("no status for {} (has `lb run` run with this --pin-dir?)", args.pins.pin_dir.display()))?;
            report::print_status(&status, args.json, &mut std::io::stdout().lock())
        }
        Command::Vips(args) => {
            let status = status::read(&args.pins.pin_dir)
                .with_context(|| format!("no status for {} (has `lb run` run with this --pin-dir?)", args.pins.pin_dir.display()))?;
            let vips = status.marathon.map(|m| m.named_vips).unwrap_or_default();
            report::print_vips(&vips, args.json, &mut std::io::stdout().lock())
        }
        Command::Down(args) => {
            preflight::require_privileges()?;
            let removed = loader::tear_down(&args.pin_dir)?;
            // The agent's last status describes what was just removed.
            let _ = std::fs::remove_file(status::path_for(&args.pin_dir));
            println!("removed {removed} pins under {}", args.pin_dir.display());
            Ok(())
        }
    }
}

fn run_agent(args: RunArgs) -> Result<()> {
    init_logging();
    // Everything that can be checked is checked before the kernel is touched.
    preflight::require_privileges()?;
    let limits = args.limits();
    limits.validate().map_err(anyhow::Error::msg)?;
    preflight::require_bpffs(&args.pins.pin_dir)?;
    for iface in &args.ifaces {
        preflight::interface_index(iface)?;
    }
    let cgroup = match &args.cgroup {
        Some(dir) => dir.clone(),
        None => preflight::cgroup2_root()?,
    };
    preflight::require_cgroup2(&cgroup)?;
    let desired = match &args.services {
        Some(path) => services_file::load(path)?,
        None => Desired::new(),
    };
    check_pinned_layout(&args.pins.pin_dir, &limits)?;
    let plan = AttachPlan {
        pin_dir: args.pins.pin_dir.clone(),
        ifaces: args.ifaces.clone(),
        cgroup,
        limits,
        ingress_hook: args.ingress_hook,
    };
    let loaded = loader::bring_up(&plan)?;
    info!(
        pin_dir = %plan.pin_dir.display(),
        ifaces = ?plan.ifaces,
        ring_mib = limits.ring_bytes() / (1 << 20),
        "data path up"
    );

    let marathon = marathon_source(&args)?;
    let mut agent = Agent {
        dataplane: PinnedMaps::new(&plan.pin_dir),
        reconciler: Reconciler::default(),
        node_ips: args.node_ips.clone(),
        nat_ports: limits.nat_ports,
        static_desired: desired,
        marathon_desired: None,
        status: AgentStatus { pid: std::process::id(), pin_dir: plan.pin_dir.display().to_string(), ..AgentStatus::default() },
        warmed: Default::default(),
    };
    let uplinks: Vec<u32> = args.ifaces.iter().map(|i| preflight::interface_index(i)).collect::<Result<_, _>>()?;
    reconcile::sync_uplinks(&uplinks, &mut agent.dataplane)?;
    agent.status.uplinks = loaded
        .ingress
        .iter()
        .zip(&uplinks)
        .map(|((name, hook), &ifindex)| UplinkStatus { name: name.clone(), ifindex, ingress_hook: hook.to_string() })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut marathon = marathon;
        if let Some(m) = marathon.as_mut() {
            // Until Marathon has answered once, the services already pinned (a restart) stay
            // exactly as they are: an empty or unreachable source never flushes them.
            agent.sync_marathon(m).await;
        } else {
            agent.apply()?;
        }
        println!("ready");
        std::io::stdout().flush()?;
        agent.serve(args.services.as_deref(), marathon.as_mut()).await
    })?;
    drop(loaded);
    info!("stopping; programs stay attached and maps pinned (lb down removes them)");
    Ok(())
}

/// Marathon client, event watch and translation state, when `--marathon` is given.
struct MarathonSource {
    client: MarathonClient,
    watch: EventWatch,
    health: HealthMemory,
    dns: DnsCache,
    vips: VipRange,
    resync: Duration,
}

fn marathon_source(args: &RunArgs) -> Result<Option<MarathonSource>> {
    if args.marathon.is_empty() {
        return Ok(None);
    }
    let vips = VipRange::parse(&args.vip_cidr).map_err(|e| anyhow::anyhow!("--vip-cidr: {e}"))?;
    let mut auth = match (&args.marathon_credentials, &args.marathon_token) {
        (Some(_), Some(_)) => bail!("give either --marathon-credentials or --marathon-token, not both"),
        (Some(cred), None) => {
            let (user, password) = cred.split_once(':').context("--marathon-credentials must be USER:PASSWORD")?;
            Auth::Basic { user: user.into(), password: password.into() }
        }
        (None, Some(token)) => Auth::Token(token.clone()),
        (None, None) => Auth::None,
    };
    let mut urls = Vec::new();
    for url in &args.marathon {
        let mut parsed = reqwest::Url::parse(url).with_context(|| format!("--marathon {url:?} is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--marathon {url:?}: only http and https are supported");
        }
        if !parsed.username().is_empty() {
            if matches!(auth, Auth::None) {
                let password = parsed.password().unwrap_or_default().to_owned();
                auth = Auth::Basic { user: parsed.username().to_owned(), password };
            }
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
        }
        urls.push(parsed.to_string());
    }
    let timeout = Duration::from_secs(args.marathon_timeout.max(1));
    let client = MarathonClient::new(urls, auth, timeout).context("building the HTTP client")?;
    Ok(Some(MarathonSource {
        client,
        watch: EventWatch::new(Duration::from_secs(30)),
        health: HealthMemory::default(),
        dns: DnsCache::default(),
        vips,
        resync: Duration::from_secs(args.resync.max(1)),
    }))
}

struct Agent {
    dataplane: PinnedMaps,
    reconciler: Reconciler,
    node_ips: Vec<IpAddr>,
    nat_ports: (u16, u16),
    static_desired: Desired,
    /// None until Marathon has answered once.
    marathon_desired: Option<Desired>,
    status: AgentStatus,
    /// Backend addresses already sent a neighbour-resolving datagram.
    warmed: std::collections::BTreeSet<IpAddr>,
}

impl Agent {
    /// Programs the static services plus Marathon's (Marathon wins a clash).
    fn apply(&mut self) -> Result<()> {
        let addrs = if self.node_ips.is_empty() {
            node_addrs::discover().context("listing this node's addresses")?
        } else {
            node_addrs::with_loopback(self.node_ips.clone())
        };
        reconcile::sync_node_addrs(&addrs, &mut self.dataplane)?;
        let mut desired = self.static_desired.clone();
        for (id, service) in self.marathon_desired.iter().flatten() {
            if desired.insert(*id, service.clone()).is_some() {
                warn!(service = %id, "defined both in the services file and by Marathon; Marathon's definition wins");
            }
        }
        let desired = exclude_nat_ports(&desired, self.nat_ports);
        let report = self.reconciler.apply(&desired, &mut self.dataplane)?;
        for failure in &report.failed {
            error!("{failure}");
        }
        self.warmed = warm_neighbours(&desired, std::mem::take(&mut self.warmed));
        self.status.services = desired.len();
        self.write_status();
        Ok(())
    }

    fn write_status(&mut self) {
        self.status.updated = status::now();
        if let Err(err) = status::write(&self.status) {
            warn!("writing the status file: {err}");
        }
    }

    /// Re-reads the services file; an invalid file changes nothing.
    fn reload(&mut self, path: &Path) {
        match services_file::load(path) {
            Ok(desired) => {
                self.static_desired = desired;
                if let Err(err) = self.apply() {
                    error!("applying {}: {err:#}", path.display());
                }
            }
            Err(err) => error!("{err}; keeping the services already programmed"),
        }
    }

    /// One full read of Marathon's apps. On failure nothing changes (the last good state stays
    /// programmed) and the status says why.
    async fn sync_marathon(&mut self, m: &mut MarathonSource) {
        let started = std::time::Instant::now();
        let status = self.status.marathon.get_or_insert_with(MarathonStatus::default);
        status.urls = m.client.urls().to_vec();
        match m.client.apps().await {
            Ok(body) => {
                let fetched = started.elapsed();
                let (apps, parse_errors) = match parse_apps(&body) {
                    Ok(parsed) => parsed,
                    Err(err) => {
                        warn!("Marathon: {err}; keeping the services already programmed");
                        status.last_error = Some(err);
                        status.failures_in_a_row += 1;
                        self.write_status();
                        return;
                    }
                };
                drop(body);
                let total_apps = apps.len() + parse_errors.len();
                m.dns.refresh(&apps).await;
                let translation = translate(&apps, parse_errors, &mut m.dns, &mut m.health, &m.vips);
                let translated = started.elapsed();
                for (app, why) in &translation.app_errors {
                    warn!(app, "app skipped: {why}");
                }
                for warning in &translation.warnings {
                    debug!("{warning}");
                }
                status.current = m.client.current().to_owned();
                status.last_sync = Some(status::now());
                status.last_error = None;
                status.failures_in_a_row = 0;
                status.apps = total_apps;
                status.skipped_apps = translation.app_errors.iter().cloned().collect();
                status.skipped_tasks = translation.warnings.len();
                status.named_vips = translation.named_vips.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
                status.event_stream = m.watch.connected_to().map(str::to_owned);
                self.marathon_desired = Some(translation.desired);
                match self.apply() {
                    Ok(()) => info!(
                        fetch_ms = fetched.as_millis() as u64,
                        translate_ms = (translated - fetched).as_millis() as u64,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "synced from Marathon"
                    ),
                    Err(err) => error!("applying Marathon's services: {err:#}"),
                }
            }
            Err(err) => {
                warn!("Marathon: {err}; keeping the services already programmed");
                status.last_error = Some(err.to_string());
                status.failures_in_a_row += 1;
                status.event_stream = m.watch.connected_to().map(str::to_owned);
                self.write_status();
            }
        }
    }

    async fn serve(&mut self, services: Option<&Path>, mut marathon: Option<&mut MarathonSource>) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        let mut seen = services.and_then(modified);
        let resync_every = marathon.as_ref().map_or(Duration::from_secs(3600), |m| m.resync);
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + resync_every, resync_every);
        // A failed sync is retried with backoff, separately from the periodic re-read.
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut retry_backoff = Duration::from_millis(500);
        loop {
            let event = async {
                match marathon.as_deref_mut() {
                    Some(m) => m.watch.next(&mut m.client).await,
                    None => std::future::pending().await,
                }
            };
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let mut sync_now = false;
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM"); return Ok(()) }
                _ = int.recv() => { info!("SIGINT"); return Ok(()) }
                _ = hup.recv() => {
                    if let Some(path) = services {
                        info!("SIGHUP: reloading {}", path.display());
                        seen = modified(path);
                        self.reload(path);
                    }
                    sync_now = marathon.is_some();
                }
                _ = poll.tick() => {
                    if let Some(path) = services {
                        let now = modified(path);
                        if now != seen {
                            seen = now;
                            info!("{} changed: reloading", path.display());
                            self.reload(path);
                        }
                    }
                }
                signal = event => {
                    debug!(?signal, "Marathon event stream");
                    sync_now = true;
                }
                _ = resync.tick() => sync_now = marathon.is_some(),
                _ = retry => sync_now = true,
            }
            if let (true, Some(m)) = (sync_now, marathon.as_deref_mut()) {
                self.sync_marathon(m).await;
                let failed = self.status.marathon.as_ref().is_some_and(|s| s.last_error.is_some());
                if failed {
                    retry_at = Some(tokio::time::Instant::now() + retry_backoff);
                    retry_backoff = (retry_backoff * 2).min(Duration::from_secs(30));
                } else {
                    retry_at = None;
                    retry_backoff = Duration::from_millis(500);
                }
            }
        }
    }
}

/// Refuses limits that differ from those of maps already pinned: the attached programs were
/// built for the pinned layout.
fn check_pinned_layout(pin_dir: &Path, limits: &LoadLimits) -> Result<()> {
    if !pin_dir.join(pin_name(names::MAP_SERVICES)).exists() {
        return Ok(());
    }
    let pinned = PinnedMaps::new(pin_dir).limits()?;
    if pinned.ring_size != limits.ring_size || pinned.max_services != limits.max_services || pinned.max_backends != limits.max_backends {
        bail!(
            "maps pinned in {} were created with --ring-size {} --max-services {} --max-backends {}; \
             keep those or run `lb down` first (drops established flows)",
            pin_dir.display(),
            pinned.ring_size,
            pinned.max_services,
            pinned.max_backends
        );
    }
    Ok(())
}

/// Service ports inside the NAT port range would be mistaken for NAT replies: they are left out,
/// with an error naming them; every other service applies.
fn exclude_nat_ports(desired: &Desired, (min, max): (u16, u16)) -> Desired {
    let mut kept = desired.clone();
    kept.retain(|id, service| {
        let clash = matches!(id.addr, crate::model::ServiceAddr::NodePort { .. }) && (min..=max).contains(&id.port);
        if clash {
            error!(service = %id, name = %service.name, "service port is inside --nat-ports {min}-{max}: not programmed");
        }
        !clash
    });
    kept
}

/// Sends one empty datagram to the discard port of every backend not sent one before, so that
/// the kernel resolves the next hop's link-layer address: XDP can only forward to resolved
/// neighbours (full NAT); the kernel keeps them fresh while traffic flows. Returns the
/// addresses of the current backends.
fn warm_neighbours(desired: &Desired, warmed: std::collections::BTreeSet<IpAddr>) -> std::collections::BTreeSet<IpAddr> {
    let backends: std::collections::BTreeSet<IpAddr> =
        desired.values().flat_map(|s| s.backends.iter().map(|b| b.addr)).collect();
    for addr in backends.difference(&warmed) {
        let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        if let Ok(sock) = std::net::UdpSocket::bind(bind) {
            let _ = sock.send_to(&[], (*addr, 9));
        }
    }
    backends
}

fn modified(path: &Path) -> Option<SystemTime> {
    match std::fs::metadata(path).and_then(|m| m.modified()) {
        Ok(t) => Some(t),
        Err(err) => {
            warn!("{}: {err}", path.display());
            None
        }
    }
}

fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
