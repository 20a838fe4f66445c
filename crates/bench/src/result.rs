//! The bench result file: what a run measured, in a versioned JSON format
//! that `anyaccel plan` reads back.

use crate::BenchError;
use crate::client::{Outcome, ServerDelta, Status};
use crate::mix::Mix;
use crate::schedule::Wave;
use crate::stats::{LatencySummary, LevelPoint, breaking_point};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Bumped whenever a field changes meaning or disappears; `plan` refuses
/// other versions rather than misreading them.
pub const FORMAT_VERSION: u32 = 1;
pub const TOOL_NAME: &str = "anyaccel-bench";
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

impl Default for ToolInfo {
    fn default() -> Self {
        Self {
            name: TOOL_NAME.into(),
            version: TOOL_VERSION.into(),
        }
    }
}

/// Who was measured: given by flags (`--pool`, `--instance-type`,
/// `--accelerator`, `--replicas`), the accelerator defaulting to `/info`'s.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tags {
    pub pool: Option<String>,
    pub instance_type: Option<String>,
    pub accelerator: Option<String>,
    /// Replicas behind the URL during the run; plan divides by it.
    pub replicas: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub url: String,
    /// `/info`'s `model`, if the server answered.
    pub model: Option<serde_json::Value>,
    /// `/info`'s `accelerator`, if the server answered.
    pub accelerator: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub slo_p95_s: f64,
    pub max_error_rate: f64,
    pub seed: u64,
    pub request_timeout_s: f64,
    pub honor_retry_after: bool,
    pub max_in_flight: usize,
    pub max_requests: u64,
    pub max_duration_s: f64,
    pub mix: Mix,
}

/// The load one level applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Load {
    /// `concurrency` clients, each sending its next request when the last
    /// one is answered.
    Closed { concurrency: usize, duration_s: f64 },
    /// Poisson arrivals at `rate` requests per second.
    Open { rate: f64, duration_s: f64 },
    /// Poisson arrivals whose rate follows a wave.
    Wave {
        #[serde(flatten)]
        wave: Wave,
        duration_s: f64,
        bucket_s: f64,
    },
}

impl Load {
    pub fn label(&self) -> String {
        match self {
            Load::Closed { concurrency, .. } => format!("closed c={concurrency}"),
            Load::Open { rate, .. } => format!("open {} req/s", fmt_num(*rate)),
            Load::Wave { wave, .. } => format!(
                "wave {} {}-{} req/s",
                match wave.shape {
                    crate::schedule::WaveShape::Sine => "sine",
                    crate::schedule::WaveShape::Cosine => "cosine",
                },
                fmt_num(wave.min_rate),
                fmt_num(wave.max_rate)
            ),
        }
    }

    pub fn duration_s(&self) -> f64 {
        match self {
            Load::Closed { duration_s, .. }
            | Load::Open { duration_s, .. }
            | Load::Wave { duration_s, .. } => *duration_s,
        }
    }
}

/// Trims a float for labels: `2`, `0.5`, `1.25`.
pub fn fmt_num(x: f64) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// One time bucket of a wave run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub t_start_s: f64,
    pub t_end_s: f64,
    /// The wave's mean rate over the bucket, requests per second.
    pub offered_rate: f64,
    /// Requests due in the bucket.
    pub requests: u64,
    /// Of those, answered with success.
    pub ok: u64,
    pub errors: u64,
    /// Images completed in the bucket, per second.
    pub throughput_images_per_s: f64,
    /// Latency of successful requests due in the bucket.
    pub p50_s: Option<f64>,
    pub p95_s: Option<f64>,
}

/// Everything measured at one load level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelResult {
    pub label: String,
    pub load: Load,
    /// Seconds from the level's start to its last answer.
    pub elapsed_s: f64,
    /// Requests the load called for (sent, plus any the client could not send).
    pub requests: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Images received.
    pub images: u64,
    /// 2xx answers with fewer images than asked for.
    pub incomplete: u64,
    /// Failed requests by HTTP status (`"429"`) or `transport`, `timeout`,
    /// `client_overflow`.
    pub errors_by_status: BTreeMap<String, u64>,
    pub error_rate: f64,
    pub throughput_images_per_s: f64,
    pub throughput_requests_per_s: f64,
    /// Successful requests' latency from when each was due, seconds.
    pub latency_s: Option<LatencySummary>,
    /// Successful requests' latency from when each was actually sent.
    pub service_latency_s: Option<LatencySummary>,
    /// The server's `x-queue-time` and `x-inference-time` headers.
    pub server_queue_time_s: Option<LatencySummary>,
    pub server_inference_time_s: Option<LatencySummary>,
    /// Largest `Retry-After` seen, seconds.
    pub max_retry_after_s: Option<f64>,
    pub meets_slo: bool,
    /// What the server's `/metrics` counted during the level.
    pub server: Option<ServerDelta>,
    /// Why the level ended before its duration (request or time cap).
    pub stopped_early: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeseries: Vec<Bucket>,
}

impl LevelResult {
    /// Summarises a level's outcomes. `window_s` is when the load stopped
    /// issuing requests (its duration, or earlier when a cap was reached);
    /// throughput is measured over that window or until the last answer,
    /// whichever is later.
    pub fn from_outcomes(
        load: Load,
        outcomes: &[Outcome],
        window_s: f64,
        slo_p95: f64,
        max_error_rate: f64,
    ) -> Self {
        let planned_s = load.duration_s();
        let last_done = outcomes.iter().map(|o| o.done).fold(0.0, f64::max);
        let elapsed_s = last_done.max(window_s);
        let elapsed_s = if elapsed_s > 0.0 { elapsed_s } else { 1.0 };
        let mut errors = BTreeMap::new();
        let (mut ok, mut images, mut incomplete) = (0u64, 0u64, 0u64);
        let mut lat = Vec::new();
        let mut service = Vec::new();
        let mut queue = Vec::new();
        let mut inference = Vec::new();
        let mut max_retry: Option<f64> = None;
        for o in outcomes {
            if let Some(r) = o.retry_after {
                max_retry = Some(max_retry.map_or(r, |m: f64| m.max(r)));
            }
            if o.status.is_success() {
                ok += 1;
                images += u64::from(o.images);
                if o.images < o.requested_images {
                    incomplete += 1;
                }
                lat.push(o.latency());
                service.push(o.done - o.sent);
                queue.extend(o.queue_time);
                inference.extend(o.inference_time);
            } else {
                *errors.entry(o.status.key()).or_insert(0) += 1;
            }
        }
        let requests = outcomes.len() as u64;
        let failed = requests - ok;
        let error_rate = if requests > 0 {
            failed as f64 / requests as f64
        } else {
            0.0
        };
        let latency_s = LatencySummary::from_values(&lat);
        let throughput_images_per_s = images as f64 / elapsed_s;
        let point = LevelPoint {
            throughput: throughput_images_per_s,
            p95: latency_s.map(|l| l.p95),
            error_rate,
        };
        let timeseries = match &load {
            Load::Wave { wave, bucket_s, .. } => buckets(wave, planned_s, *bucket_s, outcomes),
            _ => Vec::new(),
        };
        Self {
            label: load.label(),
            load,
            elapsed_s,
            requests,
            ok,
            images,
            incomplete,
            errors_by_status: errors,
            error_rate,
            throughput_images_per_s,
            throughput_requests_per_s: ok as f64 / elapsed_s,
            latency_s,
            service_latency_s: LatencySummary::from_values(&service),
            server_queue_time_s: LatencySummary::from_values(&queue),
            server_inference_time_s: LatencySummary::from_values(&inference),
            max_retry_after_s: max_retry,
            meets_slo: point.meets(slo_p95, max_error_rate),
            server: None,
            stopped_early: None,
            timeseries,
        }
    }

    pub fn point(&self) -> LevelPoint {
        LevelPoint {
            throughput: self.throughput_images_per_s,
            p95: self.latency_s.map(|l| l.p95),
            error_rate: self.error_rate,
        }
    }

    /// Requests that actually reached the wire (the server can count these).
    pub fn sent(&self) -> u64 {
        self.requests
            - self
                .errors_by_status
                .get(&Status::ClientOverflow.key())
                .copied()
                .unwrap_or(0)
    }
}

fn buckets(wave: &Wave, duration: f64, bucket_s: f64, outcomes: &[Outcome]) -> Vec<Bucket> {
    if !(bucket_s > 0.0 && duration > 0.0) {
        return Vec::new();
    }
    let n = (duration / bucket_s).ceil() as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = i as f64 * bucket_s;
        let t1 = ((i + 1) as f64 * bucket_s).min(duration);
        let width = t1 - t0;
        // Mean offered rate by the midpoint rule on a fine grid.
        let steps = 16;
        let offered_rate = (0..steps)
            .map(|k| wave.rate_at(t0 + width * (k as f64 + 0.5) / steps as f64))
            .sum::<f64>()
            / steps as f64;
        let due: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.intended >= t0 && o.intended < t1)
            .collect();
        let ok_lat: Vec<f64> = due
            .iter()
            .filter(|o| o.status.is_success())
            .map(|o| o.latency())
            .collect();
        let done_images: u64 = outcomes
            .iter()
            .filter(|o| o.status.is_success() && o.done >= t0 && o.done < t1)
            .map(|o| u64::from(o.images))
            .sum();
        out.push(Bucket {
            t_start_s: t0,
            t_end_s: t1,
            offered_rate,
            requests: due.len() as u64,
            ok: ok_lat.len() as u64,
            errors: (due.len() - ok_lat.len()) as u64,
            throughput_images_per_s: if width > 0.0 {
                done_images as f64 / width
            } else {
                0.0
            },
            p50_s: crate::stats::percentile(&ok_lat, 0.5),
            p95_s: crate::stats::percentile(&ok_lat, 0.95),
        });
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakingPoint {
    /// Index into `levels`.
    pub level: usize,
    pub label: String,
    pub throughput_images_per_s: f64,
    pub p95_s: f64,
}

/// A whole `anyaccel bench` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub format_version: u32,
    pub tool: ToolInfo,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub target: Target,
    pub tags: Tags,
    pub settings: Settings,
    pub levels: Vec<LevelResult>,
    /// The highest-throughput level whose p95 met the SLO.
    pub breaking_point: Option<BreakingPoint>,
    /// Warnings: metrics unavailable, caps reached, disagreements.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl BenchResult {
    /// Recomputes the breaking point from the levels under the settings' SLO.
    /// Wave levels are left out: their throughput follows the offered wave,
    /// so it says how the server rode the wave, not what it sustains.
    pub fn compute_breaking_point(&mut self) {
        let points: Vec<LevelPoint> = self
            .levels
            .iter()
            .map(|l| match l.load {
                Load::Wave { .. } => LevelPoint {
                    throughput: 0.0,
                    p95: None,
                    error_rate: 1.0,
                },
                _ => l.point(),
            })
            .collect();
        let slo = self.settings.slo_p95_s;
        let max_err = self.settings.max_error_rate;
        for l in &mut self.levels {
            l.meets_slo = l.point().meets(slo, max_err);
        }
        self.breaking_point = breaking_point(&points, slo, max_err).and_then(|i| {
            let l = &self.levels[i];
            Some(BreakingPoint {
                level: i,
                label: l.label.clone(),
                throughput_images_per_s: l.throughput_images_per_s,
                p95_s: l.latency_s?.p95,
            })
        });
    }

    /// Reads a result file, refusing any other `format_version`.
    pub fn read(path: &Path) -> Result<Self, BenchError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
            path: p.clone(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| BenchError::Parse {
            path: p.clone(),
            message: e.to_string(),
        })?;
        let found = v.get("format_version").and_then(serde_json::Value::as_u64);
        if found != Some(u64::from(FORMAT_VERSION)) {
            return Err(BenchError::FormatVersion {
                path: p,
                found: found.map_or_else(|| "none".to_string(), |f| f.to_string()),
                expected: FORMAT_VERSION,
            });
        }
        serde_json::from_value(v).map_err(|e| BenchError::Parse {
            path: p,
            message: e.to_string(),
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), BenchError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| BenchError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|source| BenchError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

/// Formats a UNIX time (seconds) as RFC 3339 UTC, e.g. `2026-05-01T12:00:00Z`.
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(intended: f64, done: f64, status: u16, images: u32) -> Outcome {
        Outcome {
            intended,
            sent: intended,
            done,
            status: Status::Http(status),
            requested_images: 1,
            images,
            queue_time: Some(0.01),
            inference_time: Some(0.1),
            total_time: None,
            retry_after: if status == 429 { Some(2.0) } else { None },
            error_code: None,
            mix_index: 0,
        }
    }

    #[test]
    fn level_summary_counts_and_rates() {
        let mut outs: Vec<Outcome> = (0..9)
            .map(|i| outcome(f64::from(i), f64::from(i) + 0.5, 200, 1))
            .collect();
        outs.push(outcome(9.0, 9.01, 429, 0));
        let l = LevelResult::from_outcomes(
            Load::Closed {
                concurrency: 1,
                duration_s: 10.0,
            },
            &outs,
            10.0,
            1.0,
            0.2,
        );
        assert_eq!(l.requests, 10);
        assert_eq!(l.ok, 9);
        assert_eq!(l.images, 9);
        assert_eq!(l.errors_by_status.get("429"), Some(&1));
        assert!((l.error_rate - 0.1).abs() < 1e-12);
        // Last answer at 9.01 s: the level ran 10 s.
        assert!((l.elapsed_s - 10.0).abs() < 0.02, "{}", l.elapsed_s);
        assert!((l.throughput_images_per_s - 0.9).abs() < 0.01);
        assert!((l.latency_s.unwrap().p95 - 0.5).abs() < 1e-9);
        assert_eq!(l.max_retry_after_s, Some(2.0));
        assert!(l.meets_slo);
        assert_eq!(l.label, "closed c=1");
    }

    #[test]
    fn waves_do_not_set_the_breaking_point() {
        let steady: Vec<Outcome> = (0..10)
            .map(|i| outcome(f64::from(i), f64::from(i) + 0.2, 200, 1))
            .collect();
        let busy: Vec<Outcome> = (0..100)
            .map(|i| outcome(f64::from(i) / 10.0, f64::from(i) / 10.0 + 0.2, 200, 1))
            .collect();
        let closed = LevelResult::from_outcomes(
            Load::Closed {
                concurrency: 1,
                duration_s: 10.0,
            },
            &steady,
            10.0,
            1.0,
            0.0,
        );
        let wave = LevelResult::from_outcomes(
            Load::Wave {
                wave: Wave {
                    shape: crate::schedule::WaveShape::Sine,
                    min_rate: 1.0,
                    max_rate: 20.0,
                    period_s: 10.0,
                },
                duration_s: 10.0,
                bucket_s: 2.5,
            },
            &busy,
            10.0,
            1.0,
            0.0,
        );
        assert!(wave.throughput_images_per_s > closed.throughput_images_per_s);
        assert_eq!(wave.timeseries.len(), 4);
        let mut r = BenchResult {
            format_version: FORMAT_VERSION,
            tool: ToolInfo::default(),
            started_at: rfc3339(0),
            finished_at: rfc3339(1),
            target: Target {
                url: "http://x".into(),
                model: None,
                accelerator: None,
            },
            tags: Tags::default(),
            settings: Settings {
                slo_p95_s: 1.0,
                max_error_rate: 0.0,
                seed: 1,
                request_timeout_s: 1.0,
                honor_retry_after: true,
                max_in_flight: 1,
                max_requests: 1,
                max_duration_s: 1.0,
                mix: Mix::single(crate::mix::MixEntry {
                    size: "8x8".into(),
                    steps: 1,
                    n: 1,
                    weight: 1.0,
                    prompt: None,
                    guidance_scale: None,
                    scheduler: None,
                }),
            },
            levels: vec![wave, closed],
            breaking_point: None,
            notes: vec![],
        };
        r.compute_breaking_point();
        assert_eq!(r.breaking_point.as_ref().unwrap().level, 1);
        // The JSON round-trips (floats to within serde_json's parsing).
        let back: BenchResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.levels.len(), 2);
        assert_eq!(back.levels[0].load, r.levels[0].load);
        assert_eq!(back.levels[0].timeseries.len(), 4);
        assert_eq!(back.breaking_point.as_ref().unwrap().label, "closed c=1");
        let (a, b) = (
            back.levels[1].latency_s.unwrap(),
            r.levels[1].latency_s.unwrap(),
        );
        assert!((a.p95 - b.p95).abs() < 1e-12);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn labels() {
        assert_eq!(
            Load::Open {
                rate: 2.5,
                duration_s: 1.0
            }
            .label(),
            "open 2.5 req/s"
        );
        assert_eq!(fmt_num(4.0), "4");
        assert_eq!(fmt_num(0.125), "0.125");
    }
}
