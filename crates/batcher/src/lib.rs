//! Admission, batching and the job lifecycle between HTTP and the pipeline.
//!
//! - Admission: a bounded queue, limited both in requests and in work
//!   (pixels × steps × images); over either bound a submission is refused
//!   with a retry time computed from measured throughput.
//! - Batching: one worker thread takes the oldest job and adds queued jobs
//!   with the same [`BatchKey`](anyaccel_pipeline::BatchKey) up to a maximum
//!   number of images, waiting at most a short delay for company.
//! - Lifecycle: every accepted job ends completed, failed or cancelled; a
//!   job past its deadline is cancelled at the next step.
//! - Memory: a synchronous caller's job lives as long as its [`Held`]; jobs
//!   for clients to fetch later (and `url` images) are kept for a TTL
//!   within a byte budget, oldest out first, then reported gone.

mod job;
mod retention;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyaccel_pipeline::images::OutputFormat;
use anyaccel_pipeline::{GenerationRequest, Pipeline, Timings};

pub use job::{
    CheckpointPolicy, ErrorCode, Job, JobError, JobEvent, JobId, JobResult, JobState, JobStatus,
    Preview, Previews, SubmitOptions,
};
use retention::{Departure, Retention};

/// Bounds and batching policy. The defaults are the server's (`anyaccel serve` reads them).
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Requests allowed to wait (running ones not counted).
    pub max_queue: usize,
    /// Work allowed to wait, in pixels × steps × images (× 2 with guidance).
    pub max_queue_work: u64,
    /// Most images in one denoiser batch; 1 turns batching off.
    pub max_batch_images: usize,
    /// How long the oldest job may wait for compatible company.
    pub max_batch_delay: Duration,
    /// How long finished results stay retrievable.
    pub result_ttl: Duration,
    /// Bytes of retained results (jobs' pixels, `url` images) kept at most;
    /// past it the oldest go first.
    pub result_memory: u64,
    /// Work not finished by then is cancelled.
    pub request_timeout: Duration,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_queue: 64,
            // 50,000 megapixel-steps: 64 guided 512×512 50-step images, with room.
            max_queue_work: 50_000 * 1_000_000,
            max_batch_images: 4,
            max_batch_delay: Duration::from_millis(20),
            result_ttl: Duration::from_secs(3600),
            result_memory: 1 << 30,
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AdmissionError {
    #[error("the queue is full ({queued} requests waiting); retry in about {retry_after_secs} s")]
    QueueFull {
        queued: usize,
        retry_after_secs: u64,
    },
    #[error("this request alone exceeds the queue's work budget")]
    TooLarge,
    #[error("the server is shutting down; retry on another replica in {retry_after_secs} s")]
    Draining { retry_after_secs: u64 },
}

/// The batcher could not start.
#[derive(Debug, thiserror::Error)]
#[error("could not start the batcher's worker thread: {0}")]
pub struct StartError(#[from] std::io::Error);

/// Looking a job or a kept file up.
#[derive(Debug)]
pub enum Lookup<T> {
    Found(T),
    /// It existed but its result expired, was evicted or was released.
    Gone,
    NotFound,
}

/// An encoded image behind a `url` link.
#[derive(Debug, Clone)]
pub struct KeptFile {
    pub bytes: Arc<Vec<u8>>,
    pub format: OutputFormat,
}

/// Receives measurements as work happens (the server's metrics implement it).
pub trait Telemetry: Send + Sync {
    fn job_started(&self, _queue_wait: Duration) {}
    fn batch_finished(&self, _images: usize, _timings: &Timings) {}
    fn job_finished(&self, _status: JobStatus, _images: usize) {}
    /// A retained result left early to stay within the memory budget.
    fn result_evicted(&self) {}
    /// The pipeline panicked; the batcher now reports itself unhealthy.
    fn pipeline_panicked(&self) {}
}

struct NoTelemetry;
impl Telemetry for NoTelemetry {}

/// Counters for gauges and `Retry-After`.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub queued: usize,
    pub queued_work: u64,
    pub running: usize,
    pub running_work: u64,
    /// Measured seconds per work unit (None before the first batch).
    pub seconds_per_work: Option<f64>,
    pub draining: bool,
    /// Retained results and the bytes they hold.
    pub results_held: usize,
    pub result_bytes: u64,
}

impl QueueStats {
    /// Estimated seconds to finish everything queued and running.
    pub fn backlog_seconds(&self) -> f64 {
        self.seconds_per_work
            .map(|s| (self.queued_work + self.running_work) as f64 * s)
            .unwrap_or(0.0)
    }
}

struct State {
    queue: VecDeque<Arc<Job>>,
    queued_work: u64,
    running: Vec<Arc<Job>>,
    running_work: u64,
    /// Every job a client can still look up: queued, running, held by its
    /// synchronous caller, or finished and retained.
    jobs: HashMap<JobId, Arc<Job>>,
    files: HashMap<String, KeptFile>,
    retention: Retention,
    idempotency: HashMap<String, JobId>,
    draining: bool,
    shutdown: bool,
    seconds_per_work: Option<f64>,
    /// Set when the pipeline panicked: its state can no longer be trusted.
    broken: Option<String>,
    /// Run by the worker before the next batch ([`Batcher::on_worker`]).
    tasks: VecDeque<Task>,
}

type Task = Box<dyn FnOnce() + Send>;

impl State {
    fn stats(&self) -> QueueStats {
        QueueStats {
            queued: self.queue.len(),
            queued_work: self.queued_work,
            running: self.running.len(),
            running_work: self.running_work,
            seconds_per_work: self.seconds_per_work,
            draining: self.draining,
            results_held: self.retention.held(),
            result_bytes: self.retention.held_bytes(),
        }
    }

    /// Forgets a job: its idempotency key stops matching and its id reads as gone.
    fn forget_job(&mut self, job: &Job) {
        if let Some(key) = &job.idempotency_key
            && self.idempotency.get(key) == Some(&job.id)
        {
            self.idempotency.remove(key);
        }
        self.retention.release(&job.id);
    }

    /// Drops results past their TTL or over the memory budget.
    fn expire(&mut self, telemetry: &dyn Telemetry) {
        let now = Instant::now();
        while let Some((id, why)) = self.retention.next_departure(now) {
            if let Some(job) = self.jobs.remove(&id) {
                self.forget_job(&job);
            } else {
                self.files.remove(&id);
            }
            if why == Departure::Evicted {
                telemetry.result_evicted();
            }
        }
    }

    /// A job reached its end: a retained one starts its TTL.
    fn finished(&mut self, job: &Job, telemetry: &dyn Telemetry) {
        if job.retained && self.jobs.contains_key(&job.id) {
            self.retention
                .hold(&job.id, job.held_bytes(), Instant::now());
            self.expire(telemetry);
        }
    }
}

struct Inner {
    pipeline: Arc<Pipeline>,
    config: BatcherConfig,
    state: Mutex<State>,
    wake: Condvar,
    telemetry: Arc<dyn Telemetry>,
    next_id: AtomicU64,
    id_salt: u64,
}

/// The queue and its worker. Cloning shares it.
#[derive(Clone)]
pub struct Batcher {
    inner: Arc<Inner>,
}

/// A synchronous caller's hold on its job. Dropping it (the response was
/// written, or the client went away) cancels the job if it has not finished
/// and lets its result go: the id reads as gone from then on.
pub struct Held {
    batcher: Batcher,
    job: Arc<Job>,
    /// Subscribed before the job was queued, so no event is missed.
    events: Option<tokio::sync::broadcast::Receiver<JobEvent>>,
}

impl Held {
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// Every event of the job from its start (once; later calls get `None`).
    pub fn take_events(&mut self) -> Option<tokio::sync::broadcast::Receiver<JobEvent>> {
        self.events.take()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.job.state().status.is_terminal() {
            tracing::info!(job = %self.job.id, "caller went away; cancelling");
            self.batcher.cancel(&self.job);
        }
        self.batcher.release(&self.job.id);
    }
}

impl Batcher {
    /// Starts the worker thread.
    pub fn start(
        pipeline: Arc<Pipeline>,
        config: BatcherConfig,
        telemetry: Option<Arc<dyn Telemetry>>,
    ) -> Result<Self, StartError> {
        let inner = Arc::new(Inner {
            pipeline,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_work: 0,
                running: Vec::new(),
                running_work: 0,
                jobs: HashMap::new(),
                files: HashMap::new(),
                retention: Retention::new(config.result_ttl, config.result_memory),
                idempotency: HashMap::new(),
                draining: false,
                shutdown: false,
                seconds_per_work: None,
                broken: None,
                tasks: VecDeque::new(),
            }),
            config,
            wake: Condvar::new(),
            telemetry: telemetry.unwrap_or_else(|| Arc::new(NoTelemetry)),
            next_id: AtomicU64::new(1),
            id_salt: anyaccel_pipeline::request::random_seed() << 20,
        });
        let worker = inner.clone();
        std::thread::Builder::new()
            .name("anyaccel-batcher".into())
            .spawn(move || worker.run())?;
        Ok(Self { inner })
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.inner.pipeline
    }

    pub fn config(&self) -> &BatcherConfig {
        &self.inner.config
    }

    /// Seeds the throughput estimate (from warm-up) so the first `Retry-After` is informed.
    pub fn record_throughput(&self, work: u64, elapsed: Duration) {
        let mut st = self.inner.lock();
        st.seconds_per_work = Some(elapsed.as_secs_f64() / work.max(1) as f64);
    }

    /// Runs `task` on the worker thread between batches and waits for it;
    /// `None` if the worker is gone or the task panicked. Executors keep
    /// per-thread state (ONNX Runtime's CUDA handles and captured CUDA
    /// graphs live with the thread that ran), so warm-up runs here, where
    /// batches will.
    pub fn on_worker<T: Send + 'static>(
        &self,
        task: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let task: Task = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
            // The caller may have stopped waiting; nothing to do then.
            let _ = done.send(out.ok());
        });
        {
            let mut st = self.inner.lock();
            if st.shutdown {
                return None;
            }
            st.tasks.push_back(task);
        }
        self.inner.wake.notify_all();
        result.recv().ok().flatten()
    }

    /// Queues a validated request. With an idempotency key already seen, returns that job.
    pub fn submit(
        &self,
        request: GenerationRequest,
        options: SubmitOptions,
    ) -> Result<Arc<Job>, AdmissionError> {
        self.enqueue(request, options).map(|(job, _)| job)
    }

    /// Queues a job, subscribed to its events before anyone can run it.
    fn enqueue(
        &self,
        request: GenerationRequest,
        options: SubmitOptions,
    ) -> Result<(Arc<Job>, tokio::sync::broadcast::Receiver<JobEvent>), AdmissionError> {
        let inner = &self.inner;
        let mut st = inner.lock();
        if let Some(job) = options
            .idempotency_key
            .as_ref()
            .and_then(|key| st.idempotency.get(key))
            .and_then(|id| st.jobs.get(id))
        {
            return Ok((job.clone(), job.events()));
        }
        let retry = retry_after(&st);
        if st.draining || st.shutdown {
            return Err(AdmissionError::Draining {
                retry_after_secs: 5,
            });
        }
        let work = request.work();
        if work > inner.config.max_queue_work {
            return Err(AdmissionError::TooLarge);
        }
        if st.queue.len() >= inner.config.max_queue
            || st.queued_work + work > inner.config.max_queue_work
        {
            return Err(AdmissionError::QueueFull {
                queued: st.queue.len(),
                retry_after_secs: retry,
            });
        }
        let id = options.id.clone().unwrap_or_else(|| {
            let n = inner.next_id.fetch_add(1, Ordering::Relaxed);
            format!(
                "job-{:016x}",
                inner.id_salt ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            )
        });
        let key = options.idempotency_key.clone();
        let job = Arc::new(Job::new(
            id.clone(),
            request,
            options,
            inner.config.request_timeout,
        ));
        let events = job.events();
        st.queued_work += work;
        st.queue.push_back(job.clone());
        st.jobs.insert(id.clone(), job.clone());
        if let Some(key) = key {
            st.idempotency.insert(key, id);
        }
        let position = st.queue.len() - 1;
        let eta = eta_before(&st, position);
        job.update(
            |s| {
                s.queue_position = Some(position);
                s.eta_seconds = Some(eta);
            },
            Some(JobEvent::Queued {
                position,
                eta_seconds: eta,
            }),
        );
        drop(st);
        inner.wake.notify_all();
        tracing::debug!(job = %job.id, position, "accepted");
        Ok((job, events))
    }

    /// Queues a synchronous caller's request; the job lives as long as the
    /// [`Held`] (`options.retained` and the idempotency key do not apply).
    pub fn run(
        &self,
        request: GenerationRequest,
        options: SubmitOptions,
    ) -> Result<Held, AdmissionError> {
        let (job, events) = self.enqueue(
            request,
            SubmitOptions {
                retained: false,
                idempotency_key: None,
                ..options
            },
        )?;
        Ok(Held {
            batcher: self.clone(),
            job,
            events: Some(events),
        })
    }

    /// Lets a job go now: it is no longer looked up and its id reads as gone.
    pub fn release(&self, id: &str) {
        let mut st = self.inner.lock();
        if let Some(job) = st.jobs.remove(id) {
            st.forget_job(&job);
        }
    }

    pub fn get(&self, id: &str) -> Lookup<Arc<Job>> {
        let mut st = self.inner.lock();
        st.expire(self.inner.telemetry.as_ref());
        if let Some(j) = st.jobs.get(id) {
            Lookup::Found(j.clone())
        } else if st.retention.gone.contains(id) {
            Lookup::Gone
        } else {
            Lookup::NotFound
        }
    }

    /// Keeps an encoded image behind a `url` link, within the result budget;
    /// returns its file name (`<random>.<ext>`).
    pub fn keep_file(&self, bytes: Vec<u8>, format: OutputFormat) -> String {
        let random = anyaccel_pipeline::request::random_seed;
        let id = format!(
            "{:016x}{:016x}.{}",
            random() << 32 | random(),
            random(),
            format.extension()
        );
        let mut st = self.inner.lock();
        st.retention.hold(&id, bytes.len() as u64, Instant::now());
        st.files.insert(
            id.clone(),
            KeptFile {
                bytes: Arc::new(bytes),
                format,
            },
        );
        st.expire(self.inner.telemetry.as_ref());
        id
    }

    pub fn file(&self, id: &str) -> Lookup<KeptFile> {
        let mut st = self.inner.lock();
        st.expire(self.inner.telemetry.as_ref());
        if let Some(f) = st.files.get(id) {
            Lookup::Found(f.clone())
        } else if st.retention.gone.contains(id) {
            Lookup::Gone
        } else {
            Lookup::NotFound
        }
    }

    /// Cancels a queued job at once, or a running one at its next step.
    /// Returns false if the job had already finished.
    pub fn cancel(&self, job: &Job) -> bool {
        job.cancel.store(true, Ordering::SeqCst);
        let mut st = self.inner.lock();
        if job.state().status.is_terminal() {
            return false;
        }
        if let Some(j) = st
            .queue
            .iter()
            .position(|j| j.id == job.id)
            .and_then(|pos| st.queue.remove(pos))
        {
            st.queued_work -= j.request.work();
            j.finish(JobStatus::Cancelled, None, None);
            self.inner.telemetry.job_finished(JobStatus::Cancelled, 0);
            st.finished(&j, self.inner.telemetry.as_ref());
            publish_positions(&st);
        }
        true
    }

    /// Stops a job at its next step (or before it starts) with a checkpoint
    /// of where it stands; it ends failed with [`ErrorCode::ShuttingDown`],
    /// for its owner to put back on the fleet's queue.
    pub fn hand_back(&self, job: &Job) {
        job.hand_back.store(true, Ordering::SeqCst);
        let mut st = self.inner.lock();
        if let Some(j) = st
            .queue
            .iter()
            .position(|j| j.id == job.id)
            .and_then(|pos| st.queue.remove(pos))
        {
            st.queued_work -= j.request.work();
            j.finish(JobStatus::Failed, None, Some(worker::handed_back()));
            self.inner.telemetry.job_finished(JobStatus::Failed, 0);
            st.finished(&j, self.inner.telemetry.as_ref());
            publish_positions(&st);
        }
    }

    /// Cancels every queued and running job (A1111's `/interrupt`).
    pub fn cancel_all(&self) {
        let jobs: Vec<Arc<Job>> = {
            let st = self.inner.lock();
            st.queue.iter().chain(st.running.iter()).cloned().collect()
        };
        for j in jobs {
            self.cancel(&j);
        }
    }

    pub fn stats(&self) -> QueueStats {
        let mut st = self.inner.lock();
        st.expire(self.inner.telemetry.as_ref());
        st.stats()
    }

    /// Why the batcher cannot be trusted with more work (the pipeline
    /// panicked), if it cannot; readiness probes report it.
    pub fn broken(&self) -> Option<String> {
        self.inner.lock().broken.clone()
    }

    /// The job currently running, if any (A1111's `/progress`).
    pub fn current(&self) -> Option<Arc<Job>> {
        self.inner.lock().running.first().cloned()
    }

    /// Stops accepting work; queued and running jobs continue.
    pub fn begin_drain(&self) {
        self.inner.lock().draining = true;
        self.inner.wake.notify_all();
    }

    pub fn is_draining(&self) -> bool {
        self.inner.lock().draining
    }

    /// Waits until nothing is queued or running, up to `timeout`; then fails
    /// whatever is left so no accepted job ends without a status.
    /// Returns true if everything finished in time.
    pub fn drain(&self, timeout: Duration) -> bool {
        self.begin_drain();
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.lock();
        while !(st.queue.is_empty() && st.running.is_empty()) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = match self.inner.wake.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        let clean = st.queue.is_empty() && st.running.is_empty();
        let error = JobError::new(
            ErrorCode::ShuttingDown,
            "the server shut down before this job finished; retry",
        );
        let mut left: Vec<Arc<Job>> = st.queue.drain(..).collect();
        left.extend(st.running.iter().cloned());
        for j in left {
            j.cancel.store(true, Ordering::SeqCst);
            j.finish(JobStatus::Failed, None, Some(error.clone()));
        }
        st.queued_work = 0;
        st.shutdown = true;
        // Dropping a task drops its sender: whoever waits on it gets `None`.
        st.tasks.clear();
        drop(st);
        self.inner.wake.notify_all();
        clean
    }
}

fn retry_after(st: &State) -> u64 {
    // Time for the current backlog to clear, at the measured rate.
    (st.stats().backlog_seconds().ceil() as u64).clamp(1, 600)
}

/// Estimated seconds until the job at `position` starts.
fn eta_before(st: &State, position: usize) -> f64 {
    let spw = st.seconds_per_work.unwrap_or(0.0);
    let ahead: u64 = st
        .queue
        .iter()
        .take(position)
        .map(|j| j.request.work())
        .sum();
    (ahead + st.running_work) as f64 * spw
}

fn publish_positions(st: &State) {
    for (i, j) in st.queue.iter().enumerate() {
        if j.state().queue_position != Some(i) {
            let eta = eta_before(st, i);
            j.update(
                |s| {
                    s.queue_position = Some(i);
                    s.eta_seconds = Some(eta);
                },
                Some(JobEvent::Queued {
                    position: i,
                    eta_seconds: eta,
                }),
            );
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not take the server down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
