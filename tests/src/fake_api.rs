//! A small fake Kubernetes API server for the fleet source (issue 23): list (with
//! `limit`/`continue` pages), watch (newline-delimited events, resumable from a
//! resourceVersion, `410 Gone` once the test compacts its history) and server-side
//! apply, for Airlock's four kinds and Nodes. No Kubernetes API server can be had
//! on the development machines (none is packaged), so this is what the agent's
//! client talks to: in-process as the kube client's service (kube-rs's mock-service
//! pattern, tests/tests/fleet_api.rs), or over plain HTTP on 127.0.0.1 in a test
//! namespace, for the real agent binary (tests/tests/fleet_e2e.rs).
//!
//! It is an axum router over shared state the test changes: objects, failures
//! (every answer an HTTP status, or no answer at all), lists held back per kind.
//! It checks nothing a real server would (no schema, no RBAC, no CEL): what it
//! shows is what the agent does with the protocol's answers.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State as AxState,
    http::{Method, Request, StatusCode, header},
    response::Response,
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::netns::Namespace;

/// The port the server listens on, in its namespace, for the agent binary.
pub const PORT: u16 = 6443;

pub const POLICIES: &str = "airlockpolicies";
pub const REVISIONS: &str = "airlockpolicyrevisions";
pub const SHARDS: &str = "airlocksourceshards";
pub const STATUSES: &str = "airlocknodestatuses";
pub const NODES: &str = "nodes";

/// apiVersion and kind of the objects under `plural`.
fn kind_of(plural: &str) -> Option<(&'static str, &'static str)> {
    Some(match plural {
        POLICIES => ("airlock.dev/v1alpha1", "AirlockPolicy"),
        REVISIONS => ("airlock.dev/v1alpha1", "AirlockPolicyRevision"),
        SHARDS => ("airlock.dev/v1alpha1", "AirlockSourceShard"),
        STATUSES => ("airlock.dev/v1alpha1", "AirlockNodeStatus"),
        NODES => ("v1", "Node"),
        _ => return None,
    })
}

/// One server-side apply the server received.
#[derive(Clone, Debug)]
pub struct Apply {
    /// Path and query.
    pub uri: String,
    pub content_type: String,
    pub body: Value,
}

/// What open watches are told.
#[derive(Clone, Debug)]
enum Change {
    Event {
        rv: u64,
        plural: String,
        name: String,
        line: Bytes,
    },
    /// End every open watch (the server failing, or hanging from now on).
    Close,
    /// `410 Gone` to every open watch: their resourceVersion is compacted.
    Gone,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Every event since the start: (resourceVersion, plural, name, line).
    history: Vec<(u64, String, String, Bytes)>,
    /// A watch from a resourceVersion below this is answered `410 Gone`.
    compacted: u64,
    fail: Option<u16>,
    /// `fail` and `hang` spare writes (a broken watch cache, say).
    reads_only: bool,
    hang: bool,
    held: BTreeSet<String>,
    requests: Vec<String>,
    applies: Vec<Apply>,
}

struct Shared {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
    /// Bumped on every change of `hang`/`held`, to wake the requests waiting.
    gate: watch::Sender<u64>,
}

/// The server's state, shared by the router and the test; clones share it.
#[derive(Clone)]
pub struct FakeApi {
    shared: Arc<Shared>,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                changes: broadcast::channel(4096).0,
                gate: watch::channel(0).0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates or replaces `object` (its `metadata.name`) under `plural`, as the
    /// API server would: a new resourceVersion, an event to the watches.
    pub fn put(&self, plural: &str, mut object: Value) {
        let (api_version, kind) = kind_of(plural).expect("a served kind");
        object["apiVersion"] = api_version.into();
        object["kind"] = kind.into();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_owned();
        let mut state = self.lock();
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        let existed = state
            .objects
            .entry(plural.into())
            .or_default()
            .insert(name.clone(), object.clone())
            .is_some();
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        Self::record(&mut state, &self.shared, plural, &name, kind, &object);
    }

    /// Deletes `name` under `plural`.
    pub fn delete(&self, plural: &str, name: &str) {
        let mut state = self.lock();
        let Some(mut object) = state.objects.get_mut(plural).and_then(|m| m.remove(name)) else {
            return;
        };
        state.rv += 1;
        object["metadata"]["resourceVersion"] = state.rv.to_string().into();
        Self::record(&mut state, &self.shared, plural, name, "DELETED", &object);
    }

    fn record(
        state: &mut State,
        shared: &Shared,
        plural: &str,
        name: &str,
        kind: &str,
        object: &Value,
    ) {
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
        line.push(b'\n');
        let line = Bytes::from(line);
        state
            .history
            .push((state.rv, plural.into(), name.into(), line.clone()));
        let _ = shared.changes.send(Change::Event {
            rv: state.rv,
            plural: plural.into(),
            name: name.into(),
            line,
        });
    }

    /// The object `name` under `plural`, as stored.
    pub fn get(&self, plural: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(plural)?.get(name).cloned()
    }

    /// Every resourceVersion so far is compacted: open watches get `410 Gone`, and
    /// so does any watch resumed from one; the watcher must list again.
    pub fn expire(&self) {
        let mut state = self.lock();
        state.compacted = state.rv + 1;
        let _ = self.shared.changes.send(Change::Gone);
    }

    /// From now on every request (`reads_only`: every GET) is answered `status`
    /// (`None`: served again). Open watches end.
    pub fn fail(&self, status: Option<u16>, reads_only: bool) {
        let mut state = self.lock();
        state.fail = status;
        state.reads_only = reads_only;
        drop(state);
        if status.is_some() {
            let _ = self.shared.changes.send(Change::Close);
        }
    }

    /// From now on no request (`reads_only`: no GET) is answered (`false`: the
    /// waiting ones are). Open watches end.
    pub fn hang(&self, hang: bool, reads_only: bool) {
        let mut state = self.lock();
        state.hang = hang;
        state.reads_only = reads_only;
        drop(state);
        if hang {
            let _ = self.shared.changes.send(Change::Close);
        }
        self.shared.gate.send_modify(|g| *g += 1);
    }

    /// Lists of `plural` wait until released (`false`).
    pub fn hold_lists(&self, plural: &str, hold: bool) {
        if hold {
            self.lock().held.insert(plural.into());
        } else {
            self.lock().held.remove(plural);
        }
        self.shared.gate.send_modify(|g| *g += 1);
    }

    /// Every request so far: method, path and query.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Every server-side apply so far.
    pub fn applies(&self) -> Vec<Apply> {
        self.lock().applies.clone()
    }

    /// The router: the kube client's service in-process, or served over HTTP.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// Serves the router on 127.0.0.1:[`PORT`] inside `ns` (plain HTTP) until the
    /// returned handle is dropped, which closes every connection at once, as a
    /// killed API server does.
    pub fn serve_in(&self, ns: &Namespace) -> Serving {
        let router = self.router();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = ns.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", PORT))
                    .await
                    .expect("bind the fake API server");
                ready_tx.send(()).expect("ready");
                tokio::select! {
                    result = axum::serve(listener, router) => result.expect("serve"),
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime drops every connection's task: their sockets close.
            runtime.shutdown_timeout(Duration::from_millis(100));
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake API server listening");
        Serving {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A kubeconfig for a client of [`FakeApi::serve_in`], in the same namespace.
    pub fn kubeconfig() -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{PORT}\n\
             users:\n- name: agent\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n\
             current-context: fake\n"
        )
    }
}

/// A running server; dropping it kills it.
pub struct Serving {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code});
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn json_response(value: &Value) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(value.to_string()))
        .unwrap()
}

/// (plural, name) of a served path.
fn route(path: &str) -> Option<(String, Option<String>)> {
    let rest = path
        .strip_prefix("/apis/airlock.dev/v1alpha1/")
        .or_else(|| path.strip_prefix("/api/v1/"))?;
    let mut parts = rest.split('/');
    let plural = parts.next()?.to_owned();
    kind_of(&plural)?;
    let name = parts.next().map(str::to_owned);
    parts.next().is_none().then_some((plural, name))
}

async fn handle(AxState(api): AxState<FakeApi>, request: Request<Body>) -> Response {
    let uri = request.uri().clone();
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let Some((plural, name)) = route(uri.path()) else {
        return status(404, "NotFound", "no such path");
    };
    api.lock()
        .requests
        .push(format!("{} {path_and_query}", request.method()));
    let is_read = request.method() == Method::GET;
    let is_list =
        is_read && name.is_none() && query.get("watch").map(String::as_str) != Some("true");
    // Held back until the test lets it through (or the client gives up).
    let mut gate = api.shared.gate.subscribe();
    loop {
        {
            let state = api.lock();
            let affected = is_read || !state.reads_only;
            if let Some(code) = state.fail.filter(|_| affected) {
                return status(
                    code,
                    "InternalError",
                    "the fake API server fails on purpose",
                );
            }
            let waits = (state.hang && affected) || (is_list && state.held.contains(&plural));
            if !waits {
                break;
            }
        }
        if gate.changed().await.is_err() {
            return status(503, "ServiceUnavailable", "stopping");
        }
    }
    let method = request.method().clone();
    match (method, name) {
        (Method::GET, None) if query.get("watch").map(String::as_str) == Some("true") => {
            watch_response(&api, &plural, &query)
        }
        (Method::GET, None) => list_response(&api, &plural, &query),
        (Method::GET, Some(name)) => match api.get(&plural, &name) {
            Some(object) => json_response(&object),
            None => status(404, "NotFound", &format!("{plural} {name} not found")),
        },
        (Method::PATCH, Some(name)) => {
            let content_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let Ok(bytes) = axum::body::to_bytes(request.into_body(), 16 << 20).await else {
                return status(400, "BadRequest", "unreadable body");
            };
            let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
                return status(400, "BadRequest", "the body is not JSON");
            };
            if content_type != "application/apply-patch+yaml" {
                return status(
                    415,
                    "UnsupportedMediaType",
                    "only server-side apply is served",
                );
            }
            if body["metadata"]["name"].as_str() != Some(name.as_str()) {
                return status(400, "BadRequest", "the body names another object");
            }
            api.lock().applies.push(Apply {
                uri: path_and_query,
                content_type,
                body: body.clone(),
            });
            api.put(&plural, body);
            json_response(&api.get(&plural, &name).expect("just stored"))
        }
        _ => status(405, "MethodNotAllowed", "not served"),
    }
}

/// `metadata.name=X` of a field selector, the only one the agent uses.
fn name_selector(query: &BTreeMap<String, String>) -> Option<String> {
    query
        .get("fieldSelector")?
        .strip_prefix("metadata.name=")
        .map(str::to_owned)
}

fn list_response(api: &FakeApi, plural: &str, query: &BTreeMap<String, String>) -> Response {
    let (api_version, kind) = kind_of(plural).expect("routed");
    let only = name_selector(query);
    let state = api.lock();
    let items: Vec<&Value> = state
        .objects
        .get(plural)
        .map(|m| {
            m.iter()
                .filter(|(name, _)| only.as_ref().is_none_or(|o| o == *name))
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default();
    let offset: usize = query
        .get("continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let page: Vec<&Value> = items.iter().skip(offset).take(limit).copied().collect();
    let mut metadata = json!({"resourceVersion": state.rv.to_string()});
    if offset.saturating_add(limit) < items.len() {
        metadata["continue"] = (offset + limit).to_string().into();
    }
    json_response(&json!({
        "apiVersion": api_version,
        "kind": format!("{kind}List"),
        "metadata": metadata,
        "items": page,
    }))
}

fn gone_line() -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410}}))
    .unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn watch_response(api: &FakeApi, plural: &str, query: &BTreeMap<String, String>) -> Response {
    let only = name_selector(query);
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(290),
    );
    let wanted = {
        let plural = plural.to_owned();
        move |p: &str, name: &str| p == plural && only.as_ref().is_none_or(|o| o == name)
    };
    // Subscribed before the backlog is read, under the lock: no event falls between.
    let (receiver, backlog) = {
        let state = api.lock();
        let receiver = api.shared.changes.subscribe();
        if from < state.compacted {
            let body = Body::from(gone_line());
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .unwrap();
        }
        let backlog: Vec<Bytes> = state
            .history
            .iter()
            .filter(|(rv, p, name, _)| *rv > from && wanted(p, name))
            .map(|(_, _, _, line)| line.clone())
            .collect();
        (receiver, backlog)
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = futures_util::stream::unfold(
        (receiver, backlog.into_iter(), false, from),
        move |(mut receiver, mut backlog, done, last)| {
            let wanted = wanted.clone();
            async move {
                if done {
                    return None;
                }
                if let Some(line) = backlog.next() {
                    return Some((
                        Ok::<_, std::io::Error>(line),
                        (receiver, backlog, false, last),
                    ));
                }
                loop {
                    let change = tokio::time::timeout_at(deadline, receiver.recv()).await;
                    match change {
                        Err(_) | Ok(Err(_)) | Ok(Ok(Change::Close)) => return None,
                        Ok(Ok(Change::Gone)) => {
                            return Some((Ok(gone_line()), (receiver, backlog, true, last)));
                        }
                        Ok(Ok(Change::Event {
                            rv,
                            plural,
                            name,
                            line,
                        })) => {
                            if rv > last && wanted(&plural, &name) {
                                return Some((Ok(line), (receiver, backlog, false, rv)));
                            }
                        }
                    }
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}
