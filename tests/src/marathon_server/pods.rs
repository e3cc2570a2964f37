//! Pods for the test Marathon: `/v2/pods`, `/v2/pods/::status`, `/v2/pods/{id}::status`, and
//! the events Marathon 1.4+ sends for them (`pod_created_event` with the request's URI
//! `/v2/pods`, `pod_updated_event`/`pod_deleted_event` with `/v2/pods/<id>`,
//! `instance_changed_event` for each instance whose condition changes). Shapes as Marathon's
//! `PodStatusConversion` writes them (tests/fixtures/marathon/marathon/pods/).

use std::collections::BTreeMap;

use serde_json::{json, Value};

const NOW: &str = "2026-01-01T00:00:00.000Z";

/// One endpoint of a pod (each in a container of its own, `c<i>`, so the agent must match
/// allocated ports by container and endpoint name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub name: String,
    /// `VIP_0` label value.
    pub vip: String,
    /// Further labels (`HAPROXY_VHOST`…).
    pub labels: BTreeMap<String, String>,
}

/// One instance: where it runs and each endpoint's allocated host port, in endpoint order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSpec {
    pub id: String,
    pub host: String,
    pub ports: Vec<u16>,
    /// STABLE, DEGRADED, TERMINAL, STAGING…
    pub status: String,
    /// Every container's Mesos state (TASK_RUNNING, TASK_KILLING…).
    pub container_state: String,
}

impl InstanceSpec {
    pub fn running(pod: &str, n: usize, host: &str, ports: &[u16]) -> Self {
        let id = format!("{}.instance-{n}", pod.trim_start_matches('/').replace('/', "_"));
        Self { id, host: host.into(), ports: ports.to_vec(), status: "STABLE".into(), container_state: "TASK_RUNNING".into() }
    }

    /// The condition `instance_changed_event` reports.
    fn condition(&self) -> &'static str {
        match self.container_state.as_str() {
            "TASK_RUNNING" => "Running",
            "TASK_KILLING" => "Killing",
            "TASK_KILLED" => "Killed",
            _ => "Staging",
        }
    }
}

/// A host-networking pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    pub id: String,
    pub endpoints: Vec<EndpointSpec>,
    pub instances: Vec<InstanceSpec>,
    /// Served with `"containers": "garbage"`, a definition no Marathon would send.
    pub malformed: bool,
}

impl PodSpec {
    pub fn new(id: &str, endpoints: &[(&str, &str)]) -> Self {
        let endpoints = endpoints.iter().map(|(name, vip)| EndpointSpec { name: (*name).into(), vip: (*vip).into(), labels: BTreeMap::new() }).collect();
        Self { id: id.into(), endpoints, instances: Vec::new(), malformed: false }
    }

    pub fn definition(&self) -> Value {
        let containers: Vec<Value> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut labels = e.labels.clone();
                labels.insert("VIP_0".into(), e.vip.clone());
                json!({"name": format!("c{i}"), "resources": {"cpus": 0.1, "mem": 32},
                    "endpoints": [{"name": e.name, "hostPort": 0, "protocol": ["tcp"], "labels": labels}]})
            })
            .collect();
        let containers = if self.malformed { json!("garbage") } else { json!(containers) };
        json!({"id": self.id, "version": NOW, "networks": [{"mode": "host"}], "scaling": {"kind": "fixed", "instances": self.instances.len()},
            "containers": containers})
    }

    pub fn status(&self) -> Value {
        let instances: Vec<Value> = self.instances.iter().map(|i| self.instance_status(i)).collect();
        json!({"id": self.id, "spec": self.definition(), "status": "STABLE", "statusSince": NOW, "instances": instances,
            "terminationHistory": [], "lastUpdated": NOW, "lastChanged": NOW})
    }

    fn instance_status(&self, instance: &InstanceSpec) -> Value {
        // The allocated ports of a container that is not active are not reported.
        let active = instance.container_state == "TASK_RUNNING" || instance.container_state == "TASK_KILLING";
        let containers: Vec<Value> = self
            .endpoints
            .iter()
            .zip(&instance.ports)
            .enumerate()
            .map(|(i, (e, port))| {
                let endpoints = if active { json!([{"name": e.name, "allocatedHostPort": port}]) } else { json!([]) };
                json!({"name": format!("c{i}"), "status": instance.container_state, "statusSince": NOW, "conditions": [],
                    "containerId": format!("{}.c{i}", instance.id), "endpoints": endpoints, "lastUpdated": NOW, "lastChanged": NOW})
            })
            .collect();
        json!({"id": instance.id, "status": instance.status, "statusSince": NOW, "conditions": [], "agentHostname": instance.host,
            "agentId": "agent-1", "networks": [{"addresses": [instance.host]}], "containers": containers,
            "specReference": format!("/v2/pods{}::versions/{NOW}", self.id), "localVolumes": [], "lastUpdated": NOW, "lastChanged": NOW})
    }

    /// The events Marathon sends when this pod changes into `new` (None: deleted); `self` None:
    /// `new` is created.
    pub fn events(old: Option<&PodSpec>, new: Option<&PodSpec>) -> Vec<Value> {
        let event = |kind: &str, uri: String| json!({"eventType": kind, "timestamp": NOW, "clientIp": "10.0.0.1", "uri": uri});
        match (old, new) {
            (None, None) => Vec::new(),
            (None, Some(_)) => vec![event("pod_created_event", "/v2/pods".into())],
            (Some(old), None) => vec![event("pod_deleted_event", format!("/v2/pods{}", old.id))],
            (Some(old), Some(new)) => {
                let mut events = Vec::new();
                if (&old.endpoints, old.malformed) != (&new.endpoints, new.malformed) {
                    events.push(event("pod_updated_event", format!("/v2/pods{}", new.id)));
                }
                let gone = old.instances.iter().filter(|o| !new.instances.iter().any(|n| n.id == o.id));
                let killed: Vec<InstanceSpec> = gone.map(|o| InstanceSpec { container_state: "TASK_KILLED".into(), ..o.clone() }).collect();
                let changed = new.instances.iter().filter(|n| !old.instances.contains(n));
                events.extend(changed.chain(&killed).map(|i| new.instance_changed(i)));
                events
            }
        }
    }

    fn instance_changed(&self, instance: &InstanceSpec) -> Value {
        json!({"eventType": "instance_changed_event", "timestamp": NOW, "instanceId": instance.id, "condition": instance.condition(),
            "runSpecId": self.id, "agentId": "agent-1", "host": instance.host, "runSpecVersion": NOW})
    }
}
