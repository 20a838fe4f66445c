//! Stable Diffusion in Rust, shared by every accelerator: CLIP tokenizer,
//! schedulers, classifier-free guidance, seeded noise, img2img, and image
//! encoding. Model components run on an [`anyaccel_executor::Executor`].

pub mod images;
pub mod model;
pub mod noise;
mod pipeline;
pub mod request;
pub mod scheduler;
pub mod tokenizer;

pub use model::{Model, ModelError, ModelInfo};
pub use pipeline::{
    BatchOutput, GeneratedImage, Observer, Outcome, Pipeline, PipelineError, Quiet, Timings,
};
pub use request::{
    BatchKey, Defaults, GenerationParams, GenerationRequest, Limits, ValidationError,
};
pub use scheduler::SchedulerKind;
