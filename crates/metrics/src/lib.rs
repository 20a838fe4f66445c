//! Every metric the server publishes is named here, and every query that
//! autoscaling runs against them is built here, so the server, the rendered
//! KEDA ScaledObjects and the docs cannot drift apart.

/// Labels every series carries; values come from the environment the
/// Deployment sets (`ANYACCEL_POOL`, `ANYACCEL_ACCELERATOR`) and the loaded model.
pub mod labels {
    pub const MODEL: &str = "model";
    pub const ACCELERATOR: &str = "accelerator";
    pub const POOL: &str = "pool";
    pub const ENDPOINT: &str = "endpoint";
    pub const STATUS: &str = "status";
    pub const STAGE: &str = "stage";
}

/// Environment variables through which a Deployment tells a pod who it is.
pub mod env {
    pub const POOL: &str = "ANYACCEL_POOL";
    pub const ACCELERATOR: &str = "ANYACCEL_ACCELERATOR";
    pub const MODEL: &str = "ANYACCEL_MODEL";
}

/// The same signals in CloudWatch: namespace, metric names and dimension
/// names the publisher uses and KEDA's `aws-cloudwatch` trigger queries.
pub mod cloudwatch {
    pub const NAMESPACE: &str = "anyaccel";
    pub const BACKLOG_SECONDS: &str = "BacklogSeconds";
    pub const QUEUE_DEPTH: &str = "QueueDepth";
    pub const IN_FLIGHT: &str = "InFlightRequests";
    pub const REQUESTS: &str = "Requests";
    pub const IMAGES: &str = "ImagesGenerated";
    pub const REQUEST_LATENCY: &str = "RequestLatency";
    pub const DIM_POOL: &str = "Pool";
    pub const DIM_ACCELERATOR: &str = "Accelerator";
    pub const DIM_MODEL: &str = "Model";
}

pub const REQUESTS_TOTAL: &str = "anyaccel_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "anyaccel_request_duration_seconds";
pub const QUEUE_WAIT_SECONDS: &str = "anyaccel_queue_wait_seconds";
pub const STAGE_DURATION_SECONDS: &str = "anyaccel_stage_duration_seconds";
pub const STEP_DURATION_SECONDS: &str = "anyaccel_denoise_step_duration_seconds";
pub const IMAGES_TOTAL: &str = "anyaccel_images_generated_total";
/// Jobs that ended, by `status`: `completed`, `failed` or `cancelled`.
pub const JOBS_FINISHED_TOTAL: &str = "anyaccel_jobs_finished_total";
pub const QUEUE_DEPTH: &str = "anyaccel_queue_depth";
pub const IN_FLIGHT: &str = "anyaccel_in_flight_requests";
pub const BATCH_SIZE: &str = "anyaccel_batch_size";
/// Estimated seconds of work waiting or running, from measured step times:
/// the signal KEDA scales on.
pub const BACKLOG_SECONDS: &str = "anyaccel_backlog_seconds";
/// Bytes held by retained results (async jobs' pixels, `url` images).
pub const RESULT_MEMORY_BYTES: &str = "anyaccel_result_memory_bytes";
/// Retained results (jobs and `url` images) a client can still fetch.
pub const RESULTS_HELD: &str = "anyaccel_results_held";
/// Results evicted before their TTL to stay within `--result-memory`.
pub const RESULTS_EVICTED_TOTAL: &str = "anyaccel_results_evicted_total";
/// Panics caught in the pipeline; after one the server reports not ready.
pub const PIPELINE_PANICS_TOTAL: &str = "anyaccel_pipeline_panics_total";
/// The accelerator's memory in use, all processes (GPUs; absent where the
/// executor cannot read it).
pub const DEVICE_MEMORY_USED_BYTES: &str = "anyaccel_device_memory_used_bytes";
/// The accelerator's memory (GPUs; absent where the executor cannot read it).
pub const DEVICE_MEMORY_TOTAL_BYTES: &str = "anyaccel_device_memory_total_bytes";

/// The fleet's shared job queue (Redis), when `--redis-url` is set.
pub mod queue {
    /// Jobs this replica took over from one that stopped heartbeating.
    pub const CLAIMED_TOTAL: &str = "anyaccel_queue_jobs_claimed_total";
    /// Denoising steps not rerun because a job resumed from its checkpoint.
    pub const STEPS_SAVED_TOTAL: &str = "anyaccel_queue_resume_steps_saved_total";
    /// Jobs this replica handed back to the queue (draining).
    pub const HANDED_BACK_TOTAL: &str = "anyaccel_queue_jobs_handed_back_total";
    /// Time to encode and store one checkpoint.
    pub const CHECKPOINT_SECONDS: &str = "anyaccel_queue_checkpoint_seconds";
    /// Redis round trips, by [`OPERATION`].
    pub const REDIS_SECONDS: &str = "anyaccel_queue_redis_duration_seconds";
    /// Redis calls that got no answer (unreachable, timed out), by [`OPERATION`].
    pub const REDIS_ERRORS_TOTAL: &str = "anyaccel_queue_redis_errors_total";
    /// 1 while Redis answers, 0 while it does not.
    pub const REDIS_UP: &str = "anyaccel_queue_redis_up";
    pub const OPERATION: &str = "operation";
}

/// The `anyaccel fleet` controller's series: per pool (label
/// [`labels::POOL`]), and its API errors by [`fleet::OPERATION`].
pub mod fleet {
    /// The weight the Ingress gives the pool now.
    pub const WEIGHT: &str = "anyaccel_fleet_weight";
    /// The spec's (the plan's) weight for the pool.
    pub const PLANNED_WEIGHT: &str = "anyaccel_fleet_planned_weight";
    /// 1 while the pool cannot get capacity (within its hold-down), else 0.
    pub const POOL_CONSTRAINED: &str = "anyaccel_fleet_pool_constrained";
    pub const READY_REPLICAS: &str = "anyaccel_fleet_ready_replicas";
    pub const DESIRED_REPLICAS: &str = "anyaccel_fleet_desired_replicas";
    /// Writes of the Ingress's weights.
    pub const WEIGHT_UPDATES_TOTAL: &str = "anyaccel_fleet_weight_updates_total";
    /// Failed Kubernetes API calls, by operation.
    pub const API_ERRORS_TOTAL: &str = "anyaccel_fleet_api_errors_total";
    /// Label of [`API_ERRORS_TOTAL`]: `watch_deployments`, `patch_ingress`, ...
    pub const OPERATION: &str = "operation";
}

/// PromQL for the per-pool backlog KEDA's Prometheus scaler divides by the
/// per-replica target: total seconds of queued work across the pool's pods.
pub fn backlog_query(pool: &str) -> String {
    format!("sum({BACKLOG_SECONDS}{{{p}=\"{pool}\"}})", p = labels::POOL)
}

/// PromQL for the per-pool queue depth (requests waiting, not yet running).
pub fn queue_depth_query(pool: &str) -> String {
    format!("sum({QUEUE_DEPTH}{{{p}=\"{pool}\"}})", p = labels::POOL)
}

/// Endpoints that are not client work: probes, scrapes and metadata.
pub const NON_WORK_ENDPOINTS: &str = "/metrics|/health/.*|/v2/health/.*|/info|/docs|/openapi.json";

/// PromQL for the per-pool rate of client requests over the last minute
/// (probes and scrapes excluded).
pub fn request_rate_query(pool: &str) -> String {
    format!(
        "sum(rate({REQUESTS_TOTAL}{{{p}=\"{pool}\",{e}!~\"{NON_WORK_ENDPOINTS}\"}}[1m]))",
        p = labels::POOL,
        e = labels::ENDPOINT,
    )
}

/// PromQL for the per-pool images generated per second over the last minute.
pub fn image_rate_query(pool: &str) -> String {
    format!(
        "sum(rate({IMAGES_TOTAL}{{{p}=\"{pool}\"}}[1m]))",
        p = labels::POOL
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_name_the_published_metric_and_pool() {
        let q = backlog_query("g5");
        assert_eq!(q, "sum(anyaccel_backlog_seconds{pool=\"g5\"})");
        assert!(queue_depth_query("g5").contains(QUEUE_DEPTH));
        assert!(request_rate_query("g5").contains("[1m]"));
    }
}
