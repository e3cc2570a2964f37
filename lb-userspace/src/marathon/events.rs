//! Marathon events → what must change in the agent's model of the cluster. Pure: a burst of
//! events becomes one [`Delta`]: task updates applied from the event itself
//! (`status_update_event` carries state, host, ports and addresses), apps to re-read alone
//! (`GET /v2/apps/{id}`) where an event does not carry what the model needs (health, definition,
//! deployment changes), apps to drop, or a full re-list when the model cannot be trusted —
//! with the reason, for the log.

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
    /// Apps that no longer exist.
    pub remove: BTreeSet<String>,
    /// Why everything must be re-read, if it must.
    pub relist: Option<String>,
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
        self.tasks.is_empty() && self.refresh.is_empty() && self.remove.is_empty() && self.relist.is_none()
    }

    fn add(&mut self, event: &SseEvent) {
        let data: Value = match serde_json::from_str(&event.data) {
            Ok(data) => data,
            Err(_) => return self.untrusted(format!("{} with a body that is not JSON", event.event)),
        };
        let text = |field: &str| data.get(field).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        match event.event.as_str() {
            "status_update_event" => match serde_json::from_value::<StatusUpdate>(data.clone()) {
                Ok(update) if !update.app_id.is_empty() && !update.task_id.is_empty() => self.task(update),
                _ => self.untrusted("a status_update_event without appId or taskId".into()),
            },
            // Health and instance events name an app (instance ids are not task ids): re-read it.
            "health_status_changed_event" | "failed_health_check_event" | "unhealthy_instance_kill_event"
            | "unhealthy_task_kill_event" | "add_health_check_event" | "remove_health_check_event" => {
                self.refresh_app(text("appId"), &event.event)
            }
            "instance_health_changed_event" | "instance_changed_event" => self.refresh_app(text("runSpecId"), &event.event),
            "api_post_event" => {
                let id = data.pointer("/appDefinition/id").and_then(Value::as_str).map(str::to_owned);
                let id = id.or_else(|| text("uri").and_then(|uri| uri.strip_prefix("/v2/apps").map(str::to_owned)));
                self.refresh_app(id.filter(|id| id.starts_with('/') && id.len() > 1), &event.event)
            }
            "app_terminated_event" => match text("appId") {
                Some(id) => {
                    self.refresh.remove(&id);
                    self.remove.insert(id);
                }
                None => self.untrusted("an app_terminated_event without appId".into()),
            },
            "deployment_info" | "deployment_success" | "deployment_failed" | "deployment_step_success"
            | "deployment_step_failure" => {
                let apps = deployment_apps(&data);
                if apps.is_empty() {
                    self.untrusted(format!("a {} without the apps of its plan", event.event));
                }
                for app in apps {
                    self.refresh_app(Some(app), &event.event);
                }
            }
            "event_stream_attached" | "event_stream_detached" | "framework_message_event" | "subscribe_event"
            | "unsubscribe_event" | "pod_created_event" | "pod_updated_event" | "pod_deleted_event" => {}
            other => self.untrusted(format!("event {other:?} may change any app")),
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
}

impl StatusUpdate {
    fn into_task(self) -> Task {
        Task {
            id: self.task_id,
            host: self.host,
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

    #[test]
    fn terminal_states() {
        assert!(is_terminal(Some("TASK_KILLED")));
        assert!(!is_terminal(Some("TASK_RUNNING")));
        assert!(!is_terminal(Some("TASK_UNREACHABLE")), "unreachable tasks drain, they are not gone");
        assert!(!is_terminal(None));
    }
}
