//! RAII network topologies: namespaces, veth pairs, addresses and routes, all removed on drop.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    process::Command,
    thread,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::unique_name;

/// Runs `ip ARGS` and fails with its stderr if it fails.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A network namespace (`/run/netns/NAME`), deleted on drop with everything inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `<prefix><unique>` with loopback up.
    pub fn new(prefix: &str) -> Result<Self> {
        let ns = Self { name: unique_name(prefix) };
        ip(&["netns", "add", &ns.name])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path for `nsenter --net=…` / setns.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Adds `addr/prefix` to `dev` and brings it up.
    pub fn addr(&self, dev: &str, cidr: &str) -> Result<()> {
        let family = if cidr.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "addr", "add", cidr, "dev", dev, "nodad"])
            .or_else(|_| self.ip(&[family, "addr", "add", cidr, "dev", dev]))?;
        self.ip(&["link", "set", dev, "up"])
    }

    /// Adds a route `dest via gw`.
    pub fn route(&self, dest: &str, via: IpAddr) -> Result<()> {
        let family = if via.is_ipv6() { "-6" } else { "-4" };
        self.ip(&[family, "route", "add", dest, "via", &via.to_string()])
    }

    /// Runs `f` on a new thread that has entered this namespace (only that thread does), and
    /// returns its result. Sockets opened inside live in the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let handle = self.spawn(f)?;
        handle.join().map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))
    }

    /// Like [`Netns::run`] without waiting: for servers.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<thread::JoinHandle<T>> {
        let ns_file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        Ok(thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd; affects only the calling thread.
            let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            drop(ns_file);
            f()
        }))
    }

    /// Runs a command inside the namespace (network only: the host's /sys/fs/bpf stays visible).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path())).arg("--").arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Creates a veth pair with one end in each namespace; returns the two interface names
/// (`a_end` in `a`, `b_end` in `b`). Removed with either namespace.
pub fn veth(a: &Netns, b: &Netns) -> Result<(String, String)> {
    let base = unique_name("v");
    let (a_end, b_end) = (format!("{base}a"), format!("{base}b"));
    ip(&["link", "add", &a_end, "netns", a.name(), "type", "veth", "peer", "name", &b_end, "netns", b.name()])?;
    // Checksum offload off: packets crossing the veth carry complete checksums, as on a wire.
    for (ns, dev) in [(a, &a_end), (b, &b_end)] {
        let _ = ns.command("ethtool").args(["-K", dev, "tx", "off"]).output();
    }
    Ok((a_end, b_end))
}

/// The simplest topology: a client namespace and a node namespace joined by a veth pair,
/// 10.x.y.1 on the client, 10.x.y.2 on the node, and fd00:x:y::1/2 likewise.
pub struct ClientNode {
    pub client: Netns,
    pub node: Netns,
    pub client_if: String,
    pub node_if: String,
    pub client_ip: IpAddr,
    pub node_ip: IpAddr,
    pub client_ip6: IpAddr,
    pub node_ip6: IpAddr,
}

impl ClientNode {
    pub fn new() -> Result<Self> {
        let client = Netns::new("lbc")?;
        let node = Netns::new("lbn")?;
        let (client_if, node_if) = veth(&client, &node)?;
        // A /24 per topology would collide across parallel tests in one netns only; these are
        // separate namespaces, so one fixed subnet is fine.
        client.addr(&client_if, "10.201.0.1/24")?;
        node.addr(&node_if, "10.201.0.2/24")?;
        client.addr(&client_if, "fd00:201::1/64")?;
        node.addr(&node_if, "fd00:201::2/64")?;
        Ok(Self {
            client,
            node,
            client_if,
            node_if,
            client_ip: "10.201.0.1".parse().unwrap(),
            node_ip: "10.201.0.2".parse().unwrap(),
            client_ip6: "fd00:201::1".parse().unwrap(),
            node_ip6: "fd00:201::2".parse().unwrap(),
        })
    }
}

/// The load-balancer topology of the end-to-end tests and the demo:
///
/// ```text
///  client ns ──veth── node ns (lb: XDP in, TC out on its uplink) ──veth── backend ns 0
///  10.201.0.1          10.201.0.2 | 10.210.<i>.1                   ╰─veth── backend ns 1 …
///  fd00:201::1         fd00:201::2 | fd00:210:<i>::1                        10.210.<i>.2
/// ```
/// The client routes the VIP ranges 10.0.0.0/24 and fd00::/112 to the node; the node forwards.
pub struct LbTopology {
    pub client: Netns,
    pub node: Netns,
    pub backends: Vec<Netns>,
    pub client_if: String,
    pub uplink: String,
    pub client_ip: IpAddr,
    pub client_ip6: IpAddr,
    pub node_ip: IpAddr,
    pub node_ip6: IpAddr,
}

impl LbTopology {
    pub fn new(backends: usize) -> Result<Self> {
        let client = Netns::new("lbc")?;
        let node = Netns::new("lbn")?;
        let (client_if, uplink) = veth(&client, &node)?;
        client.addr(&client_if, "10.201.0.1/24")?;
        client.addr(&client_if, "fd00:201::1/64")?;
        node.addr(&uplink, "10.201.0.2/24")?;
        node.addr(&uplink, "fd00:201::2/64")?;
        client.route("10.0.0.0/24", "10.201.0.2".parse().unwrap())?;
        client.route("fd00::/112", "fd00:201::2".parse().unwrap())?;
        for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            let out = node.command("sysctl").args(["-qw", sysctl]).output()?;
            if !out.status.success() {
                bail!("sysctl {sysctl}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let mut topo = Self {
            client,
            node,
            backends: Vec::new(),
            client_if,
            uplink,
            client_ip: "10.201.0.1".parse().unwrap(),
            client_ip6: "fd00:201::1".parse().unwrap(),
            node_ip: "10.201.0.2".parse().unwrap(),
            node_ip6: "fd00:201::2".parse().unwrap(),
        };
        for _ in 0..backends {
            topo.add_backend()?;
        }
        Ok(topo)
    }

    /// Adds a backend namespace; returns its index.
    pub fn add_backend(&mut self) -> Result<usize> {
        let i = self.backends.len();
        let ns = Netns::new("lbb")?;
        let (node_end, backend_end) = veth(&self.node, &ns)?;
        self.node.addr(&node_end, &format!("10.210.{i}.1/24"))?;
        self.node.addr(&node_end, &format!("fd00:210:{i}::1/64"))?;
        ns.addr(&backend_end, &format!("10.210.{i}.2/24"))?;
        ns.addr(&backend_end, &format!("fd00:210:{i}::2/64"))?;
        ns.ip(&["-4", "route", "add", "default", "via", &format!("10.210.{i}.1")])?;
        ns.ip(&["-6", "route", "add", "default", "via", &format!("fd00:210:{i}::1")])?;
        self.backends.push(ns);
        Ok(i)
    }

    /// Turns transmit checksum offload (and with it TSO/GSO) on or off on every veth of the
    /// topology. Off (what `veth` sets up) is wire-like: every segment is MTU-sized with a
    /// complete checksum. On is veth's own default, and close to NICs with TSO and GRO.
    pub fn set_offloads(&self, on: bool) -> Result<()> {
        let state = if on { "on" } else { "off" };
        for ns in [&self.client, &self.node].into_iter().chain(&self.backends) {
            let links = ns.command("ip").args(["-o", "link", "show", "type", "veth"]).output()?;
            for line in String::from_utf8_lossy(&links.stdout).lines() {
                let dev = line.split(": ").nth(1).and_then(|d| d.split('@').next()).context("ip -o link output")?;
                let out = ns.command("ethtool").args(["-K", dev, "tx", state]).output()?;
                ensure!(out.status.success(), "ethtool -K {dev} tx {state}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    pub fn backend_ip(i: usize) -> IpAddr {
        format!("10.210.{i}.2").parse().unwrap()
    }

    pub fn backend_ip6(i: usize) -> IpAddr {
        format!("fd00:210:{i}::2").parse().unwrap()
    }
}

/// Backends on other nodes: client, node and remote backends share one L2 segment (a bridge in
/// a "switch" namespace), so the node reaches the backends back out of its uplink with full NAT.
///
/// ```text
///  client 10.202.0.1 ─┐
///  node   10.202.0.2 ─┼─ bridge (switch ns) ─┬─ remote backend 0: 10.202.0.10 / fd00:202::10
///  (fd00:202::1, ::2) ┘                      └─ remote backend 1: 10.202.0.11 …
/// ```
pub struct NatTopology {
    /// Pass-only XDP on the switch ports, so they accept the node's XDP_TX frames.
    _port_programs: Vec<aya::Ebpf>,
    pub switch: Netns,
    pub client: Netns,
    pub node: Netns,
    pub backends: Vec<Netns>,
    pub uplink: String,
}

impl NatTopology {
    pub fn new(backends: usize) -> Result<Self> {
        let switch = Netns::new("lbs")?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let client = Netns::new("lbc")?;
        let node = Netns::new("lbn")?;
        let ports = std::cell::RefCell::new(Vec::new());
        let plug = |ns: &Netns, v4: &str, v6: &str| -> Result<String> {
            let (inside, port) = veth(ns, &switch)?;
            switch.ip(&["link", "set", &port, "master", "br0", "up"])?;
            ns.addr(&inside, v4)?;
            ns.addr(&inside, v6)?;
            ports.borrow_mut().push(port);
            Ok(inside)
        };
        plug(&client, "10.202.0.1/24", "fd00:202::1/64")?;
        let uplink = plug(&node, "10.202.0.2/24", "fd00:202::2/64")?;
        client.route("10.0.0.0/24", "10.202.0.2".parse().unwrap())?;
        client.route("fd00::/112", "fd00:202::2".parse().unwrap())?;
        for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            node.command("sysctl").args(["-qw", sysctl]).output()?;
        }
        let mut list = Vec::new();
        for i in 0..backends {
            let ns = Netns::new("lbr")?;
            plug(&ns, &format!("10.202.0.{}/24", 10 + i), &format!("fd00:202::{:x}/64", 0x10 + i))?;
            list.push(ns);
        }
        let mut programs = Vec::new();
        for port in ports.into_inner() {
            let program = switch.run(move || lb::dataplane::loader::attach_xdp_pass(&port))??;
            programs.push(program);
        }
        Ok(Self { _port_programs: programs, switch, client, node, backends: list, uplink })
    }

    pub fn backend_ip(i: usize) -> IpAddr {
        format!("10.202.0.{}", 10 + i).parse().unwrap()
    }

    pub fn backend_ip6(i: usize) -> IpAddr {
        format!("fd00:202::{:x}", 0x10 + i).parse().unwrap()
    }
}
