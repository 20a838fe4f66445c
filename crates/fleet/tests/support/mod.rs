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
//! Lists and watches apply the `labelSelector` and `fieldSelector` they are
//! sent, as the API server does (equality, `!=`, `in`, `notin`, existence;
//! field selectors only on the fields the API server supports for that
//! kind); a malformed selector or an unsupported field answers 400, so a
//! watcher that sends one never becomes ready.
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
    watchers: Vec<(Selectors, mpsc::UnboundedSender<Bytes>)>,
    failing: bool,
    /// Fields a field selector may name (beyond `metadata.name` and
    /// `metadata.namespace`, which every kind supports).
    fields: &'static [&'static str],
}

/// Fields the API server's field selectors support on core/v1 Events.
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// One request as the fake received it, query decoded.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
}

impl Request {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        let mut q: Vec<_> = self.query.iter().collect();
        q.sort();
        for (i, (k, v)) in q.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { "?" } else { "&" })?;
        }
        Ok(())
    }
}

struct Inner {
    rv: u64,
    collections: HashMap<&'static str, Collection>,
    ingress: Value,
    fail_patch: bool,
    patches: mpsc::UnboundedSender<Value>,
    patch_attempts: mpsc::UnboundedSender<Value>,
    events: mpsc::UnboundedSender<Value>,
    requests: Vec<Request>,
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
        let collection = |api_version, list_kind, fields| Collection {
            api_version,
            list_kind,
            items: BTreeMap::new(),
            log: Vec::new(),
            watchers: Vec::new(),
            failing: false,
            fields,
        };
        let collections = HashMap::from([
            (DEPLOYMENTS, collection("apps/v1", "DeploymentList", &[])),
            (
                SCALED_OBJECTS,
                collection("keda.sh/v1alpha1", "ScaledObjectList", &[]),
            ),
            (
                NODE_CLAIMS,
                collection("karpenter.sh/v1", "NodeClaimList", &[]),
            ),
            (EVENTS_DEFAULT, collection("v1", "EventList", EVENT_FIELDS)),
            (EVENTS_FLEET, collection("v1", "EventList", EVENT_FIELDS)),
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

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
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
    c.watchers
        .retain(|(sel, w)| !sel.matches(&event["object"]) || w.send(line.clone()).is_ok());
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

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space).
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(shared): State<Shared>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query: HashMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (url_decode(k), url_decode(v)))
        .collect();
    let mut inner = shared.lock();
    inner.requests.push(Request {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
    });

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
    let selectors = match Selectors::parse(
        query.get("labelSelector").map(String::as_str),
        query.get("fieldSelector").map(String::as_str),
        c.fields,
    ) {
        Ok(s) => s,
        Err(message) => return status(StatusCode::BAD_REQUEST, &message),
    };
    if query.get("watch").map(String::as_str) != Some("true") {
        let list = json!({
            "kind": c.list_kind, "apiVersion": c.api_version,
            "metadata": {"resourceVersion": rv.to_string()},
            "items": c.items.values().filter(|o| selectors.matches(o)).collect::<Vec<_>>(),
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
        if selectors.matches(&event["object"]) {
            let _ = tx.send(Bytes::from(format!("{event}\n")));
        }
    }
    c.watchers.push((selectors, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// One requirement of a label or field selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Requirement::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
            // As the API server: `!=` and `notin` also match a missing key.
            Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        }
    }
}

/// A list or watch's selectors, parsed and checked.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    pub labels: Vec<Requirement>,
    pub fields: Vec<Requirement>,
}

/// A label key: an optional DNS prefix and `/`, then a name of
/// alphanumerics, `-`, `_` and `.` (at most 63), starting and ending
/// alphanumeric.
fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let dns = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    };
    prefix.is_none_or(dns) && valid_label_value(name) && !name.is_empty()
}

/// A label value: empty, or up to 63 of alphanumerics, `-`, `_`, `.`,
/// starting and ending alphanumeric.
fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Splits at commas outside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("unbalanced parentheses in {s:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out)
}

/// Parses a label selector as the API server does (`k=v`, `k==v`, `k!=v`,
/// `k in (a,b)`, `k notin (a,b)`, `k`, `!k`).
pub fn parse_label_selector(s: &str) -> Result<Vec<Requirement>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: &str| Err(format!("unable to parse requirement {s:?}: {why}"));
    let key_ok = |k: &str| {
        if valid_label_key(k) {
            Ok(k.to_string())
        } else {
            Err(format!("invalid label key {k:?} in {s:?}"))
        }
    };
    let value_ok = |v: &str| {
        if valid_label_value(v) {
            Ok(v.to_string())
        } else {
            Err(format!("invalid label value {v:?} in {s:?}"))
        }
    };
    let mut out = Vec::new();
    for part in split_top_level(s)? {
        let part = part.trim();
        if part.is_empty() {
            return bad("empty requirement");
        }
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("expected (values) in {part:?}"))?;
            let values: Vec<String> = inner
                .split(',')
                .map(|v| value_ok(v.trim()))
                .collect::<Result<_, _>>()?;
            if values.iter().all(String::is_empty) {
                return Err(format!("empty value set in {part:?}"));
            }
            Ok(values)
        };
        let req = if let Some((k, rest)) = part.split_once(" notin ") {
            Requirement::NotIn(key_ok(k.trim())?, set(rest)?)
        } else if let Some((k, rest)) = part.split_once(" in ") {
            Requirement::In(key_ok(k.trim())?, set(rest)?)
        } else if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(key_ok(k.trim())?, value_ok(v.trim())?)
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(key_ok(k.trim())?, value_ok(v.trim())?)
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(key_ok(k.trim())?)
        } else {
            Requirement::Exists(key_ok(part)?)
        };
        out.push(req);
    }
    Ok(out)
}

/// Parses a field selector (`f=v`, `f==v`, `f!=v`, comma-separated) naming
/// only `metadata.name`, `metadata.namespace` or one of `supported`.
pub fn parse_field_selector(s: &str, supported: &[&str]) -> Result<Vec<Requirement>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let (field, value, negated) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (f, v, false)
        } else {
            return Err(format!("invalid field selector requirement {part:?}"));
        };
        let field = field.trim();
        if !(["metadata.name", "metadata.namespace"].contains(&field) || supported.contains(&field))
        {
            return Err(format!("field label not supported: {field}"));
        }
        let (f, v) = (field.to_string(), value.trim().to_string());
        out.push(if negated {
            Requirement::NotEquals(f, v)
        } else {
            Requirement::Equals(f, v)
        });
    }
    Ok(out)
}

impl Selectors {
    pub fn parse(
        labels: Option<&str>,
        fields: Option<&str>,
        supported_fields: &[&str],
    ) -> Result<Self, String> {
        Ok(Self {
            labels: parse_label_selector(labels.unwrap_or_default())?,
            fields: parse_field_selector(fields.unwrap_or_default(), supported_fields)?,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let label = |k: &str| object["metadata"]["labels"][k].as_str().map(str::to_owned);
        // `source` selects on the reporting component.
        let field = |f: &str| {
            let pointer = match f {
                "source" => "/source/component".to_string(),
                f => format!("/{}", f.replace('.', "/")),
            };
            Some(match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            })
        };
        self.labels.iter().all(|r| r.matches(label)) && self.fields.iter().all(|r| r.matches(field))
    }
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
