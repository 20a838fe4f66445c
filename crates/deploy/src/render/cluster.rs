//! Fleet-wide objects: Namespace, ServiceAccounts and RBAC, device plugin
//! DaemonSets, the ALB Ingress and the compile Jobs.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HostPathVolumeSource, Namespace, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectFieldSelector, PodSpec, PodTemplateSpec, SecurityContext,
    ServiceAccount, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::json;

use super::pod::{hub_token_env, identity_env, pool_resources, scratch_volumes};
use super::{
    LABEL_ACCELERATOR_MANUFACTURER, LABEL_GPU_MANUFACTURER, PATH_METRICS, POOL_LABEL,
    RenderedObject, SERVER_SERVICE_ACCOUNT, common_labels, env, health_check_annotations, meta,
    node_selector, pool_labels, pool_object_name, pool_tolerations, restricted_container_security,
    restricted_pod_security,
};
use crate::config::{AcceleratorKind, ClusterConfig, IngressMode, Pool, quantity_bytes};
use crate::error::DeployError;
use crate::fleet::{action_annotation, forward_action};

pub const COMPILE_SERVICE_ACCOUNT: &str = "anyaccel-compile";
pub const INGRESS_NAME: &str = "anyaccel";
/// Name of the ALB forward action (an annotation) the Ingress routes to.
pub const WEIGHTED_ACTION: &str = "weighted-pools";
const BLOCK_METRICS_ACTION: &str = "block-metrics";
const DEVICE_PLUGIN_NAMESPACE: &str = "kube-system";
/// Kubernetes minor whose Pod Security Standard the namespace enforces;
/// pinned so a cluster upgrade cannot tighten it under running pods.
const POD_SECURITY_VERSION: &str = "v1.33";
/// Compile Job scratch: the exporter's venv and temp files, and the
/// exported artifact (an SDXL fp32 export is about 14 GB).
const COMPILE_TMP_GIB: u64 = 40;
const COMPILE_ARTIFACTS_GIB: u64 = 30;

pub fn namespace_and_identities(
    cfg: &ClusterConfig,
    out: &mut Vec<RenderedObject>,
) -> Result<(), DeployError> {
    let mut labels = common_labels("namespace");
    labels.extend([
        // Every pod here runs as non-root with a read-only root filesystem
        // and no capabilities: enforce it.
        (
            "pod-security.kubernetes.io/enforce".into(),
            "restricted".into(),
        ),
        (
            "pod-security.kubernetes.io/enforce-version".into(),
            POD_SECURITY_VERSION.into(),
        ),
        // The load balancer controller gates pod readiness on ALB target
        // health, so a rollout never outpaces target registration.
        (
            "elbv2.k8s.aws/pod-readiness-gate-inject".into(),
            "enabled".into(),
        ),
    ]);
    let ns = Namespace {
        metadata: meta(cfg.namespace(), None, labels),
        ..Default::default()
    };
    out.push(RenderedObject::from_typed(&ns)?);

    // The server and the compile Job need no Kubernetes API access: no
    // token is mounted and no Role is bound. AWS access, if any, comes from
    // an EKS Pod Identity association on these names.
    let sa = |name: &str, component: &str| ServiceAccount {
        metadata: meta(name, Some(cfg.namespace()), common_labels(component)),
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    out.push(RenderedObject::from_typed(&sa(
        SERVER_SERVICE_ACCOUNT,
        "server",
    ))?);
    if cfg.artifacts().iter().any(|a| a.source().is_some()) {
        out.push(RenderedObject::from_typed(&sa(
            COMPILE_SERVICE_ACCOUNT,
            "compile",
        ))?);
    }
    Ok(())
}

fn plugin_tolerations(device: &str) -> Vec<Toleration> {
    let t = |key: &str, effect: Option<&str>| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: effect.map(str::to_string),
        ..Default::default()
    };
    vec![
        t("CriticalAddonsOnly", None),
        t(device, Some("NoSchedule")),
        // Our nodes also carry the pool taint.
        t(POOL_LABEL, Some("NoSchedule")),
    ]
}

fn node_affinity(label: &str, value: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: label.into(),
                        operator: "In".into(),
                        values: Some(vec![value.into()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn host_path(name: &str, path: &str, kind: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: kind.map(str::to_string),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

fn plugin_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn daemon_set(
    name: &str,
    selector_value: &str,
    labels: BTreeMap<String, String>,
    pod: PodSpec,
) -> DaemonSet {
    let selector = BTreeMap::from([("name".to_string(), selector_value.to_string())]);
    let mut pod_labels = labels.clone();
    pod_labels.extend(selector.clone());
    DaemonSet {
        metadata: meta(name, Some(DEVICE_PLUGIN_NAMESPACE), labels),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The NVIDIA and Neuron device plugins (upstream's static manifests, with
/// names kept so they replace rather than duplicate an upstream install),
/// scheduled only onto Karpenter nodes that have the hardware.
pub fn device_plugins(
    cfg: &ClusterConfig,
    out: &mut Vec<RenderedObject>,
) -> Result<(), DeployError> {
    if !cfg.device_plugins().render() {
        return Ok(());
    }
    if cfg.uses(AcceleratorKind::Nvidia) {
        let pod = PodSpec {
            priority_class_name: Some("system-node-critical".into()),
            tolerations: Some(plugin_tolerations("nvidia.com/gpu")),
            affinity: Some(node_affinity(LABEL_GPU_MANUFACTURER, "nvidia")),
            containers: vec![Container {
                name: "nvidia-device-plugin-ctr".into(),
                image: Some(cfg.device_plugins().nvidia_image().into()),
                env: Some(vec![env("FAIL_ON_INIT_ERROR", "false")]),
                security_context: Some(plugin_security()),
                volume_mounts: Some(vec![mount(
                    "kubelet-device-plugins-dir",
                    "/var/lib/kubelet/device-plugins",
                )]),
                ..Default::default()
            }],
            volumes: Some(vec![host_path(
                "kubelet-device-plugins-dir",
                "/var/lib/kubelet/device-plugins",
                Some("Directory"),
            )]),
            ..Default::default()
        };
        let ds = daemon_set(
            "nvidia-device-plugin-daemonset",
            "nvidia-device-plugin-ds",
            common_labels("device-plugin"),
            pod,
        );
        out.push(RenderedObject::from_typed(&ds)?);
    }
    if cfg.uses(AcceleratorKind::Neuron) {
        let name = "neuron-device-plugin";
        let labels = common_labels("device-plugin");
        let sa = ServiceAccount {
            metadata: meta(name, Some(DEVICE_PLUGIN_NAMESPACE), labels.clone()),
            ..Default::default()
        };
        // Upstream's RBAC: the plugin reads nodes and pods and patches node
        // status to advertise devices and cores.
        let rule = |resources: &[&str], verbs: &[&str]| PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let role = ClusterRole {
            metadata: meta(name, None, labels.clone()),
            rules: Some(vec![
                rule(&["nodes"], &["get", "list", "watch"]),
                rule(&["events"], &["create", "patch"]),
                rule(&["pods"], &["update", "patch", "get", "list", "watch"]),
                rule(&["nodes/status"], &["patch", "update"]),
            ]),
            ..Default::default()
        };
        let binding = ClusterRoleBinding {
            metadata: meta(name, None, labels.clone()),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: name.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.into(),
                namespace: Some(DEVICE_PLUGIN_NAMESPACE.into()),
                ..Default::default()
            }]),
        };
        let pod = PodSpec {
            service_account_name: Some(name.into()),
            priority_class_name: Some("system-node-critical".into()),
            tolerations: Some(plugin_tolerations("aws.amazon.com/neuron")),
            affinity: Some(node_affinity(LABEL_ACCELERATOR_MANUFACTURER, "aws")),
            containers: vec![Container {
                name: name.into(),
                image: Some(cfg.device_plugins().neuron_image().into()),
                env: Some(vec![
                    env("KUBECONFIG", "/etc/kubernetes/kubelet.conf"),
                    EnvVar {
                        name: "NODE_NAME".into(),
                        value_from: Some(EnvVarSource {
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "spec.nodeName".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ]),
                security_context: Some(plugin_security()),
                volume_mounts: Some(vec![
                    mount("device-plugin", "/var/lib/kubelet/device-plugins"),
                    mount("infa-map", "/run"),
                ]),
                ..Default::default()
            }],
            volumes: Some(vec![
                host_path("device-plugin", "/var/lib/kubelet/device-plugins", None),
                host_path("infa-map", "/run", None),
            ]),
            ..Default::default()
        };
        let ds = daemon_set(
            "neuron-device-plugin-daemonset",
            "neuron-device-plugin-ds",
            labels,
            pod,
        );
        out.push(RenderedObject::from_typed(&sa)?);
        out.push(RenderedObject::from_typed(&role)?);
        out.push(RenderedObject::from_typed(&binding)?);
        out.push(RenderedObject::from_typed(&ds)?);
    }
    Ok(())
}

/// The ALB forward action that splits traffic across the pools' Services.
pub fn weighted_forward_action(cfg: &ClusterConfig) -> serde_json::Value {
    let targets: Vec<(String, u16)> = cfg
        .pools()
        .iter()
        .map(|p| (pool_object_name(p), base_weight(cfg, p)))
        .collect();
    forward_action(targets.iter().map(|(s, w)| (s.as_str(), *w)))
}

/// A pool's weight while every pool can grow: its own (from the plan or the
/// config) in cost mode, 1 in even mode.
pub fn base_weight(cfg: &ClusterConfig, pool: &Pool) -> u16 {
    match cfg.ingress().mode() {
        IngressMode::CostWeighted => pool.weight(),
        IngressMode::Even => 1,
    }
}

pub fn ingress(cfg: &ClusterConfig) -> Result<Ingress, DeployError> {
    let ing = cfg.ingress();
    let to_json = |v: &serde_json::Value| {
        serde_json::to_string(v).map_err(|source| DeployError::Serialize {
            object: "Ingress annotation".into(),
            source,
        })
    };
    let mut annotations = BTreeMap::from([
        (
            "alb.ingress.kubernetes.io/scheme".to_string(),
            ing.scheme().as_str().to_string(),
        ),
        // Route straight to pod IPs: no NodePort hop, and readiness gates
        // see real target health.
        ("alb.ingress.kubernetes.io/target-type".into(), "ip".into()),
        (
            "alb.ingress.kubernetes.io/load-balancer-attributes".into(),
            format!(
                "idle_timeout.timeout_seconds={},routing.http.drop_invalid_header_fields.enabled=true",
                ing.idle_timeout_secs()
            ),
        ),
        (
            action_annotation(WEIGHTED_ACTION),
            to_json(&weighted_forward_action(cfg))?,
        ),
        // /metrics is for Prometheus inside the cluster, not for clients.
        (
            format!("alb.ingress.kubernetes.io/actions.{BLOCK_METRICS_ACTION}"),
            to_json(&json!({
                "type": "fixed-response",
                "fixedResponseConfig": {
                    "contentType": "application/json",
                    "statusCode": "404",
                    "messageBody": "{\"error\":{\"code\":\"not_found\",\"message\":\"not found\"}}",
                },
            }))?,
        ),
    ]);
    // Also set per Service; here for any target group a Service does not
    // override.
    annotations.extend(health_check_annotations());
    match ing.certificate_arn() {
        Some(arn) => {
            annotations.insert(
                "alb.ingress.kubernetes.io/certificate-arn".into(),
                arn.into(),
            );
            annotations.insert(
                "alb.ingress.kubernetes.io/listen-ports".into(),
                r#"[{"HTTP":80},{"HTTPS":443}]"#.into(),
            );
            annotations.insert(
                "alb.ingress.kubernetes.io/ssl-redirect".into(),
                "443".into(),
            );
            annotations.insert(
                "alb.ingress.kubernetes.io/ssl-policy".into(),
                "ELBSecurityPolicy-TLS13-1-2-2021-06".into(),
            );
        }
        None => {
            annotations.insert(
                "alb.ingress.kubernetes.io/listen-ports".into(),
                r#"[{"HTTP":80}]"#.into(),
            );
        }
    }

    let action_path = |path: &str, path_type: &str, action: &str| HTTPIngressPath {
        path: Some(path.into()),
        path_type: path_type.into(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name: action.into(),
                port: Some(ServiceBackendPort {
                    name: Some("use-annotation".into()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        },
    };
    let mut m = meta(
        INGRESS_NAME,
        Some(cfg.namespace()),
        common_labels("ingress"),
    );
    m.annotations = Some(annotations);
    Ok(Ingress {
        metadata: m,
        spec: Some(IngressSpec {
            ingress_class_name: Some(ing.class().into()),
            rules: Some(vec![IngressRule {
                host: ing.host().map(str::to_string),
                http: Some(HTTPIngressRuleValue {
                    // The ALB evaluates rules in this order.
                    paths: vec![
                        action_path(PATH_METRICS, "Exact", BLOCK_METRICS_ACTION),
                        action_path("/", "Prefix", WEIGHTED_ACTION),
                    ],
                }),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// One Job per artifact with a `source`: `anyaccel compile` on a node of
/// the first pool that serves the artifact (Neuron compilation needs a
/// Neuron device; fp16 export wants the GPU), pushing to the artifact repo.
pub fn compile_jobs(cfg: &ClusterConfig, out: &mut Vec<RenderedObject>) -> Result<(), DeployError> {
    for (idx, artifact) in cfg.artifacts().iter().enumerate() {
        let Some(source) = artifact.source() else {
            continue;
        };
        let Some(pool) = cfg.pools().iter().find(|p| p.artifact_index() == idx) else {
            continue;
        };
        let name = format!("anyaccel-compile-{}", artifact.name());
        let out_dir = format!("/artifacts/{}", artifact.name());
        // /tmp holds the exporter's Python environment (HOME=/tmp, so
        // `anyaccel compile` prepares its venv and pip cache there: torch
        // alone is several GB); /artifacts the exported model until pushed.
        let (mut volumes, mut mounts) =
            scratch_volumes(&format!("{COMPILE_TMP_GIB}Gi"), pool.model_cache_size());
        volumes.push(Volume {
            name: "artifacts".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(format!("{COMPILE_ARTIFACTS_GIB}Gi"))),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("artifacts", "/artifacts"));
        let mut resources = pool_resources(pool);
        if let Some(requests) = resources.requests.as_mut() {
            let cache_gib =
                quantity_bytes(pool.model_cache_size()).map_or(0, |b| b.div_ceil(1 << 30));
            requests.insert(
                "ephemeral-storage".into(),
                Quantity(format!(
                    "{}Gi",
                    cache_gib + COMPILE_TMP_GIB + COMPILE_ARTIFACTS_GIB
                )),
            );
        }
        let mut env: Vec<EnvVar> = identity_env(cfg, pool)
            .into_iter()
            .filter(|e| e.name != "HF_TOKEN")
            .collect();
        if let Some(secret) = cfg.hub_token_secret() {
            // Pushing needs the token: fail fast if the Secret is missing.
            env.push(hub_token_env(secret, false));
        }
        let mut labels = pool_labels(pool, "compile");
        labels.insert("anyaccel.io/artifact".into(), artifact.name().into());
        let container = Container {
            name: "compile".into(),
            image: Some(cfg.image_for(pool.accelerator())),
            image_pull_policy: Some(cfg.pull_policy().into()),
            args: Some(vec![
                "compile".into(),
                "--model".into(),
                source.into(),
                "--target".into(),
                artifact.target().as_str().into(),
                "--out".into(),
                out_dir,
                "--push".into(),
                artifact.repo().into(),
            ]),
            env: Some(env),
            resources: Some(resources),
            security_context: Some(restricted_container_security()),
            volume_mounts: Some(mounts),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        };
        let job = Job {
            metadata: meta(&name, Some(cfg.namespace()), labels.clone()),
            spec: Some(JobSpec {
                // Retries cover spot interruptions and Hub hiccups; more
                // would hide a broken model.
                backoff_limit: Some(2),
                // Neuron compilation of a UNet takes an hour or more.
                active_deadline_seconds: Some(4 * 3600),
                // Keep the finished Job (and its logs) a week.
                ttl_seconds_after_finished: Some(7 * 24 * 3600),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".into()),
                        containers: vec![container],
                        service_account_name: Some(COMPILE_SERVICE_ACCOUNT.into()),
                        automount_service_account_token: Some(false),
                        enable_service_links: Some(false),
                        security_context: Some(restricted_pod_security()),
                        node_selector: Some(node_selector(cfg, pool)),
                        tolerations: Some(pool_tolerations(pool)),
                        volumes: Some(volumes),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        out.push(RenderedObject::from_typed(&job)?);
    }
    Ok(())
}
