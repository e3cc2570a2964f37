//! A cluster of network namespaces: a client behind a router that runs BIRD with ECMP (`merge
//! paths`, L4 multipath hash), balancer nodes that announce the VIP over BGP and balance to
//! backend nodes (with `--dsr` or full NAT), and backend nodes each running the agent
//! (`--decap-from` the fabric) and one echo task. Every node has its own link to the router (a
//! routed fabric: no shared segment floods one node's frames to the others), so the backend
//! nodes' replies go to the router, not back through a balancer. Every agent reads the same
//! services file.
//!
//! Addresses: client 10.240.0.2 (router 10.240.0.1); the fabric 10.241.0.0/16, balancer node i
//! at 10.241.(10+i).2 and backend node i at 10.241.(20+i).2 (the router at .1 of each), a
//! backend node's task on port 31000; the VIP 10.0.0.1:80.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};

use crate::{
    agent::{Agent, PinDir, TempFile, TestCgroup},
    bird::Bird,
    netns::{veth, Netns},
    servers::{tcp_echo, Server},
};

pub const VIP: &str = "10.0.0.1";
pub const VIP_PORT: u16 = 80;
pub const TASK_PORT: u16 = 31000;
const FABRIC: &str = "10.241.0.0/16";
/// BGP timers short enough for a test: a dead balancer leaves the ECMP set within `HOLD_SECS`.
pub const HOLD_SECS: u64 = 3;

/// How the balancer nodes reach the backend nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    Dsr,
    FullNat,
}

/// One node: its namespace, fabric interface and address, its agent's pins and cgroup.
pub struct Node {
    pub ns: Netns,
    pub uplink: String,
    /// The router's end of the node's link.
    router_end: String,
    pub addr: String,
    pub pins: PinDir,
    cgroup: TestCgroup,
    agent: Option<Agent>,
}

impl Node {
    /// Node on the fabric's subnet 10.241.`subnet`.0/24.
    fn new(router: &Netns, prefix: &str, subnet: usize) -> Result<Self> {
        let ns = Netns::new(prefix)?;
        let (router_end, uplink) = veth(router, &ns)?;
        router.addr(&router_end, &format!("10.241.{subnet}.1/24"))?;
        let addr = format!("10.241.{subnet}.2");
        ns.addr(&uplink, &format!("{addr}/24"))?;
        ns.ip(&["route", "add", "default", "via", &format!("10.241.{subnet}.1")])?;
        Ok(Self { ns, uplink, router_end, addr, pins: PinDir::new(), cgroup: TestCgroup::new()?, agent: None })
    }

    fn start_agent(&mut self, services: &TempFile, extra: &[&str]) -> Result<()> {
        let (file, pins, cgroup) = (services.arg(), self.pins.arg(), self.cgroup.arg());
        let mut args = vec!["--services", &file, "--iface", &self.uplink, "--pin-dir", &pins, "--cgroup", &cgroup, "--metrics-listen", "off"];
        args.extend_from_slice(extra);
        self.agent = Some(Agent::start(&self.ns, &args)?);
        Ok(())
    }

    /// The agent's verdict counts by reason (`lb stats --json`'s `verdicts`), read once.
    pub fn verdicts(&self) -> Result<serde_json::Value> {
        let out = crate::agent::lb_ok(Some(&self.ns), &["stats", "--json", "--pin-dir", &self.pins.arg()])?;
        let mut stats: serde_json::Value = serde_json::from_str(&out)?;
        Ok(stats["verdicts"].take())
    }

    /// The count of the agent's verdict `reason`.
    pub fn verdict(&self, reason: &str) -> Result<u64> {
        Ok(self.verdicts()?[reason].as_u64().unwrap_or(0))
    }

    /// The agent's `lb status --json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = crate::agent::lb(Some(&self.ns), &["status", "--json", "--pin-dir", &self.pins.arg()])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

/// A balancer node: a [`Node`] with BIRD.
pub struct Balancer {
    pub node: Node,
    bird: Option<Bird>,
}

impl Balancer {
    /// Whether its agent runs (it was not killed).
    pub fn is_running(&self) -> bool {
        self.node.agent.is_some()
    }

    /// The process ids of its agent and its BIRD (while they run).
    pub fn processes(&self) -> Vec<u32> {
        self.node.agent.iter().map(Agent::pid).chain(self.bird.as_ref().and_then(Bird::pid)).collect()
    }
}

pub struct Cluster {
    pub router: Netns,
    pub client: Netns,
    _router_bird: Bird,
    pub balancers: Vec<Balancer>,
    pub backends: Vec<Node>,
    services: TempFile,
    _tasks: Vec<Server>,
}

/// The services file: the VIP on the tasks of the backend nodes `backends` (by index), with
/// weight 1, or 0 (draining: no new flows) for those in `draining`.
pub fn services(backends: &[usize], draining: &[usize]) -> String {
    services_on(TASK_PORT, backends, draining)
}

/// [`services`] with the tasks on `port` (a server the caller runs on the backend nodes).
pub fn services_on(port: u16, backends: &[usize], draining: &[usize]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|&i| format!(r#"{{"address":"{}","port":{port},"weight":{}}}"#, backend_addr(i), u8::from(!draining.contains(&i))))
        .collect();
    format!(r#"{{"services":[{{"name":"web","address":"{VIP}","port":{VIP_PORT},"backends":[{}]}}]}}"#, list.join(","))
}

impl Cluster {
    /// Builds the cluster and starts every agent and BIRD; returns once the router has a path
    /// through every balancer node.
    pub fn start(balancers: usize, backends: usize, forwarding: Forwarding) -> Result<Self> {
        Self::start_serving(balancers, backends, backends, forwarding, &[])
    }

    /// [`Cluster::start`] with the VIP on the first `serving` backend nodes only (the others
    /// wait to be added), and `balancer_args` added to the balancer nodes' agents.
    pub fn start_serving(balancers: usize, backends: usize, serving: usize, forwarding: Forwarding, balancer_args: &[&str]) -> Result<Self> {
        let router = router()?;
        let client = Netns::new("lbcl")?;
        let (router_end, client_end) = veth(&router, &client)?;
        router.addr(&router_end, "10.240.0.1/24")?;
        client.addr(&client_end, "10.240.0.2/24")?;
        client.ip(&["route", "add", "default", "via", "10.240.0.1"])?;
        let mut backend_nodes = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..backends {
            let node = Node::new(&router, "lbbk", 20 + i)?;
            // A second chance is forwarded to another node: the route lookups need forwarding.
            node.ns.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]).output()?;
            tasks.push(tcp_echo(&node.ns, SocketAddr::new(node.addr.parse()?, TASK_PORT), &format!("task-{i}"))?);
            backend_nodes.push(node);
        }
        let first: Vec<usize> = (0..serving).collect();
        let services = TempFile::new(&services(&first, &[]))?;
        let mut sessions = String::new();
        let mut balancer_nodes = Vec::new();
        for i in 0..balancers {
            let node = Node::new(&router, "lbbl", 10 + i)?;
            // The programs' route lookups forward only where the node does (as for full NAT).
            node.ns.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]).output()?;
            sessions += &format!("protocol bgp balancer{i} from balancers {{ local 10.241.{}.1 as 65000; neighbor {} as 65001; }}\n", 10 + i, node.addr);
            balancer_nodes.push(Balancer { node, bird: None });
        }
        let mut router_bird = Bird::with_config("10.240.0.1", |_| {
            format!(
                "protocol kernel {{ ipv4 {{ export all; }}; merge paths on; }}\ntemplate bgp balancers {{ {}\n  ipv4 {{ import all; export none; }}; }}\n{sessions}",
                timers()
            )
        });
        router_bird.start_in(Some(&router))?;
        for node in &mut backend_nodes {
            node.start_agent(&services, &["--decap-from", FABRIC])?;
        }
        let mut cluster = Self { router, client, _router_bird: router_bird, balancers: balancer_nodes, backends: backend_nodes, services, _tasks: tasks };
        for i in 0..balancers {
            cluster.start_balancer(i, forwarding, balancer_args)?;
        }
        let all: Vec<String> = cluster.balancers.iter().map(|b| b.node.addr.clone()).collect();
        cluster.wait_next_hops(&all, Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn start_balancer(&mut self, i: usize, forwarding: Forwarding, args: &[&str]) -> Result<()> {
        let balancer = &mut self.balancers[i];
        let addr = balancer.node.addr.clone();
        let router_addr = format!("10.241.{}.1", 10 + i);
        let mut bird = Bird::with_config(&addr, |routes| {
            format!(
                "include \"{}\";\nprotocol bgp upstream {{ local {addr} as 65001; neighbor {router_addr} as 65000; {}\n  ipv4 {{ import none; export where proto = \"lb_vips4\"; }}; }}\n",
                routes.display(),
                timers()
            )
        });
        bird.start_in(Some(&balancer.node.ns))?;
        let (socket, routes) = (bird.socket().display().to_string(), bird.routes_file().display().to_string());
        let mut extra = vec!["--bird-socket", &socket, "--bird-routes", &routes];
        if forwarding == Forwarding::Dsr {
            extra.extend(["--dsr", "--dsr-nodes", FABRIC]);
        }
        extra.extend_from_slice(args);
        balancer.node.start_agent(&self.services, &extra)?;
        balancer.bird = Some(bird);
        Ok(())
    }

    /// The VIP's address.
    pub fn vip() -> SocketAddr {
        SocketAddr::new(VIP.parse().expect("VIP"), VIP_PORT)
    }

    /// Balancer node `i` dies: first its link stops carrying anything either way while staying
    /// up (an nftables netdev egress chain with policy drop at both ends, which also sees what
    /// the programs redirect: a hung node, or one behind a switch, whose loss the router sees only
    /// when the BGP hold time runs out), then its agent and BIRD are killed (SIGKILL, no
    /// withdrawal; a BIRD killed with the link working has its BGP socket closed by the kernel,
    /// which would tell the router at once).
    pub fn kill_balancer(&mut self, i: usize) -> Result<()> {
        let balancer = &mut self.balancers[i];
        for (ns, dev) in [(&balancer.node.ns, &balancer.node.uplink), (&self.router, &balancer.node.router_end)] {
            let chain = format!("{{ type filter hook egress device \"{dev}\" priority 0; policy drop; }}");
            let table = format!("lbdead_{dev}");
            for args in [vec!["add", "table", "netdev", &table], vec!["add", "chain", "netdev", &table, "out", &chain]] {
                let out = ns.command("nft").args(&args).output()?;
                ensure!(out.status.success(), "nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            }
        }
        if let Some(agent) = balancer.node.agent.take() {
            agent.kill()?;
        }
        balancer.bird = None;
        Ok(())
    }

    /// Rewrites the services file every agent reads ([`services`]) and has each reload it.
    pub fn set_services(&self, text: &str) -> Result<()> {
        self.services.replace(text)?;
        for node in self.balancers.iter().map(|b| &b.node).chain(&self.backends) {
            if let Some(agent) = &node.agent {
                agent.sighup();
            }
        }
        Ok(())
    }

    /// Waits until every running agent programs the VIP with exactly `backends` backends, of which
    /// `draining` drain.
    pub fn wait_programmed(&self, backends: usize, draining: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let nodes: Vec<&Node> = self.balancers.iter().map(|b| &b.node).chain(&self.backends).filter(|n| n.agent.is_some()).collect();
        for node in nodes {
            loop {
                let out = crate::agent::lb(Some(&node.ns), &["services", "--json", "--pin-dir", &node.pins.arg()])?;
                let services: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let list = services[0]["backends"].as_array().cloned().unwrap_or_default();
                let drained = list.iter().filter(|b| b["state"] == "draining").count();
                if list.len() == backends && drained == draining {
                    break;
                }
                ensure!(Instant::now() < deadline, "{} programs {} backends ({drained} draining), expected {backends} ({draining})", node.addr, list.len());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The router's next hops for the VIP.
    pub fn next_hops(&self) -> Vec<String> {
        next_hops(&self.router, VIP)
    }

    /// Waits until the router's next hops for the VIP are exactly `want`.
    pub fn wait_next_hops(&self, want: &[String], timeout: Duration) -> Result<()> {
        let mut want = want.to_vec();
        want.sort();
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.next_hops();
            if have == want {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "the router's next hops for {VIP}: {have:?}, expected {want:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Bytes `node`'s uplink received and sent since it was made.
    pub fn link_bytes(node: &Node) -> Result<LinkBytes> {
        let out = node.ns.command("ip").args(["-j", "-s", "link", "show", "dev", &node.uplink]).output()?;
        let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let stats = &links[0]["stats64"];
        let count = |way: &str| stats[way]["bytes"].as_u64().ok_or_else(|| anyhow::anyhow!("no {way} bytes for {}", node.uplink));
        Ok(LinkBytes { received: count("rx")?, sent: count("tx")? })
    }
}

/// A link's byte counters.
#[derive(Clone, Copy, Debug)]
pub struct LinkBytes {
    pub received: u64,
    pub sent: u64,
}

fn timers() -> String {
    format!("hold time {HOLD_SECS}; keepalive time 1; connect delay time 1; connect retry time 1; error wait time 1, 2;")
}

/// The router: forwarding, and a multipath hash of the addresses, protocol and ports, computed
/// from each packet's headers as a hardware router does (policy 3 with those fields: policy 1
/// takes an skb's hash when it has one, and a veth hands the router the client socket's, which
/// TCP changes at every retransmission timeout, so flows would move between paths by
/// themselves).
fn router() -> Result<Netns> {
    let router = Netns::new("lbrt")?;
    for sysctl in ["net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=3", "net.ipv4.fib_multipath_hash_fields=0x0037"] {
        let out = router.command("sysctl").args(["-qw", sysctl]).output()?;
        ensure!(out.status.success(), "sysctl {sysctl}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(router)
}

/// The next hops `ns`'s kernel has for `dest` (one per ECMP path), sorted.
pub fn next_hops(ns: &Netns, dest: &str) -> Vec<String> {
    let out = match ns.command("ip").args(["-4", "route", "show", dest]).output() {
        Ok(out) => out,
        Err(_) => return Vec::new(),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut hops: Vec<String> = text.split("via ").skip(1).filter_map(|rest| rest.split_whitespace().next()).map(str::to_owned).collect();
    hops.sort();
    hops
}

/// The address of backend node `i`.
pub fn backend_addr(i: usize) -> IpAddr {
    format!("10.241.{}.2", 20 + i).parse().expect("address")
}
