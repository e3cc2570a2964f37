//! `cargo xtask demo`: the data path balancing real connections on this machine, in throw-away
//! network namespaces (removed at the end, whatever happens).

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use lb_tests::{
    agent::{lb_ok, wait_for_services, Agent, PinDir, TempFile, TestCgroup},
    netns::LbTopology,
    servers::{connect_and_greet, tcp_echo, udp_echo, Server},
};

const PORT: u16 = 31000;

fn services(weights: &[u32]) -> String {
    let backends: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!(r#"{{"address":"{}","port":{PORT},"weight":{w}}}"#, LbTopology::backend_ip(i)))
        .collect();
    let b = backends.join(",");
    format!(
        r#"{{"services":[
  {{"name":"web","address":"10.0.0.1","port":80,"protocol":"tcp","backends":[{b}]}},
  {{"name":"dns","address":"10.0.0.1","port":53,"protocol":"udp","backends":[{b}]}},
  {{"name":"web-port","port":10000,"protocol":"tcp","backends":[{b}]}}
]}}"#
    )
}

fn main() -> Result<()> {
    println!("== topology: client ns ──veth── node ns (lb) ──veth── 3 backend namespaces");
    let topo = LbTopology::new(3)?;
    let mut servers: Vec<Server> = Vec::new();
    for i in 0..3 {
        let name = format!("backend-{i}");
        let addr = SocketAddr::new(LbTopology::backend_ip(i), PORT);
        servers.push(tcp_echo(&topo.backends[i], addr, &name)?);
        servers.push(udp_echo(&topo.backends[i], addr, &name)?);
        println!("   {name}: TCP and UDP servers on {addr}");
    }
    let pins = PinDir::new();
    let cgroup = TestCgroup::new()?;
    let file = TempFile::new(&services(&[1, 1, 1]))?;
    println!("\n== services file {}:\n{}", file.arg(), std::fs::read_to_string(file.path())?);

    println!("\n== lb run --iface {} --services … (in the node namespace; socket hooks on cgroup {})", topo.uplink, cgroup.arg());
    let args = ["--iface", &topo.uplink, "--pin-dir", &pins.arg(), "--services", &file.arg(), "--node-ip", "10.201.0.2", "--cgroup", &cgroup.arg()];
    let agent = Agent::start(&topo.node, &args)?;

    println!("\n== lb services");
    print!("{}", lb_ok(None, &["services", "--pin-dir", &pins.arg()])?);

    println!("\n== 300 TCP connections from the client to 10.0.0.1:80 (XDP rewrites, TC restores the VIP)");
    show(&connections(&topo, "10.0.0.1:80".parse()?, 300)?);

    println!("\n== 60 UDP queries to 10.0.0.1:53, each answered from the VIP");
    show(&udp_queries(&topo, 60)?);

    println!("\n== a local client on the node, in the cgroup, connects to 127.0.0.1:10000 (socket hooks: no NAT at all)");
    let probe = cgroup.command({
        let mut c = topo.node.command(std::env::current_exe()?.with_file_name("lb-probe").to_str().unwrap());
        c.args(["tcp", "127.0.0.1:10000", "60"]);
        c
    });
    let out = Command::from(probe).output()?;
    ensure!(out.status.success(), "local client failed: {}", String::from_utf8_lossy(&out.stderr));
    show(&serde_json::from_slice(&out.stdout)?);

    println!("\n== backend-1 set to weight 0 (draining): open connections stay, new ones avoid it");
    let mut held = topo.client.run(|| connect_and_greet("10.0.0.1:80".parse().unwrap()))??;
    file.replace(&services(&[1, 0, 1]))?;
    agent.sighup();
    wait_for_services(&pins, |j| j.to_string().contains("draining"))?;
    show(&connections(&topo, "10.0.0.1:80".parse()?, 100)?);
    lb_tests::servers::echo_round_trip(&mut held.0, b"still here")?;
    println!("   a connection opened before the change (to {}) still works", held.1);

    println!("\n== lb stats");
    print!("{}", lb_ok(Some(&topo.node), &["stats", "--pin-dir", &pins.arg()])?);

    agent.stop()?;
    drop(servers);
    println!("\n== agent stopped (SIGTERM leaves the data path running); lb down removes it");
    print!("   {}", lb_ok(None, &["down", "--pin-dir", &pins.arg()])?);
    println!("\n== namespaces, cgroup and pins removed; done");
    Ok(())
}

fn connections(topo: &LbTopology, addr: SocketAddr, count: usize) -> Result<BTreeMap<String, usize>> {
    topo.client.run(move || -> Result<BTreeMap<String, usize>> {
        let mut per_backend = BTreeMap::new();
        for _ in 0..count {
            let (_stream, name) = connect_and_greet(addr).context("connecting through the VIP")?;
            *per_backend.entry(name).or_insert(0) += 1;
        }
        Ok(per_backend)
    })?
}

fn udp_queries(topo: &LbTopology, count: usize) -> Result<BTreeMap<String, usize>> {
    topo.client.run(move || -> Result<BTreeMap<String, usize>> {
        let vip: SocketAddr = "10.0.0.1:53".parse().unwrap();
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
        println!("   {name:<10} {n:>4} {}", "#".repeat(n / 3));
    }
}
