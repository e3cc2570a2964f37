//! Several balancer nodes (tests/src/cluster.rs): a router with ECMP over three balancer nodes
//! that announce the VIP over BGP, three backend nodes that decapsulate. Long-lived connections
//! survive the loss of a balancer node with `--dsr`; replies bypass the balancer nodes.

use std::{
    net::TcpStream,
    sync::mpsc,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{lb_ok, PinDir, TempFile},
    cluster::{self, Cluster, Forwarding, Node, HOLD_SECS},
    netns::LbTopology,
    servers::{connect_and_greet, echo_round_trip},
};

const CONNECTIONS: usize = 300;

/// A connection from the client and the task that greeted it.
struct Connection {
    stream: TcpStream,
    task: String,
}

/// Opens `n` connections to the VIP from the client, each greeted by a task and echoing once.
fn open(cluster: &Cluster, n: usize) -> Vec<Connection> {
    cluster
        .client
        .run(move || {
            (0..n)
                .map(|i| {
                    let (mut stream, task) = connect_and_greet(Cluster::vip()).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    echo_round_trip(&mut stream, b"first").unwrap_or_else(|e| panic!("connection {i} ({task}): {e}"));
                    Connection { stream, task }
                })
                .collect()
        })
        .unwrap()
}

/// What became of the connections after a loss: how many broke, and when the last one that
/// survived had its echo back (from `since`).
struct Outcome {
    broken: Vec<String>,
    last_recovered: Duration,
}

/// Echoes once more on every connection, all at once, each allowed `patience` (TCP retransmits
/// through the outage); a connection broken (reset, or no echo) is counted.
fn echo_all(conns: Vec<Connection>, since: Instant, patience: Duration) -> Outcome {
    let (tx, rx) = mpsc::channel();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            conn.stream.set_read_timeout(Some(patience)).unwrap();
            let data = format!("after the loss {i}");
            let result = echo_round_trip(&mut conn.stream, data.as_bytes()).map_err(|e| format!("connection {i} to {}: {e}", conn.task));
            let _ = tx.send(result.map(|()| since.elapsed()));
        });
    }
    drop(tx);
    let mut outcome = Outcome { broken: Vec::new(), last_recovered: Duration::ZERO };
    for result in rx {
        match result {
            Ok(at) => outcome.last_recovered = outcome.last_recovered.max(at),
            Err(why) => outcome.broken.push(why),
        }
    }
    outcome
}

/// The verdict `reason`'s count on `node`.
fn verdict(node: &Node, reason: &str) -> u64 {
    node.verdict(reason).unwrap()
}

/// Opens the connections, checks the first balancer node carries some of them, kills it (with
/// `change`, a backend added on a fourth node and the first drained just before), and echoes on
/// every connection again.
fn lose_a_balancer(forwarding: Forwarding, change: bool) -> (Cluster, Outcome) {
    let mut cluster = Cluster::start_serving(3, 4, 3, forwarding, &[]).unwrap();
    let conns = open(&cluster, CONNECTIONS);
    let forwarded = if forwarding == Forwarding::Dsr { "fwd_dsr" } else { "fwd_nat" };
    let carried: Vec<u64> = cluster.balancers.iter().map(|b| verdict(&b.node, forwarded)).collect();
    assert!(carried.iter().all(|&n| n > 0), "ECMP should spread the connections over every balancer node: {carried:?}");
    if change {
        cluster.set_services(&cluster::services(&[0, 1, 2, 3], &[0])).unwrap();
        cluster.wait_programmed(4, 1, Duration::from_secs(20)).unwrap();
    }
    let lost = Instant::now();
    cluster.kill_balancer(0).unwrap();
    // Every connection sends at once, while the router still sends some to the dead node: TCP
    // retransmits until the BGP hold time has taken it out of the ECMP set.
    let outcome = echo_all(conns, lost, Duration::from_secs(30));
    let survivors: Vec<String> = cluster.balancers[1..].iter().map(|b| b.node.addr.clone()).collect();
    cluster.wait_next_hops(&survivors, Duration::from_secs(HOLD_SECS * 4)).unwrap();
    (cluster, outcome)
}

/// With `--dsr`, no connection breaks when one of three balancer nodes dies: the other nodes'
/// rings pick the same backend for the connections ECMP moves to them, the backend node holds
/// each connection's state, and replies never passed the dead node.
#[test]
fn no_connection_breaks_when_a_balancer_node_dies_with_dsr() {
    let (cluster, outcome) = lose_a_balancer(Forwarding::Dsr, false);
    assert!(outcome.broken.is_empty(), "{} of {CONNECTIONS} connections broke: {:?}", outcome.broken.len(), &outcome.broken[..outcome.broken.len().min(5)]);
    eprintln!("dsr: 0 of {CONNECTIONS} broken; last recovered {:?} after the loss", outcome.last_recovered);
    let decapsulated: u64 = cluster.backends.iter().map(|n| verdict(n, "decapsulated")).sum();
    assert!(decapsulated >= (CONNECTIONS * 3) as u64, "every connection's packets went through a backend node's decapsulation: {decapsulated}");
}

/// The hard case: the backend set changes (a backend added, one drained) just before a balancer
/// node dies, so the surviving nodes' rings send some moved connections to a backend that never
/// saw them. Its node sends each once to the backend the previous ring chose, which holds it:
/// still none breaks.
#[test]
fn no_connection_breaks_when_a_balancer_node_dies_while_backends_change_with_dsr() {
    let (cluster, outcome) = lose_a_balancer(Forwarding::Dsr, true);
    assert!(outcome.broken.is_empty(), "{} of {CONNECTIONS} connections broke: {:?}", outcome.broken.len(), &outcome.broken[..outcome.broken.len().min(5)]);
    let second: u64 = cluster.backends.iter().map(|n| verdict(n, "second_chance")).sum();
    eprintln!("dsr with a backend change: 0 of {CONNECTIONS} broken; {second} second chances; last recovered {:?} after the loss", outcome.last_recovered);
    assert!(second > 0, "connections whose ring slot moved needed a second chance");
}

/// Replies go from the backend nodes to the router, not through a balancer node: a download
/// through `--dsr` adds (next to) nothing to what the balancer nodes receive, while through full
/// NAT they receive every byte of it.
#[test]
fn replies_bypass_the_balancer_nodes_with_dsr_and_not_with_full_nat() {
    for (forwarding, bypass) in [(Forwarding::Dsr, true), (Forwarding::FullNat, false)] {
        let cluster = Cluster::start(2, 2, forwarding).unwrap();
        let before: u64 = cluster.balancers.iter().map(|b| Cluster::link_bytes(&b.node).unwrap().received).sum();
        let mut conns = open(&cluster, 4);
        let payload = vec![b'x'; 1 << 20];
        let echoed: usize = conns.iter_mut().map(|c| echo_round_trip(&mut c.stream, &payload).map(|()| payload.len()).unwrap()).sum();
        let received = cluster.balancers.iter().map(|b| Cluster::link_bytes(&b.node).unwrap().received).sum::<u64>() - before;
        // The balancer nodes see the requests (4 MiB) either way; the replies (4 MiB more) only
        // through full NAT.
        let requests = echoed as u64;
        if bypass {
            assert!(received < requests + requests / 4, "{forwarding:?}: the balancer nodes received {received} B for {requests} B each way");
        } else {
            assert!(received > 2 * requests, "{forwarding:?}: the balancer nodes received only {received} B for {requests} B each way");
        }
        eprintln!("{forwarding:?}: balancer nodes received {received} B for {requests} B sent and echoed");
        assert_reached_as(&cluster, forwarding);
    }
}

/// `lb services` says how each node reaches each backend, and `lb explain` a connection's.
fn assert_reached_as(cluster: &Cluster, forwarding: Forwarding) {
    let reaches = |node: &Node| -> Vec<(String, String)> {
        let services: serde_json::Value = serde_json::from_str(&lb_ok(Some(&node.ns), &["services", "--json", "--pin-dir", &node.pins.arg()]).unwrap()).unwrap();
        let backends = services[0]["backends"].as_array().unwrap().clone();
        backends.iter().map(|b| (b["address"].as_str().unwrap().to_owned(), b["reach"].as_str().unwrap().to_owned())).collect()
    };
    let remote = if forwarding == Forwarding::Dsr { "dsr" } else { "full-nat" };
    let balancer = &cluster.balancers[0].node;
    assert!(reaches(balancer).iter().all(|(_, reach)| reach == remote), "{forwarding:?}: {:?}", reaches(balancer));
    // A backend node runs no --dsr: its own task is local, the others' full NAT.
    let backend = &cluster.backends[0];
    for (addr, reach) in reaches(backend) {
        assert_eq!(reach, if addr == backend.addr { "local" } else { "full-nat" }, "{addr} from {}", backend.addr);
    }
    // The connections' flows, wherever ECMP put them, say how their backend is reached.
    let flows: Vec<serde_json::Value> = cluster
        .balancers
        .iter()
        .flat_map(|b| {
            let json: serde_json::Value = serde_json::from_str(&lb_ok(Some(&b.node.ns), &["flows", "--json", "--pin-dir", &b.node.pins.arg()]).unwrap()).unwrap();
            json.as_array().unwrap().clone()
        })
        .collect();
    assert!(!flows.is_empty() && flows.iter().all(|f| f["reach"] == remote), "{forwarding:?}: {flows:?}");
    let status = lb_ok(Some(&balancer.ns), &["status", "--pin-dir", &balancer.pins.arg()]).unwrap();
    let dsr_line = "DSR (GUE on UDP 6080): encapsulating to 10.241.0.0/16; decapsulating from nowhere";
    assert_eq!(status.contains(dsr_line), forwarding == Forwarding::Dsr, "{status}");
    let explained = lb_ok(Some(&balancer.ns), &["explain", "tcp", "10.240.0.2:40000", "10.0.0.1:80", "--pin-dir", &balancer.pins.arg()]).unwrap();
    assert!(explained.contains(&format!("reached by {remote}:")), "{explained}");
}

/// Bad DSR flags are refused before anything is touched, with exit code 64.
#[test]
fn bad_dsr_flags_exit_64() {
    let topo = LbTopology::new(0).unwrap();
    let (pins, file) = (PinDir::new(), TempFile::new(&cluster::services(&[0], &[])).unwrap());
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--check", "--services", file.path().to_str().unwrap(), "--iface", &topo.uplink, "--pin-dir", pins.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        lb_tests::agent::lb(Some(&topo.node), &args).unwrap()
    };
    for (extra, says) in [
        (&["--decap-from", "10.241.0.0/33"][..], "is not a CIDR range"),
        (&["--decap-from", "balancers"][..], "is not a CIDR range"),
        (&["--dsr", "--dsr-nodes", "10.241.1.7/16"][..], "did you mean 10.241.0.0/16"),
        (&["--dsr"][..], "--dsr-nodes"),
        (&["--dsr-nodes", "10.241.0.0/16"][..], "--dsr"),
        (&["--dsr-port", "0", "--decap-from", "10.241.0.0/16"][..], "is not a port"),
    ] {
        let out = run(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
    let pinned = std::fs::read_dir(pins.path()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(pinned, 0, "nothing was pinned");
}

/// Without `--dsr` the balancer nodes full-NAT, and connections still work (the figure of what a
/// loss breaks there is in docs/multi-node.md).
#[test]
fn full_nat_between_balancer_and_backend_nodes_still_works_and_a_loss_breaks_what_it_carried() {
    let (_cluster, outcome) = lose_a_balancer(Forwarding::FullNat, false);
    eprintln!("full NAT: {} of {CONNECTIONS} broken; last recovered {:?} after the loss", outcome.broken.len(), outcome.last_recovered);
    assert!(!outcome.broken.is_empty(), "full NAT keeps no state a surviving node could take over: the dead node's connections break");
}


