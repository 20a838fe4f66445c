//! This replica's side of the shared queue: pull jobs when there is room,
//! run them through the local batcher, mirror their progress, checkpoints
//! and end into Redis, heartbeat them, and hand them back when draining.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyaccel_batcher::{ErrorCode, Job, JobEvent, JobStatus, SubmitOptions};
use anyaccel_pipeline::Checkpoint;
use anyaccel_queue::{Beat, QueueError, RecordStatus, Taken, Terminal};
use tokio::sync::broadcast::error::RecvError;

use super::{Running, SharedQueue, Spec, to_json};
use crate::AppState;
use crate::generate;
use crate::jobs::{self, JobErrorBody};

/// How often running jobs are heartbeaten and checked for cancels: a
/// `DELETE` on another replica stops a running job within about this.
const BEAT: Duration = Duration::from_millis(250);

/// Starts the puller, the heartbeat and the connection check.
pub(crate) fn spawn(state: AppState) {
    let Some(q) = state.queue.clone() else {
        return;
    };
    tokio::spawn(check(q.clone()));
    tokio::spawn(heartbeat(state.clone(), q.clone()));
    tokio::spawn(pull(state, q));
}

/// Keeps the consumer group in place (a Redis that lost its data gets it
/// back) and the health that readiness and `/info` report current.
async fn check(q: Arc<SharedQueue>) {
    loop {
        let _ = q.redis.ping().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Jobs this replica may take now: about two batches' worth, counting
/// synchronous requests queued here, so a busy replica leaves work to others.
fn room(state: &AppState, q: &SharedQueue) -> usize {
    let stats = state.batcher.stats();
    let waiting_to_start = q.running().values().filter(|r| r.job.is_none()).count();
    (2 * state.config.batcher.max_batch_images)
        .saturating_sub(stats.queued + stats.running + waiting_to_start)
}

async fn pull(state: AppState, q: Arc<SharedQueue>) {
    let visibility = q.config.redis.visibility_timeout;
    let mut last_claim: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    while !q.is_draining() {
        let room = room(&state, &q);
        if room == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(100), q.changed.notified()).await;
            continue;
        }
        let mut got = Vec::new();
        let claim_due = last_claim.is_none_or(|t| t.elapsed() >= visibility / 2);
        let read = if claim_due {
            last_claim = Some(Instant::now());
            q.redis.claim_idle(room).await
        } else {
            Ok(Vec::new())
        };
        let read = match read {
            Ok(claimed) if !claimed.is_empty() => Ok(claimed),
            Ok(_) => q.redis.read_new(room, Duration::from_secs(1)).await,
            Err(e) => Err(e),
        };
        match read {
            Ok(entries) => {
                backoff = Duration::from_millis(100);
                got.extend(entries);
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not read the shared queue; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        for (entry, id) in got {
            match q.redis.take(&id, &entry).await {
                Ok(Some(taken)) => {
                    q.running().insert(
                        id.clone(),
                        Running {
                            entry: entry.clone(),
                            job: None,
                        },
                    );
                    let (state, q) = (state.clone(), q.clone());
                    tokio::spawn(async move {
                        run(&state, &q, taken).await;
                        q.running().remove(&id);
                        q.changed.notify_waiters();
                    });
                }
                Ok(None) => {
                    let _ = q.redis.drop_entry(&entry).await;
                }
                // Left pending on this replica: claimed again after the
                // visibility timeout, by whoever is free.
                Err(e) => tracing::warn!(job = %id, error = %e, "could not take a job"),
            }
        }
    }
}

async fn heartbeat(state: AppState, q: Arc<SharedQueue>) {
    loop {
        tokio::time::sleep(BEAT).await;
        let held: Vec<(String, String, Option<Arc<Job>>)> = q
            .running()
            .iter()
            .map(|(id, r)| (id.clone(), r.entry.clone(), r.job.clone()))
            .collect();
        if held.is_empty() {
            continue;
        }
        let pairs: Vec<(String, String)> = held
            .iter()
            .map(|(id, entry, _)| (id.clone(), entry.clone()))
            .collect();
        let Ok(beats) = q.redis.heartbeat(&pairs).await else {
            continue;
        };
        for ((id, _, job), beat) in held.iter().zip(beats) {
            let stop = match beat {
                Beat::Held { cancel } => cancel,
                Beat::Lost => {
                    tracing::warn!(job = %id, "another replica claimed this job; stopping it here");
                    true
                }
            };
            if stop && let Some(job) = job {
                state.batcher.cancel(job);
            }
        }
    }
}

/// Retries a write that must land (a job's end, a hand-back) until Redis
/// takes it; while it cannot, the job's entry stays pending and another
/// replica would claim and finish it, so nothing is lost either way.
async fn persist<T, F, Fut>(what: &str, id: &str, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    let mut delay = Duration::from_millis(100);
    for attempt in 0.. {
        match f().await {
            Ok(v) => return Some(v),
            Err(QueueError::Unavailable(e)) => {
                if attempt % 10 == 0 {
                    tracing::warn!(job = %id, error = %e, "could not {what}; retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "could not {what}");
                return None;
            }
        }
    }
    None
}

fn error_json(code: &str, message: &str) -> String {
    to_json(&JobErrorBody {
        code: code.to_string(),
        message: message.to_string(),
    })
    .unwrap_or_default()
}

async fn fail(
    q: &SharedQueue,
    taken: &Taken,
    provenance: String,
    code: ErrorCode,
    message: String,
) {
    tracing::warn!(job = %taken.id, %code, %message, "shared job failed");
    let end = Terminal {
        status: RecordStatus::Failed,
        error: Some(error_json(code.as_str(), &message)),
        result: None,
        provenance,
        event: jobs::event_json(&JobEvent::Failed {
            error: anyaccel_batcher::JobError::new(code, message),
        }),
    };
    persist("record a failure", &taken.id, || {
        q.redis.finish(&taken.id, &taken.entry, &end)
    })
    .await;
}

/// Puts a job back on the queue for another replica, from `checkpoint`.
async fn hand_back(
    state: &AppState,
    q: &SharedQueue,
    taken: &Taken,
    checkpoint: Option<Arc<Checkpoint>>,
) {
    let bytes = checkpoint.as_ref().map(|c| (c.steps_done(), c.to_bytes()));
    let event = jobs::event_json(&JobEvent::Queued {
        position: 0,
        eta_seconds: 0.0,
    });
    let back = persist("hand the job back", &taken.id, || {
        q.redis.hand_back(
            &taken.id,
            &taken.entry,
            bytes.as_ref().map(|(s, b)| (*s, b.as_slice())),
            &event,
        )
    })
    .await;
    if matches!(back, Some(Some(_))) {
        state.metrics.job_handed_back();
        tracing::info!(
            job = %taken.id,
            steps_done = bytes.as_ref().map_or(0, |(s, _)| *s),
            "handed back to the shared queue"
        );
    }
}

async fn run(state: &AppState, q: &SharedQueue, taken: Taken) {
    let spec: Spec = match serde_json::from_str(&taken.spec) {
        Ok(s) => s,
        Err(e) => {
            let message = format!("the job's spec is unreadable: {e}");
            return fail(q, &taken, String::new(), ErrorCode::Internal, message).await;
        }
    };
    let mine = &state.pipeline().model().hash;
    if &spec.model_hash != mine {
        let message = format!(
            "accepted for model {} but this replica serves {mine}; replicas sharing queue {} must serve the same artifact",
            spec.model_hash, q.config.redis.queue
        );
        return fail(
            q,
            &taken,
            String::new(),
            ErrorCode::GenerationFailed,
            message,
        )
        .await;
    }
    let prepared = match jobs::prepare(state, &spec.body).await {
        Ok(p) => p,
        Err(e) => {
            let message = format!("this replica cannot run the job: {}", e.message);
            return fail(
                q,
                &taken,
                String::new(),
                ErrorCode::GenerationFailed,
                message,
            )
            .await;
        }
    };
    let mut request = prepared.request;
    if taken.claimed_from.is_some() {
        state.metrics.job_claimed();
    }
    if let Some(bytes) = &taken.checkpoint {
        // A checkpoint that does not fit only costs the steps it would have
        // saved: the job starts over and draws the same image.
        match Checkpoint::from_bytes(bytes)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let steps = c.steps_done();
                request
                    .clone()
                    .resume_from(c)
                    .map(|r| (r, steps))
                    .map_err(|e| e.to_string())
            }) {
            Ok((resumed, steps)) => {
                request = resumed;
                state.metrics.job_resumed(steps);
                tracing::info!(job = %taken.id, steps_done = steps, from = ?taken.claimed_from, "resuming from checkpoint");
            }
            Err(e) => {
                tracing::warn!(job = %taken.id, error = %e, "checkpoint not usable; starting over")
            }
        }
    }
    let provenance = to_json(&generate::provenance(state, &request)).unwrap_or_default();
    let mut held = match state.batcher.run(
        request,
        SubmitOptions {
            request_id: spec.request_id.clone(),
            previews: prepared.previews,
            encoding: prepared.encoding,
            checkpoints: Some(q.config.checkpoints),
            // The fleet's id, so this replica's logs and spans name it too.
            id: Some(taken.id.clone()),
            ..SubmitOptions::default()
        },
    ) {
        Ok(h) => h,
        Err(e) => {
            tracing::info!(job = %taken.id, reason = %e, "no room here after all");
            return hand_back(state, q, &taken, None).await;
        }
    };
    let job = held.job().clone();
    if let Some(r) = q.running().get_mut(&taken.id) {
        r.job = Some(job.clone());
    }
    let Some(mut events) = held.take_events() else {
        return;
    };
    let mut checkpoints = job.checkpoints();
    checkpoints.borrow_and_update();
    let mut saved = job.checkpoint().map_or(0, |c| c.steps_done());
    let mut lost = false;
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) => {
                    let step = job.state().step;
                    let (status, data, prov) = match &e {
                        JobEvent::Queued { .. } => continue,
                        JobEvent::Started { .. } => (RecordStatus::Running, jobs::event_json(&e), Some(provenance.as_str())),
                        JobEvent::Completed | JobEvent::Failed { .. } | JobEvent::Cancelled => break,
                        _ => (RecordStatus::Running, jobs::event_data(state, &job, &e, job.encoding).await, None),
                    };
                    // Progress is best effort: a step Redis missed is
                    // followed by the next one.
                    if let Ok(false) = q.redis.progress(&taken.id, status, step, prov, &data).await {
                        lost = true;
                        state.batcher.cancel(&job);
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            },
            changed = checkpoints.changed() => {
                if changed.is_err() {
                    break;
                }
                let latest = checkpoints.borrow_and_update().clone();
                if let Some(c) = latest.filter(|c| c.steps_done() > saved) {
                    let started = Instant::now();
                    let bytes = c.to_bytes();
                    if let Ok(false) = q.redis.checkpoint(&taken.id, c.steps_done(), &bytes).await {
                        lost = true;
                        state.batcher.cancel(&job);
                        break;
                    }
                    saved = c.steps_done();
                    state.metrics.observe_checkpoint(started.elapsed());
                }
            }
        }
    }
    let end = job.finished().await;
    if lost {
        return;
    }
    let terminal = match end.status {
        JobStatus::Completed => match end.result {
            Some(r) => match result_bytes(state, &job, &r).await {
                Ok(bytes) if bytes.len() <= q.config.max_result_bytes => Terminal {
                    status: RecordStatus::Completed,
                    error: None,
                    result: Some(bytes),
                    provenance,
                    event: jobs::event_json(&JobEvent::Completed),
                },
                Ok(bytes) => {
                    let message = format!(
                        "the result is {} bytes, over the queue's result limit of {} (--redis-max-result-bytes); ask for fewer or smaller images",
                        bytes.len(),
                        q.config.max_result_bytes
                    );
                    return fail(q, &taken, provenance, ErrorCode::GenerationFailed, message).await;
                }
                Err(message) => {
                    return fail(q, &taken, provenance, ErrorCode::Internal, message).await;
                }
            },
            None => {
                let message = "completed without images".to_string();
                return fail(q, &taken, provenance, ErrorCode::Internal, message).await;
            }
        },
        JobStatus::Failed => {
            let error = end
                .error
                .unwrap_or_else(|| anyaccel_batcher::JobError::new(ErrorCode::Internal, "failed"));
            if error.code == ErrorCode::ShuttingDown {
                return hand_back(state, q, &taken, job.checkpoint()).await;
            }
            return fail(q, &taken, provenance, error.code, error.message).await;
        }
        JobStatus::Cancelled => Terminal {
            status: RecordStatus::Cancelled,
            error: None,
            result: None,
            provenance,
            event: jobs::event_json(&JobEvent::Cancelled),
        },
        JobStatus::Queued | JobStatus::Running => return,
    };
    persist("record the job's end", &taken.id, || {
        q.redis.finish(&taken.id, &taken.entry, &terminal)
    })
    .await;
}

/// A completed job's result as Redis keeps it: the body `GET` answers with.
async fn result_bytes(
    state: &AppState,
    job: &Arc<Job>,
    result: &Arc<anyaccel_batcher::JobResult>,
) -> Result<Vec<u8>, String> {
    let body = jobs::result_body(state, job, result)
        .await
        .map_err(|e| e.message)?;
    serde_json::to_vec(&body).map_err(|e| e.to_string())
}

/// SIGTERM: stop pulling; jobs that would not finish within `timeout` go
/// back to the queue now (from their latest checkpoint), the rest finish.
pub(crate) fn begin_drain(state: &AppState, timeout: Duration) {
    let Some(q) = &state.queue else {
        return;
    };
    q.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    let spw = state.batcher.stats().seconds_per_work;
    for r in q.running().values() {
        let Some(job) = &r.job else { continue };
        let s = job.state();
        let left = match (s.status, spw) {
            (JobStatus::Running, Some(spw)) if s.total_steps > 0 => {
                let fraction =
                    f64::from(s.total_steps.saturating_sub(s.step)) / f64::from(s.total_steps);
                Some(Duration::from_secs_f64(
                    spw * job.request.work() as f64 * fraction,
                ))
            }
            _ => None,
        };
        // Queued here, or unknown: another replica can start it sooner.
        if left.is_none_or(|l| l > timeout.mul_f64(0.8)) {
            tracing::info!(job = %job.id, left = ?left, "handing back: it would not finish before the drain deadline");
            state.batcher.hand_back(job);
        }
    }
}

/// Waits (up to `timeout`) for this replica's shared jobs to write their ends.
pub(crate) async fn settle(state: &AppState, timeout: Duration) {
    let Some(q) = &state.queue else {
        return;
    };
    let deadline = Instant::now() + timeout;
    while !q.running().is_empty() && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), q.changed.notified()).await;
    }
}
