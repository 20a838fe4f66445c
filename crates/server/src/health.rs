//! Probes, `/info` and `/metrics`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    /// Why the server is not ready, when it says more than the status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Liveness: the process answers (no other checks, so it is cheap).
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health {
        status: "ok",
        reason: None,
    })
}

/// Readiness: model loaded, warm-up done for every size, executor up, not draining.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses(
    (status = 200, body = Health), (status = 503, description = "Warming up or draining", body = Health)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        // Without Redis the jobs API answers 503 but synchronous APIs
        // serve: stay in the Service, and say what is degraded.
        let degraded = state.queue.as_ref().and_then(|q| {
            let h = q.health();
            (!h.connected).then(|| {
                format!(
                    "job queue unreachable ({}); /v1/jobs answers 503, synchronous APIs serve",
                    h.error.unwrap_or_default()
                )
            })
        });
        Json(Health {
            status: if degraded.is_some() {
                "degraded"
            } else {
                "ready"
            },
            reason: degraded,
        })
        .into_response()
    } else {
        let broken = state.batcher.broken();
        let status = if state.batcher.is_draining() {
            "draining"
        } else if broken.is_some() {
            "broken"
        } else if !state.pipeline().executor().is_ready() {
            "executor_down"
        } else {
            "warming_up"
        };
        let body = Health {
            status,
            reason: broken,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

#[derive(Serialize, ToSchema)]
pub struct InfoLimits {
    pub max_images: u32,
    pub max_steps: u32,
    pub max_prompt_chars: usize,
    pub max_body_bytes: usize,
    pub max_input_pixels: u64,
    pub max_queue: usize,
    pub max_batch_images: usize,
    pub request_timeout_seconds: f64,
}

#[derive(Serialize, ToSchema)]
pub struct InfoDefaults {
    pub steps: u32,
    pub guidance_scale: f32,
    pub strength: f32,
    pub scheduler: String,
    /// T5's prompt length in tokens (SD3, Flux); absent for CLIP-only families.
    pub max_sequence_length: Option<usize>,
}

/// The memory preflight's numbers (absent when it was turned off).
#[derive(Serialize, ToSchema)]
pub struct InfoMemory {
    pub weights_bytes: u64,
    pub available_bytes: u64,
    /// Where `available_bytes` came from: `--memory-limit`, `MemAvailable`, a container limit.
    pub source: String,
}

#[derive(Serialize, ToSchema)]
pub struct InfoDeviceMemory {
    pub total_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Info {
    /// C2PA signing: `enabled`, and with it the algorithm, certificate
    /// subject, issuer, expiry, whether it is a development certificate, and
    /// whether prompts are recorded.
    #[schema(value_type = Object)]
    pub c2pa: serde_json::Value,
    pub model: String,
    pub model_hash: String,
    /// The model family: `sd` (SD 1.x/2.x), `sdxl`, `sd3` or `flux`.
    pub family: String,
    /// What `guidance_scale` does here: `classifier` (classifier-free guidance
    /// above 1, with the negative prompt), `distilled` (FLUX.1-dev: an input of
    /// the model, one pass, no negative prompt) or `none` (FLUX.1-schnell: ignored).
    pub guidance: String,
    /// The diffusers pipeline class of the model folder.
    pub pipeline_class: String,
    pub executor: String,
    /// How the model runs: the runtime and the settings that change speed
    /// (I/O binding, CUDA graphs; the sidecar's torch, diffusers and
    /// torch.compile mode).
    pub runtime: String,
    /// cpu, cuda or neuron.
    pub accelerator: String,
    pub device: String,
    pub dtype: String,
    pub pool: String,
    /// Sizes clients may request, as `WxH`.
    pub sizes: Vec<String>,
    /// What one image costs at each size, with the default steps and guidance.
    pub size_costs: Vec<SizeCost>,
    /// Batch sizes the executor runs: `dynamic`, or the compiled size.
    pub batch_sizes: String,
    pub img2img: bool,
    /// How previews are made: `decoder` (a tiny VAE decoder, full size) or
    /// `latent_map` (the family's latent-to-RGB map, upscaled).
    pub preview: &'static str,
    pub schedulers: Vec<String>,
    pub limits: InfoLimits,
    pub defaults: InfoDefaults,
    pub memory: Option<InfoMemory>,
    /// The accelerator's memory now (GPUs: total and in use by all
    /// processes); absent where the executor cannot read it (CPUs).
    pub device_memory: Option<InfoDeviceMemory>,
    /// Where async jobs live: `{"backend": "memory"}`, or the shared queue
    /// (`backend: redis`, queue and stream names, this replica's consumer
    /// name, whether Redis answers and why not).
    #[schema(value_type = Object)]
    pub jobs: serde_json::Value,
    pub version: &'static str,
}

/// The cost of one image at one size.
#[derive(Serialize, ToSchema)]
pub struct SizeCost {
    /// `WxH`.
    pub size: String,
    /// Admission work units (pixels × steps × denoiser passes), as the queue counts them.
    pub work_per_image: u64,
    /// Seconds one image takes here, from the measured seconds per work unit
    /// (absent until the first batch or warm-up ran).
    pub estimated_seconds: Option<f64>,
}

/// What this replica serves and on what hardware.
#[utoipa::path(get, path = "/info", tag = "health", responses((status = 200, body = Info)))]
pub async fn info(State(state): State<AppState>) -> Json<Info> {
    let p = state.pipeline();
    let m = p.model();
    let caps = p.executor().capabilities();
    let l = p.limits();
    let d = p.defaults();
    let c = &state.config;
    let guidance = p.guidance();
    let classifier = guidance == anyaccel_pipeline::Guidance::Classifier;
    let passes = if classifier && d.guidance_scale > 1.0 {
        2
    } else {
        1
    };
    let seconds_per_work = state.batcher.stats().seconds_per_work;
    let size_costs = c
        .sizes
        .iter()
        .map(|(w, h)| {
            let work = *w as u64 * *h as u64 * d.steps as u64 * passes;
            SizeCost {
                size: format!("{w}x{h}"),
                work_per_image: work,
                estimated_seconds: seconds_per_work.map(|s| s * work as f64),
            }
        })
        .collect();
    Json(Info {
        c2pa: match &state.signer {
            Some(s) => s.describe(),
            None => anyaccel_provenance::Signer::describe_disabled(),
        },
        model: m.id.clone(),
        model_hash: m.hash.clone(),
        family: m.family.name().to_string(),
        guidance: match guidance {
            anyaccel_pipeline::Guidance::Classifier => "classifier",
            anyaccel_pipeline::Guidance::Distilled => "distilled",
            anyaccel_pipeline::Guidance::None => "none",
        }
        .to_string(),
        pipeline_class: m.class_name.clone(),
        executor: caps.executor.to_string(),
        runtime: caps.runtime.clone(),
        accelerator: caps.device.to_string(),
        device: caps.device_name.clone(),
        dtype: caps.dtype.to_string(),
        pool: c.pool.clone(),
        sizes: c.sizes.iter().map(|(w, h)| format!("{w}x{h}")).collect(),
        size_costs,
        batch_sizes: match &caps.shapes {
            anyaccel_executor::Shapes::Dynamic => "dynamic".into(),
            anyaccel_executor::Shapes::Static { batch_size, .. } => batch_size.to_string(),
        },
        img2img: caps.vae_encoder,
        preview: if caps.preview_decoder {
            "decoder"
        } else {
            "latent_map"
        },
        schedulers: m
            .family
            .schedulers()
            .iter()
            .map(|k| k.to_string())
            .collect(),
        limits: InfoLimits {
            max_images: l.max_images,
            max_steps: l.max_steps,
            max_prompt_chars: l.max_prompt_chars,
            max_body_bytes: c.max_body_bytes,
            max_input_pixels: c.max_input_pixels,
            max_queue: c.batcher.max_queue,
            max_batch_images: c.batcher.max_batch_images,
            request_timeout_seconds: c.batcher.request_timeout.as_secs_f64(),
        },
        defaults: InfoDefaults {
            steps: d.steps,
            guidance_scale: d.guidance_scale,
            strength: d.strength,
            scheduler: m.default_scheduler.to_string(),
            max_sequence_length: p.t5_len(),
        },
        device_memory: p.executor().device_memory().map(|d| InfoDeviceMemory {
            total_bytes: d.total_bytes,
            used_bytes: d.used_bytes,
        }),
        memory: p.memory().map(|b| InfoMemory {
            weights_bytes: b.weights_bytes,
            available_bytes: b.available_bytes,
            source: b.source.to_string(),
        }),
        jobs: match &state.queue {
            Some(q) => q.describe(),
            None => serde_json::json!({ "backend": "memory" }),
        },
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Prometheus text exposition (see docs/metrics.md).
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let device = state.pipeline().executor().device_memory();
    let body = state.metrics.render(&state.batcher.stats(), device);
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
