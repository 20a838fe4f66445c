//! The Stable Diffusion loop, the same on every accelerator:
//! tokenize → text encoders (per model family) → noise from seed →
//! denoise session { denoiser ; guidance ; scheduler step }* → VAE decode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyaccel_executor::{
    Component, Conditioning, Executor, ExecutorError, Positions, Tensor, TokenIds,
};
use image::RgbImage;

use crate::checkpoint::{Checkpoint, ImageCheckpoint};
use crate::family::{Guidance, ModelFamily};
use crate::images;
use crate::memory::MemoryBudget;
use crate::model::{Model, ModelInfo};
use crate::noise::NoiseGenerator;
use crate::preview;
use crate::request::{
    self, Defaults, GenerationParams, GenerationRequest, Limits, MicroConditioning, ValidationError,
};
use crate::scheduler::{FlowSigmas, ItemState, Schedule, ScheduleError};
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
    #[error("the model has no tokenizer for {0}")]
    NoTokenizer(anyaccel_executor::Component),
    #[error("the checkpoint a request resumes from does not fit this model: {0}")]
    CheckpointMismatch(String),
    #[error("{component} returned shape {shape:?}, expected {expected}")]
    Shape {
        component: &'static str,
        shape: Vec<usize>,
        expected: String,
    },
}

/// Hooks the pipeline calls while it runs (progress, cancellation,
/// checkpoints). `request` is the index of the request within the batch.
/// Steps are relative to the request's first step and count from 1; a
/// resumed request continues the count (after a checkpoint at 10 of 20 it
/// reports 11 to 20, of 20).
pub trait Observer: Sync {
    fn on_step(&self, _request: usize, _step: usize, _total: usize) {}
    /// Checked before every denoising step; a cancelled request's images leave the batch.
    fn is_cancelled(&self, _request: usize) -> bool {
        false
    }
    /// Whether to checkpoint request `request` after `step` of `total`
    /// (relative steps, as [`Observer::on_step`]). Not asked after the
    /// final step: there would be nothing left to resume.
    fn wants_checkpoint(&self, _request: usize, _step: usize, _total: usize) -> bool {
        false
    }
    /// The request's images after `step`: called after the scheduler step
    /// and before [`Observer::on_step`] for that step.
    fn on_checkpoint(&self, _request: usize, _checkpoint: Checkpoint) {}
    /// Whether to stop request `request` now and hand it back: checked
    /// where [`Observer::is_cancelled`] is (before every step), and only if
    /// that is false (cancel wins). The request's images leave the batch and
    /// its outcome is [`Outcome::Suspended`] with where it stands: with
    /// `steps_done` 0 if asked before its first step (resuming that skips
    /// only the initial latents), so a suspend always hands back a checkpoint.
    fn should_suspend(&self, _request: usize) -> bool {
        false
    }
    /// Whether `request` wants a preview of its images after `step` of `total`.
    fn wants_preview(&self, _request: usize, _step: usize, _total: usize) -> bool {
        false
    }
    /// A preview of the `image`-th image of `request` after `step` of
    /// `total`: at the image's size from the executor's preview decoder, else
    /// at latent resolution (1/8 of the image's; upscale it with
    /// [`crate::preview::upscale`], which leaves a full-size one as it is).
    fn on_preview(
        &self,
        _request: usize,
        _image: usize,
        _step: usize,
        _total: usize,
        _preview: RgbImage,
    ) {
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
    /// Stopped at [`Observer::should_suspend`]: resume it with
    /// [`GenerationRequest::resume_from`], here or on another replica.
    Suspended(Checkpoint),
}

/// Wall time per stage, for metrics and timing headers.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub text_encode: Duration,
    pub vae_encode: Duration,
    pub denoise: Duration,
    pub vae_decode: Duration,
    /// Denoising steps run (each one UNet call on the whole batch); a
    /// resumed batch counts only the steps it ran.
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
    /// The memory preflight's numbers, to refuse requests that would not fit.
    memory: Option<MemoryBudget>,
}

/// One image's state through the loop.
struct Item {
    request: usize,
    /// Which of its request's images this is.
    index: usize,
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
            memory: None,
        }
    }

    /// Checks every request against the memory `budget` (from the preflight).
    pub fn with_memory(mut self, budget: Option<MemoryBudget>) -> Self {
        self.memory = budget;
        self
    }

    pub fn memory(&self) -> Option<&MemoryBudget> {
        self.memory.as_ref()
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
        request::validate(self, p)
    }

    /// What a request's `guidance_scale` does for this model.
    pub fn guidance(&self) -> Guidance {
        let info = &self.model.info;
        info.family.guidance(info.guidance_embeds)
    }

    /// T5's prompt length for this model, if it has a T5 encoder.
    pub fn t5_len(&self) -> Option<usize> {
        let t5 = self.model.info.family.t5_encoder()?;
        let tokenizer = self.model.tokenizer(t5)?;
        Some(self.t5_len_within(tokenizer.max_len()))
    }

    /// T5's padded prompt length: the configured one, else the family's
    /// default, within what the tokenizer allows.
    fn t5_len_within(&self, max: usize) -> usize {
        let default = match self.model.info.family {
            ModelFamily::Flux => 512,
            _ => 256,
        };
        self.defaults
            .max_sequence_length
            .unwrap_or(default)
            .min(max)
    }

    /// Text conditioning for `prompts`, one row each: the family's text
    /// encoders' sequences joined (SD/SDXL on the feature axis; SD3 pads the
    /// CLIPs to T5's width and puts T5's tokens after them), plus the pooled
    /// embeddings where the family uses them. Rows marked in `zeroed` are
    /// zeros without being encoded (SDXL's empty negative prompt).
    fn encode_prompts(
        &self,
        prompts: &[&str],
        zeroed: &[bool],
    ) -> Result<(Tensor, Option<Tensor>), PipelineError> {
        let family = self.model.info.family;
        let encoded: Vec<usize> = (0..prompts.len()).filter(|&i| !zeroed[i]).collect();
        let mut sequences: Vec<(Component, Tensor)> = Vec::new();
        let mut pooled_parts: Vec<Tensor> = Vec::new();
        for &encoder in family.text_encoders() {
            let tokenizer = self
                .model
                .tokenizer(encoder)
                .ok_or(PipelineError::NoTokenizer(encoder))?;
            let len = if tokenizer.is_t5() {
                self.t5_len_within(tokenizer.max_len())
            } else {
                tokenizer.max_len()
            };
            let mut ids = Vec::with_capacity(encoded.len() * len);
            for &i in &encoded {
                let enc = tokenizer.encode(prompts[i], len)?;
                if enc.truncated {
                    tracing::warn!(%encoder, "prompt longer than {len} tokens was truncated");
                }
                ids.extend(enc.ids);
            }
            let out = self.executor.encode_text(
                encoder,
                &TokenIds {
                    batch: encoded.len(),
                    len,
                    ids,
                },
                family.hidden_layer(encoder),
            )?;
            let h = &out.hidden;
            if h.shape().len() != 3 || h.batch() != encoded.len() {
                return Err(PipelineError::Shape {
                    component: "text_encoder",
                    shape: h.shape().to_vec(),
                    expected: format!("[{}, tokens, dim]", encoded.len()),
                });
            }
            if family.pooled_from().contains(&encoder) {
                match out.pooled {
                    Some(p) if p.shape().len() == 2 && p.batch() == encoded.len() => {
                        pooled_parts.push(p)
                    }
                    other => {
                        return Err(PipelineError::Shape {
                            component: "text_encoder (pooled)",
                            shape: other.map(|p| p.shape().to_vec()).unwrap_or_default(),
                            expected: format!("pooled [{}, dim]", encoded.len()),
                        });
                    }
                }
            }
            if family.sequence_from().contains(&encoder) {
                sequences.push((encoder, out.hidden));
            }
        }
        let t5 = family.t5_encoder();
        let hidden = match sequences.iter().position(|(c, _)| Some(*c) == t5) {
            // SD3: [CLIP-L | CLIP-G] zero-padded to T5's width, then T5's tokens.
            Some(k) if sequences.len() > 1 => {
                let (_, t5_seq) = sequences.remove(k);
                let clips: Vec<Tensor> = sequences.into_iter().map(|(_, t)| t).collect();
                let clip = concat_features(&clips)?;
                let width = t5_seq.shape()[2];
                concat_tokens(&pad_features(&clip, width)?, &t5_seq)?
            }
            _ => {
                let parts: Vec<Tensor> = sequences.into_iter().map(|(_, t)| t).collect();
                concat_features(&parts)?
            }
        };
        let pooled = if pooled_parts.is_empty() {
            None
        } else {
            Some(concat_features(&pooled_parts)?)
        };
        let rows = prompts.len();
        Ok((
            scatter_rows(&hidden, &encoded, rows)?,
            pooled
                .map(|p| scatter_rows(&p, &encoded, rows))
                .transpose()?,
        ))
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

    /// A preview of denoised latents `x0` (`shape` = `[c, h/8, w/8]`): the
    /// executor's tiny decoder's at the image size where it has one, else the
    /// family's latent-to-RGB map at latent resolution (the caller upscales it
    /// off this thread, so the loop pays only for the map). A decoder that
    /// fails falls back to the map: a preview is never worth a failed image.
    fn preview(&self, x0: Vec<f32>, shape: [usize; 3], (w, h): (u32, u32)) -> Option<RgbImage> {
        if self.executor.capabilities().preview_decoder {
            let decoded = Tensor::new(vec![1, shape[0], shape[1], shape[2]], x0.clone())
                .map_err(ExecutorError::from)
                .and_then(|t| self.executor.preview_decode(&t));
            match decoded {
                Ok(img) if img.data().len() == 3 * (w * h) as usize => {
                    return Some(images::tensor_to_rgb(img.data(), w, h));
                }
                Ok(img) => tracing::warn!(
                    shape = ?img.shape(),
                    expected = ?[1, 3, h as usize, w as usize],
                    "preview decoder gave another size; previewing with the latent map"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "preview decoder failed; previewing with the latent map")
                }
            }
        }
        let (lw, lh) = (shape[2] as u32, shape[1] as u32);
        preview::latent_preview(self.model.info.family, &x0, shape, lw, lh)
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

        // Text: one call per encoder for every prompt of the batch.
        let t0 = Instant::now();
        // A span per stage, inside the batch span: traces show where a request's time went.
        let stage = tracing::info_span!("text_encode").entered();
        let mut prompts: Vec<&str> = Vec::new();
        let mut zeroed: Vec<bool> = Vec::new();
        for r in requests {
            prompts.push(&r.prompt);
            zeroed.push(false);
            if guidance {
                prompts.push(&r.negative_prompt);
                zeroed.push(info.force_zeros_for_empty_prompt && r.negative_prompt.is_empty());
            }
        }
        let (text, pooled) = self.encode_prompts(&prompts, &zeroed)?;
        timings.text_encode = t0.elapsed();
        drop(stage);

        let family = info.family;
        let packed = family == ModelFamily::Flux;
        let schedule = if family.is_flow() {
            // SD3 spreads its timesteps itself; Flux hands it linear sigmas.
            let spread = if packed {
                FlowSigmas::Linear
            } else {
                FlowSigmas::Uniform
            };
            let tokens = (latent_shape[1] / 2) * (latent_shape[2] / 2);
            Schedule::flow_match(&info.scheduler_config, first.steps as usize, spread, tokens)?
        } else {
            Schedule::new(
                first.scheduler,
                &info.scheduler_config,
                first.steps as usize,
            )?
        };
        // A fresh request's first step (img2img's is past 0): steps count from here.
        let start = first
            .init
            .as_ref()
            .map_or(0, |i| schedule.start_index(i.strength));
        // A resumed batch continues where its checkpoints stand; the batch key makes that one index.
        let begin = key.resume_index.map_or(start, |i| i as usize);
        for req in requests {
            if let Some(c) = req.resume() {
                check_checkpoint(c, &schedule, start, begin, latent_len)?;
            }
        }

        // Initial latents, each image from its own seeded generator, or a
        // resumed request's from its checkpoint.
        let t0 = Instant::now();
        let stage = tracing::info_span!("vae_encode").entered();
        let stride = if guidance { 2 } else { 1 };
        let mut items = Vec::new();
        for (r, req) in requests.iter().enumerate() {
            if let Some(c) = req.resume() {
                for (index, img) in c.images.iter().enumerate() {
                    items.push(Item {
                        request: r,
                        index,
                        seed: img.seed,
                        guidance: req.guidance_scale,
                        cond: r * stride,
                        uncond: r * stride + 1,
                        latents: img.latents.clone(),
                        noise: img.noise.clone(),
                        state: img.state.clone(),
                    });
                }
                continue;
            }
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
            for (index, &seed) in req.seeds.iter().enumerate() {
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
                                (m + (0.5 * lv.clamp(-30.0, 20.0)).exp() * e
                                    - info.vae_shift_factor)
                                    * info.vae_scaling_factor
                            })
                            .collect();
                        let n = noise.randn(latent_len);
                        schedule.add_noise(start, &x0, &n)
                    }
                };
                items.push(Item {
                    request: r,
                    index,
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
        drop(stage);
        timings.batch_images = items.len();

        let mut stopped: Vec<Option<Stop>> = vec![None; requests.len()];
        let total = schedule.steps() - start;
        // Denoiser rows: unconditional rows first, then conditional, as diffusers orders them.
        let mut prompt_rows: Vec<usize> = Vec::with_capacity(items.len() * stride);
        let mut micro_rows: Vec<Option<MicroConditioning>> = Vec::new();
        if guidance {
            for it in &items {
                prompt_rows.push(it.uncond);
                micro_rows.push(requests[it.request].micro);
            }
        }
        for it in &items {
            prompt_rows.push(it.cond);
            micro_rows.push(requests[it.request].micro);
        }
        let conditioning = Conditioning {
            encoder_hidden_states: text.gather(&prompt_rows).map_err(ExecutorError::from)?,
            pooled: pooled
                .as_ref()
                .map(|p| p.gather(&prompt_rows))
                .transpose()
                .map_err(ExecutorError::from)?,
            time_ids: if info.family.has_time_ids() {
                let ids: Vec<f32> = micro_rows
                    .iter()
                    .flat_map(|m| m.map(|m| m.time_ids()).unwrap_or([0.0; 6]))
                    .collect();
                Some(Tensor::new(vec![micro_rows.len(), 6], ids).map_err(ExecutorError::from)?)
            } else {
                None
            },
            guidance: if self.guidance() == Guidance::Distilled {
                let g: Vec<f32> = items.iter().map(|it| it.guidance).collect();
                Some(Tensor::new(vec![g.len()], g).map_err(ExecutorError::from)?)
            } else {
                None
            },
            positions: if packed {
                Some(flux_positions(
                    text.shape()[1],
                    latent_shape[1],
                    latent_shape[2],
                )?)
            } else {
                None
            },
        };
        let t0 = Instant::now();
        let stage = tracing::info_span!("denoise").entered();
        let mut session = self.executor.denoise(conditioning)?;
        for i in begin..schedule.steps() {
            for (r, stop) in stopped.iter_mut().enumerate() {
                if stop.is_some() {
                    continue;
                }
                if observer.is_cancelled(r) {
                    *stop = Some(Stop::Cancelled);
                    tracing::info!(request = r, step = i - start, "cancelled");
                } else if observer.should_suspend(r) {
                    let c = checkpoint(requests[r], &items, r, i, i - start);
                    *stop = Some(Stop::Suspended(c));
                    tracing::info!(request = r, step = i - start, "suspended");
                }
            }
            if items.iter().any(|it| stopped[it.request].is_some()) {
                // The session keeps the rows of the images that stay, in order.
                let n = items.len();
                let kept: Vec<usize> = (0..n)
                    .filter(|&k| stopped[items[k].request].is_none())
                    .collect();
                let mut rows = Vec::with_capacity(kept.len() * stride);
                if guidance {
                    rows.extend(kept.iter().copied());
                    rows.extend(kept.iter().map(|k| n + k));
                } else {
                    rows.extend(kept.iter().copied());
                }
                items.retain(|it| stopped[it.request].is_none());
                if items.is_empty() {
                    break;
                }
                session.select(&rows)?;
            }
            let scale = schedule.input_scale(i);
            let rows = items.len() * stride;
            let mut sample = Vec::with_capacity(rows * latent_len);
            for _ in 0..stride {
                for it in &items {
                    if packed {
                        pack(&it.latents, latent_shape, &mut sample);
                    } else {
                        sample.extend(it.latents.iter().map(|v| v * scale));
                    }
                }
            }
            let shape = if packed {
                let tokens = (latent_shape[1] / 2) * (latent_shape[2] / 2);
                vec![rows, tokens, latent_shape[0] * 4]
            } else {
                vec![rows, latent_shape[0], latent_shape[1], latent_shape[2]]
            };
            let sample = Tensor::new(shape, sample).map_err(ExecutorError::from)?;
            // Flux's transformer takes the timestep over 1000 (it scales back itself).
            let t = schedule.timesteps()[i];
            let t = if packed { t / 1000.0 } else { t };
            let out = session.step(&sample, &vec![t; rows])?;
            if out.shape() != sample.shape() {
                return Err(PipelineError::Shape {
                    component: family.denoiser().folder(),
                    shape: out.shape().to_vec(),
                    expected: format!("{:?}", sample.shape()),
                });
            }
            let out = if packed {
                let mut data = Vec::with_capacity(out.data().len());
                for j in 0..rows {
                    data.extend(unpack(out.item(j), latent_shape));
                }
                let shape = vec![rows, latent_shape[0], latent_shape[1], latent_shape[2]];
                Tensor::new(shape, data).map_err(ExecutorError::from)?
            } else {
                out
            };
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
                let step = i - start + 1;
                if observer.wants_preview(it.request, step, total) {
                    let x0 = schedule.denoised(i, &eps, &it.latents);
                    if let Some(img) = self.preview(x0, latent_shape, (w, h)) {
                        observer.on_preview(it.request, it.index, step, total, img);
                    }
                }
                schedule.step(i, &eps, &mut it.latents, &mut it.state, &mut it.noise);
            }
            timings.steps += 1;
            let step = i - start + 1;
            // Requests still in the batch, in order (their images are contiguous).
            let mut running: Vec<usize> = items.iter().map(|it| it.request).collect();
            running.dedup();
            if step < total {
                for &r in &running {
                    if observer.wants_checkpoint(r, step, total) {
                        observer.on_checkpoint(r, checkpoint(requests[r], &items, r, i + 1, step));
                    }
                }
            }
            for &r in &running {
                observer.on_step(r, step, total);
            }
        }
        drop(session);
        timings.denoise = t0.elapsed();
        drop(stage);

        // Decode one image at a time: VAE activations dominate peak memory.
        let t0 = Instant::now();
        let stage = tracing::info_span!("vae_decode").entered();
        let mut done: Vec<Vec<GeneratedImage>> = vec![Vec::new(); requests.len()];
        for it in items {
            let latents: Vec<f32> = it
                .latents
                .iter()
                .map(|v| v / info.vae_scaling_factor + info.vae_shift_factor)
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
        drop(stage);
        let outcomes = done
            .into_iter()
            .zip(stopped)
            .map(|(imgs, stop)| match stop {
                None => Outcome::Completed(imgs),
                Some(Stop::Cancelled) => Outcome::Cancelled,
                Some(Stop::Suspended(c)) => Outcome::Suspended(c),
            })
            .collect();
        Ok(BatchOutput { outcomes, timings })
    }
}

/// Why a request left the batch before its last step.
#[derive(Clone)]
enum Stop {
    Cancelled,
    Suspended(Checkpoint),
}

/// Where request `r`'s images of `items` stand, `steps_done` steps in, with
/// schedule index `next_index` the next to run.
fn checkpoint(
    req: &GenerationRequest,
    items: &[Item],
    r: usize,
    next_index: usize,
    steps_done: usize,
) -> Checkpoint {
    Checkpoint {
        scheduler: req.scheduler,
        width: req.width,
        height: req.height,
        steps: req.steps,
        steps_done: steps_done as u32,
        next_index: next_index as u32,
        images: items
            .iter()
            .filter(|it| it.request == r)
            .map(|it| ImageCheckpoint {
                seed: it.seed,
                latents: it.latents.clone(),
                state: it.state.clone(),
                noise: it.noise.clone(),
            })
            .collect(),
    }
}

/// A resumed request's checkpoint against the batch's schedule and the
/// model's latent size: what [`GenerationRequest::resume_from`] cannot know.
fn check_checkpoint(
    c: &Checkpoint,
    schedule: &Schedule,
    start: usize,
    begin: usize,
    latent_len: usize,
) -> Result<(), PipelineError> {
    let mismatch = |m: String| Err(PipelineError::CheckpointMismatch(m));
    let (next, done) = (c.next_index as usize, c.steps_done as usize);
    if c.steps as usize != schedule.steps() || next != begin || next != start + done {
        return mismatch(format!(
            "it continues at schedule index {next} of {} after {done} steps; this batch runs from {begin} of {}, counting from {start}",
            c.steps,
            schedule.steps()
        ));
    }
    for img in &c.images {
        let prev = img.state.prev_x0().map(<[f32]>::len);
        if img.latents.len() != latent_len || prev.is_some_and(|n| n != latent_len) {
            return mismatch(format!(
                "seed {}: {} latent values (previous x0: {prev:?}) where this model's image has {latent_len}",
                img.seed,
                img.latents.len()
            ));
        }
    }
    Ok(())
}

/// `[n, tokens, d_i]` tensors joined along the last axis into `[n, tokens, sum d_i]`.
fn concat_features(parts: &[Tensor]) -> Result<Tensor, PipelineError> {
    let [first, rest @ ..] = parts else {
        return Err(PipelineError::Shape {
            component: "text_encoder",
            shape: Vec::new(),
            expected: "at least one text encoder".into(),
        });
    };
    if rest.is_empty() {
        return Ok(first.clone());
    }
    let lead = &first.shape()[..first.shape().len() - 1];
    for p in rest {
        if p.shape().len() != first.shape().len() || &p.shape()[..lead.len()] != lead {
            return Err(PipelineError::Shape {
                component: "text_encoder_2",
                shape: p.shape().to_vec(),
                expected: format!("{lead:?} + [dim] like text_encoder's"),
            });
        }
    }
    let dims: Vec<usize> = parts.iter().map(|p| p.shape()[lead.len()]).collect();
    let positions: usize = lead.iter().product();
    let mut data = Vec::with_capacity(positions * dims.iter().sum::<usize>());
    for pos in 0..positions {
        for (p, &d) in parts.iter().zip(&dims) {
            data.extend_from_slice(&p.data()[pos * d..(pos + 1) * d]);
        }
    }
    let mut shape = lead.to_vec();
    shape.push(dims.iter().sum());
    Ok(Tensor::new(shape, data).map_err(ExecutorError::from)?)
}

/// `[n, tokens, d]` zero-padded on the feature axis to `[n, tokens, width]`.
fn pad_features(t: &Tensor, width: usize) -> Result<Tensor, PipelineError> {
    let shape = t.shape();
    let d = shape[2];
    if d > width {
        return Err(PipelineError::Shape {
            component: "text_encoder_3",
            shape: shape.to_vec(),
            expected: format!("T5 features at least as wide as the CLIPs' {d}"),
        });
    }
    let positions = shape[0] * shape[1];
    let mut data = vec![0.0; positions * width];
    for p in 0..positions {
        data[p * width..p * width + d].copy_from_slice(&t.data()[p * d..(p + 1) * d]);
    }
    Ok(Tensor::new(vec![shape[0], shape[1], width], data).map_err(ExecutorError::from)?)
}

/// `[n, a, d]` and `[n, b, d]` joined on the token axis into `[n, a + b, d]`.
fn concat_tokens(first: &Tensor, second: &Tensor) -> Result<Tensor, PipelineError> {
    let (f, s) = (first.shape(), second.shape());
    if s.len() != 3 || f[0] != s[0] || f[2] != s[2] {
        return Err(PipelineError::Shape {
            component: "text_encoder_3",
            shape: s.to_vec(),
            expected: format!("[{}, tokens, {}]", f[0], f[2]),
        });
    }
    let mut data = Vec::with_capacity(first.data().len() + second.data().len());
    for row in 0..f[0] {
        data.extend_from_slice(first.item(row));
        data.extend_from_slice(second.item(row));
    }
    Ok(Tensor::new(vec![f[0], f[1] + s[1], f[2]], data).map_err(ExecutorError::from)?)
}

/// Flux's packing of one image's `[c, h, w]` latents into `(h/2)·(w/2)`
/// tokens of `c·4` features: 2×2 patches, row-major, features ordered
/// (channel, patch row, patch column).
fn pack(latents: &[f32], [c, h, w]: [usize; 3], out: &mut Vec<f32>) {
    for i in 0..h / 2 {
        for j in 0..w / 2 {
            for ch in 0..c {
                for di in 0..2 {
                    for dj in 0..2 {
                        out.push(latents[(ch * h + 2 * i + di) * w + 2 * j + dj]);
                    }
                }
            }
        }
    }
}

/// The inverse of [`pack`] for one image.
fn unpack(tokens: &[f32], [c, h, w]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0.0; c * h * w];
    let mut k = 0;
    for i in 0..h / 2 {
        for j in 0..w / 2 {
            for ch in 0..c {
                for di in 0..2 {
                    for dj in 0..2 {
                        out[(ch * h + 2 * i + di) * w + 2 * j + dj] = tokens[k];
                        k += 1;
                    }
                }
            }
        }
    }
    out
}

/// Flux's position ids for `text` tokens and an `h × w` latent: text ids
/// are zeros; each image patch is `[0, row, column]`.
fn flux_positions(text: usize, h: usize, w: usize) -> Result<Positions, ExecutorError> {
    let mut img = Vec::with_capacity(h / 2 * w / 2 * 3);
    for i in 0..h / 2 {
        for j in 0..w / 2 {
            img.extend([0.0, i as f32, j as f32]);
        }
    }
    Ok(Positions {
        txt_ids: Tensor::zeros(vec![text, 3]),
        img_ids: Tensor::new(vec![h / 2 * w / 2, 3], img)?,
    })
}

/// A `[rows, ...]` tensor whose rows `at` are `t`'s rows, in order, and zeros elsewhere.
fn scatter_rows(t: &Tensor, at: &[usize], rows: usize) -> Result<Tensor, PipelineError> {
    if at.len() == rows {
        return Ok(t.clone());
    }
    let n = t.item_len();
    let mut data = vec![0.0; rows * n];
    for (src, &dst) in at.iter().enumerate() {
        data[dst * n..(dst + 1) * n].copy_from_slice(t.item(src));
    }
    let mut shape = t.shape().to_vec();
    shape[0] = rows;
    Ok(Tensor::new(shape, data).map_err(ExecutorError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_concatenate_per_token() {
        let a = Tensor::new(vec![1, 2, 1], vec![1.0, 2.0]).unwrap();
        let b = Tensor::new(vec![1, 2, 2], vec![3.0, 4.0, 5.0, 6.0]).unwrap();
        let c = concat_features(&[a, b]).unwrap();
        assert_eq!(c.shape(), &[1, 2, 3]);
        assert_eq!(c.data(), &[1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
        let bad = Tensor::zeros(vec![1, 3, 2]);
        assert!(concat_features(&[c, bad]).is_err());
    }

    #[test]
    fn flux_packing_is_diffusers_patch_order_and_round_trips() {
        // [c=2, h=2, w=4]: one row of two patches.
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let mut p = Vec::new();
        pack(&x, [2, 2, 4], &mut p);
        // Patch (0, 0): channel 0 rows 0-1 cols 0-1, then channel 1.
        assert_eq!(&p[..8], &[0.0, 1.0, 4.0, 5.0, 8.0, 9.0, 12.0, 13.0]);
        assert_eq!(unpack(&p, [2, 2, 4]), x);
        let pos = flux_positions(3, 4, 4).unwrap();
        assert_eq!(pos.txt_ids.shape(), &[3, 3]);
        assert_eq!(pos.img_ids.data()[9..], [0.0, 1.0, 1.0]);
    }

    #[test]
    fn sd3_text_joins_padded_clip_and_t5_tokens() {
        let clip = Tensor::new(vec![1, 1, 2], vec![1.0, 2.0]).unwrap();
        let t5 = Tensor::new(vec![1, 2, 3], vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap();
        let joined = concat_tokens(&pad_features(&clip, 3).unwrap(), &t5).unwrap();
        assert_eq!(joined.shape(), &[1, 3, 3]);
        assert_eq!(
            joined.data(),
            &[1.0, 2.0, 0.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        );
        assert!(pad_features(&t5, 2).is_err());
    }

    /// What `resume_from` cannot see: the model's latent size and the batch's schedule.
    #[test]
    fn a_checkpoint_that_does_not_fit_the_batch_is_refused() {
        use crate::scheduler::{SchedulerConfig, SchedulerKind};
        let schedule = Schedule::new(SchedulerKind::Euler, &SchedulerConfig::default(), 6).unwrap();
        let c = Checkpoint {
            scheduler: SchedulerKind::Euler,
            width: 64,
            height: 64,
            steps: 6,
            steps_done: 2,
            next_index: 2,
            images: vec![ImageCheckpoint {
                seed: 1,
                latents: vec![0.0; 256],
                state: ItemState::default(),
                noise: NoiseGenerator::new(1),
            }],
        };
        assert!(check_checkpoint(&c, &schedule, 0, 2, 256).is_ok());
        for (start, begin, len) in [(0, 2, 1024), (0, 3, 256), (1, 2, 256)] {
            assert!(matches!(
                check_checkpoint(&c, &schedule, start, begin, len),
                Err(PipelineError::CheckpointMismatch(_))
            ));
        }
    }

    #[test]
    fn scattered_rows_are_zero_elsewhere() {
        let t = Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let s = scatter_rows(&t, &[0, 2], 3).unwrap();
        assert_eq!(s.data(), &[1.0, 2.0, 0.0, 0.0, 3.0, 4.0]);
    }
}
