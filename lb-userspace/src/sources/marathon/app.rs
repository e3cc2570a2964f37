//! Marathon's app and task JSON, as far as balancing needs it. Every field is optional and
//! every shape real servers send (1.4 and 1.5+ networking, null values, strings where objects
//! are usual) deserialises; what an app means is decided in `translate.rs`.

use serde::{de::IgnoredAny, Deserialize};
use serde_json::{value::RawValue, Value};

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
    /// Only whether there are any matters (checked apps wait for health results).
    pub health_checks: Option<Vec<IgnoredAny>>,
    /// Only whether there are any matters (a deployment is under way).
    pub deployments: Option<Vec<IgnoredAny>>,
    pub tasks: Option<Vec<Task>>,
    /// App labels marathon-lb reads (`HAPROXY_*`): the HTTP path's routing. Others are dropped.
    #[serde(deserialize_with = "haproxy_labels")]
    pub labels: Labels,
}

fn haproxy_labels<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Labels, D::Error> {
    let mut labels = Labels::deserialize(deserializer)?;
    labels.0.retain(|(key, _)| key.starts_with("HAPROXY_"));
    labels.0.shrink_to_fit();
    Ok(labels)
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
    pub name: Option<String>,
    pub labels: Labels,
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
    pub name: Option<String>,
    pub labels: Labels,
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
    pub name: Option<String>,
    pub labels: Labels,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Task {
    pub id: String,
    pub host: Option<String>,
    /// The Mesos agent's id: its tail is part of a task's DNS name.
    pub slave_id: Option<String>,
    pub ports: Option<Vec<Option<u32>>>,
    pub ip_addresses: Option<Vec<TaskIp>>,
    pub state: Option<String>,
    pub version: Option<String>,
    /// `healthCheckResults` as the one thing balancing reads: whether every result says alive.
    /// None without results (absent, null or empty).
    #[serde(rename = "healthCheckResults", deserialize_with = "all_alive")]
    pub all_alive: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskIp {
    pub ip_address: Option<String>,
}

#[derive(Deserialize)]
struct HealthResult {
    #[serde(default)]
    alive: Option<bool>,
}

/// `healthCheckResults` → whether every result is alive (None when there are none), so a task
/// keeps one flag instead of a list.
fn all_alive<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    let results: Option<Vec<HealthResult>> = Option::deserialize(deserializer)?;
    Ok(results.filter(|r| !r.is_empty()).map(|r| r.iter().all(|r| r.alive == Some(true))))
}

/// A label map's string entries, in key order (Marathon labels are strings; anything else is
/// ignored). A list, not a map: most ports have one label or none, and a map's first entry
/// costs a whole tree node (~600 bytes here, times every port of a 10,000-app cluster).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Labels(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Labels;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of labels")
            }

            fn visit_unit<E>(self) -> Result<Labels, E> {
                Ok(Labels::default())
            }

            fn visit_none<E>(self) -> Result<Labels, E> {
                Ok(Labels::default())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut labels = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if let Value::String(value) = value {
                        labels.push((key, value));
                    }
                }
                // A repeated key: the last one wins, as in a map.
                labels.reverse();
                labels.sort_by(|a, b| a.0.cmp(&b.0));
                labels.dedup_by(|later, kept| later.0 == kept.0);
                Ok(Labels(labels))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `/v2/apps` → `{"apps": [...]}`; `/v2/apps/{id}` → `{"app": {...}}`. Apps stay raw JSON until
/// each is parsed on its own, so one malformed app is reported alone and a large cluster's
/// response is never held as a tree of values.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    apps: Option<Vec<&'a RawValue>>,
    #[serde(borrow)]
    app: Option<&'a RawValue>,
}

/// Why a response is not an apps response at all (single apps that do not parse are reported
/// with [`ParsedApps`] instead).
#[derive(Debug, thiserror::Error)]
pub enum AppsResponseError {
    #[error("not a Marathon apps response")]
    NotJson(#[source] serde_json::Error),
    #[error("not a Marathon apps response: neither an \"apps\" array nor an \"app\"")]
    NoApps,
}

/// The apps of a response that parse, and (app id, why) for those that do not.
pub type ParsedApps = (Vec<App>, Vec<(String, String)>);

/// Apps of a `/v2/apps` (or `/v2/apps/{id}`) response.
pub fn parse_apps(body: &[u8]) -> Result<ParsedApps, AppsResponseError> {
    let (mut apps, mut errors) = (Vec::new(), Vec::new());
    parse_apps_each(body, |app| match app {
        Ok(app) => apps.push(app),
        Err(unparsed) => errors.push(unparsed),
    })?;
    Ok((apps, errors))
}

/// Hands each app of a response to `each` as it is parsed (or its id and why it does not
/// parse), so a caller replacing a large model frees each old app as its successor arrives
/// instead of holding two whole clusters at once.
pub fn parse_apps_each(body: &[u8], mut each: impl FnMut(Result<App, (String, String)>)) -> Result<(), AppsResponseError> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(AppsResponseError::NotJson)?;
    let raw = match (envelope.apps, envelope.app) {
        (Some(apps), _) => apps,
        (None, Some(app)) => vec![app],
        (None, None) => return Err(AppsResponseError::NoApps),
    };
    for app in raw {
        each(parse_one::<App>(app).map(|mut parsed| {
            // A parsed list has room to grow (4 tasks' room for 3); the model keeps every app
            // of the cluster, so it keeps exactly what it holds.
            if let Some(tasks) = parsed.tasks.as_mut() {
                tasks.shrink_to_fit();
            }
            parsed
        }));
    }
    Ok(())
}

/// One app or pod of a response, parsed alone; Err: its id (if it has one) and why, as
/// "portDefinitions: invalid type: string …" (the field, then what is wrong with it).
pub fn parse_one<T: for<'de> Deserialize<'de>>(raw: &RawValue) -> Result<T, (String, String)> {
    let mut fields = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize::<_, T>(&mut fields).map_err(|err| {
        #[derive(serde::Deserialize)]
        struct Id {
            id: Option<String>,
        }
        let id = serde_json::from_str::<Id>(raw.get()).ok().and_then(|i| i.id).unwrap_or_else(|| "(no id)".into());
        (id, format!("{}: {}", err.path(), err.inner()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_string_values_in_key_order() {
        let port: PortDefinition =
            serde_json::from_str(r#"{"labels":{"VIP_1":"/b:80","n":3,"VIP_0":"/x:80","o":{"x":"y"},"e":"","VIP_0":"/a:80"}}"#).unwrap();
        let keys: Vec<(&str, &str)> = port.labels.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(keys, [("VIP_0", "/a:80"), ("VIP_1", "/b:80"), ("e", "")]);
        for empty in [r#"{"labels":null}"#, r#"{}"#, r#"{"labels":{}}"#] {
            assert_eq!(serde_json::from_str::<PortDefinition>(empty).unwrap().labels, Labels::default(), "{empty}");
        }
        assert!(serde_json::from_str::<PortDefinition>(r#"{"labels":"x"}"#).is_err(), "labels that are not a map are an error");
    }
}
