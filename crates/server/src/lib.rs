//! `anyaccel serve`: the HTTP face of the pipeline.
//!
//! APIs clients already speak (OpenAI images, AUTOMATIC1111), native async
//! jobs with server-sent events, health for Kubernetes probes, Prometheus
//! metrics and an OpenAPI document generated from the handler types.

mod a1111;
mod cloudwatch;
mod docs;
mod error;
mod generate;
mod health;
mod jobs;
mod metrics;
mod openai;
mod playground;
mod queue;
mod store;
mod stream;
mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use anyaccel_batcher::StartError;
use anyaccel_batcher::{Batcher, BatcherConfig};
use anyaccel_pipeline::{GenerationParams, Pipeline};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use a1111::infotext;
use anyaccel_provenance::Signer;
pub use anyaccel_queue::QueueConfig;
pub use cloudwatch::{CloudWatchConfig, CloudWatchMode};
pub use error::ApiError;
pub use generate::sign_image;
pub use metrics::Metrics;
pub use queue::SharedQueueConfig;

/// Everything `serve` needs besides the pipeline.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Bearer tokens accepted on the APIs; empty = no authentication.
    pub api_keys: Vec<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest init image, in pixels.
    pub max_input_pixels: u64,
    /// Origins allowed by CORS; empty = CORS off.
    pub cors_origins: Vec<String>,
    /// Base URL for `response_format=url` links; else taken from the Host header.
    pub public_url: Option<String>,
    /// (width, height) sizes clients may request; each is warmed up before readiness.
    pub sizes: Vec<(u32, u32)>,
    /// How long SIGTERM waits for queued and running work.
    pub drain_timeout: Duration,
    /// Skip warm-up (tests of readiness only).
    pub warmup: bool,
    pub batcher: BatcherConfig,
    /// Deployment labels for metrics and `/info`.
    pub pool: String,
    pub accelerator: String,
    pub cloudwatch: CloudWatchConfig,
    /// A1111 requests keep a preview every this many steps for
    /// `/sdapi/v1/progress`'s `current_image`; 0 = none.
    pub a1111_preview_every: u32,
}

impl ServerConfig {
    /// A1111's own default shows a preview every 10 steps; 5 suits the
    /// 20–30-step runs most clients send, at well under 1% of the run.
    pub const DEFAULT_A1111_PREVIEW_EVERY: u32 = 5;
    pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
    pub const DEFAULT_MAX_INPUT_PIXELS: u64 = 4096 * 4096;
    /// Kubernetes' default grace period is 30 s; drain within it.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub(crate) batcher: Batcher,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: Arc<ServerConfig>,
    warmed: Arc<AtomicBool>,
    /// Signs every returned image (C2PA); `None` = unsigned.
    pub(crate) signer: Option<Arc<Signer>>,
    /// The fleet's shared job queue; `None`: jobs live in this replica's memory.
    pub(crate) queue: Option<Arc<queue::SharedQueue>>,
}

impl AppState {
    /// Starts the batcher; a server whose worker cannot start must not take work.
    pub fn new(pipeline: Arc<Pipeline>, config: ServerConfig) -> Result<Self, StartError> {
        let model = pipeline.model().id.clone();
        let metrics = Arc::new(Metrics::new(&model, &config.accelerator, &config.pool));
        let batcher = Batcher::start(pipeline, config.batcher.clone(), Some(metrics.clone()))?;
        Ok(Self {
            batcher,
            metrics,
            config: Arc::new(config),
            warmed: Arc::new(AtomicBool::new(false)),
            signer: None,
            queue: None,
        })
    }

    /// Puts the jobs API on the fleet's shared queue (Redis).
    pub fn with_queue(
        mut self,
        config: Option<SharedQueueConfig>,
    ) -> Result<Self, anyaccel_queue::QueueError> {
        self.queue = match config {
            Some(c) => Some(Arc::new(queue::SharedQueue::new(c, self.metrics.clone())?)),
            None => None,
        };
        Ok(self)
    }

    /// Signs every image this server returns with `signer`'s C2PA manifests.
    pub fn with_signer(mut self, signer: Option<Signer>) -> Self {
        self.signer = signer.map(Arc::new);
        self
    }

    pub(crate) fn pipeline(&self) -> &Arc<Pipeline> {
        self.batcher.pipeline()
    }

    /// Ready: warmed up for every size, not draining, and nothing broken.
    pub fn is_ready(&self) -> bool {
        self.warmed.load(Ordering::SeqCst)
            && !self.batcher.is_draining()
            && self.pipeline().executor().is_ready()
            && self.batcher.broken().is_none()
    }

    pub fn batcher(&self) -> &Batcher {
        &self.batcher
    }

    /// Runs one short generation per configured size (with guidance, so the
    /// UNet sees a batch of two) on the batcher's thread, where requests will
    /// run, then marks the server ready.
    pub fn warm_up(&self) {
        if self.config.warmup {
            for &(w, h) in &self.config.sizes {
                let params = GenerationParams {
                    prompt: "warm-up".into(),
                    width: Some(w),
                    height: Some(h),
                    // ONNX Runtime captures a CUDA graph on the third run of a shape
                    steps: Some(3),
                    guidance_scale: Some(7.5),
                    seed: Some(0),
                    ..GenerationParams::default()
                };
                let pipeline = self.pipeline().clone();
                let result = self
                    .batcher
                    .on_worker(move || {
                        let started = Instant::now();
                        pipeline
                            .validate(params)
                            .map_err(|e| e.to_string())
                            .and_then(|r| {
                                pipeline
                                    .generate(&r)
                                    .map(|_| (r.work(), started.elapsed()))
                                    .map_err(|e| e.to_string())
                            })
                    })
                    .unwrap_or_else(|| Err("the batcher's worker stopped or panicked".into()));
                match result {
                    Ok((work, elapsed)) => {
                        self.batcher.record_throughput(work, elapsed);
                        tracing::info!(
                            width = w,
                            height = h,
                            seconds = elapsed.as_secs_f64(),
                            "warmed up"
                        );
                    }
                    Err(e) => tracing::error!(width = w, height = h, error = %e, "warm-up failed"),
                }
            }
        }
        self.warmed.store(true, Ordering::SeqCst);
    }
}

/// The full router. Public so tests can serve it on an ephemeral port.
pub fn router(state: AppState) -> Router {
    let apis = Router::new()
        .merge(openai::routes())
        .merge(jobs::routes())
        .merge(a1111::routes())
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let mut app = Router::new()
        .merge(apis)
        .merge(health::routes())
        .merge(docs::routes())
        .merge(store::routes())
        .merge(playground::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe));
    if !state.config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = state
            .config
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    app.layer(middleware::from_fn(trace::middleware))
        .with_state(state)
}

/// Unknown paths get the JSON error shape like every other error.
async fn unknown_route(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}; see /docs for the API",
        req.method(),
        req.uri().path()
    ))
}

async fn wrong_method(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; see /docs for the API",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Counts and times every request by its route template.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    state.metrics.in_flight().inc();
    let resp = next.run(req).await;
    state.metrics.in_flight().dec();
    state
        .metrics
        .observe_request(&endpoint, resp.status().as_u16(), started.elapsed());
    resp
}

/// Bearer-token check, in constant time per configured key.
async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let keys = &state.config.api_keys;
    if keys.is_empty() {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut ok = subtle::Choice::from(0);
    for k in keys {
        ok |= k.as_bytes().ct_eq(presented.as_bytes());
    }
    if bool::from(ok) {
        next.run(req).await
    } else {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "missing or invalid API key; send `Authorization: Bearer <key>`",
        );
        e.param = Some("Authorization".into());
        e.into_response()
    }
}

/// Serves until SIGTERM or Ctrl-C, then drains: readiness turns false at
/// once, new work gets 503, queued and running work gets `drain_timeout` to
/// finish, and the function returns (the process exits 0).
pub async fn serve(state: AppState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(state.config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let warm = state.clone();
    let pulls = state.clone();
    // Pull shared jobs only once warmed up: a cold replica would take work
    // that a warm one could start sooner.
    tokio::spawn(async move {
        if tokio::task::spawn_blocking(move || warm.warm_up())
            .await
            .is_ok()
        {
            queue::spawn(pulls);
        }
    });
    cloudwatch::spawn(state.clone(), state.config.cloudwatch.clone());
    let app = router(state.clone());
    let drained = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: draining");
            drained.batcher.begin_drain();
            let timeout = drained.config.drain_timeout;
            queue::begin_drain(&drained, timeout);
            let b = drained.batcher.clone();
            let clean = tokio::task::spawn_blocking(move || b.drain(timeout))
                .await
                .unwrap_or(false);
            // Shared jobs write their ends (or go back to the queue) before we exit.
            queue::settle(&drained, Duration::from_secs(10)).await;
            if clean {
                tracing::info!("drained; exiting");
            } else {
                tracing::warn!("drain timeout reached; unfinished jobs were failed");
            }
        })
        .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
