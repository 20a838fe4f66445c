//! Choosing the execution provider: CUDA when its provider library and a GPU
//! are both present, else the CPU.

use std::path::Path;
use std::str::FromStr;

use anyaccel_executor::DeviceKind;

use crate::runtime;

/// What the operator asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!(
                "unknown device `{other}`; expected auto, cpu or cuda"
            )),
        }
    }
}

/// The device sessions will run on.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub kind: DeviceKind,
    pub name: String,
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device cuda was requested but {0}")]
    CudaUnavailable(String),
}

/// Why CUDA cannot be used here, or `None` if it can.
fn cuda_missing(library: &Path) -> Option<String> {
    let provider = library.with_file_name("libonnxruntime_providers_cuda.so");
    if !provider.is_file() {
        return Some(format!(
            "the ONNX Runtime at {} has no CUDA provider ({} is missing; install the onnxruntime-gpu library)",
            library.display(),
            provider.display()
        ));
    }
    if gpu_names().is_empty() && !Path::new("/dev/nvidia0").exists() {
        return Some(
            "no NVIDIA GPU is visible (no /dev/nvidia0 and no /proc/driver/nvidia/gpus)".into(),
        );
    }
    None
}

pub(crate) fn select(request: DeviceRequest) -> Result<Device, crate::OnnxError> {
    let library = runtime::ensure_loaded(None)?;
    let cuda_problem = cuda_missing(library);
    let kind = match (request, &cuda_problem) {
        (DeviceRequest::Cpu, _) => {
            tracing::info!("device: cpu (requested)");
            DeviceKind::Cpu
        }
        (DeviceRequest::Cuda, Some(why)) => {
            return Err(DeviceError::CudaUnavailable(why.clone()).into());
        }
        (DeviceRequest::Cuda, None) => {
            tracing::info!("device: cuda (requested)");
            DeviceKind::Cuda
        }
        (DeviceRequest::Auto, None) => {
            tracing::info!("device: cuda (auto: CUDA provider and a GPU are present)");
            DeviceKind::Cuda
        }
        (DeviceRequest::Auto, Some(why)) => {
            tracing::info!(reason = %why, "device: cpu (auto: CUDA unavailable)");
            DeviceKind::Cpu
        }
    };
    Ok(match kind {
        DeviceKind::Cuda => Device {
            kind,
            name: gpu_names()
                .into_iter()
                .next()
                .unwrap_or_else(|| "NVIDIA GPU".into()),
            memory_bytes: None,
        },
        _ => Device {
            kind: DeviceKind::Cpu,
            name: cpu_name(),
            memory_bytes: mem_total(),
        },
    })
}

fn gpu_names() -> Vec<String> {
    let Ok(dirs) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return Vec::new();
    };
    dirs.flatten()
        .filter_map(|d| std::fs::read_to_string(d.path().join("information")).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string()))
        })
        .collect()
}

fn cpu_name() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
        });
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!(
        "{} ({cores} threads)",
        name.unwrap_or_else(|| std::env::consts::ARCH.into())
    )
}

fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
