//! Stable Diffusion in Rust, shared by every accelerator: CLIP and T5
//! tokenizers, schedulers (diffusion and flow matching), guidance, seeded
//! noise, img2img, and image encoding, for every model family
//! ([`ModelFamily`]: SD 1.x/2.x, SDXL, SD3, FLUX.1).
//! Model components run on an [`anyaccel_executor::Executor`].

mod checkpoint;
pub mod family;
pub mod images;
pub mod memory;
pub mod model;
pub mod noise;
mod pipeline;
pub mod preview;
pub mod request;
pub mod scheduler;
mod target;
pub mod tokenizer;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use family::{Guidance, ModelFamily, UnsupportedPipeline};
pub use model::{Model, ModelError, ModelInfo};
pub use pipeline::{
    BatchOutput, GeneratedImage, Observer, Outcome, Pipeline, PipelineError, Quiet, Timings,
};
pub use request::{
    BatchKey, Defaults, GenerationParams, GenerationRequest, Limits, MicroConditioning,
    MicroParams, ValidationError,
};
pub use scheduler::SchedulerKind;
pub use target::CompileTarget;
