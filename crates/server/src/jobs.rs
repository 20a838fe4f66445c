//! Native async jobs: submit (202), poll, stream events (SSE), cancel.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use anyaccel_batcher::{
    ErrorCode, Job, JobError, JobEvent, JobState, JobStatus, Lookup, Previews, SubmitOptions,
};
use anyaccel_pipeline::images::Encoding;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, parse_json};
use crate::generate::{self, Fields, Provenance, TimingReport};
use crate::openai::{ImageFormat, body_bytes};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(submit))
        .route("/v1/jobs/{id}", get(status).delete(cancel))
        .route("/v1/jobs/{id}/events", get(events))
}

/// A generation job: the OpenAI fields plus an optional init image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub n: Option<u32>,
    /// `WxH` from `/info`'s sizes.
    pub size: Option<String>,
    pub steps: Option<u32>,
    /// Guidance, as the model's family means it (`/info`'s `guidance`): SD,
    /// SDXL and SD3 run classifier-free guidance above 1 (with the negative
    /// prompt); FLUX.1-dev takes it as its distilled-guidance input (one pass,
    /// no negative prompt; ~3.5); FLUX.1-schnell ignores it.
    pub guidance_scale: Option<f32>,
    pub seed: Option<u64>,
    pub scheduler: Option<String>,
    /// Base64 PNG/JPEG/WebP (or a data URL) for img2img.
    pub image: Option<String>,
    /// img2img strength in (0, 1].
    pub strength: Option<f32>,
    /// SDXL micro-conditioning (`WxH`); default the output size.
    pub original_size: Option<String>,
    /// SDXL micro-conditioning `[top, left]`; default `[0, 0]`.
    pub crop_top_left: Option<[u32; 2]>,
    /// SDXL micro-conditioning (`WxH`); default the output size.
    pub target_size: Option<String>,
    pub output_format: Option<ImageFormat>,
    pub output_compression: Option<u8>,
    /// Add a `preview` event to the job's SSE stream every this many steps
    /// (an approximation of the forming image, in `output_format`).
    pub preview_every: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct Progress {
    pub step: u32,
    pub total: u32,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct JobImage {
    pub seed: u64,
    pub b64_json: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct JobResultBody {
    pub images: Vec<JobImage>,
    pub output_format: String,
    pub timings: TimingReport,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct JobErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    /// queued, running, completed, failed or cancelled.
    pub status: String,
    pub created: u64,
    /// The `x-request-id` of the request that submitted it.
    pub request_id: Option<String>,
    pub queue_position: Option<usize>,
    pub eta_seconds: Option<f64>,
    pub progress: Progress,
    pub status_url: String,
    pub events_url: String,
    pub anyaccel: Provenance,
    /// The replica running it, with the shared queue (`--redis-url`): its consumer name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResultBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobErrorBody>,
}

fn status_name(s: JobStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A completed job's images, encoded (and signed) as its client asked.
pub(crate) async fn result_body(
    state: &AppState,
    job: &Arc<Job>,
    result: &Arc<anyaccel_batcher::JobResult>,
) -> Result<JobResultBody, ApiError> {
    let enc = job.encoding;
    let encoded = generate::encode(state, job, result, enc.format, enc.quality).await?;
    Ok(JobResultBody {
        images: encoded
            .into_iter()
            .map(|e| JobImage {
                seed: e.seed,
                b64_json: generate::b64(&e.bytes),
            })
            .collect(),
        output_format: enc.format.extension().replace("jpg", "jpeg"),
        timings: generate::timing_report(result),
    })
}

async fn view(state: &AppState, job: &Arc<Job>, snapshot: JobState) -> Result<JobView, ApiError> {
    let result = match (&snapshot.status, &snapshot.result) {
        (JobStatus::Completed, Some(r)) => Some(result_body(state, job, r).await?),
        _ => None,
    };
    Ok(JobView {
        id: job.id.clone(),
        status: status_name(snapshot.status),
        created: job.created_unix,
        request_id: job.request_id.clone(),
        queue_position: snapshot.queue_position,
        eta_seconds: snapshot.eta_seconds,
        progress: Progress {
            step: snapshot.step,
            total: snapshot.total_steps,
        },
        status_url: format!("/v1/jobs/{}", job.id),
        events_url: format!("/v1/jobs/{}/events", job.id),
        anyaccel: generate::provenance(state, &job.request),
        replica: None,
        result,
        error: snapshot.error.map(|e| JobErrorBody {
            code: e.code.to_string(),
            message: e.message,
        }),
    })
}

/// Queue a generation; answers 202 at once with where to follow it.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body = JobBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retried POST with the same key returns the same job")),
    responses(
        (status = 202, description = "Accepted", body = JobView),
        (status = 400, description = "Invalid field", body = crate::error::ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = crate::error::ErrorBody),
        (status = 503, description = "Draining, or the shared job queue (--redis-url) is unreachable; see Retry-After", body = crate::error::ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: JobBody = parse_json(&body_bytes(body)?)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if key.as_ref().is_some_and(|k| k.len() > 256) {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "must be at most 256 characters",
        ));
    }
    let job = prepare(&state, &body).await?;
    if let Some(queue) = &state.queue {
        return queue.submit(&state, body, job, key).await;
    }
    let job = state.batcher.submit(
        job.request,
        SubmitOptions {
            idempotency_key: key,
            retained: true,
            encoding: job.encoding,
            request_id: crate::trace::request_id(),
            previews: job.previews,
            checkpoints: None,
            id: None,
        },
    )?;
    let v = view(&state, &job, job.state()).await?;
    Ok(accepted(v))
}

/// 202 with the job and its `Location`.
pub(crate) fn accepted(v: JobView) -> Response {
    let location = HeaderValue::from_str(&v.status_url).ok();
    let mut resp = (StatusCode::ACCEPTED, Json(v)).into_response();
    if let Some(loc) = location {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

/// A job body, validated: what the batcher runs and how it reports.
pub(crate) struct Prepared {
    pub request: anyaccel_pipeline::GenerationRequest,
    pub previews: Previews,
    pub encoding: Encoding,
}

/// Validates a job body as this replica's pipeline sees it (the replica
/// that runs a shared job validates it again).
pub(crate) async fn prepare(state: &AppState, body: &JobBody) -> Result<Prepared, ApiError> {
    let body = body.clone();
    let previews = match body.preview_every {
        None => Previews::Off,
        Some(0) => {
            return Err(ApiError::invalid(
                "preview_every",
                "must be at least 1 (steps between previews); leave it out for none",
            ));
        }
        Some(n) => Previews::Every(n),
    };
    let init_image = match &body.image {
        Some(data) => Some(generate::decode_base64_image(state, data, "image")?),
        None => None,
    };
    let params = Fields {
        prompt: Some(body.prompt),
        negative_prompt: body.negative_prompt,
        n: body.n,
        size: body.size,
        steps: body.steps,
        guidance_scale: body.guidance_scale,
        seed: body.seed,
        scheduler: body.scheduler,
        init_image,
        strength: body.strength,
        original_size: body.original_size,
        crop_top_left: body.crop_top_left,
        target_size: body.target_size,
    }
    .params(state)?;
    let request = generate::validate(state, params).await?;
    Ok(Prepared {
        request,
        previews,
        encoding: Encoding {
            format: body.output_format.map(Into::into).unwrap_or_default(),
            quality: body.output_compression,
        },
    })
}

fn lookup(state: &AppState, id: &str) -> Result<Arc<Job>, ApiError> {
    match state.batcher.get(id) {
        Lookup::Found(j) => Ok(j),
        Lookup::Gone => Err(ApiError::new(
            StatusCode::GONE,
            "expired",
            format!("job {id} finished and its result expired"),
        )),
        Lookup::NotFound => Err(ApiError::not_found(format!("no job {id}"))),
    }
}

/// A job's status, progress and, once completed, its images.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "Unknown id", body = crate::error::ErrorBody),
        (status = 503, description = "The shared job queue (--redis-url) is unreachable; see Retry-After", body = crate::error::ErrorBody),
        (status = 410, description = "Result expired", body = crate::error::ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    if let Some(queue) = &state.queue {
        return Ok(Json(queue.status(&state, &id).await?));
    }
    let job = lookup(&state, &id)?;
    Ok(Json(view(&state, &job, job.state()).await?))
}

/// Cancel a queued or running job (running ones stop at the next step).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled, or already finished (see status)", body = JobView),
        (status = 404, description = "Unknown id", body = crate::error::ErrorBody),
        (status = 503, description = "The shared job queue (--redis-url) is unreachable; see Retry-After", body = crate::error::ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    if let Some(queue) = &state.queue {
        return Ok(Json(queue.cancel(&state, &id).await?));
    }
    let job = lookup(&state, &id)?;
    if state.batcher.cancel(&job) && job.state().status == JobStatus::Running {
        // Give the worker a moment to reach the next step so the answer is final.
        let mut rx = job.watch();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            rx.wait_for(|s| s.status.is_terminal()),
        )
        .await;
    }
    Ok(Json(view(&state, &job, job.state()).await?))
}

fn is_terminal(e: &JobEvent) -> bool {
    matches!(
        e,
        JobEvent::Completed | JobEvent::Failed { .. } | JobEvent::Cancelled
    )
}

pub(crate) fn event_name(e: &JobEvent) -> &'static str {
    match e {
        JobEvent::Queued { .. } => "queued",
        JobEvent::Started { .. } => "started",
        JobEvent::Step { .. } => "step",
        JobEvent::Preview { .. } => "preview",
        JobEvent::Completed => "completed",
        JobEvent::Failed { .. } => "failed",
        JobEvent::Cancelled => "cancelled",
    }
}

/// An event as its SSE `data` (JSON, with an `event` field naming it).
pub(crate) fn event_json(e: &JobEvent) -> String {
    serde_json::to_string(e).unwrap_or_else(|_| format!("{{\"event\":\"{}\"}}", event_name(e)))
}

/// The event a late subscriber needs to catch up.
fn catch_up(s: &JobState) -> JobEvent {
    match s.status {
        JobStatus::Queued => JobEvent::Queued {
            position: s.queue_position.unwrap_or(0),
            eta_seconds: s.eta_seconds.unwrap_or(0.0),
        },
        JobStatus::Running => JobEvent::Step {
            step: s.step,
            total: s.total_steps,
        },
        JobStatus::Completed => JobEvent::Completed,
        JobStatus::Cancelled => JobEvent::Cancelled,
        JobStatus::Failed => JobEvent::Failed {
            error: s
                .error
                .clone()
                .unwrap_or_else(|| JobError::new(ErrorCode::Internal, "failed")),
        },
    }
}

/// Server-sent events: queued (position, ETA), started, step n/N, then one of
/// completed (fetch the result from the status URL), failed or cancelled.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "text/event-stream of job events", content_type = "text/event-stream", body = String),
        (status = 404, description = "Unknown id", body = crate::error::ErrorBody),
        (status = 503, description = "The shared job queue (--redis-url) is unreachable; see Retry-After", body = crate::error::ErrorBody),
    ))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<KeepAliveStream<EventStream>>, ApiError> {
    if let Some(queue) = &state.queue {
        let stream = queue.events(&state, &id).await?;
        return Ok(Sse::new(stream).keep_alive(KeepAlive::default()));
    }
    let job = lookup(&state, &id)?;
    let encoding = job.encoding;
    let (state2, job2) = (state.clone(), job.clone());
    // Subscribe before reading the snapshot so nothing falls in between.
    let live = BroadcastStream::new(job.events());
    let now = job.state();
    let first = tokio_stream::once(catch_up(&now));
    let events: Pin<Box<dyn Stream<Item = JobEvent> + Send>> = if now.status.is_terminal() {
        Box::pin(first)
    } else {
        let tail = live.filter_map(|r| r.ok()).take_while(|e| !is_terminal(e));
        // The terminal event comes from the job's final state, so a lagging
        // subscriber still sees how it ended.
        let end = futures_util::stream::once(async move { catch_up(&job.finished().await) });
        Box::pin(first.chain(tail).chain(end))
    };
    let stream = events.then(move |e| {
        let (state, job) = (state2.clone(), job2.clone());
        async move { Ok(with_preview(&state, &job, e, encoding).await) }
    });
    Ok(Sse::new(Box::pin(stream) as EventStream).keep_alive(KeepAlive::default()))
}

/// What a job's SSE response streams, from memory or from the shared queue.
pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

/// A preview event carries its image, encoded as the job's results are.
#[derive(Serialize)]
struct PreviewData {
    event: &'static str,
    step: u32,
    total: u32,
    image: usize,
    output_format: String,
    b64_json: String,
}

async fn with_preview(state: &AppState, job: &Arc<Job>, e: JobEvent, encoding: Encoding) -> Event {
    let data = event_data(state, job, &e, encoding).await;
    Event::default().event(event_name(&e)).data(data)
}

/// An event's SSE `data`; a preview's carries its image, encoded as the job's results are.
pub(crate) async fn event_data(
    state: &AppState,
    job: &Arc<Job>,
    e: &JobEvent,
    encoding: Encoding,
) -> String {
    let JobEvent::Preview {
        step,
        total,
        image,
        pixels,
    } = e
    else {
        return event_json(e);
    };
    let encoded = generate::encode_preview(
        state,
        job,
        pixels.clone(),
        encoding.format,
        encoding.quality,
    )
    .await;
    match encoded {
        Ok(bytes) => serde_json::to_string(&PreviewData {
            event: "preview",
            step: *step,
            total: *total,
            image: *image,
            output_format: encoding.format.extension().replace("jpg", "jpeg"),
            b64_json: generate::b64(&bytes),
        })
        .unwrap_or_else(|_| event_json(e)),
        Err(err) => {
            tracing::warn!(error = ?err, "preview could not be encoded");
            event_json(e)
        }
    }
}
