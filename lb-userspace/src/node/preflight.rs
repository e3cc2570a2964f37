//! Checks made before anything touches the kernel, so that bad input fails with one clear line
//! and leaves nothing attached or pinned.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// `f_type` of a bpffs mount (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `f_type` of a cgroup v2 mount.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Where the agent mounts cgroup v2 when the machine has no cgroup v2 mount.
pub const CGROUP2_FALLBACK: &str = "/run/lb/cgroup2";
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error)]
pub enum PreflightError {
    #[error("missing privileges: lb needs root (CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN); run it with sudo")]
    NotPrivileged,
    #[error("unknown interface {0:?}: check `ip link` in the network namespace lb runs in")]
    UnknownInterface(String),
    #[error("pin directory {0} is not on a bpffs mount: use a directory under /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")]
    PinDirNotBpffs(PathBuf),
    #[error("{0} is not a cgroup v2 directory: pass --cgroup with a directory of a cgroup2 mount")]
    NotCgroup2(PathBuf),
    #[error("mounting cgroup v2 on {path}")]
    MountCgroup2 { path: PathBuf, source: std::io::Error },
    #[error("cannot inspect pin directory {path}")]
    PinDirUnreadable { path: PathBuf, source: std::io::Error },
    #[error("pin directory {0} is the bpffs mount itself, shared with other software: use a directory of its own inside it (e.g. /sys/fs/bpf/lb)")]
    PinDirIsBpffsRoot(PathBuf),
    #[error("pin directory {0} exists and is not a directory")]
    PinDirNotADirectory(PathBuf),
}

/// Fails unless the effective capabilities allow loading and attaching BPF programs.
pub fn require_privileges() -> Result<(), PreflightError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN)) {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged)
    }
}

/// Resolves an interface name to its index in the current network namespace.
pub fn interface_index(name: &str) -> Result<u32, PreflightError> {
    let unknown = || PreflightError::UnknownInterface(name.to_owned());
    let c_name = CString::new(name).map_err(|_| unknown())?;
    // SAFETY: c_name is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(unknown()),
        index => Ok(index),
    }
}

/// Name of an interface index in the current network namespace, if it still exists.
pub fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if ptr.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// The driver behind an interface in the current network namespace ("veth", "mlx5_core", …),
/// as `ethtool -i` reports it; None when the interface does not answer ETHTOOL_GDRVINFO.
pub fn interface_driver(name: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    /// struct ethtool_drvinfo (include/uapi/linux/ethtool.h): cmd, then the driver name first.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    if name.len() >= libc::IF_NAMESIZE {
        return None;
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 160] };
    // SAFETY: ifreq is plain data; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket only serves the ioctl and is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return None;
    }
    // SAFETY: req names the interface and points at a drvinfo buffer of the kernel's size.
    let rc = unsafe { libc::ioctl(sock, SIOCETHTOOL, &mut req) };
    // SAFETY: sock is ours.
    unsafe { libc::close(sock) };
    if rc != 0 {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// Fails unless `pin_dir` (or, if it does not exist yet, its nearest existing ancestor) is on bpffs.
pub fn require_bpffs(pin_dir: &Path) -> Result<(), PreflightError> {
    let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let on_bpffs = is_bpffs(existing).map_err(|source| PreflightError::PinDirUnreadable {
        path: pin_dir.to_owned(),
        source,
    })?;
    if on_bpffs {
        Ok(())
    } else {
        Err(PreflightError::PinDirNotBpffs(pin_dir.to_owned()))
    }
}

/// Fails unless `pin_dir` is (or can be made) a directory of its own inside a bpffs mount: `lb
/// down` removes the whole directory, so it must not be the mount other software pins in.
pub fn require_pin_dir(pin_dir: &Path) -> Result<(), PreflightError> {
    require_bpffs(pin_dir)?;
    let absolute = std::path::absolute(pin_dir).unwrap_or_else(|_| pin_dir.to_owned());
    let inside_bpffs = absolute.parent().is_some_and(|parent| require_bpffs(parent).is_ok());
    if !inside_bpffs {
        return Err(PreflightError::PinDirIsBpffsRoot(pin_dir.to_owned()));
    }
    if pin_dir.exists() && !pin_dir.is_dir() {
        return Err(PreflightError::PinDirNotADirectory(pin_dir.to_owned()));
    }
    Ok(())
}

/// The node's ephemeral port range (net.ipv4.ip_local_port_range) in this network namespace.
pub fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut ports = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((ports.next()??, ports.next()??))
}

/// Fails unless `dir` is a directory of a cgroup v2 hierarchy.
pub fn require_cgroup2(dir: &Path) -> Result<(), PreflightError> {
    match fs_type(dir) {
        Ok(t) if t == CGROUP2_SUPER_MAGIC => Ok(()),
        _ => Err(PreflightError::NotCgroup2(dir.to_owned())),
    }
}

/// The cgroup v2 root: the first cgroup2 mount in /proc/mounts, else one mounted at
/// [`CGROUP2_FALLBACK`].
pub fn cgroup2_root() -> Result<PathBuf, PreflightError> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if let Some(dir) = mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    }) {
        return Ok(dir);
    }
    let dir = PathBuf::from(CGROUP2_FALLBACK);
    let mount_err = |source| PreflightError::MountCgroup2 { path: dir.clone(), source };
    fs::create_dir_all(&dir).map_err(mount_err)?;
    let c = |s: &str| CString::new(s).unwrap();
    let target = c(CGROUP2_FALLBACK);
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe { libc::mount(c("cgroup2").as_ptr(), target.as_ptr(), c("cgroup2").as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(mount_err(std::io::Error::last_os_error()));
    }
    Ok(dir)
}

fn is_bpffs(path: &Path) -> std::io::Result<bool> {
    Ok(fs_type(path)? == BPF_FS_MAGIC)
}

fn fs_type(path: &Path) -> std::io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is a C struct of integers, for which all-zero bytes are a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_type as i64)
}

/// What the node's IP forwarding settings break, one line each: a backend that is not on this
/// node and not behind an `--iface` uplink is reached by destination NAT through the stack,
/// which then has to forward the packet; with forwarding off the stack drops it after the
/// program counted `fwd_local`.
pub fn forwarding_warnings() -> Vec<String> {
    let settings = [("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"), ("net.ipv6.conf.all.forwarding", "/proc/sys/net/ipv6/conf/all/forwarding")];
    settings
        .iter()
        .filter(|(_, path)| std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "0"))
        .map(|(name, _)| {
            format!(
                "{name}=0: backends on other nodes get no full NAT, DSR or second chance (the programs' route lookups see them as local and the stack drops what they counted as fwd_local); sysctl -w {name}=1"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_nonsense_does_not() {
        assert!(interface_index("lo").is_ok());
        let err = interface_index("no-such-if0").unwrap_err();
        assert!(err.to_string().contains("no-such-if0"));
    }

    #[test]
    fn drivers_are_named_and_unknown_interfaces_have_none() {
        assert_eq!(interface_driver("lo"), None, "loopback does not implement ETHTOOL_GDRVINFO");
        assert_eq!(interface_driver("no-such-if0"), None);
        assert_eq!(interface_driver("a-name-longer-than-ifnamsiz"), None);
    }

    #[test]
    fn the_ephemeral_range_is_read() {
        let (min, max) = ephemeral_ports().expect("/proc/sys/net/ipv4/ip_local_port_range");
        assert!(min > 0 && min <= max, "{min}-{max}");
    }

    #[test]
    fn tmp_is_not_bpffs() {
        let err = require_bpffs(Path::new("/tmp/lb-not-bpffs/pins")).unwrap_err();
        assert!(matches!(err, PreflightError::PinDirNotBpffs(_)), "{err}");
    }
}
