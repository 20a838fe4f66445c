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
    /// The GPU of this CUDA index (`cuda` is `cuda:0`).
    Cuda(u32),
    /// The CPU through OpenVINO (the onnxruntime-openvino build of the library),
    /// which has bf16 kernels where ONNX Runtime's own CPU kernels have none.
    OpenVino,
}

impl DeviceRequest {
    /// Every request, in the order choices are listed.
    pub const ALL: [DeviceRequest; 4] = [
        DeviceRequest::Auto,
        DeviceRequest::Cpu,
        DeviceRequest::Cuda(0),
        DeviceRequest::OpenVino,
    ];

    /// The `--device` name: a [`DeviceKind`]'s, or `auto` / `openvino`
    /// (without a GPU's index; [`fmt::Display`] adds it).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRequest::Auto => "auto",
            DeviceRequest::Cpu => DeviceKind::Cpu.as_str(),
            DeviceRequest::Cuda(_) => DeviceKind::Cuda.as_str(),
            DeviceRequest::OpenVino => "openvino",
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Cuda(index) if *index > 0 => write!(f, "cuda:{index}"),
            other => f.write_str(other.as_str()),
        }
    }
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(index) = s.strip_prefix("cuda:") {
            return index.parse().map(DeviceRequest::Cuda).map_err(|_| {
                format!("unknown device `{s}`; a GPU is cuda or cuda:N, N its index (0, 1, ...)")
            });
        }
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

/// How cuDNN picks a convolution algorithm for each new input shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvSearch {
    /// Times every algorithm once per shape: the fastest kernels, paid for at
    /// warm-up (every configured size runs once before the server is ready).
    #[default]
    Exhaustive,
    /// cuDNN's own guess, no timing.
    Heuristic,
    /// The default algorithm, no search at all.
    Default,
}

/// How ONNX Runtime's CUDA arena grows when it runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArenaStrategy {
    /// By what was asked for: UNet activations are large and few, and
    /// doubling would hold up to twice the memory they need.
    #[default]
    SameAsRequested,
    /// By powers of two (ONNX Runtime's own default): fewer, larger blocks.
    NextPowerOfTwo,
}

/// Settings of the CUDA execution provider (the GPU itself is chosen by
/// `--device cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaOptions {
    pub conv_search: ConvSearch,
    /// Lets cuDNN use as much workspace as its fastest algorithm wants.
    pub conv_max_workspace: bool,
    pub arena: ArenaStrategy,
    /// NHWC layouts for the convolutions the compile did not already fuse
    /// into NhwcConv (tensor cores prefer them); off by ONNX Runtime's default
    /// until the GPU check has measured it.
    pub prefer_nhwc: bool,
    /// Bytes the CUDA arena may hold; `None` for no limit.
    pub memory_limit: Option<u64>,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            conv_search: ConvSearch::Exhaustive,
            conv_max_workspace: true,
            arena: ArenaStrategy::SameAsRequested,
            prefer_nhwc: false,
            memory_limit: None,
        }
    }
}

impl FromStr for ConvSearch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exhaustive" => Ok(Self::Exhaustive),
            "heuristic" => Ok(Self::Heuristic),
            "default" => Ok(Self::Default),
            other => Err(format!(
                "unknown convolution search `{other}`; expected exhaustive, heuristic or default"
            )),
        }
    }
}

impl FromStr for ArenaStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "same-as-requested" => Ok(Self::SameAsRequested),
            "next-power-of-two" => Ok(Self::NextPowerOfTwo),
            other => Err(format!(
                "unknown arena strategy `{other}`; expected same-as-requested or next-power-of-two"
            )),
        }
    }
}

/// The execution provider sessions are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    Cpu,
    /// The GPU of this CUDA index.
    Cuda(u32),
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

/// Where a denoise session keeps its conditioning between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    Host,
    /// On the GPU of this CUDA index.
    Cuda(i32),
}

impl Device {
    pub fn kind(&self) -> DeviceKind {
        match self.provider {
            Provider::Cuda(_) => DeviceKind::Cuda,
            Provider::Cpu | Provider::OpenVino { .. } => DeviceKind::Cpu,
        }
    }

    pub fn placement(&self) -> Placement {
        match self.provider {
            Provider::Cuda(index) => Placement::Cuda(index as i32),
            Provider::Cpu | Provider::OpenVino { .. } => Placement::Host,
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
fn cuda_missing(library: &Path, index: u32) -> Option<String> {
    let provider = library.with_file_name("libonnxruntime_providers_cuda.so");
    if !provider.is_file() {
        return Some(format!(
            "the ONNX Runtime at {} has no CUDA provider ({} is missing; install the onnxruntime-gpu library)",
            library.display(),
            provider.display()
        ));
    }
    let gpus = gpu_names();
    if gpus.is_empty() && !Path::new("/dev/nvidia0").exists() {
        return Some(
            "no NVIDIA GPU is visible (no /dev/nvidia0 and no /proc/driver/nvidia/gpus)".into(),
        );
    }
    if let Some(why) = index_missing(index, gpus.len()) {
        return Some(why);
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
        DeviceRequest::Cuda(index) => match cuda_missing(library, index) {
            Some(why) => return Err(DeviceError::CudaUnavailable(why).into()),
            None => {
                tracing::info!(gpu = index, "device: cuda (requested)");
                Provider::Cuda(index)
            }
        },
        DeviceRequest::OpenVino => match openvino_missing(library) {
            Some(why) => return Err(DeviceError::OpenVinoUnavailable(why).into()),
            None => {
                tracing::info!("device: cpu through OpenVINO (requested)");
                openvino(precision)?
            }
        },
        DeviceRequest::Auto => match (cuda_missing(library, 0), openvino_missing(library)) {
            (None, _) => {
                tracing::info!("device: cuda (auto: CUDA provider and a GPU are present)");
                Provider::Cuda(0)
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
        Provider::Cuda(index) => Device {
            provider,
            name: gpu_names()
                .into_iter()
                .nth(index as usize)
                .unwrap_or_else(|| "NVIDIA GPU".into()),
            memory_bytes: crate::gpu_memory::read(index).map(|m| m.total),
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

/// Why GPU `index` is not among `visible`, where the count is known.
fn index_missing(index: u32, visible: usize) -> Option<String> {
    (visible > 0 && index as usize >= visible).then(|| {
        format!(
            "GPU {index} was asked for, but {visible} GPU{} visible (cuda:0{})",
            if visible == 1 { " is" } else { "s are" },
            if visible > 1 {
                format!(" to cuda:{}", visible - 1)
            } else {
                String::new()
            }
        )
    })
}

/// GPU models in PCI bus order, the order CUDA numbers identical GPUs in.
fn gpu_names() -> Vec<String> {
    let Ok(dirs) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return Vec::new();
    };
    let mut dirs: Vec<_> = dirs.flatten().map(|d| d.path()).collect();
    dirs.sort();
    dirs.into_iter()
        .filter_map(|d| std::fs::read_to_string(d.join("information")).ok())
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
        assert_eq!("cuda:1".parse(), Ok(DeviceRequest::Cuda(1)));
        assert_eq!("cuda:0".parse(), Ok(DeviceRequest::Cuda(0)));
        assert_eq!(DeviceRequest::Cuda(3).to_string(), "cuda:3");
        assert_eq!(DeviceRequest::Cuda(0).to_string(), "cuda");
        let err = "cuda:one".parse::<DeviceRequest>().unwrap_err();
        assert!(err.contains("cuda:N"), "{err}");
        assert_eq!("bf16".parse(), Ok(CpuPrecision::Bf16));
        assert_eq!("f32".parse(), Ok(CpuPrecision::F32));
        let err = "fp8".parse::<CpuPrecision>().unwrap_err();
        assert!(err.contains("auto, f32 or bf16"), "{err}");
    }

    #[test]
    fn a_gpu_index_past_the_visible_ones_names_the_valid_range() {
        assert_eq!(index_missing(0, 1), None);
        assert_eq!(index_missing(5, 0), None, "count unknown: CUDA decides");
        assert_eq!(
            index_missing(1, 1).as_deref(),
            Some("GPU 1 was asked for, but 1 GPU is visible (cuda:0)")
        );
        assert_eq!(
            index_missing(4, 4).as_deref(),
            Some("GPU 4 was asked for, but 4 GPUs are visible (cuda:0 to cuda:3)")
        );
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
