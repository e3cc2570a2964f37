//! `cargo xtask demo`: the data path working on this machine, in throw-away network namespaces.

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_tests::{
    agent::{lb_ok, Agent, PinDir},
    netns::ClientNode,
};

fn main() -> Result<()> {
    println!("== topology: namespace 'client' ──veth── namespace 'node' (the load-balancer node)");
    let topo = ClientNode::new()?;
    let pins = PinDir::new();
    println!("   client {} on {}, node {} on {}", topo.client_ip, topo.client_if, topo.node_ip, topo.node_if);

    println!("\n== lb run --iface {} --pin-dir {} (inside the node namespace)", topo.node_if, pins.arg());
    let agent = Agent::start(&topo.node, &["--iface", &topo.node_if, "--pin-dir", &pins.arg()])?;
    println!("   XDP attached for ingress, TC (TCX) for egress; maps and links pinned:");
    for entry in walk(pins.path())? {
        println!("   {entry}");
    }

    println!("\n== 100 UDP datagrams client → node, echoed back");
    let echoed = echo_traffic(&topo, 100)?;
    println!("   {echoed} echoes received");

    println!("\n== lb stats (read from the pinned maps)");
    print!("{}", lb_ok(Some(&topo.node), &["stats", "--pin-dir", &pins.arg()])?);

    println!("\n== bpftool map dump pinned {}/iface_stats (BTF: field names, per CPU)", pins.arg());
    let dump = Command::new("bpftool").args(["map", "dump", "pinned"]).arg(pins.path().join("iface_stats")).output()?;
    for line in String::from_utf8_lossy(&dump.stdout).lines().take(24) {
        println!("   {line}");
    }

    agent.stop()?;
    println!("\n== agent stopped (SIGTERM): programs stay attached; lb down removes them");
    print!("   {}", lb_ok(None, &["down", "--pin-dir", &pins.arg()])?);
    println!("\n== namespaces removed; done");
    Ok(())
}

fn echo_traffic(topo: &ClientNode, count: usize) -> Result<usize> {
    let server_addr = SocketAddr::new(topo.node_ip, 7);
    let server = topo.node.spawn(move || -> Result<()> {
        let sock = UdpSocket::bind(server_addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            sock.send_to(&buf[..n], from)?;
        }
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(100));
    let echoed = topo.client.run(move || -> Result<usize> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 1500];
        let mut echoed = 0;
        for i in 0..count {
            sock.send_to(format!("hello {i}").as_bytes(), server_addr)?;
            echoed += usize::from(sock.recv_from(&mut buf).is_ok());
        }
        Ok(echoed)
    })??;
    server.join().map_err(|_| anyhow::anyhow!("echo server panicked"))?.context("echo server")?;
    Ok(echoed)
}

fn walk(dir: &std::path::Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path.display().to_string());
        }
    }
    out.sort();
    Ok(out)
}
