//! What a preview costs, split where the work happens:
//! - in the denoising loop (the worker thread): the scheduler's denoised
//!   estimate and the latent-to-RGB map, at latent resolution;
//! - where it is sent (a blocking thread of the server): the upscale to the
//!   image size and the PNG encode.
//!
//! Prints milliseconds per preview and the share of a run at `preview_every`
//! 5, against the step times in docs/benchmarks.md.
//!
//!   cargo bench -p anyaccel-pipeline --bench preview

use std::time::{Duration, Instant};

use anyaccel_pipeline::images::{self, OutputFormat};
use anyaccel_pipeline::preview::{latent_preview, upscale};
use anyaccel_pipeline::scheduler::{Schedule, SchedulerConfig};
use anyaccel_pipeline::{ModelFamily, SchedulerKind};

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

fn main() {
    let schedule =
        Schedule::new(SchedulerKind::Euler, &SchedulerConfig::default(), 20).expect("schedule");
    println!(
        "| model, image | in the loop (ms) | upscale + PNG (ms) | share at preview_every 5, CPU step 4.25 s | share, GPU step 9 ms |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, family, channels, size) in [
        ("SD 1.5, 512x512", ModelFamily::StableDiffusion, 4, 512u32),
        ("SDXL, 1024x1024", ModelFamily::StableDiffusionXl, 4, 1024),
        ("FLUX.1, 1024x1024", ModelFamily::Flux, 16, 1024),
    ] {
        let side = (size / 8) as usize;
        let n = channels * side * side;
        // Smooth, image-like latents: previews of noise would compress worse
        // than real ones and overstate the encode.
        let latents: Vec<f32> = (0..n)
            .map(|i| ((i % side) as f32 / side as f32 - 0.5) * (1.0 + (i / n) as f32))
            .collect();
        let eps: Vec<f32> = latents.iter().map(|v| v * 0.1).collect();
        let shape = [channels, side, side];
        let in_loop = time(50, || {
            let x0 = schedule.denoised(5, &eps, &latents);
            latent_preview(family, &x0, shape, side as u32, side as u32)
        });
        let small =
            latent_preview(family, &latents, shape, side as u32, side as u32).expect("preview");
        let sent = time(20, || {
            let big = upscale(small.clone(), size, size);
            images::encode(&big, OutputFormat::Png, None, "").expect("encode")
        });
        // Per step, a fifth of a preview; the loop waits only for its part.
        let share = |step_s: f64| 100.0 * in_loop.as_secs_f64() / 5.0 / step_s;
        println!(
            "| {name} | {:.3} | {:.1} | {:.4}% | {:.2}% |",
            ms(in_loop),
            ms(sent),
            share(4.25),
            share(0.009)
        );
    }
}
