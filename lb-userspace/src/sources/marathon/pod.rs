//! Marathon pods (1.4+): their JSON (`GET /v2/pods`, `GET /v2/pods/::status`) as far as
//! balancing needs it, and each pod with its instances as the [`App`] the translation already
//! understands — so VIP labels, groups, source ranges, health and draining mean for a pod's
//! endpoints exactly what they mean for an app's ports.
//!
//! The mapping (field rules from Marathon's `PodStatusConversion.scala`, `PodNormalization.scala`
//! and `TaskGroupBuilder.scala`; real payloads in `tests/fixtures/marathon/marathon/pods/`):
//! - every endpoint of every container, in order, is a port (`n` of `HAPROXY_{n}_*`); its
//!   labels are the port's (`VIP_0: /web:80`); `HAPROXY_*` labels on an endpoint apply to that
//!   port (`HAPROXY_GROUP` there is `HAPROXY_{n}_GROUP`). Pods have no service ports.
//! - networking: `host` (no networks, or mode host) → the agent's host and the endpoint's
//!   allocated host port; `container/bridge` → the same; `container` → the instance's address
//!   and the container port (the host port when none is given, as Marathon does).
//! - an instance is a task: STABLE is running; DEGRADED with a container unreachable drains;
//!   a container being killed drains; PENDING, STAGING and TERMINAL instances are no backends.
//!   Health: every `healthy` an endpoint or condition reports (none: none reported).

use serde::{de::IgnoredAny, Deserialize};
use serde_json::value::RawValue;

use super::app::{parse_one, App, Container, Labels, Network, PortDefinition, PortMapping, Task, TaskIp};

/// A pod definition, as far as balancing needs it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Pod {
    pub id: String,
    pub version: Option<String>,
    pub labels: Labels,
    pub networks: Option<Vec<Network>>,
    pub containers: Option<Vec<PodContainer>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PodContainer {
    pub name: String,
    pub endpoints: Option<Vec<Endpoint>>,
    /// Only whether there is one matters (`null` and `{}` are none).
    pub health_check: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Endpoint {
    pub name: String,
    pub container_port: Option<u32>,
    pub host_port: Option<u32>,
    /// `["tcp"]` since 1.4.0; a string in pre-release drafts (both read).
    #[serde(deserialize_with = "protocols")]
    pub protocol: Option<String>,
    pub labels: Labels,
}

/// `["udp", "tcp"]` or `"tcp"` → `"udp,tcp"` / `"tcp"`, the form app ports use; `http` (a
/// protocol Marathon allows for endpoints) is TCP.
fn protocols<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Protocols {
        One(String),
        Many(Vec<String>),
    }
    let names = match Option::<Protocols>::deserialize(deserializer)? {
        None => return Ok(None),
        Some(Protocols::One(name)) => vec![name],
        Some(Protocols::Many(names)) => names,
    };
    let transport = |name: &str| if name.eq_ignore_ascii_case("http") { "tcp".to_owned() } else { name.to_ascii_lowercase() };
    let mut names: Vec<String> = names.iter().map(|n| transport(n)).collect();
    names.dedup();
    Ok((!names.is_empty()).then(|| names.join(",")))
}

/// One element of `/v2/pods/::status` (or the body of `/v2/pods/{id}::status`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    pub id: String,
    pub spec: Option<Pod>,
    pub instances: Option<Vec<Instance>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Instance {
    pub id: String,
    /// PENDING, STAGING, STABLE, DEGRADED, TERMINAL.
    pub status: Option<String>,
    pub agent_hostname: Option<String>,
    pub networks: Option<Vec<InstanceNetwork>>,
    pub containers: Option<Vec<ContainerStatus>>,
    /// `/v2/pods/<id>::versions/<version>`.
    pub spec_reference: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct InstanceNetwork {
    pub addresses: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerStatus {
    pub name: String,
    /// A Mesos task state (`TASK_RUNNING`).
    pub status: Option<String>,
    pub endpoints: Option<Vec<EndpointStatus>>,
    pub conditions: Option<Vec<Condition>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointStatus {
    pub name: String,
    pub allocated_host_port: Option<u32>,
    /// Only on the endpoint a health check names.
    pub healthy: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Condition {
    pub name: Option<String>,
    pub value: Option<String>,
}

/// Where a pod's endpoints are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodNet {
    Host,
    Bridge,
    Container,
}

fn pod_net(pod: &Pod) -> PodNet {
    // The last network decides, as for apps; a network without a mode is `container` (RAML).
    match pod.networks.iter().flatten().last().map(|n| n.mode.as_deref().unwrap_or("container")) {
        None | Some("host") => PodNet::Host,
        Some("container/bridge") => PodNet::Bridge,
        Some(_) => PodNet::Container,
    }
}

/// The pod `pod` with its `instances` as an app.
pub fn to_app(pod: Pod, instances: &[Instance]) -> App {
    let net = pod_net(&pod);
    let containers = pod.containers.unwrap_or_default();
    let endpoints: Vec<(&PodContainer, &Endpoint)> =
        containers.iter().flat_map(|c| c.endpoints.iter().flatten().map(move |e| (c, e))).collect();
    let mut labels = pod.labels.0;
    labels.retain(|(key, _)| key.starts_with("HAPROXY_"));
    for (index, (_, endpoint)) in endpoints.iter().enumerate() {
        labels.extend(endpoint_haproxy_labels(index, &endpoint.labels));
    }
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels.dedup_by(|later, kept| later.0 == kept.0);
    let checked = containers.iter().any(|c| c.health_check.as_ref().is_some_and(|h| !h.is_empty()));
    let mut app = App {
        id: pod.id,
        version: pod.version,
        health_checks: checked.then(|| vec![IgnoredAny]),
        tasks: Some(instances.iter().map(|i| instance_task(i, &endpoints)).collect()),
        labels: Labels(labels),
        ..App::default()
    };
    match net {
        PodNet::Host => {
            app.networks = Some(vec![Network { mode: Some("host".into()) }]);
            app.port_definitions = Some(endpoints.iter().map(|(_, e)| port_definition(e)).collect());
        }
        PodNet::Bridge | PodNet::Container => {
            let mode = if net == PodNet::Bridge { "container/bridge" } else { "container" };
            app.networks = Some(vec![Network { mode: Some(mode.into()) }]);
            let mappings = endpoints.iter().map(|(_, e)| port_mapping(e)).collect();
            app.container = Some(Container { port_mappings: Some(mappings), ..Container::default() });
        }
    }
    app
}

/// An endpoint's `HAPROXY_*` labels as app labels of port `index`: `HAPROXY_GROUP` →
/// `HAPROXY_{index}_GROUP`; one that names a port already is kept.
fn endpoint_haproxy_labels(index: usize, labels: &Labels) -> impl Iterator<Item = (String, String)> + '_ {
    labels.0.iter().filter_map(move |(key, value)| {
        let rest = key.strip_prefix("HAPROXY_")?;
        let indexed = rest.split_once('_').is_some_and(|(n, _)| n.parse::<usize>().is_ok());
        let key = if indexed { key.clone() } else { format!("HAPROXY_{index}_{rest}") };
        Some((key, value.clone()))
    })
}

fn port_definition(endpoint: &Endpoint) -> PortDefinition {
    PortDefinition { port: None, protocol: endpoint.protocol.clone(), name: Some(endpoint.name.clone()), labels: endpoint.labels.clone() }
}

fn port_mapping(endpoint: &Endpoint) -> PortMapping {
    // No container port (or 0): the host port, as Marathon's TaskGroupBuilder maps it.
    let container_port = endpoint.container_port.filter(|&p| p > 0).or(endpoint.host_port.filter(|&p| p > 0));
    PortMapping {
        container_port,
        host_port: endpoint.host_port,
        service_port: None,
        protocol: endpoint.protocol.clone(),
        name: Some(endpoint.name.clone()),
        labels: endpoint.labels.clone(),
    }
}

/// An instance as a task of the pod's app: its host, each endpoint's allocated host port (by
/// container and endpoint name: the status moves a health-checked endpoint to the end), its
/// addresses, a task state and its health.
fn instance_task(instance: &Instance, endpoints: &[(&PodContainer, &Endpoint)]) -> Task {
    let statuses = instance.containers.as_deref().unwrap_or_default();
    let allocated = |container: &str, endpoint: &str| {
        let status = statuses.iter().find(|s| s.name == container)?;
        status.endpoints.iter().flatten().find(|e| e.name == endpoint)?.allocated_host_port
    };
    let ports = endpoints.iter().map(|(c, e)| allocated(&c.name, &e.name)).collect();
    let addresses = instance.networks.iter().flatten().flat_map(|n| n.addresses.iter().flatten());
    let ip_addresses = addresses.map(|a| TaskIp { ip_address: Some(a.clone()) }).collect();
    Task {
        id: instance.id.clone(),
        host: instance.agent_hostname.clone(),
        slave_id: None,
        ports: Some(ports),
        ip_addresses: Some(ip_addresses),
        state: Some(instance_state(instance, statuses).into()),
        version: instance.spec_reference.as_deref().and_then(|r| r.rsplit_once("::versions/")).map(|(_, v)| v.to_owned()),
        all_alive: health(statuses),
    }
}

/// The task state an instance counts as (translate's task rules then apply).
fn instance_state(instance: &Instance, containers: &[ContainerStatus]) -> &'static str {
    let any = |state: &str| containers.iter().any(|c| c.status.as_deref() == Some(state));
    if any("TASK_KILLING") {
        return "TASK_KILLING";
    }
    let all_running = !containers.is_empty() && containers.iter().all(|c| c.status.as_deref() == Some("TASK_RUNNING"));
    match instance.status.as_deref() {
        Some("STABLE") => "TASK_RUNNING",
        // A container unhealthy: running, and its health (false) drains it.
        Some("DEGRADED") if all_running => "TASK_RUNNING",
        // Unreachable (or a container not running): drains.
        Some("DEGRADED") => "TASK_UNREACHABLE",
        Some("TERMINAL") => "TASK_KILLED",
        _ => "TASK_STAGING",
    }
}

/// Whether every health an instance's containers report is healthy; None when none reports any.
fn health(containers: &[ContainerStatus]) -> Option<bool> {
    let endpoints = containers.iter().flat_map(|c| c.endpoints.iter().flatten()).filter_map(|e| e.healthy);
    let conditions = containers
        .iter()
        .flat_map(|c| c.conditions.iter().flatten())
        .filter(|c| c.name.as_deref() == Some("healthy"))
        .filter_map(|c| c.value.as_deref().map(|v| v == "true"));
    let reported: Vec<bool> = endpoints.chain(conditions).collect();
    (!reported.is_empty()).then(|| reported.iter().all(|&h| h))
}

/// Why a pods response is not one at all (single pods that do not parse are reported beside
/// the ones that do).
#[derive(Debug, thiserror::Error)]
#[error("not a Marathon pods response: {0}")]
pub struct PodsResponseError(#[source] serde_json::Error);

/// The pods of a response that parse, and (pod id, why) for those that do not.
pub type Parsed<T> = (Vec<T>, Vec<(String, String)>);

/// Each element of a JSON array (`/v2/pods`, `/v2/pods/::status`) or one object (a single
/// pod's), parsed on its own so one malformed pod is reported alone.
pub fn parse_each<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<Parsed<T>, PodsResponseError> {
    let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let raw: Vec<&RawValue> = if is_array {
        serde_json::from_slice(body).map_err(PodsResponseError)?
    } else {
        vec![serde_json::from_slice(body).map_err(PodsResponseError)?]
    };
    let (mut parsed, mut errors) = (Vec::new(), Vec::new());
    for one in raw {
        match parse_one::<T>(one) {
            Ok(value) => parsed.push(value),
            Err(unparsed) => errors.push(unparsed),
        }
    }
    Ok((parsed, errors))
}

#[cfg(test)]
mod tests;
