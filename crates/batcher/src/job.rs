//! A job: one accepted generation request and everything observers can see of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyaccel_pipeline::{GeneratedImage, GenerationRequest, Timings};
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

/// Why a job failed, with a stable code for API errors.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobError {
    pub code: &'static str,
    pub message: String,
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
}

/// What SSE subscribers receive, in order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    Queued { position: usize, eta_seconds: f64 },
    Started { batch_images: usize },
    Step { step: u32, total: u32 },
    Completed,
    Failed { error: JobError },
    Cancelled,
}

pub struct Job {
    pub id: JobId,
    pub request: GenerationRequest,
    /// Seconds since the Unix epoch when accepted.
    pub created_unix: u64,
    pub(crate) accepted: Instant,
    pub(crate) deadline: Instant,
    pub(crate) cancel: AtomicBool,
    pub(crate) started: std::sync::Mutex<Option<Instant>>,
    state: watch::Sender<JobState>,
    events: broadcast::Sender<JobEvent>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("id", &self.id).finish()
    }
}

impl Job {
    pub(crate) fn new(id: JobId, request: GenerationRequest, timeout: Duration) -> Self {
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
        });
        let (events, _) = broadcast::channel(1024);
        Self {
            id,
            request,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            accepted: now,
            deadline: now + timeout,
            cancel: AtomicBool::new(false),
            started: std::sync::Mutex::new(None),
            state,
            events,
        }
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
                error: JobError {
                    code: "internal",
                    message: "failed".into(),
                },
            },
        };
        self.update(
            |s| {
                s.status = status;
                s.queue_position = None;
                s.eta_seconds = None;
                s.result = result;
                s.error = error;
            },
            Some(event),
        );
    }
}
