//! The Stable Diffusion loop, the same on every accelerator:
//! tokenize → text encoder → noise from seed → { UNet ; guidance ; scheduler step }* → VAE decode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyaccel_executor::{Executor, ExecutorError, Tensor, TokenIds, UnetInput};
use image::RgbImage;

use crate::images;
use crate::model::{Model, ModelInfo};
use crate::noise::NoiseGenerator;
use crate::request::{
    Defaults, GenerationParams, GenerationRequest, InitImage, Limits, ValidationError, random_seed,
};
use crate::scheduler::{ItemState, Schedule, ScheduleError, SchedulerKind};
use crate::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("requests in one batch must share size, steps, scheduler, guidance and strength")]
    IncompatibleBatch,
    #[error("{component} returned shape {shape:?}, expected {expected}")]
    Shape {
        component: &'static str,
        shape: Vec<usize>,
        expected: String,
    },
}

/// Hooks the pipeline calls while it runs (progress, cancellation).
/// `request` is the index of the request within the batch.
pub trait Observer: Sync {
    fn on_step(&self, _request: usize, _step: usize, _total: usize) {}
    /// Checked before every denoising step; a cancelled request's images leave the batch.
    fn is_cancelled(&self, _request: usize) -> bool {
        false
    }
}

/// An observer that watches nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// One generated image.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub seed: u64,
    pub image: RgbImage,
}

/// What happened to one request of a batch.
#[derive(Debug)]
pub enum Outcome {
    Completed(Vec<GeneratedImage>),
    Cancelled,
}

/// Wall time per stage, for metrics and timing headers.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub text_encode: Duration,
    pub vae_encode: Duration,
    pub denoise: Duration,
    pub vae_decode: Duration,
    /// Denoising steps run (each one UNet call on the whole batch).
    pub steps: usize,
    /// Images in the UNet batch at the first step (before any cancellation).
    pub batch_images: usize,
}

#[derive(Debug)]
pub struct BatchOutput {
    pub outcomes: Vec<Outcome>,
    pub timings: Timings,
}

/// A loaded model on an executor.
pub struct Pipeline {
    executor: Arc<dyn Executor>,
    model: Model,
    limits: Limits,
    defaults: Defaults,
}

/// One image's state through the loop.
struct Item {
    request: usize,
    seed: u64,
    guidance: f32,
    /// Rows of the text-encoder output: (conditional, unconditional).
    cond: usize,
    uncond: usize,
    latents: Vec<f32>,
    noise: NoiseGenerator,
    state: ItemState,
}

impl Pipeline {
    pub fn new(
        executor: Arc<dyn Executor>,
        model: Model,
        limits: Limits,
        defaults: Defaults,
    ) -> Self {
        Self {
            executor,
            model,
            limits,
            defaults,
        }
    }

    pub fn model(&self) -> &ModelInfo {
        &self.model.info
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    /// Checks a caller's request against the model and limits, filling defaults.
    pub fn validate(&self, p: GenerationParams) -> Result<GenerationRequest, ValidationError> {
        let l = &self.limits;
        let info = &self.model.info;
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
        let n = p.n.unwrap_or(1);
        if n == 0 || n > l.max_images {
            return Err(ValidationError::new(
                "n",
                format!("must be between 1 and {} (got {n})", l.max_images),
            ));
        }
        let steps = p.steps.unwrap_or(self.defaults.steps);
        if steps == 0 || steps > l.max_steps {
            return Err(ValidationError::new(
                "steps",
                format!("must be between 1 and {} (got {steps})", l.max_steps),
            ));
        }
        let guidance = p.guidance_scale.unwrap_or(self.defaults.guidance_scale);
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
        if scheduler == SchedulerKind::Lcm {
            let max = info.scheduler_config.original_inference_steps.unwrap_or(50);
            if steps as usize > max {
                return Err(ValidationError::new(
                    "steps",
                    format!("lcm runs at most {max} steps (got {steps})"),
                ));
            }
        }
        let factor = info.vae_scale_factor;
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
            &self.executor.capabilities().shapes
            && !sizes.contains(&(width, height))
        {
            let list: Vec<String> = sizes.iter().map(|(w, h)| format!("{w}x{h}")).collect();
            return Err(ValidationError::new(
                "size",
                format!(
                    "{width}x{height} is not compiled for this accelerator; available: {}",
                    list.join(", ")
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
                if !self.executor.capabilities().vae_encoder {
                    return Err(ValidationError::new(
                        "image",
                        "img2img needs a VAE encoder, which this model does not ship",
                    ));
                }
                let strength = p.strength.unwrap_or(self.defaults.strength);
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
        let seed = p.seed.unwrap_or_else(random_seed);
        Ok(GenerationRequest {
            prompt: p.prompt,
            negative_prompt: negative,
            width,
            height,
            steps,
            guidance_scale: guidance,
            scheduler,
            seeds: (0..n as u64).map(|i| seed.wrapping_add(i)).collect(),
            init,
        })
    }

    /// Runs one request.
    pub fn generate(
        &self,
        request: &GenerationRequest,
    ) -> Result<Vec<GeneratedImage>, PipelineError> {
        let out = self.run_batch(&[request], &Quiet)?;
        match out.outcomes.into_iter().next() {
            Some(Outcome::Completed(images)) => Ok(images),
            _ => Ok(Vec::new()),
        }
    }

    /// Runs compatible requests (equal [`GenerationRequest::batch_key`]) as one batch.
    pub fn run_batch(
        &self,
        requests: &[&GenerationRequest],
        observer: &dyn Observer,
    ) -> Result<BatchOutput, PipelineError> {
        let Some(first) = requests.first() else {
            return Ok(BatchOutput {
                outcomes: Vec::new(),
                timings: Timings::default(),
            });
        };
        let key = first.batch_key();
        if requests.iter().any(|r| r.batch_key() != key) {
            return Err(PipelineError::IncompatibleBatch);
        }
        let info = &self.model.info;
        let mut timings = Timings::default();
        let guidance = first.uses_guidance();
        let (w, h) = (first.width, first.height);
        let f = info.vae_scale_factor;
        let latent_shape = [info.latent_channels, (h / f) as usize, (w / f) as usize];
        let latent_len: usize = latent_shape.iter().product();

        // Text: one encoder call for every prompt of the batch.
        let t0 = Instant::now();
        let mut prompts: Vec<&str> = Vec::new();
        for r in requests {
            prompts.push(&r.prompt);
            if guidance {
                prompts.push(&r.negative_prompt);
            }
        }
        let mut ids = Vec::with_capacity(prompts.len() * self.model.tokenizer.max_len());
        for p in &prompts {
            let enc = self.model.tokenizer.encode(p)?;
            if enc.truncated {
                tracing::warn!(
                    "prompt longer than {} tokens was truncated",
                    self.model.tokenizer.max_len()
                );
            }
            ids.extend(enc.ids);
        }
        let text = self.executor.encode_text(&TokenIds {
            batch: prompts.len(),
            len: self.model.tokenizer.max_len(),
            ids,
        })?;
        if text.shape().len() != 3 || text.batch() != prompts.len() {
            return Err(PipelineError::Shape {
                component: "text_encoder",
                shape: text.shape().to_vec(),
                expected: format!("[{}, tokens, dim]", prompts.len()),
            });
        }
        timings.text_encode = t0.elapsed();

        let schedule = Schedule::new(
            first.scheduler,
            &info.scheduler_config,
            first.steps as usize,
        )?;
        let start = first
            .init
            .as_ref()
            .map_or(0, |i| schedule.start_index(i.strength));

        // Initial latents, each image from its own seeded generator.
        let t0 = Instant::now();
        let stride = if guidance { 2 } else { 1 };
        let mut items = Vec::new();
        for (r, req) in requests.iter().enumerate() {
            let posterior = match &req.init {
                Some(init) => {
                    let pixels = images::rgb_to_tensor(&init.image);
                    let x = Tensor::new(vec![1, 3, h as usize, w as usize], pixels)
                        .map_err(ExecutorError::from)?;
                    let p = self.executor.vae_encode(&x)?;
                    if p.data().len() != 2 * latent_len {
                        return Err(PipelineError::Shape {
                            component: "vae_encoder",
                            shape: p.shape().to_vec(),
                            expected: format!(
                                "[1, {}, {}, {}]",
                                2 * latent_shape[0],
                                latent_shape[1],
                                latent_shape[2]
                            ),
                        });
                    }
                    Some(p.into_data())
                }
                None => None,
            };
            for &seed in &req.seeds {
                let mut noise = NoiseGenerator::new(seed);
                let latents = match &posterior {
                    None => {
                        let sigma = schedule.init_noise_sigma();
                        noise
                            .randn(latent_len)
                            .into_iter()
                            .map(|v| v * sigma)
                            .collect()
                    }
                    Some(params) => {
                        let (mean, logvar) = params.split_at(latent_len);
                        let eps = noise.randn(latent_len);
                        let x0: Vec<f32> = mean
                            .iter()
                            .zip(logvar)
                            .zip(eps)
                            .map(|((m, lv), e)| {
                                (m + (0.5 * lv.clamp(-30.0, 20.0)).exp() * e)
                                    * info.vae_scaling_factor
                            })
                            .collect();
                        let n = noise.randn(latent_len);
                        schedule.add_noise(start, &x0, &n)
                    }
                };
                items.push(Item {
                    request: r,
                    seed,
                    guidance: req.guidance_scale,
                    cond: r * stride,
                    uncond: r * stride + 1,
                    latents,
                    noise,
                    state: ItemState::default(),
                });
            }
        }
        timings.vae_encode = t0.elapsed();
        timings.batch_images = items.len();

        let mut cancelled = vec![false; requests.len()];
        let total = schedule.steps() - start;
        // The UNet's text conditioning only changes when images leave the batch.
        let mut cond_rows: Vec<usize> = Vec::new();
        let mut cond = Tensor::zeros(vec![0]);
        let t0 = Instant::now();
        for i in start..schedule.steps() {
            for (r, c) in cancelled.iter_mut().enumerate() {
                if !*c && observer.is_cancelled(r) {
                    *c = true;
                    tracing::info!(request = r, step = i - start, "cancelled");
                }
            }
            items.retain(|it| !cancelled[it.request]);
            if items.is_empty() {
                break;
            }
            let scale = schedule.input_scale(i);
            let rows = items.len() * stride;
            let mut sample = Vec::with_capacity(rows * latent_len);
            let mut hidden_rows: Vec<usize> = Vec::with_capacity(rows);
            // Unconditional rows first, then conditional, as diffusers orders them.
            if guidance {
                for it in &items {
                    sample.extend(it.latents.iter().map(|v| v * scale));
                    hidden_rows.push(it.uncond);
                }
            }
            for it in &items {
                sample.extend(it.latents.iter().map(|v| v * scale));
                hidden_rows.push(it.cond);
            }
            let sample = Tensor::new(
                vec![rows, latent_shape[0], latent_shape[1], latent_shape[2]],
                sample,
            )
            .map_err(ExecutorError::from)?;
            if cond_rows != hidden_rows {
                cond = gather_rows(&text, &hidden_rows)?;
                cond_rows = hidden_rows;
            }
            let out = self.executor.unet(UnetInput {
                sample: &sample,
                timestep: schedule.timesteps()[i],
                encoder_hidden_states: &cond,
            })?;
            if out.shape() != sample.shape() {
                return Err(PipelineError::Shape {
                    component: "unet",
                    shape: out.shape().to_vec(),
                    expected: format!("{:?}", sample.shape()),
                });
            }
            let n_items = items.len();
            for (j, it) in items.iter_mut().enumerate() {
                let eps: Vec<f32> = if guidance {
                    let u = out.item(j);
                    let c = out.item(n_items + j);
                    u.iter()
                        .zip(c)
                        .map(|(u, c)| u + it.guidance * (c - u))
                        .collect()
                } else {
                    out.item(j).to_vec()
                };
                schedule.step(i, &eps, &mut it.latents, &mut it.state, &mut it.noise);
            }
            timings.steps += 1;
            let mut notified = vec![false; requests.len()];
            for it in &items {
                if !notified[it.request] {
                    notified[it.request] = true;
                    observer.on_step(it.request, i - start + 1, total);
                }
            }
        }
        timings.denoise = t0.elapsed();

        // Decode one image at a time: VAE activations dominate peak memory.
        let t0 = Instant::now();
        let mut done: Vec<Vec<GeneratedImage>> = vec![Vec::new(); requests.len()];
        for it in items {
            let latents: Vec<f32> = it
                .latents
                .iter()
                .map(|v| v / info.vae_scaling_factor)
                .collect();
            let x = Tensor::new(
                vec![1, latent_shape[0], latent_shape[1], latent_shape[2]],
                latents,
            )
            .map_err(ExecutorError::from)?;
            let img = self.executor.vae_decode(&x)?;
            if img.data().len() != 3 * (w * h) as usize {
                return Err(PipelineError::Shape {
                    component: "vae_decoder",
                    shape: img.shape().to_vec(),
                    expected: format!("[1, 3, {h}, {w}]"),
                });
            }
            done[it.request].push(GeneratedImage {
                seed: it.seed,
                image: images::tensor_to_rgb(img.data(), w, h),
            });
        }
        timings.vae_decode = t0.elapsed();
        let outcomes = done
            .into_iter()
            .zip(cancelled)
            .map(|(imgs, c)| {
                if c {
                    Outcome::Cancelled
                } else {
                    Outcome::Completed(imgs)
                }
            })
            .collect();
        Ok(BatchOutput { outcomes, timings })
    }

    /// The A1111-style `parameters` text for one image of a request.
    pub fn infotext(&self, request: &GenerationRequest, seed: u64) -> String {
        let info = &self.model.info;
        let mut s = request.prompt.clone();
        if !request.negative_prompt.is_empty() {
            s.push_str("\nNegative prompt: ");
            s.push_str(&request.negative_prompt);
        }
        s.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model hash: {}, Model: {}",
            request.steps,
            request.scheduler.a1111_name(),
            request.guidance_scale,
            seed,
            request.width,
            request.height,
            info.hash,
            info.id,
        ));
        if let Some(init) = &request.init {
            s.push_str(&format!(", Denoising strength: {}", init.strength));
        }
        let caps = self.executor.capabilities();
        s.push_str(&format!(
            ", Accelerator: {} {}, Version: anyaccel {}",
            caps.device,
            caps.dtype,
            env!("CARGO_PKG_VERSION")
        ));
        s
    }
}

/// Rows `rows` of a `[n, ...]` tensor, in that order.
fn gather_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor, PipelineError> {
    let n = t.item_len();
    let mut data = Vec::with_capacity(rows.len() * n);
    for &r in rows {
        data.extend_from_slice(t.item(r));
    }
    let mut shape = t.shape().to_vec();
    shape[0] = rows.len();
    Ok(Tensor::new(shape, data).map_err(ExecutorError::from)?)
}
