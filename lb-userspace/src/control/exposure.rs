//! Where each service is served (`lb run --expose GROUP=ADDR|IFACE,… --default-group NAME`):
//! the group names of services, addresses and uplinks turned into the group words the programs
//! compare (lb_common::exposure). Pure code; the agent validates the interfaces.

use std::{collections::BTreeSet, fmt, net::IpAddr, str::FromStr};

use lb_common::exposure::{EVERY_GROUP, MAX_NAMED_GROUPS, OTHER_GROUPS, WRITTEN};

use crate::desired::{check_group, Groups};

/// The group `*`: every group, as marathon-lb's `--group '*'`.
pub const EVERY: &str = "*";

/// Where one `--expose` entry exposes its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Service ports on this address, and VIPs on the uplink that has it.
    Addr(IpAddr),
    /// Service ports on every address of this interface, and VIPs arriving on it.
    Iface(String),
}

/// One `--expose GROUP=TARGET[,TARGET…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExposeEntry {
    pub group: String,
    pub targets: Vec<Target>,
}

impl FromStr for ExposeEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "expected GROUP=ADDR|IFACE[,ADDR|IFACE…], e.g. internal=eth1,127.0.0.1";
        let (group, targets) = text.split_once('=').ok_or_else(|| format!("{text:?}: {usage}"))?;
        let group = group.trim();
        check_group(group)?;
        let targets = targets
            .split(',')
            .map(str::trim)
            .map(|t| match t.parse::<IpAddr>() {
                Ok(ip) => Ok(Target::Addr(ip)),
                Err(_) if is_iface_name(t) => Ok(Target::Iface(t.to_owned())),
                Err(_) => Err(format!("{t:?} is neither an address nor an interface name ({usage})")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { group: group.to_owned(), targets })
    }
}

/// What Linux accepts as an interface name (IFNAMSIZ - 1 bytes, no '/', ':' or whitespace).
fn is_iface_name(name: &str) -> bool {
    !name.is_empty() && name.len() < 16 && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// The `--expose` entries and `--default-group`, with a bit per group the entries name.
/// The default (no `--expose`): every service on every address and uplink.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exposure {
    entries: Vec<ExposeEntry>,
    /// The groups the entries name (not `*`), sorted: group `named[i]` is bit `i`.
    named: Vec<String>,
    default_group: String,
}

impl Exposure {
    pub fn new(entries: Vec<ExposeEntry>, default_group: &str) -> Result<Self, String> {
        check_group(default_group)?;
        let named: BTreeSet<&str> = entries.iter().map(|e| e.group.as_str()).filter(|g| *g != EVERY).collect();
        if named.len() > MAX_NAMED_GROUPS as usize {
            return Err(format!("--expose names {} groups; at most {MAX_NAMED_GROUPS}", named.len()));
        }
        let named = named.into_iter().map(str::to_owned).collect();
        Ok(Self { entries, named, default_group: default_group.to_owned() })
    }

    /// Whether `--expose` was given (otherwise every word is `EVERY_GROUP`).
    pub fn restricts(&self) -> bool {
        !self.entries.is_empty()
    }

    pub fn entries(&self) -> &[ExposeEntry] {
        &self.entries
    }

    /// The groups a service is in: its own, else `--default-group`.
    fn groups_of<'a>(&'a self, groups: &'a Groups) -> impl Iterator<Item = &'a str> {
        let default = groups.is_empty().then_some(self.default_group.as_str());
        groups.iter().map(String::as_str).chain(default)
    }

    fn bit(&self, group: &str) -> u32 {
        match self.named.binary_search_by(|g| g.as_str().cmp(group)) {
            Ok(index) => 1 << index,
            Err(_) => OTHER_GROUPS,
        }
    }

    /// The group word of a service in `groups` (empty: `--default-group`).
    pub fn service_word(&self, groups: &Groups) -> u32 {
        if !self.restricts() {
            return EVERY_GROUP;
        }
        self.groups_of(groups).fold(WRITTEN, |word, group| word | self.bit(group))
    }

    /// The word of the entries `exposes` picks: their groups (`*`: all of them).
    fn word_of(&self, exposes: impl Fn(&Target) -> bool) -> u32 {
        if !self.restricts() {
            return EVERY_GROUP;
        }
        let entries = self.entries.iter().filter(|e| e.targets.iter().any(&exposes));
        entries.fold(WRITTEN, |word, e| word | if e.group == EVERY { EVERY_GROUP } else { self.bit(&e.group) })
    }

    /// The group word of node address `ip` (on interface `iface`, if it is on one).
    pub fn addr_word(&self, ip: IpAddr, iface: Option<&str>) -> u32 {
        self.word_of(|t| match t {
            Target::Addr(a) => *a == ip,
            Target::Iface(name) => Some(name.as_str()) == iface,
        })
    }

    /// The group word of uplink `iface`, whose addresses are `addrs`.
    pub fn uplink_word(&self, iface: &str, addrs: &[IpAddr]) -> u32 {
        self.word_of(|t| match t {
            Target::Addr(a) => addrs.contains(a),
            Target::Iface(name) => name == iface,
        })
    }

    /// What `lb status` and `lb services` read the maps' group words with.
    pub fn status(&self) -> Option<crate::status::ExposureStatus> {
        let expose = self.entries.iter().map(|e| format!("{}={}", e.group, e.targets.iter().map(Target::to_string).collect::<Vec<_>>().join(",")));
        self.restricts().then(|| crate::status::ExposureStatus { expose: expose.collect(), default_group: self.default_group.clone(), groups: self.named.clone() })
    }
}

/// The names of the groups in `word`, where group `named[i]` is bit `i`: `*` for every group,
/// "(groups no --expose names)" for the bit of those no entry names.
pub fn group_names(named: &[String], word: u32) -> Vec<String> {
    let groups = lb_common::exposure::groups(word);
    if groups == EVERY_GROUP & !WRITTEN {
        return vec![EVERY.to_owned()];
    }
    let mut names: Vec<String> = named.iter().enumerate().filter(|(i, _)| groups & (1 << i) != 0).map(|(_, g)| g.clone()).collect();
    if groups & OTHER_GROUPS != 0 {
        names.push("(groups no --expose names)".to_owned());
    }
    names
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(ip) => write!(f, "{ip}"),
            Target::Iface(name) => write!(f, "{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::exposure::exposed;

    fn exposure(entries: &[&str]) -> Exposure {
        Exposure::new(entries.iter().map(|e| e.parse().unwrap()).collect(), "internal").unwrap()
    }

    fn groups(names: &[&str]) -> Groups {
        names.iter().map(|n| n.to_string()).collect()
    }

    const PUBLIC: &str = "203.0.113.7";
    const PRIVATE: &str = "10.0.1.5";

    /// Whether a service in `service` groups, on the node address `addr` (on `iface`), arriving
    /// on `uplink` (whose address is the one given), is served.
    fn served(e: &Exposure, service: &[&str], addr: Option<(&str, &str)>, uplink: (&str, &str)) -> bool {
        let uplink_word = e.uplink_word(uplink.0, &[uplink.1.parse().unwrap()]);
        let addr_word = addr.map(|(ip, iface)| e.addr_word(ip.parse().unwrap(), Some(iface)));
        exposed(e.service_word(&groups(service)), addr_word, uplink_word)
    }

    #[test]
    fn marathon_lbs_internal_and_external_balancers_on_one_node() {
        let e = exposure(&["external=eth0", "internal=eth1,127.0.0.1"]);
        let (public, private) = (("eth0", PUBLIC), ("eth1", PRIVATE));
        assert!(served(&e, &["external"], Some((PUBLIC, "eth0")), public));
        assert!(!served(&e, &["external"], Some((PRIVATE, "eth1")), private), "external only where exposed");
        assert!(!served(&e, &["internal"], Some((PUBLIC, "eth0")), public), "the security defect");
        assert!(served(&e, &["internal"], Some((PRIVATE, "eth1")), private));
        assert!(!served(&e, &["internal"], Some((PRIVATE, "eth1")), public), "the private address via the public uplink");
        assert!(!served(&e, &[], Some((PUBLIC, "eth0")), public), "no group: --default-group internal");
        assert!(served(&e, &[], None, private));
        assert!(served(&e, &["internal", "external"], None, public));
        assert!(!served(&e, &["db"], None, private), "a group no entry names is served nowhere");
    }

    #[test]
    fn an_address_entry_exposes_its_address_and_vips_on_the_uplink_that_has_it() {
        let e = exposure(&[&format!("internal={PRIVATE}")]);
        assert!(served(&e, &["internal"], Some((PRIVATE, "eth1")), ("eth1", PRIVATE)));
        assert!(served(&e, &["internal"], None, ("eth1", PRIVATE)));
        assert!(!served(&e, &["internal"], None, ("eth0", PUBLIC)));
    }

    #[test]
    fn star_exposes_every_group_even_unnamed_ones() {
        let e = exposure(&["*=eth1", "external=eth0"]);
        assert!(served(&e, &["db"], None, ("eth1", PRIVATE)));
        assert!(served(&e, &["external"], None, ("eth1", PRIVATE)));
        assert!(!served(&e, &["db"], None, ("eth0", PUBLIC)));
        assert_eq!(group_names(&e.named, e.uplink_word("eth1", &[])), vec!["*"]);
        assert_eq!(group_names(&e.named, e.service_word(&groups(&["db", "external"]))), vec!["external", "(groups no --expose names)"]);
    }

    #[test]
    fn without_expose_everything_is_everywhere() {
        let e = Exposure::default();
        assert_eq!(e.service_word(&groups(&["internal"])), EVERY_GROUP);
        assert_eq!(e.addr_word(PUBLIC.parse().unwrap(), Some("eth0")), EVERY_GROUP);
        assert!(served(&e, &["internal"], Some((PUBLIC, "eth0")), ("eth0", PUBLIC)));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (entry, says) in [
            ("eth0", "expected GROUP="),
            ("=eth0", "not a group name"),
            ("in ternal=eth0", "not a group name"),
            ("internal=eth0,", "neither an address"),
            ("internal=a/b", "neither an address"),
        ] {
            let err = entry.parse::<ExposeEntry>().unwrap_err();
            assert!(err.contains(says), "{entry}: {err}");
        }
        let many: Vec<ExposeEntry> = (0..31).map(|i| format!("g{i}=eth0").parse().unwrap()).collect();
        assert!(Exposure::new(many, "internal").unwrap_err().contains("at most 30"));
    }
}
