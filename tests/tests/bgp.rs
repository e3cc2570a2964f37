//! VIPs announced through a real BIRD 2 (`--bird-socket`, `--bird-routes`): a VIP is announced
//! while the node serves it with an active backend and withdrawn when it has none and when the
//! agent stops; a BIRD that is not running yet is reported and retried, the data path untouched.

use std::time::{Duration, Instant};

use lb_tests::{
    agent::{lb_ok, Agent, PinDir, TempFile},
    bird::Bird,
    netns::LbTopology,
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
    let (socket, routes) = (bird.socket().display().to_string(), bird.routes_file().display().to_string());
    let args = ["--services", &file.arg(), "--iface", &topo.uplink, "--pin-dir", &pins.arg(), "--bird-socket", &socket, "--bird-routes", &routes];
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
    std::fs::write(bird.routes_file(), lb::announce::routes::render(&Default::default())).unwrap();
    bird.start().unwrap();
    let (socket, routes) = (bird.socket().display().to_string(), bird.routes_file().display().to_string());
    let args = [
        "--services", &file.arg(), "--iface", &topo.uplink, "--pin-dir", &pins.arg(), "--bird-socket", &socket, "--bird-routes", &routes,
        "--withdraw-on-stop", "false",
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
