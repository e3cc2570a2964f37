//! The agent's DNS server (`--dns-listen`) asked by real clients: `dig` (bind9-dnsutils) for
//! every record type and response code, and getaddrinfo through a resolv.conf pointing at the
//! agent (in a private mount namespace). Answers follow Marathon's events: an unhealthy task
//! leaves the answers and comes back, a killed one is gone once its event is applied.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{lb, lb_bin, lb_ok, Running, wait_for_services, PinDir, TempFile, TestCgroup},
    marathon_server::{AppSpec, MarathonServer, Networking, TaskSpec},
    netns::Netns,
};
use serde_json::Value;

const DNS: &str = "127.0.0.1";
/// The test namespace's own port 53: glibc's resolver takes no port in resolv.conf.
const DNS_PORT: &str = "53";

fn task(id: &str, host: &str, port: u16) -> TaskSpec {
    TaskSpec { id: id.into(), host: host.into(), port, state: "TASK_RUNNING".into(), alive: Some(true) }
}

fn app(id: &str, service_port: u16, tasks: Vec<TaskSpec>) -> AppSpec {
    let mut app = AppSpec::new(id, service_port);
    app.tasks = tasks;
    app
}

/// `dig` in `ns` against the agent: (status, answer lines "name ttl class type data").
fn dig(ns: &Netns, args: &[&str]) -> (String, Vec<String>, String) {
    let out = ns
        .command("dig")
        .args(["@".to_owned() + DNS, "-p".into(), DNS_PORT.into(), "+time=2".into(), "+tries=1".into()])
        .args(args)
        .output()
        .expect("running dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("none").to_owned();
    let answers = section(&text, "ANSWER");
    (status, answers, text)
}

/// The records of one section of dig's output, whitespace normalised.
fn section(text: &str, name: &str) -> Vec<String> {
    let header = format!(";; {name} SECTION:");
    let Some(start) = text.find(&header) else { return Vec::new() };
    text[start + header.len()..].lines().skip(1).take_while(|l| !l.trim().is_empty()).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

/// The data column of answers of `rtype`, sorted.
fn data(answers: &[String], rtype: &str) -> Vec<String> {
    let mut out: Vec<String> = answers
        .iter()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            (fields.get(3) == Some(&rtype)).then(|| fields[4..].join(" "))
        })
        .collect();
    out.sort();
    out
}

/// Asks until `want` holds (the agent applies events in milliseconds; 10 s only bounds a hang).
fn until(ns: &Netns, args: &[&str], want: impl Fn(&str, &[String]) -> bool) -> (String, Vec<String>, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = dig(ns, args);
        if want(&got.0, &got.1) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_agent(ns: &Netns, marathon: &MarathonServer, pins: &PinDir, cgroup: &TestCgroup) -> Running {
    start_agent_with(ns, marathon, pins, cgroup, &[])
}

fn start_agent_with(ns: &Netns, marathon: &MarathonServer, pins: &PinDir, cgroup: &TestCgroup, extra: &[&str]) -> Running {
    let url = marathon.url();
    let child = ns
        .command(lb_bin().to_str().unwrap())
        .args(["run", "--marathon", &url, "--pin-dir", &pins.arg(), "--cgroup", &cgroup.arg(), "--resync", "3600"])
        .args(["--dns-listen", &format!("{DNS}:{DNS_PORT}"), "--vip-cidr", "11.0.0.0/8"])
        .args(extra)
        .env("LB_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting lb run");
    let mut child = child;
    let mut ready = String::new();
    let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready);
    assert!(read.is_ok() && ready.trim() == "ready", "agent not ready: {ready:?}");
    Running(child)
}

#[test]
fn dig_gets_mesos_dns_names_that_follow_marathon() {
    let ns = Netns::new("lbdns").unwrap();
    let marathon = MarathonServer::start(Some(&ns), Duration::from_millis(500)).unwrap();
    let mut shop = app("/shop/web", 10000, vec![task("web.1", "10.0.0.1", 31001), task("web.2", "10.0.0.2", 31002)]);
    shop.labels.insert("VIP_0".into(), "/shop:5555".into());
    let many = app("/many", 10001, (0..100).map(|i| task(&format!("many.{i}"), &format!("10.1.{}.{}", i / 200, i % 200 + 1), 31000)).collect());
    marathon.set_apps(vec![shop, many]);
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new().unwrap());
    let _agent = start_agent(&ns, &marathon, &pins, &cgroup);
    wait_for_services(&pins, |j| j.as_array().unwrap().len() >= 3).unwrap();

    // A: the tasks; the group app's label is Mesos-DNS's (`/shop/web` → `web-shop`).
    let (status, answers, text) = until(&ns, &["web-shop.marathon.mesos", "A"], |s, a| s == "NOERROR" && a.len() == 2);
    assert_eq!((status.as_str(), data(&answers, "A")), ("NOERROR", vec!["10.0.0.1".into(), "10.0.0.2".into()]), "{text}");
    assert!(text.contains("flags: qr aa"), "authoritative: {text}");
    assert!(answers.iter().all(|l| l.split(' ').nth(1) == Some("5")), "TTL 5: {answers:?}");
    let (_, answers, text) = dig(&ns, &["web-shop.marathon.slave.mesos", "A"]);
    assert_eq!(data(&answers, "A"), ["10.0.0.1", "10.0.0.2"], "{text}");

    // SRV: one per task and port, targets that resolve, their addresses alongside.
    let (status, answers, text) = dig(&ns, &["_web-shop._tcp.marathon.mesos", "SRV"]);
    let srv = data(&answers, "SRV");
    assert_eq!((status.as_str(), srv.len()), ("NOERROR", 2), "{text}");
    let ports: Vec<&str> = srv.iter().map(|s| s.split(' ').nth(2).unwrap()).collect();
    assert_eq!(ports, ["31001", "31002"], "{text}");
    let additional = section(&text, "ADDITIONAL");
    for target in srv.iter().map(|s| s.split(' ').nth(3).unwrap()) {
        assert!(target.starts_with("web-shop-") && target.ends_with("-1.marathon.mesos."), "{target}");
        let (_, answers, text) = dig(&ns, &[target, "A"]);
        assert_eq!(data(&answers, "A").len(), 1, "{target}: {text}");
        assert!(additional.iter().any(|l| l.starts_with(target)), "{target} in additional: {text}");
    }

    // The named VIP: an address from --vip-cidr, and SRV for its port.
    let (_, answers, text) = dig(&ns, &["shop.marathon.l4lb.thisdcos.directory", "A"]);
    let vip = data(&answers, "A");
    assert!(vip.len() == 1 && vip[0].starts_with("11."), "{text}");
    let (_, answers, text) = dig(&ns, &["_shop._tcp.marathon.l4lb.thisdcos.directory", "SRV"]);
    assert_eq!(data(&answers, "SRV"), ["0 1 5555 shop.marathon.l4lb.thisdcos.directory."], "{text}");

    codes_apex_and_truncation(&ns);

    answers_follow_health_and_kills(&ns, &marathon);

    // Counted by type and code; the truncation too.
    for (series, least) in [
        ("lb_dns_queries_total{type=\"A\",rcode=\"NOERROR\"}", 5),
        ("lb_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"}", 1),
        ("lb_dns_queries_total{type=\"A\",rcode=\"REFUSED\"}", 1),
        ("lb_dns_truncated_total", 1),
    ] {
        assert!(metric(&ns, series) >= least, "{series}");
    }

    // The status says where DNS is served and how many records.
    let status: Value = serde_json::from_str(&lb_ok(None, &["status", "--json", "--pin-dir", &pins.arg()]).unwrap()).unwrap();
    assert_eq!(status["dns"]["listen"][0], format!("{DNS}:{DNS_PORT}"), "{status}");
    assert!(status["dns"]["records"].as_u64().unwrap() > 100, "{status}");
}

/// An unhealthy task leaves the answers and comes back; a killed one is gone.
fn answers_follow_health_and_kills(ns: &Netns, marathon: &MarathonServer) {
    marathon.update("/shop/web", |a| a.tasks[0].alive = Some(false));
    let (_, answers, text) = until(ns, &["web-shop.marathon.mesos", "A"], |_, a| data(a, "A") == ["10.0.0.2"]);
    assert_eq!(data(&answers, "A"), ["10.0.0.2"], "unhealthy task left: {text}");
    marathon.update("/shop/web", |a| a.tasks[0].alive = Some(true));
    let (_, answers, text) = until(ns, &["web-shop.marathon.mesos", "A"], |_, a| a.len() == 2);
    assert_eq!(data(&answers, "A"), ["10.0.0.1", "10.0.0.2"], "healthy again: {text}");
    marathon.update("/shop/web", |a| {
        a.tasks.remove(1);
    });
    let (_, answers, text) = until(ns, &["web-shop.marathon.mesos", "A"], |_, a| a.len() == 1);
    assert_eq!(data(&answers, "A"), ["10.0.0.1"], "killed task gone: {text}");

}

/// NXDOMAIN and NODATA with the SOA, SOA and NS at the apex, REFUSED outside the zones; 100
/// tasks truncated over UDP and complete over TCP.
fn codes_apex_and_truncation(ns: &Netns) {
    // NXDOMAIN and NODATA with the SOA; SOA and NS at the apex; REFUSED outside the zones.
    let (status, answers, text) = dig(ns, &["nope.marathon.mesos", "A"]);
    assert!(status == "NXDOMAIN" && answers.is_empty() && section(&text, "AUTHORITY")[0].contains(" SOA "), "{text}");
    let (status, answers, text) = dig(ns, &["web-shop.marathon.mesos", "AAAA"]);
    assert!(status == "NOERROR" && answers.is_empty() && section(&text, "AUTHORITY")[0].contains(" SOA "), "{text}");
    let (status, answers, text) = dig(ns, &["mesos", "SOA"]);
    assert!(status == "NOERROR" && data(&answers, "SOA")[0].starts_with("ns1.mesos. root.ns1.mesos."), "{text}");
    let (_, answers, text) = dig(ns, &["mesos", "NS"]);
    assert_eq!(data(&answers, "NS"), ["ns1.mesos."], "{text}");
    let (status, _, text) = dig(ns, &["example.com", "A"]);
    assert_eq!(status, "REFUSED", "{text}");

    // 100 tasks do not fit in UDP: truncated there, complete over TCP.
    let (_, answers, text) = dig(ns, &["many.marathon.mesos", "A", "+ignore", "+bufsize=1232"]);
    assert!(text.contains(" tc ") || text.contains(" tc;"), "TC set: {text}");
    assert!(answers.len() < 100, "{}", answers.len());
    let (_, answers, text) = dig(ns, &["many.marathon.mesos", "A", "+tcp"]);
    assert_eq!(data(&answers, "A").len(), 100, "{text}");

}

/// Bridge and container-network apps with a named port: answers carry the address a client
/// reaches (the host in bridge mode, never the bridge-internal one; the container's on a
/// container network); Mesos-DNS's HTTP API and `lb dns` list the same records.
#[test]
fn networking_modes_named_ports_http_api_and_lb_dns() {
    let ns = Netns::new("lbdnsn").unwrap();
    let marathon = MarathonServer::start(Some(&ns), Duration::from_millis(500)).unwrap();
    let mut web = app("/shop/web", 10000, vec![task("web.1", "10.0.0.1", 31001), task("web.2", "10.0.0.2", 31002)]);
    (web.networking, web.port_name) = (Networking::Bridge { container_port: 80 }, "http".into());
    let mut db = app("/db", 10001, vec![task("db.1", "10.0.0.3", 0), task("db.2", "10.0.0.3", 0)]);
    let task_ips = [("db.1".to_owned(), "9.0.0.5".to_owned()), ("db.2".to_owned(), "9.0.0.6".to_owned())].into();
    (db.networking, db.port_name) = (Networking::Container { container_port: 5432, task_ips }, "pg".into());
    db.labels.insert("VIP_0".into(), "/db:5432".into());
    marathon.set_apps(vec![web, db]);
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new().unwrap());
    let _agent = start_agent(&ns, &marathon, &pins, &cgroup);
    wait_for_services(&pins, |j| j.as_array().unwrap().len() >= 3).unwrap();

    let (_, answers, text) = until(&ns, &["web-shop.marathon.mesos", "A"], |_, a| a.len() == 2);
    assert_eq!(data(&answers, "A"), ["10.0.0.1", "10.0.0.2"], "bridge: the hosts: {text}");
    for name in ["_web-shop._tcp.marathon.mesos", "_http._web-shop._tcp.marathon.mesos"] {
        let (_, answers, text) = dig(&ns, &[name, "SRV"]);
        let ports: Vec<String> = data(&answers, "SRV").iter().map(|s| s.split(' ').nth(2).unwrap().to_owned()).collect();
        assert_eq!(ports, ["31001", "31002"], "{name}: host ports: {text}");
    }
    let (_, answers, text) = dig(&ns, &["db.marathon.mesos", "A"]);
    assert_eq!(data(&answers, "A"), ["9.0.0.5", "9.0.0.6"], "container network: the containers: {text}");
    let (_, answers, text) = dig(&ns, &["db.marathon.slave.mesos", "A"]);
    assert_eq!(data(&answers, "A"), ["10.0.0.3"], "their agent: {text}");
    let (_, answers, text) = dig(&ns, &["_pg._db._tcp.marathon.mesos", "SRV"]);
    let srv = data(&answers, "SRV");
    assert!(srv.len() == 2 && srv.iter().all(|s| s.starts_with("0 1 5432 db-")), "container port: {text}");
    let (_, answers, text) = dig(&ns, &["db.marathon.l4lb.thisdcos.directory", "A"]);
    assert!(data(&answers, "A").first().is_some_and(|a| a.starts_with("11.")), "{text}");

    http_api_lists_the_records(&ns);
    lb_dns_lists_the_records(&ns, &pins);
}

/// Mesos-DNS's HTTP API on the metrics listener, for the apps above.
fn http_api_lists_the_records(ns: &Netns) {
    let get = |path: &str| -> Value {
        let out = ns.command("curl").args(["-sf", &format!("http://127.0.0.1:9097{path}")]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    assert!(get("/v1/version")["Version"].is_string());
    let config = get("/v1/config");
    assert_eq!((config["Domain"].as_str(), config["Port"].as_u64(), config["HttpPort"].as_u64()), (Some("mesos"), Some(53), Some(9097)), "{config}");
    let hosts = get("/v1/hosts/web-shop.marathon.mesos");
    let mut ips: Vec<&str> = hosts.as_array().unwrap().iter().map(|h| h["ip"].as_str().unwrap()).collect();
    ips.sort();
    assert_eq!(ips, ["10.0.0.1", "10.0.0.2"], "{hosts}");
    let services = get("/v1/services/_db._tcp.marathon.mesos.");
    assert!(services.as_array().unwrap().iter().all(|s| s["port"] == "5432" && s["ip"].as_str().unwrap().starts_with("9.0.0.")), "{services}");
    let enumeration = get("/v1/enumerate");
    let tasks = enumeration["frameworks"][0]["tasks"].as_array().unwrap();
    let mut ids: Vec<&str> = tasks.iter().map(|t| t["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["db.1", "db.2", "web.1", "web.2"], "{enumeration}");
    assert!(!enumeration.to_string().contains("172.17."), "no bridge-internal address: {enumeration}");

}

/// `lb dns`: every record, one name's, a zone file; bad names and zones say so.
fn lb_dns_lists_the_records(ns: &Netns, pins: &PinDir) {
    let pin_arg = pins.arg();
    let all = lb_ok(Some(ns), &["dns", "--pin-dir", &pin_arg]).unwrap();
    assert!(all.lines().any(|l| l.starts_with("web-shop.marathon.mesos.") && l.ends_with(" 10.0.0.1")), "{all}");
    assert!(!all.contains("172.17."), "{all}");
    let one = lb_ok(Some(ns), &["dns", "db.marathon.mesos", "--json", "--pin-dir", &pin_arg]).unwrap();
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["records"].as_array().unwrap().len(), 2, "{one}");
    let zone_file = lb_ok(Some(ns), &["dns", "--zone-file", "mesos", "--pin-dir", &pin_arg]).unwrap();
    let first = zone_file.lines().find(|l| !l.starts_with(';')).unwrap();
    assert!(first.starts_with("mesos. 5 IN SOA ns1.mesos. root.ns1.mesos. "), "{zone_file}");
    assert!(!zone_file.contains("l4lb.thisdcos.directory"), "one zone: {zone_file}");
    let code = |args: &[&str]| lb(Some(ns), args).unwrap().status.code();
    assert_eq!(code(&["dns", "nope.marathon.mesos", "--pin-dir", &pin_arg]), Some(1));
    assert_eq!(code(&["dns", "--zone-file", "example.com", "--pin-dir", &pin_arg]), Some(64));
    assert_eq!(code(&["dns", "--pin-dir", &PinDir::new().arg()]), Some(3), "no agent there");
}

/// getaddrinfo without AI_ADDRCONFIG (`getent ahosts` sets it, and a namespace with only
/// loopback addresses then gets no IPv4 answer at all).
const GETADDRINFO: &str = "mount --bind \"$0\" /etc/resolv.conf && exec python3 -c 'import socket; print(sorted({a[4][0] for a in socket.getaddrinfo(\"web.marathon.mesos\", 80, socket.AF_INET)}))'";

#[test]
fn getaddrinfo_resolves_app_names_through_the_agent() {
    let ns = Netns::new("lbdnsg").unwrap();
    let marathon = MarathonServer::start(Some(&ns), Duration::from_millis(500)).unwrap();
    marathon.set_apps(vec![app("/web", 10000, vec![task("web.1", "10.0.0.9", 31001)])]);
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new().unwrap());
    let _agent = start_agent(&ns, &marathon, &pins, &cgroup);
    wait_for_services(&pins, |j| !j.as_array().unwrap().is_empty()).unwrap();
    until(&ns, &["web.marathon.mesos", "A"], |s, _| s == "NOERROR");
    let resolv = TempFile::new(&format!("nameserver {DNS}\noptions timeout:2 attempts:1\n")).unwrap();
    let out = ns
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", GETADDRINFO])
        .arg(resolv.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "['10.0.0.9']", "getaddrinfo: {text} {}", String::from_utf8_lossy(&out.stderr));
}

/// An upstream that answers every query with its own id and question, QR and RA set, and
/// counts what it was asked.
fn upstream(ns: &Netns) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let socket = ns.run(|| std::net::UdpSocket::bind("127.0.0.2:53").unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((len, peer)) = socket.recv_from(&mut buf) {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            buf[2] |= 0x80;
            buf[3] |= 0x80;
            let _ = socket.send_to(&buf[..len], peer);
        }
    });
    (addr, asked)
}

#[test]
fn other_names_are_forwarded_only_for_allowed_clients() {
    let ns = Netns::new("lbdnsf").unwrap();
    let marathon = MarathonServer::start(Some(&ns), Duration::from_millis(500)).unwrap();
    marathon.set_apps(vec![app("/web", 10000, vec![task("web.1", "10.0.0.9", 31001)])]);
    let (upstream_addr, asked) = upstream(&ns);
    let upstream_arg = upstream_addr.to_string();
    // Default --dns-allow: loopback and this namespace's networks; dig asks from 127.0.0.1.
    {
        let (pins, cgroup) = (PinDir::new(), TestCgroup::new().unwrap());
        let _agent = start_agent_with(&ns, &marathon, &pins, &cgroup, &["--dns-upstream", &upstream_arg]);
        let (status, _, text) = dig(&ns, &["example.com", "A"]);
        assert_eq!(status, "NOERROR", "forwarded: {text}");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        let (status, _, text) = dig(&ns, &["example.com", "A", "+tcp"]);
        assert_eq!(status, "SERVFAIL", "the upstream does not serve TCP: {text}");
        // The zones are still answered by the agent itself.
        let (status, answers, text) = until(&ns, &["web.marathon.mesos", "A"], |s, _| s == "NOERROR");
        assert_eq!((status.as_str(), data(&answers, "A")), ("NOERROR", vec!["10.0.0.9".to_owned()]), "{text}");
    }
    // A client outside --dns-allow is refused and nothing reaches the upstream.
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new().unwrap());
    let _agent = start_agent_with(&ns, &marathon, &pins, &cgroup, &["--dns-upstream", &upstream_arg, "--dns-allow", "192.0.2.0/24"]);
    let (status, _, text) = dig(&ns, &["example.com", "A"]);
    assert_eq!(status, "REFUSED", "{text}");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A query for `name`: header (RD set, one question), the name's labels, `qtype`, class IN.
fn query_bytes(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0]);
    q.extend(qtype.to_be_bytes());
    q.extend(1u16.to_be_bytes());
    q
}

/// A metric of the agent's, 0 when absent.
fn metric(ns: &Netns, series: &str) -> u64 {
    let out = ns.command("curl").args(["-sf", "http://127.0.0.1:9097/metrics"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// TCP clients that trickle a query byte by byte, or send nothing, are cut once a whole query
/// has not arrived in 5 s; TCP answers again once they are gone.
#[test]
fn slow_tcp_clients_are_cut() {
    use std::io::{Read, Write};
    let ns = Netns::new("lbdnss").unwrap();
    let marathon = MarathonServer::start(Some(&ns), Duration::from_millis(500)).unwrap();
    marathon.set_apps(vec![app("/web", 10000, vec![task("web.1", "10.0.0.9", 31001)])]);
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new().unwrap());
    let _agent = start_agent(&ns, &marathon, &pins, &cgroup);
    until(&ns, &["web.marathon.mesos", "A"], |s, _| s == "NOERROR");
    // Every one of the 64 connection slots: 63 trickling a query, one silent.
    let mut clients: Vec<std::net::TcpStream> = (0..64).map(|_| ns.run(|| std::net::TcpStream::connect("127.0.0.1:53").unwrap()).unwrap()).collect();
    let query = query_bytes(7, "web.marathon.mesos", 1);
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend(&query);
    let started = Instant::now();
    let mut cut = vec![false; clients.len()];
    let mut sent = 0;
    while cut.iter().any(|c| !c) && started.elapsed() < Duration::from_secs(20) {
        for (i, client) in clients.iter_mut().enumerate().skip(1) {
            // A byte a second, never the last one: no query is ever complete.
            if !cut[i] && sent < framed.len() - 1 && client.write_all(&framed[sent..sent + 1]).is_err() {
                cut[i] = true;
            }
        }
        sent += 1;
        for (i, client) in clients.iter_mut().enumerate() {
            client.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            if matches!(client.read(&mut [0u8; 64]), Ok(0)) || cut[i] {
                cut[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert!(cut.iter().all(|c| *c), "connections still open after {:?}: {cut:?}", started.elapsed());
    assert!(metric(&ns, "lb_dns_tcp_timeouts_total") >= 64);
    let (status, answers, text) = until(&ns, &["web.marathon.mesos", "A", "+tcp"], |s, _| s == "NOERROR");
    assert_eq!((status.as_str(), data(&answers, "A")), ("NOERROR", vec!["10.0.0.9".to_owned()]), "{text}");
}

/// Two threads sending queries (known names, unknown names, garbage) as fast as they can for a
/// few seconds, never reading the replies: the agent's memory stays where it was, and a
/// Marathon event in the middle reaches both the maps and the answers.
#[test]
fn a_query_flood_grows_no_memory_and_holds_no_update() {
    let ns = Netns::new("lbdnsq").unwrap();
    let marathon = MarathonServer::start(Some(&ns), Duration::from_millis(500)).unwrap();
    marathon.set_apps(vec![app("/web", 10000, vec![task("web.1", "10.0.0.1", 31001), task("web.2", "10.0.0.2", 31002)])]);
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new().unwrap());
    let agent = start_agent(&ns, &marathon, &pins, &cgroup);
    until(&ns, &["web.marathon.mesos", "A"], |_, a| a.len() == 2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = |seconds: u64| {
        let threads: Vec<_> = (0..2u16)
            .map(|t| {
                let stop = stop.clone();
                ns.spawn(move || {
                    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    let mut queries = vec![query_bytes(t, "web.marathon.mesos", 1), query_bytes(t, "_web._tcp.marathon.mesos", 33)];
                    queries.extend((0..64).map(|i| query_bytes(i, &format!("nope-{i}.marathon.mesos"), 1)));
                    queries.push(vec![0xde, 0xad, 0xbe, 0xef, 0, 1, 0, 9, 0xff]);
                    let started = Instant::now();
                    let mut sent = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < Duration::from_secs(seconds) {
                        let _ = socket.send_to(&queries[sent as usize % queries.len()], "127.0.0.1:53");
                        sent += 1;
                    }
                    sent
                })
                .unwrap()
            })
            .collect();
        threads
    };
    // A first flood brings the agent's allocations to their working size; the second is measured.
    let warm: u64 = flood(2).into_iter().map(|t| t.join().unwrap()).sum();
    let (before, _) = agent.rss_kib().unwrap();
    let answered_before = metric(&ns, "lb_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"}");
    let flooding = flood(6);
    marathon.update("/web", |a| {
        a.tasks.remove(1);
    });
    wait_for_services(&pins, |j| j[0]["backends"].as_array().is_some_and(|b| b.len() == 1)).expect("the event reached the maps during the flood");
    let (_, answers, text) = until(&ns, &["web.marathon.mesos", "A"], |_, a| a.len() == 1);
    assert_eq!(data(&answers, "A"), ["10.0.0.1"], "the answers followed during the flood: {text}");
    let sent: u64 = flooding.into_iter().map(|t| t.join().unwrap()).sum();
    let (after, _) = agent.rss_kib().unwrap();
    let answered = metric(&ns, "lb_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"}") - answered_before;
    assert!(answered > 1000, "the flood reached the agent: {answered} NXDOMAIN answers of {sent} sent (warm-up {warm})");
    assert!(after <= before + 8 * 1024, "RSS {before} KiB before the flood, {after} KiB after");
}
