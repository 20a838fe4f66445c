//! The workload objects of one pool: Deployment, Service,
//! PodDisruptionBudget, KEDA ScaledObject (+ TriggerAuthentication). Its
//! nodes (NodePool, EC2NodeClass) are in `nodes`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler,
    PodSpec, PodTemplateSpec, Probe, SecretKeySelector, SecretVolumeSource, Service, ServicePort,
    ServiceSpec, SleepAction, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cluster::base_weight;
use super::pod::{identity_env, pool_resources, scratch_volumes};
use super::{
    GRACE_MARGIN_SECS, PATH_LIVE, PATH_METRICS, PATH_READY, PRESTOP_SLEEP_SECS, REDIS_PASSWORD_ENV,
    REDIS_QUEUE_ENV, REDIS_TRIGGER_AUTHENTICATION, REDIS_URL_ENV, RenderedObject, SERVER_PORT,
    SERVER_SERVICE_ACCOUNT, SERVICE_PORT, common_labels, env, health_check_annotations, meta,
    node_selector, pool_labels, pool_object_name, pool_selector, pool_tolerations,
    restricted_container_security, restricted_pod_security,
};
use crate::config::{
    C2paSigning, CloudWatchPublish, ClusterConfig, Pool, PrometheusSignal, RedisConfig,
    ScalingTrigger,
};
use crate::crd::{
    AdvancedConfig, AuthSecretTargetRef, AuthenticationKind, AuthenticationRef, Fallback,
    FallbackBehavior, HorizontalPodAutoscalerConfig, MetricTargetType, PodIdentity, ScaleTargetRef,
    ScaleTrigger, ScaledObject, ScaledObjectSpec, TriggerAuthentication, TriggerAuthenticationSpec,
};
use crate::error::DeployError;
use crate::keda::{
    CLOUDWATCH_BACKLOG_METRIC, CLOUDWATCH_DIMENSION_ACCELERATOR, CLOUDWATCH_DIMENSION_MODEL,
    CLOUDWATCH_DIMENSION_POOL, CLOUDWATCH_NAMESPACE, CloudWatchMetadata, CloudWatchMetric,
    PrometheusMetadata, RedisStreamsMetadata, ScalerType, check_trigger, redis_stream_key,
};

/// Where a pool's C2PA signing Secret is mounted.
const C2PA_DIR: &str = "/etc/anyaccel/c2pa";

/// `terminationGracePeriodSeconds`: preStop sleep, then the server's drain,
/// then a margin; always longer than the drain timeout.
pub fn grace_period_secs(pool: &Pool) -> u32 {
    PRESTOP_SLEEP_SECS + pool.drain_timeout_secs() + GRACE_MARGIN_SECS
}

/// Seconds between startup probe attempts; the probe's failureThreshold
/// turns the pool's startup budget into attempts.
const STARTUP_PERIOD_SECS: i32 = 10;

pub(super) fn http_probe(path: &str, period: i32, timeout: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failures),
        success_threshold: Some(1),
        ..Default::default()
    }
}

/// Env that makes the server publish its metrics to CloudWatch, once per
/// KEDA period, when the pool scales on CloudWatch.
fn cloudwatch_env(pool: &Pool) -> Vec<EnvVar> {
    match pool.trigger() {
        ScalingTrigger::CloudWatch {
            region,
            stat_period_secs,
            publish,
            ..
        } => vec![
            env("ANYACCEL_CLOUDWATCH", publish.as_str()),
            env("ANYACCEL_CLOUDWATCH_REGION", region.as_str()),
            // One datapoint per replica per period: KEDA's Sum over a
            // period is then the pool's total backlog.
            env(
                "ANYACCEL_CLOUDWATCH_INTERVAL_SECS",
                stat_period_secs.to_string(),
            ),
        ],
        ScalingTrigger::Prometheus { .. } => Vec::new(),
    }
}

/// Env that points the server at the fleet's Redis and its model's queue.
fn redis_env(cfg: &ClusterConfig, pool: &Pool, redis: &RedisConfig) -> Vec<EnvVar> {
    vec![
        env(REDIS_URL_ENV, redis.url()),
        EnvVar {
            name: REDIS_PASSWORD_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: redis.password_secret().into(),
                    key: redis.password_key().into(),
                    // A pod without the password could not take jobs: let
                    // it fail to start, visibly, instead.
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        env(REDIS_QUEUE_ENV, cfg.queue_of(pool)),
    ]
}

pub fn deployment(cfg: &ClusterConfig, pool: &Pool) -> Deployment {
    let name = pool_object_name(pool);
    let mut env = identity_env(cfg, pool);
    env.insert(3, super::env("ANYACCEL_PORT", SERVER_PORT.to_string()));
    env.push(super::env(
        "ANYACCEL_DRAIN_TIMEOUT_SECS",
        pool.drain_timeout_secs().to_string(),
    ));
    env.extend(cloudwatch_env(pool));
    if let Some(redis) = cfg.redis() {
        env.extend(redis_env(cfg, pool, redis));
    }
    let (mut volumes, mut mounts) = scratch_volumes("2Gi", pool.model_cache_size());
    match cfg.c2pa() {
        C2paSigning::Off => env.push(super::env("ANYACCEL_C2PA", "off")),
        C2paSigning::On {
            secret,
            include_prompt,
        } => {
            env.push(super::env("ANYACCEL_C2PA", "on"));
            env.push(super::env(
                "ANYACCEL_C2PA_INCLUDE_PROMPT",
                include_prompt.to_string(),
            ));
            if let Some(secret) = secret {
                env.push(super::env(
                    "ANYACCEL_C2PA_CERT",
                    format!("{C2PA_DIR}/tls.crt"),
                ));
                env.push(super::env(
                    "ANYACCEL_C2PA_KEY",
                    format!("{C2PA_DIR}/tls.key"),
                ));
                volumes.push(Volume {
                    name: "c2pa".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(secret.clone()),
                        default_mode: Some(0o440),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                mounts.push(VolumeMount {
                    name: "c2pa".into(),
                    mount_path: C2PA_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
        }
    }

    let startup_failures = pool
        .startup_timeout_secs()
        .div_ceil(STARTUP_PERIOD_SECS as u32);
    let container = Container {
        name: "server".into(),
        image: Some(cfg.image_for(pool.accelerator())),
        image_pull_policy: Some(cfg.pull_policy().into()),
        args: Some(vec!["serve".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: SERVER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(pool_resources(pool)),
        // Startup gates the other probes until the model is loaded and
        // warmed up, so a slow load is never mistaken for a hung server.
        startup_probe: Some(http_probe(
            PATH_READY,
            STARTUP_PERIOD_SECS,
            5,
            startup_failures as i32,
        )),
        // Ready drops fast (10 s) so a draining or overloaded replica leaves
        // the Service and the ALB target group quickly.
        readiness_probe: Some(http_probe(PATH_READY, 5, 3, 2)),
        // Live tolerates a minute: a CPU replica in the middle of a denoising
        // loop may answer slowly, and a restart costs a model reload.
        liveness_probe: Some(http_probe(PATH_LIVE, 10, 5, 6)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: i64::from(PRESTOP_SLEEP_SECS),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };

    let mut pod_labels = pool_labels(pool, "server");
    pod_labels.extend(pool_selector(pool));
    let annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), SERVER_PORT.to_string()),
        ("prometheus.io/path".to_string(), PATH_METRICS.to_string()),
    ]);

    Deployment {
        metadata: meta(&name, Some(cfg.namespace()), pool_labels(pool, "server")),
        spec: Some(DeploymentSpec {
            // No `replicas`: KEDA's HPA owns the count, and re-applying these
            // manifests must not reset it.
            selector: LabelSelector {
                match_labels: Some(pool_selector(pool)),
                ..Default::default()
            },
            // Surge, never go below capacity: a replaced replica is only
            // removed once its successor has loaded the model.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(5),
            progress_deadline_seconds: Some(
                (pool.startup_timeout_secs() + 600).min(i32::MAX as u32) as i32,
            ),
            template: PodTemplateSpec {
                metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    service_account_name: Some(SERVER_SERVICE_ACCOUNT.into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(restricted_pod_security()),
                    node_selector: Some(node_selector(cfg, pool)),
                    tolerations: Some(pool_tolerations(pool)),
                    termination_grace_period_seconds: Some(i64::from(grace_period_secs(pool))),
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "topology.kubernetes.io/zone".into(),
                        // Spread for availability, but never leave a pod
                        // pending because one zone lacks capacity.
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(pool_selector(pool)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// ALB target group settings for a pool's Service (the load balancer
/// controller reads them from the Service, one target group per Service).
pub fn target_group_annotations(pool: &Pool) -> BTreeMap<String, String> {
    let mut a = health_check_annotations();
    // The ALB keeps a deregistered target's in-flight requests this long;
    // it covers the preStop sleep plus the server's own drain.
    let deregistration = PRESTOP_SLEEP_SECS + pool.drain_timeout_secs();
    // Least outstanding requests: requests take seconds and vary with steps
    // and size, so round robin would pile work on a busy replica.
    a.insert(
        "alb.ingress.kubernetes.io/target-group-attributes".into(),
        format!(
            "deregistration_delay.timeout_seconds={deregistration},load_balancing.algorithm.type=least_outstanding_requests"
        ),
    );
    a
}

pub fn service(cfg: &ClusterConfig, pool: &Pool) -> Service {
    let mut m = meta(
        &pool_object_name(pool),
        Some(cfg.namespace()),
        pool_labels(pool, "server"),
    );
    m.annotations = Some(target_group_annotations(pool));
    Service {
        metadata: m,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(pool_selector(pool)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn disruption_budget(cfg: &ClusterConfig, pool: &Pool) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(
            &pool_object_name(pool),
            Some(cfg.namespace()),
            pool_labels(pool, "server"),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            // One replica at a time through voluntary disruptions (Karpenter
            // consolidation and drift, node upgrades): each reload costs
            // minutes of that replica's capacity.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(pool_selector(pool)),
                ..Default::default()
            }),
            // A replica that never became ready holds no capacity; it must
            // not block a node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// HPA behaviour for seconds-long requests on replicas that take minutes to
/// start. Up: no stabilization, double or +4 per minute (whichever is
/// more), because capacity asked for now arrives minutes later. Down: hold
/// the highest recommendation of the pool's window (traffic comes in waves
/// and a removed replica is slow to bring back), then shed a quarter (or
/// at least one replica, so small pools can shrink at all: a percentage of
/// two or three replicas rounds to zero) per two minutes.
pub fn hpa_behavior(pool: &Pool) -> HorizontalPodAutoscalerBehavior {
    let policy = |type_: &str, value: i32, period: i32| HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds: period,
    };
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Percent", 100, 60), policy("Pods", 4, 60)]),
            ..Default::default()
        }),
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(pool.scale_down_window_secs() as i32),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Percent", 25, 120), policy("Pods", 1, 120)]),
            ..Default::default()
        }),
    }
}

/// What KEDA authenticates to Redis with: the password from the Secret the
/// servers also read.
fn redis_auth_spec(redis: &RedisConfig) -> TriggerAuthenticationSpec {
    TriggerAuthenticationSpec {
        secret_target_ref: vec![AuthSecretTargetRef {
            parameter: "password".into(),
            name: redis.password_secret().into(),
            key: redis.password_key().into(),
        }],
        ..Default::default()
    }
}

/// The one TriggerAuthentication every pool's Redis trigger references.
pub fn redis_trigger_authentication(
    cfg: &ClusterConfig,
    redis: &RedisConfig,
) -> TriggerAuthentication {
    TriggerAuthentication::new(
        meta(
            REDIS_TRIGGER_AUTHENTICATION,
            Some(cfg.namespace()),
            common_labels("autoscaling"),
        ),
        redis_auth_spec(redis),
    )
}

/// Per-replica stream length target for `pool`: its `target_redis_jobs`
/// divided by its share (ALB weight) of the pools reading the same queue,
/// so those pools together ask for length / target replicas, split as
/// their traffic is, rather than each asking for all of them.
pub fn redis_stream_length(cfg: &ClusterConfig, pool: &Pool, target: u32) -> u64 {
    let queue = cfg.queue_of(pool);
    let total: u64 = cfg
        .pools()
        .iter()
        .filter(|p| cfg.queue_of(p) == queue)
        .map(|p| u64::from(base_weight(cfg, p)))
        .sum();
    let own = u64::from(base_weight(cfg, pool)).max(1);
    // Rounded to the nearest job (KEDA's streamLength is an integer); never
    // 0, which the HPA rejects as a target.
    ((2 * u64::from(target) * total + own) / (2 * own)).max(1)
}

fn redis_trigger(
    cfg: &ClusterConfig,
    pool: &Pool,
    redis: &RedisConfig,
    target: u32,
) -> ScaleTrigger {
    let md = RedisStreamsMetadata {
        address: redis.address(),
        stream: redis_stream_key(cfg.queue_of(pool)),
        stream_length: redis_stream_length(cfg, pool, target),
        enable_tls: redis.tls(),
        database_index: redis.database(),
    };
    ScaleTrigger {
        type_: ScalerType::RedisStreams,
        name: Some("redis-jobs".into()),
        metadata: md.to_map(),
        // The length is the queue's total; the HPA divides it by the
        // per-replica target.
        metric_type: Some(MetricTargetType::AverageValue),
        authentication_ref: Some(AuthenticationRef {
            name: REDIS_TRIGGER_AUTHENTICATION.into(),
            kind: Some(AuthenticationKind::TriggerAuthentication),
        }),
        // Uncached: each HPA sync (15 s) reads the length afresh, whatever
        // the ScaledObject's polling interval (60 s with CloudWatch); one
        // XLEN per sync costs Redis nothing.
        use_cached_metrics: false,
    }
}

/// The pool's trigger (plus the Redis one with `[redis]`) and, for
/// CloudWatch, its TriggerAuthentication. Checks every trigger the way
/// KEDA's scaler will before emitting anything.
pub fn autoscaling(
    cfg: &ClusterConfig,
    pool: &Pool,
    out: &mut Vec<RenderedObject>,
) -> Result<(), DeployError> {
    let name = pool_object_name(pool);
    let (trigger, polling, auth) = match pool.trigger() {
        ScalingTrigger::Prometheus {
            server_address,
            signal,
        } => {
            let query = match signal {
                PrometheusSignal::BacklogSeconds => anyaccel_metrics::backlog_query(pool.name()),
                PrometheusSignal::QueueDepth => anyaccel_metrics::queue_depth_query(pool.name()),
            };
            let md = PrometheusMetadata {
                server_address: server_address.clone(),
                query,
                threshold: pool.scale_target(),
            };
            let trigger = ScaleTrigger {
                type_: ScalerType::Prometheus,
                name: Some(trigger_name(*signal)),
                metadata: md.to_map(),
                // The query sums the pool; the HPA divides by the threshold.
                metric_type: Some(MetricTargetType::AverageValue),
                authentication_ref: None,
                use_cached_metrics: true,
            };
            // Prometheus scrapes every 15 s or so; polling faster re-reads
            // the same sample.
            (trigger, 15, None)
        }
        ScalingTrigger::CloudWatch {
            region,
            role_arn,
            stat_period_secs,
            collection_time_secs,
            publish,
        } => {
            let auth_name = format!("{name}-aws");
            let md = CloudWatchMetadata {
                metric: CloudWatchMetric::Dimensions {
                    namespace: CLOUDWATCH_NAMESPACE.into(),
                    metric_name: CLOUDWATCH_BACKLOG_METRIC.into(),
                    dimensions: vec![
                        (CLOUDWATCH_DIMENSION_POOL.into(), pool.name().into()),
                        (
                            CLOUDWATCH_DIMENSION_ACCELERATOR.into(),
                            pool.accelerator().as_str().into(),
                        ),
                        (
                            CLOUDWATCH_DIMENSION_MODEL.into(),
                            cfg.artifact_of(pool).repo().into(),
                        ),
                    ],
                },
                aws_region: region.clone(),
                // Each replica publishes its backlog under the same
                // dimensions once per period (the Deployment sets the
                // interval to the period), so a period's Sum is the pool's
                // total backlog, counting only replicas that report.
                metric_stat: "Sum".into(),
                metric_stat_period: *stat_period_secs,
                metric_collection_time: *collection_time_secs,
                // A replica's datapoint reaches CloudWatch some seconds after
                // its sample (EMF through an agent takes longer than the
                // API); a period read too early would be missing replicas
                // and its Sum would under-count.
                metric_end_time_offset: match publish {
                    CloudWatchPublish::Api => 30,
                    CloudWatchPublish::Emf => 60,
                },
                target_metric_value: pool.scale_target(),
                min_metric_value: 0.0,
            };
            let trigger = ScaleTrigger {
                type_: ScalerType::AwsCloudwatch,
                name: Some("backlog-seconds".into()),
                metadata: md.to_map(),
                // Total / per-replica target, as with Prometheus. (An
                // Average with metricType Value would be multiplied by the
                // ready replicas only, while replicas still loading their
                // model report zero: it under-scales during scale-out.)
                metric_type: Some(MetricTargetType::AverageValue),
                authentication_ref: Some(AuthenticationRef {
                    name: auth_name.clone(),
                    kind: Some(AuthenticationKind::TriggerAuthentication),
                }),
                use_cached_metrics: true,
            };
            let auth = TriggerAuthentication::new(
                meta(
                    &auth_name,
                    Some(cfg.namespace()),
                    pool_labels(pool, "autoscaling"),
                ),
                TriggerAuthenticationSpec {
                    pod_identity: Some(PodIdentity::aws(role_arn.clone())),
                    ..Default::default()
                },
            );
            // CloudWatch holds one datapoint per period: poll once a period.
            (trigger, (*stat_period_secs).max(15), Some(auth))
        }
    };

    let mut triggers = vec![(trigger, auth.as_ref().map(|a| a.spec.clone()))];
    if let (Some(redis), Some(target)) = (cfg.redis(), pool.redis_jobs_target()) {
        triggers.push((
            redis_trigger(cfg, pool, redis, target),
            Some(redis_auth_spec(redis)),
        ));
    }
    for (t, auth) in &triggers {
        check_trigger(
            t.type_.as_str(),
            &t.metadata,
            t.metric_type.map(MetricTargetType::as_str),
            auth.as_ref(),
        )
        .map_err(|message| DeployError::Rejected {
            object: format!("ScaledObject/{}/{name}", cfg.namespace()),
            message: format!("trigger {}: {message}", t.name.as_deref().unwrap_or("?")),
        })?;
    }
    // KEDA's webhook: the HPA it creates is named keda-hpa-<name> and that
    // name is used as a label value.
    let hpa_name = format!("keda-hpa-{name}");
    if hpa_name.len() > 63 {
        return Err(DeployError::Rejected {
            object: format!("ScaledObject/{}/{name}", cfg.namespace()),
            message: format!("HPA name {hpa_name:?} is longer than 63 characters"),
        });
    }

    let so = ScaledObject::new(
        meta(
            &name,
            Some(cfg.namespace()),
            pool_labels(pool, "autoscaling"),
        ),
        ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: name.clone(),
                env_source_container_name: None,
            },
            // With useCachedMetrics KEDA queries the source once per polling
            // interval and the HPA (every 15 s) reads the cache, instead of
            // one query per HPA sync per metrics-server replica.
            polling_interval: Some(polling as i32),
            // No cooldownPeriod: it only governs scaling to zero, and every
            // pool keeps at least one replica behind the ALB; scale-down pace
            // is the HPA behaviour below.
            cooldown_period: None,
            initial_cooldown_period: None,
            idle_replica_count: None,
            min_replica_count: Some(pool.min_replicas() as i32),
            max_replica_count: Some(pool.max_replicas() as i32),
            // If the metric source fails three polls in a row, hold the
            // current size rather than collapse to minReplicas mid-burst.
            fallback: Some(Fallback {
                failure_threshold: 3,
                replicas: pool.min_replicas() as i32,
                behavior: Some(FallbackBehavior::CurrentReplicas),
            }),
            advanced: Some(AdvancedConfig {
                horizontal_pod_autoscaler_config: Some(HorizontalPodAutoscalerConfig {
                    name: None,
                    behavior: Some(hpa_behavior(pool)),
                }),
                restore_to_original_replica_count: None,
            }),
            triggers: triggers.into_iter().map(|(t, _)| t).collect(),
        },
    );
    if let Some(auth) = auth {
        out.push(RenderedObject::from_typed(&auth)?);
    }
    out.push(RenderedObject::from_typed(&so)?);
    Ok(())
}

fn trigger_name(signal: PrometheusSignal) -> String {
    match signal {
        PrometheusSignal::BacklogSeconds => "backlog-seconds".into(),
        PrometheusSignal::QueueDepth => "queue-depth".into(),
    }
}
