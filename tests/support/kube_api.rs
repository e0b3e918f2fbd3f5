//! A test Kubernetes API server on loopback: the real `kube` client (peerguard's) talks to it
//! over HTTP/1.1 exactly as to a real one. No real API server can run here, so this speaks
//! the parts of the protocol that a list/watch client uses (tests/README.md says what it does
//! and does not do):
//!
//! - discovery: `GET /apis/{group}/{version}` (an APIResourceList, or 404 when the group
//!   version is not served, i.e. its CRD is not installed) and `GET /version`;
//! - lists: `GET .../namespaces/{ns}/{plural}` and cluster-scoped `GET .../{plural}`, a
//!   `{Kind}List` with `metadata.resourceVersion`; items of the core group without
//!   `apiVersion`/`kind`, as the real server prints them;
//! - watches: `?watch=true&resourceVersion=N`: a chunked stream of one JSON event per line
//!   (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when `allowWatchBookmarks=true`, `ERROR`),
//!   replaying every change after N, then following live ones; a resourceVersion older than
//!   the compaction point gets an `ERROR` event with a `410 Expired` Status, as etcd
//!   compaction makes the real server do;
//! - a bearer token checked on every request (401 without it), `403 Forbidden` Status bodies
//!   for the verbs a test forbids, and being down (every connection cut, nothing accepted)
//!   and up again on the same port.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use super::pki::TestDir;

/// The token the kubeconfig carries and the server requires.
pub const TOKEN: &str = "peerguard-test-token";

/// A kind the server can serve.
#[derive(Debug, Clone, Copy)]
struct KindInfo {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
}

const KINDS: &[KindInfo] = &[
    KindInfo {
        group: "security.istio.io",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        namespaced: true,
    },
    KindInfo {
        group: "security.istio.io",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        namespaced: true,
    },
    KindInfo {
        group: "authentication.istio.io",
        kind: "Policy",
        plural: "policies",
        namespaced: true,
    },
    KindInfo {
        group: "authentication.istio.io",
        kind: "MeshPolicy",
        plural: "meshpolicies",
        namespaced: false,
    },
    KindInfo {
        group: "",
        kind: "Service",
        plural: "services",
        namespaced: true,
    },
];

/// Every group version a full Istio (with the legacy CRDs) serves.
pub const ALL_GROUP_VERSIONS: &[&str] = &[
    "security.istio.io/v1",
    "security.istio.io/v1beta1",
    "authentication.istio.io/v1alpha1",
];

fn kind_by_plural(plural: &str) -> Option<KindInfo> {
    KINDS.iter().copied().find(|k| k.plural == plural)
}

fn kind_by_name(kind: &str) -> Option<KindInfo> {
    KINDS.iter().copied().find(|k| k.kind == kind)
}

/// One request the server answered, for tests to assert on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// `discovery`, `version`, `list` or `watch`.
    pub verb: &'static str,
    pub plural: String,
    pub namespace: Option<String>,
    /// The `resourceVersion` parameter.
    pub resource_version: Option<String>,
}

/// One change, as a watch delivers it.
#[derive(Debug, Clone)]
struct Change {
    resource_version: u64,
    plural: &'static str,
    namespace: Option<String>,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Clone)]
enum Broadcast {
    Change(Change),
    Bookmark(u64),
    /// Every watch ends (cleanly, with the chunked terminator).
    CloseWatches,
}

#[derive(Debug, Default)]
struct State {
    resource_version: u64,
    /// A watch from a resourceVersion below this gets 410.
    compacted: u64,
    /// (plural, namespace or "", name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    history: Vec<Change>,
    served: BTreeSet<String>,
    /// (verb, plural, namespace or "") refused with 403.
    forbidden: BTreeSet<(String, String, String)>,
    log: Vec<Logged>,
}

/// The test API server. Dropping it stops it.
pub struct KubeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Broadcast>,
    serving: Mutex<Option<JoinSet<()>>>,
    dir: TestDir,
}

impl KubeApi {
    /// Serves `group_versions` (plus the core group) on a free loopback port.
    pub async fn start(group_versions: &[&str]) -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test API server");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(State {
            served: group_versions.iter().map(|gv| gv.to_string()).collect(),
            resource_version: 100,
            ..State::default()
        }));
        let (events, _) = broadcast::channel(1024);
        let api = KubeApi {
            addr,
            state,
            events,
            serving: Mutex::new(None),
            dir: TestDir::new("kube-api"),
        };
        api.serve(listener);
        api
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn serve(&self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let (state, events) = (self.state.clone(), self.events.clone());
        tasks.spawn(accept(listener, state, events));
        *self.serving.lock().unwrap_or_else(PoisonError::into_inner) = Some(tasks);
    }

    /// Goes down: every open connection (watches included) is cut and nothing is accepted.
    pub async fn stop(&self) {
        let serving = self.serving.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut tasks) = serving {
            tasks.abort_all();
            // Joined, so that the listening socket is closed when this returns.
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Comes back on the same port, with the same objects and history.
    pub async fn restart(&self) {
        // The port was just released; the kernel allows rebinding it at once (SO_REUSEADDR).
        let listener = TcpListener::bind(self.addr).await.expect("rebind the test API server");
        self.serve(listener);
    }

    /// A kubeconfig for this server (its current context), as `--kubeconfig` reads it.
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\nusers:\n- name: test\n  user:\n    token: {TOKEN}\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Creates or replaces every object of a YAML text (`---`-separated documents, `kind: List`
    /// unpacked), as `kubectl apply -f` does; kinds this server does not serve are left out, as
    /// they would live in other resources of a real cluster.
    pub fn apply_yaml(&self, yaml: &str) {
        use serde::Deserialize;
        for document in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value = Value::deserialize(document).expect("test YAML parses");
            let objects = match value["kind"].as_str() {
                Some("List") => value["items"].as_array().cloned().unwrap_or_default(),
                _ => vec![value],
            };
            for object in objects {
                if object["kind"].as_str().and_then(kind_by_name).is_some() {
                    self.apply(object);
                }
            }
        }
    }

    /// Creates (ADDED) or replaces (MODIFIED) one object; returns its new resourceVersion.
    pub fn apply(&self, object: Value) -> u64 {
        self.change(object, true)
    }

    /// Changes an object without any watch hearing of it, as when the change's event has been
    /// compacted away: only a new list shows it.
    pub fn apply_unseen(&self, object: Value) -> u64 {
        self.change(object, false)
    }

    fn change(&self, mut object: Value, announce: bool) -> u64 {
        let info = kind_by_name(object["kind"].as_str().expect("kind")).expect("a kind the server serves");
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_string);
        let name = object["metadata"]["name"].as_str().expect("name").to_string();
        let mut state = self.lock();
        state.resource_version += 1;
        let rv = state.resource_version;
        let key = (
            info.plural.to_string(),
            namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        let existed = state.objects.get(&key).cloned();
        let metadata = object["metadata"].as_object_mut().expect("metadata");
        metadata.insert("resourceVersion".into(), rv.to_string().into());
        let uid = existed
            .as_ref()
            .map_or_else(|| json!(format!("uid-{rv}")), |old| old["metadata"]["uid"].clone());
        metadata.insert("uid".into(), uid);
        metadata
            .entry("creationTimestamp")
            .or_insert_with(|| json!("2024-05-01T10:00:00Z"));
        state.objects.insert(key, object.clone());
        let kind = if existed.is_some() { "MODIFIED" } else { "ADDED" };
        self.record(&mut state, info, namespace, kind, object, announce);
        rv
    }

    /// Deletes one object (DELETED).
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) {
        let info = kind_by_name(kind).expect("a kind the server serves");
        let mut state = self.lock();
        let key = (
            info.plural.to_string(),
            namespace.unwrap_or_default().to_string(),
            name.to_string(),
        );
        let mut object = state.objects.remove(&key).expect("the object exists");
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = state.resource_version.to_string().into();
        self.record(&mut state, info, namespace.map(str::to_string), "DELETED", object, true);
    }

    fn record(
        &self,
        state: &mut State,
        info: KindInfo,
        namespace: Option<String>,
        kind: &'static str,
        object: Value,
        announce: bool,
    ) {
        let change = Change {
            resource_version: state.resource_version,
            plural: info.plural,
            namespace,
            kind,
            object,
        };
        if announce {
            state.history.push(change.clone());
            let _ = self.events.send(Broadcast::Change(change));
        } else {
            // A watch from before the unseen change cannot be served any more: 410.
            state.compacted = state.resource_version;
        }
    }

    /// Sends a BOOKMARK with the current resourceVersion to every watch that allows them.
    pub fn bookmark(&self) -> u64 {
        let rv = self.lock().resource_version;
        let _ = self.events.send(Broadcast::Bookmark(rv));
        rv
    }

    /// Ends every watch as the server does when its timeout expires: the stream simply ends.
    pub fn close_watches(&self) {
        let _ = self.events.send(Broadcast::CloseWatches);
    }

    /// Refuses `verb` (`list` or `watch`) on `plural` in `namespace` with 403.
    pub fn forbid(&self, verb: &str, plural: &str, namespace: &str) {
        self.lock()
            .forbidden
            .insert((verb.into(), plural.into(), namespace.into()));
    }

    pub fn allow(&self, verb: &str, plural: &str, namespace: &str) {
        self.lock()
            .forbidden
            .remove(&(verb.into(), plural.into(), namespace.into()));
    }

    /// The requests answered so far.
    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// How many `verb` requests were made for `plural` in `namespace`.
    pub fn count(&self, verb: &str, plural: &str, namespace: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| l.verb == verb && l.plural == plural && l.namespace.as_deref().unwrap_or_default() == namespace)
            .count()
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(mut tasks) = self.serving.lock().unwrap_or_else(PoisonError::into_inner).take() {
            tasks.abort_all();
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn accept(listener: TcpListener, state: Arc<Mutex<State>>, events: broadcast::Sender<Broadcast>) {
    // Connections live in this task's set, so aborting the accept task cuts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (state, events) = (state.clone(), events.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let (state, events) = (state.clone(), events.clone());
                        async move { Ok::<_, Infallible>(answer(request, &state, &events)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

fn full(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("response")
}

/// A `Status` body, as the API server sends with every error.
fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    full(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// Where a request path points.
struct Path<'a> {
    group: &'a str,
    version: &'a str,
    namespace: Option<&'a str>,
    plural: Option<&'a str>,
}

fn parse_path(path: &str) -> Option<Path<'_>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural) = match rest {
        [] => (None, None),
        [plural] => (None, Some(*plural)),
        ["namespaces", namespace, plural] => (Some(*namespace), Some(*plural)),
        _ => return None,
    };
    Some(Path {
        group,
        version,
        namespace,
        plural,
    })
}

fn query(request: &Request<Incoming>) -> BTreeMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%2F", "/")))
        .collect()
}

fn answer(
    request: Request<Incoming>,
    state: &Arc<Mutex<State>>,
    events: &broadcast::Sender<Broadcast>,
) -> Response<Body> {
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h == format!("Bearer {TOKEN}"));
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into());
    }
    let uri_path = request.uri().path().to_string();
    let params = query(&request);
    if uri_path == "/version" {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.log.push(Logged {
            verb: "version",
            plural: String::new(),
            namespace: None,
            resource_version: None,
        });
        return full(
            StatusCode::OK,
            &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-peerguard-test", "gitCommit": "0",
                    "gitTreeState": "clean", "buildDate": "2025-08-27T00:00:00Z", "goVersion": "go1.24",
                    "compiler": "gc", "platform": "linux/amd64"}),
        );
    }
    let Some(path) = parse_path(&uri_path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find {uri_path}"),
        );
    };
    let group_version = if path.group.is_empty() {
        path.version.to_string()
    } else {
        format!("{}/{}", path.group, path.version)
    };
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    let served = path.group.is_empty() && path.version == "v1" || s.served.contains(&group_version);
    let Some(plural) = path.plural else {
        s.log.push(Logged {
            verb: "discovery",
            plural: group_version.clone(),
            namespace: None,
            resource_version: None,
        });
        if !served {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".into(),
            );
        }
        let resources: Vec<Value> = KINDS
            .iter()
            .filter(|k| k.group == path.group)
            .map(|k| {
                json!({"name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced,
                            "kind": k.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
            })
            .collect();
        return full(
            StatusCode::OK,
            &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
        );
    };
    let info = match kind_by_plural(plural) {
        Some(info) if served && info.group == path.group => info,
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".into(),
            )
        }
    };
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = if watch { "watch" } else { "list" };
    let namespace = path.namespace.map(str::to_string);
    s.log.push(Logged {
        verb,
        plural: plural.to_string(),
        namespace: namespace.clone(),
        resource_version: params.get("resourceVersion").cloned(),
    });
    let scope = namespace.clone().unwrap_or_default();
    if s.forbidden
        .contains(&(verb.to_string(), plural.to_string(), scope.clone()))
    {
        let group = if info.group.is_empty() {
            "\"\"".to_string()
        } else {
            format!("\"{}\"", info.group)
        };
        let place = namespace.as_deref().map_or_else(
            || "at the cluster scope".to_string(),
            |ns| format!("in the namespace \"{ns}\""),
        );
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{plural}.{} is forbidden: User \"system:serviceaccount:default:peerguard\" cannot {verb} resource \
                 \"{plural}\" in API group {group} {place}",
                info.group
            ),
        );
    }
    let in_scope = |object_namespace: Option<&str>| namespace.is_none() || object_namespace == namespace.as_deref();
    if !watch {
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|((p, ns, _), _)| p == plural && in_scope(Some(ns.as_str()).filter(|ns| !ns.is_empty())))
            .map(|(_, object)| item_as_listed(object, info, &group_version))
            .collect();
        return full(
            StatusCode::OK,
            &json!({"kind": format!("{}List", info.kind), "apiVersion": group_version,
                    "metadata": {"resourceVersion": s.resource_version.to_string()}, "items": items}),
        );
    }
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    if from < s.compacted {
        let expired = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("too old resource version: {from} ({})", s.compacted),
            "reason": "Expired", "code": 410}});
        let _ = tx.send(line(&expired));
        drop(tx);
    } else {
        let wanted = move |change: &Change| change.plural == info.plural && in_scope_owned(&namespace, change);
        let backlog: Vec<Change> = s
            .history
            .iter()
            .filter(|c| c.resource_version > from && wanted(c))
            .cloned()
            .collect();
        let live = events.subscribe();
        let group_version = group_version.clone();
        tokio::spawn(stream_watch(
            tx,
            backlog,
            live,
            wanted,
            bookmarks,
            info,
            group_version,
            from,
        ));
    }
    drop(s);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(body).boxed())
        .expect("watch response")
}

fn in_scope_owned(namespace: &Option<String>, change: &Change) -> bool {
    namespace.is_none() || change.namespace == *namespace
}

/// A list item: with `apiVersion`/`kind` for custom resources, without for the core group.
fn item_as_listed(object: &Value, info: KindInfo, group_version: &str) -> Value {
    let mut item = object.clone();
    if info.group.is_empty() {
        if let Some(fields) = item.as_object_mut() {
            fields.remove("apiVersion");
            fields.remove("kind");
        }
    } else {
        item["apiVersion"] = group_version.into();
    }
    item
}

fn line(event: &Value) -> Bytes {
    Bytes::from(format!("{event}\n"))
}

#[allow(clippy::too_many_arguments)]
async fn stream_watch(
    tx: mpsc::UnboundedSender<Bytes>,
    backlog: Vec<Change>,
    mut live: broadcast::Receiver<Broadcast>,
    wanted: impl Fn(&Change) -> bool,
    bookmarks: bool,
    info: KindInfo,
    group_version: String,
    mut sent: u64,
) {
    let event = |change: &Change| {
        let mut object = change.object.clone();
        object["apiVersion"] = if info.group.is_empty() {
            "v1".into()
        } else {
            group_version.clone().into()
        };
        line(&json!({"type": change.kind, "object": object}))
    };
    for change in &backlog {
        if tx.send(event(change)).is_err() {
            return;
        }
        sent = change.resource_version;
    }
    loop {
        match live.recv().await {
            Ok(Broadcast::Change(change)) if change.resource_version > sent && wanted(&change) => {
                sent = change.resource_version;
                if tx.send(event(&change)).is_err() {
                    return;
                }
            }
            Ok(Broadcast::Change(_)) => {}
            Ok(Broadcast::Bookmark(rv)) if bookmarks => {
                let bookmark = json!({"type": "BOOKMARK", "object": {"kind": info.kind, "apiVersion": group_version,
                    "metadata": {"resourceVersion": rv.to_string()}}});
                if tx.send(line(&bookmark)).is_err() {
                    return;
                }
            }
            Ok(Broadcast::Bookmark(_)) => {}
            Ok(Broadcast::CloseWatches) | Err(_) => return,
        }
    }
}
