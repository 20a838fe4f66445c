//! What the server benchmarks share: the tiny fixture model on ONNX Runtime's
//! CPU provider, and a real server on an ephemeral loopback port.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyaccel_batcher::BatcherConfig;
use anyaccel_executor_onnx::{DeviceRequest, OnnxConfig, OnnxExecutor};
use anyaccel_pipeline::{Defaults, Limits, Model, Pipeline};
use anyaccel_server::{AppState, ServerConfig};

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

pub fn pipeline(threads: usize) -> Arc<Pipeline> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-sd15");
    pipeline_at("tiny-sd15", &dir, threads)
}

/// The model in `dir` on ONNX Runtime's CPU provider.
pub fn pipeline_at(id: &str, dir: &std::path::Path, threads: usize) -> Arc<Pipeline> {
    let model = Model::load_dir(id, dir).expect("loading the model");
    let exec = OnnxExecutor::load(
        dir,
        &model.components(),
        &OnnxConfig {
            device: DeviceRequest::Cpu,
            intra_threads: Some(threads),
            inter_threads: Some(1),
            ..OnnxConfig::default()
        },
    )
    .expect("ONNX Runtime executor (run scripts/fetch-onnxruntime.sh once)");
    Arc::new(Pipeline::new(
        Arc::new(exec),
        model,
        Limits::default(),
        Defaults::default(),
    ))
}

/// A server of one square `size`, batching up to `max_batch` images.
pub fn config(size: u32, max_batch: usize, delay: Duration) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: Vec::new(),
        max_body_bytes: 2 * 1024 * 1024,
        max_input_pixels: 512 * 512,
        cors_origins: Vec::new(),
        public_url: None,
        sizes: vec![(size, size)],
        drain_timeout: Duration::from_secs(10),
        warmup: true,
        batcher: BatcherConfig {
            max_queue: 64,
            max_queue_work: u64::MAX / 4,
            max_batch_images: max_batch,
            max_batch_delay: delay,
            request_timeout: Duration::from_secs(120),
            ..BatcherConfig::default()
        },
        pool: "bench".into(),
        accelerator: "cpu".into(),
        a1111_preview_every: ServerConfig::DEFAULT_A1111_PREVIEW_EVERY,
        cloudwatch: anyaccel_server::CloudWatchConfig::default(),
    }
}

pub struct Server {
    pub base: String,
    pub state: AppState,
    _rt: tokio::runtime::Runtime,
}

pub fn start(pipeline: Arc<Pipeline>, config: ServerConfig) -> Server {
    // The CLI's `serve` runs a multi-threaded tokio runtime; two workers match this machine.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = AppState::new(pipeline, config).expect("batcher starts");
    state.warm_up();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = anyaccel_server::router(state.clone());
    rt.spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        base: format!("http://{addr}"),
        state,
        _rt: rt,
    }
}
