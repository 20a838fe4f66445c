//! OpenAI's streamed images (`stream: true` on generations and edits):
//! `partial_images` previews as `*.partial_image` events while the image
//! forms, then one `*.completed` event with the final image, so the official
//! SDKs' streaming calls work unchanged. A client that disconnects drops the
//! stream, and with it the hold on the job, which cancels it.

use std::convert::Infallible;

use anyaccel_batcher::{Held, JobEvent, Previews};
use anyaccel_pipeline::GenerationParams;
use anyaccel_pipeline::images::OutputFormat;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Serialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::AppState;
use crate::error::ApiError;
use crate::generate;
use crate::openai::ResponseFormat;

/// Most partial images OpenAI's API takes.
pub const MAX_PARTIAL_IMAGES: u32 = 3;

/// Which endpoint is streaming: the event names differ.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Generation,
    Edit,
}

impl Kind {
    fn partial(self) -> &'static str {
        match self {
            Kind::Generation => "image_generation.partial_image",
            Kind::Edit => "image_edit.partial_image",
        }
    }
    fn completed(self) -> &'static str {
        match self {
            Kind::Generation => "image_generation.completed",
            Kind::Edit => "image_edit.completed",
        }
    }
}

/// Checks `stream`/`partial_images` against the rest of the request;
/// `Some(k)` when the response streams with `k` partial images.
pub fn options(
    stream: Option<bool>,
    partial_images: Option<u32>,
    n: Option<u32>,
    response_format: ResponseFormat,
) -> Result<Option<u32>, ApiError> {
    if let Some(k) = partial_images
        && k > MAX_PARTIAL_IMAGES
    {
        return Err(ApiError::invalid(
            "partial_images",
            format!("must be 0 to {MAX_PARTIAL_IMAGES}"),
        ));
    }
    if stream != Some(true) {
        if partial_images.is_some_and(|k| k > 0) {
            return Err(ApiError::invalid(
                "partial_images",
                "applies only with stream: true",
            ));
        }
        return Ok(None);
    }
    if n.is_some_and(|n| n > 1) {
        return Err(ApiError::invalid(
            "n",
            "must be 1 with stream: true (a streamed event carries one image); send one request per image",
        ));
    }
    if response_format == ResponseFormat::Url {
        return Err(ApiError::invalid(
            "response_format",
            "stream: true sends images as b64_json; url is not available",
        ));
    }
    Ok(Some(partial_images.unwrap_or(0)))
}

#[derive(Serialize)]
struct Usage {
    input_tokens: u32,
    input_tokens_details: TokenDetails,
    output_tokens: u32,
    total_tokens: u32,
}

#[derive(Serialize)]
struct TokenDetails {
    image_tokens: u32,
    text_tokens: u32,
}

#[derive(Serialize)]
struct ImageEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    b64_json: String,
    created_at: u64,
    size: String,
    quality: &'static str,
    background: &'static str,
    output_format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    partial_image_index: Option<u32>,
    /// Token usage is OpenAI's billing unit for its own models; images here
    /// are not billed by tokens, so every count is 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    /// The seed that reproduces the final image.
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

struct Streaming {
    state: AppState,
    held: Held,
    events: BroadcastStream<JobEvent>,
    kind: Kind,
    partials: u32,
    sent: u32,
    format: OutputFormat,
    compression: Option<u8>,
}

impl Streaming {
    fn event(&self, b64_json: String, partial: Option<u32>, seed: Option<u64>) -> Event {
        let job = self.held.job();
        let body = ImageEvent {
            kind: match partial {
                Some(_) => self.kind.partial(),
                None => self.kind.completed(),
            },
            b64_json,
            created_at: job.created_unix,
            size: format!("{}x{}", job.request.width(), job.request.height()),
            quality: "auto",
            background: "opaque",
            output_format: self.format.extension().replace("jpg", "jpeg"),
            partial_image_index: partial,
            usage: partial.is_none().then_some(Usage {
                input_tokens: 0,
                input_tokens_details: TokenDetails {
                    image_tokens: 0,
                    text_tokens: 0,
                },
                output_tokens: 0,
                total_tokens: 0,
            }),
            seed,
        };
        Event::default()
            .event(body.kind)
            .json_data(&body)
            .unwrap_or_else(|_| Event::default().event(body.kind))
    }

    /// The last event: the final image, or the error the job ended with.
    async fn end(&self) -> Event {
        let finished = async {
            let result = generate::finished(&self.held).await?;
            let mut encoded = generate::encode(
                &self.state,
                self.held.job(),
                &result,
                self.format,
                self.compression,
            )
            .await?;
            encoded
                .pop()
                .ok_or_else(|| ApiError::internal("the job produced no image"))
        };
        match finished.await {
            Ok(img) => self.event(generate::b64(&img.bytes), None, Some(img.seed)),
            Err(e) => Event::default()
                .event("error")
                .json_data(e.body())
                .unwrap_or_else(|_| Event::default().event("error")),
        }
    }

    /// The next event, or `None` once the final one was sent.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Option<Self>)> {
        loop {
            match self.events.next().await {
                Some(Ok(JobEvent::Preview { pixels, .. })) if self.sent < self.partials => {
                    let encoded = generate::encode_preview(
                        &self.state,
                        self.held.job(),
                        pixels,
                        self.format,
                        self.compression,
                    )
                    .await;
                    let Ok(bytes) = encoded else {
                        continue;
                    };
                    let ev = self.event(generate::b64(&bytes), Some(self.sent), None);
                    self.sent += 1;
                    return Some((Ok(ev), Some(self)));
                }
                Some(Ok(JobEvent::Completed | JobEvent::Failed { .. } | JobEvent::Cancelled))
                | None => {
                    let ev = self.end().await;
                    // Dropping `self` releases the job.
                    return Some((Ok(ev), None));
                }
                // Progress events, and a lagging receiver, carry nothing to send.
                Some(_) => continue,
            }
        }
    }
}

/// Runs `params` and streams its partial images and final image.
pub async fn respond(
    state: &AppState,
    params: GenerationParams,
    kind: Kind,
    partials: u32,
    format: OutputFormat,
    compression: Option<u8>,
) -> Result<Response, ApiError> {
    let request = generate::validate(state, params).await?;
    let previews = if partials > 0 {
        Previews::Spread(partials)
    } else {
        Previews::Off
    };
    let mut held = generate::hold(state, request, previews)?;
    let events = held
        .take_events()
        .ok_or_else(|| ApiError::internal("the job's events were already taken"))?;
    let first = Streaming {
        state: state.clone(),
        held,
        events: BroadcastStream::new(events),
        kind,
        partials,
        sent: 0,
        format,
        compression,
    };
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> = Box::pin(
        stream::unfold(Some(first), |s| async move { s?.next().await }),
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
