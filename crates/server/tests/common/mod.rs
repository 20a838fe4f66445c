//! A real server on an ephemeral loopback port, with the tiny fixture model.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyaccel_batcher::BatcherConfig;
use anyaccel_executor_onnx::{DeviceRequest, OnnxConfig, OnnxExecutor};
use anyaccel_pipeline::{Defaults, Limits, Model, Pipeline};
use anyaccel_server::{AppState, ServerConfig};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub struct TestServer {
    pub base: String,
    pub state: AppState,
    _rt: tokio::runtime::Runtime,
}

pub fn config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: Vec::new(),
        max_body_bytes: 2 * 1024 * 1024,
        max_input_pixels: 512 * 512,
        cors_origins: Vec::new(),
        public_url: None,
        sizes: vec![(64, 64), (128, 128)],
        drain_timeout: Duration::from_secs(10),
        warmup: true,
        batcher: BatcherConfig {
            max_queue: 16,
            max_queue_work: 10_000_000_000,
            max_batch_images: 4,
            max_batch_delay: Duration::from_millis(30),
            result_ttl: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            result_memory: 256 << 20,
        },
        pool: "test".into(),
        accelerator: "cpu".into(),
        a1111_preview_every: ServerConfig::DEFAULT_A1111_PREVIEW_EVERY,
        cloudwatch: anyaccel_server::CloudWatchConfig::default(),
    }
}

pub fn pipeline() -> Pipeline {
    let dir = repo().join("fixtures/models/tiny-sd15");
    let model = Model::load_dir("tiny-sd15", &dir).expect("model");
    let exec = OnnxExecutor::load(
        &dir,
        &model.components(),
        &OnnxConfig {
            device: DeviceRequest::Cpu,
            intra_threads: Some(1),
            ..OnnxConfig::default()
        },
    )
    .expect("executor");
    Pipeline::new(
        Arc::new(exec),
        model,
        Limits::default(),
        Defaults::default(),
    )
}

pub fn start(config: ServerConfig) -> TestServer {
    start_with(pipeline(), config)
}

/// A server on `pipeline` (tests that wrap the executor).
pub fn start_with(pipeline: Pipeline, config: ServerConfig) -> TestServer {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = AppState::new(Arc::new(pipeline), config).expect("batcher starts");
    state.warm_up();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = anyaccel_server::router(state.clone());
    rt.spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TestServer {
        base: format!("http://{addr}"),
        state,
        _rt: rt,
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The Prometheus exposition text.
    pub fn metrics(&self) -> String {
        Self::agent()
            .get(&self.url("/metrics"))
            .call()
            .expect("metrics")
            .into_string()
            .expect("metrics text")
    }

    pub fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build()
    }

    /// POSTs JSON and returns (status, headers we care about, body as JSON).
    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, Option<String>, serde_json::Value) {
        self.send(
            Self::agent().post(&self.url(path)),
            body.to_string().as_bytes(),
            "application/json",
        )
    }

    pub fn send(
        &self,
        req: ureq::Request,
        body: &[u8],
        content_type: &str,
    ) -> (u16, Option<String>, serde_json::Value) {
        let resp = match req.set("content-type", content_type).send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("transport error: {e}"),
        };
        let status = resp.status();
        let retry = resp.header("retry-after").map(str::to_string);
        let text = resp.into_string().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, retry, json)
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = match Self::agent().get(&self.url(path)).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("transport error: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }
}

/// A multipart/form-data body.
pub fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "anyaccel-test-boundary-7d1f";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some((name, bytes)) = file {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"init.png\"\r\nContent-Type: image/png\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn decode_b64_png(s: &str) -> image::RgbImage {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64");
    anyaccel_pipeline::images::decode(&bytes, 1 << 24).expect("image")
}
