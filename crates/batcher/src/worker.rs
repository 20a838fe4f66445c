//! The worker thread: assembles batches from the queue and runs them
//! through the pipeline, publishing progress and outcomes to each job.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyaccel_pipeline::{Checkpoint, GenerationRequest, Observer, Outcome};
use image::RgbImage;

use crate::{
    ErrorCode, Inner, Job, JobError, JobEvent, JobResult, JobStatus, Preview, publish_positions,
};

enum Work {
    Task(crate::Task),
    Batch(Vec<Arc<Job>>),
}

impl Inner {
    pub(crate) fn run(self: Arc<Self>) {
        loop {
            match self.next_work() {
                None => return,
                Some(Work::Task(task)) => task(),
                Some(Work::Batch(batch)) => self.execute(batch),
            }
        }
    }

    /// Waits for work: a task handed to the worker, else a batch assembled
    /// from the queue; `None` on shutdown.
    fn next_work(&self) -> Option<Work> {
        let mut st = self.lock();
        let first = loop {
            st.expire(self.telemetry.as_ref());
            if st.shutdown {
                return None;
            }
            if let Some(task) = st.tasks.pop_front() {
                return Some(Work::Task(task));
            }
            match st.queue.pop_front() {
                Some(j) if j.cancel_requested() => {
                    st.queued_work -= j.request.work();
                    j.finish(JobStatus::Cancelled, None, None);
                    self.telemetry.job_finished(JobStatus::Cancelled, 0);
                    st.finished(&j, self.telemetry.as_ref());
                }
                Some(j) if j.hand_back_requested() => {
                    st.queued_work -= j.request.work();
                    j.finish(JobStatus::Failed, None, Some(handed_back()));
                    self.telemetry.job_finished(JobStatus::Failed, 0);
                    st.finished(&j, self.telemetry.as_ref());
                }
                Some(j) if j.past_deadline() => {
                    st.queued_work -= j.request.work();
                    j.finish(
                        JobStatus::Failed,
                        None,
                        Some(JobError::new(
                            ErrorCode::DeadlineExceeded,
                            "the request timed out while queued",
                        )),
                    );
                    self.telemetry.job_finished(JobStatus::Failed, 0);
                    st.finished(&j, self.telemetry.as_ref());
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
        Some(Work::Batch(batch))
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
        let span = batch_span(&batch, images);
        let outcome = span.in_scope(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.pipeline.run_batch(&requests, &observer)
            }))
        });
        let elapsed = started.elapsed();
        span.in_scope(|| {
            tracing::info!(
                images,
                seconds = elapsed.as_secs_f64(),
                ok = matches!(outcome, Ok(Ok(_))),
                "batch finished"
            )
        });
        let work: u64 = batch.iter().map(|j| j.request.work()).sum();
        let ends: Vec<End> = match outcome {
            Ok(Ok(out)) => {
                self.telemetry.batch_finished(images, &out.timings);
                let mut st = self.lock();
                // Smooth the rate so one odd batch does not swing Retry-After.
                if out.timings.steps > 0 {
                    let sample = elapsed.as_secs_f64() / work.max(1) as f64;
                    st.seconds_per_work = Some(match st.seconds_per_work {
                        Some(prev) => 0.7 * prev + 0.3 * sample,
                        None => sample,
                    });
                }
                drop(st);
                batch
                    .iter()
                    .zip(out.outcomes)
                    .map(|(job, outcome)| match outcome {
                        Outcome::Completed(imgs) => End::Completed(JobResult {
                            images: imgs,
                            queue_time: started.duration_since(job.accepted),
                            inference_time: elapsed,
                            timings: out.timings.clone(),
                            batch_images: images,
                        }),
                        Outcome::Cancelled if job.past_deadline() && !job.cancel_requested() => {
                            End::Failed(JobError::new(
                                ErrorCode::DeadlineExceeded,
                                "the request timed out while running",
                            ))
                        }
                        Outcome::Cancelled => End::Cancelled,
                        Outcome::Suspended(checkpoint) => {
                            job.save_checkpoint(checkpoint);
                            End::Failed(handed_back())
                        }
                    })
                    .collect()
            }
            Ok(Err(e)) => {
                let error = JobError::new(ErrorCode::of(&e), e.to_string());
                tracing::error!(code = %error.code, message = %error.message, "batch failed");
                batch.iter().map(|_| End::Failed(error.clone())).collect()
            }
            Err(panic) => {
                let what = panic_message(panic.as_ref());
                // Locks and buffers the panic unwound through (ONNX Runtime's
                // session among them) may be poisoned or half-written: stop
                // reporting ready so the pod is replaced, rather than fail
                // every later request while looking healthy.
                tracing::error!(panic = %what, "the pipeline panicked; reporting not ready");
                self.telemetry.pipeline_panicked();
                self.lock().broken = Some(format!("the pipeline panicked: {what}"));
                let error = JobError::new(
                    ErrorCode::Internal,
                    "the pipeline panicked; see server logs",
                );
                batch.iter().map(|_| End::Failed(error.clone())).collect()
            }
        };
        // Ends are published under the lock, so a retained result is held
        // (and a released one let go) before any client sees it finished.
        let mut st = self.lock();
        st.running.clear();
        st.running_work = 0;
        for (job, end) in batch.iter().zip(ends) {
            let (status, images) = match end {
                End::Completed(result) => {
                    let n = result.images.len();
                    job.finish(JobStatus::Completed, Some(Arc::new(result)), None);
                    (JobStatus::Completed, n)
                }
                End::Failed(error) => {
                    job.finish(JobStatus::Failed, None, Some(error));
                    (JobStatus::Failed, 0)
                }
                End::Cancelled => {
                    job.finish(JobStatus::Cancelled, None, None);
                    (JobStatus::Cancelled, 0)
                }
            };
            self.telemetry.job_finished(status, images);
            st.finished(job, self.telemetry.as_ref());
        }
        drop(st);
        self.wake.notify_all();
    }
}

/// A job handed back to the fleet's queue ends here as failed-with-retry;
/// its owner re-queues it from [`Job::checkpoint`].
pub(crate) fn handed_back() -> JobError {
    JobError::new(
        ErrorCode::ShuttingDown,
        "this replica handed the job back to the queue; another continues it",
    )
}

/// How one job of a batch ended.
enum End {
    Completed(JobResult),
    Failed(JobError),
    Cancelled,
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

    fn should_suspend(&self, request: usize) -> bool {
        self.jobs
            .get(request)
            .is_some_and(|j| j.hand_back_requested())
    }

    fn wants_checkpoint(&self, request: usize, step: usize, total: usize) -> bool {
        self.jobs
            .get(request)
            .is_some_and(|j| j.wants_checkpoint(step as u32, total as u32))
    }

    fn on_checkpoint(&self, request: usize, checkpoint: Checkpoint) {
        if let Some(j) = self.jobs.get(request) {
            j.save_checkpoint(checkpoint);
        }
    }

    fn wants_preview(&self, request: usize, step: usize, total: usize) -> bool {
        self.jobs
            .get(request)
            .is_some_and(|j| j.previews.wants(step as u32, total as u32))
    }

    fn on_preview(&self, request: usize, image: usize, step: usize, total: usize, px: RgbImage) {
        if let Some(j) = self.jobs.get(request) {
            let preview = Preview {
                step: step as u32,
                total: total as u32,
                image,
                pixels: Arc::new(px),
            };
            let event = JobEvent::Preview {
                step: preview.step,
                total: preview.total,
                image,
                pixels: preview.pixels.clone(),
            };
            j.update(|s| s.preview = Some(preview), Some(event));
        }
    }
}

/// A batch serves several requests: its span is a child of the first one's
/// and follows from the others', and names every job and request id, so a
/// log search or a trace for any of them finds it.
fn batch_span(batch: &[Arc<Job>], images: usize) -> tracing::Span {
    let list = |f: fn(&Job) -> Option<&str>| {
        batch
            .iter()
            .filter_map(|j| f(j))
            .collect::<Vec<_>>()
            .join(",")
    };
    let jobs = list(|j| Some(j.id.as_str()));
    let request_ids = list(|j| j.request_id.as_deref());
    let span = tracing::info_span!(
        parent: batch.first().and_then(|j| j.span.id()),
        "batch",
        images,
        jobs = %jobs,
        request_ids = %request_ids,
    );
    for j in batch.iter().skip(1) {
        span.follows_from(j.span.id());
    }
    span
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".into())
}
