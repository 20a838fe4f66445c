//! Shared by the sidecar tests: the repo-local Python environment, the tiny
//! fixture models, pipelines on the remote and ONNX executors, image diffs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyaccel_executor::Executor;
use anyaccel_executor_onnx::{DeviceRequest, OnnxConfig, OnnxExecutor};
use anyaccel_executor_remote::{RemoteConfig, RemoteExecutor, SidecarDevice};
use anyaccel_pipeline::{Defaults, GenerationParams, Limits, Model, Pipeline, images};
use image::RgbImage;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixtures() -> PathBuf {
    repo().join("fixtures")
}

/// `<repo>/.venv/bin/python`, which scripts/setup-sidecar-env.sh creates. These
/// tests need a real sidecar; without the environment they fail, loudly.
pub fn venv_python() -> PathBuf {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "the sidecar tests need the Python environment at {}; create it with scripts/setup-sidecar-env.sh",
        python.display()
    );
    python
}

/// The diffusers (PyTorch) twin of fixtures/models/tiny-sd15, same weights.
pub fn tiny_diffusers() -> PathBuf {
    fixtures().join("models/tiny-sd15-diffusers")
}

/// The ONNX fixture; its tokenizer and scheduler config drive both pipelines.
pub fn tiny_onnx() -> PathBuf {
    fixtures().join("models/tiny-sd15")
}

/// The diffusers (PyTorch) twin of fixtures/models/tiny-sdxl, same weights.
pub fn tiny_sdxl_diffusers() -> PathBuf {
    fixtures().join("models/tiny-sdxl-diffusers")
}

/// The ONNX SDXL fixture.
pub fn tiny_sdxl_onnx() -> PathBuf {
    fixtures().join("models/tiny-sdxl")
}

pub fn remote_config() -> RemoteConfig {
    remote_config_for(&tiny_diffusers())
}

/// A CPU torch sidecar for the diffusers model in `model`.
pub fn remote_config_for(model: &Path) -> RemoteConfig {
    let mut cfg = RemoteConfig::new(venv_python(), model.display().to_string());
    cfg.python_path = Some(repo().join("python"));
    cfg.device = SidecarDevice::Cpu;
    cfg.startup_timeout = Duration::from_secs(120);
    cfg.health_interval = Duration::from_secs(1);
    cfg.health_timeout = Duration::from_secs(5);
    cfg
}

pub fn spawn(cfg: RemoteConfig) -> Arc<RemoteExecutor> {
    Arc::new(RemoteExecutor::spawn(cfg).unwrap_or_else(|e| panic!("sidecar failed to start: {e}")))
}

pub fn model() -> Model {
    Model::load_dir("tiny-sd15", &tiny_onnx()).expect("tiny model loads")
}

pub fn pipeline(executor: Arc<dyn Executor>) -> Pipeline {
    pipeline_with(executor, None)
}

/// A pipeline whose scheduler config overrides `timestep_spacing` (as a
/// reference case's `scheduler_overrides` does).
pub fn pipeline_with(executor: Arc<dyn Executor>, spacing: Option<&str>) -> Pipeline {
    pipeline_for(executor, &tiny_onnx(), spacing)
}

/// A pipeline on the model folder `dir` (tokenizers, scheduler, family).
pub fn pipeline_for(executor: Arc<dyn Executor>, dir: &Path, spacing: Option<&str>) -> Pipeline {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string());
    let mut m = Model::load_dir(name.as_deref().unwrap_or("model"), dir).expect("model loads");
    if let Some(s) = spacing {
        m.info.scheduler_config.timestep_spacing = Some(s.to_string());
    }
    Pipeline::new(executor, m, Limits::default(), Defaults::default())
}

/// The ONNX executor on the components of the model family in `dir`.
pub fn onnx_executor(dir: &Path) -> Arc<OnnxExecutor> {
    let config = OnnxConfig {
        device: DeviceRequest::Cpu,
        ..OnnxConfig::default()
    };
    let components = Model::load_dir("onnx", dir)
        .expect("model folder loads")
        .components();
    Arc::new(OnnxExecutor::load(dir, &components, &config).expect("onnx executor loads"))
}

pub fn onnx_pipeline_for(dir: &Path) -> Pipeline {
    let model = Model::load_dir("tiny-sd15", dir).expect("model folder loads");
    Pipeline::new(
        onnx_executor(dir),
        model,
        Limits::default(),
        Defaults::default(),
    )
}

pub fn load_png(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    images::decode(&bytes, 1 << 24).expect("png decodes")
}

/// (max, mean) absolute difference over all channels, on 0-255 pixels.
pub fn diff(a: &RgbImage, b: &RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut max = 0u8;
    let mut sum = 0u64;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += u64::from(d);
    }
    (max, sum as f64 / a.as_raw().len() as f64)
}

pub fn params(prompt: &str, seed: u64, n: u32, steps: u32, scheduler: &str) -> GenerationParams {
    GenerationParams {
        prompt: prompt.into(),
        width: Some(64),
        height: Some(64),
        steps: Some(steps),
        guidance_scale: Some(7.5),
        scheduler: Some(scheduler.into()),
        seed: Some(seed),
        n: Some(n),
        ..GenerationParams::default()
    }
}
