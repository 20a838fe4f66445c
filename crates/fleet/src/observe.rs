//! What the cluster says about each pool: kube watchers (list, then watch)
//! feed [`Observations`], which turns Deployments, ScaledObjects, NodeClaims
//! and Karpenter's events into per-pool [`PoolState`]s.
//!
//! Watched, and nothing else:
//! - `apps/v1` Deployments in the fleet namespace: desired (`spec.replicas`,
//!   which KEDA's HPA sets) and ready (`status.readyReplicas`) replicas;
//! - `keda.sh/v1alpha1` ScaledObjects in the fleet namespace:
//!   `spec.maxReplicaCount`, only for the messages;
//! - `karpenter.sh/v1` NodeClaims of the fleet's NodePools (cluster-wide,
//!   by label): a `Launched=False` condition whose reason says
//!   `InsufficientCapacity` is a launch failure;
//! - core/v1 Events with reason `InsufficientCapacityError` in `default`
//!   (where events about cluster-scoped NodeClaims land) and in the fleet
//!   namespace (newer Karpenter also reports on the nominated Pods).

use std::collections::HashMap;
use std::fmt;
use std::pin::pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyaccel_deploy::fleet::FleetSpec;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::decide::PoolState;

/// Karpenter's reason on the Warning it records when a launch finds no
/// capacity.
pub const ICE_EVENT_REASON: &str = "InsufficientCapacityError";
/// What a failed launch's `Launched` condition reason contains.
const ICE_CONDITION_REASON: &str = "InsufficientCapacity";
/// The NodeClaim label naming its NodePool.
pub const NODEPOOL_LABEL: &str = "karpenter.sh/nodepool";
/// Where Kubernetes records events about cluster-scoped objects.
pub const CLUSTER_EVENTS_NAMESPACE: &str = "default";
/// How long a deleted NodeClaim's pool is remembered: Karpenter deletes a
/// failed claim right after recording the event that names it.
const FORGET_DELETED_CLAIMS: Duration = Duration::from_secs(600);

pub fn scaled_object_resource() -> ApiResource {
    ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: "keda.sh/v1alpha1".into(),
        kind: "ScaledObject".into(),
        plural: "scaledobjects".into(),
    }
}

pub fn node_claim_resource() -> ApiResource {
    ApiResource {
        group: "karpenter.sh".into(),
        version: "v1".into(),
        api_version: "karpenter.sh/v1".into(),
        kind: "NodeClaim".into(),
        plural: "nodeclaims".into(),
    }
}

/// One watched collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Deployments,
    ScaledObjects,
    NodeClaims,
    Events { namespace: String },
}

impl Source {
    /// The `operation` label of its API errors.
    pub fn operation(&self) -> &'static str {
        match self {
            Source::Deployments => "watch_deployments",
            Source::ScaledObjects => "watch_scaledobjects",
            Source::NodeClaims => "watch_nodeclaims",
            Source::Events { .. } => "watch_events",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Deployments => f.write_str("deployments"),
            Source::ScaledObjects => f.write_str("scaledobjects"),
            Source::NodeClaims => f.write_str("nodeclaims"),
            Source::Events { namespace } => write!(f, "events in {namespace}"),
        }
    }
}

/// The sources a spec needs, in a fixed order ([`Update::source`] indexes it).
pub fn sources(spec: &FleetSpec) -> Vec<Source> {
    let mut out = vec![
        Source::Deployments,
        Source::ScaledObjects,
        Source::NodeClaims,
        Source::Events {
            namespace: CLUSTER_EVENTS_NAMESPACE.into(),
        },
    ];
    if spec.namespace != CLUSTER_EVENTS_NAMESPACE {
        out.push(Source::Events {
            namespace: spec.namespace.clone(),
        });
    }
    out
}

/// What one watcher saw.
#[derive(Debug)]
pub enum Change {
    // Boxed: a Deployment is large, and most updates are small.
    Deployment(Box<Event<Deployment>>),
    ScaledObject(Box<Event<DynamicObject>>),
    NodeClaim(Box<Event<DynamicObject>>),
    Event(Box<Event<CoreEvent>>),
    /// The list or watch failed; the watcher starts over (a fresh list)
    /// after a backoff.
    Failed(String),
}

#[derive(Debug)]
pub struct Update {
    pub source: usize,
    pub change: Change,
}

/// Starts one task per source; they stop when the set is dropped or the
/// receiver is.
pub fn spawn_watchers(client: &Client, spec: &FleetSpec, tx: mpsc::Sender<Update>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let ns = spec.namespace.as_str();
    let pools: Vec<&str> = spec.pools.iter().map(|p| p.node_pool.as_str()).collect();
    let events_config = watcher::Config::default().fields(&format!("reason={ICE_EVENT_REASON}"));
    for (i, source) in sources(spec).into_iter().enumerate() {
        let tx = tx.clone();
        match source {
            Source::Deployments => {
                let api = Api::<Deployment>::namespaced(client.clone(), ns);
                set.spawn(forward(
                    api,
                    watcher::Config::default(),
                    i,
                    |e| Change::Deployment(Box::new(e)),
                    tx,
                ));
            }
            Source::ScaledObjects => {
                let api = Api::<DynamicObject>::namespaced_with(
                    client.clone(),
                    ns,
                    &scaled_object_resource(),
                );
                set.spawn(forward(
                    api,
                    watcher::Config::default(),
                    i,
                    |e| Change::ScaledObject(Box::new(e)),
                    tx,
                ));
            }
            Source::NodeClaims => {
                let api = Api::<DynamicObject>::all_with(client.clone(), &node_claim_resource());
                let selector = format!("{NODEPOOL_LABEL} in ({})", pools.join(","));
                set.spawn(forward(
                    api,
                    watcher::Config::default().labels(&selector),
                    i,
                    |e| Change::NodeClaim(Box::new(e)),
                    tx,
                ));
            }
            Source::Events { namespace } => {
                let api = Api::<CoreEvent>::namespaced(client.clone(), &namespace);
                set.spawn(forward(
                    api,
                    events_config.clone(),
                    i,
                    |e| Change::Event(Box::new(e)),
                    tx,
                ));
            }
        }
    }
    set
}

/// Forwards one watcher's events. On an error it reports it, waits, and
/// starts a fresh watcher: the new list both replaces anything missed and
/// (with its `InitDone`) says the source is healthy again, which a resumed
/// watch would not.
async fn forward<K>(
    api: Api<K>,
    config: watcher::Config,
    source: usize,
    wrap: fn(Event<K>) -> Change,
    tx: mpsc::Sender<Update>,
) where
    K: Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + fmt::Debug + Send + 'static,
{
    let mut backoff = RetryBackoff::default();
    loop {
        let mut stream = pin!(watcher::watcher(api.clone(), config.clone()));
        let failure = loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    if matches!(event, Event::InitDone) {
                        backoff.reset();
                    }
                    if tx
                        .send(Update {
                            source,
                            change: wrap(event),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Err(error)) => break error.to_string(),
                // The watcher's stream does not end; if it does, start over.
                None => break "watch stream ended".to_string(),
            }
        };
        if tx
            .send(Update {
                source,
                change: Change::Failed(failure),
            })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Exponential backoff for retries against the API: 0.5 s doubling to 30 s.
#[derive(Debug, Clone)]
pub struct RetryBackoff {
    next: Duration,
}

impl RetryBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

/// The controller's clock: monotonic for hold-downs, wall time to age the
/// timestamps the cluster reports.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub wall: Timestamp,
}

impl Now {
    pub fn system() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self {
            instant: Instant::now(),
            wall: Timestamp::from_millisecond(millis).unwrap_or(Timestamp::UNIX_EPOCH),
        }
    }

    /// When something that happened at `at` (cluster time) happened on the
    /// monotonic clock, or `None` when it is `max_age` or older. Times in
    /// the future (clock skew) count as now.
    fn since(&self, at: Timestamp, max_age: Duration) -> Option<Instant> {
        let age_ms = (self.wall.as_millisecond() - at.as_millisecond()).max(0);
        let age = Duration::from_millis(age_ms as u64);
        if age >= max_age {
            return None;
        }
        Some(self.instant.checked_sub(age).unwrap_or(self.instant))
    }
}

/// A launch failure attributed to a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub at: Instant,
    /// What said so, for the event message: `NodeClaim gpu-x7k2p`.
    pub what: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Replicas {
    desired: u32,
    ready: u32,
}

#[derive(Debug, Clone)]
struct Claim {
    pool: usize,
    deleted_at: Option<Instant>,
}

/// A keyed collection that a relist replaces atomically: objects from
/// `InitApply` are buffered until `InitDone`, so the controller never acts on
/// half a list.
#[derive(Debug)]
struct Mirror<V> {
    current: HashMap<String, V>,
    relisting: Option<HashMap<String, V>>,
}

impl<V> Default for Mirror<V> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            relisting: None,
        }
    }
}

impl<V> Mirror<V> {
    fn apply<K: Resource>(&mut self, event: Event<K>, value: impl Fn(&K) -> V) {
        match event {
            Event::Init => self.relisting = Some(HashMap::new()),
            Event::InitApply(obj) => {
                let v = value(&obj);
                self.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(name(&obj), v);
            }
            Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    self.current = listed;
                }
            }
            Event::Apply(obj) => {
                let v = value(&obj);
                self.current.insert(name(&obj), v);
            }
            Event::Delete(obj) => {
                self.current.remove(&name(&obj));
            }
        }
    }
}

fn name<K: Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

/// Everything observed, and which sources are listed and healthy.
#[derive(Debug)]
pub struct Observations {
    spec: FleetSpec,
    hold_down: Duration,
    sources: Vec<Source>,
    listed: Vec<bool>,
    failing: Vec<Option<String>>,
    deployments: Mirror<Replicas>,
    max_replicas: Mirror<Option<i64>>,
    /// NodeClaim name → pool index, kept a while after deletion.
    claims: HashMap<String, Claim>,
    claims_relisted: Option<Vec<String>>,
    /// Events about NodeClaims not seen yet: the claim and its event come on
    /// different watches, in no guaranteed order. Claim name → event time.
    unresolved: HashMap<String, Timestamp>,
    signals: Vec<Option<Signal>>,
}

impl Observations {
    pub fn new(spec: &FleetSpec, hold_down: Duration) -> Self {
        let sources = sources(spec);
        let n = sources.len();
        Self {
            spec: spec.clone(),
            hold_down,
            listed: vec![false; n],
            failing: vec![None; n],
            sources,
            deployments: Mirror::default(),
            max_replicas: Mirror::default(),
            claims: HashMap::new(),
            claims_relisted: None,
            unresolved: HashMap::new(),
            signals: vec![None; spec.pools.len()],
        }
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Applies one update. Returns the error of a failed source, for the
    /// caller to count and log.
    pub fn apply(&mut self, update: Update, now: Now) -> Option<&str> {
        let s = update.source;
        match update.change {
            Change::Failed(error) => {
                self.failing[s] = Some(error);
                return self.failing[s].as_deref();
            }
            Change::Deployment(event) => {
                let event = *event;
                self.mark(s, &event);
                self.deployments.apply(event, |d: &Deployment| Replicas {
                    // Kubernetes defaults an unset `replicas` to 1.
                    desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32,
                    ready: d
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0)
                        .max(0) as u32,
                });
            }
            Change::ScaledObject(event) => {
                let event = *event;
                self.mark(s, &event);
                self.max_replicas.apply(event, |o: &DynamicObject| {
                    o.data
                        .pointer("/spec/maxReplicaCount")
                        .and_then(|v| v.as_i64())
                });
            }
            Change::NodeClaim(event) => {
                let event = *event;
                self.mark(s, &event);
                self.node_claim(event, now);
            }
            Change::Event(event) => {
                let event = *event;
                self.mark(s, &event);
                if let Event::Apply(e) | Event::InitApply(e) = event {
                    self.core_event(&e, now);
                }
            }
        }
        None
    }

    /// A finished list makes a source listed and healthy.
    fn mark<K>(&mut self, source: usize, event: &Event<K>) {
        if matches!(event, Event::InitDone) {
            self.listed[source] = true;
            self.failing[source] = None;
        }
    }

    fn node_claim(&mut self, event: Event<DynamicObject>, now: Now) {
        let pool_of = |claim: &DynamicObject| {
            let label = claim.metadata.labels.as_ref()?.get(NODEPOOL_LABEL)?;
            self.spec.pools.iter().position(|p| &p.node_pool == label)
        };
        match event {
            Event::Init => self.claims_relisted = Some(Vec::new()),
            Event::InitApply(claim) | Event::Apply(claim) => {
                let Some(pool) = pool_of(&claim) else { return };
                let claim_name = name(&claim);
                if let Some(relisted) = &mut self.claims_relisted {
                    relisted.push(claim_name.clone());
                }
                if let Some(at) = launch_failure(&claim) {
                    self.signal(pool, at, format!("NodeClaim {claim_name}"), now);
                }
                if let Some(at) = self.unresolved.remove(&claim_name) {
                    let what = format!("{ICE_EVENT_REASON} on NodeClaim {claim_name}");
                    self.signal(pool, at, what, now);
                }
                self.claims.insert(
                    claim_name,
                    Claim {
                        pool,
                        deleted_at: None,
                    },
                );
            }
            Event::Delete(claim) => {
                if let Some(c) = self.claims.get_mut(&name(&claim)) {
                    c.deleted_at = Some(now.instant);
                }
            }
            Event::InitDone => {
                // Claims the new list lacks were deleted while unwatched.
                if let Some(listed) = self.claims_relisted.take() {
                    for (n, c) in &mut self.claims {
                        if c.deleted_at.is_none() && !listed.contains(n) {
                            c.deleted_at = Some(now.instant);
                        }
                    }
                }
            }
        }
        self.claims.retain(|_, c| {
            c.deleted_at
                .is_none_or(|d| now.instant.saturating_duration_since(d) < FORGET_DELETED_CLAIMS)
        });
        let hold_down = self.hold_down;
        self.unresolved
            .retain(|_, at| now.since(*at, hold_down).is_some());
    }

    fn core_event(&mut self, event: &CoreEvent, now: Now) {
        if event.reason.as_deref() != Some(ICE_EVENT_REASON) {
            return;
        }
        let Some(at) = event_time(event) else { return };
        let involved = &event.involved_object;
        let (Some(kind), Some(obj)) = (involved.kind.as_deref(), involved.name.as_deref()) else {
            return;
        };
        let pool = match kind {
            "NodeClaim" => {
                let pool = self.claims.get(obj).map(|c| c.pool).or_else(|| {
                    longest_prefix(self.spec.pools.iter().map(|p| p.node_pool.as_str()), obj)
                });
                if pool.is_none() && now.since(at, self.hold_down).is_some() {
                    // Maybe its claim is still on its way.
                    let latest = self.unresolved.entry(obj.to_string()).or_insert(at);
                    *latest = (*latest).max(at);
                }
                pool
            }
            "Pod" if involved.namespace.as_deref() == Some(self.spec.namespace.as_str()) => {
                longest_prefix(self.spec.pools.iter().map(|p| p.deployment.as_str()), obj)
            }
            _ => None,
        };
        if let Some(pool) = pool {
            self.signal(pool, at, format!("{ICE_EVENT_REASON} on {kind} {obj}"), now);
        }
    }

    /// Records a failure at cluster time `at`; old history (older than the
    /// hold-down, e.g. listed at start-up) is ignored.
    fn signal(&mut self, pool: usize, at: Timestamp, what: String, now: Now) {
        let Some(at) = now.since(at, self.hold_down) else {
            return;
        };
        let newer = self.signals[pool].as_ref().is_none_or(|s| at > s.at);
        if newer {
            self.signals[pool] = Some(Signal { at, what });
        }
    }

    /// Whether every source has listed once and none is failing: only then
    /// are the observations complete enough to act on.
    pub fn complete(&self) -> bool {
        self.listed.iter().all(|&l| l) && self.failing.iter().all(Option::is_none)
    }

    /// Why the observations are not complete, if they are not.
    pub fn incomplete_reason(&self) -> Option<String> {
        let mut reasons = Vec::new();
        let unlisted: Vec<String> = self
            .sources
            .iter()
            .zip(&self.listed)
            .filter(|(_, listed)| !**listed)
            .map(|(s, _)| s.to_string())
            .collect();
        if !unlisted.is_empty() {
            reasons.push(format!(
                "waiting for the first list of {}",
                unlisted.join(", ")
            ));
        }
        for (s, f) in self.sources.iter().zip(&self.failing) {
            if let Some(f) = f {
                reasons.push(format!("watching {s} failed: {f}"));
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    pub fn pool_states(&self) -> Vec<PoolState> {
        self.spec
            .pools
            .iter()
            .zip(&self.signals)
            .map(|(p, signal)| {
                let r = self
                    .deployments
                    .current
                    .get(&p.deployment)
                    .copied()
                    .unwrap_or_default();
                PoolState {
                    ready: r.ready,
                    desired: r.desired,
                    last_signal: signal.as_ref().map(|s| s.at),
                }
            })
            .collect()
    }

    /// The ScaledObject's `maxReplicaCount` of pool `i`, if known.
    pub fn max_replicas(&self, i: usize) -> Option<i64> {
        let name = &self.spec.pools.get(i)?.scaled_object;
        self.max_replicas.current.get(name).copied().flatten()
    }

    /// The last launch failure of pool `i`.
    pub fn last_signal(&self, i: usize) -> Option<&Signal> {
        self.signals.get(i)?.as_ref()
    }
}

/// When a NodeClaim's launch failed for lack of capacity, if it did.
fn launch_failure(claim: &DynamicObject) -> Option<Timestamp> {
    let conditions = claim.data.pointer("/status/conditions")?.as_array()?;
    let launched = conditions
        .iter()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Launched"))?;
    let failed = launched.get("status").and_then(|s| s.as_str()) == Some("False")
        && launched
            .get("reason")
            .and_then(|r| r.as_str())
            .is_some_and(|r| r.contains(ICE_CONDITION_REASON));
    if !failed {
        return None;
    }
    launched
        .get("lastTransitionTime")
        .and_then(|t| t.as_str())
        .and_then(|t| t.parse().ok())
        .or_else(|| claim.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// When an event last happened: the latest of the times it carries (an
/// aggregated event keeps its first time and moves the others).
fn event_time(event: &CoreEvent) -> Option<Timestamp> {
    [
        event
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0),
        event.last_timestamp.as_ref().map(|t| t.0),
        event.event_time.as_ref().map(|t| t.0),
        event.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max()
}

/// The index of the longest `prefix` such that `name` starts with
/// `prefix-`: pools `gpu` and `gpu-large` both prefix `gpu-large-x7k2p`.
fn longest_prefix<'a>(prefixes: impl Iterator<Item = &'a str>, name: &str) -> Option<usize> {
    prefixes
        .enumerate()
        .filter(|(_, p)| {
            name.strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|(_, p)| p.len())
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyaccel_deploy::fleet::FleetPool;
    use serde_json::json;

    fn spec() -> FleetSpec {
        let pool = |name: &str, weight| FleetPool {
            name: name.into(),
            service: format!("anyaccel-{name}"),
            deployment: format!("anyaccel-{name}"),
            scaled_object: format!("anyaccel-{name}"),
            node_pool: format!("anyaccel-{name}"),
            weight,
        };
        FleetSpec {
            format_version: 1,
            namespace: "anyaccel".into(),
            ingress: "anyaccel".into(),
            action: "weighted".into(),
            hold_down_secs: 300,
            plan: None,
            pools: vec![pool("gpu", 600), pool("gpu-large", 300), pool("cpu", 100)],
        }
    }

    fn at(now: Now, secs_ago: i64) -> String {
        Timestamp::from_millisecond(now.wall.as_millisecond() - secs_ago * 1000)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    fn event(v: serde_json::Value) -> CoreEvent {
        serde_json::from_value(v).expect("event")
    }

    fn claim(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).expect("claim")
    }

    fn update(source: usize, change: Change) -> Update {
        Update { source, change }
    }

    #[test]
    fn longest_prefix_wins_and_needs_a_dash() {
        let p = ["gpu", "gpu-large", "cpu"];
        assert_eq!(
            longest_prefix(p.iter().copied(), "gpu-large-x7k2p"),
            Some(1)
        );
        assert_eq!(longest_prefix(p.iter().copied(), "gpu-x7k2p"), Some(0));
        assert_eq!(longest_prefix(p.iter().copied(), "gpux-1"), None);
        assert_eq!(longest_prefix(p.iter().copied(), "gpu"), None);
    }

    #[test]
    fn event_time_is_the_latest_it_carries() {
        let e = event(json!({
            "metadata": {"name": "e", "creationTimestamp": "2025-01-01T00:00:00Z"},
            "involvedObject": {},
            "lastTimestamp": "2025-01-01T00:05:00Z",
            "series": {"count": 3, "lastObservedTime": "2025-01-01T00:09:00.500000Z"},
        }));
        assert_eq!(
            event_time(&e).map(|t| t.to_string()),
            Some("2025-01-01T00:09:00.5Z".to_string())
        );
    }

    #[test]
    fn events_map_to_pools_by_claim_cache_then_prefix() {
        let now = Now::system();
        let spec = spec();
        let mut obs = Observations::new(&spec, Duration::from_secs(300));
        // A claim of pool cpu whose name does not reveal it, deleted before
        // its event arrives.
        let c = claim(json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": "odd-name", "labels": {NODEPOOL_LABEL: "anyaccel-cpu"}},
        }));
        obs.apply(
            update(2, Change::NodeClaim(Box::new(Event::Apply(c.clone())))),
            now,
        );
        obs.apply(
            update(2, Change::NodeClaim(Box::new(Event::Delete(c)))),
            now,
        );
        let ice = |kind: &str, name: &str, ns: &str, secs_ago: i64| {
            event(json!({
                "metadata": {"name": format!("{name}.1"), "namespace": "default"},
                "involvedObject": {"kind": kind, "name": name, "namespace": ns},
                "reason": ICE_EVENT_REASON,
                "type": "Warning",
                "lastTimestamp": at(now, secs_ago),
            }))
        };
        obs.apply(
            update(
                3,
                Change::Event(Box::new(Event::Apply(ice("NodeClaim", "odd-name", "", 5)))),
            ),
            now,
        );
        obs.apply(
            update(
                3,
                Change::Event(Box::new(Event::Apply(ice(
                    "NodeClaim",
                    "anyaccel-gpu-large-abcde",
                    "",
                    5,
                )))),
            ),
            now,
        );
        // A Pod of the gpu Deployment, in the fleet namespace.
        obs.apply(
            update(
                4,
                Change::Event(Box::new(Event::Apply(ice(
                    "Pod",
                    "anyaccel-gpu-7d9f-x1",
                    "anyaccel",
                    5,
                )))),
            ),
            now,
        );
        // Old history is ignored; so are pods elsewhere and other reasons.
        let mut other = ice("NodeClaim", "anyaccel-gpu-zzz", "", 5);
        other.reason = Some("Launched".into());
        obs.apply(update(3, Change::Event(Box::new(Event::Apply(other)))), now);
        let states = obs.pool_states();
        assert!(states.iter().all(|s| s.last_signal.is_some()), "{states:?}");
        assert_eq!(
            obs.last_signal(2).map(|s| s.what.as_str()),
            Some("InsufficientCapacityError on NodeClaim odd-name")
        );

        let mut obs = Observations::new(&spec, Duration::from_secs(300));
        obs.apply(
            update(
                3,
                Change::Event(Box::new(Event::InitApply(ice(
                    "NodeClaim",
                    "anyaccel-gpu-a",
                    "",
                    301,
                )))),
            ),
            now,
        );
        obs.apply(
            update(
                4,
                Change::Event(Box::new(Event::Apply(ice(
                    "Pod",
                    "anyaccel-gpu-7d9f-x1",
                    "elsewhere",
                    5,
                )))),
            ),
            now,
        );
        assert!(obs.pool_states().iter().all(|s| s.last_signal.is_none()));
    }

    #[test]
    fn an_event_before_its_claim_is_resolved_when_the_claim_arrives() {
        let now = Now::system();
        let mut obs = Observations::new(&spec(), Duration::from_secs(300));
        let e = event(json!({
            "metadata": {"name": "odd.1", "namespace": "default"},
            "involvedObject": {"kind": "NodeClaim", "name": "odd"},
            "reason": ICE_EVENT_REASON,
            "lastTimestamp": at(now, 5),
        }));
        obs.apply(update(3, Change::Event(Box::new(Event::Apply(e)))), now);
        assert_eq!(obs.pool_states()[1].last_signal, None);
        let c = claim(json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": "odd", "labels": {NODEPOOL_LABEL: "anyaccel-gpu-large"}},
        }));
        obs.apply(update(2, Change::NodeClaim(Box::new(Event::Apply(c)))), now);
        assert!(obs.pool_states()[1].last_signal.is_some());
        assert_eq!(obs.pool_states()[0].last_signal, None);
    }

    #[test]
    fn a_launched_false_condition_is_a_signal() {
        let now = Now::system();
        let mut obs = Observations::new(&spec(), Duration::from_secs(300));
        let c = claim(json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": "anyaccel-gpu-q", "labels": {NODEPOOL_LABEL: "anyaccel-gpu"}},
            "status": {"conditions": [
                {"type": "Launched", "status": "False", "reason": "InsufficientCapacity",
                 "lastTransitionTime": at(now, 10)},
            ]},
        }));
        obs.apply(update(2, Change::NodeClaim(Box::new(Event::Apply(c)))), now);
        let signal = obs.pool_states()[0].last_signal.expect("signal");
        let age = now.instant.duration_since(signal);
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(11)).contains(&age),
            "{age:?}"
        );
        // A claim that launched is not.
        let ok = claim(json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": "anyaccel-cpu-q", "labels": {NODEPOOL_LABEL: "anyaccel-cpu"}},
            "status": {"conditions": [{"type": "Launched", "status": "True", "reason": "Launched"}]},
        }));
        obs.apply(
            update(2, Change::NodeClaim(Box::new(Event::Apply(ok)))),
            now,
        );
        assert_eq!(obs.pool_states()[2].last_signal, None);
    }

    #[test]
    fn a_relist_replaces_deployments_only_when_done_and_heals_the_source() {
        let now = Now::system();
        let mut obs = Observations::new(&spec(), Duration::from_secs(300));
        let dep = |name: &str, desired: i32, ready: i32| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"replicas": desired, "selector": {}, "template": {}},
                "status": {"readyReplicas": ready},
            }))
            .expect("deployment")
        };
        for s in 0..obs.sources().len() {
            assert!(!obs.complete());
            obs.apply(
                update(s, Change::Deployment(Box::new(Event::InitDone))),
                now,
            );
        }
        assert!(obs.complete());
        obs.apply(
            update(
                0,
                Change::Deployment(Box::new(Event::Apply(dep("anyaccel-gpu", 6, 2)))),
            ),
            now,
        );
        assert_eq!(
            obs.pool_states()[0],
            PoolState {
                ready: 2,
                desired: 6,
                last_signal: None
            }
        );

        assert!(
            obs.apply(update(0, Change::Failed("boom".into())), now)
                .is_some()
        );
        assert!(!obs.complete());
        assert!(obs.incomplete_reason().is_some_and(|r| r.contains("boom")));
        obs.apply(update(0, Change::Deployment(Box::new(Event::Init))), now);
        obs.apply(
            update(
                0,
                Change::Deployment(Box::new(Event::InitApply(dep("anyaccel-gpu", 6, 5)))),
            ),
            now,
        );
        assert_eq!(obs.pool_states()[0].ready, 2, "half a list is not applied");
        obs.apply(
            update(0, Change::Deployment(Box::new(Event::InitDone))),
            now,
        );
        assert_eq!(obs.pool_states()[0].ready, 5);
        assert!(obs.complete());
    }
}
