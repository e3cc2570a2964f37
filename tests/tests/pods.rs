//! Marathon pods against the test Marathon: a pod with two endpoints (each in a container of its
//! own, each with a VIP) is balanced over its instances' agents and allocated host ports,
//! follows a scale-up, drains a killed instance and then drops it, and a malformed definition
//! keeps the last good one (DEGRADED) without touching any other service.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_tests::{
    agent::wait_for_services,
    marathon_cluster::{MarathonCluster, Urls, PORT},
    marathon_server::{InstanceSpec, PodSpec},
    netns::LbTopology,
    servers::{backend_spread, connect_and_greet, echo_round_trip, tcp_echo},
};

const ADMIN_PORT: u16 = 31001;

fn pod(instances: &[usize]) -> PodSpec {
    let mut pod = PodSpec::new("/shop/cart", &[("http", "10.0.0.5:80"), ("admin", "/cart-admin:8080")]);
    pod.instances = instances.iter().map(|&i| InstanceSpec::running("/shop/cart", i, &LbTopology::backend_ip(i).to_string(), &[PORT, ADMIN_PORT])).collect();
    pod
}

/// (address, state) of the backends of the VIP service at `address`:`port`, once some exist.
fn backends_of(services: &serde_json::Value, address: &str, port: u16) -> Option<Vec<(String, String)>> {
    let service = services.as_array()?.iter().find(|s| s["address"] == address && s["port"] == port)?;
    let backends = service["backends"].as_array()?.iter();
    Some(backends.map(|b| (format!("{}:{}", b["address"].as_str().unwrap(), b["port"]), b["state"].as_str().unwrap().to_owned())).collect())
}

fn at(i: usize, port: u16, state: &str) -> (String, String) {
    (format!("{}:{port}", LbTopology::backend_ip(i)), state.to_owned())
}

/// Waits until the VIP at `address`:`port` has exactly `want`.
fn wait_vip(c: &MarathonCluster, address: &str, port: u16, want: &[(String, String)]) -> serde_json::Value {
    wait_for_services(&c.pins, |json| backends_of(json, address, port).is_some_and(|have| have == want)).unwrap()
}

#[test]
fn a_pod_is_balanced_scales_drains_a_killed_instance_and_survives_a_malformed_definition() {
    let c = MarathonCluster::new(&[]);
    let _admin: Vec<_> = (0..3)
        .map(|i| tcp_echo(&c.topo.backends[i], SocketAddr::new(LbTopology::backend_ip(i), ADMIN_PORT), &format!("admin-{i}")).unwrap())
        .collect();
    c.marathon.set_pods(vec![pod(&[0, 1])]);
    wait_vip(&c, "10.0.0.5", 80, &[at(0, PORT, "active"), at(1, PORT, "active")]);
    // The named VIP gets its address from --vip-cidr, as an app's would.
    let vips: BTreeMap<String, String> = serde_json::from_str(&lb_tests::agent::lb_ok(None, &["vips", "--json", "--pin-dir", &c.pins.arg()]).unwrap()).unwrap();
    let admin_vip = vips.get("/cart-admin").expect("the named VIP is allocated").clone();
    wait_vip(&c, &admin_vip, 8080, &[at(0, ADMIN_PORT, "active"), at(1, ADMIN_PORT, "active")]);
    let spread = backend_spread(&c.topo.client, "10.0.0.5:80".parse().unwrap(), 20).unwrap();
    assert_eq!(spread.keys().cloned().collect::<Vec<_>>(), ["backend-0", "backend-1"], "{spread:?}");
    // The client routes only 10.0.0.0/24 to the node: the named VIP too.
    c.topo.client.route(&format!("{admin_vip}/32"), "10.201.0.2".parse().unwrap()).unwrap();
    let admin: SocketAddr = format!("{admin_vip}:8080").parse().unwrap();
    let spread = backend_spread(&c.topo.client, admin, 20).unwrap();
    assert_eq!(spread.keys().cloned().collect::<Vec<_>>(), ["admin-0", "admin-1"], "each endpoint has its own backends: {spread:?}");
    let status = c.status();
    assert_eq!(status["marathon"]["pods"], 1, "{status}");

    // Scaled to three instances: the new one takes flows.
    c.marathon.update_pod("/shop/cart", |p| *p = pod(&[0, 1, 2]));
    wait_vip(&c, "10.0.0.5", 80, &[at(0, PORT, "active"), at(1, PORT, "active"), at(2, PORT, "active")]);

    // Instance 1 is being killed: it drains (its connections go on, no new ones), then leaves.
    let mut on_instance_1 = c
        .topo
        .client
        .run(|| (0..30).filter_map(|_| connect_and_greet("10.0.0.5:80".parse().unwrap()).ok()).find(|(_, name)| name == "backend-1"))
        .unwrap()
        .expect("a connection to instance 1");
    c.marathon.update_pod("/shop/cart", |p| {
        p.instances[1].status = "TERMINAL".into();
        p.instances[1].container_state = "TASK_KILLING".into();
    });
    wait_vip(&c, "10.0.0.5", 80, &[at(0, PORT, "active"), at(1, PORT, "draining"), at(2, PORT, "active")]);
    let spread = backend_spread(&c.topo.client, "10.0.0.5:80".parse().unwrap(), 30).unwrap();
    assert!(!spread.contains_key("backend-1"), "no new flows to a draining instance: {spread:?}");
    echo_round_trip(&mut on_instance_1.0, b"still here").expect("a draining instance keeps its connections");
    c.marathon.update_pod("/shop/cart", |p| {
        p.instances.remove(1);
    });
    wait_vip(&c, "10.0.0.5", 80, &[at(0, PORT, "active"), at(2, PORT, "active")]);

    // A malformed definition: the last good one stays, the pod is listed, the app is untouched.
    let before = c.services();
    c.marathon.update_pod("/shop/cart", |p| p.malformed = true);
    c.wait_status(|s| s["marathon"]["skipped_apps"]["/shop/cart"].is_string());
    let status = c.status();
    assert_eq!(status["marathon"]["state"], "degraded", "{status}");
    assert_eq!(c.services(), before, "no service changed");
    c.marathon.update_pod("/shop/cart", |p| *p = pod(&[0]));
    wait_vip(&c, "10.0.0.5", 80, &[at(0, PORT, "active")]);
    c.wait_status(|s| s["marathon"]["state"] == "ok");

    // Deleted: its services go, the app's stay.
    c.marathon.set_pods(Vec::new());
    let services = wait_for_services(&c.pins, |json| backends_of(json, "10.0.0.5", 80).is_none()).unwrap();
    assert!(backends_of(&services, "10.0.0.1", 80).is_some_and(|b| b.len() == 2), "{services}");
}

#[test]
fn a_marathon_without_a_pods_api_syncs_its_apps() {
    let c = MarathonCluster::build(&[], |m| m.without_pods_api(), Urls::Leader);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    c.wait_status(|s| s["marathon"]["state"] == "ok");
    assert_eq!(c.status()["marathon"]["pods"], 0);
}
