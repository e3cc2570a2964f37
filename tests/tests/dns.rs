//! Host names that never resolve: the agent runs with a resolver that swallows every query
//! (its own /etc/resolv.conf in a private mount namespace, pointing at a UDP socket that never
//! answers). Those tasks are skipped with a reason, nothing else waits for them, and SIGTERM
//! stops the agent at once even while lookups hang.

use std::{
    io::{BufRead, BufReader},
    net::UdpSocket,
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{lb_bin, lb_ok, Running, wait_for_services, PinDir, TempFile, TestCgroup},
    marathon_server::{AppSpec, MarathonServer, TaskSpec},
    netns::Netns,
};
use serde_json::Value;

fn task(id: &str, host: &str) -> TaskSpec {
    TaskSpec { id: id.into(), host: host.into(), port: 31000, state: "TASK_RUNNING".into(), alive: None }
}

fn app(id: &str, port: u16, tasks: Vec<TaskSpec>) -> AppSpec {
    let mut app = AppSpec::new(id, port);
    app.health_checked = false;
    app.tasks = tasks;
    app
}

/// `lb run` in `ns` with `resolv` as its /etc/resolv.conf; returns the agent and its stdout lines.
fn start(ns: &Netns, resolv: &TempFile, args: &[&str]) -> (Running, mpsc::Receiver<String>) {
    let mut command = ns.command("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c", "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\""])
        .arg(resolv.path())
        .arg(lb_bin())
        .arg("run")
        .args(args)
        .env("LB_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().expect("starting lb run");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Running(child), rx)
}

#[test]
fn names_that_never_resolve_delay_nothing_else_and_sigterm_is_prompt() {
    let ns = Netns::new("lbd").unwrap();
    // The name server: reads every query and answers none.
    let swallow = ns.run(|| UdpSocket::bind("127.0.0.1:53").unwrap()).unwrap();
    let resolv = TempFile::new("nameserver 127.0.0.1\noptions timeout:5 attempts:2\n").unwrap();
    let marathon = MarathonServer::start(Some(&ns), Duration::from_millis(500)).unwrap();
    marathon.set_apps(vec![
        app("/good", 10000, vec![task("good.1", "10.0.0.5")]),
        app("/lost", 10001, vec![task("lost.1", "never-1.lb-test"), task("lost.2", "never-2.lb-test"), task("lost.3", "10.0.0.6")]),
    ]);
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new().unwrap());
    let (pin_arg, cgroup_arg, url) = (pins.arg(), cgroup.arg(), marathon.url());
    let args = ["--marathon", &url, "--pin-dir", &pin_arg, "--cgroup", &cgroup_arg, "--resync", "3600"];

    // The system resolver would wait 2 × 5 s per name; the agent gives a name 2 s at most,
    // all names at once.
    let started = Instant::now();
    let (mut child, lines) = start(&ns, &resolv, &args);
    let ready = lines.recv_timeout(Duration::from_secs(8));
    assert_eq!(ready.as_deref(), Ok("ready"), "not ready within 8 s");
    assert!(started.elapsed() < Duration::from_secs(6), "ready after {:?}", started.elapsed());
    let services = wait_for_services(&pins, |j| j.as_array().unwrap().len() == 2).unwrap();
    let lost = services.as_array().unwrap().iter().find(|s| s["port"] == 10001).unwrap();
    assert_eq!(lost["backends"].as_array().unwrap().len(), 1, "the task with an address is a backend: {lost}");
    let status: Value = serde_json::from_str(&lb_ok(None, &["status", "--json", "--pin-dir", &pin_arg]).unwrap()).unwrap();
    let reasons = status["marathon"]["skipped"]["/lost"].to_string();
    assert!(reasons.contains("never-1.lb-test") && reasons.contains("does not resolve"), "{status}");

    // A new task with another name that never answers: SIGTERM while it is being looked up.
    marathon.update("/lost", |a| a.tasks.push(task("lost.4", "never-3.lb-test")));
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    // SAFETY: signalling the agent this test started (unshare and sh exec into it).
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(signalled.elapsed() < Duration::from_secs(1), "SIGTERM took {:?}", signalled.elapsed());
    assert!(status.success(), "{status}");
    drop(swallow);
}
