//! The `anyaccel fleet` controller: its spec (a ConfigMap), identity, the
//! least RBAC it needs, and its Deployment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, PodSpec, PodTemplateSpec,
    ResourceRequirements, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::cluster::{INGRESS_NAME, WEIGHTED_ACTION, base_weight};
use super::pool::http_probe;
use super::{
    COMPONENT_LABEL, NAME_LABEL, PATH_METRICS, PATH_READY, RenderedObject, common_labels, meta,
    node_pool_name, pool_object_name, restricted_container_security, restricted_pod_security,
};
use crate::config::{AcceleratorKind, ClusterConfig};
use crate::error::DeployError;
use crate::fleet::{FLEET_SPEC_KEY, FLEET_SPEC_VERSION, FleetPool, FleetSpec};
use crate::plan::sha256_hex;

pub const CONTROLLER_NAME: &str = "anyaccel-fleet";
/// Where the controller serves `/metrics` and `/health/ready`.
pub const CONTROLLER_PORT: i32 = 9090;
const SPEC_HASH_ANNOTATION: &str = "anyaccel.io/fleet-spec-sha256";
const SPEC_DIR: &str = "/etc/anyaccel-fleet";
const COMPONENT: &str = "fleet-controller";
/// Karpenter records events about cluster-scoped objects (NodeClaims) here.
const CLUSTER_EVENTS_NAMESPACE: &str = "default";

/// The spec the controller reads: base weights and fallback order.
pub fn fleet_spec(cfg: &ClusterConfig) -> FleetSpec {
    FleetSpec {
        format_version: FLEET_SPEC_VERSION,
        namespace: cfg.namespace().into(),
        ingress: INGRESS_NAME.into(),
        action: WEIGHTED_ACTION.into(),
        hold_down_secs: cfg.fleet().hold_down_secs(),
        plan: cfg.plan().cloned(),
        pools: cfg
            .pools_in_fallback_order()
            .map(|p| FleetPool {
                name: p.name().into(),
                service: pool_object_name(p),
                deployment: pool_object_name(p),
                scaled_object: pool_object_name(p),
                node_pool: node_pool_name(cfg, p),
                weight: base_weight(cfg, p),
            })
            .collect(),
    }
}

fn rule(group: &str, resource: &str, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

pub fn controller(cfg: &ClusterConfig, out: &mut Vec<RenderedObject>) -> Result<(), DeployError> {
    let ns = cfg.namespace();
    let labels = || common_labels(COMPONENT);
    let subject = vec![Subject {
        kind: "ServiceAccount".into(),
        name: CONTROLLER_NAME.into(),
        namespace: Some(ns.into()),
        ..Default::default()
    }];
    let role_ref = |kind: &str, name: &str| RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: name.into(),
    };
    // Cluster-scoped names carry the namespace, so two fleets can coexist.
    let cluster_name = format!("{CONTROLLER_NAME}-{ns}");

    let spec_json = fleet_spec(cfg).to_json();
    out.push(RenderedObject::from_typed(&ConfigMap {
        metadata: meta(CONTROLLER_NAME, Some(ns), labels()),
        data: Some(BTreeMap::from([(FLEET_SPEC_KEY.into(), spec_json.clone())])),
        ..Default::default()
    })?);
    out.push(RenderedObject::from_typed(&ServiceAccount {
        metadata: meta(CONTROLLER_NAME, Some(ns), labels()),
        ..Default::default()
    })?);

    // Exactly the calls it makes: its watchers list and watch (never get);
    // it GETs and merge-PATCHes one Ingress and POSTs Events (it does not
    // use kube's Recorder, which would also PATCH events.k8s.io Events).
    let mut ingress_rule = rule("networking.k8s.io", "ingresses", &["get", "patch"]);
    ingress_rule.resource_names = Some(vec![INGRESS_NAME.into()]);
    out.push(RenderedObject::from_typed(&Role {
        metadata: meta(CONTROLLER_NAME, Some(ns), labels()),
        rules: Some(vec![
            rule("apps", "deployments", &["list", "watch"]),
            rule("keda.sh", "scaledobjects", &["list", "watch"]),
            ingress_rule,
            rule("", "events", &["list", "watch", "create"]),
        ]),
    })?);
    out.push(RenderedObject::from_typed(&RoleBinding {
        metadata: meta(CONTROLLER_NAME, Some(ns), labels()),
        role_ref: role_ref("Role", CONTROLLER_NAME),
        subjects: Some(subject.clone()),
    })?);
    // Karpenter's launch failures: NodeClaims are cluster-scoped, and their
    // events are recorded in `default`.
    out.push(RenderedObject::from_typed(&ClusterRole {
        metadata: meta(&cluster_name, None, labels()),
        rules: Some(vec![rule("karpenter.sh", "nodeclaims", &["list", "watch"])]),
        ..Default::default()
    })?);
    out.push(RenderedObject::from_typed(&ClusterRoleBinding {
        metadata: meta(&cluster_name, None, labels()),
        role_ref: role_ref("ClusterRole", &cluster_name),
        subjects: Some(subject.clone()),
    })?);
    out.push(RenderedObject::from_typed(&Role {
        metadata: meta(&cluster_name, Some(CLUSTER_EVENTS_NAMESPACE), labels()),
        rules: Some(vec![rule("", "events", &["list", "watch"])]),
    })?);
    out.push(RenderedObject::from_typed(&RoleBinding {
        metadata: meta(&cluster_name, Some(CLUSTER_EVENTS_NAMESPACE), labels()),
        role_ref: role_ref("Role", &cluster_name),
        subjects: Some(subject),
    })?);

    out.push(RenderedObject::from_typed(&deployment(cfg, &spec_json))?);
    Ok(())
}

fn deployment(cfg: &ClusterConfig, spec_json: &str) -> Deployment {
    let selector = BTreeMap::from([
        (NAME_LABEL.to_string(), "anyaccel".to_string()),
        (COMPONENT_LABEL.to_string(), COMPONENT.to_string()),
    ]);
    let quantity = |s: &str| Quantity(s.into());
    let container = Container {
        name: "fleet".into(),
        // The CPU image carries the same binary; the controller needs no
        // accelerator.
        image: Some(cfg.image_for(AcceleratorKind::CpuAmd64)),
        image_pull_policy: Some(cfg.pull_policy().into()),
        args: Some(vec![
            "fleet".into(),
            "--spec".into(),
            format!("{SPEC_DIR}/{FLEET_SPEC_KEY}"),
            "--listen".into(),
            format!("0.0.0.0:{CONTROLLER_PORT}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: CONTROLLER_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(http_probe(PATH_READY, 10, 5, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("50m")),
                ("memory".into(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), quantity("256Mi"))])),
            ..Default::default()
        }),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "spec".into(),
            mount_path: SPEC_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut pod_labels = common_labels(COMPONENT);
    pod_labels.extend(selector.clone());
    Deployment {
        metadata: meta(
            CONTROLLER_NAME,
            Some(cfg.namespace()),
            common_labels(COMPONENT),
        ),
        spec: Some(DeploymentSpec {
            // One writer of the annotation; a second replica would only race.
            replicas: Some(1),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([
                        // The spec is read at start-up: a new one rolls the pod.
                        (
                            SPEC_HASH_ANNOTATION.into(),
                            sha256_hex(spec_json.as_bytes()),
                        ),
                        ("prometheus.io/scrape".into(), "true".into()),
                        ("prometheus.io/port".into(), CONTROLLER_PORT.to_string()),
                        ("prometheus.io/path".into(), PATH_METRICS.into()),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(CONTROLLER_NAME.into()),
                    security_context: Some(restricted_pod_security()),
                    node_selector: Some(BTreeMap::from([
                        ("kubernetes.io/arch".into(), "amd64".into()),
                        ("kubernetes.io/os".into(), "linux".into()),
                    ])),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "spec".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: CONTROLLER_NAME.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
