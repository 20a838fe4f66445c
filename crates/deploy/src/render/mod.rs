//! Turns a validated [`ClusterConfig`] into Kubernetes objects.

mod cluster;
mod controller;
mod nodes;
mod pod;
mod pool;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, PodSecurityContext, SeccompProfile, SecurityContext, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

use crate::config::{ClusterConfig, Pool};
use crate::error::DeployError;

/// Port the server listens on (`ANYACCEL_PORT`), named `http` in the pods.
pub const SERVER_PORT: i32 = 8080;
/// Port of each pool's ClusterIP Service.
pub const SERVICE_PORT: i32 = 80;
pub const PATH_LIVE: &str = "/health/live";
pub const PATH_READY: &str = "/health/ready";
pub const PATH_METRICS: &str = "/metrics";
/// Every path `anyaccel serve` answers that the manifests refer to; probes,
/// ALB health checks and scrape annotations must pick from this list.
pub const SERVER_PATHS: &[&str] = &[
    "/health/live",
    "/health/ready",
    "/v2/health/live",
    "/v2/health/ready",
    "/info",
    "/metrics",
    "/v1/images/generations",
];
/// Seconds a terminating pod keeps serving before SIGTERM, so the ALB (via
/// the load balancer controller) has deregistered it before the server
/// starts refusing new work.
pub const PRESTOP_SLEEP_SECS: u32 = 15;
/// Extra seconds past preStop + drain before the kubelet sends SIGKILL, for
/// flushing logs and metrics after the last request.
pub const GRACE_MARGIN_SECS: u32 = 15;
/// The image's non-root user.
pub const RUN_AS_USER: i64 = 10001;
/// Label on every object of a pool, and the taint key on its nodes.
pub const POOL_LABEL: &str = "anyaccel.io/pool";
/// On every object rendered with `--plan`: which plan (SHA-256 of the file)
/// and when it was made.
pub const PLAN_SHA256_ANNOTATION: &str = "anyaccel.io/plan-sha256";
pub const PLAN_DATE_ANNOTATION: &str = "anyaccel.io/plan-generated-at";
pub const ACCELERATOR_LABEL: &str = "anyaccel.io/accelerator";
/// The servers' Redis settings (`--redis-url`, its password, `--redis-queue`).
pub const REDIS_URL_ENV: &str = "ANYACCEL_REDIS_URL";
pub const REDIS_PASSWORD_ENV: &str = "ANYACCEL_REDIS_PASSWORD";
pub const REDIS_QUEUE_ENV: &str = "ANYACCEL_REDIS_QUEUE";
/// The TriggerAuthentication every pool's `redis-streams` trigger uses.
pub const REDIS_TRIGGER_AUTHENTICATION: &str = "anyaccel-redis";
const NAME_LABEL: &str = "app.kubernetes.io/name";
const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
const APP: &str = "anyaccel";
/// The server pods' ServiceAccount.
const SERVER_SERVICE_ACCOUNT: &str = "anyaccel";
/// Karpenter node labels of the device makers: NodePool requirements and the
/// device plugins' node affinity both select on them.
const LABEL_GPU_MANUFACTURER: &str = "karpenter.k8s.aws/instance-gpu-manufacturer";
const LABEL_ACCELERATOR_MANUFACTURER: &str = "karpenter.k8s.aws/instance-accelerator-manufacturer";

/// One rendered Kubernetes object, as JSON, with its identity pulled out.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedObject {
    api_version: String,
    kind: String,
    name: String,
    namespace: Option<String>,
    value: Value,
}

impl RenderedObject {
    fn from_typed<T: Serialize>(obj: &T) -> Result<Self, DeployError> {
        let value = serde_json::to_value(obj).map_err(|source| DeployError::Serialize {
            object: std::any::type_name::<T>().to_string(),
            source,
        })?;
        let field = |v: &Value, path: &[&str]| -> String {
            path.iter()
                .try_fold(v, |v, k| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok(RenderedObject {
            api_version: field(&value, &["apiVersion"]),
            kind: field(&value, &["kind"]),
            name: field(&value, &["metadata", "name"]),
            namespace: Some(field(&value, &["metadata", "namespace"])).filter(|s| !s.is_empty()),
            value,
        })
    }

    pub fn api_version(&self) -> &str {
        &self.api_version
    }
    pub fn kind(&self) -> &str {
        &self.kind
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// API group (empty for the core group).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }
    /// `Kind/namespace/name`, for messages.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
    /// Adds `key: value` to the object's own annotations.
    fn annotate(&mut self, key: &str, value: &str) {
        if let Some(meta) = self
            .value
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(key.into(), Value::String(value.into()));
            }
        }
    }

    pub fn to_yaml(&self) -> String {
        crate::yaml::to_yaml(&self.value)
    }
}

/// Renders every object of the fleet, in the order they should be applied:
/// namespace and identities, node provisioning, device plugins, workloads,
/// autoscaling, ingress, compile Jobs.
pub fn render(cfg: &ClusterConfig) -> Result<Vec<RenderedObject>, DeployError> {
    let mut out = Vec::new();
    cluster::namespace_and_identities(cfg, &mut out)?;
    cluster::device_plugins(cfg, &mut out)?;
    for p in cfg.pools() {
        out.push(RenderedObject::from_typed(&nodes::ec2_node_class(cfg, p))?);
        out.push(RenderedObject::from_typed(&nodes::node_pool(cfg, p))?);
    }
    for p in cfg.pools() {
        out.push(RenderedObject::from_typed(&pool::deployment(cfg, p))?);
        out.push(RenderedObject::from_typed(&pool::service(cfg, p))?);
        out.push(RenderedObject::from_typed(&pool::disruption_budget(
            cfg, p,
        ))?);
    }
    if let Some(redis) = cfg.redis() {
        out.push(RenderedObject::from_typed(
            &pool::redis_trigger_authentication(cfg, redis),
        )?);
    }
    for p in cfg.pools() {
        pool::autoscaling(cfg, p, &mut out)?;
    }
    out.push(RenderedObject::from_typed(&cluster::ingress(cfg)?)?);
    if cfg.fleet().enabled() {
        controller::controller(cfg, &mut out)?;
    }
    cluster::compile_jobs(cfg, &mut out)?;
    if let Some(plan) = cfg.plan() {
        for o in &mut out {
            o.annotate(PLAN_SHA256_ANNOTATION, &plan.sha256);
            o.annotate(PLAN_DATE_ANNOTATION, &plan.generated_at);
        }
    }
    check_unique(&out)?;
    Ok(out)
}

fn check_unique(objs: &[RenderedObject]) -> Result<(), DeployError> {
    let mut seen = BTreeSet::new();
    for o in objs {
        if !seen.insert((
            o.group().to_string(),
            o.kind.clone(),
            o.namespace.clone(),
            o.name.clone(),
        )) {
            return Err(DeployError::Rejected {
                object: o.id(),
                message: "rendered twice".into(),
            });
        }
        if o.name.len() > 253 || o.name.is_empty() {
            return Err(DeployError::Rejected {
                object: o.id(),
                message: "name must be 1..=253 characters".into(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Names and labels shared by the builders

/// Namespaced objects of a pool: Deployment, Service, PDB, ScaledObject.
pub fn pool_object_name(pool: &Pool) -> String {
    format!("{APP}-{}", pool.name())
}

/// Cluster-scoped objects of a pool (NodePool, EC2NodeClass) carry the
/// namespace, so two fleets in one cluster do not collide.
pub fn node_pool_name(cfg: &ClusterConfig, pool: &Pool) -> String {
    format!("{}-{}", cfg.namespace(), pool.name())
}

fn common_labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.into(), APP.into()),
        (PART_OF_LABEL.into(), APP.into()),
        (MANAGED_BY_LABEL.into(), "anyaccel-deploy".into()),
        (COMPONENT_LABEL.into(), component.into()),
    ])
}

fn pool_labels(pool: &Pool, component: &str) -> BTreeMap<String, String> {
    let mut l = common_labels(component);
    l.insert(POOL_LABEL.into(), pool.name().into());
    l.insert(ACCELERATOR_LABEL.into(), pool.accelerator().as_str().into());
    l
}

/// Stable selector of a pool's server pods (selectors are immutable, so it
/// holds only labels that never change for a pool).
fn pool_selector(pool: &Pool) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.into(), APP.into()),
        (COMPONENT_LABEL.into(), "server".into()),
        (POOL_LABEL.into(), pool.name().into()),
    ])
}

fn meta(name: &str, namespace: Option<&str>, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Pod-level settings that satisfy the `restricted` Pod Security Standard.
fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Tolerations for a pool's nodes: the pool's own taint and, on GPU and
/// Neuron nodes, the device taint.
fn pool_tolerations(pool: &Pool) -> Vec<Toleration> {
    let mut t = vec![Toleration {
        key: Some(POOL_LABEL.into()),
        operator: Some("Equal".into()),
        value: Some(pool.name().into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }];
    if let Some(device) = pool.accelerator().device_resource() {
        t.push(Toleration {
            key: Some(device.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
    }
    t
}

fn node_selector(cfg: &ClusterConfig, pool: &Pool) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("karpenter.sh/nodepool".into(), node_pool_name(cfg, pool)),
        (
            "kubernetes.io/arch".into(),
            pool.accelerator().arch().into(),
        ),
        ("kubernetes.io/os".into(), "linux".into()),
    ])
}

/// ALB health check of every target group, on each pool's Service and on the
/// Ingress: the readiness path, so a loading, draining or overloaded replica
/// gets no new requests.
fn health_check_annotations() -> BTreeMap<String, String> {
    [
        ("healthcheck-path", PATH_READY),
        ("healthcheck-port", "traffic-port"),
        ("healthcheck-protocol", "HTTP"),
        ("healthcheck-interval-seconds", "10"),
        ("healthcheck-timeout-seconds", "5"),
        ("healthy-threshold-count", "2"),
        ("unhealthy-threshold-count", "2"),
        ("success-codes", "200"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("alb.ingress.kubernetes.io/{k}"), v.to_string()))
    .collect()
}
