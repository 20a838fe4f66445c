//! The jobs API on the fleet's shared queue (`--redis-url`): any replica
//! accepts, answers, streams and cancels any job; replicas pull jobs to run
//! when they have room ([`runner`]).
//!
//! Without a queue configured the jobs API stays in this replica's memory
//! (`jobs.rs`); synchronous APIs never go through Redis.

mod runner;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyaccel_batcher::{CheckpointPolicy, Job};
use anyaccel_queue::{Accepted, Cancel, Lookup, NewJob, QueueConfig, RecordStatus, RedisQueue};
use axum::http::StatusCode;
use axum::response::Response;
use axum::response::sse::Event;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::AppState;
use crate::error::ApiError;
use crate::generate::{self, Provenance};
use crate::jobs::{self, EventStream, JobBody, JobErrorBody, JobResultBody, JobView, Prepared};

/// The shared queue's settings (`anyaccel serve --redis-url …`).
#[derive(Debug, Clone)]
pub struct SharedQueueConfig {
    pub redis: QueueConfig,
    /// When a running job checkpoints.
    pub checkpoints: CheckpointPolicy,
    /// A completed job's encoded images may take at most this much of Redis.
    pub max_result_bytes: usize,
}

/// What travels through Redis to the replica that runs a job: the body as
/// the client sent it (with its seed fixed), revalidated there.
#[derive(Serialize, Deserialize)]
struct Spec {
    body: JobBody,
    request_id: Option<String>,
    /// The artifact it was accepted for; a replica of another refuses it.
    model_hash: String,
    work: u64,
}

pub(crate) struct SharedQueue {
    redis: RedisQueue,
    config: SharedQueueConfig,
    /// Jobs this replica took: id → (stream entry, the local job once queued).
    running: Mutex<HashMap<String, Running>>,
    draining: AtomicBool,
    /// A job of this replica ended: the puller may have room again.
    changed: Notify,
}

struct Running {
    entry: String,
    job: Option<Arc<Job>>,
}

impl SharedQueue {
    pub(crate) fn new(
        config: SharedQueueConfig,
        metrics: Arc<crate::Metrics>,
    ) -> Result<Self, anyaccel_queue::QueueError> {
        let redis = RedisQueue::new(config.redis.clone(), Some(metrics))?;
        Ok(Self {
            redis,
            config,
            running: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For `/info` and readiness: whether Redis answers, and the queue's name.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let h = self.redis.health();
        serde_json::json!({
            "backend": "redis",
            "queue": self.config.redis.queue,
            "stream": self.redis.keys().stream,
            "consumer": self.config.redis.consumer,
            "connected": h.connected,
            "error": h.error,
            "running_here": self.running().len(),
        })
    }

    pub(crate) fn health(&self) -> anyaccel_queue::Health {
        self.redis.health()
    }

    pub(crate) async fn submit(
        &self,
        state: &AppState,
        mut body: JobBody,
        job: Prepared,
        key: Option<String>,
    ) -> Result<Response, ApiError> {
        if state.batcher.is_draining() {
            return Err(anyaccel_batcher::AdmissionError::Draining {
                retry_after_secs: 5,
            }
            .into());
        }
        let request = &job.request;
        let max_queue = state.config.batcher.max_queue as u64;
        let waiting = self.redis.waiting().await?;
        if waiting >= max_queue {
            return Err(anyaccel_batcher::AdmissionError::QueueFull {
                queued: waiting as usize,
                retry_after_secs: retry_after(state, waiting, request.work()),
            }
            .into());
        }
        // Every replica must draw the same images: fix the seed now.
        body.seed = request.seeds().first().copied();
        let spec = Spec {
            body,
            request_id: crate::trace::request_id(),
            model_hash: state.pipeline().model().hash.clone(),
            work: request.work(),
        };
        let id = new_job_id();
        let queued = anyaccel_batcher::JobEvent::Queued {
            position: waiting as usize,
            eta_seconds: eta(state, waiting as usize, request.work()).unwrap_or(0.0),
        };
        let new = NewJob {
            id: id.clone(),
            spec: to_json(&spec)?,
            provenance: to_json(&generate::provenance(state, request))?,
            total_steps: request.denoise_steps(),
            created_unix: unix_now(),
            request_id: spec.request_id.clone(),
            queued_event: jobs::event_json(&queued),
            idempotency_key: key,
        };
        let id = match self.redis.accept(&new).await? {
            Accepted::New { .. } => {
                tracing::debug!(job = %id, "accepted onto the shared queue");
                id
            }
            Accepted::Existing { id } => id,
        };
        Ok(jobs::accepted(self.status(state, &id).await?))
    }

    pub(crate) async fn status(&self, state: &AppState, id: &str) -> Result<JobView, ApiError> {
        match self.redis.get(id).await? {
            Lookup::Found(r) => self.view(state, id, r).await,
            Lookup::Gone => Err(ApiError::new(
                StatusCode::GONE,
                "expired",
                format!("job {id} finished and its result expired"),
            )),
            Lookup::NotFound => Err(ApiError::not_found(format!("no job {id}"))),
        }
    }

    async fn view(
        &self,
        state: &AppState,
        id: &str,
        r: anyaccel_queue::JobRecord,
    ) -> Result<JobView, ApiError> {
        let work = serde_json::from_str::<Spec>(&r.spec)
            .map(|s| s.work)
            .unwrap_or(0);
        let (queue_position, eta_seconds) = match r.status {
            RecordStatus::Queued => {
                let p = self.redis.position(&r.entry).await?;
                (Some(p), eta(state, p, work))
            }
            RecordStatus::Running if r.total_steps > 0 => {
                let left =
                    f64::from(r.total_steps.saturating_sub(r.step)) / f64::from(r.total_steps);
                (None, eta(state, 0, work).map(|e| e * left))
            }
            _ => (None, None),
        };
        let anyaccel: Provenance = serde_json::from_str(&r.provenance)
            .map_err(|e| ApiError::internal(format!("job {id} has no readable provenance: {e}")))?;
        let result = match (&r.status, &r.result) {
            (RecordStatus::Completed, Some(bytes)) => {
                Some(serde_json::from_slice::<JobResultBody>(bytes).map_err(|e| {
                    ApiError::internal(format!("job {id}'s result is unreadable: {e}"))
                })?)
            }
            _ => None,
        };
        let error = r
            .error
            .as_deref()
            .and_then(|e| serde_json::from_str::<JobErrorBody>(e).ok());
        Ok(JobView {
            id: id.to_string(),
            status: r.status.as_str().to_string(),
            created: r.created_unix,
            request_id: r.request_id,
            queue_position,
            eta_seconds,
            progress: jobs::Progress {
                step: r.step,
                total: r.total_steps,
            },
            status_url: format!("/v1/jobs/{id}"),
            events_url: format!("/v1/jobs/{id}/events"),
            anyaccel,
            replica: r.owner,
            result,
            error,
        })
    }

    pub(crate) async fn cancel(&self, state: &AppState, id: &str) -> Result<JobView, ApiError> {
        let event = jobs::event_json(&anyaccel_batcher::JobEvent::Cancelled);
        match self.redis.cancel(id, &event).await? {
            Cancel::NotFound => return self.status(state, id).await,
            Cancel::Requested => {
                // The replica running it stops at its next step; wait for the
                // answer to be final, as the in-memory API does.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while tokio::time::Instant::now() < deadline {
                    if let Lookup::Found(r) = self.redis.get(id).await?
                        && r.status.is_terminal()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Cancel::Cancelled | Cancel::Finished => {}
        }
        self.status(state, id).await
    }

    /// A job's events from any replica: its latest event first (what a late
    /// subscriber needs), then each new one until it ends.
    pub(crate) async fn events(&self, state: &AppState, id: &str) -> Result<EventStream, ApiError> {
        // 404/410 as the status endpoint answers them.
        self.status(state, id).await?;
        let last = self.redis.last_event(id).await?;
        let mut sub = self.redis.subscriber(Duration::from_secs(5)).await?;
        let id = id.to_string();
        let stream = async_stream(move |tx| async move {
            let mut after = "0-0".to_string();
            if let Some(e) = last {
                after = e.id.clone();
                let end = is_terminal_data(&e.data);
                if tx.send(sse(&e.data)).await.is_err() || end {
                    return;
                }
            }
            loop {
                match sub.next(&id, &after).await {
                    Ok(events) => {
                        for e in events {
                            after = e.id.clone();
                            let end = is_terminal_data(&e.data);
                            if tx.send(sse(&e.data)).await.is_err() || end {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(job = %id, error = %err, "event stream interrupted");
                        let data = serde_json::json!({
                            "event": "error",
                            "message": format!("the job queue is unreachable ({err}); reconnect to resume"),
                        });
                        let _ = tx
                            .send(Event::default().event("error").data(data.to_string()))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(stream)
    }
}

impl SharedQueue {
    pub(crate) async fn keep_file(
        &self,
        bytes: &[u8],
        format: anyaccel_pipeline::images::OutputFormat,
    ) -> Result<String, anyaccel_queue::QueueError> {
        let r = anyaccel_pipeline::request::random_seed;
        let id = format!(
            "{:08x}{:08x}{:08x}{:08x}.{}",
            r(),
            r(),
            r(),
            r(),
            format.extension()
        );
        self.redis.keep_file(&id, bytes).await?;
        Ok(id)
    }

    pub(crate) async fn file(&self, id: &str) -> Result<Option<Vec<u8>>, ApiError> {
        Ok(self.redis.file(id).await?)
    }
}

/// A stream fed by a task (the SSE body ends when the task returns or the
/// client goes away).
fn async_stream<F, Fut>(f: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok,
    ))
}

fn event_name_of(data: &str) -> String {
    serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| "message".into())
}

fn is_terminal_data(data: &str) -> bool {
    matches!(
        event_name_of(data).as_str(),
        "completed" | "failed" | "cancelled"
    )
}

fn sse(data: &str) -> Event {
    Event::default().event(event_name_of(data)).data(data)
}

fn to_json<T: Serialize>(v: &T) -> Result<String, ApiError> {
    serde_json::to_string(v).map_err(|e| ApiError::internal(e.to_string()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unguessable, like the in-memory ids.
fn new_job_id() -> String {
    let r = anyaccel_pipeline::request::random_seed;
    format!("job-{:08x}{:08x}", r() & 0xffff_ffff, r() & 0xffff_ffff)
}

/// Seconds until a job `position` places back starts, at this replica's
/// measured rate (every replica of a queue runs the same artifact).
fn eta(state: &AppState, position: usize, work: u64) -> Option<f64> {
    let spw = state.batcher.stats().seconds_per_work?;
    Some((position as f64 + 1.0) * work as f64 * spw)
}

fn retry_after(state: &AppState, waiting: u64, work: u64) -> u64 {
    eta(state, waiting as usize, work)
        .map(|s| s.ceil() as u64)
        .unwrap_or(1)
        .clamp(1, 600)
}

pub(crate) use runner::{begin_drain, settle, spawn};

impl SharedQueue {
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
