//! The agent's model of the cluster: every app by id, as last read or as events changed it.
//! A full re-list replaces it; events change single apps. An app whose definition stops
//! parsing keeps its last good definition (its services stay programmed) and is listed as
//! degraded until a good definition arrives; an app Marathon no longer has is dropped.

use std::collections::BTreeMap;

use super::{
    app::{parse_apps_each, App, AppsResponseError},
    events::{is_terminal, TaskUpdate},
};

#[derive(Debug, Default)]
pub struct Cluster {
    apps: BTreeMap<String, App>,
    /// App id → why its current definition is not used.
    degraded: BTreeMap<String, String>,
}

impl Cluster {
    pub fn apps(&self) -> impl Iterator<Item = &App> + Clone {
        self.apps.values()
    }

    pub fn get(&self, id: &str) -> Option<&App> {
        self.apps.get(id)
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// Apps whose latest definition could not be used, with why.
    pub fn degraded(&self) -> &BTreeMap<String, String> {
        &self.degraded
    }

    /// A full re-list from the response body, app by app (each old app is freed as its
    /// successor arrives). Returns (id, why) of the apps that did not parse; a body that is no
    /// apps response changes nothing.
    pub fn replace_from(&mut self, body: &[u8]) -> Result<Vec<(String, String)>, AppsResponseError> {
        let mut previous = std::mem::take(&mut self.apps);
        let degraded = std::mem::take(&mut self.degraded);
        let mut unparsed = Vec::new();
        let parsed = parse_apps_each(body, |app| {
            if let Err(failed) = &app {
                unparsed.push(failed.clone());
            }
            self.replace_one(&mut previous, app);
        });
        if let Err(err) = parsed {
            // Nothing was parsed: the envelope itself is wrong.
            self.apps = previous;
            self.degraded = degraded;
            return Err(err);
        }
        Ok(unparsed)
    }

    /// One app of a re-list; one that does not parse keeps its definition from `previous`.
    fn replace_one(&mut self, previous: &mut BTreeMap<String, App>, app: Result<App, (String, String)>) {
        match app {
            Ok(app) => {
                previous.remove(&app.id);
                self.apps.insert(app.id.clone(), app);
            }
            Err((id, why)) => {
                if let Some(app) = previous.remove(&id) {
                    self.apps.insert(id.clone(), app);
                }
                self.degraded.insert(id, why);
            }
        }
    }

    /// One app as read alone (`GET /v2/apps/{id}`); `Err` when its definition did not parse.
    pub fn upsert(&mut self, id: &str, app: Result<App, String>) {
        match app {
            Ok(app) => {
                self.degraded.remove(id);
                self.apps.insert(id.to_owned(), app);
            }
            // The last good definition, if there is one, stays as it is.
            Err(why) => {
                self.degraded.insert(id.to_owned(), why);
            }
        }
    }

    pub fn remove(&mut self, id: &str) {
        self.apps.remove(id);
        self.degraded.remove(id);
    }

    /// Applies a task's new state to its app. False when the event is not enough: the app is
    /// not known, or a new task of a health-checked app appeared (its health results are only
    /// in the app) — the caller reads the app.
    pub fn apply_task(&mut self, update: &TaskUpdate) -> bool {
        let Some(app) = self.apps.get_mut(&update.app_id) else { return false };
        let health_checked = app.health_checks.as_ref().is_some_and(|c| !c.is_empty());
        let tasks = app.tasks.get_or_insert_with(Vec::new);
        let position = tasks.iter().position(|t| t.id == update.task.id);
        match (position, is_terminal(update.task.state.as_deref())) {
            (Some(i), true) => {
                tasks.remove(i);
            }
            (Some(i), false) => {
                let task = &mut tasks[i];
                let new = &update.task;
                task.state = new.state.clone();
                task.host = new.host.clone().or(task.host.take());
                task.ports = new.ports.clone().or(task.ports.take());
                task.ip_addresses = new.ip_addresses.clone().or(task.ip_addresses.take());
                task.version = new.version.clone().or(task.version.take());
            }
            (None, true) => {}
            (None, false) if health_checked => return false,
            (None, false) => tasks.push(update.task.clone()),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::marathon::app::Task;

    fn app(id: &str, tasks: &[(&str, &str)]) -> App {
        let tasks = tasks.iter().map(|(id, state)| Task { id: (*id).into(), state: Some((*state).into()), ..Task::default() }).collect();
        App { id: id.into(), tasks: Some(tasks), ..App::default() }
    }

    fn update(app: &str, task: &str, state: &str) -> TaskUpdate {
        TaskUpdate { app_id: app.into(), task: Task { id: task.into(), state: Some(state.into()), host: Some("10.0.0.9".into()), ..Task::default() } }
    }

    /// (task id, state) pairs of one app; `None`: the app's definition is malformed.
    type Tasks<'a> = Option<&'a [(&'a str, &'a str)]>;

    /// A `/v2/apps` body of (app id, tasks).
    fn body(apps: &[(&str, Tasks)]) -> Vec<u8> {
        let apps: Vec<serde_json::Value> = apps
            .iter()
            .map(|(id, tasks)| match tasks {
                Some(tasks) => serde_json::json!({"id": id, "tasks": tasks.iter().map(|(t, st)| serde_json::json!({"id": t, "state": st})).collect::<Vec<_>>()}),
                None => serde_json::json!({"id": id, "portDefinitions": "garbage"}),
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "apps": apps })).unwrap()
    }

    fn task_states(model: &Cluster, id: &str) -> Vec<(String, String)> {
        let app = model.apps().find(|a| a.id == id).unwrap();
        app.tasks.iter().flatten().map(|t| (t.id.clone(), t.state.clone().unwrap_or_default())).collect()
    }

    #[test]
    fn a_malformed_definition_keeps_the_last_good_one_until_a_good_one_comes() {
        let mut model = Cluster::default();
        model.replace_from(&body(&[("/a", Some(&[("a.1", "TASK_RUNNING")])), ("/b", Some(&[]))])).unwrap();
        let unparsed = model.replace_from(&body(&[("/a", None), ("/b", Some(&[]))])).unwrap();
        assert_eq!(unparsed.len(), 1);
        assert_eq!(model.len(), 2, "the malformed app keeps its last definition");
        assert!(model.degraded().get("/a").is_some_and(|why| why.contains("portDefinitions")), "{:?}", model.degraded());
        assert_eq!(task_states(&model, "/a"), [("a.1".to_string(), "TASK_RUNNING".to_string())]);
        // A body that is no apps response changes nothing.
        assert!(model.replace_from(b"{\"message\": \"oops\"}").is_err());
        assert_eq!(model.len(), 2);
        model.upsert("/a", Ok(app("/a", &[("a.2", "TASK_RUNNING")])));
        assert!(model.degraded().is_empty());
        assert_eq!(task_states(&model, "/a"), [("a.2".to_string(), "TASK_RUNNING".to_string())]);
        // Malformed when first seen: nothing to keep, but reported.
        model.upsert("/c", Err("bad".into()));
        assert_eq!(model.len(), 2);
        assert!(model.degraded().contains_key("/c"));
        // Gone from Marathon: gone from the model.
        model.replace_from(&body(&[("/b", Some(&[]))])).unwrap();
        assert_eq!(model.apps().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["/b"]);
    }

    #[test]
    fn task_updates_add_change_and_drop_tasks() {
        let mut model = Cluster::default();
        model.replace_from(&body(&[("/a", Some(&[("a.1", "TASK_RUNNING")]))])).unwrap();
        assert!(model.apply_task(&update("/a", "a.2", "TASK_STAGING")));
        assert!(model.apply_task(&update("/a", "a.2", "TASK_RUNNING")));
        assert!(model.apply_task(&update("/a", "a.1", "TASK_KILLED")));
        assert_eq!(task_states(&model, "/a"), [("a.2".to_string(), "TASK_RUNNING".to_string())]);
        assert!(!model.apply_task(&update("/unknown", "u.1", "TASK_RUNNING")), "an unknown app is read by the caller");
        let mut checked = app("/h", &[]);
        checked.health_checks = Some(vec![serde::de::IgnoredAny]);
        model.upsert("/h", Ok(checked));
        assert!(!model.apply_task(&update("/h", "h.1", "TASK_RUNNING")), "a new health-checked task is read with its health");
    }
}
