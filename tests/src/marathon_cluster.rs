//! A node, three echo backends and a test Marathon driving an agent: what the Marathon sync and
//! fault tests share. The app `/web` has service port 10000 and VIP 10.0.0.1:80.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde_json::Value;

use crate::{
    agent::{lb_ok, wait_for_services, Agent, PinDir, TestCgroup},
    marathon_server::{AppSpec, MarathonServer, TaskSpec},
    netns::LbTopology,
    servers::{backend_spread, tcp_echo, Server},
};

pub const PORT: u16 = 31000;

pub fn task(i: usize, alive: bool) -> TaskSpec {
    TaskSpec {
        id: format!("web.task-{i}"),
        host: LbTopology::backend_ip(i).to_string(),
        port: PORT,
        state: "TASK_RUNNING".into(),
        alive: Some(alive),
    }
}

pub fn web(tasks: &[usize]) -> AppSpec {
    let mut app = AppSpec::new("/web", 10000);
    app.labels.insert("VIP_0".into(), "10.0.0.1:80".into());
    app.tasks = tasks.iter().map(|&i| task(i, true)).collect();
    app
}

/// Which Marathon URLs the agent is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urls {
    /// The leader only.
    Leader,
    /// Only a standby (serving the same apps, redirecting `/v2/events` to the leader).
    Standby,
    /// The leader, then the standby.
    Both,
}

pub struct MarathonCluster {
    pub topo: LbTopology,
    pub marathon: MarathonServer,
    /// A standby the agent is pointed at: it serves the same apps and redirects /v2/events.
    pub standby: Option<MarathonServer>,
    pub pins: PinDir,
    _cgroup: TestCgroup,
    pub agent: Agent,
    _servers: Vec<Server>,
}

impl MarathonCluster {
    pub fn new(extra_args: &[&str]) -> Self {
        Self::build(extra_args, |_| {}, Urls::Leader)
    }

    pub fn build(extra_args: &[&str], setup: impl Fn(&MarathonServer), urls: Urls) -> Self {
        let topo = LbTopology::new(3).unwrap();
        let servers = (0..3)
            .map(|i| tcp_echo(&topo.backends[i], SocketAddr::new(LbTopology::backend_ip(i), PORT), &format!("backend-{i}")).unwrap())
            .collect();
        let marathon = MarathonServer::start(Some(&topo.node), Duration::from_millis(500)).unwrap();
        marathon.set_apps(vec![web(&[0, 1])]);
        setup(&marathon);
        let standby = (urls != Urls::Leader).then(|| {
            let standby = MarathonServer::start(Some(&topo.node), Duration::from_millis(500)).unwrap();
            standby.set_apps(vec![web(&[0, 1])]);
            setup(&standby);
            standby.redirect_events_to(Some(marathon.url()));
            standby
        });
        let pins = PinDir::new();
        let cgroup = TestCgroup::new().unwrap();
        let urls = match (&standby, urls) {
            (Some(standby), Urls::Both) => vec![marathon.url(), standby.url()],
            (Some(standby), _) => vec![standby.url()],
            (None, _) => vec![marathon.url()],
        };
        let (pin_arg, cgroup_arg) = (pins.arg(), cgroup.arg());
        let mut args = vec![
            "--iface", &topo.uplink, "--pin-dir", &pin_arg, "--cgroup", &cgroup_arg,
            "--node-ip", "10.201.0.2", "--ring-slots", "262144", "--max-services", "64", "--resync", "3600",
        ];
        for url in &urls {
            args.extend(["--marathon", url]);
        }
        args.extend_from_slice(extra_args);
        let agent = Agent::start(&topo.node, &args).unwrap();
        Self { topo, marathon, standby, pins, _cgroup: cgroup, agent, _servers: servers }
    }

    pub fn services(&self) -> Value {
        serde_json::from_str(&lb_ok(None, &["services", "--json", "--pin-dir", &self.pins.arg()]).unwrap()).unwrap()
    }

    /// Waits until the VIP service has exactly these (backend index, state) pairs.
    pub fn wait_backends(&self, want: &[(usize, &str)]) {
        let want: Vec<(String, String)> = want.iter().map(|(i, s)| (LbTopology::backend_ip(*i).to_string(), s.to_string())).collect();
        wait_for_services(&self.pins, |json| {
            json.as_array().unwrap().iter().filter(|s| s["address"] == "10.0.0.1").all(|s| {
                let have: Vec<(String, String)> = s["backends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| (b["address"].as_str().unwrap().to_string(), b["state"].as_str().unwrap().to_string()))
                    .collect();
                have == want
            }) && json.as_array().unwrap().iter().any(|s| s["address"] == "10.0.0.1")
        })
        .unwrap();
    }

    pub fn spread(&self, count: usize) -> BTreeMap<String, usize> {
        backend_spread(&self.topo.client, "10.0.0.1:80".parse().unwrap(), count).unwrap()
    }

    /// Polls `lb status --json` until `pred` holds (at most 10 s).
    pub fn wait_status(&self, pred: impl Fn(&Value) -> bool) {
        self.wait_status_within(Duration::from_secs(10), pred)
    }

    /// Polls `lb status --json` until `pred` holds (at most `timeout`).
    pub fn wait_status_within(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) {
        let deadline = std::time::Instant::now() + timeout;
        while !pred(&self.status()) {
            assert!(std::time::Instant::now() < deadline, "status never reached the expected state: {}", self.status());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&lb_ok(None, &["status", "--json", "--pin-dir", &self.pins.arg()]).unwrap()).unwrap()
    }
}

/// An app of one task on backend `backend`, on service port `port`.
pub fn small_app(id: &str, port: u16, backend: usize) -> AppSpec {
    let mut app = AppSpec::new(id, port);
    app.tasks = vec![TaskSpec { id: format!("{}.task-{backend}", id.trim_start_matches('/')), ..task(backend, true) }];
    app
}

