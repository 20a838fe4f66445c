//! Generation requests: what callers send ([`GenerationParams`]) and the
//! validated form the pipeline runs ([`GenerationRequest`]).

use std::fmt;
use std::sync::Arc;

use image::RgbImage;
use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::family::{Guidance, ModelFamily};
use crate::images;
use crate::pipeline::Pipeline;
use crate::scheduler::SchedulerKind;

/// A caller's request before validation. `None` means "the default".
#[derive(Debug, Clone, Default)]
pub struct GenerationParams {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub scheduler: Option<String>,
    pub seed: Option<u64>,
    /// Number of images; image `i` uses seed `seed + i`.
    pub n: Option<u32>,
    /// img2img source, already decoded.
    pub init_image: Option<RgbImage>,
    pub strength: Option<f32>,
    /// SDXL micro-conditioning; each defaults as diffusers does.
    pub micro: MicroParams,
}

/// SDXL's micro-conditioning as a caller gives it. `None` means the default:
/// original and target size equal to the output size, crop at the origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MicroParams {
    /// (width, height) the training image is said to have had.
    pub original_size: Option<(u32, u32)>,
    /// (top, left) of the crop the image is said to come from.
    pub crop_top_left: Option<(u32, u32)>,
    /// (width, height) the image is said to be generated at.
    pub target_size: Option<(u32, u32)>,
}

impl MicroParams {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// SDXL's micro-conditioning, resolved: what the UNet's `time_ids` encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MicroConditioning {
    pub original_size: (u32, u32),
    pub crop_top_left: (u32, u32),
    pub target_size: (u32, u32),
}

impl MicroConditioning {
    /// diffusers' `add_time_ids`: original (h, w), crop (top, left), target (h, w).
    pub fn time_ids(&self) -> [f32; 6] {
        let (ow, oh) = self.original_size;
        let (ct, cl) = self.crop_top_left;
        let (tw, th) = self.target_size;
        [oh, ow, ct, cl, th, tw].map(|v| v as f32)
    }
}

/// Server- or operator-set bounds on requests.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub max_images: u32,
    pub max_steps: u32,
    pub min_size: u32,
    pub max_size: u32,
    pub max_prompt_chars: usize,
    pub max_guidance: f32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_images: 8,
            max_steps: 150,
            min_size: 64,
            max_size: 2048,
            max_prompt_chars: 4000,
            max_guidance: 30.0,
        }
    }
}

/// Defaults applied when a request leaves a field out.
#[derive(Debug, Clone, Serialize)]
pub struct Defaults {
    pub steps: u32,
    pub guidance_scale: f32,
    pub strength: f32,
    /// T5's padded prompt length (SD3, Flux); `None` is the family's
    /// default (256 for SD3, 512 for Flux), never above the tokenizer's.
    pub max_sequence_length: Option<usize>,
}

impl Default for Defaults {
    /// SD 1.x/2.x's usual settings.
    fn default() -> Self {
        Self {
            steps: 25,
            guidance_scale: 7.5,
            strength: 0.75,
            max_sequence_length: None,
        }
    }
}

impl Defaults {
    /// The settings diffusers' pipeline of the model's family defaults to:
    /// SD3 28 steps at 7.0, FLUX.1-dev 28 steps at distilled guidance 3.5,
    /// FLUX.1-schnell (no guidance input) 4 steps.
    pub fn for_model(info: &crate::ModelInfo) -> Self {
        use crate::ModelFamily;
        let (steps, guidance_scale) = match info.family {
            ModelFamily::StableDiffusion | ModelFamily::StableDiffusionXl => (25, 7.5),
            ModelFamily::StableDiffusion3 => (28, 7.0),
            ModelFamily::Flux if info.guidance_embeds => (28, 3.5),
            ModelFamily::Flux => (4, 0.0),
        };
        Self {
            steps,
            guidance_scale,
            ..Self::default()
        }
    }
}

/// A request field that failed validation, and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// img2img input: the source image at the output size, and how far to move from it.
#[derive(Debug, Clone)]
pub struct InitImage {
    pub(crate) image: RgbImage,
    pub(crate) strength: f32,
}

impl InitImage {
    pub fn strength(&self) -> f32 {
        self.strength
    }
}

/// A request the pipeline can run: every field present and within limits.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub(crate) prompt: String,
    pub(crate) negative_prompt: String,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) steps: u32,
    pub(crate) guidance_scale: f32,
    pub(crate) scheduler: SchedulerKind,
    pub(crate) seeds: Vec<u64>,
    pub(crate) init: Option<InitImage>,
    /// SDXL only.
    pub(crate) micro: Option<MicroConditioning>,
    /// Whether classifier-free guidance runs: the family guides that way
    /// and the scale is above 1.
    pub(crate) cfg: bool,
    /// Where a run interrupted elsewhere stood; shared, so cloning a request stays cheap.
    pub(crate) resume: Option<Arc<Checkpoint>>,
}

/// Requests with equal keys can share UNet calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchKey {
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub scheduler: SchedulerKind,
    pub guidance: bool,
    /// img2img strength in thousandths (it sets the first step), or `None` for txt2img.
    pub strength_millis: Option<u32>,
    /// The absolute schedule index a resumed request continues at, or `None`
    /// where the loop starts where a fresh request's does (a fresh request,
    /// or a checkpoint taken before any step): one batch runs one loop.
    pub resume_index: Option<u32>,
}

impl GenerationRequest {
    pub fn prompt(&self) -> &str {
        &self.prompt
    }
    pub fn negative_prompt(&self) -> &str {
        &self.negative_prompt
    }
    pub fn width(&self) -> u32 {
        self.width
    }
    pub fn height(&self) -> u32 {
        self.height
    }
    pub fn steps(&self) -> u32 {
        self.steps
    }
    pub fn guidance_scale(&self) -> f32 {
        self.guidance_scale
    }
    pub fn scheduler(&self) -> SchedulerKind {
        self.scheduler
    }
    /// One seed per image.
    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }
    pub fn init(&self) -> Option<&InitImage> {
        self.init.as_ref()
    }
    /// SDXL's micro-conditioning (`None` for other families).
    pub fn micro(&self) -> Option<&MicroConditioning> {
        self.micro.as_ref()
    }
    /// Classifier-free guidance runs (and doubles denoiser work) only above
    /// 1, and only in families that guide that way (not Flux).
    pub fn uses_guidance(&self) -> bool {
        self.cfg
    }

    pub fn batch_key(&self) -> BatchKey {
        BatchKey {
            width: self.width,
            height: self.height,
            steps: self.steps,
            scheduler: self.scheduler,
            guidance: self.uses_guidance(),
            strength_millis: self
                .init
                .as_ref()
                .map(|i| (i.strength * 1000.0).round() as u32),
            resume_index: self
                .resume
                .as_ref()
                .filter(|c| c.steps_done > 0)
                .map(|c| c.next_index),
        }
    }

    /// Work units for admission control: pixels × steps × images (× 2 with
    /// guidance), counting only the steps left to a resumed request.
    pub fn work(&self) -> u64 {
        let unet_evals = if self.uses_guidance() { 2 } else { 1 };
        let steps = self.remaining_steps().max(1) as u64;
        self.width as u64 * self.height as u64 * steps * self.seeds.len() as u64 * unet_evals
    }

    /// Denoising steps actually run (fewer than `steps` for img2img).
    pub fn denoise_steps(&self) -> u32 {
        match &self.init {
            Some(i) => crate::scheduler::img2img_steps(self.scheduler, self.steps, i.strength),
            None => self.steps,
        }
    }

    /// Denoising steps still to run: [`Self::denoise_steps`] less those a
    /// resumed request's checkpoint already did.
    pub fn remaining_steps(&self) -> u32 {
        let done = self.resume.as_ref().map_or(0, |c| c.steps_done);
        self.denoise_steps().saturating_sub(done)
    }

    /// The checkpoint this request resumes from, if any.
    pub fn resume(&self) -> Option<&Checkpoint> {
        self.resume.as_deref()
    }

    /// This request, set to continue from `checkpoint` instead of starting
    /// over: the pipeline skips its initial latents (and img2img's VAE
    /// encode) and runs only the steps left, and the images come out the
    /// same as an uninterrupted run's. Replaces any checkpoint it had.
    ///
    /// Refused (field `checkpoint`) unless the checkpoint was taken from
    /// the same run: the same seeds in order (so the image count too), size,
    /// scheduler, steps and img2img strength, with steps still to run.
    /// Prompts and guidance are not recorded in it; resuming with others
    /// runs, but gives a different image.
    pub fn resume_from(mut self, checkpoint: Checkpoint) -> Result<Self, ValidationError> {
        let err = |m: String| Err(ValidationError::new("checkpoint", m));
        let c = &checkpoint;
        if c.images.len() != self.seeds.len() {
            return err(format!(
                "holds {} images; the request has {}",
                c.images.len(),
                self.seeds.len()
            ));
        }
        if c.images
            .iter()
            .map(|i| i.seed)
            .ne(self.seeds.iter().copied())
        {
            let theirs: Vec<u64> = c.images.iter().map(|i| i.seed).collect();
            return err(format!(
                "is of seeds {theirs:?}; the request has {:?}",
                self.seeds
            ));
        }
        if (c.width, c.height) != (self.width, self.height) {
            return err(format!(
                "is of a {}x{} image; the request is {}x{}",
                c.width, c.height, self.width, self.height
            ));
        }
        if c.scheduler != self.scheduler || c.steps != self.steps {
            return err(format!(
                "is of {} steps of {}; the request is {} steps of {}",
                c.steps, c.scheduler, self.steps, self.scheduler
            ));
        }
        let total = self.denoise_steps();
        if c.steps_done >= total {
            return err(format!(
                "has {} steps done; the request denoises {total}",
                c.steps_done
            ));
        }
        // The step it continues at must be where this request's steps_done-th step is.
        let first = self.steps - total;
        if c.next_index != first + c.steps_done {
            return err(format!(
                "continues at schedule index {}, where this request (starting at {first}) would be at {}; was it taken at another strength?",
                c.next_index,
                first + c.steps_done
            ));
        }
        self.resume = Some(Arc::new(checkpoint));
        Ok(self)
    }

    /// Bytes of pixels the request holds (its init image).
    pub fn held_bytes(&self) -> u64 {
        self.init
            .as_ref()
            .map_or(0, |i| i.image.as_raw().len() as u64)
    }
}

impl fmt::Display for GenerationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{} {} steps {} cfg {} x{}",
            self.width,
            self.height,
            self.steps,
            self.scheduler,
            self.guidance_scale,
            self.seeds.len()
        )?;
        match &self.resume {
            Some(c) => write!(f, " resumed after step {}", c.steps_done),
            None => Ok(()),
        }
    }
}

/// `WxH, WxH, ...`: how errors list the sizes on offer.
pub fn size_list(sizes: &[(u32, u32)]) -> String {
    sizes
        .iter()
        .map(|(w, h)| format!("{w}x{h}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A seed for callers that gave none.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    // A1111 and torch users pass 32-bit seeds; keep ours in that range.
    h.finish() & 0xffff_ffff
}

/// [`Pipeline::validate`]: checks a caller's request against the model and
/// limits, filling defaults.
pub(crate) fn validate(
    pipeline: &Pipeline,
    p: GenerationParams,
) -> Result<GenerationRequest, ValidationError> {
    let l = pipeline.limits();
    let defaults = pipeline.defaults();
    let info = pipeline.model();
    if p.prompt.chars().count() > l.max_prompt_chars {
        return Err(ValidationError::new(
            "prompt",
            format!("is longer than {} characters", l.max_prompt_chars),
        ));
    }
    let negative = p.negative_prompt.unwrap_or_default();
    if negative.chars().count() > l.max_prompt_chars {
        return Err(ValidationError::new(
            "negative_prompt",
            format!("is longer than {} characters", l.max_prompt_chars),
        ));
    }
    let guidance_kind = pipeline.guidance();
    if guidance_kind != Guidance::Classifier && !negative.is_empty() {
        return Err(ValidationError::new(
            "negative_prompt",
            format!(
                "{} takes no negative prompt (its guidance is {}, with no unconditional pass)",
                info.family,
                if guidance_kind == Guidance::Distilled {
                    "distilled into the model"
                } else {
                    "off"
                }
            ),
        ));
    }
    let n = p.n.unwrap_or(1);
    if n == 0 || n > l.max_images {
        return Err(ValidationError::new(
            "n",
            format!("must be between 1 and {} (got {n})", l.max_images),
        ));
    }
    let steps = p.steps.unwrap_or(defaults.steps);
    if steps == 0 || steps > l.max_steps {
        return Err(ValidationError::new(
            "steps",
            format!("must be between 1 and {} (got {steps})", l.max_steps),
        ));
    }
    let guidance = p.guidance_scale.unwrap_or(defaults.guidance_scale);
    if !guidance.is_finite() || !(0.0..=l.max_guidance).contains(&guidance) {
        return Err(ValidationError::new(
            "guidance_scale",
            format!("must be between 0 and {} (got {guidance})", l.max_guidance),
        ));
    }
    let scheduler = match p.scheduler.as_deref() {
        None | Some("") => info.default_scheduler,
        Some(s) => s
            .parse::<SchedulerKind>()
            .map_err(|m| ValidationError::new("scheduler", m))?,
    };
    let flow = info.family.is_flow();
    let scheduler = match (flow, scheduler) {
        (true, SchedulerKind::FlowMatchEuler | SchedulerKind::Euler) => {
            SchedulerKind::FlowMatchEuler
        }
        (false, k) if !k.is_flow() => k,
        (true, k) => {
            return Err(ValidationError::new(
                "scheduler",
                format!(
                    "{} models denoise by flow matching: use flow_match_euler (got {k})",
                    info.family
                ),
            ));
        }
        (false, k) => {
            return Err(ValidationError::new(
                "scheduler",
                format!(
                    "{k} is for flow-matching models (SD3, FLUX.1); this model is {}",
                    info.family
                ),
            ));
        }
    };
    if scheduler == SchedulerKind::Lcm {
        let max = info.scheduler_config.original_inference_steps.unwrap_or(50);
        if steps as usize > max {
            return Err(ValidationError::new(
                "steps",
                format!("lcm runs at most {max} steps (got {steps})"),
            ));
        }
    }
    let factor = info.vae_scale_factor * if flow { 2 } else { 1 };
    let from_init = p.init_image.as_ref().map(|i| {
        let round = |v: u32| (v / factor * factor).clamp(l.min_size, l.max_size);
        (round(i.width()), round(i.height()))
    });
    let width = p
        .width
        .or(from_init.map(|s| s.0))
        .unwrap_or(info.native_size);
    let height = p
        .height
        .or(from_init.map(|s| s.1))
        .unwrap_or(info.native_size);
    for (field, v) in [("width", width), ("height", height)] {
        if v < l.min_size || v > l.max_size || v % factor != 0 {
            return Err(ValidationError::new(
                field,
                format!(
                    "must be a multiple of {factor} between {} and {} (got {v})",
                    l.min_size, l.max_size
                ),
            ));
        }
    }
    if let anyaccel_executor::Shapes::Static { sizes, .. } =
        &pipeline.executor().capabilities().shapes
        && !sizes.contains(&(width, height))
    {
        return Err(ValidationError::new(
            "size",
            format!(
                "{width}x{height} is not compiled for this accelerator; available: {}",
                size_list(sizes)
            ),
        ));
    }
    let init = match p.init_image {
        None => {
            if p.strength.is_some() {
                return Err(ValidationError::new(
                    "strength",
                    "only applies with an init image",
                ));
            }
            None
        }
        Some(img) => {
            if !pipeline.executor().capabilities().vae_encoder {
                return Err(ValidationError::new(
                    "image",
                    "img2img needs a VAE encoder, which this model does not ship",
                ));
            }
            let strength = p.strength.unwrap_or(defaults.strength);
            if !(strength > 0.0 && strength <= 1.0) {
                return Err(ValidationError::new(
                    "strength",
                    format!("must be in (0, 1] (got {strength})"),
                ));
            }
            if (steps as f32 * strength) < 1.0 {
                return Err(ValidationError::new(
                    "strength",
                    format!("strength × steps must be at least 1 (got {strength} × {steps})"),
                ));
            }
            Some(InitImage {
                image: images::fit(img, width, height),
                strength,
            })
        }
    };
    let micro = micro(info.family, p.micro, width, height)?;
    let cfg = guidance_kind == Guidance::Classifier && guidance > 1.0;
    if let Some(budget) = pipeline.memory()
        && let Err(e) = budget.check(info, width, height, n as usize, cfg)
    {
        let field = if n > 1 { "n" } else { "size" };
        return Err(ValidationError::new(
            field,
            format!("does not fit in memory: {e}"),
        ));
    }
    let seed = p.seed.unwrap_or_else(random_seed);
    Ok(GenerationRequest {
        cfg,
        prompt: p.prompt,
        negative_prompt: negative,
        width,
        height,
        steps,
        guidance_scale: guidance,
        scheduler,
        seeds: (0..n as u64).map(|i| seed.wrapping_add(i)).collect(),
        init,
        micro,
        resume: None,
    })
}

/// SDXL's micro-conditioning with diffusers' defaults; refused for
/// families that have none, so a caller learns the fields do nothing.
fn micro(
    family: ModelFamily,
    p: MicroParams,
    width: u32,
    height: u32,
) -> Result<Option<MicroConditioning>, ValidationError> {
    if !family.has_time_ids() {
        if p.is_empty() {
            return Ok(None);
        }
        let field = if p.original_size.is_some() {
            "original_size"
        } else if p.crop_top_left.is_some() {
            "crop_top_left"
        } else {
            "target_size"
        };
        return Err(ValidationError::new(
            field,
            format!("only applies to SDXL models; this model is {family}"),
        ));
    }
    const MAX: u32 = 16384;
    for (field, v) in [
        ("original_size", p.original_size),
        ("target_size", p.target_size),
    ] {
        if let Some((w, h)) = v
            && (w == 0 || h == 0 || w > MAX || h > MAX)
        {
            return Err(ValidationError::new(
                field,
                format!("width and height must be between 1 and {MAX} (got {w}x{h})"),
            ));
        }
    }
    if let Some((t, l)) = p.crop_top_left
        && (t > MAX || l > MAX)
    {
        return Err(ValidationError::new(
            "crop_top_left",
            format!("top and left must be at most {MAX} (got {t}, {l})"),
        ));
    }
    Ok(Some(MicroConditioning {
        original_size: p.original_size.unwrap_or((width, height)),
        crop_top_left: p.crop_top_left.unwrap_or((0, 0)),
        target_size: p.target_size.unwrap_or((width, height)),
    }))
}
