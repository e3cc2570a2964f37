//! Loads the embedded kernel object, attaches it, and pins maps and links under the pin directory.
//!
//! Pin layout: `<pin-dir>/<map>` for every map (lower-case symbol name), `<pin-dir>/links/<hook>@<iface>`
//! for every attachment. Pinned links keep the programs attached after the agent exits; a restarted
//! agent re-uses the pinned maps (aya opens an existing pin instead of creating a map) and keeps
//! every pinned link, so no flow is lost. `tear_down` (lb down) removes all of it.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink, LinkError},
        CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::names;
use thiserror::Error;
use tracing::{info, warn};

use super::pinned::pin_name;
use crate::preflight;

/// The kernel object, built by build.rs and embedded so `lb` is self-contained.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJ"));
/// An XDP program that only passes packets (lb-ebpf/src/xdp_pass.rs).
static XDP_PASS_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_XDP_PASS_OBJ"));

#[derive(Debug, Error)]
pub enum LoaderError {
    #[error("loading the BPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error("attaching {hook} to {iface}: {source}")]
    Attach { hook: &'static str, iface: String, source: ProgramError },
    #[error("taking the link: {0}")]
    Link(LinkError),
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: aya::pin::PinError },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What the agent attaches where.
#[derive(Clone, Debug)]
pub struct AttachPlan {
    pub pin_dir: PathBuf,
    pub ifaces: Vec<String>,
    /// cgroup v2 directory the socket hooks attach to (local clients in it and below).
    pub cgroup: PathBuf,
    pub limits: LoadLimits,
    pub ingress_hook: IngressHook,
}

/// Which program balances on an uplink's ingress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressHook {
    /// TC on veth (native XDP there copies every multi-buffer/GRO frame into a new one), native
    /// XDP elsewhere, TC where the driver has no native XDP.
    #[default]
    Auto,
    /// XDP, native where the driver supports it, else the kernel's generic mode.
    Xdp,
    /// TC (TCX) ingress on the skb the stack built.
    Tc,
}

/// Map sizes and timeouts fixed when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadLimits {
    pub ring_size: u32,
    pub max_services: u32,
    pub max_backends: u32,
    pub max_flows: u32,
    pub udp_timeout_secs: u64,
    /// Source ports of full NAT (inclusive).
    pub nat_ports: (u16, u16),
}

impl Default for LoadLimits {
    fn default() -> Self {
        Self {
            ring_size: lb_common::maglev::DEFAULT_RING_SIZE,
            max_services: lb_common::DEFAULT_MAX_SERVICES,
            max_backends: lb_common::DEFAULT_MAX_BACKENDS,
            max_flows: lb_common::DEFAULT_MAX_FLOWS,
            udp_timeout_secs: lb_common::DEFAULT_UDP_TIMEOUT_SECS,
            nat_ports: (lb_common::DEFAULT_NAT_PORT_MIN, lb_common::DEFAULT_NAT_PORT_MAX),
        }
    }
}

impl LoadLimits {
    /// Bytes of kernel memory the rings take: (services + spares) × ring size × 4.
    pub fn ring_bytes(&self) -> u64 {
        (self.max_services + lb_common::SPARE_RINGS) as u64 * self.ring_size as u64 * 4
    }

    /// Checks the limits before any map is created.
    pub fn validate(&self) -> Result<(), String> {
        if !lb_common::maglev::is_prime(self.ring_size) || self.ring_size < 7 {
            return Err(format!("--ring-size {} must be a prime ≥ 7 (e.g. 4093, 16381, 65537)", self.ring_size));
        }
        if self.max_services == 0 || self.max_backends < 2 || self.max_flows == 0 {
            return Err("--max-services, --max-flows must be ≥ 1 and --max-backends ≥ 2".into());
        }
        if self.nat_ports.0 == 0 || self.nat_ports.0 > self.nat_ports.1 {
            return Err(format!("--nat-ports {}-{} is not a port range", self.nat_ports.0, self.nat_ports.1));
        }
        if (self.max_services as u64 + lb_common::SPARE_RINGS as u64) * self.ring_size as u64 > u32::MAX as u64 / 4 {
            return Err(format!("--max-services {} × --ring-size {} is too large for one ring pool", self.max_services, self.ring_size));
        }
        Ok(())
    }
}

/// The loaded object. Dropping it closes the agent's file descriptors; the pins keep everything
/// attached.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// (uplink, the ingress hook balancing on it: `xdp` or `tc_ingress`), in plan order.
    pub ingress: Vec<(String, &'static str)>,
}

/// Hooks attached per uplink, with the pin name of their link.
const XDP_HOOK: &str = "xdp";
const TC_INGRESS_HOOK: &str = "tc_ingress";
const TC_EGRESS_HOOK: &str = "tc_egress";

/// Loads, attaches and pins according to `plan`. On error, every pin created by this call is
/// removed again, so a failed start leaves nothing attached or pinned.
pub fn bring_up(plan: &AttachPlan) -> Result<Loaded, LoaderError> {
    let mut created = Created::default();
    match bring_up_tracked(plan, &mut created) {
        Ok(loaded) => {
            created.commit();
            Ok(loaded)
        }
        Err(err) => {
            created.roll_back();
            Err(err)
        }
    }
}

fn bring_up_tracked(plan: &AttachPlan, created: &mut Created) -> Result<Loaded, LoaderError> {
    created.mkdir(&plan.pin_dir)?;
    created.mkdir(&links_dir(&plan.pin_dir))?;
    for map in names::PINNED_MAPS {
        let path = plan.pin_dir.join(pin_name(map));
        if !path.exists() {
            created.files.push(path);
        }
    }
    let mut ebpf = load_object(&plan.pin_dir, &plan.limits)?;

    let mut ingress = Vec::new();
    for iface in &plan.ifaces {
        ingress.push((iface.clone(), attach_ingress(&mut ebpf, plan, iface, created)?));
    }
    for iface in &plan.ifaces {
        attach_tc(&mut ebpf, plan, iface, TcAttachType::Egress, created)?;
    }
    attach_socket_hooks(&mut ebpf, plan, created)?;
    Ok(Loaded { ebpf, ingress })
}

/// Attaches the ingress balancer `plan.ingress_hook` asks for to `iface`. One balancer per
/// uplink: a restart that picks the other hook attaches it first, then unpins the old one, so no
/// packet goes unbalanced in between.
fn attach_ingress(ebpf: &mut Ebpf, plan: &AttachPlan, iface: &str, created: &mut Created) -> Result<&'static str, LoaderError> {
    let preferred = match plan.ingress_hook {
        IngressHook::Auto if preflight::interface_driver(iface).as_deref() == Some("veth") => IngressHook::Tc,
        other => other,
    };
    let attached = match preferred {
        IngressHook::Tc => attach_tc(ebpf, plan, iface, TcAttachType::Ingress, created)?,
        IngressHook::Xdp => attach_xdp(ebpf, plan, iface, XdpMode::Default, created)?,
        IngressHook::Auto => match attach_xdp(ebpf, plan, iface, XdpMode::Driver, created) {
            Ok(hook) => hook,
            Err(err) => {
                warn!(iface, error = %err, "no native XDP here; balancing in TC ingress");
                attach_tc(ebpf, plan, iface, TcAttachType::Ingress, created)?
            }
        },
    };
    let replaced = if attached == XDP_HOOK { TC_INGRESS_HOOK } else { XDP_HOOK };
    let stale = link_pin(&plan.pin_dir, replaced, iface);
    if stale.exists() {
        fs::remove_file(&stale).map_err(|source| LoaderError::Io { path: stale.clone(), source })?;
        info!(iface, replaced, by = attached, "ingress balancer replaced");
    }
    Ok(attached)
}

fn attach_xdp(ebpf: &mut Ebpf, plan: &AttachPlan, iface: &str, mode: XdpMode, created: &mut Created) -> Result<&'static str, LoaderError> {
    let xdp: &mut Xdp = program(ebpf, names::PROG_XDP)?;
    if xdp.fd().is_err() {
        xdp.load().map_err(|source| LoaderError::Program { name: names::PROG_XDP, source })?;
    }
    attach_pinned(plan, XDP_HOOK, iface, created, |err| {
        let id = xdp.attach(iface, mode).map_err(err)?;
        xdp.take_link(id).map_err(err)?.try_into().map_err(LoaderError::Link)
    })?;
    Ok(XDP_HOOK)
}

/// Attaches the TC (TCX) program of `direction` to `iface`: the balancer on ingress, the reply
/// restore on egress. Returns the hook's pin name.
fn attach_tc(
    ebpf: &mut Ebpf,
    plan: &AttachPlan,
    iface: &str,
    direction: TcAttachType,
    created: &mut Created,
) -> Result<&'static str, LoaderError> {
    let (name, hook) = match direction {
        TcAttachType::Ingress => (names::PROG_TC_INGRESS, TC_INGRESS_HOOK),
        _ => (names::PROG_TC_EGRESS, TC_EGRESS_HOOK),
    };
    let tc: &mut SchedClassifier = program(ebpf, name)?;
    if tc.fd().is_err() {
        tc.load().map_err(|source| LoaderError::Program { name, source })?;
    }
    attach_pinned(plan, hook, iface, created, |err| {
        let id = tc.attach(iface, direction).map_err(err)?;
        tc.take_link(id).map_err(err)?.try_into().map_err(LoaderError::Link)
    })?;
    Ok(hook)
}

/// Attaches one program to `target` unless a pinned link for it already exists (a restart keeps
/// what is attached), and pins the new link. `attach` gets the error constructor for its
/// attach failures.
fn attach_pinned(
    plan: &AttachPlan,
    hook: &'static str,
    target: &str,
    created: &mut Created,
    attach: impl FnOnce(&dyn Fn(ProgramError) -> LoaderError) -> Result<FdLink, LoaderError>,
) -> Result<(), LoaderError> {
    let path = link_pin(&plan.pin_dir, hook, target);
    if path.exists() {
        info!(hook, target, "already attached (pinned link kept)");
        return Ok(());
    }
    let err = |source| LoaderError::Attach { hook, iface: target.to_owned(), source };
    let link = attach(&err)?;
    pin_link(link, &path, created)?;
    info!(hook, target, "attached");
    Ok(())
}

/// Attaches every cgroup socket hook to the plan's cgroup (alongside any other programs there).
fn attach_socket_hooks(ebpf: &mut Ebpf, plan: &AttachPlan, created: &mut Created) -> Result<(), LoaderError> {
    let cgroup = fs::File::open(&plan.cgroup).map_err(|source| LoaderError::Io { path: plan.cgroup.clone(), source })?;
    for &(name, hook) in names::PROG_SOCK_HOOKS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load().map_err(|source| LoaderError::Program { name, source })?;
        attach_pinned(plan, hook, "cgroup", created, |err| {
            // With bpf_link (kernel ≥ 5.7) attachments always coexist with other programs on
            // the cgroup; the link API rejects the legacy ALLOW_MULTI flag, so the mode stays
            // Single.
            let id = prog.attach(&cgroup, CgroupAttachMode::Single).map_err(err)?;
            prog.take_link(id).map_err(err)?.try_into().map_err(LoaderError::Link)
        })?;
    }
    info!(cgroup = %plan.cgroup.display(), "socket hooks attached");
    Ok(())
}

/// Loads the embedded object with every map pinned under `pin_dir`: an existing pin is opened and
/// re-used (its contents kept), a missing one is created and pinned. Programs are not loaded yet.
pub fn load_object(pin_dir: &Path, limits: &LoadLimits) -> Result<Ebpf, LoaderError> {
    fs::create_dir_all(pin_dir).map_err(|source| LoaderError::Io { path: pin_dir.to_owned(), source })?;
    let map_pins: Vec<(&str, PathBuf)> =
        names::PINNED_MAPS.iter().map(|&m| (m, pin_dir.join(pin_name(m)))).collect();
    // Two u32 ring slots per u64 element (see RINGS in lb-ebpf/src/maps.rs).
    let ring_elements = ((limits.max_services + lb_common::SPARE_RINGS) * limits.ring_size).div_ceil(2);
    let udp_timeout_ns = limits.udp_timeout_secs.saturating_mul(1_000_000_000);
    let mut loader = EbpfLoader::new();
    for (map, path) in &map_pins {
        loader.map_pin_path(map, path.as_path());
    }
    for map in [names::MAP_SERVICES, names::MAP_SERVICE_NAMES, names::MAP_SERVICE_STATS] {
        loader.map_max_entries(map, limits.max_services);
    }
    for map in [names::MAP_BACKENDS, names::MAP_BACKEND_STATS] {
        loader.map_max_entries(map, limits.max_backends);
    }
    for map in [
        names::MAP_FLOWS,
        names::MAP_FLOWS4,
        names::MAP_REPLIES,
        names::MAP_REPLIES4,
        names::MAP_NAT_REPLIES,
        names::MAP_SOCK_REPLIES,
    ] {
        loader.map_max_entries(map, limits.max_flows);
    }
    loader
        .map_max_entries(names::MAP_RINGS, ring_elements)
        .override_global(names::GLOBAL_RING_SIZE, &limits.ring_size, true)
        .override_global(names::GLOBAL_UDP_TIMEOUT_NS, &udp_timeout_ns, true)
        .override_global(names::GLOBAL_NAT_PORT_MIN, &limits.nat_ports.0, true)
        .override_global(names::GLOBAL_NAT_PORT_MAX, &limits.nat_ports.1, true);
    Ok(loader.load(EBPF_OBJECT)?)
}

/// Loads the pass-only XDP program and attaches it to `iface` (in the calling thread's network
/// namespace). A veth accepts XDP_TX/XDP_REDIRECT frames only while it runs an XDP program, so
/// the far end of a veth uplink needs one; it is also the benchmarks' floor. The attachment
/// lasts as long as the returned object.
pub fn attach_xdp_pass(iface: &str) -> Result<Ebpf, LoaderError> {
    let mut ebpf = Ebpf::load(XDP_PASS_OBJECT)?;
    let prog: &mut Xdp = program(&mut ebpf, "lb_xdp_pass")?;
    prog.load().map_err(|source| LoaderError::Program { name: "lb_xdp_pass", source })?;
    prog.attach(iface, XdpMode::Default)
        .map_err(|source| LoaderError::Attach { hook: XDP_HOOK, iface: iface.to_owned(), source })?;
    Ok(ebpf)
}

/// The pass-only XDP program, loaded but not attached: the floor the benchmarks measure the
/// balancer against with BPF_PROG_TEST_RUN.
pub fn load_xdp_pass() -> Result<Ebpf, LoaderError> {
    let mut ebpf = Ebpf::load(XDP_PASS_OBJECT)?;
    let prog: &mut Xdp = program(&mut ebpf, "lb_xdp_pass")?;
    prog.load().map_err(|source| LoaderError::Program { name: "lb_xdp_pass", source })?;
    Ok(ebpf)
}

/// The program `name` of a loaded object, as its concrete type (`Xdp`, `SchedClassifier`, …).
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoaderError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(LoaderError::Program { name, source: ProgramError::NotLoaded })?;
    prog.try_into().map_err(|source| LoaderError::Program { name, source })
}

fn pin_link(link: FdLink, path: &Path, created: &mut Created) -> Result<(), LoaderError> {
    // The pinned link outlives this process; the returned handle's fd is closed at once.
    link.pin(path).map_err(|source| LoaderError::Pin { path: path.to_owned(), source })?;
    created.files.push(path.to_owned());
    Ok(())
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn link_pin(pin_dir: &Path, hook: &str, iface: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("{hook}@{iface}"))
}

/// Detaches every program and unpins every map and link under `pin_dir` (lb down).
/// Returns the number of pins removed.
pub fn tear_down(pin_dir: &Path) -> Result<usize, LoaderError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| LoaderError::Io { path, source }
    };
    let mut removed = 0;
    let links = links_dir(pin_dir);
    if links.exists() {
        for entry in fs::read_dir(&links).map_err(io_err(&links))? {
            let path = entry.map_err(io_err(&links))?.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
            removed += 1;
        }
        fs::remove_dir(&links).map_err(io_err(&links))?;
    }
    for map in names::PINNED_MAPS {
        let path = pin_dir.join(pin_name(map));
        if path.exists() {
            fs::remove_file(&path).map_err(io_err(&path))?;
            removed += 1;
        }
    }
    if pin_dir.exists() {
        fs::remove_dir(pin_dir).map_err(io_err(pin_dir))?;
    }
    Ok(removed)
}

/// Pins and directories created by one `bring_up`, removed again if it fails.
#[derive(Default)]
struct Created {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Created {
    fn mkdir(&mut self, dir: &Path) -> Result<(), LoaderError> {
        if dir.exists() {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(|source| LoaderError::Io { path: dir.to_owned(), source })?;
        self.dirs.push(dir.to_owned());
        Ok(())
    }

    fn commit(&mut self) {
        self.files.clear();
        self.dirs.clear();
    }

    fn roll_back(&mut self) {
        for file in self.files.drain(..).rev() {
            let _ = fs::remove_file(file);
        }
        for dir in self.dirs.drain(..).rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}
