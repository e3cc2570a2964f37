use std::{net::IpAddr, path::PathBuf};

use super::*;
use crate::{
    desired::{Desired, ServiceAddr},
    sources::marathon::{
        resolve::Resolver,
        translate::{HealthMemory, Translator},
        vip::VipRange,
    },
};

struct NoDns;

impl Resolver for NoDns {
    fn resolve(&mut self, _: &str) -> Option<IpAddr> {
        None
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/marathon/marathon/pods").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The services of `apps`, as the agent translates them.
fn desired(apps: &[App]) -> Desired {
    let mut translator = Translator::default();
    translator.rebuild(apps.iter(), &mut NoDns, &mut HealthMemory::default(), &"11.0.0.0/8".parse::<VipRange>().unwrap());
    translator.desired().clone()
}

/// (VIP service name, [(backend, weight)]) of every VIP service.
fn vip_backends(desired: &Desired) -> Vec<(String, Vec<(String, u32)>)> {
    let vips = desired.values().filter(|s| matches!(s.id.addr, ServiceAddr::Vip(_)));
    let mut out: Vec<_> = vips.map(|s| (s.name.clone(), s.backends.iter().map(|b| (format!("{}:{}", b.addr, b.port), b.weight)).collect())).collect();
    out.sort();
    out
}

fn status_app(status: PodStatus) -> App {
    to_app(status.spec.expect("a spec"), status.instances.as_deref().unwrap_or_default())
}

#[test]
fn a_container_network_pod_is_balanced_on_its_instances_addresses_and_container_ports() {
    // DC/OS's productpage pod (istio-on-mesos): one endpoint with VIP_0, a second container
    // without endpoints, an IP per instance on the `dcos` network.
    let (statuses, errors) = parse_each::<PodStatus>(&fixture("pod-status.container-net-dcos.istio-on-mesos-2019.json")).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let app = status_app(statuses.into_iter().next().unwrap());
    assert_eq!(app.id, "/productpage");
    assert_eq!(vip_backends(&desired(&[app])), [("/productpage:9080".to_owned(), vec![("9.0.6.3:9080".to_owned(), 1)])]);
}

#[test]
fn dcos_ui_captures_of_host_and_container_pods_translate() {
    // dcos-ui's /v2/groups?embed=group.pods… capture: pods with their status, as `pods` of groups.
    let groups: serde_json::Value = serde_json::from_slice(&fixture("groups-embed-pods.pod-status.dcos-ui-2017-2018.json")).unwrap();
    let mut found = Vec::new();
    let mut stack = vec![&groups];
    while let Some(value) = stack.pop() {
        if value.get("spec").is_some() && value.get("instances").is_some() {
            found.push(serde_json::from_value::<PodStatus>(value.clone()).unwrap());
        }
        stack.extend(value.as_object().into_iter().flat_map(|o| o.values()).chain(value.as_array().into_iter().flatten()));
    }
    let apps: Vec<App> = found.into_iter().map(status_app).collect();
    assert!(apps.iter().any(|a| a.id == "/podses"), "the host-mode pod (no endpoints)");
    assert_eq!(vip_backends(&desired(&apps)), [("/bar:500".to_owned(), vec![("9.0.2.2:200".to_owned(), 1)])]);
}

/// Marathon's ports-pod system test (host networking, two containers with an http health check
/// each), with an instance status as `PodStatusConversion` writes one: the health-checked
/// endpoint carries `healthy`.
fn ports_pod(container_states: [&str; 2], instance: &str, healthy: [bool; 2]) -> App {
    let mut pod: Pod = serde_json::from_slice(&fixture("pod-def.ports-pod.marathon-system-test.json")).unwrap();
    for (i, container) in pod.containers.iter_mut().flatten().enumerate() {
        container.endpoints.iter_mut().flatten().for_each(|e| e.labels.0.push(("VIP_0".into(), format!("/ports-{i}:80"))));
    }
    let names: Vec<(String, String)> = pod
        .containers
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.endpoints.iter().flatten().next().unwrap().name.clone()))
        .collect();
    let containers = names.iter().zip(container_states).zip(healthy).enumerate().map(|(i, (((c, e), state), healthy))| {
        serde_json::json!({"name": c, "status": state, "endpoints": [{"name": e, "allocatedHostPort": 31000 + i, "healthy": healthy}], "conditions": []})
    });
    let instance = serde_json::json!({"id": "ports-pod.instance-1", "status": instance, "agentHostname": "10.0.9.1",
        "networks": [{"addresses": ["10.0.9.1"]}], "containers": containers.collect::<Vec<_>>(),
        "specReference": "/v2/pods/ports-pod::versions/2026-01-01T00:00:00.000Z"});
    to_app(pod, &[serde_json::from_value(instance).unwrap()])
}

#[test]
fn a_host_network_pod_is_balanced_on_the_agent_and_its_allocated_host_ports_per_endpoint() {
    let app = ports_pod(["TASK_RUNNING", "TASK_RUNNING"], "STABLE", [true, true]);
    assert_eq!(app.health_checks.as_ref().map(Vec::len), Some(1), "health-checked");
    let services = vip_backends(&desired(&[app]));
    assert_eq!(services, [("/ports-0:80".to_owned(), vec![("10.0.9.1:31000".to_owned(), 1)]), ("/ports-1:80".to_owned(), vec![("10.0.9.1:31001".to_owned(), 1)])]);
}

#[test]
fn an_unhealthy_unreachable_or_killed_instance_drains_and_a_terminal_one_leaves() {
    let weights = |app: App| vip_backends(&desired(&[app])).into_iter().map(|(_, b)| b.first().map(|b| b.1)).collect::<Vec<_>>();
    assert_eq!(weights(ports_pod(["TASK_RUNNING", "TASK_RUNNING"], "DEGRADED", [true, false])), [Some(0), Some(0)], "a container unhealthy");
    assert_eq!(weights(ports_pod(["TASK_UNREACHABLE", "TASK_RUNNING"], "DEGRADED", [true, true])), [Some(0), Some(0)], "unreachable");
    assert_eq!(weights(ports_pod(["TASK_KILLING", "TASK_RUNNING"], "TERMINAL", [true, true])), [Some(0), Some(0)], "being killed");
    assert_eq!(weights(ports_pod(["TASK_KILLED", "TASK_KILLED"], "TERMINAL", [true, true])), [None, None], "gone");
    assert_eq!(weights(ports_pod(["TASK_STAGING", "TASK_STAGING"], "STAGING", [true, true])), [None, None], "not yet");
}

#[test]
fn endpoint_haproxy_labels_are_their_ports_and_protocols_read_in_both_forms() {
    let pod: Pod = serde_json::from_value(serde_json::json!({"id": "/web", "labels": {"HAPROXY_GROUP": "external", "owner": "x"},
        "containers": [{"name": "a", "endpoints": [
            {"name": "http", "hostPort": 0, "protocol": ["HTTP"], "labels": {"HAPROXY_GROUP": "internal", "VIP_0": "10.0.0.9:80"}},
            {"name": "dns", "hostPort": 0, "protocol": ["udp", "tcp"], "labels": {"HAPROXY_1_BACKEND_NETWORK_ALLOWED_ACL": "10.0.0.0/8"}},
            {"name": "old", "hostPort": 0, "protocol": "udp"}]}]}))
    .unwrap();
    let app = to_app(pod, &[]);
    let labels: Vec<(&str, &str)> = app.labels.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(labels, [("HAPROXY_0_GROUP", "internal"), ("HAPROXY_1_BACKEND_NETWORK_ALLOWED_ACL", "10.0.0.0/8"), ("HAPROXY_GROUP", "external")]);
    let protocols: Vec<Option<&str>> = app.port_definitions.iter().flatten().map(|d| d.protocol.as_deref()).collect();
    assert_eq!(protocols, [Some("tcp"), Some("udp,tcp"), Some("udp")]);
}

#[test]
fn a_malformed_pod_is_reported_alone_and_a_body_that_is_no_json_is_refused() {
    let body = br#"[{"id": "/good", "containers": []}, {"id": "/bad", "containers": "garbage"}]"#;
    let (pods, errors) = parse_each::<Pod>(body).unwrap();
    assert_eq!(pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["/good"]);
    assert!(errors.len() == 1 && errors[0].0 == "/bad" && errors[0].1.starts_with("containers"), "{errors:?}");
    // Marathon's own 2016 RAML example has a trailing comma.
    assert!(parse_each::<Pod>(&fixture("pod.marathon-raml-2016-09-prerelease.invalid.jsonc")).is_err());
    let (pods, _) = parse_each::<Pod>(&fixture("pod.marathon-raml.json")).unwrap();
    assert_eq!(pods[0].id, "/foo");
}

#[test]
fn a_pod_endpoint_with_a_vhost_is_routed_over_http_to_its_vips_backends() {
    let pod: Pod = serde_json::from_value(serde_json::json!({"id": "/shop", "labels": {"HAPROXY_GROUP": "external"},
        "networks": [{"mode": "host"}],
        "containers": [{"name": "web", "endpoints": [
            {"name": "http", "hostPort": 0, "protocol": ["tcp"], "labels": {"VIP_0": "/shop:80", "HAPROXY_VHOST": "shop.example.com"}},
            {"name": "metrics", "hostPort": 0, "protocol": ["tcp"], "labels": {"VIP_0": "/shop-metrics:9100"}}]}]}))
    .unwrap();
    let instance: Instance = serde_json::from_value(serde_json::json!({"id": "shop.instance-1", "status": "STABLE", "agentHostname": "10.0.9.1",
        "containers": [{"name": "web", "status": "TASK_RUNNING", "endpoints": [{"name": "http", "allocatedHostPort": 31080}, {"name": "metrics", "allocatedHostPort": 31091}]}]}))
    .unwrap();
    let app = to_app(pod, &[instance]);
    let mut translator = Translator::default();
    translator.rebuild([&app].into_iter(), &mut NoDns, &mut HealthMemory::default(), &"11.0.0.0/8".parse::<VipRange>().unwrap());
    let ports: Vec<_> = translator.http_ports().collect();
    assert_eq!(ports.len(), 1, "only the endpoint with a vhost: {ports:?}");
    let (app_id, port) = ports[0];
    assert_eq!((app_id, port.index, port.hosts.as_slice(), port.group.as_deref()), ("/shop", 0, &["shop.example.com".to_owned()][..], Some("external")));
    let shop = translator.named_vips()["/shop"];
    assert_eq!(port.services, [crate::desired::ServiceId { addr: ServiceAddr::Vip(shop), port: 80, proto: crate::desired::Proto::Tcp }]);
    let backends: Vec<_> = translator.desired()[&port.services[0]].backends.iter().map(|b| (b.addr.to_string(), b.port)).collect();
    assert_eq!(backends, [("10.0.9.1".to_owned(), 31080)]);
}
