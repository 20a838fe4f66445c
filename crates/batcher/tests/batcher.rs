//! The batcher on its own, with a fake executor the tests drive step by
//! step: batching rules, deadlines, cancellation, retention and its memory
//! budget, drain, typed failures and panics. The tiny fixture model supplies
//! the tokenizer and scheduler; no network runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyaccel_batcher::{
    AdmissionError, Batcher, BatcherConfig, ErrorCode, Job, JobStatus, Lookup, SubmitOptions,
};
use anyaccel_executor::{
    Capabilities, Component, Conditioning, DenoiseSession, DeviceKind, Dtype, Executor,
    ExecutorError, HiddenLayer, Shapes, Tensor, TextEncoding, TimestepInput, TokenIds,
};
use anyaccel_pipeline::images::OutputFormat;
use anyaccel_pipeline::{Defaults, GenerationParams, GenerationRequest, Limits, Model, Pipeline};

/// How the fake executor's next denoiser steps behave.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    Panic,
    Unavailable,
}

/// Permits for denoiser steps: a test opens them to let work go on, so
/// nothing here waits on the clock.
struct Gate {
    permits: Mutex<Option<usize>>,
    changed: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut p = self.permits.lock().unwrap();
        loop {
            match *p {
                None => return,
                Some(n) if n > 0 => {
                    *p = Some(n - 1);
                    return;
                }
                Some(_) => p = self.changed.wait(p).unwrap(),
            }
        }
    }

    fn set(&self, permits: Option<usize>) {
        *self.permits.lock().unwrap() = permits;
        self.changed.notify_all();
    }
}

struct Fake {
    caps: Capabilities,
    gate: Gate,
    fault: Mutex<Fault>,
    /// Rows of the denoiser's first call in each batch.
    batches: Mutex<Vec<usize>>,
    /// Set while a step waits at the gate.
    waiting: AtomicBool,
    steps: AtomicUsize,
}

impl Fake {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            caps: Capabilities {
                executor: "fake",
                device: DeviceKind::Cpu,
                device_name: "test".into(),
                dtype: Dtype::F32,
                shapes: Shapes::Dynamic,
                memory_bytes: None,
                vae_encoder: true,
                preview_decoder: false,
                timestep: TimestepInput::PerSample,
                runtime: "test".into(),
            },
            gate: Gate {
                permits: Mutex::new(None),
                changed: Condvar::new(),
            },
            fault: Mutex::new(Fault::None),
            batches: Mutex::default(),
            waiting: AtomicBool::new(false),
            steps: AtomicUsize::new(0),
        })
    }
}

struct FakeSession<'a> {
    fake: &'a Fake,
    rows: usize,
    first: bool,
}

impl DenoiseSession for FakeSession<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn select(&mut self, rows: &[usize]) -> Result<(), ExecutorError> {
        self.rows = rows.len();
        Ok(())
    }

    fn step(&mut self, sample: &Tensor, _timesteps: &[f32]) -> Result<Tensor, ExecutorError> {
        if self.first {
            self.fake.batches.lock().unwrap().push(self.rows);
            self.first = false;
        }
        self.fake.waiting.store(true, Ordering::SeqCst);
        self.fake.gate.pass();
        self.fake.waiting.store(false, Ordering::SeqCst);
        self.fake.steps.fetch_add(1, Ordering::SeqCst);
        match *self.fake.fault.lock().unwrap() {
            Fault::None => Ok(Tensor::zeros(sample.shape().to_vec())),
            Fault::Unavailable => Err(ExecutorError::Unavailable("the device fell off".into())),
            Fault::Panic => panic!("fake executor panics on purpose"),
        }
    }
}

impl Executor for Fake {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn encode_text(
        &self,
        _encoder: Component,
        ids: &TokenIds,
        _layer: HiddenLayer,
    ) -> Result<TextEncoding, ExecutorError> {
        Ok(TextEncoding {
            hidden: Tensor::zeros(vec![ids.batch, ids.len, 32]),
            pooled: None,
        })
    }

    fn denoise<'a>(
        &'a self,
        conditioning: Conditioning,
    ) -> Result<Box<dyn DenoiseSession + 'a>, ExecutorError> {
        Ok(Box::new(FakeSession {
            fake: self,
            rows: conditioning.rows(),
            first: true,
        }))
    }

    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor, ExecutorError> {
        let s = latents.shape();
        Ok(Tensor::zeros(vec![s[0], 3, s[2] * 8, s[3] * 8]))
    }

    fn vae_encode(&self, image: &Tensor) -> Result<Tensor, ExecutorError> {
        let s = image.shape();
        Ok(Tensor::zeros(vec![s[0], 8, s[2] / 8, s[3] / 8]))
    }
}

fn model() -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-sd15");
    Model::load_dir("tiny-sd15", &dir).expect("fixture model")
}

struct Rig {
    fake: Arc<Fake>,
    batcher: Batcher,
}

fn rig(config: BatcherConfig) -> Rig {
    let fake = Fake::new();
    let pipeline = Pipeline::new(
        fake.clone(),
        model(),
        Limits::default(),
        Defaults::default(),
    );
    let batcher = Batcher::start(Arc::new(pipeline), config, None).expect("batcher starts");
    Rig { fake, batcher }
}

fn config() -> BatcherConfig {
    BatcherConfig {
        max_queue: 8,
        max_batch_images: 4,
        // Company arrives before the worker looks: the tests submit while the gate is shut.
        max_batch_delay: Duration::ZERO,
        ..BatcherConfig::default()
    }
}

fn request(rig: &Rig, prompt: &str, n: u32, steps: u32) -> GenerationRequest {
    rig.batcher
        .pipeline()
        .validate(GenerationParams {
            prompt: prompt.into(),
            width: Some(64),
            height: Some(64),
            steps: Some(steps),
            guidance_scale: Some(1.0),
            n: Some(n),
            seed: Some(1),
            ..GenerationParams::default()
        })
        .expect("valid request")
}

fn retained() -> SubmitOptions {
    SubmitOptions {
        retained: true,
        ..SubmitOptions::default()
    }
}

impl Rig {
    fn submit(&self, prompt: &str, n: u32, steps: u32) -> Arc<Job> {
        self.batcher
            .submit(request(self, prompt, n, steps), retained())
            .expect("admitted")
    }

    /// Shuts the gate, then returns a job parked at its first step and one queued behind it.
    async fn running_and_queued(&self, steps: u32) -> (Arc<Job>, Arc<Job>) {
        self.fake.gate.set(Some(0));
        let running = self.submit("a", 1, steps);
        until_waiting(&self.fake).await;
        (running, self.submit("b", 1, steps))
    }
}

/// Waits until a denoiser step is parked at the shut gate.
async fn until_waiting(fake: &Fake) {
    while !fake.waiting.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
}

async fn status(job: &Job) -> JobStatus {
    job.finished().await.status
}

#[tokio::test]
async fn compatible_jobs_share_a_batch_up_to_the_image_limit() {
    let r = rig(config());
    r.fake.gate.set(Some(0));
    // The first job runs alone (the worker takes it at once) and holds the gate.
    let first = r.submit("a", 1, 2);
    until_waiting(&r.fake).await;
    // Queued behind it: three one-image jobs and a two-image one at the same
    // steps, and one at other steps, which cannot join them.
    let same: Vec<_> = (0..3).map(|i| r.submit(&format!("b{i}"), 1, 2)).collect();
    let pair = r.submit("pair", 2, 2);
    let other = r.submit("c", 1, 3);
    r.fake.gate.set(None);
    for j in same.iter().chain([&first, &pair, &other]) {
        assert_eq!(status(j).await, JobStatus::Completed);
    }
    // 1, then 3 + ... the pair (2 images) does not fit beside three (limit 4),
    // so it runs with nothing else at its steps; the 3-step job runs alone.
    let batches = r.fake.batches.lock().unwrap().clone();
    assert_eq!(batches, [1, 3, 2, 1]);
    let result = same[0].state().result.unwrap();
    assert_eq!(result.batch_images, 3);
}

#[tokio::test]
async fn admission_refuses_past_the_queue_bounds() {
    let r = rig(BatcherConfig {
        max_queue: 2,
        ..config()
    });
    r.fake.gate.set(Some(0));
    let running = r.submit("a", 1, 2);
    until_waiting(&r.fake).await;
    r.submit("b", 1, 2);
    r.submit("c", 1, 2);
    let refused = r.batcher.submit(request(&r, "d", 1, 2), retained());
    assert!(
        matches!(refused, Err(AdmissionError::QueueFull { queued: 2, retry_after_secs }) if retry_after_secs >= 1),
        "{refused:?}"
    );
    let huge = rig(BatcherConfig {
        max_queue_work: 10,
        ..config()
    });
    assert_eq!(
        huge.batcher
            .submit(request(&huge, "e", 1, 2), retained())
            .unwrap_err(),
        AdmissionError::TooLarge
    );
    r.fake.gate.set(None);
    assert_eq!(status(&running).await, JobStatus::Completed);
}

#[tokio::test]
async fn cancelling_a_queued_job_ends_it_at_once_and_a_running_one_at_its_next_step() {
    let r = rig(config());
    let (running, queued) = r.running_and_queued(5).await;
    assert!(r.batcher.cancel(&queued));
    assert_eq!(queued.state().status, JobStatus::Cancelled);
    assert!(r.batcher.cancel(&running));
    r.fake.gate.set(None);
    assert_eq!(status(&running).await, JobStatus::Cancelled);
    // It left the loop at the next step, not after all five.
    assert!(r.fake.steps.load(Ordering::SeqCst) < 5);
    assert!(!r.batcher.cancel(&running), "already finished");
}

#[tokio::test]
async fn a_job_past_its_deadline_fails_with_deadline_exceeded() {
    let r = rig(BatcherConfig {
        request_timeout: Duration::ZERO,
        ..config()
    });
    let job = r.submit("a", 1, 2);
    let done = job.finished().await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.error.unwrap().code, ErrorCode::DeadlineExceeded);
}

#[tokio::test]
async fn idempotency_keys_return_the_same_job_until_it_is_forgotten() {
    let r = rig(config());
    let with_key = || SubmitOptions {
        idempotency_key: Some("k1".into()),
        ..retained()
    };
    let a = r
        .batcher
        .submit(request(&r, "a", 1, 2), with_key())
        .unwrap();
    let b = r
        .batcher
        .submit(request(&r, "a", 1, 2), with_key())
        .unwrap();
    assert_eq!(a.id, b.id);
    status(&a).await;
    r.batcher.release(&a.id);
    let c = r
        .batcher
        .submit(request(&r, "a", 1, 2), with_key())
        .unwrap();
    assert_ne!(a.id, c.id, "a forgotten job's key starts a new one");
}

#[tokio::test]
async fn a_synchronous_result_is_released_with_its_hold() {
    let r = rig(config());
    let held = r
        .batcher
        .run(request(&r, "a", 2, 2), SubmitOptions::default())
        .unwrap();
    let job = held.job().clone();
    assert_eq!(status(&job).await, JobStatus::Completed);
    assert!(matches!(r.batcher.get(&job.id), Lookup::Found(_)));
    drop(held);
    assert!(matches!(r.batcher.get(&job.id), Lookup::Gone));
    let stats = r.batcher.stats();
    assert_eq!((stats.results_held, stats.result_bytes), (0, 0));
    assert!(matches!(r.batcher.get("job-unknown"), Lookup::NotFound));
}

#[tokio::test]
async fn dropping_a_hold_cancels_its_running_job() {
    let r = rig(config());
    r.fake.gate.set(Some(0));
    let held = r
        .batcher
        .run(request(&r, "a", 1, 5), SubmitOptions::default())
        .unwrap();
    let job = held.job().clone();
    until_waiting(&r.fake).await;
    drop(held);
    r.fake.gate.set(None);
    assert_eq!(status(&job).await, JobStatus::Cancelled);
    assert!(matches!(r.batcher.get(&job.id), Lookup::Gone));
}

#[tokio::test]
async fn retained_results_stay_within_the_memory_budget_oldest_out_first() {
    // One 64×64 image is 12,288 bytes; the budget holds two.
    let image = 64 * 64 * 3;
    let r = rig(BatcherConfig {
        result_memory: 2 * image + 100,
        ..config()
    });
    let mut jobs = Vec::new();
    for i in 0..3 {
        let j = r.submit(&format!("p{i}"), 1, 1);
        assert_eq!(status(&j).await, JobStatus::Completed);
        jobs.push(j);
    }
    let stats = r.batcher.stats();
    assert_eq!(stats.results_held, 2);
    assert_eq!(stats.result_bytes, 2 * image);
    assert!(matches!(r.batcher.get(&jobs[0].id), Lookup::Gone));
    assert!(matches!(r.batcher.get(&jobs[2].id), Lookup::Found(_)));
    // `url` images share the budget.
    let file = r
        .batcher
        .keep_file(vec![0; image as usize], OutputFormat::Png);
    assert!(matches!(r.batcher.get(&jobs[1].id), Lookup::Gone));
    assert!(matches!(r.batcher.file(&file), Lookup::Found(_)));
}

#[tokio::test]
async fn results_expire_after_the_ttl() {
    let r = rig(BatcherConfig {
        result_ttl: Duration::ZERO,
        ..config()
    });
    let j = r.submit("a", 1, 1);
    assert_eq!(status(&j).await, JobStatus::Completed);
    assert!(matches!(r.batcher.get(&j.id), Lookup::Gone));
    let f = r.batcher.keep_file(vec![1, 2, 3], OutputFormat::Jpeg);
    assert!(matches!(r.batcher.file(&f), Lookup::Gone));
    assert_eq!(r.batcher.stats().result_bytes, 0);
}

#[tokio::test]
async fn an_unavailable_device_fails_the_batch_with_a_typed_code() {
    let r = rig(config());
    *r.fake.fault.lock().unwrap() = Fault::Unavailable;
    let j = r.submit("a", 1, 2);
    let done = j.finished().await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.error.unwrap().code, ErrorCode::ExecutorUnavailable);
    assert!(r.batcher.broken().is_none(), "a device outage is not a bug");
}

#[tokio::test]
async fn a_panic_fails_the_batch_and_marks_the_batcher_broken() {
    let r = rig(config());
    assert!(r.batcher.broken().is_none());
    *r.fake.fault.lock().unwrap() = Fault::Panic;
    let j = r.submit("a", 1, 2);
    let done = j.finished().await;
    assert_eq!(done.error.unwrap().code, ErrorCode::Internal);
    let why = r.batcher.broken().expect("broken after a panic");
    assert!(why.contains("panics on purpose"), "{why}");
}

#[tokio::test]
async fn drain_finishes_running_work_and_refuses_new() {
    let r = rig(config());
    let (running, queued) = r.running_and_queued(2).await;
    r.batcher.begin_drain();
    assert!(matches!(
        r.batcher.submit(request(&r, "c", 1, 2), retained()),
        Err(AdmissionError::Draining { .. })
    ));
    r.fake.gate.set(None);
    let b = r.batcher.clone();
    assert!(
        tokio::task::spawn_blocking(move || b.drain(Duration::from_secs(60)))
            .await
            .unwrap()
    );
    assert_eq!(status(&running).await, JobStatus::Completed);
    assert_eq!(status(&queued).await, JobStatus::Completed);
}

#[tokio::test]
async fn drain_past_its_deadline_fails_what_is_left_as_shutting_down() {
    let r = rig(config());
    let (running, queued) = r.running_and_queued(2).await;
    assert!(!r.batcher.drain(Duration::ZERO));
    for j in [&running, &queued] {
        let s = j.state();
        assert_eq!(s.status, JobStatus::Failed);
        assert_eq!(s.error.unwrap().code, ErrorCode::ShuttingDown);
    }
    r.fake.gate.set(None);
}

/// Warm-up runs on the worker's thread (executors keep per-thread state:
/// ONNX Runtime's CUDA graphs), and only between batches.
#[tokio::test]
async fn tasks_run_on_the_worker_thread_between_batches() {
    let r = rig(config());
    let thread = r
        .batcher
        .on_worker(|| std::thread::current().name().map(String::from));
    assert_eq!(thread, Some(Some("anyaccel-batcher".into())));

    let (running, queued) = r.running_and_queued(2).await;
    let batcher = r.batcher.clone();
    let task = std::thread::spawn(move || batcher.on_worker(|| 7));
    // The task waits for the running batch, which the gate holds.
    r.fake.gate.set(None);
    assert_eq!(task.join().unwrap(), Some(7));
    assert_eq!(status(&running).await, JobStatus::Completed);
    assert_eq!(status(&queued).await, JobStatus::Completed);

    // A task that panics leaves the worker running.
    assert_eq!(r.batcher.on_worker(|| -> u8 { panic!("in a task") }), None);
    let after = r.submit("after", 1, 2);
    assert_eq!(status(&after).await, JobStatus::Completed);
}
