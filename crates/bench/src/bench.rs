//! `anyaccel bench`: arguments and the run itself.

use crate::BenchError;
use crate::client::{Client, ServerCounters};
use crate::mix::{Mix, MixEntry};
use crate::result::{
    BenchResult, FORMAT_VERSION, LevelResult, Load, Settings, Tags, Target, ToolInfo, now_rfc3339,
};
use crate::runner::{Ctx, LevelRun, after, dur, run_closed, run_open};
use crate::schedule::{Wave, WaveShape, poisson_schedule};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Open-loop rates above this many requests per second need
/// `--i-know-what-i-am-doing`.
pub const SAFE_RATE: f64 = 20.0;
/// Closed-loop concurrency above this needs `--i-know-what-i-am-doing`.
pub const SAFE_CONCURRENCY: usize = 64;
/// `--max-duration` and `--max-requests` above these need it too.
pub const SAFE_MAX_DURATION_S: f64 = 4.0 * 3600.0;
pub const SAFE_MAX_REQUESTS: u64 = 100_000;

/// Drive a running anyaccel endpoint and measure it.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bench",
    about = "Drive a running anyaccel endpoint: closed loop, open loop (Poisson) and wave profiles; latency percentiles, throughput, breaking point under an SLO; JSON, Markdown and PNG output"
)]
pub struct BenchArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,

    /// Closed-loop levels: concurrent clients, comma separated (e.g. 1,2,4,8).
    /// With no --concurrency, --rate or --wave, runs 1,2,4,8.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,

    /// Open-loop levels: Poisson arrival rates in requests per second, comma
    /// separated (e.g. 0.5,1,2).
    #[arg(long = "rate", value_delimiter = ',')]
    pub rates: Vec<f64>,

    /// Seconds each closed- or open-loop level runs.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,

    /// Add a wave run: the arrival rate follows a sine or cosine between
    /// --wave-min-rate and --wave-max-rate (a day of traffic, compressed).
    #[arg(long, value_enum)]
    pub wave: Option<WaveShape>,
    /// Lowest arrival rate of the wave, requests per second.
    #[arg(long, default_value_t = 0.1)]
    pub wave_min_rate: f64,
    /// Highest arrival rate of the wave, requests per second.
    #[arg(long, default_value_t = 1.0)]
    pub wave_max_rate: f64,
    /// Seconds the wave run lasts.
    #[arg(long, default_value_t = 600.0)]
    pub wave_duration: f64,
    /// Seconds per wave period (default: the wave's duration, one "day").
    #[arg(long)]
    pub wave_period: Option<f64>,
    /// Seconds per time-series bucket of a wave run (default: duration / 60,
    /// at least 1).
    #[arg(long)]
    pub bucket: Option<f64>,

    /// Request mix file (TOML, or JSON by extension): [[requests]] with size,
    /// steps, n, weight and optional prompt, guidance_scale, scheduler.
    /// Without it every request is --size/--steps/--n.
    #[arg(long)]
    pub mix: Option<PathBuf>,
    /// Image size of every request (without --mix), WIDTHxHEIGHT.
    #[arg(long, default_value = "512x512")]
    pub size: String,
    /// Denoising steps per request (without --mix).
    #[arg(long, default_value_t = 20)]
    pub steps: u32,
    /// Images per request (without --mix).
    #[arg(long, default_value_t = 1)]
    pub n: u32,
    /// Prompt (default: a fixed astronaut prompt).
    #[arg(long)]
    pub prompt: Option<String>,
    /// guidance_scale to send (default: the server's).
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    /// Scheduler to send (default: the server's).
    #[arg(long)]
    pub scheduler: Option<String>,

    /// Latency SLO: the p95 (seconds) a level must stay at or under.
    #[arg(long = "slo", default_value_t = 1.0)]
    pub slo_p95: f64,
    /// Largest share of failed requests a level may have and still count.
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,
    /// Seed for arrival times, the mix and the requests' own seeds.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Seconds before one request is given up (counted as `timeout`).
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Requests sent one by one before measuring (model warm-up; not counted).
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Seconds between levels, so one level's queue does not spill into the next.
    #[arg(long, default_value_t = 1.0)]
    pub pause: f64,

    /// The whole run stops after this many seconds.
    #[arg(long, default_value_t = 1800.0)]
    pub max_duration: f64,
    /// The whole run sends at most this many requests.
    #[arg(long, default_value_t = 10_000)]
    pub max_requests: u64,
    /// Open loop: at most this many requests in flight; arrivals beyond are
    /// counted as `client_overflow` instead of sent.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Allow rates above 20 req/s, concurrency above 64, or caps above 4 h /
    /// 100,000 requests.
    #[arg(long)]
    pub i_know_what_i_am_doing: bool,
    /// Closed loop: do not wait for a 429/503's Retry-After before the
    /// client's next request.
    #[arg(long)]
    pub no_retry_after: bool,
    /// Longest Retry-After wait honoured, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub max_retry_wait: f64,

    /// Tag: the pool this endpoint is (plan's pool name).
    #[arg(long)]
    pub pool: Option<String>,
    /// Tag: the instance type it runs on (plan looks its price up by this).
    #[arg(long)]
    pub instance_type: Option<String>,
    /// Tag: the accelerator (default: what the server's /info says).
    #[arg(long)]
    pub accelerator: Option<String>,
    /// Replicas behind --url during the run; plan divides capacity by it.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,

    /// Where to scrape Prometheus metrics (default: URL/metrics).
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Only count server request series whose `endpoint` label contains this
    /// (the server labels requests by route template); "" counts all.
    #[arg(long, default_value = "/v1/images/generations")]
    pub metrics_endpoint: String,
    /// Do not scrape /metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Seconds to wait after a level before scraping /metrics again.
    #[arg(long, default_value_t = 0.25)]
    pub metrics_settle: f64,

    /// Output folder: result.json, result.md, latency-throughput.png, wave.png.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Do not draw the PNG plots.
    #[arg(long)]
    pub no_plots: bool,
    /// Do not show the progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Do not print the Markdown table to stdout.
    #[arg(long)]
    pub quiet: bool,
}

/// What a bench run wrote.
#[derive(Debug, Clone)]
pub struct BenchOutput {
    pub result: BenchResult,
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// The levels a run will execute, in order.
fn plan_levels(args: &BenchArgs) -> Vec<Load> {
    let mut levels = Vec::new();
    let mut conc = args.concurrency.clone();
    if conc.is_empty() && args.rates.is_empty() && args.wave.is_none() {
        conc = vec![1, 2, 4, 8];
    }
    for c in conc {
        levels.push(Load::Closed {
            concurrency: c,
            duration_s: args.duration,
        });
    }
    for &r in &args.rates {
        levels.push(Load::Open {
            rate: r,
            duration_s: args.duration,
        });
    }
    if let Some(shape) = args.wave {
        let bucket_s = args
            .bucket
            .unwrap_or_else(|| (args.wave_duration / 60.0).max(1.0));
        levels.push(Load::Wave {
            wave: Wave {
                shape,
                min_rate: args.wave_min_rate,
                max_rate: args.wave_max_rate,
                period_s: args.wave_period.unwrap_or(args.wave_duration),
            },
            duration_s: args.wave_duration,
            bucket_s,
        });
    }
    levels
}

/// Checks arguments and safety limits before anything is sent.
pub fn validate(args: &BenchArgs, levels: &[Load], mix: &Mix) -> Result<(), BenchError> {
    let bad = |m: String| Err(BenchError::InvalidArgs(m));
    if !(args.url.starts_with("http://") || args.url.starts_with("https://")) {
        return bad(format!(
            "--url {:?} must start with http:// or https://",
            args.url
        ));
    }
    let pos = |name: &str, v: f64| -> Result<(), BenchError> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(BenchError::InvalidArgs(format!(
                "{name} must be a positive number of seconds, got {v}"
            )))
        }
    };
    pos("--duration", args.duration)?;
    pos("--timeout", args.timeout)?;
    pos("--max-duration", args.max_duration)?;
    pos("--slo", args.slo_p95)?;
    if !(0.0..=1.0).contains(&args.max_error_rate) {
        return bad(format!(
            "--max-error-rate must be within 0..=1, got {}",
            args.max_error_rate
        ));
    }
    if args.replicas == 0 {
        return bad("--replicas must be at least 1".into());
    }
    if args.max_in_flight == 0 {
        return bad("--max-in-flight must be at least 1".into());
    }
    let small = |v: f64| v.is_finite() && (0.0..=3600.0).contains(&v);
    if !(small(args.pause) && small(args.metrics_settle) && small(args.max_retry_wait)) {
        return bad(
            "--pause, --metrics-settle and --max-retry-wait must be within 0..=3600 seconds".into(),
        );
    }
    if args.timeout > 86_400.0 {
        return bad(format!(
            "--timeout must be at most 86400 seconds, got {}",
            args.timeout
        ));
    }
    mix.validate().map_err(BenchError::InvalidArgs)?;
    let mut unsafe_reasons = Vec::new();
    let mut total_s = 0.0;
    let mut expected_open = 0.0;
    for l in levels {
        total_s += l.duration_s() + args.pause;
        match l {
            Load::Closed { concurrency, .. } => {
                if *concurrency == 0 {
                    return bad("--concurrency values must be at least 1".into());
                }
                if *concurrency > SAFE_CONCURRENCY {
                    unsafe_reasons.push(format!(
                        "concurrency {concurrency} is above {SAFE_CONCURRENCY}"
                    ));
                }
            }
            Load::Open { rate, duration_s } => {
                if !(rate.is_finite() && *rate > 0.0) {
                    return bad(format!("--rate values must be above 0, got {rate}"));
                }
                if *rate > SAFE_RATE {
                    unsafe_reasons.push(format!("rate {rate} req/s is above {SAFE_RATE}"));
                }
                expected_open += rate * duration_s;
            }
            Load::Wave {
                wave,
                duration_s,
                bucket_s,
            } => {
                pos("--wave-duration", *duration_s)?;
                pos("--wave-period", wave.period_s)?;
                pos("--bucket", *bucket_s)?;
                if duration_s / bucket_s > 10_000.0 {
                    return bad(format!(
                        "--bucket {bucket_s} s makes more than 10000 buckets of the {duration_s} s wave; use a larger bucket"
                    ));
                }
                let rates_ok = wave.min_rate.is_finite()
                    && wave.min_rate >= 0.0
                    && wave.max_rate.is_finite()
                    && wave.max_rate > 0.0
                    && wave.min_rate <= wave.max_rate;
                if !rates_ok {
                    return bad(format!(
                        "the wave needs 0 <= --wave-min-rate <= --wave-max-rate and a max above 0, got {}..{}",
                        wave.min_rate, wave.max_rate
                    ));
                }
                if wave.max_rate > SAFE_RATE {
                    unsafe_reasons.push(format!(
                        "wave peak {} req/s is above {SAFE_RATE}",
                        wave.max_rate
                    ));
                }
                expected_open += wave.expected_arrivals(*duration_s);
            }
        }
    }
    if args.max_duration > SAFE_MAX_DURATION_S {
        unsafe_reasons.push(format!(
            "--max-duration {} s is above {SAFE_MAX_DURATION_S} s",
            args.max_duration
        ));
    }
    if args.max_requests > SAFE_MAX_REQUESTS {
        unsafe_reasons.push(format!(
            "--max-requests {} is above {SAFE_MAX_REQUESTS}",
            args.max_requests
        ));
    }
    if !unsafe_reasons.is_empty() && !args.i_know_what_i_am_doing {
        return Err(BenchError::Safety(format!(
            "{}; pass --i-know-what-i-am-doing if this endpoint is yours and sized for it",
            unsafe_reasons.join("; ")
        )));
    }
    if total_s > args.max_duration {
        return Err(BenchError::Safety(format!(
            "the levels need about {total_s:.0} s but --max-duration is {} s; shorten --duration/--wave-duration, drop levels, or raise --max-duration",
            args.max_duration
        )));
    }
    let expected_open_requests = expected_open.ceil() as u64 + u64::from(args.warmup);
    if expected_open_requests > args.max_requests {
        return Err(BenchError::Safety(format!(
            "the open-loop levels would send about {expected_open_requests} requests but --max-requests is {}; lower the rates or durations, or raise --max-requests",
            args.max_requests
        )));
    }
    Ok(())
}

fn mix_from_args(args: &BenchArgs) -> Result<Mix, BenchError> {
    match &args.mix {
        Some(p) => Mix::from_file(p),
        None => Ok(Mix::single(MixEntry {
            size: args.size.clone(),
            steps: args.steps,
            n: args.n,
            weight: 1.0,
            prompt: args.prompt.clone(),
            guidance_scale: args.guidance_scale,
            scheduler: args.scheduler.clone(),
        })),
    }
}

fn progress_bar(args: &BenchArgs, total_s: f64) -> ProgressBar {
    if args.no_progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(
        Some(total_s.ceil().max(1.0) as u64),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len}s {msg}")
    {
        pb.set_style(style);
    }
    pb
}

/// Runs the benchmark described by `args`, writes its outputs under
/// `args.out`, and returns the result. Callable from tests: point `--url`
/// at a server and keep `--duration` short.
pub fn bench(args: &BenchArgs) -> Result<BenchOutput, BenchError> {
    let mix = mix_from_args(args)?;
    let levels = plan_levels(args);
    validate(args, &levels, &mix)?;
    std::fs::create_dir_all(&args.out).map_err(|source| BenchError::Io {
        path: args.out.display().to_string(),
        source,
    })?;

    let client = Client::new(&args.url, dur(args.timeout), args.max_in_flight.min(1024));
    let started_at = now_rfc3339();
    let run_start = Instant::now();
    let run_deadline = after(run_start, args.max_duration);
    let remaining = AtomicI64::new(i64::try_from(args.max_requests).unwrap_or(i64::MAX));
    let mut notes = Vec::new();

    // Who are we talking to?
    let info = client.info().ok();
    let info_field = |k: &str| info.as_ref().and_then(|i| i.get(k)).cloned();
    let target = Target {
        url: args.url.clone(),
        model: info_field("model"),
        accelerator: info_field("accelerator"),
    };
    if info.is_none() {
        notes.push("GET /info did not answer with JSON; model and accelerator unknown".into());
    }
    let accelerator = args.accelerator.clone().or_else(|| {
        target.accelerator.as_ref().and_then(|a| match a {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => ["kind", "name", "type"]
                .iter()
                .find_map(|k| o.get(*k).and_then(|v| v.as_str()).map(str::to_string)),
            _ => None,
        })
    });

    // Warm-up: not measured, but a dead server fails here, clearly.
    let warm_clock = Instant::now();
    let mut warm_failures = Vec::new();
    for i in 0..args.warmup {
        remaining.fetch_sub(1, Ordering::SeqCst);
        let entry = &mix.requests[0];
        let o = client.generate(&entry.body(u64::from(i)), entry.n, 0, 0.0, warm_clock);
        if !o.status.is_success() {
            warm_failures.push(o.status.key());
        }
    }
    if args.warmup > 0 && warm_failures.len() == args.warmup as usize {
        if warm_failures
            .iter()
            .all(|k| k == "transport" || k == "timeout")
        {
            return Err(BenchError::Unreachable {
                url: args.url.clone(),
                message: format!(
                    "{} warm-up request(s) got no HTTP answer ({})",
                    args.warmup,
                    warm_failures.join(", ")
                ),
            });
        }
        notes.push(format!(
            "every warm-up request failed ({}); measuring anyway",
            warm_failures.join(", ")
        ));
    }

    let total_s: f64 = levels.iter().map(|l| l.duration_s() + args.pause).sum();
    let pb = progress_bar(args, total_s);
    let completed = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let ctx = Ctx {
        client: &client,
        mix: &mix,
        seed: args.seed,
        honor_retry_after: !args.no_retry_after,
        max_retry_wait: dur(args.max_retry_wait),
        max_in_flight: args.max_in_flight,
        remaining: &remaining,
        run_deadline,
        completed: &completed,
        failed: &failed,
    };
    let scrape = |notes: &mut Vec<String>| -> Option<ServerCounters> {
        if args.no_metrics {
            return None;
        }
        match client.scrape(
            args.metrics_url.as_deref(),
            Some(args.metrics_endpoint.as_str()).filter(|s| !s.is_empty()),
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                notes.push(format!("metrics scrape failed: {e}"));
                None
            }
        }
    };

    let done = AtomicBool::new(false);
    let current = std::sync::Mutex::new(String::new());
    let mut results = Vec::new();
    std::thread::scope(|s| {
        // Progress: time through the planned run, and request counts.
        let ticker = {
            let pb = &pb;
            let done = &done;
            let current = &current;
            let completed = &completed;
            let failed = &failed;
            std::thread::Builder::new()
                .name("bench-progress".into())
                .spawn_scoped(s, move || {
                    while !done.load(Ordering::SeqCst) {
                        pb.set_position(run_start.elapsed().as_secs().min(total_s.ceil() as u64));
                        let label = current.lock().map(|g| g.clone()).unwrap_or_default();
                        pb.set_message(format!(
                            "{label} | answered {} failed {}",
                            completed.load(Ordering::Relaxed),
                            failed.load(Ordering::Relaxed)
                        ));
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
        };
        if ticker.is_err() {
            pb.set_draw_target(ProgressDrawTarget::hidden());
        }

        for (i, load) in levels.iter().enumerate() {
            if Instant::now() >= run_deadline {
                notes.push(format!(
                    "{} and later levels skipped: --max-duration reached",
                    load.label()
                ));
                break;
            }
            if remaining.load(Ordering::SeqCst) <= 0 {
                notes.push(format!(
                    "{} and later levels skipped: --max-requests reached",
                    load.label()
                ));
                break;
            }
            if let Ok(mut g) = current.lock() {
                *g = format!("[{}/{}] {}", i + 1, levels.len(), load.label());
            }
            let before = scrape(&mut notes);
            let LevelRun {
                outcomes,
                window_s,
                stopped_early,
            } = match load {
                Load::Closed {
                    concurrency,
                    duration_s,
                } => run_closed(&ctx, i, *concurrency, *duration_s),
                Load::Open { rate, duration_s } => {
                    let sched = poisson_schedule(*rate, *duration_s, level_seed(args.seed, i));
                    run_open(&ctx, i, &sched, *duration_s)
                }
                Load::Wave {
                    wave, duration_s, ..
                } => {
                    let sched = wave.schedule(*duration_s, level_seed(args.seed, i));
                    run_open(&ctx, i, &sched, *duration_s)
                }
            };
            if before.is_some() && args.metrics_settle > 0.0 {
                std::thread::sleep(dur(args.metrics_settle));
            }
            let after = if before.is_some() {
                scrape(&mut notes)
            } else {
                None
            };
            let mut level = LevelResult::from_outcomes(
                load.clone(),
                &outcomes,
                window_s,
                args.slo_p95,
                args.max_error_rate,
            );
            level.stopped_early = stopped_early;
            if let (Some(b), Some(a)) = (&before, &after) {
                if !a.has_requests_metric {
                    notes.push(format!(
                        "{}: /metrics has no {} series",
                        level.label,
                        anyaccel_metrics::REQUESTS_TOTAL
                    ));
                }
                level.server = Some(b.delta_to(a));
            }
            results.push(level);
            if i + 1 < levels.len() && args.pause > 0.0 {
                std::thread::sleep(dur(args.pause));
            }
        }
        done.store(true, Ordering::SeqCst);
    });
    pb.finish_and_clear();

    for l in &results {
        if let Some(srv) = &l.server {
            let sent = l.sent() as f64;
            if (srv.requests - sent).abs() > 0.5 || (srv.images - l.images as f64).abs() > 0.5 {
                notes.push(format!(
                    "{}: the server counted {} requests and {} images, the client sent {} and received {} (other traffic, several replicas behind the URL, or a metrics filter?)",
                    l.label, srv.requests, srv.images, sent, l.images
                ));
            }
        }
    }

    let mut seen = std::collections::HashSet::new();
    notes.retain(|n| seen.insert(n.clone()));

    let mut result = BenchResult {
        format_version: FORMAT_VERSION,
        tool: ToolInfo::default(),
        started_at,
        finished_at: now_rfc3339(),
        target,
        tags: Tags {
            pool: args.pool.clone(),
            instance_type: args.instance_type.clone(),
            accelerator,
            replicas: args.replicas,
        },
        settings: Settings {
            slo_p95_s: args.slo_p95,
            max_error_rate: args.max_error_rate,
            seed: args.seed,
            request_timeout_s: args.timeout,
            honor_retry_after: !args.no_retry_after,
            max_in_flight: args.max_in_flight,
            max_requests: args.max_requests,
            max_duration_s: args.max_duration,
            mix,
        },
        levels: results,
        breaking_point: None,
        notes,
    };
    result.compute_breaking_point();

    let json = args.out.join("result.json");
    result.write(&json)?;
    let markdown = args.out.join("result.md");
    let md = crate::report::bench_markdown(&result);
    std::fs::write(&markdown, &md).map_err(|source| BenchError::Io {
        path: markdown.display().to_string(),
        source,
    })?;
    let mut plots = Vec::new();
    if !args.no_plots {
        let p = args.out.join("latency-throughput.png");
        if crate::plot::latency_throughput(&result, &p)? {
            plots.push(p);
        }
        for (i, l) in result.levels.iter().enumerate() {
            if !l.timeseries.is_empty() {
                let name = if i + 1 == result.levels.len() {
                    "wave.png".to_string()
                } else {
                    format!("wave-{i}.png")
                };
                let p = args.out.join(name);
                crate::plot::wave_timeseries(&result, l, &p)?;
                plots.push(p);
            }
        }
    }
    Ok(BenchOutput {
        result,
        json,
        markdown,
        plots,
    })
}

fn level_seed(seed: u64, level: usize) -> u64 {
    let mut r = crate::rng::SplitMix64::new(seed ^ (level as u64).wrapping_mul(0x9E37_79B9));
    r.next_u64()
}

/// The `anyaccel bench` subcommand: runs, writes the outputs, prints the
/// Markdown table (unless `--quiet`) and where the files are.
pub fn run_bench(args: &BenchArgs) -> Result<(), BenchError> {
    let out = bench(args)?;
    if !args.quiet {
        println!("{}", crate::report::bench_markdown(&out.result));
    }
    eprintln!("wrote {}", out.json.display());
    eprintln!("wrote {}", out.markdown.display());
    for p in &out.plots {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> BenchArgs {
        let mut v = vec!["bench", "--url", "http://127.0.0.1:9"];
        v.extend_from_slice(extra);
        BenchArgs::try_parse_from(v).unwrap()
    }

    fn check(args: &BenchArgs) -> Result<(), BenchError> {
        let mix = mix_from_args(args)?;
        validate(args, &plan_levels(args), &mix)
    }

    #[test]
    fn default_levels_are_a_closed_loop_sweep() {
        let a = parse(&[]);
        let l = plan_levels(&a);
        assert_eq!(l.len(), 4);
        assert_eq!(l[3].label(), "closed c=8");
        let a = parse(&[
            "--rate",
            "0.5,1",
            "--wave",
            "cosine",
            "--wave-duration",
            "60",
        ]);
        let l = plan_levels(&a);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].label(), "open 0.5 req/s");
        assert!(matches!(l[2], Load::Wave { bucket_s, .. } if (bucket_s - 1.0).abs() < 1e-12));
    }

    #[test]
    fn high_rates_need_the_explicit_flag() {
        let a = parse(&["--rate", "50", "--duration", "10"]);
        let e = check(&a).unwrap_err();
        assert!(matches!(e, BenchError::Safety(_)));
        assert!(e.to_string().contains("--i-know-what-i-am-doing"), "{e}");
        let a = parse(&[
            "--rate",
            "50",
            "--duration",
            "10",
            "--i-know-what-i-am-doing",
        ]);
        check(&a).unwrap();
        let a = parse(&["--concurrency", "100"]);
        assert!(matches!(check(&a), Err(BenchError::Safety(_))));
        let a = parse(&["--wave", "sine", "--wave-max-rate", "30"]);
        assert!(matches!(check(&a), Err(BenchError::Safety(_))));
    }

    #[test]
    fn runs_are_bounded() {
        // 4 levels x 30 s is more than 60 s.
        let a = parse(&["--max-duration", "60"]);
        let e = check(&a).unwrap_err();
        assert!(e.to_string().contains("--max-duration"), "{e}");
        // 10 req/s for 30 s is ~300 requests.
        let a = parse(&["--rate", "10", "--max-requests", "100"]);
        let e = check(&a).unwrap_err();
        assert!(e.to_string().contains("--max-requests"), "{e}");
        // Even the explicit flag does not lift the caps themselves.
        let a = parse(&[
            "--rate",
            "10",
            "--max-requests",
            "100",
            "--i-know-what-i-am-doing",
        ]);
        assert!(check(&a).is_err());
    }

    #[test]
    fn bad_arguments_are_named() {
        for (extra, word) in [
            (&["--duration", "0"][..], "--duration"),
            (&["--slo=-1"][..], "--slo"),
            (&["--rate", "0"][..], "--rate"),
            (&["--concurrency", "0"][..], "--concurrency"),
            (&["--size", "big"][..], "size"),
            (&["--max-error-rate", "2"][..], "--max-error-rate"),
            (
                &[
                    "--wave",
                    "sine",
                    "--wave-min-rate",
                    "3",
                    "--wave-max-rate",
                    "1",
                ][..],
                "wave",
            ),
        ] {
            let e = check(&parse(extra)).unwrap_err();
            assert!(e.to_string().contains(word), "{extra:?}: {e}");
        }
        let mut a = parse(&[]);
        a.url = "127.0.0.1:8080".into();
        assert!(check(&a).unwrap_err().to_string().contains("http://"));
    }
}
