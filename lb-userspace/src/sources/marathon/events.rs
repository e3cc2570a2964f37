//! Marathon events → what must change in the agent's model of the cluster. Pure: a burst of
//! events becomes one [`Delta`]: task updates applied from the event itself
//! (`status_update_event` carries state, host, ports and addresses), apps to re-read alone
//! (`GET /v2/apps/{id}`) where an event does not carry what the model needs (health, definition,
//! deployment changes), pods to re-read (or all of them), apps and pods to drop, or a full
//! re-list when the model cannot be trusted — with the reason, for the log.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

use super::{
    app::{Task, TaskIp},
    client::SseEvent,
};

/// A task's new state, from a `status_update_event`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskUpdate {
    pub app_id: String,
    pub task: Task,
}

/// What a burst of events asks of the model.
#[derive(Debug, Default)]
pub struct Delta {
    pub tasks: Vec<TaskUpdate>,
    /// Apps to re-read alone.
    pub refresh: BTreeSet<String>,
    /// Apps (or pods) that no longer exist.
    pub remove: BTreeSet<String>,
    /// Pods to re-read alone (`GET /v2/pods/{id}::status`).
    pub pods: BTreeSet<String>,
    /// Every pod must be re-read (a pod was created: the event does not name it).
    pub all_pods: bool,
    /// Why everything must be re-read, if it must.
    pub relist: Option<String>,
}

/// What an event type does to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handling {
    /// `status_update_event`: the task's new state is in the event.
    TaskStatus,
    /// Re-read the app the JSON pointer names (health and instance events: instance ids are
    /// not task ids).
    AppNamedBy(&'static str),
    /// `api_post_event`: re-read the app whose definition was posted.
    AppDefinition,
    /// The app no longer exists.
    AppTerminated,
    /// Re-read every app of the deployment's plan.
    Deployment,
    /// May change any app (a group change): re-read everything.
    AnyApp,
    /// A pod was created or redefined (true: deleted); its id is in the event's `uri`
    /// (`/v2/pods/<id>`; a create's is `/v2/pods`: every pod is re-read).
    Pod(bool),
    /// Changes no service: not subscribed to.
    Ignored,
}

/// Every event type the agent knows, and what it does with it. This one table drives both the
/// subscription (the `event_type=` filter sent to Marathon, [`subscribed`]) and the handling
/// ([`Delta::of`]), so the two cannot disagree.
const EVENTS: &[(&str, Handling)] = &[
    ("status_update_event", Handling::TaskStatus),
    ("health_status_changed_event", Handling::AppNamedBy("/appId")),
    ("failed_health_check_event", Handling::AppNamedBy("/appId")),
    ("unhealthy_instance_kill_event", Handling::AppNamedBy("/appId")),
    ("unhealthy_task_kill_event", Handling::AppNamedBy("/appId")),
    ("add_health_check_event", Handling::AppNamedBy("/appId")),
    ("remove_health_check_event", Handling::AppNamedBy("/appId")),
    ("instance_health_changed_event", Handling::AppNamedBy("/runSpecId")),
    ("instance_changed_event", Handling::AppNamedBy("/runSpecId")),
    ("unknown_instance_terminated_event", Handling::AppNamedBy("/runSpecId")),
    ("api_post_event", Handling::AppDefinition),
    ("app_terminated_event", Handling::AppTerminated),
    ("deployment_info", Handling::Deployment),
    ("deployment_success", Handling::Deployment),
    ("deployment_failed", Handling::Deployment),
    ("deployment_step_success", Handling::Deployment),
    ("deployment_step_failure", Handling::Deployment),
    ("group_change_success", Handling::AnyApp),
    ("event_stream_attached", Handling::Ignored),
    ("event_stream_detached", Handling::Ignored),
    ("framework_message_event", Handling::Ignored),
    ("subscribe_event", Handling::Ignored),
    ("unsubscribe_event", Handling::Ignored),
    ("pod_created_event", Handling::Pod(false)),
    ("pod_updated_event", Handling::Pod(false)),
    ("pod_deleted_event", Handling::Pod(true)),
];

fn handling_of(event: &str) -> Option<Handling> {
    EVENTS.iter().find(|(name, _)| *name == event).map(|(_, handling)| *handling)
}

/// The event types to subscribe to: every one that can change a service.
pub fn subscribed() -> impl Iterator<Item = &'static str> {
    EVENTS.iter().filter(|(_, handling)| *handling != Handling::Ignored).map(|(name, _)| *name)
}

/// Whether an event is one the agent handles. A stream without event names (Marathon < 0.11)
/// sends everything: those are handled by their JSON's `eventType`.
pub fn is_subscribed(event: &str) -> bool {
    event.is_empty() || subscribed().any(|name| name == event)
}

/// Task states after which a task is gone for good (Marathon forgets it).
const TERMINAL_STATES: &[&str] =
    &["TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_DROPPED", "TASK_GONE", "TASK_GONE_BY_OPERATOR"];

impl Delta {
    pub fn of(events: &[SseEvent]) -> Self {
        let mut delta = Self::default();
        for event in events {
            delta.add(event);
        }
        delta
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.refresh.is_empty() && self.remove.is_empty() && self.pods.is_empty() && !self.all_pods && self.relist.is_none()
    }

    fn add(&mut self, event: &SseEvent) {
        let data: Value = match serde_json::from_str(&event.data) {
            Ok(data) => data,
            Err(_) => return self.untrusted(format!("{} with a body that is not JSON", event.event)),
        };
        let text = |pointer: &str| data.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let Some(handling) = handling_of(&event.event) else {
            return self.untrusted(format!("event {:?} may change any app", event.event));
        };
        match handling {
            Handling::TaskStatus => match serde_json::from_value::<StatusUpdate>(data.clone()) {
                Ok(update) if !update.app_id.is_empty() && !update.task_id.is_empty() => self.task(update),
                _ => self.untrusted("a status_update_event without appId or taskId".into()),
            },
            Handling::AppNamedBy(pointer) => self.refresh_app(text(pointer), &event.event),
            Handling::AppDefinition => {
                let id = text("/appDefinition/id").or_else(|| text("/uri").and_then(|uri| uri.strip_prefix("/v2/apps").map(str::to_owned)));
                self.refresh_app(id.filter(|id| id.starts_with('/') && id.len() > 1), &event.event)
            }
            Handling::AppTerminated => match text("/appId") {
                Some(id) => {
                    self.refresh.remove(&id);
                    self.remove.insert(id);
                }
                None => self.untrusted("an app_terminated_event without appId".into()),
            },
            Handling::Deployment => {
                let apps = deployment_apps(&data);
                if apps.is_empty() {
                    self.untrusted(format!("a {} without the apps of its plan", event.event));
                }
                for app in apps {
                    self.refresh_app(Some(app), &event.event);
                }
            }
            Handling::AnyApp => self.untrusted(format!("event {:?} may change any app", event.event)),
            Handling::Pod(deleted) => {
                let id = text("/uri").and_then(|uri| uri.strip_prefix("/v2/pods").map(str::to_owned)).filter(|id| id.len() > 1);
                match (id, deleted) {
                    (Some(id), true) => {
                        self.pods.remove(&id);
                        self.remove.insert(id);
                    }
                    (Some(id), false) => {
                        self.remove.remove(&id);
                        self.pods.insert(id);
                    }
                    (None, _) => self.all_pods = true,
                }
            }
            Handling::Ignored => {}
        }
    }

    fn task(&mut self, update: StatusUpdate) {
        let app_id = update.app_id.clone();
        if self.remove.contains(&app_id) {
            return;
        }
        self.tasks.push(TaskUpdate { app_id, task: update.into_task() });
    }

    fn refresh_app(&mut self, id: Option<String>, event: &str) {
        match id {
            Some(id) => {
                self.remove.remove(&id);
                self.refresh.insert(id);
            }
            None => self.untrusted(format!("a {event} that names no app")),
        }
    }

    fn untrusted(&mut self, why: String) {
        self.relist.get_or_insert(why);
    }
}

/// Whether a task in `state` is gone for good.
pub fn is_terminal(state: Option<&str>) -> bool {
    state.is_some_and(|s| TERMINAL_STATES.contains(&s))
}

/// The fields of a `status_update_event` the model uses.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct StatusUpdate {
    app_id: String,
    task_id: String,
    task_status: Option<String>,
    host: Option<String>,
    ports: Option<Vec<Option<u32>>>,
    ip_addresses: Option<Vec<TaskIp>>,
    version: Option<String>,
    slave_id: Option<String>,
}

impl StatusUpdate {
    fn into_task(self) -> Task {
        Task {
            id: self.task_id,
            host: self.host,
            slave_id: self.slave_id,
            ports: self.ports,
            ip_addresses: self.ip_addresses,
            state: self.task_status,
            version: self.version,
            all_alive: None,
        }
    }
}

/// The app ids a deployment event's plan touches (light and heavy plan formats; steps and the
/// current step).
fn deployment_apps(data: &Value) -> BTreeSet<String> {
    let mut apps = BTreeSet::new();
    let mut actions: Vec<&Value> = Vec::new();
    for steps in [data.pointer("/plan/steps")].into_iter().flatten().filter_map(Value::as_array) {
        for step in steps {
            actions.push(step);
            actions.extend(step.get("actions").and_then(Value::as_array).into_iter().flatten());
        }
    }
    actions.extend(data.pointer("/currentStep/actions").and_then(Value::as_array).into_iter().flatten());
    for action in actions {
        if let Some(app) = action.get("app").and_then(Value::as_str) {
            apps.insert(app.to_owned());
        }
    }
    apps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str) -> SseEvent {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/marathon");
        let data = std::fs::read_to_string(root.join(path)).unwrap();
        let kind = serde_json::from_str::<Value>(&data).unwrap()["eventType"].as_str().unwrap_or_default().to_owned();
        SseEvent { event: kind, data }
    }

    #[test]
    fn a_status_update_is_applied_from_the_event() {
        let delta = Delta::of(&[event("marathon/events/status_update_event.json")]);
        assert!(delta.relist.is_none() && delta.refresh.is_empty());
        let update = &delta.tasks[0];
        assert_eq!(update.app_id, "/my-app");
        assert_eq!(update.task.id, "my-app_0-1396592784349");
        assert_eq!(update.task.state.as_deref(), Some("TASK_RUNNING"));
        assert_eq!(update.task.host.as_deref(), Some("slave-1234.acme.org"));
        assert_eq!(update.task.ports, Some(vec![Some(31372)]));
    }

    #[test]
    fn health_definition_and_deployment_events_re_read_their_apps() {
        let delta = Delta::of(&[
            event("marathon/events/health_status_changed_event.json"),
            event("marathon/events/instance_health_changed_event.json"),
            event("marathon/events/api_post_event.json"),
            event("marathon/events/deployment_step_success.json"),
        ]);
        assert!(delta.relist.is_none(), "{:?}", delta.relist);
        assert_eq!(delta.refresh.iter().map(String::as_str).collect::<Vec<_>>(), ["/app-id", "/my-app"]);
    }

    #[test]
    fn heavy_deployment_plans_name_their_apps() {
        let delta = Delta::of(&[event("marathon-consul/events/deployment_step_success.heavy-plan.json")]);
        assert!(delta.relist.is_none(), "{:?}", delta.relist);
        assert!(!delta.refresh.is_empty());
    }

    #[test]
    fn a_terminated_app_is_removed_and_later_task_updates_for_it_ignored() {
        let terminated = event("marathon/events/app_terminated_event.json");
        let delta = Delta::of(&[terminated, event("marathon/events/status_update_event.json")]);
        assert!(delta.remove.contains("/my-app"));
        assert!(delta.tasks.is_empty());
    }

    #[test]
    fn what_names_no_app_or_may_touch_any_asks_for_a_relist() {
        for (path, why) in [
            ("marathon/events/deployment_success.json", "without the apps of its plan"),
            ("marathon/events/group_change_success.json", "may change any app"),
        ] {
            let delta = Delta::of(&[event(path)]);
            assert!(delta.relist.as_deref().is_some_and(|r| r.contains(why)), "{path}: {:?}", delta.relist);
        }
        let garbage = SseEvent { event: "status_update_event".into(), data: "{not json".into() };
        assert!(Delta::of(&[garbage]).relist.is_some());
        let ignored = Delta::of(&[event("marathon/events/event_stream_attached.json")]);
        assert!(ignored.is_empty());
    }

    /// A body that names an app the way each handled event does.
    fn minimal_body(event: &str) -> String {
        match event {
            "status_update_event" => r#"{"appId":"/a","taskId":"a.1","taskStatus":"TASK_RUNNING"}"#.into(),
            "api_post_event" => r#"{"appDefinition":{"id":"/a"}}"#.into(),
            e if e.starts_with("deployment_") => r#"{"plan":{"steps":[{"actions":[{"app":"/a"}]}]}}"#.into(),
            e if e.starts_with("pod_") => r#"{"uri":"/v2/pods/a"}"#.into(),
            _ => r#"{"appId":"/a","runSpecId":"/a"}"#.into(),
        }
    }

    #[test]
    fn every_subscribed_event_is_handled_and_every_handled_one_subscribed() {
        let subscribed: BTreeSet<&str> = subscribed().collect();
        for (name, handling) in EVENTS {
            assert_eq!(subscribed.contains(name), *handling != Handling::Ignored, "{name}");
            let delta = Delta::of(&[SseEvent { event: (*name).into(), data: minimal_body(name) }]);
            match handling {
                Handling::Ignored => assert!(delta.is_empty(), "{name}: {delta:?}"),
                Handling::AnyApp => assert!(delta.relist.as_deref().is_some_and(|r| r.contains(name)), "{name}"),
                _ => assert!(delta.relist.is_none() && !delta.is_empty(), "{name} is subscribed but not handled: {delta:?}"),
            }
        }
        // Each subscribed event reaches the handling through the stream's filter too.
        assert!(subscribed.iter().all(|name| is_subscribed(name)));
        assert!(is_subscribed("pod_created_event") && !is_subscribed("some_future_event"));
        let unknown = Delta::of(&[SseEvent { event: "some_future_event".into(), data: "{}".into() }]);
        assert!(unknown.relist.is_some(), "an event nobody knows may change anything");
    }

    #[test]
    fn pod_events_re_read_or_drop_the_pod_their_uri_names_and_a_create_every_pod() {
        let delta = Delta::of(&[event("marathon/events/pod_updated_event.json"), event("marathon/events/instance_changed_event.json")]);
        assert_eq!(delta.pods.iter().map(String::as_str).collect::<Vec<_>>(), ["/my-pod"]);
        assert!(!delta.all_pods && delta.relist.is_none());
        assert!(!delta.refresh.is_empty(), "an instance event re-reads its run spec, app or pod");
        let deleted = Delta::of(&[event("marathon/events/pod_updated_event.json"), event("marathon/events/pod_deleted_event.json")]);
        assert!(deleted.pods.is_empty() && deleted.remove.contains("/my-pod"));
        // Marathon's PodsResource puts the request URI in the event: a create's is /v2/pods.
        let created = SseEvent { event: "pod_created_event".into(), data: r#"{"uri":"/v2/pods","eventType":"pod_created_event"}"#.into() };
        assert!(Delta::of(&[created]).all_pods);
    }

    #[test]
    fn terminal_states() {
        assert!(is_terminal(Some("TASK_KILLED")));
        assert!(!is_terminal(Some("TASK_RUNNING")));
        assert!(!is_terminal(Some("TASK_UNREACHABLE")), "unreachable tasks drain, they are not gone");
        assert!(!is_terminal(None));
    }
}
