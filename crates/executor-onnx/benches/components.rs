//! Times the model components through anyaccel's ONNX Runtime executor: the text
//! encoder (batch 2), one UNet step (batch 2, as classifier-free guidance runs it)
//! and the VAE decoder (batch 1), at each image size asked for.
//!
//! ```sh
//! .venv/bin/python scripts/bench/make_sd15_random.py      # SD 1.5-sized random model
//! ANYACCEL_BENCH_MODEL=.cache/bench/sd15-random-onnx \
//!     cargo bench -p anyaccel-executor-onnx --bench components
//! ```
//!
//! `scripts/bench/components.sh` runs this next to diffusers (PyTorch) on the same
//! weights. Settings come from the environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ANYACCEL_BENCH_MODEL` | (required) | optimum ONNX model folder |
//! | `ANYACCEL_BENCH_SIZES` | `256,512` | square image sizes |
//! | `ANYACCEL_BENCH_REPS` | `5` | timed repetitions per case (after one warm-up) |
//! | `ANYACCEL_BENCH_THREADS` | `2` | ONNX Runtime intra-op threads (inter-op: 1) |
//! | `ANYACCEL_BENCH_OPT` | `all` | graph optimisation: disable, basic, extended, all |
//! | `ANYACCEL_BENCH_JSON` | (none) | also write the results to this file as JSON |
//!
//! Without `ANYACCEL_BENCH_MODEL` it prints how to make the model and exits 0, so a
//! plain `cargo bench` over the workspace does not fail.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyaccel_executor::{Executor, Tensor, TokenIds, UnetInput};
use anyaccel_executor_onnx::{DeviceRequest, OnnxConfig, OnnxExecutor, Optimization};

const TOKENS: usize = 77;
const BOS: i64 = 49406;
const EOS: i64 = 49407;

struct Case {
    name: String,
    times: Vec<Duration>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
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

fn time<F: FnMut()>(name: String, reps: usize, mut f: F) -> Case {
    f(); // warm-up: ONNX Runtime plans memory for a new shape on its first run
    let times = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    let case = Case { name, times };
    eprintln!(
        "  {:<22} median {:>9.1} ms  (min {:.1}, max {:.1}, n={})",
        case.name,
        ms(median(&case.times)),
        ms(*case.times.iter().min().unwrap()),
        ms(*case.times.iter().max().unwrap()),
        case.times.len()
    );
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

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and should not
    // spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("components bench: run it with `cargo bench`; skipping in test mode");
        return;
    }
    let Ok(model) = std::env::var("ANYACCEL_BENCH_MODEL") else {
        eprintln!(
            "components bench: set ANYACCEL_BENCH_MODEL to an optimum ONNX model folder, e.g.\n  \
             .venv/bin/python scripts/bench/make_sd15_random.py\n  \
             ANYACCEL_BENCH_MODEL=.cache/bench/sd15-random-onnx cargo bench -p anyaccel-executor-onnx --bench components\n\
             (or run scripts/bench/components.sh); skipping"
        );
        return;
    };
    // cargo runs benches from the package folder; resolve relative paths against the
    // directory the user was in when possible (cargo does not tell us), else the workspace.
    let mut model = PathBuf::from(model);
    if model.is_relative() && !model.exists() {
        model = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(model);
    }
    let sizes: Vec<usize> = std::env::var("ANYACCEL_BENCH_SIZES")
        .unwrap_or_else(|_| "256,512".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("ANYACCEL_BENCH_SIZES: comma-separated sizes")
        })
        .collect();
    let reps: usize = env_or("ANYACCEL_BENCH_REPS", 5);
    let threads: usize = env_or("ANYACCEL_BENCH_THREADS", 2);
    let opt_name = std::env::var("ANYACCEL_BENCH_OPT").unwrap_or_else(|_| "all".into());
    let optimization: Optimization = opt_name.parse().expect("ANYACCEL_BENCH_OPT");

    let config = OnnxConfig {
        device: DeviceRequest::Cpu,
        intra_threads: Some(threads),
        inter_threads: Some(1),
        library: None,
        optimization,
    };
    eprintln!(
        "anyaccel components: {} (ONNX Runtime CPU, intra_threads={threads}, inter_threads=1, optimization={opt_name}, reps={reps})",
        model.display()
    );
    let t = Instant::now();
    let exec = OnnxExecutor::load(&model, &config).expect("loading the model");
    eprintln!("  loaded in {:.1} s", t.elapsed().as_secs_f64());

    let mut cases = Vec::new();

    // Text encoder, batch 2 (prompt + negative prompt), 77 tokens.
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
    cases.push(time("text_encoder_b2".into(), reps, || {
        exec.encode_text(&ids).expect("text encoder");
    }));
    let hidden = exec.encode_text(&ids).expect("text encoder");
    let dim = hidden.shape()[2];
    let hidden = Tensor::new(vec![2, TOKENS, dim], noise(2 * TOKENS * dim, 1)).unwrap();

    for &size in &sizes {
        let l = size / 8;
        let sample = Tensor::new(vec![2, 4, l, l], noise(2 * 4 * l * l, 2)).unwrap();
        cases.push(time(format!("unet_b2_{size}"), reps, || {
            exec.unet(UnetInput {
                sample: &sample,
                timestep: 999.0,
                encoder_hidden_states: &hidden,
            })
            .expect("unet");
        }));
        let latents = Tensor::new(vec![1, 4, l, l], noise(4 * l * l, 3)).unwrap();
        cases.push(time(format!("vae_decode_b1_{size}"), reps, || {
            exec.vae_decode(&latents).expect("vae decoder");
        }));
    }

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

    if let Ok(path) = std::env::var("ANYACCEL_BENCH_JSON") {
        let doc = serde_json::json!({
            "engine": "anyaccel (ONNX Runtime CPU)",
            "settings": {
                "intra_threads": threads,
                "inter_threads": 1,
                "optimization": opt_name,
                "reps": reps,
            },
            "cases": cases.iter().map(|c| serde_json::json!({
                "name": c.name,
                "median_ms": ms(median(&c.times)),
                "times_ms": c.times.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap())
            .unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}
