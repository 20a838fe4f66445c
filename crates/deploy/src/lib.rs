//! `anyaccel deploy render`: one cluster description in, the Kubernetes
//! fleet out.
//!
//! A [`ClusterConfig`] (TOML, validated into types where wrong states do not
//! exist) describes pools of one accelerator kind each; [`render`] turns it
//! into plain objects: per pool a Deployment, Service, PodDisruptionBudget,
//! KEDA ScaledObject (and TriggerAuthentication for CloudWatch), Karpenter
//! NodePool and EC2NodeClass; plus the Namespace, ServiceAccounts, device
//! plugin DaemonSets with their RBAC, an ALB Ingress splitting traffic
//! across pools, the model compile Jobs and, with `[redis]`, the one
//! TriggerAuthentication of the pools' `redis-streams` triggers. Built-in kinds are
//! `k8s-openapi` types; KEDA and Karpenter kinds are the typed structs in
//! [`crd`], held to the pinned CRDs in `deploy/crds/` by the tests.
//!
//! Wiring into the binary:
//! ```text
//! #[command(subcommand)] Deploy(DeployCmd) // with DeployCmd::Render(anyaccel_deploy::RenderArgs)
//! DeployCmd::Render(args) => anyaccel_deploy::run(&args)?,
//! ```

pub mod config;
pub mod crd;
mod error;
pub mod fleet;
pub mod keda;
mod output;
pub mod plan;
mod render;
pub mod yaml;

use std::path::PathBuf;

pub use config::{
    AcceleratorKind, Artifact, C2paSigning, CapacityType, CloudWatchPublish, ClusterConfig,
    CompileTarget, IngressMode, IngressScheme, InstanceSelector, Pool, PrometheusSignal,
    RedisConfig, ScalingTrigger,
};
pub use error::DeployError;
pub use keda::{
    CLOUDWATCH_BACKLOG_METRIC, CLOUDWATCH_DIMENSION_ACCELERATOR, CLOUDWATCH_DIMENSION_MODEL,
    CLOUDWATCH_DIMENSION_POOL, CLOUDWATCH_NAMESPACE, redis_stream_key,
};
pub use output::{file_name, to_yaml_stream, write_dir, write_yaml};
pub use plan::Plan;
pub use render::{
    GRACE_MARGIN_SECS, PATH_LIVE, PATH_METRICS, PATH_READY, PLAN_DATE_ANNOTATION,
    PLAN_SHA256_ANNOTATION, POOL_LABEL, PRESTOP_SLEEP_SECS, REDIS_PASSWORD_ENV, REDIS_QUEUE_ENV,
    REDIS_TRIGGER_AUTHENTICATION, REDIS_URL_ENV, RenderedObject, SERVER_PATHS, SERVER_PORT,
    SERVICE_PORT, node_pool_name, pool_object_name, render,
};

/// `anyaccel deploy render`.
#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// Cluster description (TOML); see deploy/examples/.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// A plan from `anyaccel plan` (plan.toml): its ingress weights, NodePool
    /// weights, KEDA targets, replica bounds and SLO fill the pools' keys.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Write one file per object and a kustomization.yaml into DIR instead
    /// of printing one YAML stream.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Renders `args.config` to stdout or to `args.out`. Nothing is printed or
/// written unless the whole config is valid and every object renders.
pub fn run(args: &RenderArgs) -> Result<(), DeployError> {
    let cfg = match &args.plan {
        None => ClusterConfig::from_path(&args.config)?,
        Some(plan) => ClusterConfig::from_path_with_plan(&args.config, &Plan::from_path(plan)?)?,
    };
    let objects = render(&cfg)?;
    match &args.out {
        None => write_yaml(&objects, std::io::stdout().lock()),
        Some(dir) => {
            let written = write_dir(&objects, dir)?;
            eprintln!(
                "wrote {} objects and kustomization.yaml to {}",
                written.len().saturating_sub(1),
                dir.display()
            );
            Ok(())
        }
    }
}
