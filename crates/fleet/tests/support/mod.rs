//! A fake Kubernetes API server for the controller's tests: no kube-apiserver
//! (nor etcd) can run here, so this serves the handful of endpoints the
//! controller uses, in the wire format kube-rs speaks:
//!
//! - lists: `{"kind":"DeploymentList","apiVersion":"apps/v1","metadata":{"resourceVersion":"N"},"items":[...]}`;
//! - watches (`?watch=true&resourceVersion=N`): a chunked body of
//!   newline-delimited `{"type":"ADDED|MODIFIED|DELETED","object":{...}}`,
//!   replaying every change after N and then fed from a channel as the test
//!   changes objects;
//! - GET and (merge) PATCH of the Ingress, each PATCH body sent to the test;
//! - POST of core/v1 Events, each sent to the test.
//!
//! Failures are injected per collection (lists and watches answer 500, open
//! watches are cut) and for the Ingress PATCH.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub const NS: &str = "anyaccel";
pub const INGRESS: &str = "anyaccel";
pub const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/anyaccel/deployments";
pub const SCALED_OBJECTS: &str = "/apis/keda.sh/v1alpha1/namespaces/anyaccel/scaledobjects";
pub const NODE_CLAIMS: &str = "/apis/karpenter.sh/v1/nodeclaims";
pub const EVENTS_DEFAULT: &str = "/api/v1/namespaces/default/events";
pub const EVENTS_FLEET: &str = "/api/v1/namespaces/anyaccel/events";
pub const INGRESS_PATH: &str = "/apis/networking.k8s.io/v1/namespaces/anyaccel/ingresses/anyaccel";

struct Collection {
    api_version: &'static str,
    list_kind: &'static str,
    items: BTreeMap<String, Value>,
    /// Every change, for watches that resume from a resource version.
    log: Vec<(u64, Value)>,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    failing: bool,
}

struct Inner {
    rv: u64,
    collections: HashMap<&'static str, Collection>,
    ingress: Value,
    fail_patch: bool,
    patches: mpsc::UnboundedSender<Value>,
    patch_attempts: mpsc::UnboundedSender<Value>,
    events: mpsc::UnboundedSender<Value>,
    requests: Vec<String>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Shared,
    /// Successful PATCH bodies of the Ingress.
    pub patches: mpsc::UnboundedReceiver<Value>,
    /// Every PATCH attempt, failed or not.
    pub patch_attempts: mpsc::UnboundedReceiver<Value>,
    /// POSTed Events.
    pub events: mpsc::UnboundedReceiver<Value>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeApi {
    pub async fn start(ingress: Value) -> FakeApi {
        let (patches_tx, patches) = mpsc::unbounded_channel();
        let (attempts_tx, patch_attempts) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let collection = |api_version, list_kind| Collection {
            api_version,
            list_kind,
            items: BTreeMap::new(),
            log: Vec::new(),
            watchers: Vec::new(),
            failing: false,
        };
        let collections = HashMap::from([
            (DEPLOYMENTS, collection("apps/v1", "DeploymentList")),
            (
                SCALED_OBJECTS,
                collection("keda.sh/v1alpha1", "ScaledObjectList"),
            ),
            (NODE_CLAIMS, collection("karpenter.sh/v1", "NodeClaimList")),
            (EVENTS_DEFAULT, collection("v1", "EventList")),
            (EVENTS_FLEET, collection("v1", "EventList")),
        ]);
        let shared = Shared(Arc::new(Mutex::new(Inner {
            rv: 1,
            collections,
            ingress,
            fail_patch: false,
            patches: patches_tx,
            patch_attempts: attempts_tx,
            events: events_tx,
            requests: Vec::new(),
        })));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApi {
            addr,
            shared,
            patches,
            patch_attempts,
            events,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces an object, telling open watches.
    pub fn apply(&self, collection: &'static str, object: Value) {
        change(&mut self.shared.lock(), collection, object, false);
    }

    pub fn delete(&self, collection: &'static str, object: Value) {
        change(&mut self.shared.lock(), collection, object, true);
    }

    /// Cuts the collection's open watches; until [`heal`](Self::heal), its
    /// lists and watches answer 500.
    pub fn break_watches(&self, collection: &'static str) {
        let mut inner = self.shared.lock();
        if let Some(c) = inner.collections.get_mut(collection) {
            c.failing = true;
            c.watchers.clear();
        }
    }

    pub fn heal(&self, collection: &'static str) {
        if let Some(c) = self.shared.lock().collections.get_mut(collection) {
            c.failing = false;
        }
    }

    /// While set, the Ingress PATCH answers 500 (the attempt is still sent
    /// on `patch_attempts`).
    pub fn fail_patches(&self, fail: bool) {
        self.shared.lock().fail_patch = fail;
    }

    /// The Ingress's annotation `key`, as stored.
    pub fn ingress_annotation(&self, key: &str) -> Option<String> {
        self.shared.lock().ingress["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_owned)
    }

    /// Method and path of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }
}

fn change(inner: &mut Inner, collection: &'static str, mut object: Value, deleted: bool) {
    inner.rv += 1;
    let rv = inner.rv;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let c = inner
        .collections
        .get_mut(collection)
        .expect("known collection");
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = if deleted {
        c.items.remove(&name);
        "DELETED"
    } else if c.items.insert(name, object.clone()).is_some() {
        "MODIFIED"
    } else {
        "ADDED"
    };
    let event = json!({"type": kind, "object": object});
    c.log.push((rv, event.clone()));
    let line = Bytes::from(format!("{event}\n"));
    c.watchers.retain(|w| w.send(line.clone()).is_ok());
}

fn status(code: StatusCode, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message,
        "reason": code.canonical_reason().unwrap_or("Error"), "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(State(shared): State<Shared>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query: HashMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut inner = shared.lock();
    inner.requests.push(format!("{method} {path}"));

    if path == INGRESS_PATH {
        return match method {
            Method::GET => json_response(StatusCode::OK, &inner.ingress),
            Method::PATCH => {
                let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let _ = inner.patch_attempts.send(patch.clone());
                if inner.fail_patch {
                    return status(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
                }
                if let Some(annotations) = patch["metadata"]["annotations"].as_object() {
                    for (k, v) in annotations {
                        inner.ingress["metadata"]["annotations"][k] = v.clone();
                    }
                }
                inner.rv += 1;
                inner.ingress["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
                let _ = inner.patches.send(patch);
                json_response(StatusCode::OK, &inner.ingress)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "not here"),
        };
    }

    let Some(key) = inner.collections.keys().find(|k| **k == path).copied() else {
        return status(StatusCode::NOT_FOUND, &format!("no route {method} {path}"));
    };
    if method == Method::POST && key.ends_with("/events") {
        let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let _ = inner.events.send(event.clone());
        change(&mut inner, key, event.clone(), false);
        return json_response(StatusCode::CREATED, &event);
    }
    if method != Method::GET {
        return status(StatusCode::METHOD_NOT_ALLOWED, "not here");
    }
    let rv = inner.rv;
    let c = inner.collections.get_mut(key).expect("found above");
    if c.failing {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
    }
    if query.get("watch").map(String::as_str) != Some("true") {
        let list = json!({
            "kind": c.list_kind, "apiVersion": c.api_version,
            "metadata": {"resourceVersion": rv.to_string()},
            "items": c.items.values().collect::<Vec<_>>(),
        });
        return json_response(StatusCode::OK, &list);
    }
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    // Replay and subscribe under one lock: no change falls in between.
    for (_, event) in c.log.iter().filter(|(v, _)| *v > since) {
        let _ = tx.send(Bytes::from(format!("{event}\n")));
    }
    c.watchers.push(tx);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `now - secs_ago` in RFC 3339 with milliseconds.
pub fn time_ago(secs_ago: f64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let ms = now - (secs_ago * 1000.0) as i64;
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .expect("timestamp")
        .to_string()
}

pub fn deployment(name: &str, desired: i32, ready: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"replicas": desired, "selector": {"matchLabels": {"app": name}}, "template": {}},
        "status": {"replicas": desired, "readyReplicas": ready},
    })
}

pub fn scaled_object(name: &str, max: i64) -> Value {
    json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"scaleTargetRef": {"name": name}, "maxReplicaCount": max},
    })
}

/// A NodeClaim of `node_pool`; `launch_failed` sets `Launched=False` with
/// Karpenter's insufficient-capacity reason.
pub fn node_claim(name: &str, node_pool: &str, launch_failed: bool) -> Value {
    let launched = if launch_failed {
        json!({"type": "Launched", "status": "False", "reason": "InsufficientCapacity",
               "message": "all requested instance types were unavailable",
               "lastTransitionTime": time_ago(0.0)})
    } else {
        json!({"type": "Launched", "status": "Unknown", "reason": "AwaitingReconciliation",
               "lastTransitionTime": time_ago(0.0)})
    };
    json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": node_pool}},
        "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": node_pool}},
        "status": {"conditions": [launched]},
    })
}

/// Karpenter's Warning about a NodeClaim it could not launch, as recorded
/// in `default`, last seen `secs_ago`.
pub fn ice_event(name: &str, claim: &str, count: i32, secs_ago: f64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": time_ago(secs_ago + 1.0)},
        "involvedObject": {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "name": claim},
        "reason": "InsufficientCapacityError",
        "message": format!("NodeClaim {claim} event: Failed to launch node claim, insufficient capacity"),
        "type": "Warning",
        "source": {"component": "karpenter"},
        "count": count,
        "firstTimestamp": time_ago(secs_ago + 1.0),
        "lastTimestamp": time_ago(secs_ago),
    })
}

/// A plain HTTP/1.1 GET: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of the series `name{labels}` in a scrape, if present.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `probe` every 20 ms until it returns `Some`, or panics after
/// `timeout` with `what`. For state that is only observable by asking
/// (readiness, metrics); changes that arrive on channels are awaited.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives from `rx` within `timeout`, or panics naming `what`.
pub async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, timeout: Duration, what: &str) -> T {
    match tokio::time::timeout(timeout, rx.recv()).await {
        Ok(Some(v)) => v,
        Ok(None) => panic!("channel closed waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}
