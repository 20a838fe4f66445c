//! The cluster description (`cluster.toml`) and its validation.
//!
//! Parsing happens in two steps: serde reads the TOML into loose `Raw*`
//! structs (every field optional, unknown keys rejected), then `validate`
//! turns them into the public types below, where the closed sets are enums
//! and every number has been range-checked. All problems are collected, each
//! naming its field, so an operator fixes a config in one pass.
//!
//! The public types and the entry points live here; `input` holds the serde
//! shape, `defaults` the per-accelerator starting points, `validate` the
//! checks that name fields, and `syntax` the field-agnostic string checks.

mod defaults;
mod input;
mod syntax;
mod validate;
mod with_plan;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyaccel_pipeline::ModelFamily;

use crate::error::DeployError;
use crate::fleet::PlanStamp;
use crate::plan::Plan;

pub use defaults::{DEFAULT_AMI_ALIAS, DEFAULT_NEURON_PLUGIN_IMAGE, DEFAULT_NVIDIA_PLUGIN_IMAGE};
pub(crate) use syntax::quantity_bytes;
pub use validate::{MAX_POOLS, MAX_WEIGHT};

/// An artifact's `target`: what `anyaccel compile --target` built it for.
pub use anyaccel_pipeline::CompileTarget;

/// The kinds of hardware a pool runs on. Each maps to one image flavour, one
/// CPU architecture and (for accelerators) one Kubernetes extended resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AcceleratorKind {
    CpuAmd64,
    CpuArm64,
    Nvidia,
    Neuron,
}

impl AcceleratorKind {
    pub const ALL: [AcceleratorKind; 4] = [
        AcceleratorKind::CpuAmd64,
        AcceleratorKind::CpuArm64,
        AcceleratorKind::Nvidia,
        AcceleratorKind::Neuron,
    ];

    /// The spelling used in the config, in `ANYACCEL_ACCELERATOR` and in the
    /// CloudWatch `Accelerator` dimension.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceleratorKind::CpuAmd64 => "cpu-amd64",
            AcceleratorKind::CpuArm64 => "cpu-arm64",
            AcceleratorKind::Nvidia => "nvidia",
            AcceleratorKind::Neuron => "neuron",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// `kubernetes.io/arch` of the image built for this kind. The CUDA and
    /// Neuron images are x86_64 only (AL2023's Neuron AMI exists only there).
    pub fn arch(self) -> &'static str {
        match self {
            AcceleratorKind::CpuArm64 => "arm64",
            _ => "amd64",
        }
    }

    /// The extended resource the device plugin advertises, which is also the
    /// key of the taint that keeps other pods off these nodes.
    pub fn device_resource(self) -> Option<&'static str> {
        match self {
            AcceleratorKind::Nvidia => Some("nvidia.com/gpu"),
            AcceleratorKind::Neuron => Some("aws.amazon.com/neuron"),
            _ => None,
        }
    }

    /// Value for the server's `--device` / `ANYACCEL_DEVICE` serving `target`.
    pub fn server_device(self, target: CompileTarget) -> &'static str {
        match self {
            AcceleratorKind::CpuAmd64 if target == CompileTarget::OnnxOpenVino => "openvino",
            AcceleratorKind::CpuAmd64 | AcceleratorKind::CpuArm64 => "cpu",
            AcceleratorKind::Nvidia => "cuda",
            // Neuron runs through the remote (sidecar) executor, which the
            // server picks by detection.
            AcceleratorKind::Neuron => "auto",
        }
    }

    /// Whether a model compiled for `target` runs on this hardware.
    pub fn can_run(self, target: CompileTarget) -> bool {
        match self {
            // OpenVINO's ONNX Runtime build is published for x86_64 only.
            AcceleratorKind::CpuAmd64 => matches!(
                target,
                CompileTarget::OnnxFp32 | CompileTarget::OnnxInt8 | CompileTarget::OnnxOpenVino
            ),
            AcceleratorKind::CpuArm64 => {
                matches!(target, CompileTarget::OnnxFp32 | CompileTarget::OnnxInt8)
            }
            AcceleratorKind::Nvidia => {
                matches!(target, CompileTarget::OnnxFp16 | CompileTarget::OnnxFp32)
            }
            AcceleratorKind::Neuron => target == CompileTarget::Neuron,
        }
    }

    fn allowed_list() -> String {
        Self::ALL.map(|k| k.as_str()).join(", ")
    }
}

impl fmt::Display for AcceleratorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which EC2 purchase options a pool's NodePool may launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityType {
    Spot,
    OnDemand,
    /// Both allowed: Karpenter launches spot when it can and falls back to
    /// on-demand when spot capacity is short.
    SpotOrOnDemand,
}

impl CapacityType {
    const ALL: [CapacityType; 3] = [
        CapacityType::Spot,
        CapacityType::OnDemand,
        CapacityType::SpotOrOnDemand,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CapacityType::Spot => "spot",
            CapacityType::OnDemand => "on-demand",
            CapacityType::SpotOrOnDemand => "spot-or-on-demand",
        }
    }

    /// Values of Karpenter's `karpenter.sh/capacity-type` requirement.
    pub fn karpenter_values(self) -> Vec<String> {
        match self {
            CapacityType::Spot => vec!["spot".into()],
            CapacityType::OnDemand => vec!["on-demand".into()],
            CapacityType::SpotOrOnDemand => vec!["spot".into(), "on-demand".into()],
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How the ALB splits traffic across pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressMode {
    /// Each pool's `weight` (from `anyaccel plan`: cheaper images get more).
    CostWeighted,
    /// Every pool gets the same share (the seed's capacity mode).
    Even,
}

impl IngressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressMode::CostWeighted => "cost-weighted",
            IngressMode::Even => "even",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressScheme {
    Internal,
    InternetFacing,
}

impl IngressScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressScheme::Internal => "internal",
            IngressScheme::InternetFacing => "internet-facing",
        }
    }
}

/// Which EC2 instances a pool's NodePool may launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceSelector {
    /// `karpenter.k8s.aws/instance-family`, e.g. `g5`; Karpenter picks sizes.
    Families(Vec<String>),
    /// `node.kubernetes.io/instance-type`, e.g. `g5.xlarge`.
    Types(Vec<String>),
}

/// What the Prometheus trigger scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrometheusSignal {
    /// Seconds of queued and running work (the default; it accounts for
    /// step counts and image sizes, which a request count does not).
    BacklogSeconds,
    /// Requests waiting in the admission queue.
    QueueDepth,
}

/// The KEDA trigger for a pool.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalingTrigger {
    Prometheus {
        server_address: String,
        signal: PrometheusSignal,
    },
    CloudWatch {
        region: String,
        /// Role KEDA assumes to read CloudWatch; without it KEDA uses its
        /// operator's own pod identity.
        role_arn: Option<String>,
        /// CloudWatch period KEDA sums over; also the servers' publishing
        /// interval, so each period holds one datapoint per replica.
        stat_period_secs: u32,
        collection_time_secs: u32,
        publish: CloudWatchPublish,
    },
}

/// How the servers get their metrics into CloudWatch (`ANYACCEL_CLOUDWATCH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudWatchPublish {
    /// `PutMetricData` with the pod's identity (EKS Pod Identity on the
    /// `anyaccel` service account, allowed `cloudwatch:PutMetricData`).
    Api,
    /// Embedded Metric Format lines on stdout, shipped by the CloudWatch
    /// agent or Fluent Bit.
    Emf,
}

impl CloudWatchPublish {
    pub fn as_str(self) -> &'static str {
        match self {
            CloudWatchPublish::Api => "api",
            CloudWatchPublish::Emf => "emf",
        }
    }
}

/// Per-replica requests (and limits) of a pool's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodResources {
    pub cpu: String,
    pub memory: String,
    /// GPUs or Neuron devices per replica; 0 for CPU pools.
    pub devices: u32,
}

/// A compiled model: where pods load it from, and (when `source` is set)
/// how the compile Job produces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    name: String,
    repo: String,
    target: CompileTarget,
    family: ModelFamily,
    source: Option<String>,
}

impl Artifact {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Hub repo (or folder) the servers load: their `ANYACCEL_MODEL`.
    pub fn repo(&self) -> &str {
        &self.repo
    }
    pub fn target(&self) -> CompileTarget {
        self.target
    }
    /// The model family (SD 1.x/2.x or SDXL): which sizes its pools may serve.
    pub fn family(&self) -> ModelFamily {
        self.family
    }
    /// Diffusers model the compile Job starts from; `None` when the artifact
    /// is already published and no Job is rendered.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
}

/// One homogeneous group of replicas: one accelerator kind, one NodePool,
/// one Deployment, one ScaledObject.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    name: String,
    accelerator: AcceleratorKind,
    instances: InstanceSelector,
    capacity: CapacityType,
    min_replicas: u32,
    max_replicas: u32,
    artifact: usize,
    latency_slo_secs: f64,
    scale_target: f64,
    weight: u16,
    trigger: ScalingTrigger,
    resources: PodResources,
    model_cache_size: String,
    sizes: Vec<(u32, u32)>,
    drain_timeout_secs: u32,
    startup_timeout_secs: u32,
    scale_down_window_secs: u32,
    root_volume_gib: u32,
    node_pool_weight: Option<u8>,
    redis_jobs_target: Option<u32>,
}

impl Pool {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn accelerator(&self) -> AcceleratorKind {
        self.accelerator
    }
    pub fn instances(&self) -> &InstanceSelector {
        &self.instances
    }
    pub fn capacity(&self) -> CapacityType {
        self.capacity
    }
    pub fn min_replicas(&self) -> u32 {
        self.min_replicas
    }
    pub fn max_replicas(&self) -> u32 {
        self.max_replicas
    }
    /// Index into [`ClusterConfig::artifacts`].
    pub fn artifact_index(&self) -> usize {
        self.artifact
    }
    pub fn latency_slo_secs(&self) -> f64 {
        self.latency_slo_secs
    }
    /// Per-replica KEDA target: backlog seconds, or queued requests when the
    /// Prometheus signal is queue depth.
    pub fn scale_target(&self) -> f64 {
        self.scale_target
    }
    /// ALB weight (0..=999); all pools carry 1 in even mode.
    pub fn weight(&self) -> u16 {
        self.weight
    }
    pub fn trigger(&self) -> &ScalingTrigger {
        &self.trigger
    }
    pub fn resources(&self) -> &PodResources {
        &self.resources
    }
    /// Image sizes the servers offer (`ANYACCEL_SIZES`).
    pub fn sizes(&self) -> &[(u32, u32)] {
        &self.sizes
    }
    pub fn model_cache_size(&self) -> &str {
        &self.model_cache_size
    }
    /// `ANYACCEL_DRAIN_TIMEOUT_SECS`: how long the server finishes accepted
    /// work after SIGTERM.
    pub fn drain_timeout_secs(&self) -> u32 {
        self.drain_timeout_secs
    }
    /// Budget for model download, load and warm-up before the startup probe
    /// gives up.
    pub fn startup_timeout_secs(&self) -> u32 {
        self.startup_timeout_secs
    }
    pub fn scale_down_window_secs(&self) -> u32 {
        self.scale_down_window_secs
    }
    pub fn root_volume_gib(&self) -> u32 {
        self.root_volume_gib
    }
    pub fn node_pool_weight(&self) -> Option<u8> {
        self.node_pool_weight
    }
    /// Jobs of the pool's Redis queue (waiting or running) per replica
    /// (`target_redis_jobs`), as if the pool served its queue alone; `None`
    /// without `[redis]`.
    pub fn redis_jobs_target(&self) -> Option<u32> {
        self.redis_jobs_target
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressConfig {
    mode: IngressMode,
    scheme: IngressScheme,
    host: Option<String>,
    certificate_arn: Option<String>,
    class: String,
    idle_timeout_secs: u32,
}

impl IngressConfig {
    pub fn mode(&self) -> IngressMode {
        self.mode
    }
    pub fn scheme(&self) -> IngressScheme {
        self.scheme
    }
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
    /// ACM certificate; when set the ALB listens on 443 and redirects 80.
    pub fn certificate_arn(&self) -> Option<&str> {
        self.certificate_arn.as_deref()
    }
    pub fn class(&self) -> &str {
        &self.class
    }
    pub fn idle_timeout_secs(&self) -> u32 {
        self.idle_timeout_secs
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlugins {
    render: bool,
    nvidia_image: String,
    neuron_image: String,
}

impl DevicePlugins {
    /// False when the operator installs the plugins with their Helm charts.
    pub fn render(&self) -> bool {
        self.render
    }
    pub fn nvidia_image(&self) -> &str {
        &self.nvidia_image
    }
    pub fn neuron_image(&self) -> &str {
        &self.neuron_image
    }
}

/// The Redis the servers share their job queues through (`[redis]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    host: String,
    port: u16,
    tls: bool,
    database: u32,
    password_secret: String,
    password_key: String,
}

impl RedisConfig {
    /// `host:port` (an IPv6 host in brackets), as KEDA's `address` takes it.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
    /// `ANYACCEL_REDIS_URL`: `redis://` or `rediss://` (TLS), the address,
    /// and `/<database>` unless it is 0. Never a password.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let mut url = format!("{scheme}://{}", self.address());
        if self.database != 0 {
            url.push_str(&format!("/{}", self.database));
        }
        url
    }
    pub fn tls(&self) -> bool {
        self.tls
    }
    pub fn database(&self) -> u32 {
        self.database
    }
    /// Secret in the fleet's namespace holding the password.
    pub fn password_secret(&self) -> &str {
        &self.password_secret
    }
    pub fn password_key(&self) -> &str {
        &self.password_key
    }
}

/// A validated cluster description. Build it with [`ClusterConfig::from_toml_str`]
/// or [`ClusterConfig::from_path`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    cluster_name: String,
    namespace: String,
    node_role: String,
    ami_alias: String,
    hub_token_secret: Option<String>,
    image_repository: String,
    image_tags: BTreeMap<AcceleratorKind, String>,
    pull_policy: String,
    ingress: IngressConfig,
    device_plugins: DevicePlugins,
    artifacts: Vec<Artifact>,
    pools: Vec<Pool>,
    fleet: FleetController,
    c2pa: C2paSigning,
    redis: Option<RedisConfig>,
    /// Indexes into `pools`, first fallback first.
    fallback_order: Vec<usize>,
    plan: Option<PlanStamp>,
}

/// C2PA Content Credentials on the servers' images (`[c2pa]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum C2paSigning {
    /// Images go out unsigned (`enabled = false`).
    Off,
    On {
        /// A `kubernetes.io/tls` Secret (`tls.crt` chain, `tls.key`) the
        /// servers sign with; without one each pod makes a development
        /// certificate at start-up, which verifiers report as untrusted.
        secret: Option<String>,
        /// Record prompts and seeds in the manifests.
        include_prompt: bool,
    },
}

/// The `anyaccel fleet` controller (`[fleet]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetController {
    enabled: bool,
    hold_down_secs: u32,
}

impl FleetController {
    /// Rendered when more than one pool shares the ALB, unless turned off.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
    /// Quiet time before a pool that could not get capacity gets its planned
    /// weight back.
    pub fn hold_down_secs(&self) -> u32 {
        self.hold_down_secs
    }
}

impl ClusterConfig {
    pub fn from_path(path: &Path) -> Result<Self, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), None)
    }

    /// Reads `path` with the plan's weights, KEDA targets, replica bounds and
    /// SLO filling the pools' keys; a key the config sets differently, or a
    /// pool on one side only, is an error naming both files.
    pub fn from_path_with_plan(path: &Path, plan: &Plan) -> Result<Self, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), Some(plan))
    }

    pub fn from_toml_str(text: &str) -> Result<Self, DeployError> {
        Self::parse(text, "cluster config", None)
    }

    pub fn from_toml_str_with_plan(text: &str, plan: &Plan) -> Result<Self, DeployError> {
        Self::parse(text, "cluster config", Some(plan))
    }

    fn parse(text: &str, origin: &str, plan: Option<&Plan>) -> Result<Self, DeployError> {
        let mut raw: input::RawConfig = toml::from_str(text).map_err(|e| DeployError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let Some(plan) = plan else {
            return validate::validate(raw);
        };
        let problems = with_plan::apply(&mut raw, plan, origin);
        if !problems.is_empty() {
            return Err(DeployError::PlanMismatch {
                config: origin.to_string(),
                plan: plan.origin().to_string(),
                problems,
            });
        }
        let mut cfg = validate::validate(raw)?;
        cfg.fallback_order = plan
            .file()
            .plan
            .fallback_order
            .iter()
            .filter_map(|name| cfg.pools.iter().position(|p| &p.name == name))
            .collect();
        cfg.plan = Some(plan.stamp().clone());
        Ok(cfg)
    }

    /// EKS cluster name: Karpenter discovers subnets and security groups by
    /// the `karpenter.sh/discovery` tag with this value.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// IAM role of the nodes Karpenter launches.
    pub fn node_role(&self) -> &str {
        &self.node_role
    }
    /// EC2NodeClass AMI alias, `al2023@<version>`.
    pub fn ami_alias(&self) -> &str {
        &self.ami_alias
    }
    /// Secret (key `token`) holding a Hugging Face token.
    pub fn hub_token_secret(&self) -> Option<&str> {
        self.hub_token_secret.as_deref()
    }
    /// `repository:tag` for the pool kind; validation guarantees the tag.
    pub fn image_for(&self, kind: AcceleratorKind) -> String {
        let tag = self.image_tags.get(&kind).map_or("latest", String::as_str);
        format!("{}:{tag}", self.image_repository)
    }
    pub fn pull_policy(&self) -> &str {
        &self.pull_policy
    }
    pub fn ingress(&self) -> &IngressConfig {
        &self.ingress
    }
    pub fn device_plugins(&self) -> &DevicePlugins {
        &self.device_plugins
    }
    pub fn artifacts(&self) -> &[Artifact] {
        &self.artifacts
    }
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }
    pub fn artifact_of(&self, pool: &Pool) -> &Artifact {
        &self.artifacts[pool.artifact]
    }
    pub fn fleet(&self) -> &FleetController {
        &self.fleet
    }
    pub fn c2pa(&self) -> &C2paSigning {
        &self.c2pa
    }
    pub fn redis(&self) -> Option<&RedisConfig> {
        self.redis.as_ref()
    }
    /// The job queue a pool's replicas read (`ANYACCEL_REDIS_QUEUE`): the
    /// name of the artifact it serves, so pools serving one model share it.
    pub fn queue_of(&self, pool: &Pool) -> &str {
        self.artifact_of(pool).name()
    }
    /// Pools in fallback order: the plan's when rendered with one, else the
    /// order of the config (list the cheapest first).
    pub fn pools_in_fallback_order(&self) -> impl Iterator<Item = &Pool> {
        self.fallback_order.iter().map(|&i| &self.pools[i])
    }
    /// The plan this config was read with.
    pub fn plan(&self) -> Option<&PlanStamp> {
        self.plan.as_ref()
    }
    /// Whether any pool runs on this kind (decides the device plugins).
    pub fn uses(&self, kind: AcceleratorKind) -> bool {
        self.pools.iter().any(|p| p.accelerator == kind)
    }
}
