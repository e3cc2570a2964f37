//! `lb run`'s flags and the value parsers that check their syntax (CIDRs, URLs, ranges,
//! credentials, ring sizes); what depends on the machine is checked by
//! `agent::config::AgentConfig::from_args`.

use std::{net::IpAddr, path::PathBuf};

use thiserror::Error;

use super::PinArgs;
use crate::{
    control::exposure::ExposeEntry,
    dataplane::loader::IngressHook,
    sources::marathon::{client::Auth, vip::VipRange},
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML file of flags: keys are the long flag names (`max-flows = 200000`, `iface =
    /// ["eth0"]`); flags on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration (flags, --config file, interfaces, pinned maps) and exit: 0 if
    /// it is valid, 64 if not. Nothing is loaded or attached.
    #[arg(long)]
    pub check: bool,
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
    #[arg(long = "marathon", value_name = "URL", value_parser = marathon_url)]
    pub marathon: Vec<reqwest::Url>,
    /// HTTP basic credentials for Marathon (also LB_MARATHON_CREDENTIALS).
    #[arg(long, value_name = "USER:PASSWORD", env = "LB_MARATHON_CREDENTIALS", hide_env_values = true, value_parser = credentials)]
    pub marathon_credentials: Option<Auth>,
    /// DC/OS token for Marathon, sent as `Authorization: token=…` (also LB_MARATHON_TOKEN).
    #[arg(long, value_name = "TOKEN", env = "LB_MARATHON_TOKEN", hide_env_values = true)]
    pub marathon_token: Option<String>,
    /// Range named VIPs (`/web:80` labels) get addresses from, the same on every node.
    #[arg(long, value_name = "CIDR", default_value = "11.0.0.0/8")]
    pub vip_cidr: VipRange,
    /// Seconds between full re-reads of Marathon's apps when no event asks for one.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = seconds)]
    pub resync: u64,
    /// Seconds a Marathon request may take.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    pub marathon_timeout: u64,
    /// Seconds the event stream may go without a complete event or heartbeat (Marathon sends
    /// one every 10 s) before it is reopened and the apps re-read.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
    pub event_stall: u64,
    /// Address of this node where service ports are served; repeat for several. Default: every
    /// address of every interface. 127.0.0.1 and ::1 are always included.
    #[arg(long = "node-ip", value_name = "ADDR")]
    pub node_ips: Vec<IpAddr>,
    /// Serve the apps of GROUP (HAPROXY_GROUP, HAPROXY_n_GROUP for port n) from the network
    /// only here: service ports on these addresses or on the addresses of these uplinks, VIPs
    /// arriving on these uplinks (or the uplink with the address); `*` is every group.
    /// Repeatable. Without it every app is served everywhere. Local clients reach every group.
    #[arg(long = "expose", value_name = "GROUP=ADDR|IFACE,…", value_parser = expose_entry)]
    pub expose: Vec<ExposeEntry>,
    /// The group of apps that name none, for --expose: `internal` by default, so an app exposed
    /// on a public uplink is one labelled for it (as marathon-lb's external balancer serves only
    /// apps labelled HAPROXY_GROUP=external).
    #[arg(long, value_name = "NAME", default_value = "internal", value_parser = group_name)]
    pub default_group: String,
    /// cgroup v2 directory whose processes (and descendants') get the socket hooks: their
    /// connections to services go straight to a backend. Default: the cgroup v2 root (mounted
    /// at /run/lb/cgroup2 if the machine has no cgroup v2 mount).
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Slots of the pool every service's Maglev ring comes from (4 bytes each; whole chunks of
    /// 65536, each holding rings of one size: at least one chunk per ring size in use). A
    /// service takes the smallest prime ring with 100 slots per backend (359 for 3 backends, at
    /// most 65521); the default holds 20,000 such services.
    #[arg(long, default_value_t = lb_common::ring_pool::DEFAULT_RING_SLOTS, value_parser = ring_slots)]
    pub ring_slots: u32,
    /// Services (each address, port and protocol is one).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_SERVICES, value_parser = count_at_least(1))]
    pub max_services: u32,
    /// Backend entries (one per service membership).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_BACKENDS, value_parser = count_at_least(2))]
    pub max_backends: u32,
    /// Flow-table entries (LRU), per address family (IPv4 and IPv6 flows have their own tables).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_FLOWS, value_parser = count_at_least(1))]
    pub max_flows: u32,
    /// Source ranges of all services together (HAPROXY_n_BACKEND_NETWORK_ALLOWED_ACL labels,
    /// the services file's "source_ranges"); kernel memory is taken per range stored.
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_SOURCE_RANGES, value_parser = count_at_least(1))]
    pub max_source_ranges: u32,
    /// Seconds of silence after which a UDP flow may move to another backend.
    #[arg(long, default_value_t = lb_common::DEFAULT_UDP_TIMEOUT_SECS, value_parser = seconds)]
    pub udp_timeout: u64,
    /// Where Prometheus metrics (/metrics) and the status page (/) are served: ADDR:PORT, or
    /// `off`. A non-loopback address needs --metrics-listen-public.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9097", value_parser = listen)]
    pub metrics_listen: Listen,
    /// Allow --metrics-listen on an address other hosts can reach.
    #[arg(long)]
    pub metrics_listen_public: bool,
    /// Source ports for full NAT towards backends on other nodes (MIN-MAX). Must not overlap
    /// the node's ephemeral ports (net.ipv4.ip_local_port_range) nor any service port.
    #[arg(long, value_name = "MIN-MAX", default_value = "61000-65535", value_parser = port_range)]
    pub nat_ports: (u16, u16),
    /// Serve the HTTP path (marathon-lb's HAPROXY_n_VHOST and HAPROXY_n_PATH labels) in plain
    /// HTTP on ADDR:PORT. Off unless given.
    #[arg(long, value_name = "ADDR:PORT", help_heading = "HTTP path")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Serve the HTTP path over TLS on ADDR:PORT (needs --ssl-certs).
    #[arg(long, value_name = "ADDR:PORT", requires = "ssl_certs", help_heading = "HTTP path")]
    pub https_listen: Option<std::net::SocketAddr>,
    /// Directory of PEM files, each a certificate chain and its key; SNI picks by the
    /// certificates' names, default.pem (else the first file) answers the rest. Re-read on
    /// change and on SIGHUP.
    #[arg(long, value_name = "DIR", requires = "https_listen", help_heading = "HTTP path")]
    pub ssl_certs: Option<PathBuf>,
    /// Serve apps whose HAPROXY_GROUP (or HAPROXY_n_GROUP) is NAME on the HTTP path;
    /// repeatable; `*` serves every group.
    #[arg(long = "group", value_name = "NAME", default_value = "external", help_heading = "HTTP path")]
    pub groups: Vec<String>,
    /// Announce the VIPs this node serves (with an active backend) through BIRD: its control
    /// socket, used to make it re-read the routes file after each change.
    #[arg(long, value_name = "PATH", requires = "bird_routes", help_heading = "Several balancer nodes")]
    pub bird_socket: Option<PathBuf>,
    /// The file the agent writes the announced VIPs to (`protocol static lb_vips4` and
    /// `lb_vips6`); bird.conf includes it and exports those routes to its BGP sessions.
    #[arg(long, value_name = "FILE", requires = "bird_socket", help_heading = "Several balancer nodes")]
    pub bird_routes: Option<PathBuf>,
    /// Withdraw every VIP from BIRD when the agent stops (the programs keep forwarding, but a
    /// node being drained must leave the routers' ECMP set first).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Several balancer nodes")]
    pub withdraw_on_stop: bool,
    /// Direct server return: send new flows for backends on other nodes inside a GUE
    /// encapsulation to the backend's address instead of full NAT, when it is in --dsr-nodes; the
    /// agent there takes them out (--decap-from this node) and the replies go straight to the
    /// client. Other remote backends keep full NAT.
    #[arg(long, requires = "dsr_nodes", help_heading = "Several balancer nodes")]
    pub dsr: bool,
    /// Backend addresses (CIDR: the nodes, and container networks they route) whose agents
    /// decapsulate; repeat for several.
    #[arg(long = "dsr-nodes", value_name = "CIDR", requires = "dsr", value_parser = cidr, help_heading = "Several balancer nodes")]
    pub dsr_nodes: Vec<ipnet::IpNet>,
    /// Take encapsulated DSR packets whose outer source is in CIDR (the balancer nodes) out of
    /// their encapsulation and deliver them to the local backend they name; repeat for several.
    /// From elsewhere they are passed untouched and counted (decap_refused).
    #[arg(long = "decap-from", value_name = "CIDR", value_parser = cidr, help_heading = "Several balancer nodes")]
    pub decap_from: Vec<ipnet::IpNet>,
    /// Seconds a service's ring is kept after a change as its previous ring: a DSR packet for a
    /// connection its backend node does not hold goes once to the backend the previous ring
    /// chose, so a balancer node lost while backends change breaks no connection. 0: off.
    #[arg(long, value_name = "SECS", default_value_t = crate::control::previous_rings::DEFAULT_SECS, help_heading = "Several balancer nodes")]
    pub second_chance_secs: u64,
    /// UDP port of the DSR encapsulation, the same on every node.
    #[arg(long, value_name = "PORT", default_value_t = lb_common::dsr::DEFAULT_PORT, value_parser = port, help_heading = "Several balancer nodes")]
    pub dsr_port: u16,
    /// Serve DNS (UDP and TCP) on ADDR:PORT: Mesos-DNS's names for Marathon's apps and names
    /// for named VIPs, from the agent's own view of Marathon; repeat for several. Off unless
    /// given. Names outside the zones are refused.
    #[arg(long = "dns-listen", value_name = "ADDR:PORT", requires = "marathon", help_heading = "DNS")]
    pub dns_listen: Vec<std::net::SocketAddr>,
    /// The Mesos-DNS domain: apps are `<app>.marathon.<domain>`.
    #[arg(long, value_name = "DOMAIN", default_value = "mesos", value_parser = domain, help_heading = "DNS")]
    pub dns_domain: String,
    /// The domain of named VIPs: `<name>.marathon.<domain>`, as DC/OS names them.
    #[arg(long, value_name = "DOMAIN", default_value = "l4lb.thisdcos.directory", value_parser = domain, help_heading = "DNS")]
    pub vip_domain: String,
    /// TTL (seconds) of every DNS answer: how long a client may cache one after it changed.
    #[arg(long, value_name = "SECS", default_value_t = crate::dns::DEFAULT_TTL, value_parser = clap::value_parser!(u32).range(0..=86400), help_heading = "DNS")]
    pub dns_ttl: u32,
    /// Forward queries for names outside the zones to these servers (ADDR or ADDR:PORT, tried
    /// in order), for clients in --dns-allow only. Without it such names are refused.
    #[arg(long = "dns-upstream", value_name = "ADDR[:PORT]", requires = "dns_listen", value_parser = upstream, help_heading = "DNS")]
    pub dns_upstream: Vec<std::net::SocketAddr>,
    /// Clients whose queries for other names are forwarded (CIDR, repeatable). Default:
    /// loopback and the networks of this node's addresses — never an open resolver.
    #[arg(long = "dns-allow", value_name = "CIDR", requires = "dns_upstream", value_parser = cidr, help_heading = "DNS")]
    pub dns_allow: Vec<ipnet::IpNet>,
}

/// A name server: ADDR:PORT, or ADDR (port 53).
pub fn upstream(text: &str) -> Result<std::net::SocketAddr, ValueError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.parse::<IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)).map_err(|_| ValueError::NotAListenAddress(text.to_owned()))
}

/// A DNS domain: labels of letters, digits and `-`, at most 63 characters each, 253 in all;
/// lowercased, trailing dot dropped.
pub fn domain(text: &str) -> Result<String, ValueError> {
    let name = text.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(ValueError::NotADomain(text.to_owned()));
    }
    Ok(name)
}

/// Why a flag's value does not parse (clap shows it after the flag's name).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("{0:?} is not a DNS domain (labels of letters, digits and '-', e.g. mesos)")]
    NotADomain(String),
    #[error("{0:?} is not MIN-MAX")]
    NotARange(String),
    #[error("{0}")]
    Expose(String),
    #[error("{0:?} is not a port (1-65535)")]
    NotAPort(String),
    #[error("{min}-{max} is empty: MIN must not exceed MAX")]
    EmptyRange { min: u16, max: u16 },
    #[error("{0:?} is not a URL")]
    NotAUrl(String),
    #[error("{0:?}: only http and https are supported")]
    Scheme(String),
    #[error("expected USER:PASSWORD")]
    NotCredentials,
    #[error("{0:?} is not a whole number of 65536-slot chunks up to 4294901760 (e.g. 8388608 = 32 MiB)")]
    NotChunks(String),
    #[error("{0:?} is not a whole number ≥ {1}")]
    TooSmall(String, u64),
    #[error("{0:?} is not a protocol: tcp or udp")]
    NotAProtocol(String),
    #[error("{0:?} is not ADDRESS:PORT ([ADDRESS]:PORT for IPv6) or off")]
    NotAListenAddress(String),
    #[error("{0:?} is not a CIDR range (ADDRESS/PREFIX, e.g. 10.1.0.0/16 or fd00::/64)")]
    NotACidr(String),
    #[error("{0:?} has bits set past its prefix: did you mean {1}?")]
    HostBits(String, ipnet::IpNet),
}

/// `--metrics-listen`: ADDR:PORT, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<std::net::SocketAddr>);

pub fn listen(text: &str) -> Result<Listen, ValueError> {
    if text == "off" {
        return Ok(Listen(None));
    }
    text.parse().map(|a| Listen(Some(a))).map_err(|_| ValueError::NotAListenAddress(text.to_owned()))
}

/// A protocol argument: tcp or udp.
pub fn protocol(text: &str) -> Result<crate::desired::Proto, ValueError> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(crate::desired::Proto::Tcp),
        "udp" => Ok(crate::desired::Proto::Udp),
        _ => Err(ValueError::NotAProtocol(text.to_owned())),
    }
}

/// `--nat-ports MIN-MAX`.
pub fn port_range(text: &str) -> Result<(u16, u16), ValueError> {
    let (min, max) = text.split_once('-').ok_or_else(|| ValueError::NotARange(text.to_owned()))?;
    let (min, max) = (port(min)?, port(max)?);
    if min > max {
        return Err(ValueError::EmptyRange { min, max });
    }
    Ok((min, max))
}

/// A port, 1-65535.
pub fn port(text: &str) -> Result<u16, ValueError> {
    match text.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(ValueError::NotAPort(text.trim().to_owned())),
        Ok(port) => Ok(port),
    }
}

/// A CIDR range (`--dsr-nodes`, `--decap-from`); an address alone is its host range. Host bits
/// past the prefix are refused: `10.1.2.3/16` is more likely a typo than a range.
pub fn cidr(text: &str) -> Result<ipnet::IpNet, ValueError> {
    let text = text.trim();
    let net = match text.parse::<ipnet::IpNet>() {
        Ok(net) => net,
        Err(_) => text.parse::<IpAddr>().map(ipnet::IpNet::from).map_err(|_| ValueError::NotACidr(text.to_owned()))?,
    };
    if net.trunc() != net {
        return Err(ValueError::HostBits(text.to_owned(), net.trunc()));
    }
    Ok(net)
}

/// `--expose GROUP=ADDR|IFACE,…`.
pub fn expose_entry(text: &str) -> Result<ExposeEntry, ValueError> {
    text.parse().map_err(ValueError::Expose)
}

/// `--default-group NAME`.
pub fn group_name(text: &str) -> Result<String, ValueError> {
    crate::desired::check_group(text).map(|()| text.to_owned()).map_err(ValueError::Expose)
}

/// `--marathon URL`: http or https.
pub fn marathon_url(text: &str) -> Result<reqwest::Url, ValueError> {
    let url = reqwest::Url::parse(text).map_err(|_| ValueError::NotAUrl(text.to_owned()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ValueError::Scheme(text.to_owned()));
    }
    Ok(url)
}

/// `--marathon-credentials USER:PASSWORD`.
pub fn credentials(text: &str) -> Result<Auth, ValueError> {
    match text.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok(Auth::Basic { user: user.into(), password: password.into() }),
        _ => Err(ValueError::NotCredentials),
    }
}

/// `--ring-slots`: whole chunks of the ring pool (lb_common::ring_pool), addressable by a u32.
pub fn ring_slots(text: &str) -> Result<u32, ValueError> {
    let chunk = lb_common::ring_pool::CHUNK_SLOTS;
    match text.trim().parse::<u32>() {
        Ok(slots) if slots >= chunk && slots.is_multiple_of(chunk) => Ok(slots),
        _ => Err(ValueError::NotChunks(text.to_owned())),
    }
}

/// A u32 count that must be at least `min` (`--max-services` etc.).
pub fn count_at_least(min: u64) -> impl Fn(&str) -> Result<u32, ValueError> + Clone {
    move |text| at_least(text, min).and_then(|n| u32::try_from(n).map_err(|_| ValueError::TooSmall(text.to_owned(), min)))
}

/// Seconds, at least 1.
pub fn seconds(text: &str) -> Result<u64, ValueError> {
    at_least(text, 1)
}

fn at_least(text: &str, min: u64) -> Result<u64, ValueError> {
    match text.trim().parse::<u64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(ValueError::TooSmall(text.to_owned(), min)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(port_range("61000-65535"), Ok((61000, 65535)));
        assert_eq!(port_range("80"), Err(ValueError::NotARange("80".into())));
        assert_eq!(port_range("0-10"), Err(ValueError::NotAPort("0".into())));
        assert_eq!(port_range("10-70000"), Err(ValueError::NotAPort("70000".into())));
        assert_eq!(port_range("20-10"), Err(ValueError::EmptyRange { min: 20, max: 10 }));
    }

    #[test]
    fn cidrs() {
        assert_eq!(cidr("10.1.0.0/16"), Ok("10.1.0.0/16".parse().unwrap()));
        assert_eq!(cidr("fd00::/64"), Ok("fd00::/64".parse().unwrap()));
        assert_eq!(cidr("10.1.0.7"), Ok("10.1.0.7/32".parse().unwrap()), "an address is its host range");
        assert_eq!(cidr("10.1.2.3/16"), Err(ValueError::HostBits("10.1.2.3/16".into(), "10.1.0.0/16".parse().unwrap())));
        for bad in ["10.1.0.0/33", "nodes", "10.1/16", ""] {
            assert_eq!(cidr(bad), Err(ValueError::NotACidr(bad.into())), "{bad}");
        }
    }

    #[test]
    fn urls_and_credentials() {
        assert!(marathon_url("http://marathon:8080").is_ok());
        assert_eq!(marathon_url("marathon:8080"), Err(ValueError::Scheme("marathon:8080".into())));
        assert_eq!(marathon_url("ftp://m"), Err(ValueError::Scheme("ftp://m".into())));
        assert_eq!(marathon_url("not a url"), Err(ValueError::NotAUrl("not a url".into())));
        assert!(matches!(credentials("u:p:q"), Ok(Auth::Basic { user, password }) if user == "u" && password == "p:q"));
        assert_eq!(credentials("nocolon").unwrap_err(), ValueError::NotCredentials);
        assert_eq!(credentials(":p").unwrap_err(), ValueError::NotCredentials);
    }

    #[test]
    fn sizes() {
        assert_eq!(ring_slots("8388608"), Ok(8_388_608));
        assert_eq!(ring_slots("4294901760"), Ok(65535 * 65536));
        for bad in ["0", "65535", "100000", "4294967296", "-65536", "lots"] {
            assert_eq!(ring_slots(bad), Err(ValueError::NotChunks(bad.into())), "{bad}");
        }
        assert_eq!(count_at_least(2)("1"), Err(ValueError::TooSmall("1".into(), 2)));
        assert_eq!(count_at_least(1)("4294967296"), Err(ValueError::TooSmall("4294967296".into(), 1)));
        assert_eq!(seconds("0"), Err(ValueError::TooSmall("0".into(), 1)));
    }
}
