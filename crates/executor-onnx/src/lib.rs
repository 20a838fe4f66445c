//! ONNX Runtime executor: runs the optimum ONNX Stable Diffusion layout
//! in-process, on the CUDA execution provider where a GPU is present and on
//! the CPU elsewhere, either with ONNX Runtime's own kernels or through
//! OpenVINO (bf16 on CPUs that have it).
//!
//! The ONNX Runtime shared library is loaded at run time (`ort`'s
//! `load-dynamic`), so one binary runs with the CPU, CUDA or OpenVINO build of it.

mod bound;
#[cfg(target_os = "linux")]
mod cuda_libs;
mod device;
#[cfg(target_os = "linux")]
mod gpu_memory;
mod graphed;
#[cfg(not(target_os = "linux"))]
mod gpu_memory {
    pub(crate) struct GpuMemory {
        pub total: u64,
        pub used: u64,
    }
    pub(crate) fn read(_index: u32) -> Option<GpuMemory> {
        None
    }
}
mod mapped;
mod runtime;
mod session;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use std::collections::BTreeMap;

use anyaccel_executor::{
    Capabilities, Component, Conditioning, DenoiseSession, DeviceKind, DeviceMemory, Dtype,
    Executor, ExecutorError, HiddenLayer, HostSession, Shapes, Tensor, TextEncoding, TokenIds,
};

pub use device::{
    ArenaStrategy, ConvSearch, CpuPrecision, CudaOptions, DeviceError, DeviceRequest,
};
pub use runtime::{RuntimeError, library_path};

use session::ComponentSession;

/// How to build the executor.
#[derive(Debug, Clone)]
pub struct OnnxConfig {
    pub device: DeviceRequest,
    /// Threads one operator may use; `None` lets ONNX Runtime use all cores.
    pub intra_threads: Option<usize>,
    /// Threads running independent operators in parallel; 1 keeps the graph sequential.
    pub inter_threads: Option<usize>,
    /// Explicit path of `libonnxruntime.so`; else `ORT_DYLIB_PATH`, else the repo cache.
    pub library: Option<PathBuf>,
    pub optimization: Optimization,
    /// ONNX Runtime's CPU memory arena: keeps freed activation buffers for the next
    /// step. Without it every run maps and faults in its large buffers again
    /// (up to 1.5x slower on the CPU, measured in docs/benchmarks.md).
    pub memory_arena: bool,
    /// ONNX Runtime's memory pattern: one block sized from the first run's plan.
    /// Off, buffers come from the arena as needed, which on the CPU kept the same
    /// speed with 1 GB less peak memory at 512x512 (docs/benchmarks.md).
    pub memory_pattern: bool,
    /// Pack weights once at load for the CPU kernels; off, they are packed on
    /// every run (same UNet speed on SD 1.5, slower text encoder, no lower peak).
    pub prepacking: bool,
    /// OpenVINO's arithmetic (`--device openvino` only).
    pub cpu_precision: CpuPrecision,
    /// A tiny VAE decoder (TAESD-style) for previews: its `model.onnx`, or the
    /// folder holding it. `None` uses the model folder's `preview_decoder/`
    /// when there is one.
    pub preview_decoder: Option<PathBuf>,
    /// How the denoiser's inputs reach it each step.
    pub binding: Binding,
    /// The CUDA execution provider's settings (`--device cuda` only).
    pub cuda: CudaOptions,
}

impl Default for OnnxConfig {
    fn default() -> Self {
        Self {
            device: DeviceRequest::Auto,
            intra_threads: None,
            inter_threads: None,
            library: None,
            optimization: Optimization::All,
            memory_arena: true,
            memory_pattern: false,
            prepacking: true,
            cpu_precision: CpuPrecision::Auto,
            preview_decoder: None,
            binding: Binding::Conditioning,
            cuda: CudaOptions::default(),
        }
    }
}

/// How the denoiser's inputs reach it each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Every input is handed over with each step; only to compare.
    PerStep,
    /// A batch's conditioning is bound once (on the GPU with CUDA); each
    /// step copies the latents in and the output out.
    Conditioning,
    /// As `Conditioning`, in buffers kept per input shape, so that ONNX
    /// Runtime captures each shape's step as a CUDA graph once and replays
    /// it. At most `max_shapes` shapes are captured (a captured graph holds
    /// its memory until the executor goes); others run uncaptured.
    /// `--device cuda` only.
    CudaGraphs { max_shapes: usize },
}

/// ONNX Runtime graph optimisation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optimization {
    Disable,
    Basic,
    Extended,
    All,
}

impl FromStr for Optimization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(Self::Disable),
            "basic" => Ok(Self::Basic),
            "extended" => Ok(Self::Extended),
            "all" => Ok(Self::All),
            other => Err(format!(
                "unknown optimization level `{other}`; expected one of disable, basic, extended, all"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path} is missing; expected the ONNX model of the {component} component")]
    MissingFile { path: PathBuf, component: Component },
    #[error(
        "CUDA graphs need the CUDA execution provider, and this executor runs on {0} \
         (use --device cuda, or leave --cuda-graphs at 0)"
    )]
    GraphsNeedCuda(DeviceKind),
    #[error("{component} ({path}): {message}")]
    Signature {
        component: Component,
        path: PathBuf,
        message: String,
    },
}

/// Runs the components of an optimum-layout ONNX model folder.
pub struct OnnxExecutor {
    capabilities: Capabilities,
    denoise_path: DenoisePath,
    /// The CUDA index of the GPU, where the executor runs on one.
    gpu: Option<u32>,
    text_encoders: BTreeMap<Component, ComponentSession>,
    denoiser: ComponentSession,
    vae_decoder: ComponentSession,
    vae_encoder: Option<ComponentSession>,
    preview_decoder: Option<PreviewDecoder>,
}

/// Where [`OnnxExecutor::denoise`]'s sessions keep the denoiser's inputs.
enum DenoisePath {
    PerStep,
    Bound(device::Placement),
    Graphed(graphed::GraphPool),
}

impl DenoisePath {
    fn describe(&self) -> String {
        match self {
            DenoisePath::PerStep => "denoiser inputs handed over every step".into(),
            DenoisePath::Bound(_) => "conditioning bound once per batch".into(),
            DenoisePath::Graphed(pool) => format!(
                "conditioning bound once per batch; CUDA graphs for up to {} input shapes",
                pool.max_shapes()
            ),
        }
    }
}

/// A tiny decoder with a VAE decoder's interface (`latent_sample` in,
/// `sample` in `[-1, 1]` out) and the latent scaling of its `config.json`.
struct PreviewDecoder {
    session: ComponentSession,
    scaling_factor: f32,
    shift_factor: f32,
}

impl OnnxExecutor {
    /// Loads `components` (the model family's list, read from its
    /// `model_index.json`) from `model_dir`. `vae_encoder/`, needed only for
    /// img2img, may be missing.
    pub fn load(
        model_dir: &Path,
        components: &[Component],
        config: &OnnxConfig,
    ) -> Result<Self, OnnxError> {
        runtime::ensure_loaded(config.library.as_deref(), config.device)?;
        let device = device::select(config.device, config.cpu_precision)?;
        let denoise_path = match config.binding {
            Binding::PerStep => DenoisePath::PerStep,
            Binding::Conditioning => DenoisePath::Bound(device.placement()),
            Binding::CudaGraphs { .. } if device.kind() != DeviceKind::Cuda => {
                return Err(OnnxError::GraphsNeedCuda(device.kind()));
            }
            Binding::CudaGraphs { max_shapes } => {
                DenoisePath::Graphed(graphed::GraphPool::new(device.placement(), max_shapes))
            }
        };
        let open = |component: Component| -> Result<ComponentSession, OnnxError> {
            let path = model_dir.join(component.folder()).join("model.onnx");
            if !path.is_file() {
                return Err(OnnxError::MissingFile { path, component });
            }
            if !matches!(device.provider, device::Provider::OpenVino { .. }) {
                return ComponentSession::open(component, &path, &device, config);
            }
            // OpenVINO reads the mapped weights while it compiles and packs them
            // (the warm-up); releasing them as it goes keeps them out of the peak.
            let dir = model_dir.join(component.folder());
            let session = mapped::releasing_while(&dir, || {
                let session = ComponentSession::open(component, &path, &device, config)?;
                // Only memory and first-request latency depend on it: a graph that
                // cannot run a small input still serves the sizes it can.
                if let Err(e) = session.warm_up() {
                    tracing::warn!(%component, error = %e, "OpenVINO warm-up run failed; packing on the first request instead");
                }
                Ok::<_, OnnxError>(session)
            })?;
            let released = mapped::release(&dir);
            tracing::debug!(%component, released_mib = released >> 20, "weights packed; mapped file released");
            Ok(session)
        };
        let mut text_encoders = BTreeMap::new();
        let mut denoiser = None;
        let mut vae_decoder = None;
        let mut vae_encoder = None;
        for &component in components {
            match component {
                c if c.is_text_encoder() => {
                    text_encoders.insert(c, open(c)?);
                }
                c if c.is_denoiser() => denoiser = Some(open(c)?),
                Component::VaeDecoder => vae_decoder = Some(open(component)?),
                Component::VaeEncoder => match open(component) {
                    Ok(s) => vae_encoder = Some(s),
                    Err(OnnxError::MissingFile { .. }) => {}
                    Err(e) => return Err(e),
                },
                _ => {}
            }
        }
        let missing = |component: Component| OnnxError::MissingFile {
            path: model_dir.join(component.folder()).join("model.onnx"),
            component,
        };
        let denoiser = denoiser.ok_or_else(|| missing(Component::Unet))?;
        let vae_decoder = vae_decoder.ok_or_else(|| missing(Component::VaeDecoder))?;
        let preview_decoder = match &config.preview_decoder {
            Some(path) => Some(PreviewDecoder::open(path, &device, config)?),
            None => {
                let dir = model_dir.join("preview_decoder");
                match dir.join("model.onnx").is_file() {
                    true => Some(PreviewDecoder::open(&dir, &device, config)?),
                    false => None,
                }
            }
        };
        let capabilities = Capabilities {
            executor: "onnx",
            device: device.kind(),
            device_name: device.name.clone(),
            dtype: denoiser.dtype(),
            shapes: Shapes::Dynamic,
            memory_bytes: device.memory_bytes,
            vae_encoder: vae_encoder.is_some(),
            preview_decoder: preview_decoder.is_some(),
            timestep: denoiser.timestep_input(),
            runtime: format!(
                "onnxruntime on {}; {}",
                device.kind(),
                denoise_path.describe()
            ),
        };
        tracing::info!(
            device = %capabilities.device,
            device_name = %capabilities.device_name,
            dtype = %capabilities.dtype,
            img2img = capabilities.vae_encoder,
            preview_decoder = capabilities.preview_decoder,
            timestep = ?capabilities.timestep,
            "onnx executor ready"
        );
        Ok(Self {
            capabilities,
            denoise_path,
            gpu: match device.provider {
                device::Provider::Cuda(index) => Some(index),
                _ => None,
            },
            text_encoders,
            denoiser,
            vae_decoder,
            vae_encoder,
            preview_decoder,
        })
    }
}

impl PreviewDecoder {
    fn open(path: &Path, device: &device::Device, config: &OnnxConfig) -> Result<Self, OnnxError> {
        let (file, dir) = match path.is_dir() {
            true => (path.join("model.onnx"), path.to_path_buf()),
            false => (
                path.to_path_buf(),
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            ),
        };
        if !file.is_file() {
            return Err(OnnxError::Load {
                path: file,
                message: "no such preview decoder (give its model.onnx or the folder holding it)"
                    .into(),
            });
        }
        // TAESD's decoders work on the denoiser's latents as they are (factor 1);
        // a decoder exported with a diffusers config says otherwise.
        let factor = |key: &str| -> Result<Option<f32>, OnnxError> {
            let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
                return Ok(None);
            };
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| OnnxError::Load {
                    path: dir.join("config.json"),
                    message: e.to_string(),
                })?;
            Ok(json
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .map(|v| v as f32))
        };
        let session = ComponentSession::open(Component::VaeDecoder, &file, device, config)?;
        tracing::info!(path = %file.display(), "preview decoder loaded");
        Ok(Self {
            session,
            scaling_factor: factor("scaling_factor")?.unwrap_or(1.0),
            shift_factor: factor("shift_factor")?.unwrap_or(0.0),
        })
    }
}

impl OnnxExecutor {
    fn sessions(&self) -> impl Iterator<Item = &ComponentSession> {
        self.text_encoders
            .values()
            .chain([&self.denoiser, &self.vae_decoder])
            .chain(self.vae_encoder.as_ref())
    }
}

impl Executor for OnnxExecutor {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Not ready once a panic poisoned any session: nothing rebuilds it in
    /// place, so the pod is better replaced than left failing every call.
    /// (Not the preview decoder's: without it previews fall back to the latent map.)
    fn is_ready(&self) -> bool {
        !self.sessions().any(ComponentSession::is_poisoned)
    }

    fn encode_text(
        &self,
        encoder: Component,
        ids: &TokenIds,
        layer: HiddenLayer,
    ) -> Result<TextEncoding, ExecutorError> {
        match self.text_encoders.get(&encoder) {
            Some(s) => s.encode_text(ids, layer),
            None => Err(ExecutorError::Missing {
                component: encoder,
                reason: "this model has no such text encoder".into(),
            }),
        }
    }

    fn denoise<'a>(
        &'a self,
        conditioning: Conditioning,
    ) -> Result<Box<dyn DenoiseSession + 'a>, ExecutorError> {
        Ok(match &self.denoise_path {
            DenoisePath::PerStep => Box::new(HostSession::new(
                conditioning,
                |c: &Conditioning, x: &Tensor, t: &[f32]| self.denoiser.denoise(c, x, t),
            )?),
            DenoisePath::Bound(placement) => Box::new(bound::BoundSession::new(
                &self.denoiser,
                conditioning,
                *placement,
            )?),
            DenoisePath::Graphed(pool) => Box::new(graphed::GraphedSession::new(
                &self.denoiser,
                pool,
                conditioning,
            )?),
        })
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        let index = self.gpu?;
        gpu_memory::read(index).map(|m| DeviceMemory {
            total_bytes: m.total,
            used_bytes: m.used,
        })
    }

    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor, ExecutorError> {
        self.vae_decoder.single(latents)
    }

    fn preview_decode(&self, latents: &Tensor) -> Result<Tensor, ExecutorError> {
        let Some(p) = &self.preview_decoder else {
            return Err(ExecutorError::Missing {
                component: Component::VaeDecoder,
                reason: "no preview decoder is loaded".into(),
            });
        };
        let data = latents
            .data()
            .iter()
            .map(|v| v / p.scaling_factor + p.shift_factor)
            .collect();
        p.session
            .single(&Tensor::new(latents.shape().to_vec(), data)?)
    }

    fn vae_encode(&self, image: &Tensor) -> Result<Tensor, ExecutorError> {
        match &self.vae_encoder {
            Some(s) => s.single(image),
            None => Err(ExecutorError::Missing {
                component: Component::VaeEncoder,
                reason: "the model folder has no vae_encoder/model.onnx, so img2img is unavailable"
                    .into(),
            }),
        }
    }
}

/// Makes glibc return large freed blocks to the system. By default glibc raises
/// its mmap threshold each time a large mapped block is freed (up to 32 MiB), so
/// ONNX Runtime's load-time buffers end up in the heap and stay resident after
/// they are freed: on SD 1.5 that held ~0.45 GB more at peak (docs/benchmarks.md).
/// A fixed 128 KiB threshold keeps big blocks in their own mappings; steady-state
/// runs are unaffected because the arena keeps its blocks. Process-wide, so the
/// binary calls it once at start; a no-op outside glibc.
pub fn release_large_frees_to_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before threads allocate much.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// The dtype a model runs in, read from the UNet's `sample` input.
pub(crate) fn dtype_of(ty: ort::value::TensorElementType) -> Option<Dtype> {
    use ort::value::TensorElementType as T;
    match ty {
        T::Float32 => Some(Dtype::F32),
        T::Float16 => Some(Dtype::F16),
        T::Bfloat16 => Some(Dtype::Bf16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny SD 1.5 fixture on the CPU, one thread.
    fn tiny_sd15() -> OnnxExecutor {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/models/tiny-sd15");
        let components = [
            Component::TextEncoder,
            Component::Unet,
            Component::VaeDecoder,
        ];
        let config = OnnxConfig {
            device: DeviceRequest::Cpu,
            intra_threads: Some(1),
            ..OnnxConfig::default()
        };
        OnnxExecutor::load(&dir, &components, &config).expect("tiny model loads")
    }

    #[test]
    fn a_poisoned_session_makes_the_executor_not_ready_and_unavailable() {
        let exec = tiny_sd15();
        assert!(exec.is_ready());
        exec.vae_decoder.poison();
        assert!(!exec.is_ready());
        let err = exec
            .vae_decode(&Tensor::zeros(vec![1, 4, 8, 8]))
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
    }

    /// Deterministic values in [-1, 1) (no RNG crate needed).
    fn wave(shape: Vec<usize>, phase: f32) -> Tensor {
        let n = shape.iter().product::<usize>();
        let data = (0..n).map(|i| ((i as f32) * 0.37 + phase).sin()).collect();
        Tensor::new(shape, data).unwrap()
    }

    #[test]
    fn bound_conditioning_gives_the_outputs_of_handing_it_over_per_step() {
        let exec = tiny_sd15();
        assert!(
            matches!(
                exec.denoise_path,
                DenoisePath::Bound(device::Placement::Host)
            ),
            "binding is the default"
        );
        let ids = TokenIds {
            batch: 2,
            len: 77,
            ids: (0..154).map(|i| (i * 7 % 1000) as i64).collect(),
        };
        let text = exec
            .encode_text(Component::TextEncoder, &ids, HiddenLayer::Last)
            .unwrap();
        let conditioning = Conditioning::text(text.hidden);
        let run = |c: &Conditioning, x: &Tensor, t: &[f32]| exec.denoiser.denoise(c, x, t);
        let mut host = HostSession::new(conditioning.clone(), run).unwrap();
        let mut bound = bound::BoundSession::new(
            &exec.denoiser,
            conditioning.clone(),
            device::Placement::Host,
        )
        .unwrap();
        // Steps that reuse the binding (the fixture takes one timestep per call).
        for (step, timesteps) in [[999.0, 999.0], [801.0, 801.0], [601.0, 601.0]]
            .iter()
            .enumerate()
        {
            let x = wave(vec![2, 4, 8, 8], step as f32);
            let want = host.step(&x, timesteps).unwrap();
            let got = bound.step(&x, timesteps).unwrap();
            assert_eq!(got.shape(), &[2, 4, 8, 8]);
            assert_eq!(got.data(), want.data(), "step {step}");
        }
        // Another sample gives another output: the comparison above could fail.
        let a = bound
            .step(&wave(vec![2, 4, 8, 8], 0.0), &[999.0, 999.0])
            .unwrap();
        let b = bound
            .step(&wave(vec![2, 4, 8, 8], 5.0), &[999.0, 999.0])
            .unwrap();
        assert_ne!(a.data(), b.data());
        // The first image leaves the batch: the binding follows.
        host.select(&[1]).unwrap();
        bound.select(&[1]).unwrap();
        assert_eq!(bound.rows(), 1);
        let x = wave(vec![1, 4, 8, 8], 9.0);
        let want = host.step(&x, &[201.0]).unwrap();
        assert_eq!(bound.step(&x, &[201.0]).unwrap().data(), want.data());
        let err = bound
            .step(&wave(vec![2, 4, 8, 8], 0.0), &[1.0, 1.0])
            .unwrap_err();
        assert!(matches!(err, ExecutorError::Invalid { .. }), "{err}");
    }

    /// The CUDA graph path on the CPU: no graph is captured there, but the
    /// buffers, their reuse across steps and sessions, and the cap on shapes
    /// are the ones a GPU replays with.
    #[test]
    fn fixed_buffers_give_the_per_step_outputs_and_stay_put() {
        let exec = tiny_sd15();
        let encode = |seed: i64, rows: usize| {
            let ids = TokenIds {
                batch: rows,
                len: 77,
                ids: (0..77 * rows as i64).map(|i| i * seed % 1000).collect(),
            };
            let text = exec
                .encode_text(Component::TextEncoder, &ids, HiddenLayer::Last)
                .unwrap();
            Conditioning::text(text.hidden)
        };
        let run = |c: &Conditioning, x: &Tensor, t: &[f32]| exec.denoiser.denoise(c, x, t);
        let pool = graphed::GraphPool::new(device::Placement::Host, 2);
        let (ca, cb) = (encode(7, 2), encode(11, 2));
        let mut host_a = HostSession::new(ca.clone(), run).unwrap();
        let mut host_b = HostSession::new(cb.clone(), run).unwrap();
        let mut a = graphed::GraphedSession::new(&exec.denoiser, &pool, ca).unwrap();
        let mut b = graphed::GraphedSession::new(&exec.denoiser, &pool, cb).unwrap();
        // Two sessions of one shape take turns in the same buffers.
        let mut first = None;
        for (step, t) in [999.0f32, 801.0, 601.0].into_iter().enumerate() {
            let x = wave(vec![2, 4, 8, 8], step as f32);
            let got_a = a.step(&x, &[t, t]).unwrap();
            let got_b = b.step(&x, &[t, t]).unwrap();
            assert_eq!(
                got_a.data(),
                host_a.step(&x, &[t, t]).unwrap().data(),
                "a, step {step}"
            );
            assert_eq!(
                got_b.data(),
                host_b.step(&x, &[t, t]).unwrap().data(),
                "b, step {step}"
            );
            assert_ne!(got_a.data(), got_b.data(), "the prompts differ");
            let addresses = pool.addresses();
            assert_eq!(addresses.len(), 1, "one shape, one set of buffers");
            assert_eq!(
                *first.get_or_insert(addresses.clone()),
                addresses,
                "step {step}"
            );
        }
        // A row leaves: a second shape gets its own buffers.
        a.select(&[1]).unwrap();
        host_a.select(&[1]).unwrap();
        let x = wave(vec![1, 4, 8, 8], 3.0);
        assert_eq!(
            a.step(&x, &[401.0]).unwrap().data(),
            host_a.step(&x, &[401.0]).unwrap().data()
        );
        assert_eq!(pool.addresses().len(), 2);
        // Past the cap a shape runs uncaptured, with the same result.
        let cc = encode(13, 3);
        let mut host_c = HostSession::new(cc.clone(), run).unwrap();
        let mut c = graphed::GraphedSession::new(&exec.denoiser, &pool, cc).unwrap();
        let x = wave(vec![3, 4, 8, 8], 4.0);
        let t = [201.0; 3];
        assert_eq!(
            c.step(&x, &t).unwrap().data(),
            host_c.step(&x, &t).unwrap().data()
        );
        let addresses = pool.addresses();
        assert_eq!(addresses.len(), 2, "the cap holds");
        assert_eq!(
            addresses[0],
            first.unwrap()[0],
            "the first shape's buffers never moved"
        );
        // Back to the first shape after other sessions wrote there.
        let x = wave(vec![2, 4, 8, 8], 6.0);
        assert_eq!(
            b.step(&x, &[101.0, 101.0]).unwrap().data(),
            host_b.step(&x, &[101.0, 101.0]).unwrap().data()
        );
        let err = b.step(&wave(vec![1, 4, 8, 8], 0.0), &[1.0]).unwrap_err();
        assert!(matches!(err, ExecutorError::Invalid { .. }), "{err}");
    }

    #[test]
    fn cuda_graphs_on_the_cpu_are_refused_by_name() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/models/tiny-sd15");
        let config = OnnxConfig {
            device: DeviceRequest::Cpu,
            binding: Binding::CudaGraphs { max_shapes: 4 },
            ..OnnxConfig::default()
        };
        let err = OnnxExecutor::load(&dir, &[Component::Unet], &config)
            .err()
            .expect("refused");
        let msg = err.to_string();
        assert!(msg.contains("CUDA graphs") && msg.contains("cpu"), "{msg}");
    }
}
