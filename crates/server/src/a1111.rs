//! The AUTOMATIC1111 web UI API subset that scripts and tools use:
//! txt2img, img2img, progress, interrupt, samplers and models, with A1111's
//! field names and response shape. Unknown A1111 fields are accepted and
//! ignored, as A1111 clients send many UI-only options.

use std::time::Instant;

use anyaccel_batcher::{JobStatus, Previews};
use anyaccel_pipeline::images::OutputFormat;
use anyaccel_pipeline::{GenerationParams, GenerationRequest, Pipeline};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, parse_json};
use crate::generate;
use crate::openai::body_bytes;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/progress", get(progress))
        .route("/sdapi/v1/interrupt", post(interrupt))
        .route("/sdapi/v1/samplers", get(samplers))
        .route("/sdapi/v1/sd-models", get(sd_models))
}

/// A1111's txt2img/img2img request (the fields we honour).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct A1111Body {
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: String,
    /// -1 draws a random seed.
    #[serde(default = "minus_one")]
    pub seed: i64,
    pub steps: Option<u32>,
    pub cfg_scale: Option<f32>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// e.g. "Euler a", "DPM++ 2M Karras", "DDIM".
    pub sampler_name: Option<String>,
    pub sampler_index: Option<String>,
    /// A1111 1.9+ schedule type: "Karras" turns DPM++ 2M into its Karras variant.
    pub scheduler: Option<String>,
    #[serde(default = "one")]
    pub batch_size: u32,
    #[serde(default = "one")]
    pub n_iter: u32,
    /// img2img only: base64 images; the first is used.
    #[serde(default)]
    pub init_images: Vec<String>,
    pub denoising_strength: Option<f32>,
}

fn minus_one() -> i64 {
    -1
}
fn one() -> u32 {
    1
}

#[derive(Serialize, ToSchema)]
pub struct A1111Response {
    /// Base64 PNGs with the `parameters` chunk.
    pub images: Vec<String>,
    /// The request as understood.
    pub parameters: Value,
    /// JSON string with seeds, infotexts and the model, as A1111 returns it.
    pub info: String,
}

fn sampler(body: &A1111Body) -> Option<String> {
    let name = body
        .sampler_name
        .clone()
        .or_else(|| body.sampler_index.clone())?;
    match body.scheduler.as_deref() {
        Some(s)
            if s.eq_ignore_ascii_case("karras")
                && !name.to_ascii_lowercase().contains("karras") =>
        {
            Some(format!("{name} Karras"))
        }
        _ => Some(name),
    }
}

async fn run(state: AppState, body: A1111Body, img2img: bool) -> Result<Response, ApiError> {
    let started = Instant::now();
    let init_image = if img2img {
        let first = body
            .init_images
            .first()
            .ok_or_else(|| ApiError::invalid("init_images", "needs one base64 image"))?;
        Some(generate::decode_base64_image(&state, first, "init_images")?)
    } else {
        None
    };
    if body.batch_size == 0 || body.n_iter == 0 {
        return Err(ApiError::invalid(
            "batch_size",
            "batch_size and n_iter must be at least 1",
        ));
    }
    let params = GenerationParams {
        prompt: body.prompt.clone(),
        negative_prompt: Some(body.negative_prompt.clone()),
        width: body.width,
        height: body.height,
        steps: body.steps,
        guidance_scale: body.cfg_scale,
        scheduler: sampler(&body),
        seed: u64::try_from(body.seed).ok(),
        n: Some(body.batch_size.saturating_mul(body.n_iter)),
        strength: if img2img {
            body.denoising_strength
        } else {
            None
        },
        init_image,
        // A1111's API has no micro-conditioning fields: diffusers' defaults.
        micro: Default::default(),
    };
    let request = generate::validate(&state, params)
        .await
        .map_err(a1111_names)?;
    let previews = match state.config.a1111_preview_every {
        0 => Previews::Off,
        n => Previews::Every(n),
    };
    let (held, result) = generate::run(&state, request, previews).await?;
    let job = held.job();
    let encoded = generate::encode(&state, job, &result, OutputFormat::Png, None).await?;
    let info = state.pipeline().model();
    let r = &job.request;
    let seeds: Vec<u64> = encoded.iter().map(|e| e.seed).collect();
    let info_json = json!({
        "prompt": r.prompt(),
        "all_prompts": vec![r.prompt(); seeds.len()],
        "negative_prompt": r.negative_prompt(),
        "seed": seeds.first(),
        "all_seeds": seeds,
        "width": r.width(),
        "height": r.height(),
        "sampler_name": r.scheduler().a1111_name(),
        "cfg_scale": r.guidance_scale(),
        "steps": r.steps(),
        "denoising_strength": r.init().map(|i| i.strength()),
        "sd_model_name": info.id,
        "sd_model_hash": info.hash,
        "infotexts": encoded.iter().map(|e| e.infotext.clone()).collect::<Vec<_>>(),
        "version": concat!("anyaccel ", env!("CARGO_PKG_VERSION")),
    });
    let parameters = serde_json::to_value(&body).unwrap_or(Value::Null);
    let resp = A1111Response {
        images: encoded.iter().map(|e| generate::b64(&e.bytes)).collect(),
        parameters,
        info: info_json.to_string(),
    };
    let mut out = (StatusCode::OK, Json(resp)).into_response();
    generate::timing_headers(out.headers_mut(), &result, started.elapsed());
    Ok(out)
}

/// The A1111-style `parameters` text for one image of a request (what A1111
/// writes into its PNGs, and returns as `infotexts`).
pub fn infotext(pipeline: &Pipeline, request: &GenerationRequest, seed: u64) -> String {
    let info = pipeline.model();
    let mut s = request.prompt().to_string();
    if !request.negative_prompt().is_empty() {
        s.push_str("\nNegative prompt: ");
        s.push_str(request.negative_prompt());
    }
    s.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model hash: {}, Model: {}",
        request.steps(),
        request.scheduler().a1111_name(),
        request.guidance_scale(),
        seed,
        request.width(),
        request.height(),
        info.hash,
        info.id,
    ));
    if let Some(init) = request.init() {
        s.push_str(&format!(", Denoising strength: {}", init.strength()));
    }
    let caps = pipeline.executor().capabilities();
    s.push_str(&format!(
        ", Accelerator: {} {}, Version: anyaccel {}",
        caps.device,
        caps.dtype,
        env!("CARGO_PKG_VERSION")
    ));
    s
}

/// Reports validation errors with A1111's field names.
fn a1111_names(mut e: ApiError) -> ApiError {
    let renamed = match e.param.as_deref() {
        Some("scheduler") => "sampler_name",
        Some("guidance_scale") => "cfg_scale",
        Some("n") => "batch_size",
        Some("strength") => "denoising_strength",
        Some("image") => "init_images",
        _ => return e,
    };
    if let Some(old) = e.param.replace(renamed.to_string()) {
        e.message = e.message.replacen(&old, renamed, 1);
    }
    e
}

/// A1111 txt2img.
#[utoipa::path(post, path = "/sdapi/v1/txt2img", tag = "a1111", request_body = A1111Body,
    responses((status = 200, body = A1111Response), (status = 400, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)))]
pub async fn txt2img(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: A1111Body = parse_json(&body_bytes(body)?)?;
    run(state, body, false).await
}

/// A1111 img2img (`init_images` + `denoising_strength`).
#[utoipa::path(post, path = "/sdapi/v1/img2img", tag = "a1111", request_body = A1111Body,
    responses((status = 200, body = A1111Response), (status = 400, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)))]
pub async fn img2img(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: A1111Body = parse_json(&body_bytes(body)?)?;
    run(state, body, true).await
}

#[derive(Serialize, ToSchema)]
pub struct ProgressState {
    pub job_count: usize,
    pub sampling_step: u32,
    pub sampling_steps: u32,
    pub interrupted: bool,
    pub job: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProgressResponse {
    /// 0 to 1 for the running job.
    pub progress: f64,
    pub eta_relative: f64,
    pub state: ProgressState,
    pub current_image: Option<String>,
    pub textinfo: Option<String>,
}

#[derive(Deserialize, IntoParams)]
pub struct ProgressQuery {
    /// Leave `current_image` out (A1111's flag).
    #[serde(default)]
    pub skip_current_image: bool,
}

/// Progress of the job now running; `current_image` is a base64 PNG preview
/// of its forming image (every `--a1111-preview-every` steps).
#[utoipa::path(get, path = "/sdapi/v1/progress", tag = "a1111", params(ProgressQuery),
    responses((status = 200, body = ProgressResponse)))]
pub async fn progress(
    State(state): State<AppState>,
    Query(query): Query<ProgressQuery>,
) -> Json<ProgressResponse> {
    let stats = state.batcher.stats();
    let current = state.batcher.current();
    let preview = current
        .as_ref()
        .and_then(|j| Some((j, j.state().preview?)))
        .filter(|_| !query.skip_current_image);
    let current_image = match preview {
        Some((j, p)) => generate::encode_preview(&state, j, p.pixels, OutputFormat::Png, None)
            .await
            .ok()
            .map(|bytes| generate::b64(&bytes)),
        None => None,
    };
    let (progress, eta, step, steps, job, interrupted) = match &current {
        Some(j) => {
            let s = j.state();
            let p = if s.total_steps > 0 {
                s.step as f64 / s.total_steps as f64
            } else {
                0.0
            };
            let eta = s.eta_seconds.unwrap_or(0.0) * (1.0 - p);
            (
                p,
                eta,
                s.step,
                s.total_steps,
                j.id.clone(),
                s.status == JobStatus::Cancelled,
            )
        }
        None => (0.0, 0.0, 0, 0, String::new(), false),
    };
    Json(ProgressResponse {
        progress,
        eta_relative: eta,
        state: ProgressState {
            job_count: stats.queued + stats.running,
            sampling_step: step,
            sampling_steps: steps,
            interrupted,
            job,
        },
        current_image,
        textinfo: None,
    })
}

/// Stops the running generation at its next step (queued work continues).
#[utoipa::path(post, path = "/sdapi/v1/interrupt", tag = "a1111", responses((status = 200, body = Object)))]
pub async fn interrupt(State(state): State<AppState>) -> Json<Value> {
    if let Some(j) = state.batcher.current() {
        state.batcher.cancel(&j);
    }
    Json(json!({}))
}

#[derive(Serialize, ToSchema)]
pub struct Sampler {
    pub name: String,
    pub aliases: Vec<String>,
    pub options: Value,
}

/// The samplers (schedulers) this server implements.
#[utoipa::path(get, path = "/sdapi/v1/samplers", tag = "a1111", responses((status = 200, body = [Sampler])))]
pub async fn samplers(State(state): State<AppState>) -> Json<Vec<Sampler>> {
    Json(
        state
            .pipeline()
            .model()
            .family
            .schedulers()
            .iter()
            .map(|k| Sampler {
                name: k.a1111_name().to_string(),
                aliases: vec![k.name().to_string()],
                options: json!({}),
            })
            .collect(),
    )
}

#[derive(Serialize, ToSchema)]
pub struct SdModel {
    pub title: String,
    pub model_name: String,
    pub hash: String,
    pub sha256: Option<String>,
    pub filename: String,
    pub config: Option<String>,
}

/// The model this replica serves.
#[utoipa::path(get, path = "/sdapi/v1/sd-models", tag = "a1111", responses((status = 200, body = [SdModel])))]
pub async fn sd_models(State(state): State<AppState>) -> Json<Vec<SdModel>> {
    let m = state.pipeline().model();
    Json(vec![SdModel {
        title: format!("{} [{}]", m.id, m.hash),
        model_name: m.id.clone(),
        hash: m.hash.clone(),
        sha256: None,
        filename: m.root.display().to_string(),
        config: None,
    }])
}
