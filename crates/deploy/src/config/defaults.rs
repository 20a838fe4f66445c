//! Defaults that depend on the accelerator kind, and the images and AMI a
//! config gets when it names none.

use super::{AcceleratorKind, CompileTarget};

/// Karpenter's default AMI alias: the AL2023 EKS-optimized AMI, whose NVIDIA
/// and Neuron variants Karpenter picks per instance type. Pin a version in
/// production (`al2023@v20250101`) so node images change only on purpose.
pub const DEFAULT_AMI_ALIAS: &str = "al2023@latest";
pub const DEFAULT_NVIDIA_PLUGIN_IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.17.1";
pub const DEFAULT_NEURON_PLUGIN_IMAGE: &str =
    "public.ecr.aws/neuron/neuron-device-plugin:2.24.23.0";

/// Defaults that depend on the hardware. The numbers are starting points
/// for Stable Diffusion 1.5/2.x at 512px; `anyaccel bench` says better.
pub(super) struct KindDefaults {
    pub(super) cpu: &'static str,
    pub(super) memory: &'static str,
    pub(super) devices: u32,
    /// Longest request the pool should finish while draining. CPU images
    /// take tens of seconds each; accelerators a few seconds.
    pub(super) drain_timeout_secs: u32,
    /// Model download + load + warm-up. Neuron loads compiled graphs onto
    /// the device, which is the slowest.
    pub(super) startup_timeout_secs: u32,
    /// Accelerator replicas cost minutes to bring back (node launch, image
    /// pull, model load), so they are held longer after a burst.
    pub(super) scale_down_window_secs: u32,
    /// Root EBS volume: the CUDA and Neuron images are several GB, and
    /// image layers plus the model cache (emptyDir) live there.
    pub(super) root_volume_gib: u32,
    pub(super) model_cache_size: &'static str,
}

pub(super) fn kind_defaults(kind: AcceleratorKind) -> KindDefaults {
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

/// The servers' `--max-batch` default (`anyaccel_batcher::BatcherConfig::
/// default().max_batch_images`), which the Deployments leave as it is.
/// Written out because deploy does not depend on the batcher; change both
/// together.
const SERVER_MAX_BATCH_IMAGES: u32 = 4;

/// Default `target_redis_jobs`: one batch per replica, so the pool grows
/// once its replicas are all running a full batch and jobs still wait.
/// Neuron artifacts run one compiled batch size (the compile Job's default,
/// 1) and take a larger batch as that many passes, so their batch is 1.
pub(super) fn default_redis_jobs(target: CompileTarget) -> u32 {
    match target {
        CompileTarget::Neuron => 1,
        _ => SERVER_MAX_BATCH_IMAGES,
    }
}
