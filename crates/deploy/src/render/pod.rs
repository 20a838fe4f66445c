//! Pod pieces a pool's server Deployment and its compile Job share: the Job
//! runs on the pool's nodes as the same server, so it needs the same env,
//! resources and scratch volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, EnvVar, EnvVarSource, ResourceRequirements, SecretKeySelector, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::env;
use crate::config::{ClusterConfig, CompileTarget, Pool};

/// Where deploy/containers/Containerfile.cpu puts ONNX Runtime's OpenVINO build
/// (amd64 images only).
const OPENVINO_ORT_LIB: &str = "/opt/onnxruntime-openvino/lib/libonnxruntime.so";

/// Env that tells a server pod who it is, shared with the compile Job.
pub(super) fn identity_env(cfg: &ClusterConfig, pool: &Pool) -> Vec<EnvVar> {
    let mut e = vec![
        env(anyaccel_metrics::env::POOL, pool.name()),
        env(
            anyaccel_metrics::env::ACCELERATOR,
            pool.accelerator().as_str(),
        ),
        env(anyaccel_metrics::env::MODEL, cfg.artifact_of(pool).repo()),
        env(
            "ANYACCEL_DEVICE",
            pool.accelerator()
                .server_device(cfg.artifact_of(pool).target()),
        ),
        env("ANYACCEL_SIZES", sizes_env(pool.sizes())),
        // Hub downloads land on the model cache volume, not the read-only
        // root filesystem.
        env("HF_HOME", "/models/hf"),
    ];
    if cfg.artifact_of(pool).target() == CompileTarget::OnnxOpenVino {
        // The CPU image carries both ONNX Runtime builds; this one has OpenVINO.
        e.push(env("ORT_DYLIB_PATH", OPENVINO_ORT_LIB));
    }
    if let Some(secret) = cfg.hub_token_secret() {
        e.push(hub_token_env(secret, true));
    }
    e
}

pub(super) fn hub_token_env(secret: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: "HF_TOKEN".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: "token".into(),
                optional: Some(optional),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Requests and limits: memory limit = request (no surprise OOM kills from
/// overcommit), no CPU limit (throttling would stretch every request), the
/// device count as both, and the model cache as ephemeral storage so the
/// scheduler places pods where the cache fits.
pub(super) fn pool_resources(pool: &Pool) -> ResourceRequirements {
    let r = pool.resources();
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), Quantity(r.cpu.clone())),
        ("memory".to_string(), Quantity(r.memory.clone())),
        (
            "ephemeral-storage".to_string(),
            Quantity(pool.model_cache_size().to_string()),
        ),
    ]);
    let mut limits = BTreeMap::from([("memory".to_string(), Quantity(r.memory.clone()))]);
    if let Some(device) = pool.accelerator().device_resource() {
        requests.insert(device.into(), Quantity(r.devices.to_string()));
        limits.insert(device.into(), Quantity(r.devices.to_string()));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..Default::default()
    }
}

/// `/tmp` and `/models` volumes (the root filesystem is read-only).
pub(super) fn scratch_volumes(
    tmp_size: &str,
    model_cache_size: &str,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let empty_dir = |size: &str| EmptyDirVolumeSource {
        size_limit: Some(Quantity(size.into())),
        ..Default::default()
    };
    let volumes = vec![
        Volume {
            name: "tmp".into(),
            empty_dir: Some(empty_dir(tmp_size)),
            ..Default::default()
        },
        Volume {
            name: "models".into(),
            empty_dir: Some(empty_dir(model_cache_size)),
            ..Default::default()
        },
    ];
    let mounts = vec![
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "models".into(),
            mount_path: "/models".into(),
            ..Default::default()
        },
    ];
    (volumes, mounts)
}

/// `WxH,WxH` as `--sizes` / `ANYACCEL_SIZES` take them.
fn sizes_env(sizes: &[(u32, u32)]) -> String {
    sizes
        .iter()
        .map(|(w, h)| format!("{w}x{h}"))
        .collect::<Vec<_>>()
        .join(",")
}
