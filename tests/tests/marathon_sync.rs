//! Marathon sync end to end: a Marathon-compatible server drives the agent; traffic follows
//! scale-up, task kills, health flips and VIP labels; an outage changes nothing; a dead event
//! stream is reconnected; credentials and a standby's redirect are honoured.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_tests::{
    agent::{lb_ok, wait_for_services},
    marathon_cluster::{small_app, task, web, MarathonCluster as Cluster, Urls},
    marathon_server::{AppSpec, TaskSpec},
    servers::connect_and_greet,
};
use serde_json::Value;

#[test]
fn traffic_follows_scale_up_task_kill_and_health_flip() {
    let c = Cluster::new(&[]);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    let services = c.services();
    assert!(services.as_array().unwrap().iter().any(|s| s["address"] == "0.0.0.0" && s["port"] == 10000 && s["name"] == "/web:0"), "{services}");
    let per = c.spread(60);
    assert_eq!(per.keys().collect::<Vec<_>>(), ["backend-0", "backend-1"], "{per:?}");

    // Scale up.
    c.marathon.update("/web", |app| app.tasks.push(task(2, true)));
    c.wait_backends(&[(0, "active"), (1, "active"), (2, "active")]);
    assert!(c.spread(90).contains_key("backend-2"));

    // Kill a task: draining while it shuts down, then gone.
    c.marathon.update("/web", |app| app.tasks[1].state = "TASK_KILLING".into());
    c.wait_backends(&[(0, "active"), (1, "draining"), (2, "active")]);
    assert!(!c.spread(60).contains_key("backend-1"));
    c.marathon.update("/web", |app| {
        app.tasks.remove(1);
    });
    c.wait_backends(&[(0, "active"), (2, "active")]);

    // Health flip.
    c.marathon.update("/web", |app| app.tasks[0].alive = Some(false));
    c.wait_backends(&[(0, "draining"), (2, "active")]);
    assert_eq!(c.spread(30).keys().collect::<Vec<_>>(), ["backend-2"]);
    c.marathon.update("/web", |app| app.tasks[0].alive = Some(true));
    c.wait_backends(&[(0, "active"), (2, "active")]);
}

#[test]
fn vip_labels_added_and_removed() {
    let c = Cluster::new(&["--vip-cidr", "10.0.0.0/24"]);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    c.marathon.update("/web", |app| {
        app.labels.insert("VIP_1".into(), "/web:8080".into());
    });
    let json = wait_for_services(&c.pins, |j| j.as_array().unwrap().iter().any(|s| s["name"] == "/web:8080")).unwrap();
    let named = json.as_array().unwrap().iter().find(|s| s["name"] == "/web:8080").unwrap()["address"].as_str().unwrap().to_string();
    let vips: BTreeMap<String, String> = serde_json::from_str(&lb_ok(None, &["vips", "--json", "--pin-dir", &c.pins.arg()]).unwrap()).unwrap();
    assert_eq!(vips.get("/web"), Some(&named));
    // The named VIP carries traffic (it is in the client's routed 10.0.0.0/24).
    let addr: SocketAddr = format!("{named}:8080").parse().unwrap();
    let name = c.topo.client.run(move || connect_and_greet(addr).unwrap().1).unwrap();
    assert!(name.starts_with("backend-"), "{name}");

    c.marathon.update("/web", |app| {
        app.labels.remove("VIP_1");
    });
    wait_for_services(&c.pins, |j| !j.as_array().unwrap().iter().any(|s| s["name"] == "/web:8080")).unwrap();
}

#[test]
fn an_outage_changes_nothing_and_shows_in_status() {
    let c = Cluster::new(&[]);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    let before = c.services();
    c.marathon.set_outage(true);
    // The stream is cut; the reconnect and re-list fail.
    c.wait_status(|s| !s["marathon"]["last_error"].is_null());
    assert_eq!(c.services(), before, "an outage must not change the programmed services");
    assert_eq!(c.spread(30).len(), 2);
    let human = lb_ok(None, &["status", "--pin-dir", &c.pins.arg()]).unwrap();
    assert!(human.contains("FAILING"), "{human}");

    c.marathon.set_outage(false);
    c.marathon.update("/web", |app| app.tasks.push(task(2, true)));
    c.wait_backends(&[(0, "active"), (1, "active"), (2, "active")]);
    assert!(c.status()["marathon"]["last_error"].is_null());
}

#[test]
fn a_dead_event_stream_is_reconnected_and_relisted() {
    let c = Cluster::new(&[]);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    // Change the apps without an event, then cut the stream: only the re-list after the
    // reconnect can pick the change up.
    {
        let mut apps = vec![web(&[0, 1, 2])];
        apps[0].tasks[2].alive = Some(true);
        c.marathon.cut_streams();
        c.marathon.set_apps(apps);
    }
    c.wait_backends(&[(0, "active"), (1, "active"), (2, "active")]);
    c.wait_status(|s| s["marathon"]["event_stream"].is_string());
}

#[test]
fn basic_auth_and_a_standby_redirect_are_honoured() {
    // The agent knows only the standby; its event stream is redirected (302) to the leader,
    // and both want credentials, which must survive the redirect.
    let c = Cluster::build(&["--marathon-credentials", "ops:s3cret"], |m| m.require_authorization(Some("Basic b3BzOnMzY3JldA==".into())), Urls::Standby);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    c.wait_status(|s| s["marathon"]["event_stream"].is_string());
    // A change announced only on the leader's stream reaches the agent.
    c.standby.as_ref().unwrap().set_apps(vec![web(&[0, 1, 2])]);
    c.marathon.update("/web", |app| app.tasks.push(task(2, true)));
    c.wait_backends(&[(0, "active"), (1, "active"), (2, "active")]);
    let human = lb_ok(None, &["status", "--pin-dir", &c.pins.arg()]).unwrap();
    assert!(human.contains("state:        ok"), "{human}");
}

#[test]
fn a_dcos_token_is_sent_and_a_refused_one_shows_in_status() {
    let c = Cluster::build(&["--marathon-token", "abc.def"], |m| m.require_authorization(Some("token=abc.def".into())), Urls::Leader);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    // The token is revoked: the agent keeps the services and says why.
    c.marathon.require_authorization(Some("token=other".into()));
    c.marathon.cut_streams();
    c.wait_status(|s| s["marathon"]["last_error"].as_str().is_some_and(|e| e.contains("401")));
    assert_eq!(c.spread(20).len(), 2);
}

#[test]
fn a_burst_of_scale_events_on_50_apps_is_applied_without_relisting() {
    let apps: Vec<AppSpec> = (0..50).map(|i| small_app(&format!("/burst/app-{i}"), 10100 + i as u16, i % 3)).collect();
    let c = Cluster::build(&[], |m| m.set_apps([vec![web(&[0, 1])], apps.clone()].concat()), Urls::Leader);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    wait_for_services(&c.pins, |j| j.as_array().unwrap().iter().filter(|s| s["name"].as_str().unwrap().starts_with("/burst/")).count() == 50).unwrap();
    c.wait_status(|s| s["marathon"]["event_stream"].is_string());
    let lists_before = c.marathon.list_requests();

    // Every app scales from one task to two, announced in one burst.
    let mut events = Vec::new();
    for i in 0..50 {
        let id = format!("/burst/app-{i}");
        let extra = TaskSpec { id: format!("burst/app-{i}.task-extra"), ..task((i + 1) % 3, true) };
        events.extend(c.marathon.change(&id, |app| app.tasks.push(extra)));
    }
    c.marathon.send(&events);
    wait_for_services(&c.pins, |j| {
        let burst: Vec<&Value> = j.as_array().unwrap().iter().filter(|s| s["name"].as_str().unwrap().starts_with("/burst/")).collect();
        burst.len() == 50 && burst.iter().all(|s| s["backends"].as_array().unwrap().len() == 2)
    })
    .unwrap();
    let relists = c.marathon.list_requests() - lists_before;
    assert!(relists <= 2, "{relists} full re-lists for a burst of 50 scale events");
    let status = c.status();
    assert!(status["marathon"]["events_applied"].as_u64().unwrap() >= 50, "{status}");
}

#[test]
fn a_malformed_app_keeps_its_service_and_shows_in_status_until_a_good_definition() {
    let c = Cluster::new(&[]);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    c.wait_status(|s| s["marathon"]["event_stream"].is_string());
    c.marathon.update("/web", |app| app.malformed = true);
    c.wait_status(|s| s["marathon"]["skipped_apps"]["/web"].is_string());
    let status = c.status();
    assert_eq!(status["marathon"]["state"], "degraded", "{status}");
    c.wait_backends(&[(0, "active"), (1, "active")]);
    assert_eq!(c.spread(30).len(), 2, "the malformed app's service still carries traffic");
    let human = lb_ok(None, &["status", "--pin-dir", &c.pins.arg()]).unwrap();
    assert!(human.contains("DEGRADED") && human.contains("/web"), "{human}");

    // A full re-list (a new stream) keeps it too.
    let relists = c.status()["marathon"]["relists"].as_u64().unwrap();
    c.marathon.cut_streams();
    c.wait_status(|s| s["marathon"]["relists"].as_u64().unwrap() > relists);
    c.wait_backends(&[(0, "active"), (1, "active")]);

    // The next good definition applies.
    c.marathon.update("/web", |app| {
        app.malformed = false;
        app.tasks.push(task(2, true));
    });
    c.wait_backends(&[(0, "active"), (1, "active"), (2, "active")]);
    c.wait_status(|s| s["marathon"]["state"] == "ok");
}
