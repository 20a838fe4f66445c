//! A job: one accepted generation request and everything observers can see of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyaccel_pipeline::images::Encoding;
use anyaccel_pipeline::{Checkpoint, GeneratedImage, GenerationRequest, PipelineError, Timings};
use image::RgbImage;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

pub type JobId = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// Why a job failed: a stable code that decides the HTTP status, never the message text.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Past the request timeout, queued or running.
    DeadlineExceeded,
    /// The server stopped before the job finished (or handed it back to the
    /// fleet's queue); another replica can run it, from its last checkpoint.
    ShuttingDown,
    /// The device (or its sidecar) is down; retrying later can succeed.
    ExecutorUnavailable,
    /// The pipeline or executor failed on this batch.
    GenerationFailed,
    /// A bug: the pipeline panicked.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::ExecutorUnavailable => "executor_unavailable",
            ErrorCode::GenerationFailed => "generation_failed",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code a pipeline error maps to.
    pub fn of(e: &PipelineError) -> Self {
        match e {
            PipelineError::Executor(x) if x.is_unavailable() => ErrorCode::ExecutorUnavailable,
            _ => ErrorCode::GenerationFailed,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed, with a stable code for API errors.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The images of a completed job and how long it took.
#[derive(Debug)]
pub struct JobResult {
    pub images: Vec<GeneratedImage>,
    pub queue_time: Duration,
    pub inference_time: Duration,
    pub timings: Timings,
    /// Images in the UNet batch this job ran in (itself included).
    pub batch_images: usize,
}

/// A snapshot of a job, published on every change.
#[derive(Debug, Clone)]
pub struct JobState {
    pub status: JobStatus,
    /// 0 = next to run; `None` once running or finished.
    pub queue_position: Option<usize>,
    /// Estimated seconds until it starts (queued) or finishes (running).
    pub eta_seconds: Option<f64>,
    pub step: u32,
    pub total_steps: u32,
    pub result: Option<Arc<JobResult>>,
    pub error: Option<JobError>,
    /// The latest preview while it runs (cleared when it ends).
    pub preview: Option<Preview>,
}

/// A preview of one of a job's images while it forms.
#[derive(Debug, Clone)]
pub struct Preview {
    pub step: u32,
    pub total: u32,
    /// Which of the job's images.
    pub image: usize,
    pub pixels: Arc<RgbImage>,
}

/// Which steps of a job produce previews.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Previews {
    #[default]
    Off,
    /// After every n-th step (the jobs API's `preview_every`).
    Every(u32),
    /// `k` previews spread evenly over the run (OpenAI's `partial_images`).
    Spread(u32),
}

impl Previews {
    /// Whether to preview after `step` of `total`. Never after the last
    /// step: the finished image follows at once.
    pub fn wants(self, step: u32, total: u32) -> bool {
        if step == 0 || step >= total {
            return false;
        }
        match self {
            Previews::Off => false,
            Previews::Every(n) => n > 0 && step.is_multiple_of(n),
            Previews::Spread(k) => (1..=k).any(|j| {
                let at = (f64::from(total) * f64::from(j) / f64::from(k + 1)).round() as u32;
                at.clamp(1, total - 1) == step
            }),
        }
    }
}

/// When a running job saves where it stands, so another replica can resume it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// After every this many steps (0: not by steps).
    pub every_steps: u32,
    /// Or once this long has passed since the last one (zero: not by time).
    pub every: Duration,
}

impl CheckpointPolicy {
    fn wants(&self, step: u32, total: u32, since_last: Duration) -> bool {
        if step == 0 || step >= total {
            return false;
        }
        (self.every_steps > 0 && step.is_multiple_of(self.every_steps))
            || (!self.every.is_zero() && since_last >= self.every)
    }
}

/// How a job is submitted.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// A retried submission with the same key returns the same job.
    pub idempotency_key: Option<String>,
    /// Keep the result for clients to fetch later (the jobs API); otherwise
    /// the submitter holds it (see [`Batcher::run`](crate::Batcher::run)).
    pub retained: bool,
    pub encoding: Encoding,
    pub request_id: Option<String>,
    pub previews: Previews,
    /// Checkpoint while running (jobs of the fleet's shared queue); `None`: never.
    pub checkpoints: Option<CheckpointPolicy>,
    /// The id to run it under (a shared job keeps the fleet's); `None`: a new one.
    pub id: Option<JobId>,
}

/// What SSE subscribers receive, in order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    Queued {
        position: usize,
        eta_seconds: f64,
    },
    Started {
        batch_images: usize,
    },
    Step {
        step: u32,
        total: u32,
    },
    /// A preview of image `image` after `step`; the pixels are encoded by
    /// whoever sends the event on.
    Preview {
        step: u32,
        total: u32,
        image: usize,
        #[serde(skip_serializing)]
        pixels: Arc<RgbImage>,
    },
    Completed,
    Failed {
        error: JobError,
    },
    Cancelled,
}

pub struct Job {
    pub id: JobId,
    pub request: GenerationRequest,
    /// The HTTP request that submitted it (`x-request-id`), for logs and job records.
    pub request_id: Option<String>,
    /// How its images are encoded when fetched (the jobs API).
    pub encoding: Encoding,
    pub previews: Previews,
    /// Seconds since the Unix epoch when accepted.
    pub created_unix: u64,
    pub(crate) idempotency_key: Option<String>,
    /// Kept after it finishes, for clients to fetch; a synchronous caller's
    /// job is released by its [`Held`](crate::Held) instead.
    pub(crate) retained: bool,
    /// The submitter's span (the HTTP request's), parent of the batch it runs in.
    pub(crate) span: tracing::Span,
    pub(crate) accepted: Instant,
    pub(crate) deadline: Instant,
    pub(crate) cancel: AtomicBool,
    pub(crate) started: std::sync::Mutex<Option<Instant>>,
    /// Stop at the next step and end with [`ErrorCode::ShuttingDown`],
    /// leaving a checkpoint behind.
    pub(crate) hand_back: AtomicBool,
    pub(crate) checkpoints: Option<CheckpointPolicy>,
    last_checkpoint: std::sync::Mutex<Instant>,
    checkpoint: watch::Sender<Option<Arc<Checkpoint>>>,
    state: watch::Sender<JobState>,
    events: broadcast::Sender<JobEvent>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("id", &self.id).finish()
    }
}

impl Job {
    pub(crate) fn new(
        id: JobId,
        request: GenerationRequest,
        options: SubmitOptions,
        timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        let total = request.denoise_steps();
        let (state, _) = watch::channel(JobState {
            status: JobStatus::Queued,
            queue_position: None,
            eta_seconds: None,
            step: 0,
            total_steps: total,
            result: None,
            error: None,
            preview: None,
        });
        let (events, _) = broadcast::channel(1024);
        let (checkpoint, _) = watch::channel(request.resume().cloned().map(Arc::new));
        Self {
            id,
            request,
            request_id: options.request_id,
            encoding: options.encoding,
            previews: options.previews,
            idempotency_key: options.idempotency_key,
            retained: options.retained,
            span: tracing::Span::current(),
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            accepted: now,
            deadline: now + timeout,
            cancel: AtomicBool::new(false),
            started: std::sync::Mutex::new(None),
            hand_back: AtomicBool::new(false),
            checkpoints: options.checkpoints,
            last_checkpoint: std::sync::Mutex::new(now),
            checkpoint,
            state,
            events,
        }
    }

    /// The latest checkpoint (the one it resumed from, until it makes one).
    pub fn checkpoint(&self) -> Option<Arc<Checkpoint>> {
        self.checkpoint.borrow().clone()
    }

    /// Checkpoints as they are made.
    pub fn checkpoints(&self) -> watch::Receiver<Option<Arc<Checkpoint>>> {
        self.checkpoint.subscribe()
    }

    pub(crate) fn wants_checkpoint(&self, step: u32, total: u32) -> bool {
        let since = self
            .last_checkpoint
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        self.checkpoints
            .is_some_and(|p| p.wants(step, total, since))
    }

    pub(crate) fn save_checkpoint(&self, checkpoint: Checkpoint) {
        if let Ok(mut t) = self.last_checkpoint.lock() {
            *t = Instant::now();
        }
        self.checkpoint.send_replace(Some(Arc::new(checkpoint)));
    }

    pub(crate) fn hand_back_requested(&self) -> bool {
        self.hand_back.load(Ordering::SeqCst)
    }

    /// Bytes this job keeps alive: its result's pixels and any init image.
    pub(crate) fn held_bytes(&self) -> u64 {
        let result: u64 = self.state.borrow().result.as_ref().map_or(0, |r| {
            r.images.iter().map(|i| i.image.as_raw().len() as u64).sum()
        });
        result + self.request.held_bytes()
    }

    pub fn state(&self) -> JobState {
        self.state.borrow().clone()
    }

    /// State changes, for waiting until the job ends.
    pub fn watch(&self) -> watch::Receiver<JobState> {
        self.state.subscribe()
    }

    /// Events from now on; pair with [`Job::state`] for what happened before.
    pub fn events(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// Waits until the job reaches a terminal status.
    pub async fn finished(&self) -> JobState {
        let mut rx = self.watch();
        match rx.wait_for(|s| s.status.is_terminal()).await {
            Ok(s) => s.clone(),
            Err(_) => self.state(),
        }
    }

    pub(crate) fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    pub(crate) fn past_deadline(&self) -> bool {
        Instant::now() >= self.deadline
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut JobState), event: Option<JobEvent>) {
        self.state.send_modify(f);
        if let Some(e) = event {
            // No subscribers is fine.
            let _ = self.events.send(e);
        }
    }

    pub(crate) fn finish(
        &self,
        status: JobStatus,
        result: Option<Arc<JobResult>>,
        error: Option<JobError>,
    ) {
        if self.state.borrow().status.is_terminal() {
            return;
        }
        let event = match (&status, &error) {
            (JobStatus::Completed, _) => JobEvent::Completed,
            (JobStatus::Cancelled, _) => JobEvent::Cancelled,
            (_, Some(e)) => JobEvent::Failed { error: e.clone() },
            _ => JobEvent::Failed {
                error: JobError::new(ErrorCode::Internal, "failed"),
            },
        };
        self.update(
            |s| {
                s.status = status;
                s.queue_position = None;
                s.eta_seconds = None;
                s.result = result;
                s.error = error;
                s.preview = None;
            },
            Some(event),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{CheckpointPolicy, Previews};
    use std::time::Duration;

    #[test]
    fn checkpoints_fall_every_n_steps_or_after_a_while_and_never_on_the_last() {
        let p = CheckpointPolicy {
            every_steps: 5,
            every: Duration::ZERO,
        };
        let at: Vec<u32> = (1..=20)
            .filter(|&s| p.wants(s, 20, Duration::ZERO))
            .collect();
        assert_eq!(at, [5, 10, 15]);
        let by_time = CheckpointPolicy {
            every_steps: 0,
            every: Duration::from_secs(10),
        };
        assert!(!by_time.wants(3, 20, Duration::from_secs(9)));
        assert!(by_time.wants(3, 20, Duration::from_secs(10)));
        assert!(!by_time.wants(20, 20, Duration::from_secs(60)));
    }

    fn steps(p: Previews, total: u32) -> Vec<u32> {
        (1..=total).filter(|&s| p.wants(s, total)).collect()
    }

    #[test]
    fn previews_fall_on_the_steps_asked_for_and_never_on_the_last() {
        assert_eq!(steps(Previews::Every(5), 20), [5, 10, 15]);
        assert_eq!(steps(Previews::Every(1), 4), [1, 2, 3]);
        assert_eq!(steps(Previews::Spread(3), 20), [5, 10, 15]);
        assert_eq!(steps(Previews::Spread(2), 30), [10, 20]);
        // Fewer steps than previews: as many as fit before the end.
        assert_eq!(steps(Previews::Spread(3), 2), [1]);
        assert!(steps(Previews::Off, 20).is_empty());
        assert!(steps(Previews::Every(0), 20).is_empty());
    }
}
