//! Loads the embedded kernel object, attaches it, and pins maps and links under the pin directory.
//!
//! Pin layout: `<pin-dir>/<map>` for every map (lower-case symbol name), `<pin-dir>/links/<hook>@<iface>`
//! for every attachment. Pinned links keep the programs attached after the agent exits. A
//! restarted agent re-uses the pinned maps (aya opens an existing pin instead of creating a map;
//! [`check_pinned_maps`] first makes sure their layout is this binary's) and replaces the program
//! of every pinned link in place (BPF_LINK_UPDATE), so its own programs and settings take effect
//! and no flow is lost. `tear_down` (lb down) removes all of it.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use std::os::fd::{AsFd as _, BorrowedFd};

use aya::{
    maps::{Array, LpmTrie, MapData},
    programs::{
        links::{CgroupAttachMode, FdLink, LinkError},
        CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{names, Hook, Settings};
use thiserror::Error;
use tracing::{info, warn};

pub use super::limits::{LoadConfig, MapSizes, RuntimeSettings};
use super::{
    dsr::{self, DsrConfig, NodeRanges},
    limits::map_entries,
    link::{LinkTarget, PinnedLinkFd, ProgramById},
    pinned::pin_name,
};
use crate::node::preflight;

/// The kernel object, built by build.rs and embedded so `lb` is self-contained.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJ"));
/// An XDP program that only passes packets (lb-ebpf/src/xdp_pass.rs).
static XDP_PASS_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_XDP_PASS_OBJ"));

#[derive(Debug, Error)]
pub enum LoaderError {
    #[error("loading the BPF object")]
    Load(#[from] EbpfError),
    #[error("program {name}")]
    Program { name: &'static str, source: ProgramError },
    #[error("attaching {hook} to {iface}")]
    Attach { hook: &'static str, iface: String, source: ProgramError },
    #[error("taking the link")]
    Link(#[source] LinkError),
    #[error("pinning {path}")]
    Pin { path: PathBuf, source: aya::pin::PinError },
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("replacing the program of {path}")]
    Replace { path: PathBuf, source: io::Error },
    #[error("map {map}: writing the settings")]
    Settings { map: &'static str, source: aya::maps::MapError },
}

/// Why maps pinned by an earlier agent cannot be used by this one.
#[derive(Debug, Error)]
pub enum PinnedMapsError {
    #[error("map {map} pinned in {pin_dir} has {pinned} entries, this start asks for {wanted} ({flag}); keep the pinned value or run `lb down` first (drops established flows)")]
    Size { map: &'static str, pin_dir: PathBuf, pinned: u32, wanted: u32, flag: &'static str },
    #[error("map {map} pinned in {pin_dir} has another layout than this lb's ({pinned} vs {expected}): it was made by an incompatible version; run `lb down` (drops established flows) and start again")]
    Layout { map: &'static str, pin_dir: PathBuf, pinned: String, expected: String },
    #[error("reading map {map} pinned in {pin_dir}")]
    Read { map: &'static str, pin_dir: PathBuf, source: aya::maps::MapError },
    #[error("the embedded BPF object does not parse")]
    Object(#[source] aya_obj::ParseError),
    #[error("the embedded BPF object has no map {0}")]
    MissingMap(&'static str),
}

/// What the agent attaches where.
#[derive(Clone, Debug)]
pub struct AttachPlan {
    pub pin_dir: PathBuf,
    pub ifaces: Vec<String>,
    /// cgroup v2 directory the socket hooks attach to (local clients in it and below).
    pub cgroup: PathBuf,
    pub load: LoadConfig,
    pub ingress_hook: IngressHook,
    /// The node ranges of direct server return (the settings carry the rest).
    pub dsr: DsrConfig,
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

/// The loaded object. Dropping it closes the agent's file descriptors; the pins keep everything
/// attached.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// (uplink, the hook balancing on its ingress), in plan order.
    pub ingress: Vec<(String, Hook)>,
}

/// Loads, attaches and pins according to `plan`; where a link is already pinned (a restart),
/// its program is replaced in place. On error, everything this call changed is undone: new pins
/// and links removed, replaced programs put back, the settings restored — a failed start leaves
/// the node as it found it.
pub fn bring_up(plan: &AttachPlan) -> Result<Loaded, LoaderError> {
    let mut changes = Changes { previous_settings: read_settings(&plan.pin_dir), ..Changes::default() };
    match bring_up_tracked(plan, &mut changes) {
        Ok(loaded) => {
            changes.commit();
            Ok(loaded)
        }
        Err(err) => {
            changes.roll_back(&plan.pin_dir);
            Err(err)
        }
    }
}

fn bring_up_tracked(plan: &AttachPlan, changes: &mut Changes) -> Result<Loaded, LoaderError> {
    changes.mkdir(&plan.pin_dir)?;
    changes.mkdir(&links_dir(&plan.pin_dir))?;
    for map in names::PINNED_MAPS {
        let path = plan.pin_dir.join(pin_name(map));
        if !path.exists() {
            changes.files.push(path);
        }
    }
    let mut ebpf = load_object(&plan.pin_dir, &plan.load)?;
    write_node_ranges(&mut ebpf, &plan.dsr)?;

    let mut ingress = Vec::new();
    for iface in &plan.ifaces {
        ingress.push((iface.clone(), attach_ingress(&mut ebpf, plan, iface, changes)?));
    }
    for iface in &plan.ifaces {
        attach_tc(&mut ebpf, plan, iface, TcAttachType::Egress, changes)?;
    }
    attach_socket_hooks(&mut ebpf, plan, changes)?;
    Ok(Loaded { ebpf, ingress })
}

/// Attaches the ingress balancer `plan.ingress_hook` asks for to `iface`. One balancer per
/// uplink: a restart that picks the other hook attaches it first, then unpins the old one, so no
/// packet goes unbalanced in between.
fn attach_ingress(ebpf: &mut Ebpf, plan: &AttachPlan, iface: &str, changes: &mut Changes) -> Result<Hook, LoaderError> {
    let preferred = match plan.ingress_hook {
        IngressHook::Auto if preflight::interface_driver(iface).as_deref() == Some("veth") => IngressHook::Tc,
        other => other,
    };
    let attached = match preferred {
        IngressHook::Tc => attach_tc(ebpf, plan, iface, TcAttachType::Ingress, changes)?,
        IngressHook::Xdp => attach_xdp(ebpf, plan, iface, XdpMode::Default, changes)?,
        IngressHook::Auto => match attach_xdp(ebpf, plan, iface, XdpMode::Driver, changes) {
            Ok(hook) => hook,
            Err(err) => {
                warn!(iface, error = %err, "no native XDP here; balancing in TC ingress");
                attach_tc(ebpf, plan, iface, TcAttachType::Ingress, changes)?
            }
        },
    };
    // The other hook's link, if an earlier agent balanced there, goes once this start has
    // succeeded (a failed start must leave it attached).
    let replaced = if attached == Hook::XdpIngress { Hook::TcIngress } else { Hook::XdpIngress };
    let stale = link_pin(&plan.pin_dir, replaced.pin_name(), iface);
    if stale.exists() {
        changes.superseded.push(stale);
    }
    Ok(attached)
}

fn attach_xdp(ebpf: &mut Ebpf, plan: &AttachPlan, iface: &str, mode: XdpMode, changes: &mut Changes) -> Result<Hook, LoaderError> {
    let xdp: &mut Xdp = program(ebpf, names::PROG_XDP)?;
    if xdp.fd().is_err() {
        xdp.load().map_err(|source| LoaderError::Program { name: names::PROG_XDP, source })?;
    }
    let pin = link_pin(&plan.pin_dir, Hook::XdpIngress.pin_name(), iface);
    let existing = replace_if_pinned(&pin, program_fd(xdp.fd(), names::PROG_XDP)?, interface_target(iface)?, changes)?;
    if !matches!(existing, Existing::Replaced) {
        let err = attach_error(Hook::XdpIngress.name(), iface);
        let id = xdp.attach(iface, mode).map_err(err)?;
        let link = xdp.take_link(id).map_err(err)?.try_into().map_err(LoaderError::Link)?;
        pin_new_link(link, &pin, existing, changes)?;
        info!(hook = %Hook::XdpIngress, iface, "attached");
    }
    Ok(Hook::XdpIngress)
}

/// Attaches the TC (TCX) program of `direction` to `iface`: the balancer on ingress, the reply
/// restore on egress. Returns the hook's pin name.
fn attach_tc(
    ebpf: &mut Ebpf,
    plan: &AttachPlan,
    iface: &str,
    direction: TcAttachType,
    changes: &mut Changes,
) -> Result<Hook, LoaderError> {
    let (name, hook) = match direction {
        TcAttachType::Ingress => (names::PROG_TC_INGRESS, Hook::TcIngress),
        _ => (names::PROG_TC_EGRESS, Hook::TcEgress),
    };
    let tc: &mut SchedClassifier = program(ebpf, name)?;
    if tc.fd().is_err() {
        tc.load().map_err(|source| LoaderError::Program { name, source })?;
    }
    let pin = link_pin(&plan.pin_dir, hook.pin_name(), iface);
    let existing = replace_if_pinned(&pin, program_fd(tc.fd(), name)?, interface_target(iface)?, changes)?;
    if !matches!(existing, Existing::Replaced) {
        let err = attach_error(hook.name(), iface);
        let id = tc.attach(iface, direction).map_err(err)?;
        let link = tc.take_link(id).map_err(err)?.try_into().map_err(LoaderError::Link)?;
        pin_new_link(link, &pin, existing, changes)?;
        info!(hook = %hook, iface, "attached");
    }
    Ok(hook)
}

/// What was pinned where a link goes.
enum Existing {
    /// A link to the same target: its program was replaced in place.
    Replaced,
    /// Nothing: a new link is pinned there.
    Absent,
    /// A link to another target (the interface was re-created, `--cgroup` changed) or to none
    /// any more: a new link is attached and takes its pin once the start has succeeded.
    Elsewhere,
}

/// If a link is pinned at `pin` (an earlier agent's) and attached to `target`, makes it run
/// `program` instead, remembering the program it ran so a failed start can put it back.
fn replace_if_pinned(pin: &Path, program: BorrowedFd<'_>, target: LinkTarget, changes: &mut Changes) -> Result<Existing, LoaderError> {
    if !pin.exists() {
        return Ok(Existing::Absent);
    }
    let replace_err = |source| LoaderError::Replace { path: pin.to_owned(), source };
    let link = PinnedLinkFd::open(pin).map_err(replace_err)?;
    if !link.is_attached_to(target).map_err(replace_err)? {
        return Ok(Existing::Elsewhere);
    }
    let previous = link.program_id().and_then(ProgramById::open).map_err(replace_err)?;
    match link.replace_program(program) {
        Ok(()) => {}
        // The link's target went away (ENOLINK): it serves nothing any more.
        Err(err) if err.raw_os_error() == Some(libc::ENOLINK) => return Ok(Existing::Elsewhere),
        Err(err) => return Err(replace_err(err)),
    }
    info!(link = %pin.display(), "program replaced in place");
    changes.replaced.push((link, previous));
    Ok(Existing::Replaced)
}

/// Pins a newly attached link at `pin`, or, while an earlier link still holds that pin, beside it
/// until the start has succeeded.
fn pin_new_link(link: FdLink, pin: &Path, existing: Existing, changes: &mut Changes) -> Result<(), LoaderError> {
    if !matches!(existing, Existing::Elsewhere) {
        return pin_link(link, pin, changes);
    }
    let mut staged = pin.as_os_str().to_owned();
    // bpffs refuses names with dots.
    staged.push("_staged");
    let staged = PathBuf::from(staged);
    pin_link(link, &staged, changes)?;
    changes.staged.push((staged, pin.to_owned()));
    Ok(())
}

fn interface_target(iface: &str) -> Result<LinkTarget, LoaderError> {
    preflight::interface_index(iface)
        .map(LinkTarget::Interface)
        .map_err(|err| LoaderError::Io { path: PathBuf::from(iface), source: io::Error::other(err) })
}

/// The fd of a loaded program.
fn program_fd<'a>(fd: Result<&'a aya::programs::ProgramFd, ProgramError>, name: &'static str) -> Result<BorrowedFd<'a>, LoaderError> {
    fd.map(|fd| fd.as_fd()).map_err(|source| LoaderError::Program { name, source })
}

fn attach_error<'a>(hook: &'static str, target: &'a str) -> impl Fn(ProgramError) -> LoaderError + Copy + 'a {
    move |source| LoaderError::Attach { hook, iface: target.to_owned(), source }
}

/// Attaches every cgroup socket hook to the plan's cgroup (alongside any other programs there).
fn attach_socket_hooks(ebpf: &mut Ebpf, plan: &AttachPlan, changes: &mut Changes) -> Result<(), LoaderError> {
    let cgroup_err = |source| LoaderError::Io { path: plan.cgroup.clone(), source };
    let cgroup = fs::File::open(&plan.cgroup).map_err(cgroup_err)?;
    // A cgroup v2 directory's inode number is its cgroup id.
    let target = LinkTarget::Cgroup(std::os::unix::fs::MetadataExt::ino(&cgroup.metadata().map_err(cgroup_err)?));
    for &(name, hook) in names::PROG_SOCK_HOOKS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load().map_err(|source| LoaderError::Program { name, source })?;
        let pin = link_pin(&plan.pin_dir, hook, "cgroup");
        let existing = replace_if_pinned(&pin, program_fd(prog.fd(), name)?, target, changes)?;
        if matches!(existing, Existing::Replaced) {
            continue;
        }
        let err = attach_error(hook, "cgroup");
        // With bpf_link (kernel ≥ 5.7) attachments always coexist with other programs on the
        // cgroup; the link API rejects the legacy ALLOW_MULTI flag, so the mode stays Single.
        let id = prog.attach(&cgroup, CgroupAttachMode::Single).map_err(err)?;
        let link = prog.take_link(id).map_err(err)?.try_into().map_err(LoaderError::Link)?;
        pin_new_link(link, &pin, existing, changes)?;
    }
    info!(cgroup = %plan.cgroup.display(), "socket hooks attached");
    Ok(())
}

/// Checks every map already pinned under `pin_dir` against what this binary would create for
/// `limits`: same key and value sizes and flags (the layout the programs were built for) and
/// the same number of entries. Reads only; nothing is changed.
pub fn check_pinned_maps(pin_dir: &Path, sizes: &MapSizes) -> Result<(), PinnedMapsError> {
    let object = aya_obj::Object::parse(EBPF_OBJECT).map_err(PinnedMapsError::Object)?;
    let sizes: Vec<_> = map_entries(sizes).collect();
    for &map in names::PINNED_MAPS {
        let path = pin_dir.join(pin_name(map));
        if !path.exists() {
            continue;
        }
        let read_err = |source| PinnedMapsError::Read { map, pin_dir: pin_dir.to_owned(), source };
        let info = aya::maps::MapData::from_pin(&path).map_err(read_err)?.info().map_err(read_err)?;
        let def = object.maps.get(map).ok_or(PinnedMapsError::MissingMap(map))?;
        let pinned = (info.key_size(), info.value_size(), info.map_flags());
        let expected = (def.key_size(), def.value_size(), def.map_flags());
        if pinned != expected {
            let show = |(k, v, f): (u32, u32, u32)| format!("key {k} B, value {v} B, flags {f:#x}");
            return Err(PinnedMapsError::Layout { map, pin_dir: pin_dir.to_owned(), pinned: show(pinned), expected: show(expected) });
        }
        match sizes.iter().find(|(name, _, _)| *name == map) {
            Some(&(_, wanted, flag)) if info.max_entries() != wanted => {
                return Err(PinnedMapsError::Size { map, pin_dir: pin_dir.to_owned(), pinned: info.max_entries(), wanted, flag });
            }
            // A map no flag sizes has the object's size: another size is another layout (e.g.
            // a version that counts more outcomes).
            None if info.max_entries() != def.max_entries() => {
                let show = |entries: u32| format!("{entries} entries");
                return Err(PinnedMapsError::Layout {
                    map,
                    pin_dir: pin_dir.to_owned(),
                    pinned: show(info.max_entries()),
                    expected: show(def.max_entries()),
                });
            }
            _ => {}
        }
        if map == names::MAP_SETTINGS {
            check_layout_version(pin_dir)?;
        }
    }
    Ok(())
}

/// Refuses maps whose contents another layout version wrote (same sizes, other meaning).
fn check_layout_version(pin_dir: &Path) -> Result<(), PinnedMapsError> {
    let map = names::MAP_SETTINGS;
    let settings = pinned_settings(pin_dir)
        .and_then(|m| m.get(&0, 0))
        .map_err(|source| PinnedMapsError::Read { map, pin_dir: pin_dir.to_owned(), source })?;
    // All zero: created by a start that failed before writing them; nothing to misread.
    if settings != Settings::default() && !lb_common::ADOPTABLE_LAYOUTS.contains(&settings.layout) {
        let show = |v: u32| format!("contents of layout {v}");
        return Err(PinnedMapsError::Layout {
            map,
            pin_dir: pin_dir.to_owned(),
            pinned: show(settings.layout),
            expected: show(lb_common::LAYOUT_VERSION),
        });
    }
    Ok(())
}

/// Loads the embedded object with every map pinned under `pin_dir`: an existing pin is opened and
/// re-used (its contents kept), a missing one is created and pinned. Then the runtime settings
/// (NAT ports, UDP timeout) are written, which the programs already attached from these maps
/// follow at once. Programs are not loaded yet.
pub fn load_object(pin_dir: &Path, load: &LoadConfig) -> Result<Ebpf, LoaderError> {
    fs::create_dir_all(pin_dir).map_err(|source| LoaderError::Io { path: pin_dir.to_owned(), source })?;
    let map_pins: Vec<(&str, PathBuf)> =
        names::PINNED_MAPS.iter().map(|&m| (m, pin_dir.join(pin_name(m)))).collect();
    let mut loader = EbpfLoader::new();
    for (map, path) in &map_pins {
        loader.map_pin_path(map, path.as_path());
    }
    for (map, entries, _) in map_entries(&load.sizes) {
        loader.map_max_entries(map, entries);
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    write_settings(&mut ebpf, &load.settings)?;
    Ok(ebpf)
}

/// The loaded object's array map `map` (the settings and the flags the agent writes at load).
fn array_map<'a, V: aya::Pod>(ebpf: &'a mut Ebpf, map: &'static str) -> Result<Array<&'a mut MapData, V>, LoaderError> {
    let data = ebpf.map_mut(map).ok_or(LoaderError::Settings { map, source: aya::maps::MapError::InvalidName { name: map.into() } })?;
    Array::try_from(data).map_err(|source| LoaderError::Settings { map, source })
}

/// Writes this start's settings; NAT replies stay recognised on the ports of earlier ranges.
fn write_settings(ebpf: &mut Ebpf, runtime: &RuntimeSettings) -> Result<(), LoaderError> {
    let map = names::MAP_SETTINGS;
    let mut settings = array_map::<Settings>(ebpf, map)?;
    let previous = settings.get(&0, 0).ok();
    let new = Settings::new(runtime.udp_timeout_secs, runtime.nat_ports, runtime.dsr, previous.as_ref());
    settings.set(0, new, 0).map_err(|source| LoaderError::Settings { map, source })?;
    if previous.is_some_and(|p| p != Settings::default() && p.layout < lb_common::CLIENT_KEYED_LAYOUT) {
        // Maps of layout 1 (whose programs may still run until replaced) key every IPv4 flow by
        // its whole tuple, with reply entries: the new programs must look those up too.
        note_tuple_flows4(ebpf)?;
    }
    Ok(())
}

/// Makes `DSR_NODES` and `DECAP_FROM` hold this start's ranges.
fn write_node_ranges(ebpf: &mut Ebpf, config: &DsrConfig) -> Result<(), LoaderError> {
    for (which, ranges) in [(NodeRanges::DsrNodes, &config.nodes), (NodeRanges::DecapFrom, &config.decap_from)] {
        let map = which.map();
        let data = ebpf.map_mut(map).ok_or(LoaderError::Settings { map, source: aya::maps::MapError::InvalidName { name: map.into() } })?;
        let mut trie = LpmTrie::try_from(data).map_err(|source| LoaderError::Settings { map, source })?;
        dsr::replace(&mut trie, ranges).map_err(|source| LoaderError::Settings { map, source })?;
    }
    Ok(())
}

/// Sets `TUPLE_FLOWS4`: connection-keyed IPv4 flows and reply entries may exist.
fn note_tuple_flows4(ebpf: &mut Ebpf) -> Result<(), LoaderError> {
    let map = names::MAP_TUPLE_FLOWS4;
    array_map::<u32>(ebpf, map)?.set(0, 1, 0).map_err(|source| LoaderError::Settings { map, source })
}

/// The settings in force under `pin_dir`, if its maps exist.
pub fn read_settings(pin_dir: &Path) -> Option<Settings> {
    pinned_settings(pin_dir).ok()?.get(&0, 0).ok().filter(|s| s.nat_port_min != 0)
}

/// The `settings` map pinned under `pin_dir`.
fn pinned_settings(pin_dir: &Path) -> Result<Array<MapData, Settings>, aya::maps::MapError> {
    let data = MapData::from_pin(pin_dir.join(pin_name(names::MAP_SETTINGS)))?;
    Array::try_from(aya::maps::Map::Array(data))
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
        .map_err(|source| LoaderError::Attach { hook: Hook::XdpIngress.name(), iface: iface.to_owned(), source })?;
    Ok(ebpf)
}

/// The pass-only program of an ingress hook, loaded but not attached, and its name: the floor
/// the benchmarks measure the balancer against with BPF_PROG_TEST_RUN.
pub fn load_pass(hook: Hook) -> Result<(Ebpf, &'static str), LoaderError> {
    let mut ebpf = Ebpf::load(XDP_PASS_OBJECT)?;
    let name = match hook {
        Hook::XdpIngress => {
            program::<Xdp>(&mut ebpf, "lb_xdp_pass")?.load().map_err(|source| LoaderError::Program { name: "lb_xdp_pass", source })?;
            "lb_xdp_pass"
        }
        Hook::TcIngress | Hook::TcEgress => {
            program::<SchedClassifier>(&mut ebpf, "lb_tc_pass")?
                .load()
                .map_err(|source| LoaderError::Program { name: "lb_tc_pass", source })?;
            "lb_tc_pass"
        }
    };
    Ok((ebpf, name))
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

fn pin_link(link: FdLink, path: &Path, changes: &mut Changes) -> Result<(), LoaderError> {
    // The pinned link outlives this process; the returned handle's fd is closed at once.
    link.pin(path).map_err(|source| LoaderError::Pin { path: path.to_owned(), source })?;
    changes.files.push(path.to_owned());
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

/// What one `bring_up` changed, undone if it fails.
#[derive(Default)]
struct Changes {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    /// Links whose program was replaced, with the program each ran before.
    replaced: Vec<(PinnedLinkFd, ProgramById)>,
    /// The settings before this start (None: the maps are new).
    previous_settings: Option<Settings>,
    /// Links of the ingress hook not used any more, removed once the start has succeeded.
    superseded: Vec<PathBuf>,
    /// New links pinned beside an earlier link to another target: (staged pin, final pin),
    /// renamed over the earlier one once the start has succeeded (which detaches it).
    staged: Vec<(PathBuf, PathBuf)>,
}

impl Changes {
    fn mkdir(&mut self, dir: &Path) -> Result<(), LoaderError> {
        if dir.exists() {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(|source| LoaderError::Io { path: dir.to_owned(), source })?;
        self.dirs.push(dir.to_owned());
        Ok(())
    }

    fn commit(&mut self) {
        for (staged, pin) in self.staged.drain(..) {
            match fs::rename(&staged, &pin) {
                Ok(()) => info!(link = %pin.display(), "attached to a new target; the earlier link is detached"),
                Err(err) => warn!(link = %staged.display(), "could not move the new link to {}: {err}", pin.display()),
            }
        }
        for stale in self.superseded.drain(..) {
            match fs::remove_file(&stale) {
                Ok(()) => info!(link = %stale.display(), "ingress balancer of the other hook detached"),
                Err(err) => warn!(link = %stale.display(), "could not detach the other hook's balancer: {err}"),
            }
        }
        self.files.clear();
        self.dirs.clear();
        self.replaced.clear();
    }

    fn roll_back(&mut self, pin_dir: &Path) {
        for (link, previous) in self.replaced.drain(..).rev() {
            if let Err(err) = link.replace_program(previous.as_fd()) {
                warn!("rolling back: could not put the previous program back on a link: {err}");
            }
        }
        if let Some(previous) = self.previous_settings {
            restore_settings(pin_dir, previous);
        }
        for file in self.files.drain(..).rev() {
            let _ = fs::remove_file(file);
        }
        for dir in self.dirs.drain(..).rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn restore_settings(pin_dir: &Path, previous: Settings) {
    let restored = pinned_settings(pin_dir).and_then(|mut map| map.set(0, previous, 0));
    if let Err(err) = restored {
        warn!("rolling back: could not restore the previous settings: {err}");
    }
}
