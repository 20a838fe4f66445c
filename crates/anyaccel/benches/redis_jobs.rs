//! What the shared queue costs, with real `serve` processes and a real
//! `redis-server` on loopback, on the tiny model:
//! - per-job overhead: submit → completed → result, in memory against Redis;
//! - throughput of 3 replicas on one queue against 1;
//! - a checkpoint every step against the step itself.
//!
//! `cargo bench -p anyaccel --bench redis_jobs` (figures in docs/benchmarks.md).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::{Server, metric, serve_with};
use serde_json::{Value, json};

fn replica(redis: &Redis, name: &str, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec![
        "--redis-url",
        url.as_str(),
        "--redis-queue",
        "bench",
        "--redis-consumer",
        name,
        "--c2pa",
        "off",
    ];
    args.extend_from_slice(extra);
    serve_with(&args, &[], Stdio::null())
}

/// Submits a job and waits for its end on the SSE stream, then fetches it.
fn one_job(base: &str, body: &Value) -> Duration {
    let t = Instant::now();
    let v: Value = ureq::post(&format!("{base}/v1/jobs"))
        .send_json(body.clone())
        .expect("accepted")
        .into_json()
        .expect("json");
    let id = v["id"].as_str().expect("id").to_string();
    wait_completed(base, &id);
    let done: Value = ureq::get(&format!("{base}/v1/jobs/{id}"))
        .call()
        .expect("status")
        .into_json()
        .expect("json");
    assert_eq!(done["status"], "completed", "{done}");
    t.elapsed()
}

fn wait_completed(base: &str, id: &str) {
    let events = ureq::get(&format!("{base}/v1/jobs/{id}/events"))
        .call()
        .expect("events");
    for line in BufReader::new(events.into_reader()).lines() {
        let line = line.expect("sse");
        if line == "event: completed" {
            return;
        }
        assert!(
            !(line == "event: failed" || line == "event: cancelled"),
            "job {id} did not complete"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn overhead(label: &str, base: &str) -> (f64, f64) {
    let body = json!({"prompt": "bench", "size": "64x64", "steps": 1, "seed": 1});
    for _ in 0..5 {
        one_job(base, &body);
    }
    let mut times: Vec<Duration> = (0..60).map(|_| one_job(base, &body)).collect();
    times.sort();
    let (p50, p95) = (percentile(&times, 0.5), percentile(&times, 0.95));
    println!("per-job latency, {label}: p50 {p50:.1} ms, p95 {p95:.1} ms (60 jobs, 1 step, 64x64)");
    (p50, p95)
}

/// Jobs per second with `jobs` submitted at once to the first replica.
fn throughput(replicas: &[&Server], jobs: usize) -> f64 {
    let body = json!({"prompt": "bench", "size": "64x64", "steps": 20});
    let base = &replicas[0].base;
    let t = Instant::now();
    let ids: Vec<String> = (0..jobs)
        .map(|_| {
            let v: Value = ureq::post(&format!("{base}/v1/jobs"))
                .send_json(body.clone())
                .expect("accepted")
                .into_json()
                .expect("json");
            v["id"].as_str().expect("id").to_string()
        })
        .collect();
    for id in &ids {
        wait_completed(base, id);
    }
    jobs as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let redis = Redis::start();
    let memory = serve_with(&["--c2pa", "off"], &[], Stdio::null());
    let (m50, m95) = overhead("in memory", &memory.base);
    drop(memory);
    let a = replica(
        &redis,
        "a",
        &[
            "--checkpoint-every-steps",
            "0",
            "--checkpoint-every-secs",
            "0",
        ],
    );
    let (r50, r95) = overhead("redis", &a.base);
    println!(
        "redis overhead per job: p50 +{:.1} ms, p95 +{:.1} ms",
        r50 - m50,
        r95 - m95
    );

    let one = throughput(&[&a], 30);
    let b = replica(
        &redis,
        "b",
        &[
            "--checkpoint-every-steps",
            "0",
            "--checkpoint-every-secs",
            "0",
        ],
    );
    let c = replica(
        &redis,
        "c",
        &[
            "--checkpoint-every-steps",
            "0",
            "--checkpoint-every-secs",
            "0",
        ],
    );
    let three = throughput(&[&a, &b, &c], 30);
    println!(
        "throughput (30 jobs of 20 steps at 64x64, submitted to one replica): 1 replica {one:.2} jobs/s, 3 replicas {three:.2} jobs/s ({:.2}x; {} CPU cores here)",
        three / one,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    drop((a, b, c));

    let d = replica(&redis, "d", &["--checkpoint-every-steps", "1"]);
    let body = json!({"prompt": "bench", "size": "128x128", "steps": 30, "n": 2});
    for _ in 0..5 {
        one_job(&d.base, &body);
    }
    let (sum, count) = (
        metric(&d.base, "anyaccel_queue_checkpoint_seconds_sum"),
        metric(&d.base, "anyaccel_queue_checkpoint_seconds_count"),
    );
    let (ssum, scount) = (
        metric(&d.base, "anyaccel_denoise_step_duration_seconds_sum"),
        metric(&d.base, "anyaccel_denoise_step_duration_seconds_count"),
    );
    println!(
        "checkpoint every step (2 images at 128x128): {:.3} ms per checkpoint over {count} checkpoints, against {:.2} ms per step",
        sum / count.max(1.0) * 1e3,
        ssum / scount.max(1.0) * 1e3
    );
}
