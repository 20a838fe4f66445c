//! Soak benchmark: resident memory of a server under sustained load, with
//! the tiny fixture model. 8 clients send synchronous OpenAI requests
//! (64×64, n=2, 1 step); every tenth asks for `url` images, which the
//! server keeps within `--result-memory`. Resident memory is printed after
//! 1k, 5k, 20k and 40k requests and must stay flat: the run fails if it
//! grows past the result budget plus a fixed allowance (allocator arenas and
//! fragmentation across the client and server threads, the bounded
//! tombstones of released ids), and it prints the growth per 1k requests
//! over the last interval, which is ~0 once the budget is full.
//!
//! ```sh
//! cargo bench -p anyaccel-server --bench soak
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ANYACCEL_SOAK_REQUESTS` | `1000,5000,20000,40000` | checkpoints (cumulative requests) |
//! | `ANYACCEL_SOAK_CLIENTS` | `8` | concurrent clients |
//! | `ANYACCEL_SOAK_RESULT_MEMORY_MIB` | `16` | the server's result memory budget |

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

mod fixture;

/// Growth allowed beyond the result budget, in MiB.
const ALLOWANCE_MIB: f64 = 48.0;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let checkpoints: Vec<usize> = std::env::var("ANYACCEL_SOAK_REQUESTS")
        .unwrap_or_else(|_| "1000,5000,20000,40000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("ANYACCEL_SOAK_REQUESTS: counts"))
        .collect();
    let clients: usize = fixture::env_or("ANYACCEL_SOAK_CLIENTS", 8);
    let budget_mib: u64 = fixture::env_or("ANYACCEL_SOAK_RESULT_MEMORY_MIB", 16);
    let mut config = fixture::config(64, 4, Duration::from_millis(5));
    config.batcher.result_memory = budget_mib << 20;
    let server = fixture::start(fixture::pipeline(1), config);
    let url = format!("{}/v1/images/generations", server.base);
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    println!("| requests | resident MiB | results held | result MiB | seconds |");
    println!("|---:|---:|---:|---:|---:|");
    let mut baseline = None;
    let mut worst: f64 = 0.0;
    let mut last: Option<(usize, f64)> = None;
    let mut slope = f64::NAN;
    for &target in &checkpoints {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let (url, sent) = (url.clone(), sent.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(120))
                        .build();
                    loop {
                        let n = sent.fetch_add(1, Ordering::SeqCst);
                        if n >= target {
                            return;
                        }
                        let format = if n % 10 == 9 { "url" } else { "b64_json" };
                        let body = json!({"prompt": format!("soak {n}"), "steps": 1,
                            "size": "64x64", "n": 2, "response_format": format});
                        let resp = agent.post(&url).send_json(body).expect("request");
                        assert_eq!(resp.status(), 200);
                        let _ = resp.into_string();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("client");
        }
        sent.store(target, Ordering::SeqCst);
        let rss = rss_mib();
        let stats = server.state.batcher().stats();
        println!(
            "| {target} | {rss:.1} | {} | {:.1} | {:.0} |",
            stats.results_held,
            stats.result_bytes as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
        let base = *baseline.get_or_insert(rss);
        worst = worst.max(rss - base);
        if let Some((n, r)) = last {
            slope = (rss - r) / ((target - n) as f64 / 1000.0);
        }
        last = Some((target, rss));
    }
    let bound = budget_mib as f64 + ALLOWANCE_MIB;
    println!(
        "\ngrowth after the first checkpoint: {worst:.1} MiB (bound: {bound:.0} MiB = result budget + {ALLOWANCE_MIB:.0}); \
         last interval: {slope:+.2} MiB per 1k requests"
    );
    assert!(
        worst <= bound,
        "resident memory grew {worst:.1} MiB, past the {bound:.0} MiB bound"
    );
}
