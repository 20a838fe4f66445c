//! Admission, batching and the job lifecycle between HTTP and the pipeline.
//!
//! - Admission: a bounded queue, limited both in requests and in work
//!   (pixels × steps × images); over either bound a submission is refused
//!   with a retry time computed from measured throughput.
//! - Batching: one worker thread takes the oldest job and adds queued jobs
//!   with the same [`BatchKey`](anyaccel_pipeline::BatchKey) up to a maximum
//!   number of images, waiting at most a short delay for company.
//! - Lifecycle: every accepted job ends completed, failed or cancelled; a
//!   job past its deadline is cancelled at the next step; results are kept
//!   for a TTL, then reported gone.

mod job;

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyaccel_pipeline::{GenerationRequest, Observer, Outcome, Pipeline, Timings};

pub use job::{Job, JobError, JobEvent, JobId, JobResult, JobState, JobStatus};

/// Bounds and batching policy.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Requests allowed to wait (running ones not counted).
    pub max_queue: usize,
    /// Work allowed to wait, in pixels × steps × images (× 2 with guidance).
    pub max_queue_work: u64,
    /// Most images in one UNet batch; 1 turns batching off.
    pub max_batch_images: usize,
    /// How long the oldest job may wait for compatible company.
    pub max_batch_delay: Duration,
    /// How long finished results stay retrievable.
    pub result_ttl: Duration,
    /// Work not finished by then is cancelled.
    pub request_timeout: Duration,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_queue: 64,
            max_queue_work: 512 * 512 * 50 * 2 * 64,
            max_batch_images: 4,
            max_batch_delay: Duration::from_millis(20),
            result_ttl: Duration::from_secs(600),
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

/// Looking a job up.
#[derive(Debug)]
pub enum Lookup {
    Found(Arc<Job>),
    /// It existed but its result expired.
    Gone,
    NotFound,
}

/// Receives measurements as work happens (the server's metrics implement it).
pub trait Telemetry: Send + Sync {
    fn job_started(&self, _queue_wait: Duration) {}
    fn batch_finished(&self, _images: usize, _timings: &Timings) {}
    fn job_finished(&self, _status: JobStatus, _images: usize) {}
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
    jobs: HashMap<JobId, Arc<Job>>,
    /// Finished jobs' expiry times, then tombstones of expired ids.
    expiry: VecDeque<(Instant, JobId)>,
    gone: HashMap<JobId, Instant>,
    idempotency: HashMap<String, JobId>,
    draining: bool,
    shutdown: bool,
    seconds_per_work: Option<f64>,
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

impl Batcher {
    /// Starts the worker thread.
    pub fn start(
        pipeline: Arc<Pipeline>,
        config: BatcherConfig,
        telemetry: Option<Arc<dyn Telemetry>>,
    ) -> Self {
        let inner = Arc::new(Inner {
            pipeline,
            config,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_work: 0,
                running: Vec::new(),
                running_work: 0,
                jobs: HashMap::new(),
                expiry: VecDeque::new(),
                gone: HashMap::new(),
                idempotency: HashMap::new(),
                draining: false,
                shutdown: false,
                seconds_per_work: None,
            }),
            wake: Condvar::new(),
            telemetry: telemetry.unwrap_or_else(|| Arc::new(NoTelemetry)),
            next_id: AtomicU64::new(1),
            id_salt: anyaccel_pipeline::request::random_seed() << 20,
        });
        let worker = inner.clone();
        std::thread::Builder::new()
            .name("anyaccel-batcher".into())
            .spawn(move || worker.run())
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("could not start the batcher thread: {e}"));
        Self { inner }
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

    /// Queues a validated request. With an idempotency key already seen, returns that job.
    pub fn submit(
        &self,
        request: GenerationRequest,
        idempotency_key: Option<String>,
    ) -> Result<Arc<Job>, AdmissionError> {
        let inner = &self.inner;
        let mut st = inner.lock();
        if let Some(job) = idempotency_key
            .as_ref()
            .and_then(|key| st.idempotency.get(key))
            .and_then(|id| st.jobs.get(id))
        {
            return Ok(job.clone());
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
        let n = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "job-{:016x}",
            inner.id_salt ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        );
        let job = Arc::new(Job::new(id.clone(), request, inner.config.request_timeout));
        st.queued_work += work;
        st.queue.push_back(job.clone());
        st.jobs.insert(id.clone(), job.clone());
        if let Some(key) = idempotency_key {
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
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Lookup {
        let mut st = self.inner.lock();
        expire(&mut st);
        if let Some(j) = st.jobs.get(id) {
            Lookup::Found(j.clone())
        } else if st.gone.contains_key(id) {
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
            schedule_expiry(&mut st, &self.inner.config, &j.id);
            publish_positions(&st);
        }
        true
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
        let st = self.inner.lock();
        QueueStats {
            queued: st.queue.len(),
            queued_work: st.queued_work,
            running: st.running.len(),
            running_work: st.running_work,
            seconds_per_work: st.seconds_per_work,
            draining: st.draining,
        }
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
        let error = JobError {
            code: "shutting_down",
            message: "the server shut down before this job finished; retry".into(),
        };
        let mut left: Vec<Arc<Job>> = st.queue.drain(..).collect();
        left.extend(st.running.iter().cloned());
        for j in left {
            j.cancel.store(true, Ordering::SeqCst);
            j.finish(JobStatus::Failed, None, Some(error.clone()));
        }
        st.queued_work = 0;
        st.shutdown = true;
        drop(st);
        self.inner.wake.notify_all();
        clean
    }
}

fn retry_after(st: &State) -> u64 {
    let stats = QueueStats {
        queued: st.queue.len(),
        queued_work: st.queued_work,
        running: st.running.len(),
        running_work: st.running_work,
        seconds_per_work: st.seconds_per_work,
        draining: st.draining,
    };
    // Time for the current backlog to clear, at the measured rate.
    (stats.backlog_seconds().ceil() as u64).clamp(1, 600)
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

fn schedule_expiry(st: &mut State, config: &BatcherConfig, id: &str) {
    st.expiry
        .push_back((Instant::now() + config.result_ttl, id.to_string()));
}

/// Drops finished jobs past their TTL, remembering their ids for a while to answer 410.
fn expire(st: &mut State) {
    let now = Instant::now();
    while let Some((at, _)) = st.expiry.front() {
        if *at > now {
            break;
        }
        if let Some((_, id)) = st.expiry.pop_front() {
            st.jobs.remove(&id);
            st.idempotency.retain(|_, v| *v != id);
            st.gone.insert(id, now);
        }
    }
    // Tombstones are bounded: forget the oldest after a day or beyond 100k.
    if st.gone.len() > 100_000 {
        st.gone
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(86_400));
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not take the server down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(self: Arc<Self>) {
        loop {
            let Some(batch) = self.next_batch() else {
                return;
            };
            self.execute(batch);
        }
    }

    /// Waits for work and assembles a batch; `None` on shutdown.
    fn next_batch(&self) -> Option<Vec<Arc<Job>>> {
        let mut st = self.lock();
        let first = loop {
            expire(&mut st);
            if st.shutdown {
                return None;
            }
            match st.queue.pop_front() {
                Some(j) if j.cancel_requested() => {
                    st.queued_work -= j.request.work();
                    j.finish(JobStatus::Cancelled, None, None);
                    self.telemetry.job_finished(JobStatus::Cancelled, 0);
                    schedule_expiry(&mut st, &self.config, &j.id);
                }
                Some(j) if j.past_deadline() => {
                    st.queued_work -= j.request.work();
                    j.finish(
                        JobStatus::Failed,
                        None,
                        Some(JobError {
                            code: "deadline_exceeded",
                            message: "the request timed out while queued".into(),
                        }),
                    );
                    self.telemetry.job_finished(JobStatus::Failed, 0);
                    schedule_expiry(&mut st, &self.config, &j.id);
                }
                Some(j) => break j,
                None => {
                    st = match self.wake.wait_timeout(st, Duration::from_secs(1)) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
            }
        };
        st.queued_work -= first.request.work();
        let key = first.request.batch_key();
        let mut images = first.request.seeds().len();
        let mut batch = vec![first];
        let until = Instant::now() + self.config.max_batch_delay;
        loop {
            let mut i = 0;
            while i < st.queue.len() && images < self.config.max_batch_images {
                let fits = {
                    let j = &st.queue[i];
                    j.request.batch_key() == key
                        && !j.cancel_requested()
                        && images + j.request.seeds().len() <= self.config.max_batch_images
                };
                if fits {
                    if let Some(j) = st.queue.remove(i) {
                        st.queued_work -= j.request.work();
                        images += j.request.seeds().len();
                        batch.push(j);
                    }
                } else {
                    i += 1;
                }
            }
            let now = Instant::now();
            if images >= self.config.max_batch_images || now >= until || st.draining {
                break;
            }
            st = match self.wake.wait_timeout(st, until - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        let work: u64 = batch.iter().map(|j| j.request.work()).sum();
        st.running_work = work;
        st.running = batch.clone();
        publish_positions(&st);
        Some(batch)
    }

    fn execute(&self, batch: Vec<Arc<Job>>) {
        let started = Instant::now();
        let images: usize = batch.iter().map(|j| j.request.seeds().len()).sum();
        let spw = self.lock().seconds_per_work;
        for j in &batch {
            if let Ok(mut s) = j.started.lock() {
                *s = Some(started);
            }
            self.telemetry
                .job_started(started.duration_since(j.accepted));
            let eta = spw.map(|s| s * j.request.work() as f64);
            j.update(
                |s| {
                    s.status = JobStatus::Running;
                    s.queue_position = None;
                    s.eta_seconds = eta;
                },
                Some(JobEvent::Started {
                    batch_images: images,
                }),
            );
        }
        let requests: Vec<&GenerationRequest> = batch.iter().map(|j| &j.request).collect();
        let observer = BatchObserver { jobs: &batch };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.pipeline.run_batch(&requests, &observer)
        }));
        let elapsed = started.elapsed();
        let work: u64 = batch.iter().map(|j| j.request.work()).sum();
        match outcome {
            Ok(Ok(out)) => {
                self.telemetry.batch_finished(images, &out.timings);
                for (job, outcome) in batch.iter().zip(out.outcomes) {
                    match outcome {
                        Outcome::Completed(imgs) => {
                            let images_done = imgs.len();
                            let result = JobResult {
                                images: imgs,
                                queue_time: started.duration_since(job.accepted),
                                inference_time: elapsed,
                                timings: out.timings.clone(),
                                batch_images: images,
                            };
                            job.finish(JobStatus::Completed, Some(Arc::new(result)), None);
                            self.telemetry
                                .job_finished(JobStatus::Completed, images_done);
                        }
                        Outcome::Cancelled if job.past_deadline() && !job.cancel_requested() => {
                            job.finish(
                                JobStatus::Failed,
                                None,
                                Some(JobError {
                                    code: "deadline_exceeded",
                                    message: "the request timed out while running".into(),
                                }),
                            );
                            self.telemetry.job_finished(JobStatus::Failed, 0);
                        }
                        Outcome::Cancelled => {
                            job.finish(JobStatus::Cancelled, None, None);
                            self.telemetry.job_finished(JobStatus::Cancelled, 0);
                        }
                    }
                }
                let mut st = self.lock();
                // Smooth the rate so one odd batch does not swing Retry-After.
                if out.timings.steps > 0 {
                    let sample = elapsed.as_secs_f64() / work.max(1) as f64;
                    st.seconds_per_work = Some(match st.seconds_per_work {
                        Some(prev) => 0.7 * prev + 0.3 * sample,
                        None => sample,
                    });
                }
            }
            Ok(Err(e)) => {
                // A device that is down is the server's state, not the request's fault.
                let code = match &e {
                    anyaccel_pipeline::PipelineError::Executor(x) if x.is_unavailable() => {
                        "executor_unavailable"
                    }
                    _ => "generation_failed",
                };
                self.fail_all(&batch, code, e.to_string())
            }
            Err(_) => self.fail_all(
                &batch,
                "internal",
                "the pipeline panicked; see server logs".into(),
            ),
        }
        let mut st = self.lock();
        st.running.clear();
        st.running_work = 0;
        for j in &batch {
            schedule_expiry(&mut st, &self.config, &j.id);
        }
        drop(st);
        self.wake.notify_all();
    }

    fn fail_all(&self, batch: &[Arc<Job>], code: &'static str, message: String) {
        tracing::error!(%code, %message, "batch failed");
        for j in batch {
            j.finish(
                JobStatus::Failed,
                None,
                Some(JobError {
                    code,
                    message: message.clone(),
                }),
            );
            self.telemetry.job_finished(JobStatus::Failed, 0);
        }
    }
}

struct BatchObserver<'a> {
    jobs: &'a [Arc<Job>],
}

impl Observer for BatchObserver<'_> {
    fn on_step(&self, request: usize, step: usize, total: usize) {
        if let Some(j) = self.jobs.get(request) {
            let (step, total) = (step as u32, total as u32);
            j.update(
                |s| {
                    s.step = step;
                    s.total_steps = total;
                },
                Some(JobEvent::Step { step, total }),
            );
        }
    }

    fn is_cancelled(&self, request: usize) -> bool {
        self.jobs
            .get(request)
            .is_some_and(|j| j.cancel_requested() || j.past_deadline())
    }
}
