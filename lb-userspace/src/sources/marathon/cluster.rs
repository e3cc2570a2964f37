//! The agent's model of the cluster: every app and every pod (as the app it means:
//! marathon::pod) by id, as last read or as events changed it. A full re-list replaces each
//! kind; events change single apps and pods. One whose definition stops parsing keeps its last
//! good definition (its services stay programmed) and is listed as degraded until a good
//! definition arrives; one Marathon no longer has is dropped.

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
    /// Pods, each as the app it means.
    pods: BTreeMap<String, App>,
    /// Pod id → why its current definition is not used.
    degraded_pods: BTreeMap<String, String>,
}

impl Cluster {
    /// Every app, then every pod.
    pub fn apps(&self) -> impl Iterator<Item = &App> + Clone {
        self.apps.values().chain(self.pods.values())
    }

    pub fn get(&self, id: &str) -> Option<&App> {
        self.apps.get(id).or_else(|| self.pods.get(id))
    }

    /// Whether `id` is a pod the model holds (its events re-read the pod, not an app).
    pub fn is_pod(&self, id: &str) -> bool {
        self.pods.contains_key(id) || self.degraded_pods.contains_key(id)
    }

    /// Apps and pods.
    pub fn len(&self) -> usize {
        self.apps.len() + self.pods.len()
    }

    /// The ids of every pod held (degraded ones included).
    pub fn pod_ids(&self) -> impl Iterator<Item = &String> {
        self.pods.keys().chain(self.degraded_pods.keys().filter(|id| !self.pods.contains_key(*id)))
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.pods.is_empty()
    }

    /// Apps and pods whose latest definition could not be used, with why.
    pub fn degraded(&self) -> BTreeMap<String, String> {
        let mut all = self.degraded.clone();
        all.extend(self.degraded_pods.iter().map(|(id, why)| (id.clone(), why.clone())));
        all
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
        replace_in(&mut self.apps, &mut self.degraded, previous, app);
    }

    /// A full re-list of the pods (each as its app, or its id and why it is unusable).
    pub fn replace_pods(&mut self, pods: Vec<Result<App, (String, String)>>) {
        let mut previous = std::mem::take(&mut self.pods);
        self.degraded_pods.clear();
        for pod in pods {
            replace_in(&mut self.pods, &mut self.degraded_pods, &mut previous, pod);
        }
    }

    /// One pod as read alone; `Err` when its definition did not parse.
    pub fn upsert_pod(&mut self, id: &str, pod: Result<App, String>) {
        upsert_in(&mut self.pods, &mut self.degraded_pods, id, pod);
    }

    /// One app as read alone (`GET /v2/apps/{id}`); `Err` when its definition did not parse.
    pub fn upsert(&mut self, id: &str, app: Result<App, String>) {
        upsert_in(&mut self.apps, &mut self.degraded, id, app);
    }

    /// Drops an app or pod Marathon no longer has.
    pub fn remove(&mut self, id: &str) {
        self.apps.remove(id);
        self.degraded.remove(id);
        self.pods.remove(id);
        self.degraded_pods.remove(id);
    }

    /// Applies a task's new state to its app. False when the event is not enough: the app is
    /// not known (a pod's container: its instance is re-read), or a new task of a
    /// health-checked app appeared (its health results are only in the app) — the caller reads
    /// the app.
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

/// One element of a re-list into `kept`; one that does not parse keeps its definition from
/// `previous` and is listed in `degraded`.
fn replace_in(kept: &mut BTreeMap<String, App>, degraded: &mut BTreeMap<String, String>, previous: &mut BTreeMap<String, App>, app: Result<App, (String, String)>) {
    match app {
        Ok(app) => {
            previous.remove(&app.id);
            kept.insert(app.id.clone(), app);
        }
        Err((id, why)) => {
            if let Some(app) = previous.remove(&id) {
                kept.insert(id.clone(), app);
            }
            degraded.insert(id, why);
        }
    }
}

/// One app or pod read alone; on `Err` the last good definition, if there is one, stays.
fn upsert_in(kept: &mut BTreeMap<String, App>, degraded: &mut BTreeMap<String, String>, id: &str, app: Result<App, String>) {
    match app {
        Ok(app) => {
            degraded.remove(id);
            kept.insert(id.to_owned(), app);
        }
        Err(why) => {
            degraded.insert(id.to_owned(), why);
        }
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

    #[test]
    fn pods_are_replaced_apart_from_apps_and_a_malformed_one_keeps_its_last_good_definition() {
        let mut model = Cluster::default();
        model.replace_from(&body(&[("/a", Some(&[]))])).unwrap();
        model.replace_pods(vec![Ok(app("/p", &[("p.1", "TASK_RUNNING")])), Ok(app("/q", &[]))]);
        assert_eq!(model.apps().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["/a", "/p", "/q"]);
        assert!(model.is_pod("/p") && !model.is_pod("/a"));
        assert!(!model.apply_task(&update("/p", "p.1.c", "TASK_KILLED")), "a pod's container update re-reads the pod");
        // An apps re-list leaves the pods; a pods re-list the apps.
        model.replace_from(&body(&[("/a", Some(&[]))])).unwrap();
        model.replace_pods(vec![Err(("/p".into(), "containers: invalid type".into()))]);
        assert_eq!(model.apps().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["/a", "/p"], "/q is gone, /p kept");
        assert_eq!(task_states(&model, "/p"), [("p.1".to_string(), "TASK_RUNNING".to_string())]);
        assert!(model.degraded().contains_key("/p") && model.is_pod("/p"));
        model.upsert_pod("/p", Ok(app("/p", &[])));
        assert!(model.degraded().is_empty());
        model.remove("/p");
        assert!(!model.is_pod("/p"));
    }
}
