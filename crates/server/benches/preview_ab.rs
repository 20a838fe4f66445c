//! End-to-end A/B of previews: the same job with `preview_every: 5` and
//! without, through the path previews really take. `POST /v1/jobs`, the SSE
//! events read to `completed` (the worker makes each preview's latent map in
//! the denoising loop; the events handler upscales, encodes and signs it on a
//! blocking thread while the next steps run), then `GET /v1/jobs/{id}` for
//! the encoded, signed result. The two arms alternate (A B, B A, ...) so drift
//! in the machine's load falls on both.
//!
//! ```sh
//! .venv/bin/python scripts/bench/make_sd15_random.py   # once: the SD 1.5-sized random-weight model
//! ANYACCEL_BENCH_MODEL=.cache/bench/sd15-random-onnx-cpu cargo bench -p anyaccel-server --bench preview_ab
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ANYACCEL_BENCH_MODEL` | `.cache/bench/sd15-random-onnx-cpu` | model folder (optimum ONNX layout) |
//! | `ANYACCEL_BENCH_SIZE` | `256` | square image size |
//! | `ANYACCEL_BENCH_STEPS` | `20` | Euler steps, guidance 7.5 (CFG: batch 2 per UNet call) |
//! | `ANYACCEL_BENCH_REPS` | `3` | runs per arm |
//! | `ANYACCEL_BENCH_THREADS` | `2` | ONNX Runtime intra-op threads |
//! | `ANYACCEL_BENCH_PREVIEW_EVERY` | `5` | the previewing arm's `preview_every` |

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fixture::env_or;
use serde_json::{Value, json};

mod fixture;

struct Run {
    seconds: f64,
    previews: usize,
    preview_bytes: usize,
    denoise_seconds: f64,
}

fn job(base: &str, size: u32, steps: u32, seed: u64, preview_every: Option<u32>) -> Run {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(3600))
        .build();
    let mut body = json!({
        "prompt": "a photograph of an astronaut riding a horse",
        "size": format!("{size}x{size}"),
        "steps": steps,
        "guidance_scale": 7.5,
        "scheduler": "euler",
        "seed": seed,
        "output_format": "png",
    });
    if let Some(n) = preview_every {
        body["preview_every"] = json!(n);
    }
    let started = Instant::now();
    let job: Value = agent
        .post(&format!("{base}/v1/jobs"))
        .send_json(body)
        .expect("job accepted")
        .into_json()
        .unwrap();
    let id = job["id"].as_str().expect("job id").to_string();
    // Subscribing right after the POST: the job waits for the warm worker's
    // batch window, far shorter than a step, so every preview reaches us
    // (the count is printed and checked below).
    let events = agent
        .get(&format!("{base}/v1/jobs/{id}/events"))
        .call()
        .expect("events");
    let (mut previews, mut preview_bytes, mut event) = (0, 0, String::new());
    for line in BufReader::new(events.into_reader()).lines() {
        let line = line.expect("event stream");
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            match event.as_str() {
                "preview" => {
                    let v: Value = serde_json::from_str(d).unwrap();
                    previews += 1;
                    preview_bytes += v["b64_json"].as_str().unwrap().len() * 3 / 4;
                }
                "completed" => break,
                "failed" | "cancelled" => panic!("job ended {event}: {d}"),
                _ => {}
            }
        }
    }
    let done: Value = agent
        .get(&format!("{base}/v1/jobs/{id}"))
        .call()
        .expect("result")
        .into_json()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        done["result"]["images"][0]["b64_json"].is_string(),
        "{done}"
    );
    Run {
        seconds,
        previews,
        preview_bytes,
        denoise_seconds: done["result"]["timings"]["denoise"]
            .as_f64()
            .unwrap_or(f64::NAN),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = std::env::var("ANYACCEL_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo.join(".cache/bench/sd15-random-onnx-cpu"));
    let model = if model.is_absolute() {
        model
    } else {
        repo.join(model)
    };
    let size: u32 = env_or("ANYACCEL_BENCH_SIZE", 256);
    let steps: u32 = env_or("ANYACCEL_BENCH_STEPS", 20);
    let reps: usize = env_or("ANYACCEL_BENCH_REPS", 3);
    let threads: usize = env_or("ANYACCEL_BENCH_THREADS", 2);
    let every: u32 = env_or("ANYACCEL_BENCH_PREVIEW_EVERY", 5);
    assert!(
        model.join("unet/model.onnx").is_file(),
        "{} has no unet/model.onnx: build it with scripts/bench/make_sd15_random.py",
        model.display()
    );
    let id = model.file_name().unwrap().to_string_lossy().to_string();
    let t = Instant::now();
    let pipeline = fixture::pipeline_at(&id, &model, threads);
    let server = fixture::start(pipeline, fixture::config(size, 1, Duration::from_millis(0)));
    eprintln!(
        "model {} loaded and warmed up in {:.0} s; load average {}",
        model.display(),
        t.elapsed().as_secs_f64(),
        loadavg()
    );
    // One untimed run of each arm.
    job(&server.base, size, steps, 0, None);
    job(&server.base, size, steps, 0, Some(every));
    let want_previews = ((steps - 1) / every) as usize;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    println!("| run | arm | seconds | denoise s | previews | preview bytes |");
    println!("|---:|---|---:|---:|---:|---:|");
    for rep in 0..reps {
        let arms = if rep % 2 == 0 {
            [None, Some(every)]
        } else {
            [Some(every), None]
        };
        for arm in arms {
            let r = job(&server.base, size, steps, 1 + rep as u64, arm);
            let name = match arm {
                Some(n) => format!("preview_every {n}"),
                None => "none".into(),
            };
            let expected = if arm.is_some() { want_previews } else { 0 };
            assert_eq!(r.previews, expected, "{name}: previews received");
            println!(
                "| {} | {name} | {:.2} | {:.2} | {} | {} |",
                rep + 1,
                r.seconds,
                r.denoise_seconds,
                r.previews,
                r.preview_bytes
            );
            match arm {
                Some(_) => on.push(r.seconds),
                None => off.push(r.seconds),
            }
        }
    }
    let (a, b) = (median(off.clone()), median(on.clone()));
    println!();
    println!(
        "{id}, {size}x{size}, {steps} steps, CFG 7.5, {threads} threads, {reps} runs per arm (interleaved)"
    );
    println!(
        "median without previews {a:.2} s, with preview_every {every} {b:.2} s: ratio {:.4} ({:+.2}%)",
        b / a,
        100.0 * (b / a - 1.0)
    );
    println!(
        "range without {:.2}-{:.2} s, with {:.2}-{:.2} s; load average after {}",
        off.iter().copied().fold(f64::INFINITY, f64::min),
        off.iter().copied().fold(0.0, f64::max),
        on.iter().copied().fold(f64::INFINITY, f64::min),
        on.iter().copied().fold(0.0, f64::max),
        loadavg()
    );
}
