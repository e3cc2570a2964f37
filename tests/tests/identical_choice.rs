//! Several balancer nodes pick the same backend for a flow (issue 23's precondition for ECMP): a
//! flow's backend depends only on Marathon's state — the ring's size from the backends, its
//! members ordered by address and port, the flow hash of the client — never on what else a node
//! has held, the order services and backends arrived in, or the backend ids a node gave them.
//! Three agents' maps are brought to the same services by different histories and orders; their
//! rings agree slot for slot by backend address, their programs send 10,000 random new flows to
//! the same backends, and a flow's mid-flow segment on a node that never saw it reaches the
//! backend the first node chose.

use std::net::SocketAddr;

use lb::dataplane::{
    loader::{LoadConfig, MapSizes},
    Dataplane,
};
use lb_common::{Hook, ServiceInfo, ServiceKey};
use lb_tests::{
    fixture::{Fixture, INGRESS_HOOKS},
    packet::{describe, tcp, v4, TcpFlags, ACK, SYN},
    rng::Rng,
};

/// Backends of the VIP 10.0.0.1:80 (weights: one draining, one of weight 2) and of a service
/// port 10000.
const VIP_BACKENDS: [(&str, u16, u32); 6] =
    [("10.1.0.5", 31005, 1), ("10.1.0.6", 31006, 2), ("10.1.0.7", 31007, 1), ("10.1.0.8", 31008, 0), ("10.1.0.9", 31009, 1), ("10.1.1.1", 31001, 1)];
const PORT_BACKENDS: [(&str, u16, u32); 3] = [("10.1.2.1", 32001, 1), ("10.1.2.2", 32002, 1), ("10.1.2.3", 32003, 1)];

/// The two services, with their backends (and the services themselves) listed rotated and
/// maybe reversed, beside `extra` services that another agent never had.
fn services(reverse: bool, rotate: usize, extra: &[String]) -> String {
    let list = |backends: &[(&str, u16, u32)]| {
        let mut entries: Vec<String> = backends.iter().map(|(a, p, w)| format!(r#"{{"address":"{a}","port":{p},"weight":{w}}}"#)).collect();
        let by = rotate % entries.len();
        entries.rotate_left(by);
        if reverse {
            entries.reverse();
        }
        entries.join(",")
    };
    let mut services = vec![
        format!(r#"{{"name":"web","address":"10.0.0.1","port":80,"backends":[{}]}}"#, list(&VIP_BACKENDS)),
        format!(r#"{{"name":"app","port":10000,"backends":[{}]}}"#, list(&PORT_BACKENDS)),
    ];
    if reverse {
        services.reverse();
    }
    services.extend(extra.iter().cloned());
    format!(r#"{{"services":[{}]}}"#, services.join(","))
}

/// `n` services another agent held before (their VIPs sort first, so they take backend ids and
/// rings before the final services do).
fn others(n: usize) -> Vec<String> {
    (0..n).map(|i| format!(r#"{{"name":"other{i}","address":"9.0.9.{i}","port":80,"backends":[{{"address":"10.1.9.{i}","port":31900}},{{"address":"10.1.8.{i}","port":31901}}]}}"#)).collect()
}

/// An agent's maps brought to the final services by `history` (services files applied in turn).
fn agent(hook: Hook, history: &[String]) -> Fixture {
    let sizes = MapSizes { max_flows: 32768, ..MapSizes::default() };
    let mut f = Fixture::load_with(hook, LoadConfig { sizes, ..LoadConfig::default() }).unwrap();
    for services in history {
        f.apply(services, &["10.201.0.2"]).unwrap();
    }
    f
}

/// Each service's ring as backend addresses, slot by slot, and the ids behind them.
fn rings(f: &Fixture) -> (Vec<(ServiceKey, Vec<SocketAddr>)>, Vec<u32>) {
    let maps = f.maps();
    let backends = maps.backends().unwrap();
    let mut services: Vec<(ServiceKey, ServiceInfo)> = maps.services().unwrap();
    services.sort_by_key(|(k, _)| *k);
    let mut ids = Vec::new();
    let rings = services
        .into_iter()
        .map(|(key, info)| {
            let ring = maps.read_ring(info.ring_start, info.ring_size).unwrap();
            ids.extend(&ring);
            let addr = |id: &u32| {
                let b = &backends[*id as usize];
                SocketAddr::new(lb::desired::bytes_ip(&b.addr, b.family).unwrap(), b.port)
            };
            (key, ring.iter().map(addr).collect())
        })
        .collect();
    (rings, ids)
}

/// Where the program sends a segment (`flags`) from `client` to `to`: the rewritten destination.
fn pick(f: &mut Fixture, client: (std::net::IpAddr, u16), to: (std::net::IpAddr, u16), flags: TcpFlags) -> String {
    let (_, out) = f.run_packet(&tcp(client, to, flags, b"")).unwrap();
    let fields = describe(&out);
    let get = |k: &str| fields.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone()).unwrap_or_default();
    format!("{}:{}", get("ipv4.dst"), get("tcp.dst_port"))
}

#[test]
fn three_agents_loaded_differently_choose_the_same_backend_for_every_flow() {
    for hook in INGRESS_HOOKS {
        let final_state = |reverse, rotate| services(reverse, rotate, &[]);
        let mut agents = [
            agent(hook, &[final_state(false, 0)]),
            // Held other services first: its ids and ring slots differ.
            agent(hook, &[services(true, 2, &others(5)), services(false, 4, &others(2)), final_state(true, 1)]),
            // Saw the backends arrive one by one before the rest.
            agent(hook, &[services(false, 3, &others(1)), final_state(false, 5)]),
        ];
        let (first, first_ids) = rings(&agents[0]);
        assert_eq!(first.len(), 2, "the VIP and the service port (IPv4 only: its backends are)");
        for other in &agents[1..] {
            let (rings, ids) = rings(other);
            assert_eq!(rings, first, "{hook}: the same rings, slot by slot, by backend address");
            assert_ne!(ids, first_ids, "{hook}: with other backend ids (the test would prove nothing otherwise)");
        }
        let mut rng = Rng::new(23);
        for n in 0..10_000u32 {
            let client = (v4(10, 100 + (rng.below(100) as u8), rng.below(256) as u8, 1 + rng.below(254) as u8), 1024 + rng.below(60000) as u16);
            let to = if n % 2 == 0 { (v4(10, 0, 0, 1), 80) } else { (v4(10, 201, 0, 2), 10000) };
            let picks: Vec<String> = agents.iter_mut().map(|f| pick(f, client, to, SYN)).collect();
            assert!(picks.iter().all(|p| *p == picks[0]), "{hook}: flow {n} {client:?} → {to:?}: {picks:?}");
        }
        // A flow that began on one node and moves to another (ECMP changed, a node died): its
        // next segment misses that node's flow table and is balanced by the ring to the same
        // backend, neither dropped nor reset.
        for n in 0..1_000u32 {
            let client = (v4(10, 250, (n >> 8) as u8, n as u8), 40000);
            let began = pick(&mut agents[0], client, (v4(10, 0, 0, 1), 80), SYN);
            let moved = pick(&mut agents[1 + (n as usize % 2)], client, (v4(10, 0, 0, 1), 80), ACK);
            assert_eq!(moved, began, "{hook}: flow {n} mid-flow on another node");
        }
    }
}
