//! VIPs announced through a real BIRD 2 (`--bird-socket`, `--bird-routes`): a VIP is announced
//! while the node serves it with an active backend and withdrawn when it has none, when the data
//! path fails its own check, and when the agent stops; a BIRD that is not running yet is
//! reported and retried, the data path untouched; a router learns each node's VIPs with ECMP.

use std::time::{Duration, Instant};

use lb_tests::{
    agent::{lb_ok, Agent, PinDir, TempFile, TestCgroup},
    bird::Bird,
    netns::{veth, LbTopology, Netns},
};

fn services(web_backends: &str, api_backends: &str) -> String {
    format!(
        r#"{{"services":[
  {{"name":"web","address":"10.0.0.1","port":80,"backends":[{web_backends}]}},
  {{"name":"api","address":"10.0.0.2","port":80,"backends":[{api_backends}]}},
  {{"name":"web6","address":"fd00::80","port":80,"backends":[{{"address":"fd00:1::5","port":31000}}]}},
  {{"name":"port","port":10000,"backends":[{{"address":"10.1.0.5","port":31000}}]}}]}}"#
    )
}

const ONE: &str = r#"{"address":"10.1.0.5","port":31000}"#;

/// Waits (10 s at most) until BIRD's routes from the agent are `want`.
fn wait_routes(bird: &Bird, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut have = bird.routes().unwrap();
        have.sort();
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "BIRD's routes: {have:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(topo: &LbTopology, pins: &PinDir) -> serde_json::Value {
    serde_json::from_str(&lb_ok(Some(&topo.node), &["status", "--json", "--pin-dir", &pins.arg()]).unwrap()).unwrap()
}

#[test]
fn vips_with_an_active_backend_are_announced_and_withdrawn_with_the_last_and_at_stop() {
    let topo = LbTopology::new(0).unwrap();
    let (pins, file) = (PinDir::new(), TempFile::new(&services(ONE, "")).unwrap());
    let mut bird = Bird::prepare();
    std::fs::remove_file(bird.routes_file()).unwrap();
    let (socket, routes, cgroup) = (bird.socket().display().to_string(), bird.routes_file().display().to_string(), TestCgroup::new().unwrap());
    let cgroup_arg = cgroup.arg();
    let args = [
        "--services", &file.arg(), "--iface", &topo.uplink, "--pin-dir", &pins.arg(), "--cgroup", &cgroup_arg, "--bird-socket", &socket, "--bird-routes", &routes,
    ];
    let agent = Agent::start(&topo.node, &args).unwrap();
    // No BIRD yet: reported, the services programmed all the same.
    let bgp = status(&topo, &pins)["bgp"].clone();
    assert_eq!(bgp["state"], "failing", "{bgp}");
    assert!(bgp["last_error"].as_str().unwrap().contains("is BIRD running"), "{bgp}");
    assert_eq!(status(&topo, &pins)["services"], 4);
    let text = lb_ok(Some(&topo.node), &["status", "--pin-dir", &pins.arg()]).unwrap();
    assert!(text.contains("BGP via BIRD") && text.contains("FAILING"), "{text}");
    // BIRD comes up: the next housekeeping tick tells it.
    bird.start().unwrap();
    wait_routes(&bird, &["10.0.0.1/32", "fd00::80/128"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&topo, &pins)["bgp"]["state"] != "ok" {
        assert!(Instant::now() < deadline, "{}", status(&topo, &pins)["bgp"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The status page and /metrics show it.
    let get = |path: &str| {
        let out = topo.node.command("curl").args(["-s", "--max-time", "5", &format!("http://127.0.0.1:9097{path}")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let page = get("/");
    assert!(page.contains("BGP (BIRD)") && page.contains("10.0.0.1, fd00::80"), "{page}");
    assert!(get("/metrics").contains("lb_bgp_announced_vips 2"), "{}", get("/metrics"));
    // web loses its last backend, api gains one: the routes follow.
    file.replace(&services("", ONE)).unwrap();
    wait_routes(&bird, &["10.0.0.2/32", "fd00::80/128"]);
    // A draining backend takes no new flows: no announcement.
    file.replace(&services("", r#"{"address":"10.1.0.5","port":31000,"weight":0}"#)).unwrap();
    wait_routes(&bird, &["fd00::80/128"]);
    // The data path's own check: with its only uplink gone, nothing is announced.
    topo.node.ip(&["link", "del", &topo.uplink]).unwrap();
    wait_routes(&bird, &[]);
    let bgp = status(&topo, &pins)["bgp"].clone();
    assert!(bgp["data_path_error"].as_str().is_some_and(|e| e.contains("no uplink left")), "{bgp}");
    // SIGTERM: every VIP withdrawn (the programs stay attached).
    assert!(agent.stop().unwrap().success());
    wait_routes(&bird, &[]);
    assert!(bird.dir().join("routes.conf").exists());
}

#[test]
fn an_agent_that_keeps_its_routes_at_stop_leaves_them_to_lb_down() {
    let topo = LbTopology::new(0).unwrap();
    let (pins, file) = (PinDir::new(), TempFile::new(&services(ONE, "")).unwrap());
    let mut bird = Bird::prepare();
    bird.start().unwrap();
    let (socket, routes, cgroup) = (bird.socket().display().to_string(), bird.routes_file().display().to_string(), TestCgroup::new().unwrap());
    let cgroup_arg = cgroup.arg();
    let args = [
        "--services", &file.arg(), "--iface", &topo.uplink, "--pin-dir", &pins.arg(), "--cgroup", &cgroup_arg, "--bird-socket", &socket,
        "--bird-routes", &routes, "--withdraw-on-stop", "false",
    ];
    let agent = Agent::start(&topo.node, &args).unwrap();
    wait_routes(&bird, &["10.0.0.1/32", "fd00::80/128"]);
    assert!(agent.stop().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(bird.routes().unwrap().len(), 2, "kept at stop, as asked");
    let down = lb_ok(Some(&topo.node), &["down", "--pin-dir", &pins.arg()]).unwrap();
    assert!(down.contains("withdrew 2 VIPs from BIRD"), "{down}");
    wait_routes(&bird, &[]);
}

#[test]
fn bird_flags_come_together_and_a_missing_routes_directory_exits_64() {
    let topo = LbTopology::new(0).unwrap();
    let (pins, file) = (PinDir::new(), TempFile::new(&services(ONE, "")).unwrap());
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--check", "--services", file.path().to_str().unwrap(), "--iface", &topo.uplink, "--pin-dir", pins.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        lb_tests::agent::lb(Some(&topo.node), &args).unwrap()
    };
    for (extra, says) in [
        (&["--bird-socket", "/run/bird/bird.ctl"][..], "--bird-routes"),
        (&["--bird-routes", "/etc/bird/lb.conf"][..], "--bird-socket"),
        (&["--bird-socket", "/run/bird/bird.ctl", "--bird-routes", "/nonexistent-dir/lb.conf"][..], "its directory does not exist"),
    ] {
        let out = run(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
}

fn wait_next_hops(router: &Netns, vip: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let have = lb_tests::cluster::next_hops(router, vip);
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "the router's next hops for {vip}: {have:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A router namespace running BIRD with ECMP (`merge paths`) and a BGP session to each of three
/// balancer-node namespaces, each running BIRD and an agent: the router learns the VIP from
/// every node that serves it, one ECMP path each, and forgets a node's path when its agent
/// stops or its service loses its last active backend.
#[test]
fn a_router_learns_the_vip_from_every_balancer_node_and_forgets_those_that_stop_serving_it() {
    let router = Netns::new("lbrt").unwrap();
    let timers = "hold time 6; connect delay time 1; connect retry time 2; error wait time 1, 2;";
    let mut sessions = String::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let ns = Netns::new("lbbn").unwrap();
        let (router_end, node_end) = veth(&router, &ns).unwrap();
        router.addr(&router_end, &format!("10.230.{i}.1/24")).unwrap();
        ns.addr(&node_end, &format!("10.230.{i}.2/24")).unwrap();
        sessions += &format!("protocol bgp node{i} from balancers {{ neighbor 10.230.{i}.2 as 65001; }}\n");
        nodes.push((ns, node_end));
    }
    let mut router_bird = Bird::with_config("10.230.9.1", |_| {
        format!("protocol kernel {{ ipv4 {{ export all; }}; merge paths on; }}\ntemplate bgp balancers {{ local as 65000; {timers} ipv4 {{ import all; export none; }}; }}\n{sessions}")
    });
    router_bird.start_in(Some(&router)).unwrap();
    let mut running = Vec::new();
    for (i, (ns, uplink)) in nodes.iter().enumerate() {
        let mut bird = Bird::with_config(&format!("10.230.{i}.2"), |routes| {
            format!(
                "include \"{}\";\nprotocol bgp upstream {{ local 10.230.{i}.2 as 65001; neighbor 10.230.{i}.1 as 65000; {timers}\n  ipv4 {{ import none; export where proto = \"lb_vips4\"; }}; }}\n",
                routes.display()
            )
        });
        bird.start_in(Some(ns)).unwrap();
        let (pins, cgroup, file) = (PinDir::new(), TestCgroup::new().unwrap(), TempFile::new(&services(ONE, "")).unwrap());
        let (socket, routes, cgroup_arg) = (bird.socket().display().to_string(), bird.routes_file().display().to_string(), cgroup.arg());
        let args = [
            "--services", &file.arg(), "--iface", uplink, "--pin-dir", &pins.arg(), "--cgroup", &cgroup_arg, "--bird-socket", &socket,
            "--bird-routes", &routes, "--metrics-listen", "off",
        ];
        let agent = Agent::start(ns, &args).unwrap();
        running.push((agent, bird, pins, cgroup, file));
    }
    wait_next_hops(&router, "10.0.0.1", &["10.230.0.2", "10.230.1.2", "10.230.2.2"]);
    // Node 0's agent stops: it withdraws, the router keeps the other two paths.
    let (agent, ..) = running.remove(0);
    assert!(agent.stop().unwrap().success());
    wait_next_hops(&router, "10.0.0.1", &["10.230.1.2", "10.230.2.2"]);
    // Node 1's service loses its last backend (and api gains one there).
    running[0].4.replace(&services("", ONE)).unwrap();
    wait_next_hops(&router, "10.0.0.1", &["10.230.2.2"]);
    wait_next_hops(&router, "10.0.0.2", &["10.230.1.2"]);
}
