//! The accelerator boundary.
//!
//! An [`Executor`] runs the neural-network components of a diffusion model
//! (text encoders, the denoiser, VAE decoder and encoder) and says what it can
//! do. A batch's denoising loop is a [`DenoiseSession`]: its [`Conditioning`]
//! is handed over once and kept where the executor wants it (device memory,
//! the sidecar's cache), so each step moves only latents and per-row
//! timesteps. Everything else (tokenizers, schedulers, guidance, noise,
//! batching, images, what differs between model families) lives in the
//! pipeline and is identical on every accelerator.
//!
//! The same boundary is defined for the Python sidecar in
//! `proto/anyaccel/sidecar/v1/sidecar.proto`.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

mod tensor;

pub use tensor::{Tensor, TensorError};

/// A model component the executor can run, named after its folder in the
/// diffusers/optimum layout. Which of them a model has is read from its
/// `model_index.json` (by the pipeline's model family), not fixed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// The first (CLIP) text encoder.
    TextEncoder,
    /// SDXL's, SD3's and Flux's second text encoder.
    TextEncoder2,
    /// SD3's third (T5) text encoder.
    TextEncoder3,
    /// The UNet denoiser (SD 1.x/2.x, SDXL).
    Unet,
    /// The DiT denoiser (SD3, Flux).
    Transformer,
    VaeDecoder,
    VaeEncoder,
}

impl Component {
    pub const ALL: [Component; 7] = [
        Component::TextEncoder,
        Component::TextEncoder2,
        Component::TextEncoder3,
        Component::Unet,
        Component::Transformer,
        Component::VaeDecoder,
        Component::VaeEncoder,
    ];

    /// Folder of the component in the diffusers/optimum ONNX layout.
    pub fn folder(self) -> &'static str {
        match self {
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
            Component::TextEncoder3 => "text_encoder_3",
            Component::Unet => "unet",
            Component::Transformer => "transformer",
            Component::VaeDecoder => "vae_decoder",
            Component::VaeEncoder => "vae_encoder",
        }
    }

    /// The component whose folder is `name`.
    pub fn from_folder(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.folder() == name)
    }

    pub fn is_text_encoder(self) -> bool {
        matches!(
            self,
            Component::TextEncoder | Component::TextEncoder2 | Component::TextEncoder3
        )
    }

    pub fn is_denoiser(self) -> bool {
        matches!(self, Component::Unet | Component::Transformer)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder())
    }
}

/// The family of device an executor drives.
///
/// Its names (`cpu`, `cuda`, `neuron`) are defined here once: `--device`, the
/// sidecar's capabilities, `/health` and the metrics' `accelerator` label all
/// spell a device this way, and the executors' device requests build on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Neuron,
}

impl DeviceKind {
    /// Every kind, in the order choices are listed.
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Cpu, DeviceKind::Cuda, DeviceKind::Neuron];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Neuron => "neuron",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`DeviceKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}`")]
pub struct UnknownDevice(pub String);

impl FromStr for DeviceKind {
    type Err = UnknownDevice;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownDevice(s.to_string()))
    }
}

impl Serialize for DeviceKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Choices as messages list them: `a, b or c`.
pub fn list_choices<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Numeric type the model weights run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "fp32",
            Dtype::F16 => "fp16",
            Dtype::Bf16 => "bf16",
        })
    }
}

/// Which input shapes the compiled components accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shapes {
    /// Any batch size and image size (ONNX Runtime with dynamic axes).
    Dynamic,
    /// Compiled for fixed shapes (Neuron): the pipeline pads or splits batches
    /// to `batch_size` and rejects sizes that are not listed.
    Static {
        batch_size: usize,
        /// (width, height) in pixels.
        sizes: Vec<(u32, u32)>,
    },
}

/// How the denoiser graph takes its timestep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepInput {
    /// One value for the whole batch: every row of a call must share it.
    Scalar,
    /// One value per row (`[batch]`): rows at different steps can share a call.
    PerSample,
}

/// What an executor reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Short name of the implementation, e.g. `onnx` or `remote`.
    pub executor: &'static str,
    pub device: DeviceKind,
    /// Human-readable device name (CPU model, GPU name).
    pub device_name: String,
    pub dtype: Dtype,
    pub shapes: Shapes,
    /// Device memory in bytes, where the executor can tell.
    pub memory_bytes: Option<u64>,
    /// Whether a VAE encoder is loaded (needed for img2img).
    pub vae_encoder: bool,
    /// Whether a tiny preview decoder is loaded ([`Executor::preview_decode`]).
    pub preview_decoder: bool,
    pub timestep: TimestepInput,
    /// How the model runs, for operators (`/info`): the runtime and the
    /// settings that change speed, e.g. `onnxruntime on cuda; CUDA graphs for
    /// up to 4 input shapes`.
    pub runtime: String,
}

/// An accelerator's memory now (all processes' use, as its driver counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceMemory {
    pub total_bytes: u64,
    pub used_bytes: u64,
}

/// Token ids for one text encoder: `batch` rows of `len` ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds {
    pub batch: usize,
    pub len: usize,
    pub ids: Vec<i64>,
}

/// Which hidden-state layer of a text encoder conditions the denoiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenLayer {
    /// The final layer's output (SD 1.x/2.x).
    Last,
    /// The layer before the last (SDXL, "clip skip 2").
    Penultimate,
}

/// What a text encoder returns.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEncoding {
    /// `[batch, len, dim]`: the chosen hidden-state layer.
    pub hidden: Tensor,
    /// `[batch, dim]`: the pooled (or projected) embedding, where the encoder has one.
    pub pooled: Option<Tensor>,
}

/// Everything the denoiser is conditioned on, one row per denoiser row. It is
/// handed to [`Executor::denoise`] once per batch and kept by the executor
/// across steps (on the device, or cached in the sidecar).
///
/// Per-request adapters (LoRA) and masks (inpainting) will attach here.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditioning {
    /// `[rows, tokens, dim]`: the text sequence (`encoder_hidden_states`).
    pub encoder_hidden_states: Tensor,
    /// `[rows, dim]`: the pooled text embedding (SDXL's `text_embeds`).
    pub pooled: Option<Tensor>,
    /// `[rows, 6]`: SDXL's micro-conditioning (original size, crop, target size).
    pub time_ids: Option<Tensor>,
    /// `[rows]`: FLUX.1-dev's distilled guidance scale, an input of the
    /// transformer (no unconditional rows).
    pub guidance: Option<Tensor>,
    /// Flux's rotary position ids, shared by every row.
    pub positions: Option<Positions>,
}

/// Flux's position ids: `txt_ids` `[text tokens, 3]` (zeros) and `img_ids`
/// `[latent tokens, 3]` (`[0, row, column]` of each 2×2 latent patch).
#[derive(Debug, Clone, PartialEq)]
pub struct Positions {
    pub txt_ids: Tensor,
    pub img_ids: Tensor,
}

impl Conditioning {
    /// Conditioning by the text sequence alone (SD 1.x/2.x).
    pub fn text(encoder_hidden_states: Tensor) -> Self {
        Self {
            encoder_hidden_states,
            pooled: None,
            time_ids: None,
            guidance: None,
            positions: None,
        }
    }

    pub fn rows(&self) -> usize {
        self.encoder_hidden_states.batch()
    }

    /// Rows `rows` of every part, in that order.
    pub fn select(&self, rows: &[usize]) -> Result<Self, TensorError> {
        Ok(Self {
            encoder_hidden_states: self.encoder_hidden_states.gather(rows)?,
            pooled: self.pooled.as_ref().map(|t| t.gather(rows)).transpose()?,
            time_ids: self.time_ids.as_ref().map(|t| t.gather(rows)).transpose()?,
            guidance: self.guidance.as_ref().map(|t| t.gather(rows)).transpose()?,
            positions: self.positions.clone(),
        })
    }

    /// Checks that every part has the same number of rows.
    pub fn check(&self) -> Result<(), ExecutorError> {
        let rows = self.rows();
        for (name, t) in [
            ("pooled", &self.pooled),
            ("time_ids", &self.time_ids),
            ("guidance", &self.guidance),
        ] {
            if let Some(t) = t
                && t.batch() != rows
            {
                return Err(ExecutorError::Invalid {
                    component: None,
                    message: format!(
                        "conditioning `{name}` has {} rows, encoder_hidden_states {rows}",
                        t.batch()
                    ),
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("{component}: {message}")]
    Run {
        component: Component,
        message: String,
    },
    #[error("{component} is not loaded: {reason}")]
    Missing {
        component: Component,
        reason: String,
    },
    #[error("{component} returned an unexpected output: {message}")]
    BadOutput {
        component: Component,
        message: String,
    },
    /// The caller passed something the boundary does not accept (a shape, a
    /// row count, differing timesteps for a scalar-timestep graph).
    #[error("invalid executor input{}: {message}", component.map(|c| format!(" for {c}")).unwrap_or_default())]
    Invalid {
        component: Option<Component>,
        message: String,
    },
    /// The device (or the sidecar driving it) is down; retrying later can succeed.
    #[error("executor unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl ExecutorError {
    /// Whether the failure is the device's availability, not the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ExecutorError::Unavailable(_))
    }
}

/// A batch's denoising loop on the executor: the conditioning is set once
/// (by [`Executor::denoise`]) and each step sends only the latents and
/// timesteps. Rows of `sample` match rows of the conditioning.
pub trait DenoiseSession {
    /// Rows of the conditioning the session holds now.
    fn rows(&self) -> usize;

    /// Keeps conditioning rows `rows` (indices into the current rows), in that
    /// order: images that leave the batch (cancelled) leave the session too.
    fn select(&mut self, rows: &[usize]) -> Result<(), ExecutorError>;

    /// One denoiser evaluation: `sample` is the latents as the denoiser
    /// takes them, scaled for the model input (`[rows, channels, h, w]`, or
    /// Flux's `[rows, tokens, channels * 4]` of 2×2 patches), and `timesteps`
    /// has one value per row, as the graph's `timestep` input takes it.
    /// Returns the model output (noise, v or velocity), shaped like `sample`.
    fn step(&mut self, sample: &Tensor, timesteps: &[f32]) -> Result<Tensor, ExecutorError>;
}

/// Runs model components on an accelerator.
///
/// Calls may block for a long time (a denoiser step can take seconds on a
/// CPU); callers run them on a blocking thread.
pub trait Executor: Send + Sync {
    fn capabilities(&self) -> &Capabilities;

    /// Whether calls can succeed now (a remote executor is down while its
    /// sidecar restarts); readiness probes report it.
    fn is_ready(&self) -> bool {
        true
    }

    /// The device's memory now, where the executor can read it (GPUs);
    /// `/info` and the metrics report it.
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }

    /// `[batch, len]` token ids through text encoder `encoder`.
    fn encode_text(
        &self,
        encoder: Component,
        ids: &TokenIds,
        layer: HiddenLayer,
    ) -> Result<TextEncoding, ExecutorError>;

    /// Starts denoising a batch conditioned on `conditioning`.
    fn denoise<'a>(
        &'a self,
        conditioning: Conditioning,
    ) -> Result<Box<dyn DenoiseSession + 'a>, ExecutorError>;

    /// `[batch, c, h/8, w/8]` unscaled latents to `[batch, 3, h, w]` images in `[-1, 1]`.
    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor, ExecutorError>;

    /// `[batch, 3, h, w]` images in `[-1, 1]` to the posterior's parameters,
    /// `[batch, 2 * latent_channels, h/8, w/8]` (mean then log-variance).
    fn vae_encode(&self, image: &Tensor) -> Result<Tensor, ExecutorError>;

    /// `[1, c, h/8, w/8]` denoised latents, in the denoiser's space (scaled, as
    /// the scheduler holds them), to a `[1, 3, h, w]` preview in `[-1, 1]` by a
    /// tiny decoder (TAESD-style). Only where `capabilities().preview_decoder`.
    fn preview_decode(&self, _latents: &Tensor) -> Result<Tensor, ExecutorError> {
        Err(ExecutorError::Missing {
            component: Component::VaeDecoder,
            reason: "no preview decoder is loaded".into(),
        })
    }
}

/// The timestep a scalar-timestep graph gets for a call: rows must agree.
pub fn shared_timestep(component: Component, timesteps: &[f32]) -> Result<f32, ExecutorError> {
    let Some(&first) = timesteps.first() else {
        return Err(ExecutorError::Invalid {
            component: Some(component),
            message: "no timesteps given".into(),
        });
    };
    if timesteps.iter().any(|&t| t != first) {
        return Err(ExecutorError::Invalid {
            component: Some(component),
            message: "this graph takes one timestep for the whole batch, but the rows differ \
                      (export it with per-sample timesteps: `anyaccel compile`)"
                .into(),
        });
    }
    Ok(first)
}

/// A denoise session that keeps the conditioning in host memory and hands
/// it, with each step's inputs, to `run`: what executors without device
/// memory of their own (ONNX Runtime on the CPU) need.
pub struct HostSession<F> {
    conditioning: Conditioning,
    run: F,
}

impl<F> HostSession<F>
where
    F: FnMut(&Conditioning, &Tensor, &[f32]) -> Result<Tensor, ExecutorError>,
{
    pub fn new(conditioning: Conditioning, run: F) -> Result<Self, ExecutorError> {
        conditioning.check()?;
        Ok(Self { conditioning, run })
    }
}

impl<F> DenoiseSession for HostSession<F>
where
    F: FnMut(&Conditioning, &Tensor, &[f32]) -> Result<Tensor, ExecutorError>,
{
    fn rows(&self) -> usize {
        self.conditioning.rows()
    }

    fn select(&mut self, rows: &[usize]) -> Result<(), ExecutorError> {
        self.conditioning = self.conditioning.select(rows)?;
        Ok(())
    }

    fn step(&mut self, sample: &Tensor, timesteps: &[f32]) -> Result<Tensor, ExecutorError> {
        check_step(self.conditioning.rows(), sample, timesteps)?;
        (self.run)(&self.conditioning, sample, timesteps)
    }
}

/// What every [`DenoiseSession::step`] checks first: one sample row and one
/// timestep per conditioning row.
pub fn check_step(rows: usize, sample: &Tensor, timesteps: &[f32]) -> Result<(), ExecutorError> {
    if sample.batch() != rows || timesteps.len() != rows {
        return Err(ExecutorError::Invalid {
            component: None,
            message: format!(
                "step got {} sample rows and {} timesteps for {rows} conditioning rows",
                sample.batch(),
                timesteps.len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::new(shape, (0..n).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn component_folders_round_trip() {
        for c in Component::ALL {
            assert_eq!(Component::from_folder(c.folder()), Some(c));
        }
        assert_eq!(Component::from_folder("safety_checker"), None);
    }

    #[test]
    fn device_names_round_trip() {
        let names: Vec<String> = DeviceKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(names, ["cpu", "cuda", "neuron"]);
        for k in DeviceKind::ALL {
            assert_eq!(k.as_str().parse(), Ok(k));
        }
        assert_eq!(
            "tpu".parse::<DeviceKind>().unwrap_err().to_string(),
            "unknown device `tpu`"
        );
        assert!("CPU".parse::<DeviceKind>().is_err());
    }

    #[test]
    fn choices_are_listed_with_or() {
        assert_eq!(list_choices([]), "");
        assert_eq!(list_choices(["cpu"]), "cpu");
        assert_eq!(list_choices(["cpu", "cuda"]), "cpu or cuda");
        assert_eq!(
            list_choices(DeviceKind::ALL.map(DeviceKind::as_str)),
            "cpu, cuda or neuron"
        );
    }

    #[test]
    fn conditioning_selects_every_part() {
        let c = Conditioning {
            encoder_hidden_states: t(vec![3, 2, 2]),
            pooled: Some(t(vec![3, 2])),
            time_ids: Some(t(vec![3, 6])),
            guidance: Some(t(vec![3])),
            positions: None,
        };
        let s = c.select(&[2, 0]).unwrap();
        assert_eq!(s.rows(), 2);
        assert_eq!(
            s.encoder_hidden_states.item(0),
            c.encoder_hidden_states.item(2)
        );
        assert_eq!(
            s.pooled.as_ref().unwrap().item(1),
            c.pooled.as_ref().unwrap().item(0)
        );
        assert_eq!(
            s.time_ids.as_ref().unwrap().item(0),
            c.time_ids.as_ref().unwrap().item(2)
        );
        assert_eq!(s.guidance.as_ref().unwrap().data(), &[2.0, 0.0]);
        assert!(c.select(&[3]).is_err());
    }

    #[test]
    fn mismatched_conditioning_rows_are_invalid() {
        let c = Conditioning {
            encoder_hidden_states: t(vec![2, 2, 2]),
            pooled: Some(t(vec![3, 2])),
            time_ids: None,
            guidance: None,
            positions: None,
        };
        assert!(matches!(c.check(), Err(ExecutorError::Invalid { .. })));
    }

    #[test]
    fn scalar_timestep_graphs_need_equal_rows() {
        assert_eq!(shared_timestep(Component::Unet, &[5.0, 5.0]).unwrap(), 5.0);
        assert!(matches!(
            shared_timestep(Component::Unet, &[5.0, 4.0]),
            Err(ExecutorError::Invalid { .. })
        ));
        assert!(shared_timestep(Component::Unet, &[]).is_err());
    }

    #[test]
    fn host_session_checks_rows_and_follows_selection() {
        let c = Conditioning::text(t(vec![2, 1, 1]));
        let mut s = HostSession::new(c, |c: &Conditioning, x: &Tensor, _: &[f32]| {
            let mut out = x.clone();
            for (o, h) in out
                .data_mut()
                .iter_mut()
                .zip(c.encoder_hidden_states.data())
            {
                *o += h;
            }
            Ok(out)
        })
        .unwrap();
        let x = Tensor::zeros(vec![2, 1]);
        assert_eq!(s.step(&x, &[1.0, 1.0]).unwrap().data(), &[0.0, 1.0]);
        assert!(s.step(&x, &[1.0]).is_err());
        s.select(&[1]).unwrap();
        assert_eq!(s.rows(), 1);
        assert_eq!(
            s.step(&Tensor::zeros(vec![1, 1]), &[1.0]).unwrap().data(),
            &[1.0]
        );
    }
}
