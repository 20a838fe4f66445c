//! The cluster description (`cluster.toml`) and its validation.
//!
//! Parsing happens in two steps: serde reads the TOML into loose `Raw*`
//! structs (every field optional, unknown keys rejected), then [`validate`]
//! turns them into the public types below, where the closed sets are enums
//! and every number has been range-checked. All problems are collected, each
//! naming its field, so an operator fixes a config in one pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use anyaccel_pipeline::ModelFamily;
use serde::Deserialize;

use crate::error::DeployError;

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

/// `anyaccel compile --target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileTarget {
    OnnxFp32,
    /// CPU only: ONNX Runtime's dynamic int8 MatMul has no CUDA kernel.
    OnnxInt8,
    /// x86_64 CPUs through OpenVINO (bf16 where the CPU has it).
    OnnxOpenVino,
    OnnxFp16,
    Neuron,
}

impl CompileTarget {
    const ALL: [CompileTarget; 5] = [
        CompileTarget::OnnxFp32,
        CompileTarget::OnnxInt8,
        CompileTarget::OnnxOpenVino,
        CompileTarget::OnnxFp16,
        CompileTarget::Neuron,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CompileTarget::OnnxFp32 => "onnx-fp32",
            CompileTarget::OnnxInt8 => "onnx-int8",
            CompileTarget::OnnxOpenVino => "onnx-openvino",
            CompileTarget::OnnxFp16 => "onnx-fp16",
            CompileTarget::Neuron => "neuron",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
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
}

impl ClusterConfig {
    pub fn from_path(path: &Path) -> Result<Self, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn from_toml_str(text: &str) -> Result<Self, DeployError> {
        Self::parse(text, "cluster config")
    }

    fn parse(text: &str, origin: &str) -> Result<Self, DeployError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| DeployError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        validate(raw)
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
    /// Whether any pool runs on this kind (decides the device plugins).
    pub fn uses(&self, kind: AcceleratorKind) -> bool {
        self.pools.iter().any(|p| p.accelerator == kind)
    }
}

// ---------------------------------------------------------------------------
// Raw TOML shape

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Option<RawCluster>,
    image: Option<RawImage>,
    ingress: Option<RawIngress>,
    /// Default trigger for every pool without its own `[pools.scaling]`.
    scaling: Option<RawScaling>,
    device_plugins: Option<RawDevicePlugins>,
    #[serde(default)]
    artifacts: Vec<RawArtifact>,
    #[serde(default)]
    pools: Vec<RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Option<String>,
    namespace: Option<String>,
    node_role: Option<String>,
    ami_alias: Option<String>,
    hub_token_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    repository: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    pull_policy: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIngress {
    mode: Option<String>,
    scheme: Option<String>,
    host: Option<String>,
    certificate_arn: Option<String>,
    class: Option<String>,
    idle_timeout_secs: Option<i64>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawScaling {
    trigger: Option<String>,
    server_address: Option<String>,
    signal: Option<String>,
    region: Option<String>,
    role_arn: Option<String>,
    stat_period_secs: Option<i64>,
    collection_time_secs: Option<i64>,
    publish: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDevicePlugins {
    render: Option<bool>,
    nvidia_image: Option<String>,
    neuron_image: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    name: Option<String>,
    repo: Option<String>,
    target: Option<String>,
    family: Option<String>,
    source: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Option<String>,
    accelerator: Option<String>,
    instance_families: Option<Vec<String>>,
    instance_types: Option<Vec<String>>,
    capacity_type: Option<String>,
    min_replicas: Option<i64>,
    max_replicas: Option<i64>,
    artifact: Option<String>,
    sizes: Option<Vec<String>>,
    latency_slo_secs: Option<Number>,
    target_backlog_secs: Option<Number>,
    target_queue_depth: Option<Number>,
    weight: Option<i64>,
    scaling: Option<RawScaling>,
    resources: Option<RawResources>,
    model_cache_size: Option<String>,
    drain_timeout_secs: Option<i64>,
    startup_timeout_secs: Option<i64>,
    scale_down_window_secs: Option<i64>,
    root_volume_gib: Option<i64>,
    node_pool_weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpu: Option<String>,
    memory: Option<String>,
    devices: Option<i64>,
}

/// TOML keeps integers and floats apart; `latency_slo_secs = 8` should work.
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn get(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

// ---------------------------------------------------------------------------
// Defaults

/// ALB forward actions take at most five target groups.
pub const MAX_POOLS: usize = 5;
/// ALB target group weights are 0..=999.
pub const MAX_WEIGHT: u16 = 999;
/// Karpenter's default AMI alias: the AL2023 EKS-optimized AMI, whose NVIDIA
/// and Neuron variants Karpenter picks per instance type. Pin a version in
/// production (`al2023@v20250101`) so node images change only on purpose.
pub const DEFAULT_AMI_ALIAS: &str = "al2023@latest";
pub const DEFAULT_NVIDIA_PLUGIN_IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.17.1";
pub const DEFAULT_NEURON_PLUGIN_IMAGE: &str =
    "public.ecr.aws/neuron/neuron-device-plugin:2.24.23.0";

/// Defaults that depend on the hardware. The numbers are starting points
/// for Stable Diffusion 1.5/2.x at 512px; `anyaccel bench` says better.
struct KindDefaults {
    cpu: &'static str,
    memory: &'static str,
    devices: u32,
    /// Longest request the pool should finish while draining. CPU images
    /// take tens of seconds each; accelerators a few seconds.
    drain_timeout_secs: u32,
    /// Model download + load + warm-up. Neuron loads compiled graphs onto
    /// the device, which is the slowest.
    startup_timeout_secs: u32,
    /// Accelerator replicas cost minutes to bring back (node launch, image
    /// pull, model load), so they are held longer after a burst.
    scale_down_window_secs: u32,
    /// Root EBS volume: the CUDA and Neuron images are several GB, and
    /// image layers plus the model cache (emptyDir) live there.
    root_volume_gib: u32,
    model_cache_size: &'static str,
}

fn kind_defaults(kind: AcceleratorKind) -> KindDefaults {
    match kind {
        AcceleratorKind::CpuAmd64 | AcceleratorKind::CpuArm64 => KindDefaults {
            cpu: "4",
            memory: "8Gi",
            devices: 0,
            drain_timeout_secs: 120,
            startup_timeout_secs: 600,
            scale_down_window_secs: 300,
            // Room for a compile Job's scratch (exporter venv, artifact)
            // next to the image and the model cache.
            root_volume_gib: 100,
            model_cache_size: "10Gi",
        },
        // Sized to fit the smallest 1-GPU / 1-device instances (g5.xlarge,
        // g6.xlarge, inf2.xlarge: 4 vCPU, 16 GiB) next to the DaemonSets.
        AcceleratorKind::Nvidia => KindDefaults {
            cpu: "3",
            memory: "12Gi",
            devices: 1,
            drain_timeout_secs: 60,
            startup_timeout_secs: 900,
            scale_down_window_secs: 600,
            root_volume_gib: 150,
            model_cache_size: "20Gi",
        },
        AcceleratorKind::Neuron => KindDefaults {
            cpu: "3",
            memory: "12Gi",
            devices: 1,
            drain_timeout_secs: 60,
            startup_timeout_secs: 1200,
            scale_down_window_secs: 600,
            root_volume_gib: 150,
            model_cache_size: "30Gi",
        },
    }
}

// ---------------------------------------------------------------------------
// Validation

/// Collects problems so that every one of them is reported at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    fn required<T>(&mut self, value: Option<T>, field: &str) -> Option<T> {
        if value.is_none() {
            self.add(format!("{field} is required"));
        }
        value
    }
}

fn validate(raw: RawConfig) -> Result<ClusterConfig, DeployError> {
    let mut p = Problems::default();

    // [cluster]
    let (cluster_name, namespace, node_role, ami_alias, hub_token_secret) = match raw.cluster {
        None => {
            p.add("[cluster] is required (name, namespace)");
            Default::default()
        }
        Some(c) => {
            let name = p.required(c.name, "cluster.name").unwrap_or_default();
            if !name.is_empty() && !is_dns_label(&name, 100) {
                p.add(format!(
                    "cluster.name {name:?} must be lowercase letters, digits and '-', starting with a letter"
                ));
            }
            let namespace = c.namespace.unwrap_or_else(|| "anyaccel".to_string());
            if !is_dns_label(&namespace, 63) {
                p.add(format!(
                    "cluster.namespace {namespace:?} is not a valid namespace name (lowercase letters, digits, '-', at most 63)"
                ));
            }
            let node_role = c
                .node_role
                .unwrap_or_else(|| format!("KarpenterNodeRole-{name}"));
            if node_role.is_empty() || node_role.starts_with("arn:") {
                p.add(format!(
                    "cluster.node_role {node_role:?} must be an IAM role name, not an ARN (Karpenter's EC2NodeClass.spec.role)"
                ));
            }
            let ami_alias = c.ami_alias.unwrap_or_else(|| DEFAULT_AMI_ALIAS.to_string());
            check_ami_alias(&ami_alias, &mut p);
            if let Some(s) = &c.hub_token_secret
                && !is_dns_subdomain(s)
            {
                p.add(format!(
                    "cluster.hub_token_secret {s:?} is not a valid Secret name"
                ));
            }
            (name, namespace, node_role, ami_alias, c.hub_token_secret)
        }
    };

    // [image]
    let mut image_tags = BTreeMap::new();
    let (image_repository, pull_policy) = match raw.image {
        None => {
            p.add("[image] is required (repository and tags per accelerator kind)");
            (String::new(), String::new())
        }
        Some(img) => {
            let repo = p
                .required(img.repository, "image.repository")
                .unwrap_or_default();
            if !repo.is_empty() && !is_image_repository(&repo) {
                p.add(format!(
                    "image.repository {repo:?} must be a lowercase registry/path without a tag or digest (tags go in [image.tags])"
                ));
            }
            for (key, tag) in img.tags {
                match AcceleratorKind::parse(&key) {
                    None => p.add(format!(
                        "image.tags.{key}: unknown accelerator kind; allowed: {}",
                        AcceleratorKind::allowed_list()
                    )),
                    Some(kind) => {
                        if !is_image_tag(&tag) {
                            p.add(format!(
                                "image.tags.{key} {tag:?} is not a valid image tag ([A-Za-z0-9_.-], at most 128, not starting with '.' or '-')"
                            ));
                        }
                        image_tags.insert(kind, tag);
                    }
                }
            }
            let pull = img.pull_policy.unwrap_or_else(|| "IfNotPresent".into());
            if !["Always", "IfNotPresent", "Never"].contains(&pull.as_str()) {
                p.add(format!(
                    "image.pull_policy {pull:?} must be one of Always, IfNotPresent, Never"
                ));
            }
            (repo, pull)
        }
    };

    // [ingress]
    let ingress = validate_ingress(raw.ingress.unwrap_or_default(), &mut p);

    // [device_plugins]
    let dp = raw.device_plugins.unwrap_or_default();
    let device_plugins = DevicePlugins {
        render: dp.render.unwrap_or(true),
        nvidia_image: dp
            .nvidia_image
            .unwrap_or_else(|| DEFAULT_NVIDIA_PLUGIN_IMAGE.into()),
        neuron_image: dp
            .neuron_image
            .unwrap_or_else(|| DEFAULT_NEURON_PLUGIN_IMAGE.into()),
    };
    for (field, image) in [
        ("device_plugins.nvidia_image", &device_plugins.nvidia_image),
        ("device_plugins.neuron_image", &device_plugins.neuron_image),
    ] {
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            p.add(format!("{field} {image:?} is not an image reference"));
        }
    }

    // [[artifacts]]
    let mut artifacts = Vec::new();
    let mut artifact_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, a) in raw.artifacts.into_iter().enumerate() {
        let at = format!("artifacts[{i}]");
        let name = p
            .required(a.name, &format!("{at}.name"))
            .unwrap_or_default();
        if !name.is_empty() {
            if !is_dns_label(&name, 40) {
                p.add(format!(
                    "{at}.name {name:?} must be lowercase letters, digits and '-', starting with a letter, at most 40 characters"
                ));
            }
            if let Some(first) = artifact_names.insert(name.clone(), i) {
                p.add(format!(
                    "{at}.name: duplicate artifact name {name:?} (also artifacts[{first}])"
                ));
            }
        }
        let repo = p
            .required(a.repo, &format!("{at}.repo"))
            .unwrap_or_default();
        if !repo.is_empty() && !is_model_location(&repo) {
            p.add(format!(
                "{at}.repo {repo:?} must be a Hub repo id (owner/name) or an absolute folder"
            ));
        }
        let target = match a.target.as_deref() {
            None => {
                p.add(format!("{at}.target is required"));
                CompileTarget::OnnxFp32
            }
            Some(t) => CompileTarget::parse(t).unwrap_or_else(|| {
                p.add(format!(
                    "{at}.target {t:?} is unknown; allowed: {}",
                    CompileTarget::ALL.map(|t| t.as_str()).join(", ")
                ));
                CompileTarget::OnnxFp32
            }),
        };
        let family = match a.family.as_deref() {
            None => ModelFamily::StableDiffusion,
            Some(f) => ModelFamily::parse(f).unwrap_or_else(|| {
                p.add(format!(
                    "{at}.family {f:?} is unknown; allowed: {}",
                    ModelFamily::ALL.map(|f| f.name()).join(", ")
                ));
                ModelFamily::StableDiffusion
            }),
        };
        if let Some(src) = &a.source
            && !is_model_location(src)
        {
            p.add(format!(
                "{at}.source {src:?} must be a Hub model id (owner/name) or an absolute folder"
            ));
        }
        if a.source.is_some() && repo.starts_with('/') {
            p.add(format!(
                "{at}.repo {repo:?}: a compiled artifact is pushed to a Hub repo, not a folder (pods cannot see the Job's disk)"
            ));
        }
        artifacts.push(Artifact {
            name,
            repo,
            target,
            family,
            source: a.source,
        });
    }
    if artifacts.iter().any(|a| a.source.is_some()) && hub_token_secret.is_none() {
        p.add("cluster.hub_token_secret is required: a compile Job pushes its artifact to the Hub");
    }

    // [[pools]]
    let default_scaling = raw.scaling;
    let mut pools = Vec::new();
    let mut pool_names: BTreeMap<String, usize> = BTreeMap::new();
    if raw.pools.is_empty() {
        p.add("at least one [[pools]] entry is required");
    }
    if raw.pools.len() > MAX_POOLS {
        p.add(format!(
            "pools: {} pools given, but an ALB forward action splits traffic across at most {MAX_POOLS} target groups",
            raw.pools.len()
        ));
    }
    // Artifacts referenced by any pool, valid or not, so one broken pool
    // does not also report its artifact as unused.
    let mut referenced = BTreeSet::new();
    for (i, rp) in raw.pools.into_iter().enumerate() {
        if let Some(name) = &rp.name
            && let Some(first) = pool_names.insert(name.clone(), i)
        {
            p.add(format!(
                "pools[{i}].name: duplicate pool name {name:?} (also pools[{first}])"
            ));
        }
        if let Some(a) = &rp.artifact {
            referenced.insert(a.clone());
        }
        if let Some(pool) = validate_pool(
            i,
            rp,
            &artifact_names,
            &artifacts,
            default_scaling.as_ref(),
            ingress.mode,
            &mut p,
        ) {
            pools.push(pool);
        }
    }

    // NodePool names are `<namespace>-<pool>` and appear as the value of
    // the `karpenter.sh/nodepool` node label (at most 63 characters).
    for (i, pool) in pools.iter().enumerate() {
        let len = namespace.len() + 1 + pool.name.len();
        if len > 63 {
            p.add(format!(
                "pools[{i}].name {:?}: with namespace {namespace:?} the NodePool name is {len} characters; at most 63",
                pool.name
            ));
        }
    }
    // Every kind a pool uses needs an image tag.
    let mut reported = BTreeSet::new();
    for (i, pool) in pools.iter().enumerate() {
        if !image_tags.contains_key(&pool.accelerator) && reported.insert(pool.accelerator) {
            p.add(format!(
                "image.tags.{kind} is missing: pools[{i}] ({name}) runs on {kind}",
                kind = pool.accelerator,
                name = pool.name
            ));
        }
    }
    // Every artifact is served by some pool: the compile Job runs on that
    // pool's nodes, and an unused artifact is most likely a typo.
    for (i, a) in artifacts.iter().enumerate() {
        if !a.name.is_empty() && !referenced.contains(&a.name) {
            p.add(format!(
                "artifacts[{i}] ({}) is not used by any pool",
                a.name
            ));
        }
    }

    if !p.0.is_empty() {
        return Err(DeployError::Invalid { problems: p.0 });
    }
    Ok(ClusterConfig {
        cluster_name,
        namespace,
        node_role,
        ami_alias,
        hub_token_secret,
        image_repository,
        image_tags,
        pull_policy,
        ingress,
        device_plugins,
        artifacts,
        pools,
    })
}

fn validate_ingress(raw: RawIngress, p: &mut Problems) -> IngressConfig {
    let mode = match raw.mode.as_deref() {
        None | Some("cost-weighted") => IngressMode::CostWeighted,
        Some("even") => IngressMode::Even,
        Some(other) => {
            p.add(format!(
                "ingress.mode {other:?} is unknown; allowed: cost-weighted, even"
            ));
            IngressMode::CostWeighted
        }
    };
    // Internal by default: exposing an image generator to the internet is a
    // decision to write down, not a default.
    let scheme = match raw.scheme.as_deref() {
        None | Some("internal") => IngressScheme::Internal,
        Some("internet-facing") => IngressScheme::InternetFacing,
        Some(other) => {
            p.add(format!(
                "ingress.scheme {other:?} is unknown; allowed: internal, internet-facing"
            ));
            IngressScheme::Internal
        }
    };
    if let Some(h) = &raw.host
        && !is_hostname(h)
    {
        p.add(format!("ingress.host {h:?} is not a DNS name"));
    }
    if let Some(arn) = &raw.certificate_arn
        && !is_arn(arn, "acm", "certificate/")
    {
        p.add(format!(
            "ingress.certificate_arn {arn:?} is not an ACM certificate ARN (arn:aws:acm:REGION:ACCOUNT:certificate/ID)"
        ));
    }
    let class = raw.class.unwrap_or_else(|| "alb".into());
    if !is_dns_subdomain(&class) {
        p.add(format!(
            "ingress.class {class:?} is not a valid IngressClass name"
        ));
    }
    // The ALB closes a connection idle this long; an image that takes longer
    // to generate would be cut off. ALB allows 1..=4000.
    let idle = raw.idle_timeout_secs.unwrap_or(180);
    if !(1..=4000).contains(&idle) {
        p.add(format!(
            "ingress.idle_timeout_secs ({idle}) must be within 1..=4000 (ALB limit)"
        ));
    }
    IngressConfig {
        mode,
        scheme,
        host: raw.host,
        certificate_arn: raw.certificate_arn,
        class,
        idle_timeout_secs: idle.clamp(1, 4000) as u32,
    }
}

#[allow(clippy::too_many_arguments)]
fn validate_pool(
    i: usize,
    rp: RawPool,
    artifact_names: &BTreeMap<String, usize>,
    artifacts: &[Artifact],
    default_scaling: Option<&RawScaling>,
    mode: IngressMode,
    p: &mut Problems,
) -> Option<Pool> {
    let at = format!("pools[{i}]");
    let before = p.0.len();

    let name = p
        .required(rp.name, &format!("{at}.name"))
        .unwrap_or_default();
    // Names end up in `anyaccel-<pool>` (Service, a DNS-1035 label) and in
    // KEDA's `keda-hpa-anyaccel-<pool>` (at most 63): 40 leaves room.
    if !name.is_empty() && !is_dns_label(&name, 40) {
        p.add(format!(
            "{at}.name {name:?} must be lowercase letters, digits and '-', starting with a letter, at most 40 characters"
        ));
    }

    let accelerator = match rp.accelerator.as_deref() {
        None => {
            p.add(format!(
                "{at}.accelerator is required; allowed: {}",
                AcceleratorKind::allowed_list()
            ));
            None
        }
        Some(a) => {
            let kind = AcceleratorKind::parse(a);
            if kind.is_none() {
                p.add(format!(
                    "{at}.accelerator {a:?} is unknown; allowed: {}",
                    AcceleratorKind::allowed_list()
                ));
            }
            kind
        }
    };

    let instances = match (rp.instance_families, rp.instance_types) {
        (Some(_), Some(_)) => {
            p.add(format!(
                "{at}: give instance_families or instance_types, not both"
            ));
            None
        }
        (None, None) => {
            p.add(format!(
                "{at}.instance_families (or instance_types) is required"
            ));
            None
        }
        (Some(f), None) => {
            check_instances(
                &f,
                &format!("{at}.instance_families"),
                false,
                accelerator,
                p,
            );
            Some(InstanceSelector::Families(f))
        }
        (None, Some(t)) => {
            check_instances(&t, &format!("{at}.instance_types"), true, accelerator, p);
            Some(InstanceSelector::Types(t))
        }
    };

    let capacity = match rp.capacity_type.as_deref() {
        None => CapacityType::OnDemand,
        Some(c) => CapacityType::parse(c).unwrap_or_else(|| {
            p.add(format!(
                "{at}.capacity_type {c:?} is unknown; allowed: {}",
                CapacityType::ALL.map(|c| c.as_str()).join(", ")
            ));
            CapacityType::OnDemand
        }),
    };

    let min = p.required(rp.min_replicas, &format!("{at}.min_replicas"));
    let max = p.required(rp.max_replicas, &format!("{at}.max_replicas"));
    if let Some(min) = min
        && min < 1
    {
        // Every pool sits behind the ALB with a share of the traffic; with no
        // replica that share would get 503s until KEDA woke the pool.
        p.add(format!(
            "{at}.min_replicas ({min}) must be at least 1: the ALB sends this pool its share of requests at all times"
        ));
    }
    if let Some(max) = max
        && !(1..=1000).contains(&max)
    {
        p.add(format!("{at}.max_replicas ({max}) must be within 1..=1000"));
    }
    if let (Some(min), Some(max)) = (min, max)
        && max < min
    {
        p.add(format!(
            "{at}.max_replicas ({max}) is below min_replicas ({min})"
        ));
    }

    let artifact = match rp.artifact.as_deref() {
        None => {
            p.add(format!(
                "{at}.artifact is required (name of an [[artifacts]] entry)"
            ));
            None
        }
        Some(a) => match artifact_names.get(a) {
            None => {
                let known: Vec<&str> = artifact_names.keys().map(String::as_str).collect();
                p.add(format!(
                    "{at}.artifact {a:?} names no [[artifacts]] entry; defined: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
                None
            }
            Some(&idx) => {
                if let Some(kind) = accelerator {
                    let target = artifacts[idx].target;
                    if !kind.can_run(target) {
                        p.add(format!(
                            "{at}.artifact {a:?} is compiled for {}, which {kind} pools cannot run",
                            target.as_str()
                        ));
                    }
                }
                Some(idx)
            }
        },
    };

    let slo = p
        .required(rp.latency_slo_secs, &format!("{at}.latency_slo_secs"))
        .map(Number::get);
    if let Some(slo) = slo
        && !(slo > 0.0 && slo <= 3600.0)
    {
        p.add(format!(
            "{at}.latency_slo_secs ({slo}) must be within (0, 3600]"
        ));
    }

    // Trigger: the pool's own, else the top-level [scaling].
    let trigger = match rp.scaling.as_ref().or(default_scaling) {
        None => {
            p.add(format!(
                "{at}.scaling is required (or a top-level [scaling] default)"
            ));
            None
        }
        Some(s) => {
            let field = if rp.scaling.is_some() {
                format!("{at}.scaling")
            } else {
                "scaling".to_string()
            };
            validate_trigger(s, &field, p)
        }
    };

    // Per-replica target. Backlog: a replica holding B seconds of queued
    // work makes a new request wait about B seconds, so B must stay below
    // the SLO; half the SLO leaves room for the minutes a new replica takes.
    let scale_target = match &trigger {
        Some(ScalingTrigger::Prometheus {
            signal: PrometheusSignal::QueueDepth,
            ..
        }) => {
            if rp.target_backlog_secs.is_some() {
                p.add(format!(
                    "{at}.target_backlog_secs does not apply with signal = \"queue-depth\"; use target_queue_depth"
                ));
            }
            match rp.target_queue_depth.map(Number::get) {
                None => {
                    p.add(format!(
                        "{at}.target_queue_depth is required with signal = \"queue-depth\""
                    ));
                    1.0
                }
                Some(q) if !(q > 0.0 && q <= 10_000.0) => {
                    p.add(format!(
                        "{at}.target_queue_depth ({q}) must be within (0, 10000]"
                    ));
                    1.0
                }
                Some(q) => q,
            }
        }
        _ => {
            if rp.target_queue_depth.is_some() {
                p.add(format!(
                    "{at}.target_queue_depth applies only to a Prometheus trigger with signal = \"queue-depth\""
                ));
            }
            match (rp.target_backlog_secs.map(Number::get), slo) {
                (Some(t), slo) => {
                    if t <= 0.0 {
                        p.add(format!("{at}.target_backlog_secs ({t}) must be above 0"));
                    } else if let Some(slo) = slo
                        && t >= slo
                    {
                        p.add(format!(
                            "{at}.target_backlog_secs ({t}) must be below latency_slo_secs ({slo}): queued work adds to every request's latency"
                        ));
                    }
                    t
                }
                (None, Some(slo)) => slo / 2.0,
                (None, None) => 1.0,
            }
        }
    };

    let weight = match (mode, rp.weight) {
        (IngressMode::CostWeighted, None) => {
            p.add(format!(
                "{at}.weight is required with ingress.mode = \"cost-weighted\" (1..={MAX_WEIGHT}, e.g. from `anyaccel plan`)"
            ));
            1
        }
        (IngressMode::CostWeighted, Some(w)) => {
            if !(1..=i64::from(MAX_WEIGHT)).contains(&w) {
                p.add(format!(
                    "{at}.weight ({w}) must be within 1..={MAX_WEIGHT} (ALB target group weight; 0 would starve the pool)"
                ));
            }
            w.clamp(1, i64::from(MAX_WEIGHT)) as u16
        }
        // Even mode ignores weights, so a config can switch modes freely.
        (IngressMode::Even, _) => 1,
    };

    let defaults = accelerator.map(kind_defaults);
    let (cpu, memory, devices) = {
        let r = rp.resources;
        let (rc, rm, rd) = match r {
            Some(r) => (r.cpu, r.memory, r.devices),
            None => (None, None, None),
        };
        let cpu = rc.unwrap_or_else(|| defaults.as_ref().map_or("1", |d| d.cpu).to_string());
        let memory =
            rm.unwrap_or_else(|| defaults.as_ref().map_or("1Gi", |d| d.memory).to_string());
        if !is_quantity(&cpu) || cpu.starts_with('-') {
            p.add(format!(
                "{at}.resources.cpu {cpu:?} is not a Kubernetes quantity (e.g. \"3\" or \"3500m\")"
            ));
        }
        if !is_quantity(&memory) || memory.starts_with('-') {
            p.add(format!(
                "{at}.resources.memory {memory:?} is not a Kubernetes quantity (e.g. \"12Gi\")"
            ));
        }
        let devices = match (accelerator.and_then(AcceleratorKind::device_resource), rd) {
            (None, Some(d)) if d != 0 => {
                p.add(format!(
                    "{at}.resources.devices ({d}) applies only to nvidia and neuron pools"
                ));
                0
            }
            (None, _) => 0,
            (Some(_), Some(d)) if !(1..=16).contains(&d) => {
                p.add(format!(
                    "{at}.resources.devices ({d}) must be within 1..=16"
                ));
                1
            }
            (Some(_), Some(d)) => d as u32,
            (Some(_), None) => defaults.as_ref().map_or(1, |d| d.devices),
        };
        (cpu, memory, devices)
    };

    let sizes = validate_sizes(rp.sizes, artifact.map(|i| &artifacts[i]), &at, p);
    let model_cache_size = rp.model_cache_size.unwrap_or_else(|| {
        defaults
            .as_ref()
            .map_or("10Gi", |d| d.model_cache_size)
            .to_string()
    });
    if !is_quantity(&model_cache_size) || model_cache_size.starts_with('-') {
        p.add(format!(
            "{at}.model_cache_size {model_cache_size:?} is not a Kubernetes quantity (e.g. \"20Gi\")"
        ));
    }

    let mut secs = |value: Option<i64>, default: u32, field: &str, range: (u32, u32)| -> u32 {
        let v = value.unwrap_or(i64::from(default));
        if !(i64::from(range.0)..=i64::from(range.1)).contains(&v) {
            p.add(format!(
                "{at}.{field} ({v}) must be within {}..={}",
                range.0, range.1
            ));
            return default;
        }
        v as u32
    };
    let d = defaults.unwrap_or_else(|| kind_defaults(AcceleratorKind::CpuAmd64));
    let drain_timeout_secs = secs(
        rp.drain_timeout_secs,
        d.drain_timeout_secs,
        "drain_timeout_secs",
        (5, 3600),
    );
    let startup_timeout_secs = secs(
        rp.startup_timeout_secs,
        d.startup_timeout_secs,
        "startup_timeout_secs",
        (30, 7200),
    );
    let scale_down_window_secs = secs(
        rp.scale_down_window_secs,
        d.scale_down_window_secs,
        "scale_down_window_secs",
        (0, 3600),
    );
    let root_volume_gib = secs(
        rp.root_volume_gib,
        d.root_volume_gib,
        "root_volume_gib",
        (20, 16384),
    );
    let node_pool_weight = rp.node_pool_weight.map(|w| {
        if !(1..=100).contains(&w) {
            p.add(format!(
                "{at}.node_pool_weight ({w}) must be within 1..=100 (Karpenter NodePool weight)"
            ));
        }
        w.clamp(1, 100) as u8
    });

    if p.0.len() > before {
        return None;
    }
    Some(Pool {
        name,
        accelerator: accelerator?,
        instances: instances?,
        capacity,
        min_replicas: min? as u32,
        max_replicas: max? as u32,
        artifact: artifact?,
        latency_slo_secs: slo?,
        scale_target,
        weight,
        trigger: trigger?,
        resources: PodResources {
            cpu,
            memory,
            devices,
        },
        model_cache_size,
        sizes: sizes?,
        drain_timeout_secs,
        startup_timeout_secs,
        scale_down_window_secs,
        root_volume_gib,
        node_pool_weight,
    })
}

/// A pool's image sizes: the operator's list, checked against the artifact's
/// family, or the family's defaults. Static-shape artifacts (Neuron) serve
/// exactly the size they were compiled for, so they must name one.
fn validate_sizes(
    raw: Option<Vec<String>>,
    artifact: Option<&Artifact>,
    at: &str,
    p: &mut Problems,
) -> Option<Vec<(u32, u32)>> {
    let family = artifact.map_or(ModelFamily::StableDiffusion, Artifact::family);
    let before = p.0.len();
    let sizes: Vec<(u32, u32)> = match raw {
        None if artifact.is_some_and(|a| a.target() == CompileTarget::Neuron) => {
            vec![(family.native_size(), family.native_size())]
        }
        None => family.default_sizes(family.native_size()),
        Some(list) => {
            if list.is_empty() {
                p.add(format!(
                    "{at}.sizes is empty; list WxH sizes or leave it out"
                ));
            }
            let mut out: Vec<(u32, u32)> = Vec::new();
            for (j, s) in list.iter().enumerate() {
                let parsed = s
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
                match parsed {
                    None => p.add(format!(
                        "{at}.sizes[{j}] {s:?} is not WIDTHxHEIGHT (e.g. 1024x1024)"
                    )),
                    Some((w, h)) => {
                        if let Err(m) = family.check_size(w, h) {
                            p.add(format!("{at}.sizes[{j}]: {m} ({family} artifact)"));
                        } else if out.contains(&(w, h)) {
                            p.add(format!("{at}.sizes[{j}] {s:?} is listed twice"));
                        } else {
                            out.push((w, h));
                        }
                    }
                }
            }
            out
        }
    };
    if let Some(a) = artifact
        && a.target() == CompileTarget::Neuron
        && sizes.len() != 1
    {
        p.add(format!(
            "{at}.sizes: a neuron artifact is compiled for one size; list exactly that one (got {})",
            sizes.len()
        ));
    }
    (p.0.len() == before).then_some(sizes)
}

fn validate_trigger(s: &RawScaling, field: &str, p: &mut Problems) -> Option<ScalingTrigger> {
    match s.trigger.as_deref() {
        Some("prometheus") => {
            for (key, set) in [
                ("region", s.region.is_some()),
                ("role_arn", s.role_arn.is_some()),
                ("stat_period_secs", s.stat_period_secs.is_some()),
                ("collection_time_secs", s.collection_time_secs.is_some()),
                ("publish", s.publish.is_some()),
            ] {
                if set {
                    p.add(format!(
                        "{field}.{key} applies only to trigger = \"cloudwatch\""
                    ));
                }
            }
            let addr = s.server_address.clone();
            match &addr {
                None => p.add(format!(
                    "{field}.server_address is required for trigger = \"prometheus\""
                )),
                Some(a) if !is_http_url(a) => p.add(format!(
                    "{field}.server_address {a:?} must be an http:// or https:// URL"
                )),
                Some(_) => {}
            }
            let signal = match s.signal.as_deref() {
                None | Some("backlog-seconds") => PrometheusSignal::BacklogSeconds,
                Some("queue-depth") => PrometheusSignal::QueueDepth,
                Some(other) => {
                    p.add(format!(
                        "{field}.signal {other:?} is unknown; allowed: backlog-seconds, queue-depth"
                    ));
                    PrometheusSignal::BacklogSeconds
                }
            };
            Some(ScalingTrigger::Prometheus {
                server_address: addr?,
                signal,
            })
        }
        Some("cloudwatch") => {
            for (key, set) in [
                ("server_address", s.server_address.is_some()),
                ("signal", s.signal.is_some()),
            ] {
                if set {
                    p.add(format!(
                        "{field}.{key} applies only to trigger = \"prometheus\""
                    ));
                }
            }
            let region = s.region.clone();
            match &region {
                None => p.add(format!(
                    "{field}.region is required for trigger = \"cloudwatch\""
                )),
                Some(r) if !is_aws_region(r) => {
                    p.add(format!("{field}.region {r:?} is not an AWS region"))
                }
                Some(_) => {}
            }
            if let Some(arn) = &s.role_arn
                && !is_arn(arn, "iam", "role/")
            {
                p.add(format!(
                    "{field}.role_arn {arn:?} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
                ));
            }
            // One-minute periods read over the last two minutes: KEDA ends
            // the window at the last complete period and takes its newest
            // datapoint, so a minute that has not arrived yet falls back to
            // the one before instead of to minMetricValue.
            let period = s.stat_period_secs.unwrap_or(60);
            let collection = s.collection_time_secs.unwrap_or(2 * period);
            if let Err(e) = crate::keda::check_metric_stat_period(period) {
                p.add(format!("{field}.stat_period_secs: {e}"));
            } else if period % 60 != 0 {
                // The servers publish standard-resolution datapoints, which
                // CloudWatch keeps per minute.
                p.add(format!(
                    "{field}.stat_period_secs ({period}) must be a multiple of 60: the servers publish one-minute (standard resolution) datapoints"
                ));
            } else if let Err(e) = crate::keda::check_collection_time(collection, period) {
                p.add(format!("{field}.collection_time_secs: {e}"));
            }
            let publish = match s.publish.as_deref() {
                None | Some("api") => CloudWatchPublish::Api,
                Some("emf") => CloudWatchPublish::Emf,
                Some(other) => {
                    p.add(format!(
                        "{field}.publish {other:?} is unknown; allowed: api, emf"
                    ));
                    CloudWatchPublish::Api
                }
            };
            Some(ScalingTrigger::CloudWatch {
                region: region?,
                role_arn: s.role_arn.clone(),
                stat_period_secs: period.clamp(1, i64::from(u32::MAX)) as u32,
                collection_time_secs: collection.clamp(0, i64::from(u32::MAX)) as u32,
                publish,
            })
        }
        None => {
            p.add(format!(
                "{field}.trigger is required; allowed: prometheus, cloudwatch"
            ));
            None
        }
        Some(other) => {
            p.add(format!(
                "{field}.trigger {other:?} is unknown; allowed: prometheus, cloudwatch"
            ));
            None
        }
    }
}

fn check_ami_alias(alias: &str, p: &mut Problems) {
    // EC2NodeClass allows other families; this renderer's pools rely on
    // AL2023's NVIDIA and Neuron variants, so only al2023 is accepted.
    match alias.split_once('@') {
        Some(("al2023", version))
            if version == "latest"
                || (version.starts_with('v')
                    && version.len() > 1
                    && version[1..].chars().all(|c| c.is_ascii_digit())) => {}
        _ => p.add(format!(
            "cluster.ami_alias {alias:?} must be \"al2023@latest\" or \"al2023@vYYYYMMDD\""
        )),
    }
}

fn check_instances(
    items: &[String],
    field: &str,
    are_types: bool,
    kind: Option<AcceleratorKind>,
    p: &mut Problems,
) {
    if items.is_empty() {
        p.add(format!("{field} must not be empty"));
    }
    let mut seen = BTreeSet::new();
    for (j, item) in items.iter().enumerate() {
        if !seen.insert(item) {
            p.add(format!("{field}[{j}] {item:?} is listed twice"));
        }
        let family = if are_types {
            match item.split_once('.') {
                Some((f, size)) if !size.is_empty() && is_label_value(size) => f,
                _ => {
                    p.add(format!(
                        "{field}[{j}] {item:?} is not an instance type (family.size, e.g. g5.xlarge)"
                    ));
                    continue;
                }
            }
        } else {
            item.as_str()
        };
        if !is_instance_family(family) {
            p.add(format!(
                "{field}[{j}] {item:?} is not an EC2 instance family (e.g. g5, inf2, c7g)"
            ));
            continue;
        }
        if let Some(kind) = kind
            && let Some(why) = family_mismatch(family, kind)
        {
            p.add(format!("{field}[{j}] {item:?}: {why}"));
        }
    }
}

/// Catches a family that cannot serve the pool's kind. Karpenter would only
/// find no instance to launch; this says why up front. Heuristic on EC2's
/// naming: GPU families start with g/p, Neuron with inf/trn, and Graviton
/// (arm64) families carry a `g` among the attribute letters after the
/// generation digit (c7g, m6gd, c7gn).
fn family_mismatch(family: &str, kind: AcceleratorKind) -> Option<String> {
    let neuron = family.starts_with("inf") || family.starts_with("trn");
    let gpu = !neuron && (family.starts_with('g') || family.starts_with('p'));
    let graviton = {
        let after_digits = family
            .trim_start_matches(|c: char| c.is_ascii_alphabetic())
            .trim_start_matches(|c: char| c.is_ascii_digit());
        after_digits
            .split('-')
            .next()
            .is_some_and(|attrs| attrs.contains('g'))
    };
    match kind {
        AcceleratorKind::Nvidia if !gpu => Some("not an NVIDIA GPU family (g*, p*)".into()),
        AcceleratorKind::Nvidia if graviton => {
            Some("a Graviton (arm64) GPU family; the nvidia image is built for amd64".into())
        }
        AcceleratorKind::Neuron if !neuron => {
            Some("not an Inferentia/Trainium family (inf*, trn*)".into())
        }
        AcceleratorKind::CpuAmd64 | AcceleratorKind::CpuArm64 if gpu || neuron => Some(format!(
            "an accelerator family; a {kind} pool would pay for a device it does not use"
        )),
        AcceleratorKind::CpuArm64 if !graviton => {
            Some("not a Graviton (arm64) family; use a cpu-amd64 pool".into())
        }
        AcceleratorKind::CpuAmd64 if graviton => {
            Some("a Graviton (arm64) family; use a cpu-arm64 pool".into())
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Small syntax checks (no regex crate in the library)

/// RFC 1123 label that starts with a letter (so it is also a DNS-1035 label).
pub(crate) fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn is_hostname(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    s.contains('.') && is_dns_subdomain(s)
}

fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() <= 63
        && (b.is_empty()
            || (b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))))
}

fn is_instance_family(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 30
        && b[0].is_ascii_lowercase()
        && b.iter().any(u8::is_ascii_digit)
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn is_image_repository(s: &str) -> bool {
    let last = s.rsplit('/').next().unwrap_or(s);
    !s.is_empty()
        && !s.contains('@')
        && !last.contains(':')
        && !s.starts_with('/')
        && !s.ends_with('/')
        && s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/' | ':')
        })
}

fn is_image_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A Hub id (`owner/name`) or an absolute folder.
fn is_model_location(s: &str) -> bool {
    if s.starts_with('/') {
        return s.len() > 1 && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    }
    let mut parts = s.split('/');
    let ok = |part: Option<&str>| {
        part.is_some_and(|p| {
            !p.is_empty()
                && p.len() <= 96
                && !p.starts_with(['.', '-'])
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    rest.is_some_and(|r| {
        !r.is_empty() && !r.starts_with('/') && !r.chars().any(|c| c.is_whitespace() || c == '"')
    })
}

fn is_aws_region(s: &str) -> bool {
    // e.g. us-west-2, ap-southeast-1, us-gov-west-1, eu-central-2
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1]
            .parse::<u8>()
            .is_ok_and(|n| (1..=20).contains(&n))
}

/// `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE` with RESOURCE starting
/// with `resource_prefix`.
fn is_arn(s: &str, service: &str, resource_prefix: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == service
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5].len() > resource_prefix.len()
        && parts[5].starts_with(resource_prefix)
        && !s.chars().any(char::is_whitespace)
}

/// Kubernetes resource.Quantity syntax (the CRDs' own pattern).
pub(crate) fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    // `find` stopped at the first character that is neither digit nor dot.
    let num_ok = match num.split_once('.') {
        None => !num.is_empty(),
        Some((int, frac)) => !frac.contains('.') && (!int.is_empty() || !frac.is_empty()),
    };
    let suffix_ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        exp => {
            let e = exp.strip_prefix(['e', 'E']);
            e.is_some_and(|e| {
                let e = e.strip_prefix(['+', '-']).unwrap_or(e);
                !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
            })
        }
    };
    num_ok && suffix_ok
}

/// Bytes in a (valid) storage quantity such as "20Gi" or "500M"; None for
/// forms a size is never written in (milli, exponents).
pub(crate) fn quantity_bytes(s: &str) -> Option<u64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    Some((n * mult).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["1", "3500m", "12Gi", "0.5", ".5", "1e3", "100Gi", "+1"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "1GB", "1.2.3", "abc", "1 Gi", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn storage_sizes() {
        assert_eq!(quantity_bytes("20Gi"), Some(20 << 30));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("12"), Some(12));
        assert_eq!(quantity_bytes("1e3"), None);
    }

    #[test]
    fn graviton_heuristic() {
        for (fam, kind, ok) in [
            ("c7g", AcceleratorKind::CpuArm64, true),
            ("m6gd", AcceleratorKind::CpuArm64, true),
            ("c7gn", AcceleratorKind::CpuArm64, true),
            ("c7i", AcceleratorKind::CpuArm64, false),
            ("m7i-flex", AcceleratorKind::CpuAmd64, true),
            ("c7g", AcceleratorKind::CpuAmd64, false),
            ("g5", AcceleratorKind::Nvidia, true),
            ("g6e", AcceleratorKind::Nvidia, true),
            ("p4d", AcceleratorKind::Nvidia, true),
            ("g5g", AcceleratorKind::Nvidia, false),
            ("inf2", AcceleratorKind::Neuron, true),
            ("trn1n", AcceleratorKind::Neuron, true),
            ("g5", AcceleratorKind::Neuron, false),
            ("inf2", AcceleratorKind::CpuAmd64, false),
        ] {
            assert_eq!(family_mismatch(fam, kind).is_none(), ok, "{fam} {kind}");
        }
    }

    #[test]
    fn names_and_arns() {
        assert!(is_aws_region("us-west-2"));
        assert!(is_aws_region("us-gov-west-1"));
        assert!(!is_aws_region("uswest2"));
        assert!(is_arn(
            "arn:aws:iam::123456789012:role/keda-cloudwatch",
            "iam",
            "role/"
        ));
        assert!(!is_arn("arn:aws:iam::1234:role/x", "iam", "role/"));
        assert!(is_model_location("acme/sd15-onnx"));
        assert!(is_model_location("/models/sd15"));
        assert!(!is_model_location("acme"));
        assert!(!is_model_location("a/b/c"));
        assert!(is_image_repository(
            "123456789012.dkr.ecr.us-west-2.amazonaws.com/anyaccel"
        ));
        assert!(is_image_repository("localhost:5000/anyaccel"));
        assert!(!is_image_repository("anyaccel:1.0"));
    }
}
