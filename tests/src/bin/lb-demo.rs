//! `cargo xtask demo`: the main job on this machine — a Marathon-compatible server with sample
//! apps, the agent following it, real connections spread over backends, and a live scale-up and
//! task kill that the traffic follows. Everything lives in throw-away network namespaces.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use lb_tests::{
    agent::{lb_ok, wait_for_services, Agent, PinDir, TestCgroup},
    marathon_server::{AppSpec, MarathonServer, TaskSpec},
    netns::LbTopology,
    servers::{backend_spread, connect_and_greet, tcp_echo, udp_echo, Server},
};

const PORT: u16 = 31000;

fn task(app: &str, i: usize) -> TaskSpec {
    TaskSpec {
        id: format!("{app}.task-{i}"),
        host: LbTopology::backend_ip(i).to_string(),
        port: PORT,
        state: "TASK_RUNNING".into(),
        alive: Some(true),
    }
}

fn main() -> Result<()> {
    println!("== topology: client ns ──veth── node ns (lb + Marathon) ──veth── 3 backend namespaces");
    let topo = LbTopology::new(3)?;
    let mut servers: Vec<Server> = Vec::new();
    for i in 0..3 {
        let addr = SocketAddr::new(LbTopology::backend_ip(i), PORT);
        servers.push(tcp_echo(&topo.backends[i], addr, &format!("backend-{i}"))?);
        servers.push(udp_echo(&topo.backends[i], addr, &format!("backend-{i}"))?);
    }
    let marathon = marathon(&topo)?;
    let pins = PinDir::new();
    let cgroup = TestCgroup::new()?;
    let url = marathon.url();
    println!("\n== lb run --marathon {url} --iface {} --vip-cidr 10.0.0.0/24", topo.uplink);
    let args = [
        "--marathon", &url, "--iface", &topo.uplink, "--pin-dir", &pins.arg(), "--node-ip", "10.201.0.2",
        "--cgroup", &cgroup.arg(), "--vip-cidr", "10.0.0.0/24",
    ];
    let agent = Agent::start(&topo.node, &args)?;
    wait_for_services(&pins, |j| j.as_array().is_some_and(|a| a.len() >= 4))?;
    balance(&topo, &pins)?;
    scale_and_kill(&topo, &marathon, &pins)?;
    println!("\n== lb status");
    print!("{}", lb_ok(None, &["status", "--pin-dir", &pins.arg()])?);
    println!("\n== lb stats (outcomes)");
    let stats = lb_ok(Some(&topo.node), &["stats", "--pin-dir", &pins.arg()])?;
    for line in stats.lines().take_while(|l| !l.is_empty()).filter(|l| !l.ends_with(" 0")) {
        println!("{line}");
    }
    agent.stop()?;
    drop(servers);
    println!("\n== agent stopped (SIGTERM leaves the data path running); lb down removes it");
    print!("   {}", lb_ok(None, &["down", "--pin-dir", &pins.arg()])?);
    println!("\n== namespaces, cgroup and pins removed; done");
    Ok(())
}

/// A Marathon test server in the node namespace with a TCP app on a VIP and a UDP one on a
/// named VIP.
fn marathon(topo: &LbTopology) -> Result<MarathonServer> {
    let marathon = MarathonServer::start(Some(&topo.node), Duration::from_secs(2))?;
    let mut web = AppSpec::new("/shop/web", 10000);
    web.labels.insert("VIP_0".into(), "10.0.0.1:80".into());
    web.tasks = vec![task("shop_web", 0), task("shop_web", 1)];
    let mut dns = AppSpec::new("/infra/dns", 10053);
    dns.protocol = "udp".into();
    dns.labels.insert("VIP_0".into(), "/dns:53".into());
    dns.tasks = (0..3).map(|i| task("infra_dns", i)).collect();
    marathon.set_apps(vec![web, dns]);
    println!("   Marathon (test server) at {} in the node namespace:", marathon.url());
    println!("   /shop/web  tcp, service port 10000, label VIP_0=10.0.0.1:80, tasks on backend-0, backend-1");
    println!("   /infra/dns udp, service port 10053, label VIP_0=/dns:53 (a named VIP), tasks on all three");
    Ok(marathon)
}

/// What the agent programmed, and connections and queries spread over it.
fn balance(topo: &LbTopology, pins: &PinDir) -> Result<()> {
    println!("\n== lb services");
    print!("{}", lb_ok(None, &["services", "--pin-dir", &pins.arg()])?);
    println!("\n== lb vips");
    print!("{}", lb_ok(None, &["vips", "--pin-dir", &pins.arg()])?);
    let vips: BTreeMap<String, String> = serde_json::from_str(&lb_ok(None, &["vips", "--json", "--pin-dir", &pins.arg()])?)?;
    let dns_vip: IpAddr = vips.get("/dns").context("named VIP /dns")?.parse()?;
    println!("\n== 300 TCP connections from the client to 10.0.0.1:80");
    show(&connections(topo, 300)?);
    println!("\n== 60 UDP queries to the named VIP /dns ({dns_vip}:53), answered from the VIP");
    show(&udp_queries(topo, SocketAddr::new(dns_vip, 53), 60)?);
    Ok(())
}

/// Marathon scales /shop/web up, then kills a task: new connections follow, a held one stays.
fn scale_and_kill(topo: &LbTopology, marathon: &MarathonServer, pins: &PinDir) -> Result<()> {
    println!("\n== Marathon scales /shop/web up: a task on backend-2 (status_update_event)");
    marathon.update("/shop/web", |a| a.tasks.push(task("shop_web", 2)));
    wait_for_services(pins, |j| web_backends(j) == 3)?;
    show(&connections(topo, 300)?);
    println!("\n== Marathon kills the task on backend-0: TASK_KILLING (draining, open connections stay) …");
    // Held open across the kill: a connection to the very task that is killed.
    let mut held = topo.client.run(|| -> Result<_> {
        for _ in 0..100 {
            let (stream, name) = connect_and_greet("10.0.0.1:80".parse().unwrap())?;
            if name == "backend-0" {
                return Ok((stream, name));
            }
        }
        bail!("100 connections never reached backend-0")
    })??;
    marathon.update("/shop/web", |a| a.tasks[0].state = "TASK_KILLING".into());
    wait_for_services(pins, |j| j.to_string().contains("draining"))?;
    show(&connections(topo, 200)?);
    lb_tests::servers::echo_round_trip(&mut held.0, b"still here")?;
    println!("   a connection opened before the kill to the killed task ({}) still works", held.1);
    println!("   … then the task is gone");
    marathon.update("/shop/web", |a| {
        a.tasks.remove(0);
    });
    wait_for_services(pins, |j| web_backends(j) == 2)?;
    print!("{}", lb_ok(None, &["services", "--pin-dir", &pins.arg()])?);
    Ok(())
}

/// Backends of the VIP service 10.0.0.1:80.
fn web_backends(json: &serde_json::Value) -> usize {
    json.as_array()
        .into_iter()
        .flatten()
        .find(|s| s["address"] == "10.0.0.1")
        .and_then(|s| s["backends"].as_array())
        .map_or(0, Vec::len)
}

fn connections(topo: &LbTopology, count: usize) -> Result<BTreeMap<String, usize>> {
    backend_spread(&topo.client, "10.0.0.1:80".parse()?, count)
}

fn udp_queries(topo: &LbTopology, vip: SocketAddr, count: usize) -> Result<BTreeMap<String, usize>> {
    topo.client.run(move || -> Result<BTreeMap<String, usize>> {
        let mut per_backend = BTreeMap::new();
        for i in 0..count {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(Duration::from_secs(2)))?;
            sock.send_to(format!("q{i}").as_bytes(), vip)?;
            let mut buf = [0u8; 256];
            let (n, from) = sock.recv_from(&mut buf).context("UDP answer")?;
            ensure!(from == vip, "answer from {from}");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            *per_backend.entry(text.split(':').next().unwrap_or_default().to_string()).or_insert(0) += 1;
        }
        Ok(per_backend)
    })?
}

fn show(per_backend: &BTreeMap<String, usize>) {
    for (name, n) in per_backend {
        println!("   {name:<10} {n:>4} {}", "#".repeat(n / 5));
    }
}
