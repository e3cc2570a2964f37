//! `cargo xtask demo multi-node`: several balancer nodes. A router running BIRD spreads a
//! client's connections over three balancer nodes that announce the VIP over BGP (ECMP); they
//! send each connection to one of three backend nodes inside the DSR encapsulation, and the
//! replies go from the backend nodes straight to the client. Then a balancer node dies, and
//! every long-lived connection is still there. Everything lives in throw-away namespaces.

use std::{
    collections::BTreeMap,
    net::TcpStream,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_tests::{
    agent::lb_ok,
    cluster::{Cluster, Forwarding},
    servers::{connect_and_greet, echo_round_trip},
};

const CONNECTIONS: usize = 300;

fn main() -> Result<()> {
    println!("== topology: client ── router (BIRD, ECMP) ──┬── 3 balancer nodes (lb --dsr, BIRD)");
    println!("                                              └── 3 backend nodes (lb --decap-from, one task each)");
    let mut cluster = Cluster::start(3, 3, Forwarding::Dsr)?;
    println!("   the router learnt {}:80 from every balancer node: next hops {}", lb_tests::cluster::VIP, cluster.next_hops().join(", "));
    let balancer = &cluster.balancers[0].node;
    println!("\n== lb services on balancer node {} (REACH: how it gets to each backend)", balancer.addr);
    print!("{}", lb_ok(Some(&balancer.ns), &["services", "--pin-dir", &balancer.pins.arg()])?);
    println!("\n== {CONNECTIONS} long-lived connections from the client to the VIP");
    let conns = open(&cluster)?;
    let mut per_task: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, task) in &conns {
        *per_task.entry(task).or_default() += 1;
    }
    for (task, n) in &per_task {
        println!("   {task:<8} {n:>4} {}", "#".repeat(n / 5));
    }
    show_carried(&cluster, "packets each balancer node balanced (fwd_dsr)")?;
    let received: u64 = cluster.balancers.iter().map(|b| Cluster::link_bytes(&b.node).map(|l| l.received)).sum::<Result<u64>>()?;
    println!("   bytes the balancer nodes received so far: {received} (requests only: replies bypass them)");
    println!("\n== balancer node {} dies (its link stops carrying anything; agent and BIRD killed)", cluster.balancers[0].node.addr);
    let lost = Instant::now();
    cluster.kill_balancer(0)?;
    let survivors: Vec<String> = cluster.balancers[1..].iter().map(|b| b.node.addr.clone()).collect();
    let router = &cluster.router;
    let (withdrawn, (broken, last)) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            while lb_tests::cluster::next_hops(router, lb_tests::cluster::VIP) != survivors && lost.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            lost.elapsed()
        });
        let echoed = echo_all(conns, lost);
        (watcher.join().expect("the next-hop watcher"), echoed)
    });
    println!("   the router dropped it after {:.1} s (BGP hold time); next hops now {}", withdrawn.as_secs_f64(), cluster.next_hops().join(", "));
    println!("   every connection sent again: {broken} of {CONNECTIONS} broken, the last answered {:.1} s after the loss", last.as_secs_f64());
    show_carried(&cluster, "packets the surviving balancer nodes balanced, now with the dead node's share")?;
    println!("\n== done: namespaces, agents, BIRD and pins removed");
    Ok(())
}

fn open(cluster: &Cluster) -> Result<Vec<(TcpStream, String)>> {
    cluster.client.run(|| -> Result<Vec<(TcpStream, String)>> {
        (0..CONNECTIONS)
            .map(|i| {
                let (mut stream, task) = connect_and_greet(Cluster::vip()).with_context(|| format!("connection {i}"))?;
                echo_round_trip(&mut stream, b"hello")?;
                Ok((stream, task))
            })
            .collect()
    })?
}

fn show_carried(cluster: &Cluster, what: &str) -> Result<()> {
    println!("   {what}:");
    for b in &cluster.balancers {
        let dead = if b.is_running() { "" } else { " (dead)" };
        println!("     {:<14} {:>6}{dead}", b.node.addr, b.node.verdict("fwd_dsr")?);
    }
    Ok(())
}

/// Echoes on every connection at once; (broken, when the last one answered).
fn echo_all(conns: Vec<(TcpStream, String)>, since: Instant) -> (usize, Duration) {
    let (tx, rx) = mpsc::channel();
    for (mut stream, _) in conns {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = tx.send(echo_round_trip(&mut stream, b"still there?").map(|()| since.elapsed()));
        });
    }
    drop(tx);
    let (mut broken, mut last) = (0, Duration::ZERO);
    for result in rx {
        match result {
            Ok(at) => last = last.max(at),
            Err(_) => broken += 1,
        }
    }
    (broken, last)
}
