//! The HTTP path end to end: the Marathon test server defines apps with marathon-lb's labels,
//! the agent serves them on its HTTP and HTTPS listeners in the node namespace, real HTTP
//! backends answer in backend namespaces, and curl (HTTP/1.1, HTTP/2, TLS with SNI) or raw
//! sockets are the clients in the client namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{lb_ok, Agent, PinDir, TempDir, TestCgroup},
    certs::self_signed,
    marathon_server::{AppSpec, InstanceSpec, MarathonServer, PodSpec, TaskSpec},
    netns::LbTopology,
    servers::{http_backend, Server},
};
use serde_json::Value;

const WEB_PORT: u16 = 31000;
const API_PORT: u16 = 31001;
/// A task port nothing listens on.
const DEAD_PORT: u16 = 31009;
const HTTP: &str = "10.201.0.2:8080";
const HTTPS: &str = "10.201.0.2:8443";

fn task(app: &str, i: usize, port: u16) -> TaskSpec {
    TaskSpec {
        id: format!("{}.task-{i}-{port}", app.trim_start_matches('/')),
        host: LbTopology::backend_ip(i).to_string(),
        port,
        state: "TASK_RUNNING".into(),
        alive: Some(true),
    }
}

fn app(id: &str, service_port: u16, tasks: &[(usize, u16)], labels: &[(&str, &str)]) -> AppSpec {
    let mut app = AppSpec::new(id, service_port);
    app.tasks = tasks.iter().map(|&(i, port)| task(id, i, port)).collect();
    app.app_labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    app
}

/// The apps most tests use: two vhosts over three tasks, a path on one of them going to another
/// app, an app of another group, one redirecting to HTTPS with HSTS, a sticky one.
fn apps() -> Vec<AppSpec> {
    vec![
        app(
            "/web",
            10000,
            &[(0, WEB_PORT), (1, WEB_PORT), (2, WEB_PORT)],
            &[("HAPROXY_GROUP", "external"), ("HAPROXY_0_VHOST", "web.example.com,www.example.com")],
        ),
        app("/api", 10001, &[(0, API_PORT)], &[("HAPROXY_GROUP", "external"), ("HAPROXY_0_VHOST", "web.example.com"), ("HAPROXY_0_PATH", "/api")]),
        app("/internal", 10002, &[(1, API_PORT)], &[("HAPROXY_GROUP", "internal"), ("HAPROXY_0_VHOST", "internal.example.com")]),
        app(
            "/secure",
            10003,
            &[(2, API_PORT)],
            &[
                ("HAPROXY_GROUP", "external"),
                ("HAPROXY_0_VHOST", "a.example,b.example"),
                ("HAPROXY_0_REDIRECT_TO_HTTPS", "true"),
                ("HAPROXY_0_USE_HSTS", "true"),
            ],
        ),
        app(
            "/flaky",
            10005,
            &[(0, API_PORT), (2, DEAD_PORT)],
            &[("HAPROXY_GROUP", "external"), ("HAPROXY_0_VHOST", "flaky.example.com")],
        ),
        app(
            "/private",
            10006,
            &[(0, API_PORT)],
            &[("HAPROXY_GROUP", "external"), ("HAPROXY_0_VHOST", "private.example.com"), ("HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL", "10.99.0.0/16")],
        ),
        app(
            "/sticky",
            10004,
            &[(0, WEB_PORT), (1, WEB_PORT), (2, WEB_PORT)],
            &[("HAPROXY_GROUP", "external"), ("HAPROXY_0_VHOST", "sticky.example.com"), ("HAPROXY_0_STICKY", "true")],
        ),
    ]
}

struct Cluster {
    topo: LbTopology,
    marathon: MarathonServer,
    certs: TempDir,
    pins: PinDir,
    _cgroup: TestCgroup,
    _agent: Agent,
    _servers: Vec<Server>,
}

impl Cluster {
    fn new() -> Self {
        let topo = LbTopology::new(3).unwrap();
        let mut servers = Vec::new();
        for i in 0..3 {
            let ip = LbTopology::backend_ip(i);
            servers.push(http_backend(&topo.backends[i], SocketAddr::new(ip, WEB_PORT), &format!("backend-{i}")).unwrap());
            servers.push(http_backend(&topo.backends[i], SocketAddr::new(ip, API_PORT), &format!("api-{i}")).unwrap());
        }
        let marathon = MarathonServer::start(Some(&topo.node), Duration::from_millis(500)).unwrap();
        marathon.set_apps(apps());
        marathon.set_pods(vec![pod()]);
        let certs = TempDir::new("lb-http-certs");
        for name in ["a.example", "b.example"] {
            self_signed(certs.path(), name).unwrap();
        }
        let (pins, cgroup) = (PinDir::new(), TestCgroup::new().unwrap());
        let (pin_arg, cgroup_arg, url, certs_arg) = (pins.arg(), cgroup.arg(), marathon.url(), certs.path().display().to_string());
        let args = [
            "--iface", &topo.uplink, "--pin-dir", &pin_arg, "--cgroup", &cgroup_arg, "--node-ip", "10.201.0.2",
            "--ring-slots", "262144", "--max-services", "64", "--marathon", &url, "--resync", "3600",
            "--http-listen", HTTP, "--https-listen", HTTPS, "--ssl-certs", &certs_arg, "--group", "external",
        ];
        let agent = Agent::start(&topo.node, &args).unwrap();
        let cluster = Self { topo, marathon, certs, pins, _cgroup: cgroup, _agent: agent, _servers: servers };
        cluster.wait_for(|c| c.get("web.example.com", "/").0 == 200, "the web vhost to be served");
        cluster
    }

    /// curl from the client namespace: (status, body, headers) of `url` with `args`.
    fn curl(&self, args: &[&str]) -> (u16, String, String) {
        let out = self
            .topo
            .client
            .command("curl")
            .args(["-s", "-S", "--max-time", "10", "-D", "/dev/stderr", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (code.trim().parse().unwrap_or(0), body.to_string(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// A plain-HTTP GET of `path` with `Host: host`: (status, JSON body or Null).
    fn get(&self, host: &str, path: &str) -> (u16, Value) {
        let (status, body, _) = self.curl(&["-H", &format!("Host: {host}"), &format!("http://{HTTP}{path}")]);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Which backend answered a GET (the backend's name), panicking on anything but 200.
    fn backend(&self, host: &str, path: &str) -> String {
        let (status, body) = self.get(host, path);
        assert_eq!(status, 200, "GET {host}{path}: {body}");
        body["backend"].as_str().unwrap().to_string()
    }

    fn wait_for(&self, done: impl Fn(&Self) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A pod whose endpoint asks for the vhost pod.example.com (`HAPROXY_VHOST` on the endpoint),
/// with instances on backends 0 and 1; its VIP is where the routes' backends come from.
fn pod() -> PodSpec {
    let mut pod = PodSpec::new("/pod-web", &[("http", "10.0.0.7:80")]);
    pod.endpoints[0].labels.insert("HAPROXY_VHOST".into(), "pod.example.com".into());
    pod.endpoints[0].labels.insert("HAPROXY_GROUP".into(), "external".into());
    pod.instances = (0..2).map(|i| InstanceSpec::running("/pod-web", i, &LbTopology::backend_ip(i).to_string(), &[WEB_PORT])).collect();
    pod
}

#[test]
fn a_pod_endpoint_is_routed_by_its_vhost() {
    let c = Cluster::new();
    c.wait_for(|c| c.get("pod.example.com", "/").0 == 200, "the pod's vhost to be served");
    let seen: BTreeSet<String> = (0..12).map(|_| c.backend("pod.example.com", "/")).collect();
    assert_eq!(seen, BTreeSet::from(["backend-0".into(), "backend-1".into()]), "the pod's two instances");
}

#[test]
fn vhosts_paths_groups_and_forwarding_headers() {
    let c = Cluster::new();
    let seen: BTreeSet<String> = (0..30).map(|_| c.backend("web.example.com", "/")).collect();
    assert_eq!(seen, BTreeSet::from(["backend-0".into(), "backend-1".into(), "backend-2".into()]), "round robin over the tasks");
    let www: BTreeSet<String> = (0..6).map(|_| c.backend("WWW.Example.com:8080", "/")).collect();
    assert_eq!(www.len(), 3, "the second vhost, any case, port ignored: {www:?}");
    assert_eq!(c.backend("web.example.com", "/api/v1/users"), "api-0", "the longer path prefix goes to the other app");
    assert_eq!(c.backend("web.example.com", "/apix"), "api-0", "a prefix matches as marathon-lb's path_beg does");

    let (internal, _) = c.get("internal.example.com", "/");
    assert_eq!(internal, 503, "an app of another group is not served");
    let (status, body, _) = c.curl(&["-H", "Host: nobody.example.com", &format!("http://{HTTP}/")]);
    assert_eq!((status, body.as_str()), (503, "no service for this host and path\n"));

    let (_, body, _) = c.curl(&["-H", "Host: web.example.com", "-H", "X-Forwarded-For: 203.0.113.9", "-H", "Connection: x-secret", "-H", "X-Secret: 1", &format!("http://{HTTP}/h")]);
    let headers = &serde_json::from_str::<Value>(&body).unwrap()["headers"];
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 10.201.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-port"], "8080");
    assert_eq!(headers["forwarded"], "for=10.201.0.1;host=\"web.example.com\";proto=http");
    assert_eq!(headers["host"], "web.example.com");
    assert!(headers.get("x-secret").is_none(), "a header named by Connection is hop-by-hop: {headers}");

    // The apps' six and the pod's.
    let status = lb_ok(None, &["status", "--pin-dir", &c.pins.arg()]).unwrap();
    assert!(status.contains(&format!("HTTP path: 7 routes on http://{HTTP}, https://{HTTPS}")), "{status}");

    let (status, _, head) = c.curl(&["-H", "Host: a.example", &format!("http://{HTTP}/login?next=%2F")]);
    assert_eq!(status, 301);
    assert!(head.to_ascii_lowercase().contains("location: https://a.example/login?next=%2f"), "{head}");
}

#[test]
fn scale_up_joins_within_a_second_and_a_killed_task_gets_no_new_requests() {
    let c = Cluster::new();
    assert_eq!(c.backend("web.example.com", "/api"), "api-0");
    c.marathon.update("/api", |a| a.tasks.push(task("/api", 1, API_PORT)));
    let started = Instant::now();
    while !(0..4).any(|_| c.backend("web.example.com", "/api") == "api-1") {
        assert!(started.elapsed() < Duration::from_secs(1), "the new task took no request within a second");
    }
    c.marathon.update("/web", |a| a.tasks.retain(|t| !t.host.ends_with(".1.2")));
    c.wait_for(|c| (0..6).all(|_| c.backend("web.example.com", "/") != "backend-1"), "the killed task to leave");
    let after: BTreeSet<String> = (0..30).map(|_| c.backend("web.example.com", "/")).collect();
    assert_eq!(after, BTreeSet::from(["backend-0".into(), "backend-2".into()]));
}

#[test]
fn tls_picks_the_certificate_by_sni_and_speaks_http2() {
    let c = Cluster::new();
    for name in ["a.example", "b.example"] {
        let trust = c.certs.path().join(format!("{name}.crt"));
        let (status, json, head) = c.curl(&[
            "--http2", "--cacert", trust.to_str().unwrap(), "--resolve", &format!("{name}:8443:10.201.0.2"),
            &format!("https://{name}:8443/x"),
        ]);
        assert_eq!(status, 200, "{name}: {head}");
        assert!(head.starts_with("HTTP/2 200"), "{name}: served over HTTP/2 with the certificate for its name: {head}");
        assert!(head.to_ascii_lowercase().contains("strict-transport-security: max-age=15768000"), "{head}");
        let json: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["headers"]["x-forwarded-proto"], "https");
        assert_eq!(json["headers"]["host"], format!("{name}:8443"));
    }
    // A renewed certificate is picked up from the directory without a restart.
    let renewed = TempDir::new("lb-http-renewed");
    self_signed(renewed.path(), "a.example").unwrap();
    std::fs::copy(renewed.path().join("a.example.pem"), c.certs.path().join("a.example.pem")).unwrap();
    let trust = renewed.path().join("a.example.crt");
    c.wait_for(
        |c| c.curl(&["--cacert", trust.to_str().unwrap(), "--resolve", "a.example:8443:10.201.0.2", "https://a.example:8443/"]).0 == 200,
        "the renewed certificate to be served",
    );
    // The other name's certificate does not verify for this one: SNI really chose.
    let wrong = c.certs.path().join("b.example.crt");
    let (status, _, _) = c.curl(&["--cacert", wrong.to_str().unwrap(), "--resolve", "a.example:8443:10.201.0.2", "https://a.example:8443/"]);
    assert_eq!(status, 0, "a.example must not be served b.example's certificate");
    let (status, _, head) = c.curl(&["--http2-prior-knowledge", "-H", "Host: web.example.com", &format!("http://{HTTP}/")]);
    assert!(status == 200 && head.starts_with("HTTP/2 200"), "h2c with prior knowledge: {head}");
}

#[test]
fn sticky_cookie_pins_a_client_and_survives_its_backend_leaving() {
    let c = Cluster::new();
    let (status, _, head) = c.curl(&["-H", "Host: sticky.example.com", &format!("http://{HTTP}/")]);
    assert_eq!(status, 200);
    let cookie = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().starts_with("set-cookie:").then(|| l[11..].trim().split(';').next().unwrap().to_string()))
        .unwrap_or_else(|| panic!("no sticky cookie: {head}"));
    assert!(cookie.starts_with("mesosphere_server_id="), "{cookie}");
    let pinned = |c: &Cluster| -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..10 {
            let (_, body, _) = c.curl(&["-H", "Host: sticky.example.com", "-H", &format!("Cookie: {cookie}"), &format!("http://{HTTP}/")]);
            let backend = serde_json::from_str::<Value>(&body).unwrap()["backend"].as_str().unwrap().to_string();
            *seen.entry(backend).or_default() += 1;
        }
        seen
    };
    let first = pinned(&c);
    assert_eq!(first.len(), 1, "one backend for the cookie: {first:?}");
    let gone = first.keys().next().unwrap().clone();
    let index: usize = gone.trim_start_matches("backend-").parse().unwrap();
    c.marathon.update("/sticky", |a| a.tasks.retain(|t| t.host != LbTopology::backend_ip(index).to_string()));
    c.wait_for(|c| !pinned(c).contains_key(&gone), "the pinned backend to leave");
    let (status, _, head) = c.curl(&["-H", "Host: sticky.example.com", "-H", &format!("Cookie: {cookie}"), &format!("http://{HTTP}/")]);
    assert_eq!(status, 200, "a cookie naming a gone backend is served, not refused");
    assert!(head.to_ascii_lowercase().contains("set-cookie: mesosphere_server_id="), "and re-pinned: {head}");
}

#[test]
fn an_upgraded_connection_is_tunnelled_both_ways() {
    let c = Cluster::new();
    let echoed = c
        .topo
        .client
        .run(|| -> std::io::Result<(String, Vec<u8>)> {
            let mut s = TcpStream::connect(HTTP)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /chat HTTP/1.1\r\nHost: web.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")?;
            let head = read_until_blank_line(&mut s)?;
            s.write_all(b"\x81\x05hello")?;
            let mut back = [0u8; 7];
            s.read_exact(&mut back)?;
            Ok((head, back.to_vec()))
        })
        .unwrap()
        .unwrap();
    assert!(echoed.0.starts_with("HTTP/1.1 101"), "{}", echoed.0);
    assert_eq!(echoed.1, b"\x81\x05hello", "bytes after the upgrade go through unchanged, both ways");
}

#[test]
fn a_slow_request_in_flight_completes_across_route_changes() {
    let c = Cluster::new();
    let mut request = c.topo.client.command("curl");
    request.args(["-s", "-w", "\n%{http_code}", "--max-time", "20", "-H", "Host: web.example.com", &format!("http://{HTTP}/slow/3000")]);
    let slow = std::thread::spawn(move || String::from_utf8_lossy(&request.output().unwrap().stdout).into_owned());
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..5 {
        c.marathon.update("/api", |a| {
            a.tasks = vec![task("/api", round % 3, API_PORT)];
        });
        c.marathon.update("/web", |a| {
            a.app_labels.insert("HAPROXY_0_VHOST".into(), format!("web.example.com,www{round}.example.com"));
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = slow.join().unwrap();
    assert!(out.ends_with("\n200"), "the slow request must complete: {out}");
    assert_eq!(c.get("www4.example.com", "/").0, 200, "the last relabel took effect");
}

/// Reads a response head byte by byte (nothing after it is consumed).
fn read_until_blank_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn retries_acls_limits_and_metrics() {
    let c = Cluster::new();
    let answered: BTreeSet<String> = (0..10).map(|_| c.backend("flaky.example.com", "/")).collect();
    assert_eq!(answered, BTreeSet::from(["api-0".into()]), "a GET to a task that refuses connections is retried on another");
    let (status, body, _) = c.curl(&["-X", "POST", "--data", "x", "-H", "Host: flaky.example.com", &format!("http://{HTTP}/")]);
    assert!(status == 200 || (status == 502 && body == "the backend could not be reached\n"), "a POST is never repeated: {status} {body}");

    assert_eq!(c.get("private.example.com", "/").0, 403, "the client is outside the app's allowed networks");

    let big = format!("X-Big: {}", "a".repeat(80 * 1024));
    assert_eq!(c.curl(&["-H", "Host: web.example.com", "-H", &big, &format!("http://{HTTP}/")]).0, 431, "request head over 64 KiB");

    // Connections that never send a request hold nothing: others are answered meanwhile.
    let idle: Vec<TcpStream> = c.topo.client.run(|| (0..50).map(|_| TcpStream::connect(HTTP).unwrap()).collect()).unwrap();
    assert_eq!(c.get("web.example.com", "/").0, 200, "a request while 50 connections sit idle");
    drop(idle);

    let metrics = c.topo.node.command("curl").args(["-s", "http://127.0.0.1:9097/metrics"]).output().unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let flaky_ok = format!(r#"lb_http_requests_total{{route="/flaky:0",class="2xx"}} {}"#, 10 + usize::from(status == 200));
    for needle in [
        flaky_ok.as_str(),
        r#"lb_http_requests_total{route="/private:0",class="4xx"} 1"#,
        "lb_http_upstream_seconds_count",
        "lb_http_connections ",
    ] {
        assert!(metrics.contains(needle), "{needle} in:\n{}", metrics.lines().filter(|l| l.starts_with("lb_http")).collect::<Vec<_>>().join("\n"));
    }
}
