//! OpenAI Images: `POST /v1/images/generations` and `POST /v1/images/edits`,
//! with our extensions as extra fields and the seed of each image in the response.

use std::time::Instant;

use anyaccel_batcher::Previews;
use anyaccel_pipeline::GenerationParams;
use anyaccel_pipeline::images::OutputFormat;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, parse_json};
use crate::generate::{self, Fields, Provenance, TimingReport};
use crate::stream;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images/generations", post(generations))
        .route("/v1/images/edits", post(edits))
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, Default, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Base64 PNG/JPEG/WebP in the response (the default here).
    #[default]
    B64Json,
    /// A link served by this server for the result TTL.
    Url,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl From<ImageFormat> for OutputFormat {
    fn from(f: ImageFormat) -> Self {
        match f {
            ImageFormat::Png => OutputFormat::Png,
            ImageFormat::Jpeg => OutputFormat::Jpeg,
            ImageFormat::Webp => OutputFormat::Webp,
        }
    }
}

/// OpenAI's image generation request, plus anyaccel's extensions.
#[derive(Debug, Deserialize, ToSchema)]
// OpenAI-only fields are parsed so clients that send them are accepted.
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct GenerationBody {
    pub prompt: String,
    /// Accepted for compatibility; this server serves one model (see `/info`).
    pub model: Option<String>,
    /// Number of images (default 1).
    pub n: Option<u32>,
    /// `WxH` from `/info`'s sizes, or `auto` for the model's native size.
    pub size: Option<String>,
    pub response_format: Option<ResponseFormat>,
    pub output_format: Option<ImageFormat>,
    /// JPEG quality 0–100.
    pub output_compression: Option<u8>,
    /// Accepted for compatibility and ignored.
    pub quality: Option<String>,
    pub style: Option<String>,
    pub user: Option<String>,
    pub background: Option<String>,
    pub moderation: Option<String>,
    /// Answer `text/event-stream`: `partial_images` previews, then the image.
    pub stream: Option<bool>,
    /// Partial images to stream before the final one, 0–3 (with `stream`).
    pub partial_images: Option<u32>,
    // Extensions.
    pub negative_prompt: Option<String>,
    pub steps: Option<u32>,
    /// Guidance, as the model's family means it (`/info`'s `guidance`): SD,
    /// SDXL and SD3 run classifier-free guidance above 1 (with the negative
    /// prompt); FLUX.1-dev takes it as its distilled-guidance input (one pass,
    /// no negative prompt; ~3.5); FLUX.1-schnell ignores it.
    pub guidance_scale: Option<f32>,
    pub seed: Option<u64>,
    pub scheduler: Option<String>,
    /// SDXL micro-conditioning: the size (`WxH`) the image is said to come
    /// from; default the output size.
    pub original_size: Option<String>,
    /// SDXL micro-conditioning: `[top, left]` of the crop; default `[0, 0]`.
    pub crop_top_left: Option<[u32; 2]>,
    /// SDXL micro-conditioning: the target size (`WxH`); default the output size.
    pub target_size: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ImageData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub revised_prompt: Option<String>,
    /// The seed that reproduces this image.
    pub seed: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ImagesResponse {
    pub created: u64,
    pub data: Vec<ImageData>,
    pub output_format: String,
    pub size: String,
    /// How the images were made.
    pub anyaccel: Provenance,
    pub timings: TimingReport,
}

/// Runs a generation and shapes the OpenAI response.
async fn respond(
    state: &AppState,
    headers: &HeaderMap,
    params: GenerationParams,
    response_format: ResponseFormat,
    output_format: OutputFormat,
    compression: Option<u8>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let request = generate::validate(state, params).await?;
    let (held, result) = generate::run(state, request, Previews::Off).await?;
    let job = held.job();
    let encoded = generate::encode(state, job, &result, output_format, compression).await?;
    let base = base_url(state, headers);
    let mut data = Vec::with_capacity(encoded.len());
    for e in encoded {
        data.push(match response_format {
            ResponseFormat::B64Json => ImageData {
                b64_json: Some(generate::b64(&e.bytes)),
                url: None,
                revised_prompt: None,
                seed: e.seed,
            },
            ResponseFormat::Url => {
                let id = keep_file(state, e.bytes, output_format).await;
                ImageData {
                    b64_json: None,
                    url: Some(format!("{base}/v1/images/files/{id}")),
                    revised_prompt: None,
                    seed: e.seed,
                }
            }
        });
    }
    let body = ImagesResponse {
        created: job.created_unix,
        data,
        output_format: output_format.extension().replace("jpg", "jpeg"),
        size: format!("{}x{}", job.request.width(), job.request.height()),
        anyaccel: generate::provenance(state, &job.request),
        timings: generate::timing_report(&result),
    };
    let mut resp = (StatusCode::OK, Json(body)).into_response();
    generate::timing_headers(resp.headers_mut(), &result, started.elapsed());
    Ok(resp)
}

/// Keeps an image behind a link: in the shared queue (any replica serves
/// it) when there is one and it answers, else in this replica's memory.
async fn keep_file(state: &AppState, bytes: Vec<u8>, format: OutputFormat) -> String {
    if let Some(queue) = &state.queue {
        match queue.keep_file(&bytes, format).await {
            Ok(id) => return id,
            Err(e) => tracing::warn!(error = %e, "kept the image here instead of the shared queue"),
        }
    }
    state.batcher.keep_file(bytes, format)
}

fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &state.config.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_body"
        };
        ApiError::new(status, code, e.body_text())
    })
}

/// Generate images from a prompt (OpenAI-compatible).
#[utoipa::path(post, path = "/v1/images/generations", tag = "openai",
    request_body = GenerationBody,
    responses(
        (status = 200, description = "Images", body = ImagesResponse),
        (status = 400, description = "Invalid field", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = crate::error::ErrorBody),
        (status = 503, description = "Draining; see Retry-After", body = crate::error::ErrorBody),
    ))]
pub async fn generations(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: GenerationBody = parse_json(&body_bytes(body)?)?;
    let response_format = body.response_format.unwrap_or_default();
    let streamed = stream::options(body.stream, body.partial_images, body.n, response_format)?;
    let output_format: OutputFormat = body.output_format.map(Into::into).unwrap_or_default();
    let params = Fields {
        prompt: Some(body.prompt),
        negative_prompt: body.negative_prompt,
        n: body.n,
        size: body.size,
        steps: body.steps,
        guidance_scale: body.guidance_scale,
        seed: body.seed,
        scheduler: body.scheduler,
        original_size: body.original_size,
        crop_top_left: body.crop_top_left,
        target_size: body.target_size,
        ..Fields::default()
    }
    .params(&state)?;
    if let Some(partials) = streamed {
        return stream::respond(
            &state,
            params,
            stream::Kind::Generation,
            partials,
            output_format,
            body.output_compression,
        )
        .await;
    }
    respond(
        &state,
        &headers,
        params,
        response_format,
        output_format,
        body.output_compression,
    )
    .await
}

/// Multipart form of `/v1/images/edits`, for the OpenAPI document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EditForm {
    /// The init image (PNG, JPEG or WebP).
    #[schema(format = Binary)]
    image: String,
    prompt: String,
    /// How far to move from the image, (0, 1]; default 0.75.
    strength: Option<f32>,
    n: Option<u32>,
    size: Option<String>,
    response_format: Option<String>,
    output_format: Option<String>,
    /// `true`: answer `text/event-stream` (partial images, then the image).
    stream: Option<bool>,
    /// Partial images to stream before the final one, 0–3.
    partial_images: Option<u32>,
    negative_prompt: Option<String>,
    steps: Option<u32>,
    guidance_scale: Option<f32>,
    seed: Option<u64>,
    scheduler: Option<String>,
}

/// Image-to-image from an init image and a prompt (OpenAI-compatible multipart).
#[utoipa::path(post, path = "/v1/images/edits", tag = "openai",
    request_body(content = EditForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Images", body = ImagesResponse),
        (status = 400, description = "Invalid field", body = crate::error::ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = crate::error::ErrorBody),
    ))]
pub async fn edits(
    State(state): State<AppState>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Response, ApiError> {
    let mut fields = Fields::default();
    let mut response_format = ResponseFormat::default();
    let mut output_format = OutputFormat::default();
    let mut compression = None;
    let mut streaming = None;
    let mut partial_images = None;
    // SDKs send a JSON list as repeated `name[]` form fields.
    let mut crop_parts: Vec<u32> = Vec::new();
    let multipart_err = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(
            e.status(),
            "invalid_body",
            format!("multipart body: {}", e.body_text()),
        )
    };
    while let Some(field) = form.next_field().await.map_err(multipart_err)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" || name == "image[]" {
            let bytes = field.bytes().await.map_err(multipart_err)?;
            fields.init_image = Some(generate::decode_init(&state, &bytes, "image")?);
            continue;
        }
        let text = field.text().await.map_err(multipart_err)?;
        let num =
            |what: &str| ApiError::invalid(name.clone(), format!("must be {what}, got `{text}`"));
        match name.as_str() {
            "prompt" => fields.prompt = Some(text),
            "negative_prompt" => fields.negative_prompt = Some(text),
            "n" => fields.n = Some(text.parse().map_err(|_| num("an integer"))?),
            "steps" => fields.steps = Some(text.parse().map_err(|_| num("an integer"))?),
            "seed" => fields.seed = Some(text.parse().map_err(|_| num("an integer"))?),
            "guidance_scale" => {
                fields.guidance_scale = Some(text.parse().map_err(|_| num("a number"))?)
            }
            "strength" => fields.strength = Some(text.parse().map_err(|_| num("a number"))?),
            "scheduler" => fields.scheduler = Some(text),
            "size" => fields.size = Some(text),
            "original_size" => fields.original_size = Some(text),
            "target_size" => fields.target_size = Some(text),
            "crop_top_left" => fields.crop_top_left = Some(generate::parse_crop(&text)?),
            "crop_top_left[]" => crop_parts.push(text.trim().parse().map_err(|_| {
                ApiError::invalid("crop_top_left", format!("`{text}` is not a pixel offset"))
            })?),
            "stream" => {
                streaming = Some(match text.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(ApiError::invalid("stream", "must be true or false")),
                })
            }
            "partial_images" => {
                partial_images = Some(text.parse().map_err(|_| num("an integer 0-3"))?)
            }
            "output_compression" => {
                compression = Some(text.parse().map_err(|_| num("an integer 0-100"))?)
            }
            "response_format" => {
                response_format = match text.as_str() {
                    "b64_json" => ResponseFormat::B64Json,
                    "url" => ResponseFormat::Url,
                    _ => {
                        return Err(ApiError::invalid(
                            "response_format",
                            "must be b64_json or url",
                        ));
                    }
                }
            }
            "output_format" => {
                output_format = text
                    .parse()
                    .map_err(|m: String| ApiError::invalid("output_format", m))?
            }
            "mask" => {
                return Err(ApiError::invalid(
                    "mask",
                    "inpainting masks are not supported; send only `image`",
                ));
            }
            "model" | "quality" | "user" | "background" | "input_fidelity" => {}
            other => {
                return Err(ApiError::invalid(
                    other.to_string(),
                    "unknown field; expected image, prompt, strength, n, size, response_format, output_format, \
                     output_compression, stream, partial_images, negative_prompt, steps, guidance_scale, \
                     seed, scheduler, original_size, crop_top_left, target_size",
                ));
            }
        }
    }
    match crop_parts[..] {
        [] => {}
        [t, l] => fields.crop_top_left = Some([t, l]),
        _ => {
            return Err(ApiError::invalid(
                "crop_top_left",
                format!("takes two values, top and left (got {})", crop_parts.len()),
            ));
        }
    }
    if fields.init_image.is_none() {
        return Err(ApiError::invalid("image", "is required"));
    }
    let streamed = stream::options(streaming, partial_images, fields.n, response_format)?;
    let params = fields.params(&state)?;
    if let Some(partials) = streamed {
        return stream::respond(
            &state,
            params,
            stream::Kind::Edit,
            partials,
            output_format,
            compression,
        )
        .await;
    }
    respond(
        &state,
        &headers,
        params,
        response_format,
        output_format,
        compression,
    )
    .await
}
