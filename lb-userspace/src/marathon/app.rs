//! Marathon's app and task JSON, as far as balancing needs it. Every field is optional and
//! every shape real servers send (1.4 and 1.5+ networking, null values, strings where objects
//! are usual) deserialises; what an app means is decided in `model.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct App {
    pub id: String,
    pub version: Option<String>,
    /// 1.4 IP-per-task (`null` when unused).
    pub ip_address: Option<IpAddressSpec>,
    pub container: Option<Container>,
    /// 1.5+.
    pub networks: Option<Vec<Network>>,
    pub port_definitions: Option<Vec<PortDefinition>>,
    /// ≤1.4 service ports of host/bridge apps.
    pub ports: Option<Vec<Option<u32>>>,
    pub health_checks: Option<Vec<Value>>,
    pub deployments: Option<Vec<Value>>,
    pub tasks: Option<Vec<Task>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IpAddressSpec {
    pub discovery: Option<Discovery>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Discovery {
    pub ports: Option<Vec<DiscoveryPort>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscoveryPort {
    pub number: Option<u32>,
    pub protocol: Option<String>,
    pub labels: Option<BTreeMap<String, Value>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    pub docker: Option<Docker>,
    /// 1.5+ (moved out of `docker`).
    pub port_mappings: Option<Vec<PortMapping>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Docker {
    /// ≤1.4: HOST, BRIDGE, USER, NONE.
    pub network: Option<String>,
    pub port_mappings: Option<Vec<PortMapping>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PortMapping {
    pub container_port: Option<u32>,
    pub host_port: Option<u32>,
    pub service_port: Option<u32>,
    pub protocol: Option<String>,
    pub labels: Option<BTreeMap<String, Value>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Network {
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PortDefinition {
    pub port: Option<u32>,
    pub protocol: Option<String>,
    pub labels: Option<BTreeMap<String, Value>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Task {
    pub id: String,
    pub host: Option<String>,
    pub ports: Option<Vec<Option<u32>>>,
    pub ip_addresses: Option<Vec<TaskIp>>,
    pub state: Option<String>,
    pub version: Option<String>,
    pub health_check_results: Option<Vec<HealthResult>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskIp {
    pub ip_address: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HealthResult {
    pub alive: Option<bool>,
}

/// The string values of a label map (Marathon labels are strings; anything else is ignored).
pub fn string_labels(labels: &Option<BTreeMap<String, Value>>) -> Vec<(String, String)> {
    labels
        .iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect()
}
