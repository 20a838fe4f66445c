//! The accelerator boundary.
//!
//! An [`Executor`] runs the neural-network components of a Stable Diffusion
//! model (text encoder, UNet, VAE decoder and encoder) on host tensors and says
//! what it can do. Everything else (tokenizer, schedulers, guidance, noise,
//! batching, images) lives in the pipeline and is identical on every
//! accelerator, so only this trait has an implementation per hardware family.

use std::fmt;

use serde::Serialize;

mod tensor;

pub use tensor::{Tensor, TensorError};

/// A model component the executor can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    TextEncoder,
    Unet,
    VaeDecoder,
    VaeEncoder,
}

impl Component {
    /// Folder of the component in the diffusers/optimum ONNX layout.
    pub fn folder(self) -> &'static str {
        match self {
            Component::TextEncoder => "text_encoder",
            Component::Unet => "unet",
            Component::VaeDecoder => "vae_decoder",
            Component::VaeEncoder => "vae_encoder",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder())
    }
}

/// The family of device an executor drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Neuron,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Neuron => "neuron",
        })
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
}

/// Token ids for the text encoder: `batch` rows of `len` ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds {
    pub batch: usize,
    pub len: usize,
    pub ids: Vec<i64>,
}

/// One UNet evaluation.
#[derive(Debug)]
pub struct UnetInput<'a> {
    /// Scaled latents, `[batch, channels, h, w]`.
    pub sample: &'a Tensor,
    /// The scheduler's timestep (continuous for some schedulers).
    pub timestep: f32,
    /// Text conditioning, `[batch, tokens, dim]`.
    pub encoder_hidden_states: &'a Tensor,
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
    #[error("executor unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Runs model components on an accelerator.
///
/// Calls may block for a long time (a UNet step can take seconds on a CPU);
/// callers run them on a blocking thread.
pub trait Executor: Send + Sync {
    fn capabilities(&self) -> &Capabilities;

    /// Whether calls can succeed now (a remote executor is down while its
    /// sidecar restarts); readiness probes report it.
    fn is_ready(&self) -> bool {
        true
    }

    /// `[batch, len]` token ids to `[batch, len, dim]` hidden states.
    fn encode_text(&self, ids: &TokenIds) -> Result<Tensor, ExecutorError>;

    /// Predicts noise (or v) for the given latents; output has the sample's shape.
    fn unet(&self, input: UnetInput<'_>) -> Result<Tensor, ExecutorError>;

    /// `[batch, 4, h/8, w/8]` unscaled latents to `[batch, 3, h, w]` images in `[-1, 1]`.
    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor, ExecutorError>;

    /// `[batch, 3, h, w]` images in `[-1, 1]` to the posterior's parameters,
    /// `[batch, 2 * latent_channels, h/8, w/8]` (mean then log-variance).
    fn vae_encode(&self, image: &Tensor) -> Result<Tensor, ExecutorError>;
}
