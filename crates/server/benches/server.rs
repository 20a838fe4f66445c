//! Server benchmark with the tiny fixture model (`fixtures/models/tiny-sd15`):
//!
//! 1. overhead: the same requests (one at a time) sent to `POST /v1/images/generations`
//!    over loopback HTTP, and run on the same `Pipeline` directly
//!    (`validate` + `generate`); the difference is what the server adds (HTTP, JSON,
//!    admission and batcher hand-off, PNG encoding, base64). The direct PNG + base64
//!    time is shown apart, so the rest is the server proper;
//! 2. closed-loop load at concurrency 1, 2, 4, 8 with batching off (max batch 1) and on
//!    (max batch `ANYACCEL_BENCH_MAX_BATCH`, delay `ANYACCEL_BENCH_BATCH_DELAY_MS`):
//!    images/s and p50/p95 latency per level.
//!
//! ```sh
//! cargo bench -p anyaccel-server --bench server
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ANYACCEL_BENCH_SIZE` | `64` | square image size (the fixture serves 64 and 128) |
//! | `ANYACCEL_BENCH_STEPS` | `10` | denoising steps per request (guidance 7.5, euler) |
//! | `ANYACCEL_BENCH_OVERHEAD_REQS` | `40` | requests each way for the overhead part |
//! | `ANYACCEL_BENCH_SECS` | `3` | seconds per concurrency level |
//! | `ANYACCEL_BENCH_MAX_BATCH` | `4` | max images per batch when batching is on |
//! | `ANYACCEL_BENCH_BATCH_DELAY_MS` | `20` | batch window when batching is on |
//! | `ANYACCEL_BENCH_THREADS` | `1` | ONNX Runtime intra-op threads |
//!
//! Client threads, the server and ONNX Runtime share the machine's cores, as a
//! sidecar-less load test on one host does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyaccel_pipeline::images::{self, OutputFormat};
use anyaccel_pipeline::{GenerationParams, Pipeline};
use base64::Engine;

mod fixture;

const PROMPT: &str = "a photograph of an astronaut riding a horse";

struct Settings {
    size: u32,
    steps: u32,
    overhead_reqs: usize,
    secs: f64,
    max_batch: usize,
    batch_delay: Duration,
    threads: usize,
}

struct Server {
    url: String,
    _server: fixture::Server,
}

fn start(pipeline: Arc<Pipeline>, s: &Settings, max_batch: usize, delay: Duration) -> Server {
    let server = fixture::start(pipeline, fixture::config(s.size, max_batch, delay));
    Server {
        url: format!("{}/v1/images/generations", server.base),
        _server: server,
    }
}

fn body(s: &Settings, seed: u64) -> String {
    serde_json::json!({
        "prompt": PROMPT,
        "size": format!("{}x{}", s.size, s.size),
        "steps": s.steps,
        "guidance_scale": 7.5,
        "scheduler": "euler",
        "seed": seed,
        "response_format": "b64_json",
    })
    .to_string()
}

fn params(s: &Settings, seed: u64) -> GenerationParams {
    GenerationParams {
        prompt: PROMPT.into(),
        width: Some(s.size),
        height: Some(s.size),
        steps: Some(s.steps),
        guidance_scale: Some(7.5),
        scheduler: Some("euler".into()),
        seed: Some(seed),
        ..GenerationParams::default()
    }
}

/// The server's own timing headers of one response.
struct ServerTimes {
    queue: Duration,
    inference: Duration,
    total: Duration,
}

/// One HTTP request; panics on anything but a 200 with one image.
fn post(agent: &ureq::Agent, url: &str, body: &str) -> ServerTimes {
    let resp = agent
        .post(url)
        .set("content-type", "application/json")
        .send_string(body)
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    let header = |name: &str| {
        resp.header(name)
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs_f64)
    };
    let times = ServerTimes {
        queue: header("x-queue-time"),
        inference: header("x-inference-time"),
        total: header("x-total-time"),
    };
    let v: serde_json::Value = resp.into_json().expect("JSON response");
    let n = v["data"].as_array().map_or(0, Vec::len);
    assert_eq!(n, 1, "expected one image in {v}");
    times
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // nearest rank
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
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

fn overhead(pipeline: &Arc<Pipeline>, s: &Settings) {
    let server = start(pipeline.clone(), s, 1, Duration::ZERO);
    let agent = agent();
    // a few untimed requests each way: connection set-up, first allocations
    for seed in 0..3 {
        post(&agent, &server.url, &body(s, seed));
        let r = pipeline.validate(params(s, seed)).unwrap();
        pipeline.generate(&r).unwrap();
    }
    let mut http = Vec::new();
    let mut queue = Vec::new();
    let mut inference = Vec::new();
    let mut handler = Vec::new();
    let mut direct = Vec::new();
    let mut encode = Vec::new();
    for i in 0..s.overhead_reqs {
        let seed = 1000 + i as u64;
        // alternate which goes first, so drift in the machine's load hits both alike
        let mut run_direct = || {
            let t = Instant::now();
            let r = pipeline.validate(params(s, seed)).unwrap();
            let out = pipeline.generate(&r).unwrap();
            direct.push(t.elapsed());
            let t = Instant::now();
            let info = anyaccel_server::infotext(pipeline, &r, out[0].seed);
            let png = images::encode(&out[0].image, OutputFormat::Png, None, &info).unwrap();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
            std::hint::black_box(b64);
            encode.push(t.elapsed());
        };
        let mut run_http = || {
            let t = Instant::now();
            let st = post(&agent, &server.url, &body(s, seed));
            http.push(t.elapsed());
            queue.push(st.queue);
            inference.push(st.inference);
            handler.push(st.total);
        };
        if i % 2 == 0 {
            run_direct();
            run_http();
        } else {
            run_http();
            run_direct();
        }
    }
    let (h, d, e) = (median(&http), median(&direct), median(&encode));
    let (q, inf, tot) = (median(&queue), median(&inference), median(&handler));
    println!();
    println!(
        "## Server overhead ({} requests each way, one at a time, {}x{}, {} steps, guidance 7.5, batching off)",
        s.overhead_reqs, s.size, s.size, s.steps
    );
    println!();
    println!("| path | median ms per request |");
    println!("|---|---:|");
    println!("| pipeline direct (validate + generate) | {:.2} |", ms(d));
    println!(
        "| PNG encode + base64 of that image, direct | {:.2} |",
        ms(e)
    );
    println!(
        "| HTTP `POST /v1/images/generations` (b64_json), client round trip | {:.2} |",
        ms(h)
    );
    println!(
        "| **server overhead** (HTTP − direct) | **{:.2}** ({:+.1}%) |",
        ms(h) - ms(d),
        100.0 * (ms(h) / ms(d) - 1.0)
    );
    println!(
        "| server headers: `x-inference-time` (pipeline inside the batcher) | {:.2} |",
        ms(inf)
    );
    println!("| server headers: `x-queue-time` | {:.2} |", ms(q));
    println!(
        "| server headers: `x-total-time` (handler) | {:.2} |",
        ms(tot)
    );
    println!(
        "| handler − inference (validation, queue hand-off, encode, JSON) | {:.2} |",
        ms(tot) - ms(inf)
    );
    println!(
        "| round trip − handler (HTTP, loopback, client parsing) | {:.2} |",
        ms(h) - ms(tot)
    );
}

struct Level {
    concurrency: usize,
    images: usize,
    elapsed: Duration,
    p50: Duration,
    p95: Duration,
}

fn load(url: &str, s: &Settings, concurrency: usize) -> Level {
    let window = Duration::from_secs_f64(s.secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|c| {
            let url = url.to_string();
            let bodies: Vec<String> = (0..64).map(|i| body(s, (c * 64 + i) as u64)).collect();
            std::thread::spawn(move || {
                let agent = agent();
                let mut lat = Vec::new();
                let mut i = 0;
                while start.elapsed() < window {
                    let t = Instant::now();
                    post(&agent, &url, &bodies[i % bodies.len()]);
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    // every client finishes its last request after the window: count until the last one
    let elapsed = start.elapsed();
    lat.sort();
    Level {
        concurrency,
        images: lat.len(),
        elapsed,
        p50: percentile(&lat, 50.0),
        p95: percentile(&lat, 95.0),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and should not
    // spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("server bench: run it with `cargo bench`; skipping in test mode");
        return;
    }
    let s = Settings {
        size: fixture::env_or("ANYACCEL_BENCH_SIZE", 64),
        steps: fixture::env_or("ANYACCEL_BENCH_STEPS", 10),
        overhead_reqs: fixture::env_or("ANYACCEL_BENCH_OVERHEAD_REQS", 40),
        secs: fixture::env_or("ANYACCEL_BENCH_SECS", 3.0),
        max_batch: fixture::env_or("ANYACCEL_BENCH_MAX_BATCH", 4),
        batch_delay: Duration::from_millis(fixture::env_or("ANYACCEL_BENCH_BATCH_DELAY_MS", 20)),
        threads: fixture::env_or("ANYACCEL_BENCH_THREADS", 1),
    };
    let started = Instant::now();
    eprintln!(
        "server bench: tiny-sd15, {}x{}, {} steps, guidance 7.5, euler, PNG b64_json; ONNX Runtime CPU intra_threads={}; {} cores",
        s.size,
        s.size,
        s.steps,
        s.threads,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let pipeline = fixture::pipeline(s.threads);
    overhead(&pipeline, &s);

    println!();
    println!(
        "## Closed loop, {:.0} s per level ({}x{}, {} steps, guidance 7.5)",
        s.secs, s.size, s.size, s.steps
    );
    println!();
    println!("| batching | concurrency | images | images/s | p50 ms | p95 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let modes = [
        ("off (max batch 1)".to_string(), 1, Duration::ZERO),
        (
            format!(
                "on (max batch {}, {} ms)",
                s.max_batch,
                s.batch_delay.as_millis()
            ),
            s.max_batch,
            s.batch_delay,
        ),
    ];
    for (label, max_batch, delay) in &modes {
        let server = start(pipeline.clone(), &s, *max_batch, *delay);
        // one untimed request per client slot so connections and buffers exist
        post(&agent(), &server.url, &body(&s, 0));
        for c in [1, 2, 4, 8] {
            let l = load(&server.url, &s, c);
            println!(
                "| {label} | {} | {} | {:.2} | {:.1} | {:.1} |",
                l.concurrency,
                l.images,
                l.images as f64 / l.elapsed.as_secs_f64(),
                ms(l.p50),
                ms(l.p95)
            );
        }
    }
    eprintln!(
        "server bench done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
