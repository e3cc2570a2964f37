//! A Marathon-compatible server for the tests and the demo: `/v2/apps` (tasks embedded), pods
//! (`pods`: `/v2/pods`, `/v2/pods/::status`, their events), `/v2/events` (SSE with `event:`/`data:` frames, CRLF, heartbeats, the `Accept` check), `/ping`,
//! and controls to scale, kill, flip health, label VIPs, go dark, redirect to a "leader" and
//! require credentials. Apps have the Marathon 1.5+ shape with host networking, or the 1.4
//! bridge shape, so the agent's model is exercised as against a real server.
//!
//! It runs on its own thread with its own runtime, inside a network namespace if asked.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::netns::Netns;

mod pods;
pub use pods::{EndpointSpec, InstanceSpec, PodSpec};

/// One task of an app.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub state: String,
    /// None: no health results reported.
    pub alive: Option<bool>,
}

/// One app: a port with a service port, optional VIP labels, tasks.
#[derive(Clone, Debug)]
pub struct AppSpec {
    pub id: String,
    pub service_port: u16,
    pub protocol: String,
    pub labels: BTreeMap<String, String>,
    /// App labels (marathon-lb's `HAPROXY_*`).
    pub app_labels: BTreeMap<String, String>,
    pub health_checked: bool,
    pub tasks: Vec<TaskSpec>,
    /// Served with `"portDefinitions": "garbage"`, a definition no Marathon would send.
    pub malformed: bool,
    pub networking: Networking,
    /// The port's name (`portDefinitions[0].name` or the port mapping's).
    pub port_name: String,
}

/// How the app's tasks are networked (Marathon 1.5's `networks`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Networking {
    /// `portDefinitions`; tasks at their host's address and host port.
    #[default]
    Host,
    /// `container/bridge`: a port mapping from `container_port` to the task's host port; tasks
    /// report a bridge-internal address (172.17.0.x) that no client outside the host reaches.
    Bridge { container_port: u16 },
    /// A container network: tasks reachable at their own address (task id → address) on
    /// `container_port`; no host ports.
    Container { container_port: u16, task_ips: BTreeMap<String, String> },
}

impl AppSpec {
    pub fn new(id: &str, service_port: u16) -> Self {
        Self {
            id: id.into(),
            service_port,
            protocol: "tcp".into(),
            labels: BTreeMap::new(),
            app_labels: BTreeMap::new(),
            health_checked: true,
            tasks: Vec::new(),
            malformed: false,
            networking: Networking::Host,
            port_name: "default".into(),
        }
    }

    /// The addresses Mesos reports for `task`: its container's (bridge or container network),
    /// else its host's.
    fn ip_addresses(&self, task: &TaskSpec) -> Value {
        let at = self.tasks.iter().position(|t| t.id == task.id).unwrap_or(0);
        let ip = match &self.networking {
            Networking::Host => task.host.clone(),
            Networking::Bridge { .. } => format!("172.17.0.{}", at + 2),
            Networking::Container { task_ips, .. } => task_ips.get(&task.id).cloned().unwrap_or_default(),
        };
        json!([{"ipAddress": ip, "protocol": "IPv4"}])
    }

    /// The task's host ports: none on a container network.
    fn host_ports(&self, task: &TaskSpec) -> Value {
        match self.networking {
            Networking::Container { .. } => json!([]),
            _ => json!([task.port]),
        }
    }

    /// `networks`, `container` and `portDefinitions` of the definition.
    fn networking_json(&self) -> Value {
        let mapping = |container_port: u16, host_port: Option<u16>| {
            let mut m = json!({"containerPort": container_port, "servicePort": self.service_port, "protocol": self.protocol,
                "name": self.port_name, "labels": self.labels});
            if let Some(host_port) = host_port {
                m["hostPort"] = host_port.into();
            }
            m
        };
        match &self.networking {
            Networking::Host => {
                let defs = json!([{"port": self.service_port, "protocol": self.protocol, "name": self.port_name, "labels": self.labels}]);
                json!({"networks": [{"mode": "host"}], "portDefinitions": if self.malformed { json!("garbage") } else { defs }})
            }
            Networking::Bridge { container_port } => json!({"networks": [{"mode": "container/bridge"}], "container":
                {"type": "DOCKER", "docker": {"image": "nginx"}, "portMappings": [mapping(*container_port, Some(0))]}}),
            Networking::Container { container_port, .. } => json!({"networks": [{"mode": "container", "name": "dcos"}],
                "container": {"type": "MESOS", "portMappings": [mapping(*container_port, None)]}}),
        }
    }

    /// The instance id Marathon 1.5 gives a task's instance (health events name instances).
    fn instance_id(task: &TaskSpec) -> String {
        task.id.replace('.', ".marathon-")
    }

    /// The `status_update_event` announcing `task` of this app in `state`.
    fn status_update(&self, task: &TaskSpec, state: &str) -> Value {
        json!({
            "eventType": "status_update_event", "timestamp": "2026-01-01T00:00:00.000Z", "slaveId": "agent-1",
            "taskId": task.id, "taskStatus": state, "message": "", "appId": self.id, "host": task.host,
            "ipAddresses": self.ip_addresses(task), "ports": self.host_ports(task),
            "version": "2026-01-01T00:00:00.000Z",
        })
    }

    /// The events Marathon sends when this app changes into `new` (None: removed).
    fn events_to(&self, new: Option<&AppSpec>) -> Vec<Value> {
        let Some(new) = new else {
            return vec![json!({"eventType": "app_terminated_event", "timestamp": "2026-01-01T00:00:00.000Z", "appId": self.id})];
        };
        let mut events = Vec::new();
        let definition = |a: &AppSpec| (a.service_port, a.protocol.clone(), a.labels.clone(), a.app_labels.clone(), a.health_checked, a.malformed, a.networking.clone(), a.port_name.clone());
        if definition(self) != definition(new) {
            events.push(api_post(new));
        }
        for task in &self.tasks {
            if !new.tasks.iter().any(|t| t.id == task.id) {
                events.push(self.status_update(task, "TASK_KILLED"));
            }
        }
        for task in &new.tasks {
            let old = self.tasks.iter().find(|t| t.id == task.id);
            if old.is_none_or(|o| (&o.host, o.port, &o.state) != (&task.host, task.port, &task.state)) {
                events.push(new.status_update(task, &task.state));
            }
            if old.is_none_or(|o| o.alive != task.alive) && task.alive.is_some() {
                events.push(json!({
                    "eventType": "health_status_changed_event", "timestamp": "2026-01-01T00:00:00.000Z",
                    "appId": new.id, "instanceId": Self::instance_id(task), "version": "2026-01-01T00:00:00.000Z",
                    "alive": task.alive,
                }));
            }
        }
        events
    }

    fn to_json(&self) -> Value {
        let tasks: Vec<Value> = self
            .tasks
            .iter()
            .map(|t| {
                let mut task = json!({
                    "id": t.id, "appId": self.id, "host": t.host, "ports": self.host_ports(t), "state": t.state,
                    "slaveId": "agent-1", "version": "2026-01-01T00:00:00.000Z",
                    "ipAddresses": self.ip_addresses(t),
                });
                if let Some(alive) = t.alive {
                    task["healthCheckResults"] = json!([{"alive": alive, "consecutiveFailures": if alive { 0 } else { 3 },
                        "instanceId": Self::instance_id(t), "lastFailure": null}]);
                }
                task
            })
            .collect();
        let health_checks = if self.health_checked { json!([{"protocol": "MESOS_TCP", "portIndex": 0}]) } else { json!([]) };
        let mut app = json!({
            "id": self.id, "instances": self.tasks.len(), "version": "2026-01-01T00:00:00.000Z",
            "labels": self.app_labels,
            "healthChecks": health_checks, "deployments": [], "tasks": tasks,
        });
        if let (Some(app), Value::Object(networking)) = (app.as_object_mut(), self.networking_json()) {
            app.extend(networking);
        }
        app
    }
}

/// The `api_post_event` of a (re)defined app, as Marathon sends it (the definition, no tasks).
fn api_post(app: &AppSpec) -> Value {
    let mut definition = app.to_json();
    if let Some(d) = definition.as_object_mut() {
        d.remove("tasks");
        d.remove("deployments");
    }
    json!({"eventType": "api_post_event", "timestamp": "2026-01-01T00:00:00.000Z", "clientIp": "10.0.0.1",
        "uri": format!("/v2/apps{}", app.id), "appDefinition": definition})
}

/// How the server answers.
#[derive(Clone, Debug, Default)]
struct Behaviour {
    /// Every request fails with 503 and event streams are cut.
    outage: bool,
    /// `/v2/events` answers 302 to this base URL.
    events_redirect: Option<String>,
    /// Required `Authorization` header value.
    authorization: Option<String>,
    /// `/v2/apps` bodies and event streams are sent one byte per this interval (slowloris).
    trickle: Option<Duration>,
    /// No pods API (Marathon before 1.4): `/v2/pods…` answers 404.
    no_pods_api: bool,
}

struct Shared {
    apps: Mutex<Vec<AppSpec>>,
    pods: Mutex<Vec<PodSpec>>,
    /// `/v2/apps` as served, built by the first request after a change rather than per request
    /// or per change (building 10,000 apps each time would time the test server, not the agent).
    body: Mutex<Option<axum::body::Bytes>>,
    behaviour: Mutex<Behaviour>,
    events: broadcast::Sender<String>,
    /// `GET /v2/apps` (the full list) requests answered.
    list_requests: std::sync::atomic::AtomicU64,
    /// Requests received, answered or refused.
    requests: std::sync::atomic::AtomicU64,
    /// Bumped to cut every open event stream.
    generation: Mutex<u64>,
    heartbeat: Duration,
}

/// A running test Marathon. Dropping it stops the server.
pub struct MarathonServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MarathonServer {
    /// Starts on 127.0.0.1 (an ephemeral port) in `ns`, or in the test's own namespace.
    pub fn start(ns: Option<&Netns>, heartbeat: Duration) -> Result<Self> {
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            apps: Mutex::new(Vec::new()),
            pods: Mutex::new(Vec::new()),
            body: Mutex::new(None),
            behaviour: Mutex::new(Behaviour::default()),
            events,
            list_requests: std::sync::atomic::AtomicU64::new(0),
            requests: std::sync::atomic::AtomicU64::new(0),
            generation: Mutex::new(0),
            heartbeat,
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let serve = move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new()
                    .route("/v2/apps", get(apps))
                    .route("/v2/apps/{*id}", get(one_app))
                    .route("/v2/pods", get(pod_definitions))
                    .route("/v2/pods/{*rest}", get(pod_status))
                    .route("/v2/events", get(events_stream))
                    .route("/ping", get(|| async { "pong" }))
                    .with_state(state);
                let _ = axum::serve(listener, app).with_graceful_shutdown(async { let _ = stop_rx.await; }).await;
            });
        };
        let thread = match ns {
            Some(ns) => ns.spawn(serve)?,
            None => std::thread::spawn(serve),
        };
        let addr = addr_rx.recv_timeout(Duration::from_secs(10))?;
        Ok(Self { shared, addr, shutdown: Some(stop_tx), thread: Some(thread) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /v2/apps` (full list) requests answered so far.
    pub fn list_requests(&self) -> u64 {
        self.shared.list_requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests received so far (lists, single apps, event streams), answered or refused.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Replaces every app and sends the events Marathon would: `api_post_event` for new or
    /// redefined apps, `status_update_event`s for their tasks, `app_terminated_event` for
    /// removed ones.
    pub fn set_apps(&self, apps: Vec<AppSpec>) {
        let old = std::mem::replace(&mut *self.shared.apps.lock().unwrap(), apps.clone());
        // Built now: a full sync right after is timed against a ready list.
        *self.shared.body.lock().unwrap() = Some(list_body(&apps));
        let mut events = Vec::new();
        for app in &apps {
            match old.iter().find(|o| o.id == app.id) {
                Some(before) => events.extend(before.events_to(Some(app))),
                None => {
                    events.push(api_post(app));
                    events.extend(app.tasks.iter().map(|t| app.status_update(t, &t.state)));
                }
            }
        }
        for gone in old.iter().filter(|o| !apps.iter().any(|a| a.id == o.id)) {
            events.extend(gone.events_to(None));
        }
        self.send(&events);
    }

    /// Changes one app and sends the events Marathon would for the change (task status
    /// updates, health changes, a new definition).
    pub fn update(&self, app_id: &str, change: impl FnOnce(&mut AppSpec)) {
        self.send(&self.change(app_id, change));
    }

    /// Changes one app and returns the events for it without sending them (a test batches them).
    pub fn change(&self, app_id: &str, change: impl FnOnce(&mut AppSpec)) -> Vec<Value> {
        let events = {
            let mut apps = self.shared.apps.lock().unwrap();
            let app = apps.iter_mut().find(|a| a.id == app_id).expect("known app");
            let before = app.clone();
            change(app);
            before.events_to(Some(app))
        };
        self.invalidate();
        events
    }

    /// Replaces every pod and sends the events Marathon would (created, updated and instance
    /// changes, deleted).
    pub fn set_pods(&self, pods: Vec<PodSpec>) {
        let old = std::mem::replace(&mut *self.shared.pods.lock().unwrap(), pods.clone());
        let mut events = Vec::new();
        for pod in &pods {
            events.extend(PodSpec::events(old.iter().find(|o| o.id == pod.id), Some(pod)));
        }
        for gone in old.iter().filter(|o| !pods.iter().any(|p| p.id == o.id)) {
            events.extend(PodSpec::events(Some(gone), None));
        }
        self.send(&events);
    }

    /// Changes one pod and sends the events Marathon would for the change.
    pub fn update_pod(&self, pod_id: &str, change: impl FnOnce(&mut PodSpec)) {
        let events = {
            let mut pods = self.shared.pods.lock().unwrap();
            let pod = pods.iter_mut().find(|p| p.id == pod_id).expect("known pod");
            let before = pod.clone();
            change(pod);
            PodSpec::events(Some(&before), Some(pod))
        };
        self.send(&events);
    }

    /// Sends events to every open stream, all in one write (as a burst arrives).
    pub fn send(&self, events: &[Value]) {
        let frames: String = events
            .iter()
            .map(|e| format!("event: {}\r\ndata: {e}\r\n\r\n", e["eventType"].as_str().unwrap_or_default()))
            .collect();
        if !frames.is_empty() {
            let _ = self.shared.events.send(frames);
        }
    }

    /// The served list is stale: it is built again on the next `GET /v2/apps`.
    fn invalidate(&self) {
        *self.shared.body.lock().unwrap() = None;
    }


    /// Starts or ends an outage: 503 everywhere, open streams cut.
    pub fn set_outage(&self, outage: bool) {
        self.shared.behaviour.lock().unwrap().outage = outage;
        if outage {
            self.cut_streams();
        }
    }

    /// Makes `/v2/events` answer 302 to `leader` (another server), as a standby does.
    pub fn redirect_events_to(&self, leader: Option<String>) {
        self.shared.behaviour.lock().unwrap().events_redirect = leader;
    }

    /// Answers `/v2/pods…` with 404, as a Marathon before 1.4 does.
    pub fn without_pods_api(&self) {
        self.shared.behaviour.lock().unwrap().no_pods_api = true;
    }

    /// Requires this exact `Authorization` header on every request.
    pub fn require_authorization(&self, value: Option<String>) {
        self.shared.behaviour.lock().unwrap().authorization = value;
    }

    /// Sends `/v2/apps` bodies and event streams opened from now on one byte per `every`
    /// (None: at once).
    pub fn set_trickle(&self, every: Option<Duration>) {
        self.shared.behaviour.lock().unwrap().trickle = every;
    }

    /// Sends `text` as it is to every open event stream (garbage, half frames).
    pub fn send_raw(&self, text: &str) {
        let _ = self.shared.events.send(text.to_owned());
    }

    /// Closes every open event stream (as a leader change does).
    pub fn cut_streams(&self) {
        *self.shared.generation.lock().unwrap() += 1;
    }
}

impl Drop for MarathonServer {
    fn drop(&mut self) {
        self.cut_streams();
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counts a request and answers it instead of its handler when the behaviour says so (an
/// outage, missing credentials). Every handler calls it first.
fn refuse(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    shared.requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let behaviour = shared.behaviour.lock().unwrap().clone();
    if behaviour.outage {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "outage").into_response());
    }
    if let Some(expected) = behaviour.authorization {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return Some((StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "basic realm=\"Mesosphere\"")], "").into_response());
        }
    }
    None
}

async fn apps(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse(&shared, &headers) {
        return refused;
    }
    shared.list_requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let body = shared
        .body
        .lock()
        .unwrap()
        .get_or_insert_with(|| list_body(&shared.apps.lock().unwrap()))
        .clone();
    let trickle = shared.behaviour.lock().unwrap().trickle;
    let body = match trickle {
        Some(every) => Body::from_stream(trickled(futures_util::stream::iter([Ok::<_, Infallible>(body)]), every)),
        None => Body::from(body),
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `stream`'s bytes one at a time, `every` apart.
fn trickled<T: AsRef<[u8]> + Send + 'static>(
    stream: impl futures_util::Stream<Item = Result<T, Infallible>> + Send + Unpin + 'static,
    every: Duration,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, Infallible>> + Send + 'static {
    use futures_util::StreamExt as _;
    let state = (stream, std::collections::VecDeque::<u8>::new());
    futures_util::stream::unfold(state, move |(mut stream, mut pending)| async move {
        while pending.is_empty() {
            let Ok(chunk) = stream.next().await?;
            pending.extend(chunk.as_ref());
        }
        tokio::time::sleep(every).await;
        let byte = pending.pop_front()?;
        Some((Ok(axum::body::Bytes::copy_from_slice(&[byte])), (stream, pending)))
    })
}

/// The body of `GET /v2/apps` for `apps`.
fn list_body(apps: &[AppSpec]) -> axum::body::Bytes {
    let apps: Vec<Value> = apps.iter().map(AppSpec::to_json).collect();
    serde_json::to_vec(&json!({ "apps": apps })).unwrap().into()
}

async fn one_app(State(shared): State<Arc<Shared>>, headers: HeaderMap, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    if let Some(refused) = refuse(&shared, &headers) {
        return refused;
    }
    let id = format!("/{}", id.trim_matches('/'));
    let app = shared.apps.lock().unwrap().iter().find(|a| a.id == id).map(AppSpec::to_json);
    match app {
        Some(app) => axum::Json(json!({ "app": app })).into_response(),
        None => (StatusCode::NOT_FOUND, axum::Json(json!({"message": format!("App '{id}' does not exist")}))).into_response(),
    }
}

async fn pod_definitions(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse(&shared, &headers) {
        return refused;
    }
    if shared.behaviour.lock().unwrap().no_pods_api {
        return StatusCode::NOT_FOUND.into_response();
    }
    let pods: Vec<Value> = shared.pods.lock().unwrap().iter().map(PodSpec::definition).collect();
    axum::Json(pods).into_response()
}

/// `/v2/pods/::status` (every pod's) and `/v2/pods/{id}::status`.
async fn pod_status(State(shared): State<Arc<Shared>>, headers: HeaderMap, axum::extract::Path(rest): axum::extract::Path<String>) -> Response {
    if let Some(refused) = refuse(&shared, &headers) {
        return refused;
    }
    let pods = shared.pods.lock().unwrap().clone();
    let no_api = shared.behaviour.lock().unwrap().no_pods_api;
    let Some(id) = rest.strip_suffix("::status").filter(|_| !no_api) else { return StatusCode::NOT_FOUND.into_response() };
    if id.is_empty() {
        return axum::Json(pods.iter().map(PodSpec::status).collect::<Vec<_>>()).into_response();
    }
    let id = format!("/{}", id.trim_matches('/'));
    match pods.iter().find(|p| p.id == id) {
        Some(pod) => axum::Json(pod.status()).into_response(),
        None => (StatusCode::NOT_FOUND, axum::Json(json!({"message": format!("Pod '{id}' does not exist")}))).into_response(),
    }
}

async fn events_stream(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(refused) = refuse(&shared, &headers) {
        return refused;
    }
    if let Some(leader) = shared.behaviour.lock().unwrap().events_redirect.clone() {
        let location = format!("{leader}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/v2/events"));
        return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    }
    // Jetty's EventSourceServlet: anything but exactly this Accept falls through to a 405.
    if headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) != Some("text/event-stream") {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let generation = *shared.generation.lock().unwrap();
    let trickle = shared.behaviour.lock().unwrap().trickle;
    let receiver = shared.events.subscribe();
    let attached = format!(
        "event: event_stream_attached\r\ndata: {}\r\n\r\n",
        json!({"remoteAddress": "127.0.0.1", "eventType": "event_stream_attached", "timestamp": "2026-01-01T00:00:00.000Z"})
    );
    let state = (Some(attached), receiver, shared, generation);
    let stream = futures_util::stream::unfold(state, |(first, mut receiver, shared, generation)| async move {
        if let Some(first) = first {
            return Some((Ok::<_, Infallible>(first), (None, receiver, shared, generation)));
        }
        loop {
            if *shared.generation.lock().unwrap() != generation {
                return None;
            }
            match tokio::time::timeout(shared.heartbeat, receiver.recv()).await {
                Ok(Ok(frame)) => return Some((Ok(frame), (None, receiver, shared, generation))),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                // Marathon's heartbeat: a bare CRLF.
                Err(_) => return Some((Ok("\r\n".to_string()), (None, receiver, shared, generation))),
            }
        }
    });
    let body = match trickle {
        Some(every) => Body::from_stream(trickled(Box::pin(stream), every)),
        None => Body::from_stream(stream),
    };
    Response::builder().header(header::CONTENT_TYPE, "text/event-stream;charset=UTF-8").body(body).unwrap()
}
