//! What a checkpoint costs to write and read, and its size, for a 512x512
//! SD image (latents 4x64x64) with 1 and 4 images: Euler (latents and noise
//! state) and DPM++ 2M (also the previous step's x0). The checkpoints are
//! real ones, from the tiny SD 1.5 fixture's pipeline at 512x512 suspended
//! after a step: the tiny UNet makes that cheap, and the latents' size is
//! the model's, not the weights'.
//!
//!   ORT_DYLIB_PATH=.cache/onnxruntime/lib/libonnxruntime.so \
//!     cargo bench -p anyaccel-pipeline --bench checkpoint
//!
//! Without ONNX Runtime it says so and exits 0, so a plain `cargo bench`
//! over the workspace does not fail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyaccel_executor_onnx::{DeviceRequest, OnnxConfig, OnnxExecutor};
use anyaccel_pipeline::{
    Checkpoint, Defaults, GenerationParams, Limits, Model, Observer, Outcome, Pipeline,
};

/// Suspends every request once it has run `after` steps.
struct SuspendAfter {
    after: usize,
    done: std::sync::atomic::AtomicUsize,
}

impl Observer for SuspendAfter {
    fn on_step(&self, _request: usize, step: usize, _total: usize) {
        self.done.store(step, std::sync::atomic::Ordering::Relaxed);
    }
    fn should_suspend(&self, _request: usize) -> bool {
        self.done.load(std::sync::atomic::Ordering::Relaxed) >= self.after
    }
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let _ = f();
    let t = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(f());
    }
    t.elapsed() / runs as u32
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn checkpoint(p: &Pipeline, scheduler: &str, after: usize, n: u32) -> Result<Checkpoint, String> {
    let request = p
        .validate(GenerationParams {
            prompt: "a lighthouse at dusk".into(),
            width: Some(512),
            height: Some(512),
            steps: Some(4),
            // No guidance: half the UNet rows, the same checkpoint.
            guidance_scale: Some(1.0),
            scheduler: Some(scheduler.into()),
            seed: Some(1),
            n: Some(n),
            ..GenerationParams::default()
        })
        .map_err(|e| e.to_string())?;
    let observer = SuspendAfter {
        after,
        done: 0.into(),
    };
    let out = p
        .run_batch(&[&request], &observer)
        .map_err(|e| e.to_string())?;
    match out.outcomes.into_iter().next() {
        Some(Outcome::Suspended(c)) => Ok(c),
        other => Err(format!("expected a suspended run, got {other:?}")),
    }
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-sd15");
    let pipeline = Model::load_dir("tiny-sd15", &dir)
        .map_err(|e| e.to_string())
        .and_then(|m| {
            let config = OnnxConfig {
                device: DeviceRequest::Cpu,
                ..OnnxConfig::default()
            };
            let exec =
                OnnxExecutor::load(&dir, &m.components(), &config).map_err(|e| e.to_string())?;
            Ok(Pipeline::new(
                Arc::new(exec),
                m,
                Limits::default(),
                Defaults::default(),
            ))
        });
    let p = match pipeline {
        Ok(p) => p,
        Err(e) => {
            println!(
                "checkpoint bench skipped: the tiny model does not load ({e}); set ORT_DYLIB_PATH"
            );
            return;
        }
    };
    println!(
        "| images | scheduler (state) | bytes | to_bytes (ms) | from_bytes (ms) | write / read (GB/s) |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for n in [1, 4] {
        // Euler suspended before its first step; DPM++ after one, so it holds x0.
        for (scheduler, after, what) in [
            ("euler", 0, "euler (latents, noise)"),
            ("dpmpp_2m", 1, "dpmpp_2m (+ previous x0)"),
        ] {
            let c = match checkpoint(&p, scheduler, after, n) {
                Ok(c) => c,
                Err(e) => {
                    println!("{what}, {n} images: {e}");
                    continue;
                }
            };
            let bytes = c.to_bytes();
            let write = time(50, || c.to_bytes());
            let read = time(50, || Checkpoint::from_bytes(&bytes));
            let gbs = |d: Duration| bytes.len() as f64 / d.as_secs_f64() / 1e9;
            println!(
                "| {n} | {what} | {} | {:.3} | {:.3} | {:.2} / {:.2} |",
                bytes.len(),
                ms(write),
                ms(read),
                gbs(write),
                gbs(read)
            );
        }
    }
}
