//! Choosing the execution provider: CUDA when its provider library and a GPU
//! are both present, OpenVINO when the loaded ONNX Runtime is the OpenVINO
//! build, else ONNX Runtime's own CPU kernels.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyaccel_executor::{DeviceKind, list_choices};

use crate::runtime;

/// What the operator asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    #[default]
    Auto,
    Cpu,
    Cuda,
    /// The CPU through OpenVINO (the onnxruntime-openvino build of the library),
    /// which has bf16 kernels where ONNX Runtime's own CPU kernels have none.
    OpenVino,
}

impl DeviceRequest {
    /// Every request, in the order choices are listed.
    pub const ALL: [DeviceRequest; 4] = [
        DeviceRequest::Auto,
        DeviceRequest::Cpu,
        DeviceRequest::Cuda,
        DeviceRequest::OpenVino,
    ];

    /// The `--device` spelling: a [`DeviceKind`]'s name, or `auto` / `openvino`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRequest::Auto => "auto",
            DeviceRequest::Cpu => DeviceKind::Cpu.as_str(),
            DeviceRequest::Cuda => DeviceKind::Cuda.as_str(),
            DeviceRequest::OpenVino => "openvino",
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown device `{s}`; expected {}",
                    list_choices(Self::ALL.map(Self::as_str))
                )
            })
    }
}

/// Arithmetic OpenVINO runs the CPU in (its inference precision hint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuPrecision {
    /// bf16 where the CPU has bf16 instructions (AVX512_BF16 or AMX), else f32.
    #[default]
    Auto,
    F32,
    /// Halves the UNet's and VAE's time on AVX512_BF16 CPUs; changes pixels
    /// slightly (docs/benchmarks.md measures by how much).
    Bf16,
}

impl FromStr for CpuPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown precision `{other}`; expected auto, f32 or bf16"
            )),
        }
    }
}

/// The execution provider sessions are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    Cpu,
    Cuda,
    /// OpenVINO on the CPU; `bf16` once resolved against the CPU's flags.
    OpenVino {
        bf16: bool,
    },
}

/// The device sessions will run on.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub provider: Provider,
    pub name: String,
    pub memory_bytes: Option<u64>,
}

impl Device {
    pub fn kind(&self) -> DeviceKind {
        match self.provider {
            Provider::Cuda => DeviceKind::Cuda,
            Provider::Cpu | Provider::OpenVino { .. } => DeviceKind::Cpu,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device cuda was requested but {0}")]
    CudaUnavailable(String),
    #[error("--device openvino was requested but {0}")]
    OpenVinoUnavailable(String),
    #[error(
        "bf16 was requested but this CPU has no bf16 instructions (neither avx512_bf16 nor \
         amx_bf16 in /proc/cpuinfo); use f32 or auto"
    )]
    NoBf16,
    #[error(
        "bf16 on the CPU runs through OpenVINO only (ONNX Runtime's own CPU kernels have no \
         bf16 on x86); use --device openvino, or precision auto/f32"
    )]
    Bf16NeedsOpenVino,
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
    // The provider loads its CUDA libraries when the first session asks for
    // it; loading them now (from the wheels if need be) turns a bare loader
    // error later into a list of what is missing now.
    #[cfg(target_os = "linux")]
    {
        let dirs = crate::cuda_libs::search_dirs();
        if let Err(missing) = crate::cuda_libs::preload(&provider, &dirs) {
            return Some(crate::cuda_libs::missing_message(&missing, &dirs));
        }
    }
    None
}

/// Why OpenVINO cannot be used with this library, or `None` if it can.
fn openvino_missing(library: &Path) -> Option<String> {
    let provider = library.with_file_name("libonnxruntime_providers_openvino.so");
    (!provider.is_file()).then(|| {
        format!(
            "the ONNX Runtime at {} is not the OpenVINO build ({} is missing; run \
             scripts/fetch-onnxruntime.sh openvino, or point --ort-lib / ORT_DYLIB_PATH at \
             .cache/onnxruntime-openvino/lib/libonnxruntime.so)",
            library.display(),
            provider.display()
        )
    })
}

/// Whether the CPU has native bf16 arithmetic, from /proc/cpuinfo's flags.
pub(crate) fn cpu_has_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("flags"))
            .is_some_and(|flags| {
                flags
                    .split_whitespace()
                    .any(|f| f == "avx512_bf16" || f == "amx_bf16")
            })
    })
}

fn openvino(precision: CpuPrecision) -> Result<Provider, DeviceError> {
    let bf16 = match precision {
        CpuPrecision::Auto => cpu_has_bf16(),
        CpuPrecision::F32 => false,
        CpuPrecision::Bf16 if cpu_has_bf16() => true,
        CpuPrecision::Bf16 => return Err(DeviceError::NoBf16),
    };
    Ok(Provider::OpenVino { bf16 })
}

pub(crate) fn select(
    request: DeviceRequest,
    precision: CpuPrecision,
) -> Result<Device, crate::OnnxError> {
    let library = runtime::ensure_loaded(None, request)?;
    let provider = match request {
        DeviceRequest::Cpu => {
            tracing::info!("device: cpu (requested)");
            Provider::Cpu
        }
        DeviceRequest::Cuda => match cuda_missing(library) {
            Some(why) => return Err(DeviceError::CudaUnavailable(why).into()),
            None => {
                tracing::info!("device: cuda (requested)");
                Provider::Cuda
            }
        },
        DeviceRequest::OpenVino => match openvino_missing(library) {
            Some(why) => return Err(DeviceError::OpenVinoUnavailable(why).into()),
            None => {
                tracing::info!("device: cpu through OpenVINO (requested)");
                openvino(precision)?
            }
        },
        DeviceRequest::Auto => match (cuda_missing(library), openvino_missing(library)) {
            (None, _) => {
                tracing::info!("device: cuda (auto: CUDA provider and a GPU are present)");
                Provider::Cuda
            }
            (Some(_), None) => {
                tracing::info!("device: cpu through OpenVINO (auto: the OpenVINO build is loaded)");
                openvino(precision)?
            }
            (Some(why), Some(_)) => {
                tracing::info!(reason = %why, "device: cpu (auto: CUDA unavailable)");
                Provider::Cpu
            }
        },
    };
    if precision == CpuPrecision::Bf16 && !matches!(provider, Provider::OpenVino { .. }) {
        return Err(DeviceError::Bf16NeedsOpenVino.into());
    }
    Ok(match provider {
        Provider::Cuda => Device {
            provider,
            name: gpu_names()
                .into_iter()
                .next()
                .unwrap_or_else(|| "NVIDIA GPU".into()),
            memory_bytes: None,
        },
        Provider::Cpu => Device {
            provider,
            name: cpu_name(),
            memory_bytes: mem_total(),
        },
        Provider::OpenVino { bf16 } => Device {
            provider,
            name: format!(
                "{}, OpenVINO {}",
                cpu_name(),
                if bf16 { "bf16" } else { "f32" }
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_precision_names_parse_and_bad_ones_list_the_choices() {
        assert_eq!("openvino".parse(), Ok(DeviceRequest::OpenVino));
        assert_eq!("cpu".parse(), Ok(DeviceRequest::Cpu));
        let err = "tpu".parse::<DeviceRequest>().unwrap_err();
        assert_eq!(
            err,
            "unknown device `tpu`; expected auto, cpu, cuda or openvino"
        );
        for d in DeviceRequest::ALL {
            assert_eq!(d.as_str().parse(), Ok(d));
        }
        assert_eq!("bf16".parse(), Ok(CpuPrecision::Bf16));
        assert_eq!("f32".parse(), Ok(CpuPrecision::F32));
        let err = "fp8".parse::<CpuPrecision>().unwrap_err();
        assert!(err.contains("auto, f32 or bf16"), "{err}");
    }

    #[test]
    fn a_library_without_the_openvino_provider_is_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("anyaccel-ov-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libonnxruntime.so");
        let why = openvino_missing(&lib).expect("no provider beside it");
        assert!(why.contains("fetch-onnxruntime.sh openvino"), "{why}");
        std::fs::write(dir.join("libonnxruntime_providers_openvino.so"), b"").unwrap();
        assert_eq!(openvino_missing(&lib), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn f32_never_needs_bf16_hardware_and_bf16_does() {
        assert_eq!(
            openvino(CpuPrecision::F32).unwrap(),
            Provider::OpenVino { bf16: false }
        );
        match openvino(CpuPrecision::Bf16) {
            Ok(p) => assert!(cpu_has_bf16() && p == Provider::OpenVino { bf16: true }),
            Err(e) => assert!(!cpu_has_bf16() && matches!(e, DeviceError::NoBf16)),
        }
    }
}
