//! Remote executor: runs the model components in a Python sidecar process,
//! for accelerators whose SDK is Python-only (optimum-neuron on AWS
//! Inferentia/Trainium) and for torch on CPU or CUDA.
//!
//! The executor starts `python -m anyaccel_sidecar --socket … --model …
//! --device …` (package in the repo's `python/`), talks gRPC to it over a Unix
//! socket (`proto/anyaccel/sidecar/v1/sidecar.proto`), and supervises it: it
//! waits until the model is served, probes its health, restarts it with
//! backoff when it dies or hangs, reports [`RemoteExecutor::is_ready`] false
//! while it is down, and fails calls that were in flight on a dead sidecar at
//! once with [`ExecutorError::Unavailable`] (the server answers 503).
//!
//! A denoise session ([`Executor::denoise`]) hands the conditioning to the
//! sidecar once (`BeginDenoise`), which keeps it on its device; each step
//! sends only latents and per-row timesteps (`DenoiseStep`), and dropping the
//! session frees it (`EndDenoise`).
//!
//! Components compiled for a static batch size (Neuron) get exactly that
//! batch: smaller batches are padded, larger ones split, and the padding is
//! dropped from the outputs, so the pipeline runs unchanged. A denoise session
//! then holds one sidecar session per chunk of rows.
//!
//! The [`Executor`] calls block; make them from a blocking thread, not from
//! inside an async runtime (the executor drives its own small tokio runtime).

mod batching;
mod config;
mod session;
mod supervisor;

pub mod proto {
    //! Types generated from `proto/anyaccel/sidecar/v1/sidecar.proto`.
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("anyaccel.sidecar.v1");
}

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyaccel_executor::{
    Capabilities, Component, Conditioning, DenoiseSession, DeviceKind, Dtype, Executor,
    ExecutorError, HiddenLayer, Shapes, Tensor, TextEncoding, TimestepInput, TokenIds,
    UnknownDevice,
};
use tokio::sync::oneshot;

pub use config::{Backoff, RemoteConfig, SidecarDevice, TorchCompile};

use batching::Chunk;
use supervisor::{Client, Shared};

/// Why the executor could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("could not start the sidecar with `{python}`: {source} (is the Python environment installed? see scripts/setup-sidecar-env.sh)", python = .python.display())]
    Spawn {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sidecar exited before it was ready ({status}); its last output:\n{log}")]
    Exited { status: String, log: String },
    #[error(
        "the sidecar was not serving after {after:?} (last state: {last}); its last output:\n{log}"
    )]
    StartupTimeout {
        after: Duration,
        last: String,
        log: String,
    },
    #[error("the sidecar did not report its capabilities: {0}")]
    Capabilities(String),
    #[error("invalid remote executor configuration: {0}")]
    Config(String),
    #[error("could not start the executor's async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A snapshot of the sidecar's state, for `/health/ready` and `/info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarStatus {
    pub ready: bool,
    /// Process id of the live sidecar.
    pub pid: Option<u32>,
    /// How many times it was restarted.
    pub restarts: u64,
    /// Why it is not ready (empty when ready).
    pub message: String,
}

/// Drives a supervised Python sidecar; see the crate docs.
pub struct RemoteExecutor {
    shared: Arc<Shared>,
    capabilities: Capabilities,
    /// Batch each component was compiled for (static shapes only).
    batches: HashMap<Component, usize>,
    /// What the sidecar loaded.
    components: Vec<Component>,
    denoiser: Component,
    pipeline_class: String,
    runtime_info: String,
    call_timeout: Option<Duration>,
    socket: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

/// Longest Unix socket path Linux accepts (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

impl RemoteExecutor {
    /// Starts the sidecar and waits until it serves the model (up to
    /// `config.startup_timeout`). A first start that fails is an error, with
    /// the sidecar's last output; later deaths are restarted.
    pub fn spawn(config: RemoteConfig) -> Result<Self, RemoteError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(RemoteError::Config(
                "RemoteExecutor::spawn was called inside an async runtime; call it from a blocking thread".into(),
            ));
        }
        let socket = match &config.socket {
            Some(s) => s.clone(),
            None => std::env::temp_dir().join(format!(
                "anyaccel-sidecar-{}-{}.sock",
                std::process::id(),
                SOCKETS.fetch_add(1, Ordering::Relaxed)
            )),
        };
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(RemoteError::Config(format!(
                "socket path {} is longer than {MAX_SOCKET_PATH} bytes; choose a shorter one",
                socket.display()
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("anyaccel-remote")
            .enable_all()
            .build()
            .map_err(RemoteError::Runtime)?;
        let shared = Arc::new(Shared::new());
        let call_timeout = config.call_timeout;
        let cfg = Arc::new(config);
        let (tx, rx) = oneshot::channel();
        let socket_path: Arc<Path> = Arc::from(socket.as_path());
        runtime.spawn(supervisor::supervise(
            shared.clone(),
            cfg.clone(),
            socket_path,
            tx,
        ));
        let caps = match runtime.block_on(rx) {
            Ok(Ok(caps)) => caps,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(RemoteError::Capabilities(
                    "the supervisor stopped before the sidecar was ready".into(),
                ));
            }
        };
        let Converted {
            capabilities,
            batches,
            components,
        } = convert_capabilities(&caps)?;
        tracing::info!(
            device = %capabilities.device,
            device_name = %capabilities.device_name,
            dtype = %capabilities.dtype,
            shapes = ?capabilities.shapes,
            timestep = ?capabilities.timestep,
            pipeline = %caps.pipeline_class,
            runtime = %caps.runtime,
            model = %cfg.model,
            "remote executor ready"
        );
        let denoiser = if components.contains(&Component::Transformer) {
            Component::Transformer
        } else {
            Component::Unet
        };
        Ok(Self {
            shared,
            capabilities,
            batches,
            components,
            denoiser,
            pipeline_class: caps.pipeline_class,
            runtime_info: caps.runtime,
            call_timeout,
            socket,
            runtime: Some(runtime),
        })
    }

    /// True while the sidecar serves; false while it is down or restarting.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> SidecarStatus {
        let conn = self.shared.conn();
        SidecarStatus {
            ready: self.is_ready(),
            pid: conn.pid,
            restarts: conn.restarts,
            message: conn.down.clone(),
        }
    }

    /// Blocks until the sidecar serves or `timeout` passes; returns readiness.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// What the sidecar runs on, e.g. `torch 2.15.0 / diffusers 0.39.0 / …`.
    pub fn runtime_info(&self) -> &str {
        &self.runtime_info
    }

    /// The Unix socket the sidecar listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The components the sidecar loaded (text encoders, denoiser, VAE parts).
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// The diffusers pipeline class the sidecar serves, e.g. `StableDiffusionXLPipeline`.
    pub fn pipeline_class(&self) -> &str {
        &self.pipeline_class
    }

    /// The generation (sidecar process) calls go to now.
    pub(crate) fn generation(&self) -> u64 {
        self.shared.conn().generation
    }

    /// Runs one RPC against the live sidecar; fails fast when it is down and as
    /// soon as it dies while the call is in flight.
    fn call<T, F, Fut>(&self, component: Component, rpc: F) -> Result<T, ExecutorError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_on(component, rpc)
            .map(|(r, _)| r)
            .map_err(|e| e.error)
    }

    /// [`Self::call`], also giving the generation that answered, and the
    /// status code of a failure (a denoise session retries on NOT_FOUND).
    pub(crate) fn call_on<T, F, Fut>(
        &self,
        component: Component,
        rpc: F,
    ) -> Result<(T, u64), CallError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(CallError::local(ExecutorError::Run {
                component,
                message: "the remote executor was called inside an async runtime; call it from a blocking thread".into(),
            }));
        }
        let Some(runtime) = &self.runtime else {
            return Err(CallError::local(ExecutorError::Unavailable(
                "the remote executor is shut down".into(),
            )));
        };
        let (client, generation) = {
            let conn = self.shared.conn();
            match (&conn.client, self.is_ready()) {
                (Some(c), true) => (c.clone(), conn.generation),
                _ => {
                    return Err(CallError::local(ExecutorError::Unavailable(format!(
                        "the sidecar is not ready for {component}: {}",
                        conn.down
                    ))));
                }
            }
        };
        let mut deaths = self.shared.deaths.subscribe();
        let timeout = self.call_timeout;
        runtime.block_on(async move {
            let call = async {
                match timeout {
                    Some(t) => tokio::time::timeout(t, rpc(client))
                        .await
                        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded(format!("no answer within {t:?}")))),
                    None => rpc(client).await,
                }
            };
            let died = async {
                match deaths.wait_for(|d| d.generation >= generation).await {
                    Ok(d) => d.reason.clone(),
                    Err(_) => "the supervisor stopped".to_string(),
                }
            };
            tokio::select! {
                r = call => match r {
                    Ok(resp) => Ok((resp.into_inner(), generation)),
                    Err(status) => Err(CallError {
                        code: Some(status.code()),
                        error: self.map_status(component, generation, status).await,
                    }),
                },
                reason = died => Err(CallError::local(ExecutorError::Unavailable(format!(
                    "the sidecar died while running {component}: {reason}; it is being restarted, retry shortly"
                )))),
            }
        })
    }

    async fn map_status(
        &self,
        component: Component,
        generation: u64,
        status: tonic::Status,
    ) -> ExecutorError {
        if let Some(e) = status_error(component, &status) {
            return e;
        }
        // UNAVAILABLE or a broken connection usually means the process died;
        // give the supervisor a moment to confirm it, so the message says why.
        let mut deaths = self.shared.deaths.subscribe();
        let confirmed = tokio::time::timeout(
            Duration::from_secs(2),
            deaths.wait_for(|d| d.generation >= generation),
        )
        .await;
        match confirmed {
            Ok(Ok(d)) => ExecutorError::Unavailable(format!(
                "the sidecar died while running {component}: {}; it is being restarted, retry shortly",
                d.reason
            )),
            _ => ExecutorError::Unavailable(format!(
                "the sidecar failed {component}: {}",
                status.message()
            )),
        }
    }

    pub(crate) fn batch(&self, component: Component) -> Option<usize> {
        self.batches.get(&component).copied()
    }

    /// Runs `run` once per chunk of `n` rows (see [`batching`]) and concatenates the outputs.
    fn chunked(
        &self,
        component: Component,
        n: usize,
        mut run: impl FnMut(Chunk) -> Result<Tensor, ExecutorError>,
    ) -> Result<Tensor, ExecutorError> {
        let mut outs = Vec::new();
        for chunk in batching::plan(n, self.batch(component)) {
            outs.push((chunk, run(chunk)?));
        }
        assemble(component, outs)
    }

    /// Frees sidecar denoise sessions without waiting for the answers: a
    /// session ends when the caller is done with its batch, which must not
    /// wait on the sidecar. Sessions of an earlier generation died with it.
    pub(crate) fn end_sessions(&self, sessions: Vec<(u64, u64)>) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        let (client, generation) = {
            let conn = self.shared.conn();
            match &conn.client {
                Some(c) => (c.clone(), conn.generation),
                None => return,
            }
        };
        let ids: Vec<u64> = sessions
            .into_iter()
            .filter(|&(g, _)| g == generation)
            .map(|(_, id)| id)
            .collect();
        if ids.is_empty() {
            return;
        }
        runtime.spawn(async move {
            for session in ids {
                let mut c = client.clone();
                let end = c.end_denoise(proto::EndDenoiseRequest { session });
                match tokio::time::timeout(END_TIMEOUT, end).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(status)) => {
                        tracing::debug!(session, "EndDenoise failed: {}", status.message())
                    }
                    Err(_) => tracing::debug!(session, "EndDenoise timed out"),
                }
            }
        });
    }

    fn single(&self, component: Component, x: &Tensor) -> Result<Tensor, ExecutorError> {
        self.chunked(component, x.batch(), |chunk| {
            let input = Some(to_proto(&batching::take(x, chunk)?));
            let resp = match component {
                Component::VaeEncoder => self.call(component, |mut c| async move {
                    c.vae_encode(proto::TensorRequest { input }).await
                })?,
                _ => self.call(component, |mut c| async move {
                    c.vae_decode(proto::TensorRequest { input }).await
                })?,
            };
            from_proto(component, resp.output)
        })
    }
}

impl Executor for RemoteExecutor {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn is_ready(&self) -> bool {
        RemoteExecutor::is_ready(self)
    }

    fn encode_text(
        &self,
        encoder: Component,
        ids: &TokenIds,
        layer: HiddenLayer,
    ) -> Result<TextEncoding, ExecutorError> {
        if !encoder.is_text_encoder() {
            return Err(ExecutorError::Invalid {
                component: Some(encoder),
                message: format!("{encoder} is not a text encoder"),
            });
        }
        if !self.components.contains(&encoder) {
            return Err(ExecutorError::Missing {
                component: encoder,
                reason: format!(
                    "the sidecar's {} has no {encoder}",
                    if self.pipeline_class.is_empty() {
                        "model"
                    } else {
                        &self.pipeline_class
                    }
                ),
            });
        }
        if ids.ids.len() != ids.batch * ids.len {
            return Err(ExecutorError::Invalid {
                component: Some(encoder),
                message: format!(
                    "{} ids for a [{}, {}] batch",
                    ids.ids.len(),
                    ids.batch,
                    ids.len
                ),
            });
        }
        let layer = match layer {
            HiddenLayer::Last => proto::HiddenLayer::Last,
            HiddenLayer::Penultimate => proto::HiddenLayer::Penultimate,
        };
        let (mut hidden, mut pooled) = (Vec::new(), Vec::new());
        for chunk in batching::plan(ids.batch, self.batch(encoder)) {
            let part = batching::take_ids(ids, chunk);
            let req = proto::EncodeTextRequest {
                shape: vec![part.batch as u64, part.len as u64],
                ids: part.ids,
                encoder: encoder.folder().to_string(),
                layer: layer as i32,
            };
            let resp = self.call(encoder, |mut c| async move { c.encode_text(req).await })?;
            hidden.push((chunk, from_proto(encoder, resp.hidden)?));
            if let Some(p) = resp.pooled {
                pooled.push((chunk, from_proto(encoder, Some(p))?));
            }
        }
        let pooled = match pooled.len() {
            0 => None,
            n if n == hidden.len() => Some(assemble(encoder, pooled)?),
            _ => {
                return Err(ExecutorError::BadOutput {
                    component: encoder,
                    message: "the pooled output is missing from some batches".into(),
                });
            }
        };
        Ok(TextEncoding {
            hidden: assemble(encoder, hidden)?,
            pooled,
        })
    }

    fn denoise<'a>(
        &'a self,
        conditioning: Conditioning,
    ) -> Result<Box<dyn DenoiseSession + 'a>, ExecutorError> {
        Ok(Box::new(session::RemoteSession::begin(
            self,
            self.denoiser,
            conditioning,
        )?))
    }

    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor, ExecutorError> {
        self.single(Component::VaeDecoder, latents)
    }

    fn vae_encode(&self, image: &Tensor) -> Result<Tensor, ExecutorError> {
        if !self.capabilities.vae_encoder {
            return Err(ExecutorError::Missing {
                component: Component::VaeEncoder,
                reason: "the sidecar's model has no VAE encoder, so img2img is unavailable".into(),
            });
        }
        self.single(Component::VaeEncoder, image)
    }
}

impl Drop for RemoteExecutor {
    fn drop(&mut self) {
        self.shared.ready.store(false, Ordering::SeqCst);
        self.shared.shutdown.send_replace(true);
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Cannot block here; dropping the tasks kills the child (kill_on_drop).
            runtime.shutdown_background();
        } else {
            // The supervisor sends SIGTERM and waits (up to 5 s) for the sidecar.
            let deadline = Instant::now() + Duration::from_secs(7);
            while self.shared.conn().pid.is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

pub(crate) fn to_proto(t: &Tensor) -> proto::Tensor {
    let mut data = Vec::with_capacity(t.data().len() * 4);
    for v in t.data() {
        data.extend_from_slice(&v.to_le_bytes());
    }
    proto::Tensor {
        shape: t.shape().iter().map(|&d| d as u64).collect(),
        data,
    }
}

pub(crate) fn from_proto(
    component: Component,
    t: Option<proto::Tensor>,
) -> Result<Tensor, ExecutorError> {
    let bad = |message: String| ExecutorError::BadOutput { component, message };
    let t = t.ok_or_else(|| bad("the response has no tensor".into()))?;
    if t.data.len() % 4 != 0 {
        return Err(bad(format!(
            "{} bytes is not a whole number of f32 values",
            t.data.len()
        )));
    }
    let shape = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large"))))
        .collect::<Result<Vec<_>, _>>()?;
    let data = t
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tensor::new(shape, data)?)
}

/// The error for a status the sidecar answered with, by code only (the
/// sidecar's messages are for people); `None` for the codes that may mean the
/// sidecar is dying (UNAVAILABLE, a broken connection), which the caller
/// checks against the supervisor.
fn status_error(component: Component, status: &tonic::Status) -> Option<ExecutorError> {
    use tonic::Code;
    let message = status.message().to_string();
    Some(match status.code() {
        Code::InvalidArgument | Code::OutOfRange => ExecutorError::Invalid {
            component: Some(component),
            message,
        },
        Code::Internal | Code::ResourceExhausted | Code::Unimplemented | Code::DataLoss => {
            ExecutorError::Run { component, message }
        }
        Code::FailedPrecondition => ExecutorError::Missing {
            component,
            reason: message,
        },
        Code::NotFound => ExecutorError::Unavailable(format!(
            "the sidecar no longer holds the denoise session for {component}: {message}"
        )),
        Code::DeadlineExceeded => {
            ExecutorError::Unavailable(format!("the sidecar did not finish {component}: {message}"))
        }
        _ => return None,
    })
}

/// The outputs of a component's chunks (see [`batching`]) as one batch.
pub(crate) fn assemble(
    component: Component,
    outs: Vec<(Chunk, Tensor)>,
) -> Result<Tensor, ExecutorError> {
    let mut trimmed = Vec::with_capacity(outs.len());
    for (chunk, out) in outs {
        if out.batch() != chunk.padded {
            return Err(ExecutorError::BadOutput {
                component,
                message: format!(
                    "sent a batch of {}, got {:?} back",
                    chunk.padded,
                    out.shape()
                ),
            });
        }
        trimmed.push(batching::trim(out, chunk)?);
    }
    if trimmed.len() == 1 {
        return trimmed.pop().ok_or_else(|| ExecutorError::BadOutput {
            component,
            message: "no output".into(),
        });
    }
    let refs: Vec<&Tensor> = trimmed.iter().collect();
    Ok(Tensor::concat_batch(&refs)?)
}

/// How long a dropped session's EndDenoise may take before it is given up.
const END_TIMEOUT: Duration = Duration::from_secs(2);

/// A failed call: the executor's error, and the sidecar's status code when it answered.
#[derive(Debug)]
pub(crate) struct CallError {
    pub code: Option<tonic::Code>,
    pub error: ExecutorError,
}

impl CallError {
    fn local(error: ExecutorError) -> Self {
        Self { code: None, error }
    }
}

/// Components of an SD 1.x/2.x sidecar that reports none (an older one).
const DEFAULT_COMPONENTS: [Component; 4] = [
    Component::TextEncoder,
    Component::Unet,
    Component::VaeDecoder,
    Component::VaeEncoder,
];

struct Converted {
    capabilities: Capabilities,
    batches: HashMap<Component, usize>,
    components: Vec<Component>,
}

fn convert_capabilities(c: &proto::CapabilitiesResponse) -> Result<Converted, RemoteError> {
    let device: DeviceKind = c
        .device
        .parse()
        .map_err(|e: UnknownDevice| RemoteError::Capabilities(e.to_string()))?;
    let dtype = match c.dtype.as_str() {
        "fp32" => Dtype::F32,
        "fp16" => Dtype::F16,
        "bf16" => Dtype::Bf16,
        other => {
            return Err(RemoteError::Capabilities(format!(
                "unknown dtype `{other}`"
            )));
        }
    };
    let mut components = Vec::new();
    for name in &c.components {
        match Component::from_folder(name) {
            Some(component) => components.push(component),
            // e.g. an image encoder the pipeline does not drive
            None => tracing::warn!("the sidecar loaded `{name}`, which this executor does not run"),
        }
    }
    if components.is_empty() {
        components = DEFAULT_COMPONENTS.to_vec();
    }
    if !components.iter().any(|c| c.is_denoiser()) {
        return Err(RemoteError::Capabilities(format!(
            "the sidecar loaded no denoiser (components: {})",
            c.components.join(", ")
        )));
    }
    let mut batches = HashMap::new();
    let shapes = if c.static_shapes {
        if c.batch_size == 0 || c.sizes.is_empty() {
            return Err(RemoteError::Capabilities(
                "static shapes without a batch size or image sizes".into(),
            ));
        }
        for b in &c.component_batches {
            let component = Component::from_folder(&b.component).ok_or_else(|| {
                RemoteError::Capabilities(format!("unknown component `{}`", b.component))
            })?;
            if b.batch_size == 0 {
                return Err(RemoteError::Capabilities(format!(
                    "{} has batch size 0",
                    b.component
                )));
            }
            batches.insert(component, b.batch_size as usize);
        }
        for &component in &components {
            batches.entry(component).or_insert(c.batch_size as usize);
        }
        Shapes::Static {
            batch_size: c.batch_size as usize,
            sizes: c.sizes.iter().map(|s| (s.width, s.height)).collect(),
        }
    } else {
        Shapes::Dynamic
    };
    let capabilities = Capabilities {
        executor: "remote",
        device,
        device_name: c.device_name.clone(),
        dtype,
        shapes,
        memory_bytes: (c.memory_bytes > 0).then_some(c.memory_bytes),
        vae_encoder: c.vae_encoder && components.contains(&Component::VaeEncoder),
        preview_decoder: false,
        timestep: if c.per_sample_timesteps {
            TimestepInput::PerSample
        } else {
            TimestepInput::Scalar
        },
        runtime: format!("python sidecar: {}", c.runtime),
    };
    Ok(Converted {
        capabilities,
        batches,
        components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_as_little_endian_f32() {
        let t = Tensor::new(
            vec![2, 3],
            vec![0.0, -1.5, 3.25, f32::MIN_POSITIVE, 1e30, -0.0],
        )
        .unwrap();
        let p = to_proto(&t);
        assert_eq!(p.shape, vec![2, 3]);
        assert_eq!(&p.data[4..8], &(-1.5f32).to_le_bytes());
        assert_eq!(from_proto(Component::Unet, Some(p)).unwrap(), t);
    }

    #[test]
    fn malformed_tensors_are_bad_output() {
        let short = proto::Tensor {
            shape: vec![2],
            data: vec![0; 4],
        };
        assert!(matches!(
            from_proto(Component::Unet, Some(short)),
            Err(ExecutorError::Tensor(_))
        ));
        let ragged = proto::Tensor {
            shape: vec![1],
            data: vec![0; 5],
        };
        assert!(matches!(
            from_proto(Component::Unet, Some(ragged)),
            Err(ExecutorError::BadOutput { .. })
        ));
        assert!(matches!(
            from_proto(Component::Unet, None),
            Err(ExecutorError::BadOutput { .. })
        ));
    }

    fn caps() -> proto::CapabilitiesResponse {
        proto::CapabilitiesResponse {
            device: "neuron".into(),
            device_name: "inf2".into(),
            dtype: "bf16".into(),
            static_shapes: true,
            batch_size: 1,
            component_batches: vec![proto::ComponentBatch {
                component: "unet".into(),
                batch_size: 2,
            }],
            sizes: vec![proto::ImageSize {
                width: 512,
                height: 768,
            }],
            max_text_len: 77,
            ..Default::default()
        }
    }

    #[test]
    fn static_capabilities_give_per_component_batches() {
        let Converted {
            capabilities: c,
            batches,
            components,
        } = convert_capabilities(&caps()).unwrap();
        assert_eq!(c.device, DeviceKind::Neuron);
        assert_eq!(c.dtype, Dtype::Bf16);
        assert_eq!(c.memory_bytes, None);
        assert_eq!(
            c.shapes,
            Shapes::Static {
                batch_size: 1,
                sizes: vec![(512, 768)]
            }
        );
        assert_eq!(c.timestep, TimestepInput::Scalar);
        assert_eq!(components, DEFAULT_COMPONENTS.to_vec());
        assert_eq!(batches[&Component::Unet], 2);
        assert_eq!(batches[&Component::TextEncoder], 1);
        assert_eq!(batches[&Component::VaeDecoder], 1);
        assert!(!batches.contains_key(&Component::TextEncoder2));
    }

    #[test]
    fn sdxl_capabilities_name_both_encoders() {
        let mut p = caps();
        p.per_sample_timesteps = true;
        p.pipeline_class = "StableDiffusionXLPipeline".into();
        p.components = [
            "text_encoder",
            "text_encoder_2",
            "unet",
            "vae_decoder",
            "image_encoder",
        ]
        .map(String::from)
        .to_vec();
        p.component_batches.push(proto::ComponentBatch {
            component: "text_encoder_2".into(),
            batch_size: 2,
        });
        p.vae_encoder = true;
        let Converted {
            capabilities: c,
            batches,
            components,
        } = convert_capabilities(&p).unwrap();
        assert_eq!(c.timestep, TimestepInput::PerSample);
        // no vae_encoder among the components: img2img is off whatever the flag says
        assert!(!c.vae_encoder);
        assert_eq!(
            components,
            vec![
                Component::TextEncoder,
                Component::TextEncoder2,
                Component::Unet,
                Component::VaeDecoder
            ]
        );
        assert_eq!(batches[&Component::TextEncoder2], 2);
        assert_eq!(batches[&Component::TextEncoder], 1);
        assert!(!batches.contains_key(&Component::VaeEncoder));

        p.components = vec!["text_encoder".into(), "vae_decoder".into()];
        assert!(convert_capabilities(&p).is_err(), "no denoiser");
    }

    #[test]
    fn dynamic_capabilities_have_no_batches() {
        let c = proto::CapabilitiesResponse {
            device: "cpu".into(),
            dtype: "fp32".into(),
            memory_bytes: 1 << 30,
            ..Default::default()
        };
        let Converted {
            capabilities: c,
            batches,
            ..
        } = convert_capabilities(&c).unwrap();
        assert_eq!(c.shapes, Shapes::Dynamic);
        assert_eq!(c.memory_bytes, Some(1 << 30));
        assert!(batches.is_empty());
    }

    #[test]
    fn inconsistent_capabilities_are_rejected() {
        let mut c = caps();
        c.sizes.clear();
        assert!(convert_capabilities(&c).is_err());
        let mut c = caps();
        c.device = "tpu".into();
        let err = convert_capabilities(&c).err().expect("unknown device");
        assert_eq!(
            err.to_string(),
            "the sidecar did not report its capabilities: unknown device `tpu`"
        );
    }

    #[test]
    fn statuses_map_to_typed_errors_by_code() {
        use tonic::{Code, Status};
        let unet = Component::Unet;
        // the same words in every message: only the code decides
        let err = |code| status_error(unet, &Status::new(code, "not loaded: unavailable"));
        assert!(matches!(
            err(Code::InvalidArgument),
            Some(ExecutorError::Invalid {
                component: Some(Component::Unet),
                ..
            })
        ));
        assert!(matches!(
            err(Code::FailedPrecondition),
            Some(ExecutorError::Missing { .. })
        ));
        assert!(matches!(
            err(Code::Internal),
            Some(ExecutorError::Run { .. })
        ));
        assert!(err(Code::NotFound).is_some_and(|e| e.is_unavailable()));
        assert!(err(Code::DeadlineExceeded).is_some_and(|e| e.is_unavailable()));
        // left to the supervisor's verdict (dead or alive), both `Unavailable`
        assert!(err(Code::Unavailable).is_none());
        assert!(err(Code::Unknown).is_none());
    }
}
