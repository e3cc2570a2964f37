use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use serde_json::{json, Value};

use super::*;
use crate::sources::marathon::app::parse_apps;

struct FakeDns(HashMap<String, IpAddr>);

impl Resolver for FakeDns {
    fn resolve(&mut self, host: &str) -> Option<IpAddr> {
        self.0.get(host).copied()
    }
}

fn dns() -> FakeDns {
    FakeDns(HashMap::from([("agent-1.example".to_string(), "10.0.9.1".parse().unwrap())]))
}

fn fixture(path: &str) -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/marathon");
    let text = std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn vips() -> VipRange {
    "11.0.0.0/8".parse::<VipRange>().unwrap()
}

/// The desired services of one Marathon state, and what could not be used.
#[derive(Debug, Default)]
struct Translation {
    desired: Desired,
    /// (app id, why) for apps that were skipped whole.
    app_errors: Vec<(String, String)>,
    /// Tasks, ports or labels that were skipped: (app id, what and why). Named VIPs that did
    /// not fit are listed under the VIP's name.
    warnings: Vec<(String, String)>,
    /// Named VIP → address.
    named_vips: BTreeMap<String, IpAddr>,
}

/// Every app translated from scratch, as one [`Translation`] (`parse_errors` first).
fn translate<'a>(
    parsed: impl Iterator<Item = &'a App> + Clone,
    parse_errors: Vec<(String, String)>,
    resolver: &mut dyn Resolver,
    health: &mut HealthMemory,
    vips: &VipRange,
) -> Translation {
    let mut translator = Translator::default();
    translator.rebuild(parsed, resolver, health, vips);
    let mut app_errors = parse_errors;
    app_errors.extend(translator.app_errors());
    Translation {
        desired: translator.desired().clone(),
        app_errors,
        warnings: translator.warnings().cloned().collect(),
        named_vips: translator.named_vips().clone(),
    }
}

fn translate_json(apps: &Value, health: &mut HealthMemory) -> Translation {
    let (parsed, errors) = parse_apps(&serde_json::to_vec(apps).unwrap()).unwrap();
    translate(parsed.iter(), errors, &mut dns(), health, &vips())
}

fn run(apps: &Value) -> Translation {
    translate_json(apps, &mut HealthMemory::default())
}

/// "service -> backend:port/weight, …" lines, for compact assertions.
fn summary(t: &Translation) -> Vec<String> {
    t.desired
        .values()
        .map(|s| {
            let b: Vec<String> = s.backends.iter().map(|b| format!("{}:{}/{}", b.addr, b.port, b.weight)).collect();
            format!("{} {} -> {}", s.id, s.name, b.join(","))
        })
        .collect()
}

#[test]
fn marathon_1_5_bridge_app_with_mesos_http_checks() {
    let t = run(&fixture("marathon-lb/apps-embed-tasks.zdd-green.marathon-1.5.json"));
    assert!(t.app_errors.is_empty(), "{:?}", t.app_errors);
    let s = summary(&t);
    assert!(s.iter().any(|l| l.starts_with("*:10000/tcp /nginx-green:0 -> 10.0.6.25:16916/1")), "{s:#?}");
}

#[test]
fn marathon_1_x_bridge_apps_of_a_deployment_group() {
    let t = run(&fixture("marathon-lb/apps-embed-tasks.zdd-green-blue.marathon-1.x.json"));
    assert!(t.app_errors.is_empty(), "{:?}", t.app_errors);
    assert_eq!(
        summary(&t),
        [
            "*:10000/tcp /nginx-green:0 -> 10.0.6.25:16916/1,10.0.6.25:23336/1,10.0.6.25:31184/1",
            "*:10001/tcp /nginx-blue:0 -> 10.0.1.147:25724/1",
        ]
    );
}

#[test]
fn every_port_of_a_multi_port_app_is_a_service() {
    let t = run(&fixture("marathon-consul/app-show-multi-port-two-healthchecks.marathon-0.15.json"));
    let s = summary(&t);
    assert_eq!(s.len(), 4, "{s:#?}");
    assert!(s[0].starts_with("*:1/tcp /myapp:1 -> 10.141.141.10:31308/1,10.141.141.10:31679/1"), "{s:#?}");
    assert!(s.iter().any(|l| l.starts_with("*:10002/tcp /myapp:0 -> 10.141.141.10:31307/1,10.141.141.10:31678/1")), "{s:#?}");
}

#[test]
fn a_task_without_health_results_keeps_its_last_verdict() {
    let mut app = fixture("go-marathon/app-task-missing-healthCheckResults.go-marathon-mock.json");
    // The mock has no networking; give it a port and hosts so that tasks can be backends.
    app["app"]["portDefinitions"] = json!([{"port": 10050, "protocol": "tcp"}]);
    for (i, task) in app["app"]["tasks"].as_array_mut().unwrap().iter_mut().enumerate() {
        task["host"] = json!(format!("10.0.0.{}", i + 1));
        task["ports"] = json!([31000 + i]);
    }
    let mut memory = HealthMemory::default();
    let t = translate_json(&app, &mut memory);
    assert_eq!(summary(&t), ["*:10050/tcp /no-health-check-results-app:0 -> 10.0.0.1:31000/1"], "never-checked task is not a backend yet");

    // Failover: the new leader reports no results for the healthy task either; it stays.
    app["app"]["tasks"][0].as_object_mut().unwrap().remove("healthCheckResults");
    let t = translate_json(&app, &mut memory);
    assert_eq!(summary(&t), ["*:10050/tcp /no-health-check-results-app:0 -> 10.0.0.1:31000/1"]);
}

#[test]
fn unreachable_strategy_as_a_string_parses() {
    let t = run(&fixture("go-marathon/app-unreachableStrategy-disabled.go-marathon-mock.json"));
    assert!(t.app_errors.is_empty(), "{:?}", t.app_errors);
}

fn host_app(id: &str, labels: Value, tasks: Value) -> Value {
    json!({"id": id, "version": "v2", "portDefinitions": [{"port": 10080, "protocol": "udp,tcp", "labels": labels}], "tasks": tasks})
}

#[test]
fn vip_labels_give_ip_and_named_vips_for_each_protocol() {
    let apps = json!({"apps": [host_app(
        "/web",
        json!({"VIP_0": "10.0.0.1:80", "VIP_1": "/web:8080", "HAPROXY_GROUP": "external", "VIP_2": "broken"}),
        json!([{"id": "t1", "host": "agent-1.example", "ports": [31001], "state": "TASK_RUNNING"}]),
    )]});
    let t = run(&apps);
    let named = t.named_vips["/web"];
    let s = summary(&t);
    for proto in ["tcp", "udp"] {
        assert!(s.contains(&format!("10.0.0.1:80/{proto} 10.0.0.1:80 -> 10.0.9.1:31001/1")), "{s:#?}");
        assert!(s.contains(&format!("{named}:8080/{proto} /web:8080 -> 10.0.9.1:31001/1")), "{s:#?}");
        assert!(s.contains(&format!("*:10080/{proto} /web:0 -> 10.0.9.1:31001/1")), "{s:#?}");
    }
    assert_eq!(s.len(), 6, "{s:#?}");
    assert!(t.warnings.iter().any(|(_, w)| w.contains("VIP_2")), "{:?}", t.warnings);
}

#[test]
fn task_states_and_health_decide_active_draining_or_absent() {
    let tasks = json!([
        {"id": "running", "host": "10.0.0.1", "ports": [1], "state": "TASK_RUNNING", "healthCheckResults": [{"alive": true}]},
        {"id": "unhealthy", "host": "10.0.0.2", "ports": [1], "state": "TASK_RUNNING", "healthCheckResults": [{"alive": true}, {"alive": false}]},
        {"id": "killing", "host": "10.0.0.3", "ports": [1], "state": "TASK_KILLING", "healthCheckResults": [{"alive": true}]},
        {"id": "unreachable", "host": "10.0.0.4", "ports": [1], "state": "TASK_UNREACHABLE"},
        {"id": "staging", "host": "10.0.0.5", "ports": [], "state": "TASK_STAGING"},
        {"id": "failed", "host": "10.0.0.6", "ports": [1], "state": "TASK_FAILED"},
        {"id": "unresolvable", "host": "nowhere.example", "ports": [1], "state": "TASK_RUNNING", "healthCheckResults": [{"alive": true}]}
    ]);
    let mut app = host_app("/a", json!({}), tasks);
    app["healthChecks"] = json!([{"protocol": "MESOS_HTTP"}]);
    app["portDefinitions"][0]["protocol"] = json!("tcp");
    let t = run(&json!({"apps": [app]}));
    assert_eq!(summary(&t), ["*:10080/tcp /a:0 -> 10.0.0.1:1/1,10.0.0.2:1/0,10.0.0.3:1/0,10.0.0.4:1/0"]);
    assert!(t.warnings.iter().any(|(_, w)| w.contains("unresolvable") && w.contains("does not resolve")), "{:?}", t.warnings);
}

#[test]
fn old_tasks_drain_once_the_new_version_has_an_active_task() {
    let tasks = |new_state: &str| {
        json!([
            {"id": "old", "host": "10.0.0.1", "ports": [1], "state": "TASK_RUNNING", "version": "v1"},
            {"id": "new", "host": "10.0.0.2", "ports": [1], "state": new_state, "version": "v2"}
        ])
    };
    let mut app = host_app("/a", json!({}), tasks("TASK_STAGING"));
    app["deployments"] = json!([{"id": "d1"}]);
    app["portDefinitions"][0]["protocol"] = json!("tcp");
    assert_eq!(summary(&run(&json!({"apps": [app.clone()]}))), ["*:10080/tcp /a:0 -> 10.0.0.1:1/1"]);
    app["tasks"] = tasks("TASK_RUNNING");
    assert_eq!(summary(&run(&json!({"apps": [app]}))), ["*:10080/tcp /a:0 -> 10.0.0.1:1/0,10.0.0.2:1/1"]);
}

#[test]
fn container_networks_use_the_task_ip_and_container_port() {
    let mut app = fixture("marathon/networking/app-def.user-net-new.json");
    app["version"] = json!("v1");
    // A request body: the response Marathon serves carries the assigned service port.
    app["container"]["portMappings"][0]["servicePort"] = json!(10101);
    app["tasks"] = json!([
        {"id": "a", "host": "10.0.0.9", "ports": [], "ipAddresses": [{"ipAddress": "9.0.0.5", "protocol": "IPv4"}], "state": "TASK_RUNNING"},
        {"id": "b", "host": "10.0.0.9", "ports": [], "state": "TASK_RUNNING"}
    ]);
    let t = run(&json!({"apps": [app]}));
    let s = summary(&t);
    assert_eq!(s, ["*:10101/tcp user-net-new:0 -> 9.0.0.5:80/1"]);
    assert!(t.warnings.iter().any(|(_, w)| w.contains("no ipAddresses")), "{:?}", t.warnings);
}

#[test]
fn marathon_1_4_user_network_and_bridge_definitions_translate() {
    for path in ["marathon/networking/app-def.user-net-old.json", "marathon/networking/app-def.bridge-net-old.json", "marathon/networking/app-def.bridge-net-new.json", "marathon/networking/app-def.host-net-old.json", "marathon/networking/app-def.host-net-new.json"] {
        let t = run(&json!({"apps": [fixture(path)]}));
        assert!(t.app_errors.is_empty(), "{path}: {:?}", t.app_errors);
    }
}

#[test]
fn one_malformed_app_is_reported_and_the_others_apply() {
    let good = host_app("/good", json!({}), json!([{"id": "t", "host": "10.0.0.1", "ports": [5], "state": "TASK_RUNNING"}]));
    let bad = json!({"id": "/bad", "portDefinitions": "not a list"});
    let t = run(&json!({"apps": [bad, good]}));
    assert_eq!(t.app_errors.len(), 1);
    assert_eq!(t.app_errors[0].0, "/bad");
    assert_eq!(t.desired.len(), 2, "the good app's tcp and udp service ports");
}

#[test]
fn an_incremental_update_equals_a_translation_from_scratch() {
    let apps = |extra_port: u64, vip: &str| {
        json!({"apps": (0..30).map(|i| {
            let port = if i == 7 { extra_port } else { 31000 + i };
            json!({"id": format!("/app-{i}"), "networks": [{"mode": "host"}],
                "portDefinitions": [{"port": 10000 + i, "protocol": "tcp", "labels": if i % 10 == 3 { json!({"VIP_0": vip}) } else { json!({}) }}],
                "tasks": [{"id": format!("app-{i}.t1"), "host": "10.0.1.1", "ports": [port], "state": "TASK_RUNNING"},
                          {"id": format!("app-{i}.t2"), "host": "10.0.1.2", "ports": [port], "state": "TASK_RUNNING"}]})
        }).collect::<Vec<_>>()})
    };
    let parse = |v: &Value| parse_apps(&serde_json::to_vec(v).unwrap()).unwrap().0;
    let before = parse(&apps(31007, "/shared:80"));
    let (mut translator, mut health) = (Translator::default(), HealthMemory::default());
    translator.rebuild(before.iter(), &mut dns(), &mut health, &vips());
    for (after, changed) in [
        (parse(&apps(41007, "/shared:80")), vec!["/app-7"]),
        // A shared named VIP's member changes: the merged service follows.
        (parse(&apps(41007, "10.9.9.9:80")), vec!["/app-3", "/app-13", "/app-23"]),
    ] {
        let changed: BTreeSet<String> = changed.into_iter().map(String::from).collect();
        translator.update(after.iter(), |id| after.iter().find(|a| a.id == id), &changed, &mut dns(), &mut health, &vips());
        let scratch = translate(after.iter(), Vec::new(), &mut dns(), &mut HealthMemory::default(), &vips());
        assert_eq!(translator.desired(), &scratch.desired);
        assert_eq!(translator.named_vips(), &scratch.named_vips);
    }
    // An app gone from the model takes its services with it.
    let fewer: Vec<App> = parse(&apps(41007, "10.9.9.9:80")).into_iter().filter(|a| a.id != "/app-5").collect();
    translator.update(fewer.iter(), |id| fewer.iter().find(|a| a.id == id), &BTreeSet::from(["/app-5".to_string()]), &mut dns(), &mut health, &vips());
    assert_eq!(translator.desired(), &translate(fewer.iter(), Vec::new(), &mut dns(), &mut HealthMemory::default(), &vips()).desired);
}

#[test]
fn groups_come_per_port_then_per_app_and_a_bad_one_keeps_the_port_off() {
    let task = json!([{"id": "t1", "host": "agent-1.example", "ports": [31001, 31002, 31003], "state": "TASK_RUNNING"}]);
    let app = json!({"id": "/db", "version": "v2", "tasks": task,
        "labels": {"HAPROXY_GROUP": "internal, admin", "HAPROXY_1_GROUP": "external", "HAPROXY_2_GROUP": "in ternal"},
        "portDefinitions": [{"port": 10001}, {"port": 10002}, {"port": 10003}]});
    let t = run(&json!({"apps": [app]}));
    let groups = |port: u16| {
        let service = t.desired.values().find(|s| s.id.port == port && !s.id.is_v6());
        service.map(|s| s.groups.iter().cloned().collect::<Vec<_>>())
    };
    assert_eq!(groups(10001), Some(vec!["admin".to_owned(), "internal".to_owned()]), "HAPROXY_GROUP, split on commas");
    assert_eq!(groups(10002), Some(vec!["external".to_owned()]), "HAPROXY_1_GROUP wins for port 1");
    assert_eq!(groups(10003), None, "an invalid group: off, not served everywhere");
    assert!(t.warnings.iter().any(|(app, w)| app == "/db" && w.contains("port 2: not served: HAPROXY_2_GROUP")), "{:?}", t.warnings);
}

#[test]
fn source_ranges_come_per_port_and_a_bad_one_keeps_the_port_off() {
    let task = json!([{"id": "t1", "host": "agent-1.example", "ports": [31001, 31002, 31003], "state": "TASK_RUNNING"}]);
    let app = json!({"id": "/db", "version": "v2", "tasks": task,
        "labels": {"HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "167.114.239.226 167.114.238.0/22",
                   "HAPROXY_1_BACKEND_NETWORK_ALLOWED_ACL": " ",
                   "HAPROXY_2_BACKEND_NETWORK_ALLOWED_ACL": "10.0.0.0/8 everyone"},
        "portDefinitions": [{"port": 10001}, {"port": 10002}, {"port": 10003}]});
    let t = run(&json!({"apps": [app]}));
    let sources = |port: u16| {
        let service = t.desired.values().find(|s| s.id.port == port && !s.id.is_v6());
        service.map(|s| s.sources.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    assert_eq!(sources(10001), Some(vec!["167.114.236.0/22".to_owned(), "167.114.239.226/32".to_owned()]));
    assert_eq!(sources(10002), Some(vec![]), "blank, as marathon-lb reads it: every client");
    assert_eq!(sources(10003), None, "an invalid range: off, never open to everyone");
    let why = "port 2: not served: HAPROXY_2_BACKEND_NETWORK_ALLOWED_ACL: \"everyone\" is not";
    assert!(t.warnings.iter().any(|(app, w)| app == "/db" && w.contains(why)), "{:?}", t.warnings);
}
