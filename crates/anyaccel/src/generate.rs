//! `anyaccel generate`: the pipeline from the command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyaccel_executor::Executor;
use anyaccel_executor_onnx::{
    ArenaStrategy, Binding, ConvSearch, CpuPrecision, CudaOptions, DeviceRequest, OnnxConfig,
    OnnxExecutor, Optimization,
};
use anyaccel_executor_remote::{RemoteConfig, RemoteExecutor, SidecarDevice, TorchCompile};
use anyaccel_pipeline::images::{self, OutputFormat};
use anyaccel_pipeline::memory::{self, MemoryBudget};
use anyaccel_pipeline::{Defaults, GenerationParams, Limits, MicroParams, Model, Pipeline};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

/// Which executor runs the model components.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    /// ONNX Runtime in-process (CPU, CUDA).
    Onnx,
    /// The Python sidecar over gRPC (Neuron, torch CPU/CUDA).
    Remote,
}

/// `--device`: every executor's choices. The names are the executors' own
/// ([`DeviceRequest`], [`SidecarDevice`], which build on `DeviceKind`'s);
/// `cuda:N` picks the GPU of CUDA index N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda(u32),
    /// The CPU through OpenVINO (ONNX executor only).
    Openvino,
    /// Remote executor only.
    Neuron,
}

impl Device {
    const ALL: [Device; 5] = [
        Device::Auto,
        Device::Cpu,
        Device::Cuda(0),
        Device::Openvino,
        Device::Neuron,
    ];

    /// What the ONNX executor is asked for, or why it cannot run this device.
    fn onnx(self) -> Result<DeviceRequest, &'static str> {
        match self {
            Device::Auto => Ok(DeviceRequest::Auto),
            Device::Cpu => Ok(DeviceRequest::Cpu),
            Device::Cuda(index) => Ok(DeviceRequest::Cuda(index)),
            Device::Openvino => Ok(DeviceRequest::OpenVino),
            Device::Neuron => {
                Err("--device neuron needs --executor remote (Neuron runs in the Python sidecar)")
            }
        }
    }

    /// What the sidecar is asked for, or why it cannot run this device.
    fn sidecar(self) -> Result<SidecarDevice, &'static str> {
        match self {
            Device::Auto => Ok(SidecarDevice::Auto),
            Device::Cpu => Ok(SidecarDevice::Cpu),
            Device::Cuda(_) => Ok(SidecarDevice::Cuda),
            Device::Neuron => Ok(SidecarDevice::Neuron),
            Device::Openvino => {
                Err("--device openvino needs --executor onnx (OpenVINO runs inside ONNX Runtime)")
            }
        }
    }

    fn name(self) -> &'static str {
        match (self.onnx(), self.sidecar()) {
            (Ok(d), _) => d.as_str(),
            (_, Ok(d)) => d.as_str(),
            (Err(why), Err(_)) => unreachable!("no executor runs it: {why}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(index) = s.strip_prefix("cuda:") {
            return index.parse().map(Device::Cuda).map_err(|_| {
                format!("`{s}`: a GPU is cuda or cuda:N, with N its CUDA index (0, 1, ...)")
            });
        }
        Self::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown device `{s}`; expected {} (or cuda:N for GPU N)",
                    anyaccel_executor::list_choices(Self::ALL.map(Self::name))
                )
            })
    }
}

/// The CUDA execution provider's settings (ONNX executor, `--device cuda`).
#[derive(Args, Debug, Clone)]
pub struct CudaArgs {
    /// cuDNN's convolution algorithm search: exhaustive (time every
    /// algorithm once per shape, paid at warm-up), heuristic or default.
    #[arg(long, default_value = "exhaustive", env = "ANYACCEL_CUDA_CONV_SEARCH")]
    pub cuda_conv_search: ConvSearch,
    /// Let cuDNN use as much workspace memory as its fastest algorithm wants.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "ANYACCEL_CUDA_CONV_MAX_WORKSPACE")]
    pub cuda_conv_max_workspace: bool,
    /// How the CUDA memory arena grows: same-as-requested (holds no more than
    /// the activations need) or next-power-of-two (ONNX Runtime's default).
    #[arg(long, default_value = "same-as-requested", env = "ANYACCEL_CUDA_ARENA")]
    pub cuda_arena: ArenaStrategy,
    /// NHWC layouts for convolutions on the GPU.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, env = "ANYACCEL_CUDA_PREFER_NHWC")]
    pub cuda_prefer_nhwc: bool,
    /// Most memory the CUDA arena may hold (e.g. 20GiB); default: no limit.
    #[arg(long, value_parser = parse_bytes, env = "ANYACCEL_CUDA_MEMORY_LIMIT")]
    pub cuda_memory_limit: Option<u64>,
    /// Bind a batch's text conditioning to the denoiser once (kept on the GPU
    /// with CUDA) instead of handing it over every step; false only to compare.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "ANYACCEL_IO_BINDING")]
    pub io_binding: bool,
    /// Capture the denoiser's step as a CUDA graph for up to N input shapes
    /// (rows × size × prompt length) and replay it; 0 (the default) captures
    /// none. Each captured shape keeps its activation memory.
    #[arg(
        long,
        default_value_t = 0,
        env = "ANYACCEL_CUDA_GRAPHS",
        value_name = "N"
    )]
    pub cuda_graphs: usize,
}

impl CudaArgs {
    /// `--io-binding` and `--cuda-graphs` together.
    fn binding(&self) -> anyhow::Result<Binding> {
        match (self.io_binding, self.cuda_graphs) {
            (false, 0) => Ok(Binding::PerStep),
            (false, _) => bail!(
                "--cuda-graphs needs --io-binding true: a captured graph reads its inputs from bound buffers"
            ),
            (true, 0) => Ok(Binding::Conditioning),
            (true, n) => Ok(Binding::CudaGraphs { max_shapes: n }),
        }
    }

    fn options(&self) -> CudaOptions {
        CudaOptions {
            conv_search: self.cuda_conv_search,
            conv_max_workspace: self.cuda_conv_max_workspace,
            arena: self.cuda_arena,
            prefer_nhwc: self.cuda_prefer_nhwc,
            memory_limit: self.cuda_memory_limit,
        }
    }
}

/// OpenVINO's arithmetic on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// bf16 where the CPU has bf16 instructions (AVX512_BF16 or AMX), else f32.
    Auto,
    F32,
    Bf16,
}

/// Options shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder (optimum ONNX layout; diffusers or optimum-neuron layout for
    /// the remote executor) or Hugging Face Hub repo id.
    #[arg(long, env = "ANYACCEL_MODEL")]
    pub model: String,
    #[arg(long, value_enum, default_value = "onnx", env = "ANYACCEL_EXECUTOR")]
    pub executor: ExecutorKind,
    /// Where to run: auto, cpu, cuda (or cuda:N, the GPU of CUDA index N),
    /// openvino (the CPU through OpenVINO; needs scripts/fetch-onnxruntime.sh
    /// openvino) or neuron (remote executor). auto picks CUDA when its provider
    /// and a GPU are present, OpenVINO when the ONNX Runtime loaded is its
    /// OpenVINO build (and Neuron, with the remote executor, when its SDK and
    /// devices are).
    #[arg(long, default_value = "auto", env = "ANYACCEL_DEVICE")]
    pub device: Device,
    #[command(flatten)]
    pub cuda: CudaArgs,
    /// Python of the sidecar's environment (remote executor).
    #[arg(long, default_value = ".venv/bin/python", env = "ANYACCEL_PYTHON")]
    pub python: PathBuf,
    /// The torch sidecar's precision (remote executor): fp32, fp16 or bf16;
    /// default fp16 on CUDA, fp32 on the CPU.
    #[arg(long, value_parser = ["fp32", "fp16", "bf16"], env = "ANYACCEL_SIDECAR_DTYPE")]
    pub sidecar_dtype: Option<String>,
    /// torch.compile the torch sidecar's denoiser (remote executor): off,
    /// default, reduce-overhead (CUDA graphs) or max-autotune. Each size and
    /// batch compiles on its first call; the warm-up pays it for --sizes.
    #[arg(long, default_value = "off", env = "ANYACCEL_SIDECAR_COMPILE")]
    pub sidecar_compile: TorchCompile,
    /// Threads per operator (default: all cores).
    #[arg(long, env = "ANYACCEL_THREADS")]
    pub threads: Option<usize>,
    /// Threads running independent operators (default: 1, sequential graph).
    #[arg(long, env = "ANYACCEL_INTER_THREADS")]
    pub inter_threads: Option<usize>,
    /// ONNX Runtime graph optimisation: disable, basic, extended, all.
    #[arg(long, default_value = "all", env = "ANYACCEL_OPTIMIZATION")]
    pub optimization: Optimization,
    /// Path of libonnxruntime.so (else $ORT_DYLIB_PATH, else .cache/onnxruntime/lib,
    /// or .cache/onnxruntime-openvino/lib with --device openvino).
    #[arg(long, env = "ANYACCEL_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// A tiny VAE decoder (TAESD-style ONNX: `latent_sample` in, `sample` in
    /// [-1, 1] out) for previews, as its model.onnx or the folder holding it
    /// (with a config.json giving scaling_factor, else 1). Default: the model
    /// folder's preview_decoder/ if it has one, else the latent-to-RGB map.
    #[arg(long, env = "ANYACCEL_PREVIEW_DECODER", value_name = "PATH")]
    pub preview_decoder: Option<PathBuf>,
    /// OpenVINO's arithmetic (--device openvino): bf16 roughly halves the UNet's
    /// time on AVX512_BF16 CPUs and moves pixels slightly.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "ANYACCEL_CPU_PRECISION"
    )]
    pub cpu_precision: Precision,
    /// Memory the model may use (e.g. 24GiB, 512MiB); default: what the host
    /// has free (MemAvailable, or the container's limit). The weights plus the
    /// activations of the largest size at --max-batch must fit, or the model is
    /// refused at load with what would fit. `off` skips the check.
    #[arg(long, value_parser = parse_memory, env = "ANYACCEL_MEMORY_LIMIT")]
    pub memory_limit: Option<MemoryLimit>,
    /// T5's prompt length in tokens (SD3, Flux; default 256 for SD3, 512 for
    /// Flux, at most the tokenizer's).
    #[arg(long, env = "ANYACCEL_MAX_SEQUENCE_LENGTH")]
    pub max_sequence_length: Option<usize>,
    /// Steps when a request names none (default: the family's, as diffusers:
    /// 25 for SD/SDXL, 28 for SD3 and FLUX.1-dev, 4 for FLUX.1-schnell).
    #[arg(long, env = "ANYACCEL_DEFAULT_STEPS")]
    pub default_steps: Option<u32>,
    /// Guidance scale when a request names none (default: 7.5 SD/SDXL, 7.0 SD3,
    /// 3.5 FLUX.1-dev's distilled guidance, 0 schnell).
    #[arg(long, env = "ANYACCEL_DEFAULT_GUIDANCE_SCALE")]
    pub default_guidance_scale: Option<f32>,
}

/// `--memory-limit`: a size, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLimit {
    Bytes(u64),
    Off,
}

fn parse_memory(s: &str) -> Result<MemoryLimit, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(MemoryLimit::Off);
    }
    parse_bytes(s)
        .map(MemoryLimit::Bytes)
        .map_err(|_| format!("`{s}` is not a memory size (e.g. 24GiB, 512MiB) or `off`"))
}

/// A byte size with an optional unit: `24GiB`, `512MiB`, `1.5GB`, `4096`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let units: [(&str, u64); 7] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("B", 1),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.trim(), *m)))
        .unwrap_or((t, 1));
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| (v * mult as f64) as u64)
        .ok_or_else(|| format!("`{s}` is not a memory size (e.g. 24GiB, 512MiB)"))
}

/// What the model is loaded to serve: the memory preflight checks the
/// largest size at the largest batch.
pub struct LoadPlan<'a> {
    pub limits: Limits,
    /// Sizes to serve; empty = the family's defaults.
    pub sizes: &'a [(u32, u32)],
    pub max_batch: usize,
}

impl ModelArgs {
    /// Loads the model folder and its executor, after checking it fits.
    /// Returns the pipeline and the sizes it serves.
    pub fn load(&self, plan: LoadPlan<'_>) -> anyhow::Result<(Pipeline, Vec<(u32, u32)>)> {
        let model =
            Model::open(&self.model).with_context(|| format!("loading model {}", self.model))?;
        let info = &model.info;
        let sizes = if plan.sizes.is_empty() {
            info.family.default_sizes(info.native_size)
        } else {
            plan.sizes.to_vec()
        };
        let mut defaults = Defaults::for_model(info);
        defaults.max_sequence_length = self.max_sequence_length;
        if let Some(v) = self.default_steps {
            defaults.steps = v;
        }
        if let Some(v) = self.default_guidance_scale {
            defaults.guidance_scale = v;
        }
        let available = match self.memory_limit {
            Some(MemoryLimit::Off) => None,
            Some(MemoryLimit::Bytes(b)) => Some((b, "--memory-limit")),
            // A GPU's memory is not the host's; only --memory-limit checks it.
            None if matches!(self.device, Device::Cuda(_)) => None,
            None => memory::host_available(),
        };
        let budget = match available {
            Some(available) => {
                let b = MemoryBudget::preflight(
                    info,
                    &model.components(),
                    &sizes,
                    plan.max_batch,
                    available,
                )?;
                tracing::info!(
                    weights_mib = b.weights_bytes >> 20,
                    available_mib = b.available_bytes >> 20,
                    from = b.source,
                    "memory preflight passed"
                );
                Some(b)
            }
            None => None,
        };
        let limits = plan.limits;
        let executor: Arc<dyn Executor> = match self.executor {
            ExecutorKind::Onnx => {
                if self.sidecar_dtype.is_some() || self.sidecar_compile != TorchCompile::Off {
                    bail!(
                        "--sidecar-dtype and --sidecar-compile need --executor remote (they set the torch sidecar)"
                    );
                }
                let device = self.device.onnx().map_err(anyhow::Error::msg)?;
                let config = OnnxConfig {
                    device,
                    intra_threads: self.threads,
                    inter_threads: self.inter_threads,
                    library: self.ort_lib.clone(),
                    preview_decoder: self.preview_decoder.clone(),
                    binding: self.cuda.binding()?,
                    cuda: self.cuda.options(),
                    optimization: self.optimization,
                    cpu_precision: match self.cpu_precision {
                        Precision::Auto => CpuPrecision::Auto,
                        Precision::F32 => CpuPrecision::F32,
                        Precision::Bf16 => CpuPrecision::Bf16,
                    },
                    ..OnnxConfig::default()
                };
                Arc::new(OnnxExecutor::load(
                    &model.info.root,
                    &model.components(),
                    &config,
                )?)
            }
            ExecutorKind::Remote => {
                if self.preview_decoder.is_some() {
                    anyhow::bail!(
                        "--preview-decoder needs --executor onnx; the sidecar previews with the latent-to-RGB map"
                    );
                }
                let mut config =
                    RemoteConfig::new(&self.python, model.info.root.display().to_string());
                config.device = self.device.sidecar().map_err(anyhow::Error::msg)?;
                if let Device::Cuda(index) = self.device {
                    // torch numbers the GPUs it sees from 0.
                    config
                        .env
                        .push(("CUDA_VISIBLE_DEVICES".into(), index.to_string()));
                }
                config.threads = self.threads;
                config.dtype = self.sidecar_dtype.clone();
                config.compile = self.sidecar_compile;
                // From a checkout, the sidecar package is the repo's python/ folder.
                let local = PathBuf::from("python");
                if local.join("anyaccel_sidecar").is_dir() {
                    config.python_path = Some(local);
                }
                Arc::new(RemoteExecutor::spawn(config)?)
            }
        };
        Ok((
            Pipeline::new(executor, model, limits, defaults).with_memory(budget),
            sizes,
        ))
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub c2pa: anyaccel_provenance::C2paArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale; 1 or less turns guidance off (Turbo models).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Seed of the first image; image i uses seed + i. Random if absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output size WxH (default: the model's native size, or the init image's).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(u32, u32)>,
    /// euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras or lcm (default: the model's).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Source image for img2img (PNG, JPEG or WebP).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// How far img2img moves from the init image, in (0, 1].
    #[arg(long)]
    pub strength: Option<f32>,
    /// SDXL micro-conditioning: the size WxH the image is said to come from
    /// (default: the output size).
    #[arg(long, value_parser = parse_size)]
    pub original_size: Option<(u32, u32)>,
    /// SDXL micro-conditioning: the crop's top,left (default: 0,0).
    #[arg(long, value_parser = parse_crop)]
    pub crop_top_left: Option<(u32, u32)>,
    /// SDXL micro-conditioning: the target size WxH (default: the output size).
    #[arg(long, value_parser = parse_size)]
    pub target_size: Option<(u32, u32)>,
    /// Number of images.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub n: u32,
    #[arg(long, default_value = "png")]
    pub format: OutputFormat,
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

fn parse_crop(s: &str) -> Result<(u32, u32), String> {
    s.split_once(',')
        .and_then(|(t, l)| Some((t.trim().parse().ok()?, l.trim().parse().ok()?)))
        .ok_or_else(|| format!("`{s}` is not TOP,LEFT (e.g. 0,0)"))
}

pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size `{s}` must look like 512x512"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("size `{s}` must look like 512x512"))
    };
    Ok((parse(w)?, parse(h)?))
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let signer = anyaccel_provenance::Signer::from_args(&args.c2pa)?;
    let limits = Limits {
        max_images: args.n.max(Limits::default().max_images),
        ..Limits::default()
    };
    let sizes: Vec<(u32, u32)> = args.size.into_iter().collect();
    let (pipeline, _) = args.model.load(LoadPlan {
        limits,
        sizes: &sizes,
        max_batch: args.n as usize,
    })?;
    let init_image = match &args.init_image {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(
                images::decode(&bytes, 4096 * 4096)
                    .with_context(|| format!("decoding {}", path.display()))?,
            )
        }
        None => None,
    };
    if init_image.is_none() && args.strength.is_some() {
        bail!("--strength needs --init-image");
    }
    let request = pipeline
        .validate(GenerationParams {
            prompt: args.prompt.clone(),
            negative_prompt: args.negative_prompt.clone(),
            width: args.size.map(|s| s.0),
            height: args.size.map(|s| s.1),
            steps: args.steps,
            guidance_scale: args.guidance,
            scheduler: args.scheduler.clone(),
            seed: args.seed,
            n: Some(args.n),
            init_image,
            strength: args.strength,
            micro: MicroParams {
                original_size: args.original_size,
                crop_top_left: args.crop_top_left,
                target_size: args.target_size,
            },
        })
        .map_err(|e| anyhow::anyhow!("invalid --{}: {}", e.field.replace('_', "-"), e.message))?;
    tracing::info!(%request, "generating");
    let started = std::time::Instant::now();
    let images = pipeline.generate(&request)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (i, img) in images.iter().enumerate() {
        let text = anyaccel_server::infotext(&pipeline, &request, img.seed);
        let mut bytes = images::encode(&img.image, args.format, None, &text)?;
        if let Some(s) = &signer {
            bytes =
                anyaccel_server::sign_image(s, &bytes, args.format, &pipeline, &request, img.seed)?;
        }
        let path = args
            .out
            .join(format!("{i:03}-{}.{}", img.seed, args.format.extension()));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        images = images.len(),
        "done"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_are_the_executors_names() {
        let names: Vec<&str> = Device::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names, ["auto", "cpu", "cuda", "openvino", "neuron"]);
        for d in Device::ALL {
            // Where both executors take a device, they spell it the same.
            if let (Ok(onnx), Ok(sidecar)) = (d.onnx(), d.sidecar()) {
                assert_eq!(onnx.as_str(), sidecar.as_str());
            }
            assert_eq!(d.name().parse(), Ok(d));
        }
        assert_eq!("cuda:2".parse(), Ok(Device::Cuda(2)));
        let err = "cuda:x".parse::<Device>().unwrap_err();
        assert!(err.contains("cuda:N"), "{err}");
        let err = "tpu".parse::<Device>().unwrap_err();
        assert!(err.contains("auto, cpu, cuda, openvino or neuron"), "{err}");
    }

    #[test]
    fn deployments_set_devices_the_server_takes() {
        use anyaccel_deploy::{AcceleratorKind, CompileTarget};
        for accel in AcceleratorKind::ALL {
            for target in CompileTarget::ALL.into_iter().filter(|&t| accel.can_run(t)) {
                let device = accel.server_device(target);
                assert!(
                    device.parse::<Device>().is_ok(),
                    "{accel} serving {target}: ANYACCEL_DEVICE={device}"
                );
            }
        }
    }
}
