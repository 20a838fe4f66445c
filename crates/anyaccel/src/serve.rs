//! `anyaccel serve`: load the model, warm up, serve HTTP until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyaccel_batcher::{BatcherConfig, CheckpointPolicy};
use anyaccel_pipeline::Limits;
use anyaccel_server::{
    AppState, CloudWatchConfig, CloudWatchMode, QueueConfig, ServerConfig, SharedQueueConfig,
};
use anyhow::Context;
use clap::Args;

use crate::generate::{LoadPlan, ModelArgs, parse_bytes, parse_size};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub c2pa: anyaccel_provenance::C2paArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[arg(long, default_value = "0.0.0.0", env = "ANYACCEL_HOST")]
    pub host: String,
    #[arg(long, default_value_t = 8080, env = "ANYACCEL_PORT")]
    pub port: u16,
    /// Accepted bearer tokens (repeat the flag, or comma-separate in the env var). None = open.
    #[arg(
        long = "api-key",
        env = "ANYACCEL_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Sizes clients may request (WxH, comma-separated); each is warmed up. Default: the
    /// model's native size (for a 1024-native SDXL model, its usual aspect buckets).
    #[arg(long, value_delimiter = ',', value_parser = parse_size, env = "ANYACCEL_SIZES")]
    pub sizes: Vec<(u32, u32)>,
    /// Requests allowed to wait; more get 429.
    #[arg(long, default_value_t = BatcherConfig::default().max_queue, env = "ANYACCEL_MAX_QUEUE")]
    pub max_queue: usize,
    /// Waiting work allowed, in megapixel-steps (pixels × steps × images × 2 with guidance / 1e6).
    #[arg(
        long,
        default_value_t = BatcherConfig::default().max_queue_work / 1_000_000,
        env = "ANYACCEL_MAX_QUEUE_MEGAPIXEL_STEPS"
    )]
    pub max_queue_megapixel_steps: u64,
    /// Most images per denoiser batch; 1 turns batching off.
    #[arg(long, default_value_t = BatcherConfig::default().max_batch_images, env = "ANYACCEL_MAX_BATCH")]
    pub max_batch: usize,
    /// How long the oldest request may wait for compatible company, in ms.
    #[arg(
        long,
        default_value_t = BatcherConfig::default().max_batch_delay.as_millis() as u64,
        env = "ANYACCEL_BATCH_DELAY_MS"
    )]
    pub batch_delay_ms: u64,
    /// Most images per request.
    #[arg(long, default_value_t = Limits::default().max_images, env = "ANYACCEL_MAX_IMAGES")]
    pub max_images: u32,
    #[arg(long, default_value_t = Limits::default().max_steps, env = "ANYACCEL_MAX_STEPS")]
    pub max_steps: u32,
    /// Work not finished within this many seconds of arrival is cancelled.
    #[arg(
        long,
        default_value_t = BatcherConfig::default().request_timeout.as_secs(),
        env = "ANYACCEL_REQUEST_TIMEOUT_SECS"
    )]
    pub request_timeout_secs: u64,
    /// How long finished results (async jobs and `url` images) stay retrievable.
    #[arg(
        long,
        default_value_t = BatcherConfig::default().result_ttl.as_secs(),
        env = "ANYACCEL_RESULT_TTL_SECS"
    )]
    pub result_ttl_secs: u64,
    /// Memory for retained results (e.g. 2GiB); past it the oldest are
    /// evicted and answer 410. Default: a quarter of the memory left once
    /// the model is loaded (the container's limit, or MemAvailable), within
    /// 64 MiB and 16 GiB.
    #[arg(long, value_parser = parse_bytes, env = "ANYACCEL_RESULT_MEMORY")]
    pub result_memory: Option<u64>,
    /// On SIGTERM, how long queued and running work may take before exit.
    #[arg(
        long,
        default_value_t = ServerConfig::DEFAULT_DRAIN_TIMEOUT.as_secs(),
        env = "ANYACCEL_DRAIN_TIMEOUT_SECS"
    )]
    pub drain_timeout_secs: u64,
    /// A1111 requests keep a preview every this many steps for
    /// `/sdapi/v1/progress`'s `current_image` (0: none).
    #[arg(
        long,
        default_value_t = ServerConfig::DEFAULT_A1111_PREVIEW_EVERY,
        env = "ANYACCEL_A1111_PREVIEW_EVERY"
    )]
    pub a1111_preview_every: u32,
    #[arg(
        long,
        default_value_t = ServerConfig::DEFAULT_MAX_BODY_BYTES,
        env = "ANYACCEL_MAX_BODY_BYTES"
    )]
    pub max_body_bytes: usize,
    /// Largest init image accepted, in pixels.
    #[arg(
        long,
        default_value_t = ServerConfig::DEFAULT_MAX_INPUT_PIXELS,
        env = "ANYACCEL_MAX_INPUT_PIXELS"
    )]
    pub max_input_pixels: u64,
    /// CORS origins allowed (comma-separated); none = CORS off.
    #[arg(long, value_delimiter = ',', env = "ANYACCEL_CORS_ORIGINS")]
    pub cors_origin: Vec<String>,
    /// Base URL for `response_format=url` links (default: from the Host header).
    #[arg(long, env = "ANYACCEL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Pool label for metrics and /info (set by the Deployment).
    #[arg(long, env = anyaccel_metrics::env::POOL, default_value = "local")]
    pub pool: String,
    /// Accelerator label for metrics (default: the executor's device kind).
    #[arg(long, env = anyaccel_metrics::env::ACCELERATOR)]
    pub accelerator: Option<String>,
    /// Publish to CloudWatch: off, emf (Embedded Metric Format on stdout) or api (PutMetricData).
    #[arg(long, default_value = "off", env = "ANYACCEL_CLOUDWATCH")]
    pub cloudwatch: CloudWatchMode,
    /// CloudWatch region (api mode; default: the AWS SDK's chain).
    #[arg(long, env = "ANYACCEL_CLOUDWATCH_REGION")]
    pub cloudwatch_region: Option<String>,
    /// CloudWatch endpoint override (VPC endpoint, tests).
    #[arg(long, env = "ANYACCEL_CLOUDWATCH_ENDPOINT")]
    pub cloudwatch_endpoint: Option<String>,
    /// Seconds between samples; match the KEDA trigger's metricStatPeriod.
    #[arg(long, default_value_t = 60, env = "ANYACCEL_CLOUDWATCH_INTERVAL_SECS")]
    pub cloudwatch_interval_secs: u64,
}

/// The fleet's shared job queue (Redis); without `--redis-url` jobs live in memory.
#[derive(Args, Debug)]
pub struct QueueArgs {
    /// Redis for fleet-wide jobs: `redis://host:6379[/db]`, `rediss://…` for TLS.
    #[arg(long, env = "ANYACCEL_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// The Redis password, if not in the URL (e.g. from a Secret).
    #[arg(long, env = "ANYACCEL_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Replicas with the same queue name share jobs; give each model artifact
    /// its own. Default: the model's name.
    #[arg(long, env = "ANYACCEL_REDIS_QUEUE")]
    pub redis_queue: Option<String>,
    /// This replica's name in the queue's consumer group. Default: host name and process id.
    #[arg(long, env = "ANYACCEL_REDIS_CONSUMER")]
    pub redis_consumer: Option<String>,
    /// Seconds without a heartbeat after which a replica counts as dead and
    /// another one takes over its jobs.
    #[arg(
        long,
        default_value_t = 30,
        env = "ANYACCEL_REDIS_VISIBILITY_TIMEOUT_SECS"
    )]
    pub redis_visibility_timeout_secs: u64,
    /// Largest encoded result (all of a job's images) kept in Redis.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes, env = "ANYACCEL_REDIS_MAX_RESULT_BYTES")]
    pub redis_max_result_bytes: u64,
    /// A running shared job checkpoints every this many steps (0: not by steps)...
    #[arg(long, default_value_t = 5, env = "ANYACCEL_CHECKPOINT_EVERY_STEPS")]
    pub checkpoint_every_steps: u32,
    /// ...or after this many seconds since its last checkpoint (0: not by time).
    #[arg(long, default_value_t = 10, env = "ANYACCEL_CHECKPOINT_EVERY_SECS")]
    pub checkpoint_every_secs: u64,
}

impl QueueArgs {
    fn config(
        &self,
        model: &str,
        result_ttl: Duration,
    ) -> anyhow::Result<Option<SharedQueueConfig>> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            anyhow::bail!("--redis-url must start with redis:// or rediss:// (got {url:?})");
        }
        if url.starts_with("rediss://") {
            // The build links two rustls crypto providers; pick one, as `fleet` does.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let queue = self
            .redis_queue
            .clone()
            .unwrap_or_else(|| queue_name(model));
        if queue.is_empty() || queue.contains(['{', '}', ' ']) {
            anyhow::bail!(
                "--redis-queue {queue:?}: use letters, digits, '-', '_', '.', '/' or ':'"
            );
        }
        if self.redis_visibility_timeout_secs == 0 {
            anyhow::bail!("--redis-visibility-timeout-secs must be at least 1");
        }
        let consumer = self.redis_consumer.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into());
            format!("{host}-{}", std::process::id())
        });
        Ok(Some(SharedQueueConfig {
            redis: QueueConfig {
                url: url.clone(),
                password: self.redis_password.clone(),
                queue,
                consumer,
                visibility_timeout: Duration::from_secs(self.redis_visibility_timeout_secs),
                result_ttl,
            },
            checkpoints: CheckpointPolicy {
                every_steps: self.checkpoint_every_steps,
                every: Duration::from_secs(self.checkpoint_every_secs),
            },
            max_result_bytes: usize::try_from(self.redis_max_result_bytes).unwrap_or(usize::MAX),
        }))
    }
}

/// A model id or path as a queue name: its last component.
fn queue_name(model: &str) -> String {
    model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before the model loads: a bad certificate or key fails in a second.
    let signer = anyaccel_provenance::Signer::from_args(&args.c2pa)?;
    match &signer {
        Some(s) if s.is_development() => tracing::warn!(
            "signing images with a development C2PA certificate; verifiers report it as untrusted (set --c2pa-cert and --c2pa-key)"
        ),
        Some(s) => tracing::info!(c2pa = %s.describe(), "signing images with C2PA"),
        None => tracing::info!("C2PA signing is off"),
    }
    let limits = Limits {
        max_images: args.max_images,
        max_steps: args.max_steps,
        ..Limits::default()
    };
    let (pipeline, sizes) = args.model.load(LoadPlan {
        limits,
        sizes: &args.sizes,
        max_batch: args.max_batch.max(1),
    })?;
    let pipeline = Arc::new(pipeline);
    let listen: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| {
            format!(
                "--host {} --port {} is not an address",
                args.host, args.port
            )
        })?;
    let accelerator = args
        .accelerator
        .clone()
        .unwrap_or_else(|| pipeline.executor().capabilities().device.to_string());
    let config = ServerConfig {
        listen,
        api_keys: args
            .api_keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect(),
        max_body_bytes: args.max_body_bytes,
        max_input_pixels: args.max_input_pixels,
        cors_origins: args.cors_origin,
        public_url: args.public_url,
        sizes,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        a1111_preview_every: args.a1111_preview_every,
        warmup: true,
        batcher: BatcherConfig {
            max_queue: args.max_queue,
            max_queue_work: args.max_queue_megapixel_steps.saturating_mul(1_000_000),
            max_batch_images: args.max_batch.max(1),
            max_batch_delay: Duration::from_millis(args.batch_delay_ms),
            result_ttl: Duration::from_secs(args.result_ttl_secs),
            result_memory: args.result_memory.unwrap_or_else(default_result_memory),
            request_timeout: Duration::from_secs(args.request_timeout_secs),
        },
        pool: args.pool,
        accelerator,
        cloudwatch: CloudWatchConfig {
            mode: args.cloudwatch,
            region: args.cloudwatch_region,
            endpoint: args.cloudwatch_endpoint,
            interval: Duration::from_secs(args.cloudwatch_interval_secs.max(1)),
            ..CloudWatchConfig::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    tracing::info!(
        bytes = config.batcher.result_memory,
        ttl_secs = config.batcher.result_ttl.as_secs(),
        "result memory budget"
    );
    let queue = args
        .queue
        .config(&pipeline.model().id, config.batcher.result_ttl)?;
    if let Some(q) = &queue {
        tracing::info!(queue = %q.redis.queue, consumer = %q.redis.consumer, "jobs go through the shared queue");
    }
    let state = AppState::new(pipeline, config)?.with_signer(signer);
    // The queue's connection lives on the runtime that serves.
    let _guard = runtime.enter();
    let state = state.with_queue(queue)?;
    runtime.block_on(anyaccel_server::serve(state))?;
    tracing::info!("bye");
    Ok(())
}

/// A quarter of what the process may still use once the model is loaded.
fn default_result_memory() -> u64 {
    const MIB: u64 = 1 << 20;
    anyaccel_pipeline::memory::host_available()
        .map(|(bytes, _)| bytes / 4)
        .unwrap_or(BatcherConfig::default().result_memory)
        .clamp(64 * MIB, 16 * 1024 * MIB)
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command};

    use super::ServeArgs;

    /// A Deployment configures `serve` through its environment: no flag may lack a variable.
    #[test]
    fn every_serve_flag_has_an_env_var() {
        let cmd = ServeArgs::augment_args(Command::new("serve"));
        let missing: Vec<&str> = cmd
            .get_arguments()
            .filter(|a| a.get_long().is_some() && a.get_env().is_none())
            .filter_map(|a| a.get_long())
            .collect();
        assert!(
            cmd.get_arguments().count() > 20,
            "the model flags are included"
        );
        assert!(missing.is_empty(), "flags without an env var: {missing:?}");
    }

    /// The shared queue's settings travel from `deploy render` to `serve` by name.
    #[test]
    fn the_redis_variables_deploy_renders_are_the_ones_serve_reads() {
        let cmd = ServeArgs::augment_args(Command::new("serve"));
        let read: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        for rendered in [
            anyaccel_deploy::REDIS_URL_ENV,
            anyaccel_deploy::REDIS_PASSWORD_ENV,
            anyaccel_deploy::REDIS_QUEUE_ENV,
        ] {
            assert!(
                read.iter().any(|r| r == rendered),
                "serve does not read {rendered}"
            );
        }
    }

    #[test]
    fn a_model_path_or_hub_id_names_its_queue() {
        assert_eq!(super::queue_name("fixtures/models/tiny-sd15"), "tiny-sd15");
        assert_eq!(super::queue_name("acme/sd15 onnx/"), "sd15-onnx");
    }
}
