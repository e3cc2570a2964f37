//! What the agent reports about itself (`lb status`, `lb vips`): JSON files under /run/lb, one
//! status and one named-VIP table per pin directory, each rewritten whenever it changes (the
//! VIP table, which grows with the cluster, only when an allocation changes, not with every
//! event). They stay after the agent stops, like the maps: the last word of the last agent.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// Where status files live.
pub const STATUS_DIR: &str = "/run/lb/status";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentStatus {
    pub pid: u32,
    pub pin_dir: String,
    /// Seconds since the epoch of the last change of this status.
    pub updated: u64,
    pub services: usize,
    /// Ring-pool slots the agent has handed out (live rings, and freed ones waiting one pass
    /// before reuse): once changes settle, the live rings' sizes summed.
    #[serde(default)]
    pub ring_slots_in_use: u64,
    /// Services that could not be programmed (a limit is reached: which, and the flag that
    /// raises it), by address and name; every other service is.
    #[serde(default)]
    pub not_programmed: Vec<String>,
    /// Where /metrics and the status page are served (None: `--metrics-listen off`).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// What the node's settings break (e.g. IP forwarding off), one line each.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The uplinks as the agent sees them in its own network namespace.
    #[serde(default)]
    pub uplinks: Vec<UplinkStatus>,
    pub marathon: Option<MarathonStatus>,
    /// The HTTP path, when it listens.
    #[serde(default)]
    pub http: Option<HttpStatus>,
    /// `--expose` (None: every app everywhere).
    #[serde(default)]
    pub exposure: Option<ExposureStatus>,
    /// VIPs announced through BIRD (None: no `--bird-socket`).
    #[serde(default)]
    pub bgp: Option<BgpStatus>,
    /// Direct server return (None: neither `--dsr` nor `--decap-from`).
    #[serde(default)]
    pub dsr: Option<DsrStatus>,
    /// DNS (None: no `--dns-listen`).
    #[serde(default)]
    pub dns: Option<DnsStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsStatus {
    /// ADDR:PORT served over UDP and TCP.
    pub listen: Vec<String>,
    pub domain: String,
    pub vip_domain: String,
    /// Records served (addresses and SRV targets), as of the last change.
    pub records: usize,
}

/// What `--dsr`, `--dsr-nodes`, `--decap-from` and `--dsr-port` configured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DsrStatus {
    pub port: u16,
    /// Backend addresses new flows are encapsulated to (empty: no `--dsr`).
    pub nodes: Vec<String>,
    /// Balancer nodes whose packets are decapsulated (empty: none).
    pub decap_from: Vec<String>,
}

/// The announcer (lb-userspace/src/announce): what BIRD was last told, and whether it listened.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BgpStatus {
    pub socket: String,
    pub routes: String,
    /// `ok`, `failing` (BIRD down or refusing: retried every tick), or empty before the first try.
    pub state: String,
    /// The VIPs BIRD was last told to announce (empty while failing).
    pub announced: Vec<String>,
    pub last_error: Option<String>,
    pub failures: u64,
    /// Why the data path cannot serve (every VIP withdrawn until it can again).
    #[serde(default)]
    pub data_path_error: Option<String>,
}

/// Where groups are served, as `lb run` was told, and how to read the maps' group words.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExposureStatus {
    /// The `--expose` entries, as given.
    pub expose: Vec<String>,
    pub default_group: String,
    /// The groups the entries name: group `groups[i]` is bit `i` of a group word.
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HttpStatus {
    /// `http://ADDR:PORT` and `https://ADDR:PORT` listeners.
    pub listen: Vec<String>,
    /// App ports routed (each with its hosts and path).
    pub routes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UplinkStatus {
    pub name: String,
    pub ifindex: u32,
    /// The program balancing on its ingress (what `--ingress-hook auto` chose, or what was
    /// asked for).
    pub ingress_hook: lb_common::Hook,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MarathonStatus {
    pub urls: Vec<String>,
    /// The URL that answered the last request.
    pub current: String,
    /// The URL the event stream is connected to, if it is.
    pub event_stream: Option<String>,
    /// Seconds since the epoch of the last successful sync.
    pub last_sync: Option<u64>,
    /// Why the last sync failed, while it keeps failing (the last good state stays programmed).
    pub last_error: Option<String>,
    pub failures_in_a_row: u64,
    /// Failed syncs since the start.
    #[serde(default)]
    pub failures: u64,
    /// Apps and pods.
    pub apps: usize,
    /// Of which pods.
    #[serde(default)]
    pub pods: usize,
    /// `ok`, `degraded` (some apps' definitions or tasks could not be used: the last good
    /// definitions stay programmed) or `failing` (Marathon does not answer).
    #[serde(default)]
    pub state: String,
    /// Apps whose latest definition could not be used: app id → why. Their last good
    /// definition, if any, stays programmed.
    pub skipped_apps: BTreeMap<String, String>,
    pub skipped_tasks: usize,
    /// Tasks, ports and labels skipped, per app id: what and why.
    #[serde(default)]
    pub skipped: BTreeMap<String, Vec<String>>,
    /// Full re-reads of every app since the start, and why the last one happened.
    #[serde(default)]
    pub relists: u64,
    #[serde(default)]
    pub last_relist_reason: String,
    /// Events applied as changes to single apps.
    #[serde(default)]
    pub events_applied: u64,
    /// Single apps read for events that did not carry what the model needs.
    #[serde(default)]
    pub app_reads: u64,
    /// Named VIPs allocated (the table: `lb vips`).
    #[serde(default)]
    pub named_vips: usize,
}

/// What `lb status` shows: whether an agent holds the pin directory, the settings in force,
/// and the agent's last report (its fields at the top level of the JSON).
#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    /// An agent holds the pin directory's lock.
    pub running: bool,
    /// Whether maps are pinned (what the data path serves without an agent).
    pub maps_pinned: bool,
    /// The runtime settings the programs follow, read from the pinned `settings` map.
    pub settings: Option<SettingsView>,
    #[serde(flatten)]
    pub agent: AgentStatus,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SettingsView {
    pub nat_ports: String,
    /// Ports replies to full-NAT flows are recognised on (every range used since the maps exist).
    pub nat_reply_ports: String,
    pub udp_timeout_secs: u64,
}

impl From<lb_common::Settings> for SettingsView {
    fn from(s: lb_common::Settings) -> Self {
        Self {
            nat_ports: format!("{}-{}", s.nat_port_min, s.nat_port_max),
            nat_reply_ports: format!("{}-{}", s.nat_reply_port_min, s.nat_reply_port_max),
            udp_timeout_secs: s.udp_timeout_ns / 1_000_000_000,
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The status file of an agent using `pin_dir`.
pub fn path_for(pin_dir: &Path) -> PathBuf {
    Path::new(STATUS_DIR).join(format!("{}.json", pin_dir_key(pin_dir)))
}

/// A file name standing for `pin_dir`, the same however the path is spelled (`/sys/fs/bpf/lb/`,
/// `/sys/fs/bpf/./lb`, a symlink): the part that exists is resolved, the rest normalised.
pub fn pin_dir_key(pin_dir: &Path) -> String {
    let absolute = std::path::absolute(pin_dir).unwrap_or_else(|_| pin_dir.to_owned());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().unwrap_or_else(|_| existing.to_owned());
    resolved.extend(rest.iter().rev());
    resolved.display().to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The named-VIP table of an agent using `pin_dir`.
pub fn vips_path_for(pin_dir: &Path) -> PathBuf {
    Path::new(STATUS_DIR).join(format!("{}.vips.json", pin_dir_key(pin_dir)))
}

/// Writes `status` atomically (write + rename): readers see the old or the new file, whole.
pub fn write(status: &AgentStatus) -> std::io::Result<()> {
    write_json(&path_for(Path::new(&status.pin_dir)), status)
}

pub fn read(pin_dir: &Path) -> std::io::Result<AgentStatus> {
    read_json(&path_for(pin_dir))
}

/// Writes the named-VIP table (name → address) atomically.
pub fn write_vips(pin_dir: &Path, vips: &BTreeMap<String, String>) -> std::io::Result<()> {
    write_json(&vips_path_for(pin_dir), vips)
}

pub fn read_vips(pin_dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    read_json(&vips_path_for(pin_dir))
}

fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    std::fs::create_dir_all(STATUS_DIR)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(tmp, path)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<T> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}
