//! Times Stable Diffusion (any served family: SD 1.x/2.x, SDXL) through anyaccel's
//! ONNX Runtime executor: the components (each text encoder at batch 2, one UNet
//! step at batch 2 as classifier-free guidance runs it, the VAE decoder at batch 1)
//! and a whole image through the pipeline (tokenizer, scheduler, CFG, VAE), and
//! reports the process's peak memory.
//!
//! ```sh
//! .venv/bin/python scripts/bench/make_sd15_random.py      # SD 1.5-sized random model
//! ANYACCEL_BENCH_MODEL=.cache/bench/sd15-random-onnx cargo bench -p anyaccel-pipeline --bench sd
//! ```
//!
//! `scripts/bench/cpu.sh` runs this next to diffusers (PyTorch) on the same
//! weights, one process per case group so that each peak RSS is its own.
//! Settings come from the environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ANYACCEL_BENCH_MODEL` | (required) | optimum ONNX model folder |
//! | `ANYACCEL_BENCH_CASES` | `components,image` | which case groups to run |
//! | `ANYACCEL_BENCH_SIZES` | `256,512` | square sizes of the component cases |
//! | `ANYACCEL_BENCH_REPS` | `5` | timed repetitions per component case (after one warm-up) |
//! | `ANYACCEL_BENCH_IMAGE` | `512x20x1` | whole image: size × steps × timed repetitions |
//! | `ANYACCEL_BENCH_DEVICE` | `cpu` | auto, cpu, cuda or openvino (the plain export, not a fused UNet) |
//! | `ANYACCEL_BENCH_PRECISION` | `auto` | OpenVINO's arithmetic: auto, f32 or bf16 |
//! | `ANYACCEL_BENCH_THREADS` | `2` | ONNX Runtime intra-op threads (inter-op: 1) |
//! | `ANYACCEL_BENCH_OPT` | `all` | graph optimisation: disable, basic, extended, all |
//! | `ANYACCEL_BENCH_ARENA` | `1` | CPU memory arena on (1) or off (0) |
//! | `ANYACCEL_BENCH_PATTERN` | `0` | ONNX Runtime memory pattern on (1) or off (0) |
//! | `ANYACCEL_BENCH_PREPACK` | `1` | weight prepacking on (1) or off (0) |
//! | `ANYACCEL_BENCH_IO_BINDING` | `1` | conditioning bound once per batch (1) or handed over per step (0) |
//! | `ANYACCEL_BENCH_GLIBC_DEFAULT` | `0` | 1: keep glibc's dynamic mmap threshold (see `release_large_frees_to_os`) |
//! | `ANYACCEL_BENCH_JSON` | (none) | also write the results to this file as JSON |
//! | `ANYACCEL_BENCH_SAVE` | (none) | save the whole-image case's image to this PNG path |
//!
//! Without `ANYACCEL_BENCH_MODEL` it prints how to make the model and exits 0, so a
//! plain `cargo bench` over the workspace does not fail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyaccel_executor::{Conditioning, Executor, Tensor, TokenIds};
use anyaccel_executor_onnx::{Binding, DeviceRequest, OnnxConfig, OnnxExecutor, Optimization};
use anyaccel_pipeline::{Defaults, GenerationParams, Limits, Model, Outcome, Pipeline, Quiet};

const TOKENS: usize = 77;
const BOS: i64 = 49406;
const EOS: i64 = 49407;

struct Case {
    name: String,
    times: Vec<Duration>,
    /// Per-stage medians of the whole-image case, in ms.
    stages: Option<serde_json::Value>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name).as_deref() {
        Ok("1" | "true" | "on") => true,
        Ok("0" | "false" | "off") => false,
        Ok(v) => panic!("{name}={v}: expected 1 or 0"),
        Err(_) => default,
    }
}

/// Deterministic pseudo-random values in [-1, 1) (xorshift), so both benchmarks see
/// inputs of the same kind without sharing a generator.
fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn report(case: &Case) {
    eprintln!(
        "  {:<22} median {:>9.1} ms  (min {:.1}, max {:.1}, n={}; process peak RSS so far {:.0} MiB)",
        case.name,
        ms(median(&case.times)),
        ms(*case.times.iter().min().unwrap()),
        ms(*case.times.iter().max().unwrap()),
        case.times.len(),
        proc_status_mib("VmHWM:").unwrap_or(0.0)
    );
}

fn time<F: FnMut()>(name: String, reps: usize, mut f: F) -> Case {
    f(); // warm-up: ONNX Runtime plans memory for a new shape on its first run
    let times = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    let case = Case {
        name,
        times,
        stages: None,
    };
    report(&case);
    case
}

fn median(times: &[Duration]) -> Duration {
    let mut v = times.to_vec();
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A field of /proc/self/status in MiB (VmHWM is the peak resident set).
fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn components(exec: &OnnxExecutor, model: &Model, sizes: &[usize], reps: usize) -> Vec<Case> {
    let family = model.info.family;
    let mut cases = Vec::new();
    // Each text encoder, batch 2 (prompt + negative prompt), 77 tokens.
    let mut ids = Vec::with_capacity(2 * TOKENS);
    for row in 0..2 {
        ids.push(BOS);
        let words = if row == 0 { 12 } else { 3 };
        ids.extend((0..words).map(|i| 320 + 37 * i as i64 + row as i64));
        ids.resize((row + 1) * TOKENS, EOS);
    }
    let ids = TokenIds {
        batch: 2,
        len: TOKENS,
        ids,
    };
    let mut dim = 0;
    let mut pooled = None;
    for &encoder in family.text_encoders() {
        let layer = family.hidden_layer(encoder);
        cases.push(time(format!("{encoder}_b2"), reps, || {
            exec.encode_text(encoder, &ids, layer)
                .expect("text encoder");
        }));
        let out = exec
            .encode_text(encoder, &ids, layer)
            .expect("text encoder");
        dim += out.hidden.shape()[2];
        if family.pooled_from().contains(&encoder) {
            pooled = out.pooled.map(|p| p.shape()[1]);
        }
    }
    let hidden = Tensor::new(vec![2, TOKENS, dim], noise(2 * TOKENS * dim, 1)).unwrap();

    for &size in sizes {
        let l = size / 8;
        let conditioning = Conditioning {
            encoder_hidden_states: hidden.clone(),
            pooled: pooled.map(|d| Tensor::new(vec![2, d], noise(2 * d, 4)).unwrap()),
            time_ids: family.has_time_ids().then(|| {
                let s = size as f32;
                Tensor::new(vec![2, 6], [s, s, 0.0, 0.0, s, s].repeat(2)).unwrap()
            }),
            guidance: None,
            positions: None,
        };
        let mut session = exec.denoise(conditioning).expect("denoise session");
        let sample = Tensor::new(vec![2, 4, l, l], noise(2 * 4 * l * l, 2)).unwrap();
        cases.push(time(format!("unet_b2_{size}"), reps, || {
            session.step(&sample, &[999.0, 999.0]).expect("unet");
        }));
        drop(session);
        let latents = Tensor::new(vec![1, 4, l, l], noise(4 * l * l, 3)).unwrap();
        cases.push(time(format!("vae_decode_b1_{size}"), reps, || {
            exec.vae_decode(&latents).expect("vae decoder");
        }));
    }
    cases
}

/// One whole text-to-image generation (CFG 7.5, Euler), as `anyaccel generate` runs it.
fn image(pipeline: &Pipeline, size: u32, steps: u32, reps: usize) -> Case {
    let params = |steps| GenerationParams {
        prompt: "a photograph of an astronaut riding a horse on the moon".into(),
        negative_prompt: Some("blurry, low quality".into()),
        width: Some(size),
        height: Some(size),
        steps: Some(steps),
        guidance_scale: Some(7.5),
        scheduler: Some("euler".into()),
        seed: Some(42),
        n: Some(1),
        ..GenerationParams::default()
    };
    let warm = pipeline.validate(params(1)).expect("warm-up request");
    let request = pipeline.validate(params(steps)).expect("request");
    // Warm-up: one step plans every component's memory for this size.
    pipeline.run_batch(&[&warm], &Quiet).expect("warm-up");
    let mut times = Vec::new();
    let mut stage_ms: Vec<[f64; 3]> = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let out = pipeline.run_batch(&[&request], &Quiet).expect("generate");
        times.push(t.elapsed());
        let tm = out.timings;
        stage_ms.push([ms(tm.text_encode), ms(tm.denoise), ms(tm.vae_decode)]);
        // Kept so that variants (fp32, int8) can be compared image to image.
        if let (Ok(path), Some(Outcome::Completed(images))) = (
            std::env::var("ANYACCEL_BENCH_SAVE"),
            out.outcomes.into_iter().next(),
        ) && let Some(first) = images.first()
        {
            first
                .image
                .save(&path)
                .unwrap_or_else(|e| panic!("saving {path}: {e}"));
        }
    }
    let mid = |i: usize| {
        let mut v: Vec<f64> = stage_ms.iter().map(|s| s[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let case = Case {
        name: format!("image_{size}_{steps}steps"),
        times,
        stages: Some(serde_json::json!({
            "text_encode_ms": mid(0),
            "denoise_ms": mid(1),
            "per_step_ms": mid(1) / steps as f64,
            "vae_decode_ms": mid(2),
        })),
    };
    report(&case);
    case
}

fn main() {
    // as `anyaccel serve` and `generate` do
    if !env_flag("ANYACCEL_BENCH_GLIBC_DEFAULT", false) {
        anyaccel_executor_onnx::release_large_frees_to_os();
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and should not
    // spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("sd bench: run it with `cargo bench`; skipping in test mode");
        return;
    }
    let Ok(model) = std::env::var("ANYACCEL_BENCH_MODEL") else {
        eprintln!(
            "sd bench: set ANYACCEL_BENCH_MODEL to an optimum ONNX model folder, e.g.\n  \
             .venv/bin/python scripts/bench/make_sd15_random.py\n  \
             ANYACCEL_BENCH_MODEL=.cache/bench/sd15-random-onnx cargo bench -p anyaccel-pipeline --bench sd\n\
             (or run scripts/bench/cpu.sh); skipping"
        );
        return;
    };
    // cargo runs benches from the package folder; resolve relative paths against the
    // workspace when they do not exist from there.
    let mut model = PathBuf::from(model);
    if model.is_relative() && !model.exists() {
        model = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(model);
    }
    let list = |name: &str, default: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let groups = list("ANYACCEL_BENCH_CASES", "components,image");
    let sizes: Vec<usize> = list("ANYACCEL_BENCH_SIZES", "256,512")
        .iter()
        .map(|s| {
            s.parse()
                .expect("ANYACCEL_BENCH_SIZES: comma-separated sizes")
        })
        .collect();
    let image_spec: Vec<u32> = std::env::var("ANYACCEL_BENCH_IMAGE")
        .unwrap_or_else(|_| "512x20x1".into())
        .split('x')
        .map(|s| s.parse().expect("ANYACCEL_BENCH_IMAGE: SIZExSTEPSxREPS"))
        .collect();
    let [image_size, image_steps, image_reps] = image_spec[..] else {
        panic!("ANYACCEL_BENCH_IMAGE: expected SIZExSTEPSxREPS, e.g. 512x20x1");
    };
    let reps: usize = env_or("ANYACCEL_BENCH_REPS", 5);
    let threads: usize = env_or("ANYACCEL_BENCH_THREADS", 2);
    let opt_name = std::env::var("ANYACCEL_BENCH_OPT").unwrap_or_else(|_| "all".into());
    let optimization: Optimization = opt_name.parse().expect("ANYACCEL_BENCH_OPT");
    let device: DeviceRequest = std::env::var("ANYACCEL_BENCH_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("ANYACCEL_BENCH_DEVICE");

    let config = OnnxConfig {
        device,
        intra_threads: Some(threads),
        inter_threads: Some(1),
        library: None,
        optimization,
        memory_arena: env_flag("ANYACCEL_BENCH_ARENA", true),
        memory_pattern: env_flag("ANYACCEL_BENCH_PATTERN", false),
        prepacking: env_flag("ANYACCEL_BENCH_PREPACK", true),
        cpu_precision: std::env::var("ANYACCEL_BENCH_PRECISION")
            .unwrap_or_else(|_| "auto".into())
            .parse()
            .expect("ANYACCEL_BENCH_PRECISION"),
        preview_decoder: None,
        binding: match env_flag("ANYACCEL_BENCH_IO_BINDING", true) {
            true => Binding::Conditioning,
            false => Binding::PerStep,
        },
        cuda: Default::default(),
    };
    eprintln!(
        "anyaccel sd bench: {} ({config:?}, cases={groups:?}, reps={reps})",
        model.display()
    );
    let t = Instant::now();
    let sd = Model::open(&model.display().to_string()).expect("model folder");
    let exec =
        Arc::new(OnnxExecutor::load(&model, &sd.components(), &config).expect("loading the model"));
    let load_s = t.elapsed().as_secs_f64();
    let rss_loaded = proc_status_mib("VmRSS:");
    let peak_loading = proc_status_mib("VmHWM:");
    eprintln!(
        "  loaded in {load_s:.1} s, RSS {:.0} MiB (peak while loading {:.0} MiB)",
        rss_loaded.unwrap_or(0.0),
        peak_loading.unwrap_or(0.0)
    );

    let mut cases = Vec::new();
    if groups.iter().any(|g| g == "components") {
        cases.extend(components(&exec, &sd, &sizes, reps));
    }
    let family = sd.info.family;
    if groups.iter().any(|g| g == "image") {
        let pipeline = Pipeline::new(exec.clone(), sd, Limits::default(), Defaults::default());
        cases.push(image(
            &pipeline,
            image_size,
            image_steps,
            image_reps as usize,
        ));
    }
    let peak = proc_status_mib("VmHWM:");
    println!("| case | median ms | min ms | max ms | n |");
    println!("|---|---:|---:|---:|---:|");
    for c in &cases {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} |",
            c.name,
            ms(median(&c.times)),
            ms(*c.times.iter().min().unwrap()),
            ms(*c.times.iter().max().unwrap()),
            c.times.len()
        );
    }
    eprintln!("  peak RSS {:.0} MiB", peak.unwrap_or(0.0));

    if let Ok(path) = std::env::var("ANYACCEL_BENCH_JSON") {
        let doc = serde_json::json!({
            "engine": "anyaccel (ONNX Runtime)",
            "device": exec.capabilities().device.to_string(),
            "device_name": exec.capabilities().device_name.clone(),
            "model": model.display().to_string(),
            "family": family.name(),
            "settings": {
                "intra_threads": threads,
                "inter_threads": 1,
                "optimization": opt_name,
                "memory_arena": config.memory_arena,
                "memory_pattern": config.memory_pattern,
                "io_binding": config.binding != Binding::PerStep,
                "prepacking": config.prepacking,
                "reps": reps,
            },
            "load_s": load_s,
            "rss_after_load_mib": rss_loaded,
            "peak_rss_loading_mib": peak_loading,
            "peak_rss_mib": peak,
            "cases": cases.iter().map(|c| serde_json::json!({
                "name": c.name,
                "median_ms": ms(median(&c.times)),
                "times_ms": c.times.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "stages": c.stages,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap())
            .unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}
