//! Prometheus metrics. Names come from `anyaccel-metrics`, the one module the
//! rendered KEDA queries also use; every series carries model, accelerator
//! and pool labels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyaccel_batcher::{JobStatus, QueueStats, Telemetry};
use anyaccel_executor::DeviceMemory;
use anyaccel_metrics as names;
use anyaccel_pipeline::Timings;
use anyaccel_queue::QueueTelemetry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

/// A series with only the registry's own labels (model, accelerator, pool).
type NoLabels = Vec<(&'static str, &'static str)>;

/// Requests take 0.1 s (tiny models, GPUs) to minutes (big images on CPUs).
const REQUEST_BUCKETS: [f64; 15] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// Redis answers in about 0.1 ms on loopback, a few ms across zones.
fn redis_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 16,
    ))
}

fn step_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.002, 2.0, 14,
    ))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    queue_wait: Histogram,
    stage_duration: Family<StageLabels, Histogram, fn() -> Histogram>,
    step_duration: Histogram,
    images: Counter,
    jobs_finished: Family<StatusLabels, Counter>,
    queue_depth: Gauge,
    in_flight: Gauge,
    batch_size: Histogram,
    backlog: Gauge<f64, AtomicU64>,
    result_bytes: Gauge,
    results_held: Gauge,
    results_evicted: Counter,
    panics: Counter,
    // Registered only once an executor reports its device memory, so a CPU
    // server has no such series instead of a misleading 0.
    device_memory_used: Family<NoLabels, Gauge>,
    device_memory_total: Family<NoLabels, Gauge>,
    queue_claimed: Counter,
    queue_steps_saved: Counter,
    queue_handed_back: Counter,
    checkpoint_duration: Histogram,
    redis_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    redis_errors: Family<OperationLabels, Counter>,
    redis_up: Gauge,
    // Plain totals for the CloudWatch sampler (client work only).
    work_requests: AtomicU64,
    work_latency_micros: AtomicU64,
}

/// Running totals the CloudWatch sampler turns into per-interval values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub requests: u64,
    pub latency_seconds: f64,
    pub images: u64,
}

/// Client work, as opposed to probes, scrapes and image downloads.
fn is_work(endpoint: &str) -> bool {
    (endpoint.starts_with("/v1/") && !endpoint.starts_with("/v1/images/files"))
        || endpoint.starts_with("/sdapi/")
}

/// A counter's registered name: the client library appends `_total` itself.
fn counter_name(full: &str) -> &str {
    full.strip_suffix("_total").unwrap_or(full)
}

impl Metrics {
    pub fn new(model: &str, accelerator: &str, pool: &str) -> Self {
        let labels = [
            (names::labels::MODEL.into(), model.to_string().into()),
            (
                names::labels::ACCELERATOR.into(),
                accelerator.to_string().into(),
            ),
            (names::labels::POOL.into(), pool.to_string().into()),
        ];
        let mut registry = Registry::with_labels(labels.into_iter());
        let m = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            queue_wait: request_histogram(),
            stage_duration: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            step_duration: step_histogram(),
            images: Counter::default(),
            jobs_finished: Family::default(),
            queue_depth: Gauge::default(),
            in_flight: Gauge::default(),
            batch_size: Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]),
            backlog: Gauge::default(),
            result_bytes: Gauge::default(),
            results_held: Gauge::default(),
            results_evicted: Counter::default(),
            panics: Counter::default(),
            device_memory_used: Family::default(),
            device_memory_total: Family::default(),
            queue_claimed: Counter::default(),
            queue_steps_saved: Counter::default(),
            queue_handed_back: Counter::default(),
            checkpoint_duration: step_histogram(),
            redis_duration: Family::new_with_constructor(redis_histogram as fn() -> Histogram),
            redis_errors: Family::default(),
            redis_up: Gauge::default(),
            work_requests: AtomicU64::new(0),
            work_latency_micros: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            counter_name(names::REQUESTS_TOTAL),
            "HTTP requests by endpoint and status",
            m.requests.clone(),
        );
        registry.register(
            names::REQUEST_DURATION_SECONDS,
            "HTTP request duration",
            m.request_duration.clone(),
        );
        registry.register(
            names::QUEUE_WAIT_SECONDS,
            "Time a job waited in the queue",
            m.queue_wait.clone(),
        );
        registry.register(
            names::STAGE_DURATION_SECONDS,
            "Duration of each pipeline stage per batch",
            m.stage_duration.clone(),
        );
        registry.register(
            names::STEP_DURATION_SECONDS,
            "Duration of one denoising step (one UNet call on the batch)",
            m.step_duration.clone(),
        );
        registry.register(
            counter_name(names::IMAGES_TOTAL),
            "Images generated",
            m.images.clone(),
        );
        registry.register(
            counter_name(names::JOBS_FINISHED_TOTAL),
            "Jobs that ended, by status (completed, failed, cancelled)",
            m.jobs_finished.clone(),
        );
        registry.register(
            names::QUEUE_DEPTH,
            "Jobs waiting in the queue",
            m.queue_depth.clone(),
        );
        registry.register(
            names::IN_FLIGHT,
            "HTTP requests being served",
            m.in_flight.clone(),
        );
        registry.register(
            names::BATCH_SIZE,
            "Images per UNet batch",
            m.batch_size.clone(),
        );
        registry.register(
            names::BACKLOG_SECONDS,
            "Estimated seconds of queued and running work, from measured step times",
            m.backlog.clone(),
        );
        registry.register(
            names::RESULT_MEMORY_BYTES,
            "Bytes held by retained results (async jobs, url images)",
            m.result_bytes.clone(),
        );
        registry.register(
            names::RESULTS_HELD,
            "Retained results clients can still fetch",
            m.results_held.clone(),
        );
        registry.register(
            counter_name(names::RESULTS_EVICTED_TOTAL),
            "Results evicted before their TTL to stay within the result memory budget",
            m.results_evicted.clone(),
        );
        registry.register(
            counter_name(names::PIPELINE_PANICS_TOTAL),
            "Panics caught in the pipeline (the server then reports not ready)",
            m.panics.clone(),
        );
        registry.register(
            names::DEVICE_MEMORY_USED_BYTES,
            "Accelerator memory in use (all processes), where the executor can read it",
            m.device_memory_used.clone(),
        );
        registry.register(
            names::DEVICE_MEMORY_TOTAL_BYTES,
            "Accelerator memory, where the executor can read it",
            m.device_memory_total.clone(),
        );
        m.register_queue(&mut registry);
        Self { registry, ..m }
    }

    fn register_queue(&self, registry: &mut Registry) {
        use names::queue as q;
        registry.register(
            counter_name(q::CLAIMED_TOTAL),
            "Jobs taken over from a replica that stopped heartbeating",
            self.queue_claimed.clone(),
        );
        registry.register(
            counter_name(q::STEPS_SAVED_TOTAL),
            "Denoising steps not rerun because a job resumed from its checkpoint",
            self.queue_steps_saved.clone(),
        );
        registry.register(
            counter_name(q::HANDED_BACK_TOTAL),
            "Jobs handed back to the shared queue while draining",
            self.queue_handed_back.clone(),
        );
        registry.register(
            q::CHECKPOINT_SECONDS,
            "Time to encode and store one job checkpoint",
            self.checkpoint_duration.clone(),
        );
        registry.register(
            q::REDIS_SECONDS,
            "Redis round trips by operation",
            self.redis_duration.clone(),
        );
        registry.register(
            counter_name(q::REDIS_ERRORS_TOTAL),
            "Redis calls that got no answer, by operation",
            self.redis_errors.clone(),
        );
        registry.register(q::REDIS_UP, "1 while Redis answers", self.redis_up.clone());
    }

    pub fn job_claimed(&self) {
        self.queue_claimed.inc();
    }

    pub fn job_resumed(&self, steps_saved: u32) {
        self.queue_steps_saved.inc_by(u64::from(steps_saved));
    }

    pub fn job_handed_back(&self) {
        self.queue_handed_back.inc();
    }

    pub fn observe_checkpoint(&self, elapsed: Duration) {
        self.checkpoint_duration.observe(elapsed.as_secs_f64());
    }

    pub fn observe_request(&self, endpoint: &str, status: u16, elapsed: Duration) {
        if is_work(endpoint) {
            self.work_requests.fetch_add(1, Ordering::Relaxed);
            self.work_latency_micros
                .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        }
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.request_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn totals(&self) -> Totals {
        Totals {
            requests: self.work_requests.load(Ordering::Relaxed),
            latency_seconds: self.work_latency_micros.load(Ordering::Relaxed) as f64 / 1e6,
            images: self.images.get(),
        }
    }

    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    pub fn observe_image_encode(&self, elapsed: Duration) {
        self.stage_duration
            .get_or_create(&StageLabels {
                stage: "image_encode",
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Renders the text exposition, refreshing gauges from the queue and the
    /// device's memory first.
    pub fn render(&self, stats: &QueueStats, device: Option<DeviceMemory>) -> String {
        if let Some(d) = device {
            let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            self.device_memory_used
                .get_or_create(&NoLabels::new())
                .set(bytes(d.used_bytes));
            self.device_memory_total
                .get_or_create(&NoLabels::new())
                .set(bytes(d.total_bytes));
        }
        self.queue_depth.set(stats.queued as i64);
        self.backlog.set(stats.backlog_seconds());
        self.result_bytes
            .set(i64::try_from(stats.result_bytes).unwrap_or(i64::MAX));
        self.results_held.set(stats.results_held as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("could not encode metrics");
        }
        out
    }
}

impl Telemetry for Metrics {
    fn job_started(&self, queue_wait: Duration) {
        self.queue_wait.observe(queue_wait.as_secs_f64());
    }

    fn batch_finished(&self, images: usize, t: &Timings) {
        self.batch_size.observe(images as f64);
        for (stage, d) in [
            ("text_encode", t.text_encode),
            ("vae_encode", t.vae_encode),
            ("denoise", t.denoise),
            ("vae_decode", t.vae_decode),
        ] {
            if !d.is_zero() {
                self.stage_duration
                    .get_or_create(&StageLabels { stage })
                    .observe(d.as_secs_f64());
            }
        }
        if t.steps > 0 {
            let per_step = t.denoise.as_secs_f64() / t.steps as f64;
            for _ in 0..t.steps {
                self.step_duration.observe(per_step);
            }
        }
    }

    fn job_finished(&self, status: JobStatus, images: usize) {
        let label = match status {
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Queued | JobStatus::Running => return,
        };
        self.jobs_finished
            .get_or_create(&StatusLabels { status: label })
            .inc();
        if status == JobStatus::Completed {
            self.images.inc_by(images as u64);
        }
    }

    fn result_evicted(&self) {
        self.results_evicted.inc();
    }

    fn pipeline_panicked(&self) {
        self.panics.inc();
    }
}

impl QueueTelemetry for Metrics {
    fn redis_call(&self, op: &'static str, elapsed: Duration, ok: bool) {
        let labels = OperationLabels { operation: op };
        self.redis_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.redis_errors.get_or_create(&labels).inc();
        }
        self.redis_up.set(i64::from(ok));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
    }

    #[test]
    fn device_memory_is_reported_only_where_the_executor_reads_it() {
        let m = Metrics::new("tiny", "cuda", "gpu");
        let stats = QueueStats::default();
        let cpu = m.render(&stats, None);
        assert_eq!(series(&cpu, names::DEVICE_MEMORY_USED_BYTES), None, "{cpu}");
        let gpu = m.render(
            &stats,
            Some(DeviceMemory {
                total_bytes: 150_000_000_000,
                used_bytes: 4_500_000_000,
            }),
        );
        let used = series(&gpu, names::DEVICE_MEMORY_USED_BYTES).expect("used series");
        assert!(used.ends_with(" 4500000000"), "{used}");
        assert!(used.contains(r#"accelerator="cuda""#), "{used}");
        let total = series(&gpu, names::DEVICE_MEMORY_TOTAL_BYTES).expect("total series");
        assert!(total.ends_with(" 150000000000"), "{total}");
    }
}
