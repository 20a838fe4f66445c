//! What every generating endpoint shares: turning API fields into a
//! validated request, running it (cancelled if the client goes away), and
//! encoding the images with the facts of how they were made.

use std::sync::Arc;
use std::time::Instant;

use anyaccel_batcher::{
    ErrorCode, Held, Job, JobError, JobResult, JobStatus, Previews, SubmitOptions,
};
use anyaccel_pipeline::images::{self, OutputFormat};
use anyaccel_pipeline::request::size_list;
use anyaccel_pipeline::{GenerationParams, GenerationRequest, Pipeline};
use anyaccel_provenance::{ImageFacts, ImageFormat as ProvenanceFormat, ProvenanceError, Signer};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::ApiError;

/// The generation fields the OpenAI and jobs APIs share, as sent (sizes as
/// `WxH` text): each endpoint fills one from its body or form, and this
/// turns it into pipeline parameters in one place.
#[derive(Debug, Default)]
pub struct Fields {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub n: Option<u32>,
    pub size: Option<String>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub seed: Option<u64>,
    pub scheduler: Option<String>,
    pub init_image: Option<image::RgbImage>,
    pub strength: Option<f32>,
    pub original_size: Option<String>,
    pub crop_top_left: Option<[u32; 2]>,
    pub target_size: Option<String>,
}

impl Fields {
    pub fn params(self, state: &AppState) -> Result<GenerationParams, ApiError> {
        let prompt = self
            .prompt
            .ok_or_else(|| ApiError::invalid("prompt", "is required"))?;
        if prompt.trim().is_empty() {
            return Err(ApiError::invalid("prompt", "must not be empty"));
        }
        let size = parse_size(state, self.size.as_deref(), "size")?;
        Ok(GenerationParams {
            prompt,
            negative_prompt: self.negative_prompt,
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            scheduler: self.scheduler,
            seed: self.seed,
            n: self.n,
            init_image: self.init_image,
            strength: self.strength,
            micro: micro(
                self.original_size.as_deref(),
                self.crop_top_left,
                self.target_size.as_deref(),
            )?,
        })
    }
}

/// Parses `WxH` against the sizes this server offers.
pub fn parse_size(
    state: &AppState,
    size: Option<&str>,
    field: &str,
) -> Result<Option<(u32, u32)>, ApiError> {
    let allowed = &state.config.sizes;
    let list = || size_list(allowed);
    let Some(s) = size
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "auto")
    else {
        return Ok(None);
    };
    let parsed = s
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)));
    match parsed {
        Some(wh) if allowed.contains(&wh) => Ok(Some(wh)),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("size `{s}` is not offered; allowed: {}", list()),
        )),
        None => Err(ApiError::invalid(
            field,
            format!("`{s}` is not a size like 512x512; allowed: {}", list()),
        )),
    }
}

/// A `WxH` micro-conditioning size (SDXL's `original_size`, `target_size`).
fn parse_dims(s: &str, field: &str) -> Result<(u32, u32), ApiError> {
    s.trim()
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)))
        .ok_or_else(|| ApiError::invalid(field, format!("`{s}` is not a size like 1024x1024")))
}

/// SDXL micro-conditioning fields as the JSON APIs take them: sizes as `WxH`,
/// the crop as `[top, left]`.
pub fn micro(
    original_size: Option<&str>,
    crop_top_left: Option<[u32; 2]>,
    target_size: Option<&str>,
) -> Result<anyaccel_pipeline::MicroParams, ApiError> {
    Ok(anyaccel_pipeline::MicroParams {
        original_size: original_size
            .map(|s| parse_dims(s, "original_size"))
            .transpose()?,
        crop_top_left: crop_top_left.map(|[t, l]| (t, l)),
        target_size: target_size
            .map(|s| parse_dims(s, "target_size"))
            .transpose()?,
    })
}

/// `top,left` as a multipart form sends a crop.
pub fn parse_crop(s: &str) -> Result<[u32; 2], ApiError> {
    s.split_once(',')
        .and_then(|(t, l)| Some([t.trim().parse().ok()?, l.trim().parse().ok()?]))
        .ok_or_else(|| {
            ApiError::invalid(
                "crop_top_left",
                format!("`{s}` is not `top,left` (e.g. 0,0)"),
            )
        })
}

/// Decodes a caller's init image with the server's pixel limit.
pub fn decode_init(
    state: &AppState,
    bytes: &[u8],
    field: &str,
) -> Result<image::RgbImage, ApiError> {
    images::decode(bytes, state.config.max_input_pixels)
        .map_err(|e| ApiError::invalid(field, e.to_string()))
}

pub fn decode_base64_image(
    state: &AppState,
    data: &str,
    field: &str,
) -> Result<image::RgbImage, ApiError> {
    // Accept data URLs as browsers produce them.
    let payload = data.split_once("base64,").map(|(_, b)| b).unwrap_or(data);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| ApiError::invalid(field, format!("not valid base64: {e}")))?;
    decode_init(state, &bytes, field)
}

/// Validates against the model and limits, on a blocking thread (img2img resizes).
pub async fn validate(
    state: &AppState,
    params: GenerationParams,
) -> Result<GenerationRequest, ApiError> {
    let pipeline = state.pipeline().clone();
    let request = tokio::task::spawn_blocking(move || pipeline.validate(params))
        .await
        .map_err(|e| ApiError::internal(format!("validation task failed: {e}")))?
        .map_err(ApiError::from)?;
    // An img2img request without a size takes the image's; it must still be offered.
    let wh = (request.width(), request.height());
    if !state.config.sizes.contains(&wh) {
        return Err(ApiError::invalid(
            "size",
            format!(
                "{}x{} is not offered; allowed: {}",
                wh.0,
                wh.1,
                size_list(&state.config.sizes)
            ),
        ));
    }
    Ok(request)
}

/// Submits and waits for the result. The job lives as long as the returned
/// [`Held`]: the handler drops it once the response is built, so a
/// synchronous result never outlives its request, and a client that goes
/// away cancels its job at the next step.
pub async fn run(
    state: &AppState,
    request: GenerationRequest,
    previews: Previews,
) -> Result<(Held, Arc<JobResult>), ApiError> {
    let held = hold(state, request, previews)?;
    let result = finished(&held).await?;
    Ok((held, result))
}

/// Queues a synchronous caller's request (cancelled when the hold drops).
pub fn hold(
    state: &AppState,
    request: GenerationRequest,
    previews: Previews,
) -> Result<Held, ApiError> {
    Ok(state.batcher.run(
        request,
        SubmitOptions {
            request_id: crate::trace::request_id(),
            previews,
            ..SubmitOptions::default()
        },
    )?)
}

/// Waits for a held job; its result, or the error it ended with.
pub async fn finished(held: &Held) -> Result<Arc<JobResult>, ApiError> {
    let done = held.job().finished().await;
    outcome(done.status, done.result, done.error)
}

/// Encodes a preview (on a blocking thread); previews carry no A1111
/// parameters, since they are not the image those parameters make.
/// Previews are signed too: every image that leaves the server says what made it.
pub async fn encode_preview(
    state: &AppState,
    job: &Arc<Job>,
    pixels: Arc<image::RgbImage>,
    format: OutputFormat,
    quality: Option<u8>,
) -> Result<Vec<u8>, ApiError> {
    let (pipeline, signer, job) = (state.pipeline().clone(), state.signer.clone(), job.clone());
    tokio::task::spawn_blocking(move || {
        let r = &job.request;
        let img = anyaccel_pipeline::preview::upscale((*pixels).clone(), r.width(), r.height());
        let bytes = images::encode(&img, format, quality, "")
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let seed = r.seeds().first().copied().unwrap_or_default();
        sign(signer.as_deref(), bytes, format, &pipeline, r, seed)
    })
    .await
    .map_err(|e| ApiError::internal(format!("encoding task failed: {e}")))?
}

/// Signs an encoded image with a C2PA manifest naming the model (and, if the
/// operator allowed it, the prompt and seed); the `generate` CLI uses it too.
pub fn sign_image(
    signer: &Signer,
    bytes: &[u8],
    format: OutputFormat,
    pipeline: &Pipeline,
    request: &GenerationRequest,
    seed: u64,
) -> Result<Vec<u8>, ProvenanceError> {
    let m = pipeline.model();
    let facts = ImageFacts {
        software_version: env!("CARGO_PKG_VERSION").to_string(),
        model_id: m.id.clone(),
        model_hash: m.hash.clone(),
        prompt: Some(request.prompt().to_string()),
        negative_prompt: Some(request.negative_prompt().to_string()).filter(|s| !s.is_empty()),
        seed: Some(seed),
    };
    let format = match format {
        OutputFormat::Png => ProvenanceFormat::Png,
        OutputFormat::Jpeg => ProvenanceFormat::Jpeg,
        OutputFormat::Webp => ProvenanceFormat::Webp,
    };
    signer.sign(bytes, format, &facts)
}

fn sign(
    signer: Option<&Signer>,
    bytes: Vec<u8>,
    format: OutputFormat,
    pipeline: &Pipeline,
    request: &GenerationRequest,
    seed: u64,
) -> Result<Vec<u8>, ApiError> {
    match signer {
        None => Ok(bytes),
        Some(s) => sign_image(s, &bytes, format, pipeline, request, seed)
            .map_err(|e| ApiError::internal(e.to_string())),
    }
}

fn outcome(
    status: JobStatus,
    result: Option<Arc<JobResult>>,
    error: Option<JobError>,
) -> Result<Arc<JobResult>, ApiError> {
    match (status, result) {
        (JobStatus::Completed, Some(r)) => Ok(r),
        (JobStatus::Cancelled, _) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "cancelled",
            "the request was cancelled",
        )),
        _ => Err(error
            .unwrap_or_else(|| JobError::new(ErrorCode::Internal, "the job failed"))
            .into()),
    }
}

/// One encoded image.
pub struct Encoded {
    pub seed: u64,
    pub bytes: Vec<u8>,
    pub infotext: String,
}

/// Encodes every image of a result (on a blocking thread) with its A1111 parameters.
pub async fn encode(
    state: &AppState,
    job: &Arc<Job>,
    result: &Arc<JobResult>,
    format: OutputFormat,
    quality: Option<u8>,
) -> Result<Vec<Encoded>, ApiError> {
    let pipeline = state.pipeline().clone();
    let signer = state.signer.clone();
    let job = job.clone();
    let result = result.clone();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        result
            .images
            .iter()
            .map(|img| {
                let infotext = crate::a1111::infotext(&pipeline, &job.request, img.seed);
                let bytes = images::encode(&img.image, format, quality, &infotext)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let bytes = sign(
                    signer.as_deref(),
                    bytes,
                    format,
                    &pipeline,
                    &job.request,
                    img.seed,
                )?;
                Ok(Encoded {
                    seed: img.seed,
                    bytes,
                    infotext,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("encoding task failed: {e}")))??;
    state.metrics.observe_image_encode(started.elapsed());
    Ok(out)
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `x-queue-time`, `x-inference-time` and `x-total-time`, in seconds.
pub fn timing_headers(headers: &mut HeaderMap, result: &JobResult, total: std::time::Duration) {
    for (name, d) in [
        ("x-queue-time", result.queue_time),
        ("x-inference-time", result.inference_time),
        ("x-total-time", total),
    ] {
        if let Ok(v) = HeaderValue::from_str(&format!("{:.4}", d.as_secs_f64())) {
            headers.insert(name, v);
        }
    }
}

/// What produced an image: returned with every result.
#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub struct Provenance {
    pub model: String,
    pub model_hash: String,
    pub scheduler: String,
    pub steps: u32,
    pub guidance_scale: f32,
    pub size: String,
    /// Device family: cpu, cuda, neuron.
    pub accelerator: String,
    pub device: String,
    pub dtype: String,
    pub executor: String,
    pub pool: String,
    /// img2img strength, if an init image was given.
    pub strength: Option<f32>,
}

pub fn provenance(state: &AppState, request: &GenerationRequest) -> Provenance {
    let info = state.pipeline().model();
    let caps = state.pipeline().executor().capabilities();
    Provenance {
        model: info.id.clone(),
        model_hash: info.hash.clone(),
        scheduler: request.scheduler().to_string(),
        steps: request.steps(),
        guidance_scale: request.guidance_scale(),
        size: format!("{}x{}", request.width(), request.height()),
        accelerator: caps.device.to_string(),
        device: caps.device_name.clone(),
        dtype: caps.dtype.to_string(),
        executor: caps.executor.to_string(),
        pool: state.config.pool.clone(),
        strength: request.init().map(|i| i.strength()),
    }
}

/// Stage timings of a result, in seconds.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TimingReport {
    pub queue: f64,
    pub inference: f64,
    pub text_encode: f64,
    pub denoise: f64,
    pub vae_decode: f64,
    pub vae_encode: f64,
    pub batch_images: usize,
}

pub fn timing_report(r: &JobResult) -> TimingReport {
    TimingReport {
        queue: r.queue_time.as_secs_f64(),
        inference: r.inference_time.as_secs_f64(),
        text_encode: r.timings.text_encode.as_secs_f64(),
        denoise: r.timings.denoise.as_secs_f64(),
        vae_decode: r.timings.vae_decode.as_secs_f64(),
        vae_encode: r.timings.vae_encode.as_secs_f64(),
        batch_images: r.batch_images,
    }
}
