//! CloudWatch publishing, off the request path.
//!
//! A sampler task reads the same gauges and counters `/metrics` serves every
//! interval and hands the datums to a bounded buffer; a publisher drains it,
//! either as Embedded Metric Format lines on stdout (the CloudWatch agent or
//! Fluent Bit ships them) or with `PutMetricData` calls in batches. Requests
//! never wait on CloudWatch: when it is slow or down, the buffer keeps the
//! newest datums and drops the oldest.

use std::collections::VecDeque;
use std::io::Write;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyaccel_metrics::cloudwatch as cw;
use serde_json::{Map, Value, json};

use crate::AppState;

/// How to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudWatchMode {
    Off,
    /// Embedded Metric Format JSON lines on stdout.
    Emf,
    /// `PutMetricData` through the AWS SDK.
    Api,
}

impl FromStr for CloudWatchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "emf" => Ok(Self::Emf),
            "api" => Ok(Self::Api),
            other => Err(format!(
                "unknown CloudWatch mode `{other}`; expected off, emf or api"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CloudWatchConfig {
    pub mode: CloudWatchMode,
    pub namespace: String,
    /// AWS region for the API (else the SDK's usual chain: env, profile, IMDS).
    pub region: Option<String>,
    /// Endpoint override (tests, VPC endpoints).
    pub endpoint: Option<String>,
    /// Sampling interval; one datum per metric per interval. Match the KEDA
    /// trigger's `metricStatPeriod` so a `Sum` over a period adds one sample per pod.
    pub interval: Duration,
    /// Datums held while CloudWatch is unreachable.
    pub buffer: usize,
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        Self {
            mode: CloudWatchMode::Off,
            namespace: cw::NAMESPACE.into(),
            region: None,
            endpoint: None,
            interval: Duration::from_secs(60),
            buffer: 10_000,
        }
    }
}

/// One sample of one metric.
#[derive(Debug, Clone, PartialEq)]
struct Datum {
    name: &'static str,
    value: f64,
    unit: &'static str,
    timestamp_ms: u64,
}

/// Newest-wins bounded queue.
struct Buffer {
    items: VecDeque<Datum>,
    capacity: usize,
    dropped: u64,
}

impl Buffer {
    fn push(&mut self, d: Datum) {
        if self.items.len() >= self.capacity {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(d);
    }
}

/// Starts the sampler and publisher on the current runtime.
pub fn spawn(state: AppState, config: CloudWatchConfig) {
    if config.mode == CloudWatchMode::Off {
        return;
    }
    let buffer = Arc::new(Mutex::new(Buffer {
        items: VecDeque::new(),
        capacity: config.buffer.max(1),
        dropped: 0,
    }));
    let dims = dimensions(&state);
    let sampler_buffer = buffer.clone();
    let interval = config.interval;
    tokio::spawn(async move {
        let mut last = state.metrics.totals();
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = state.metrics.totals();
            let stats = state.batcher.stats();
            let ts = now_ms();
            let requests = now.requests.saturating_sub(last.requests);
            let latency = if requests > 0 {
                (now.latency_seconds - last.latency_seconds) / requests as f64
            } else {
                0.0
            };
            let samples = [
                (cw::BACKLOG_SECONDS, stats.backlog_seconds(), "Seconds"),
                (cw::QUEUE_DEPTH, stats.queued as f64, "Count"),
                (
                    cw::IN_FLIGHT,
                    (stats.queued + stats.running) as f64,
                    "Count",
                ),
                (cw::REQUESTS, requests as f64, "Count"),
                (
                    cw::IMAGES,
                    now.images.saturating_sub(last.images) as f64,
                    "Count",
                ),
                (cw::REQUEST_LATENCY, latency, "Seconds"),
            ];
            last = now;
            let mut b = sampler_buffer.lock().unwrap_or_else(|p| p.into_inner());
            for (name, value, unit) in samples {
                b.push(Datum {
                    name,
                    value,
                    unit,
                    timestamp_ms: ts,
                });
            }
        }
    });
    match config.mode {
        CloudWatchMode::Emf => {
            tokio::spawn(emf_loop(buffer, config, dims));
        }
        CloudWatchMode::Api => {
            tokio::spawn(api_loop(buffer, config, dims));
        }
        CloudWatchMode::Off => {}
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn dimensions(state: &AppState) -> Vec<(&'static str, String)> {
    vec![
        (cw::DIM_POOL, state.config.pool.clone()),
        (cw::DIM_ACCELERATOR, state.config.accelerator.clone()),
        (cw::DIM_MODEL, state.pipeline().model().id.clone()),
    ]
}

fn take_all(buffer: &Mutex<Buffer>) -> (Vec<Datum>, u64) {
    let mut b = buffer.lock().unwrap_or_else(|p| p.into_inner());
    let dropped = std::mem::take(&mut b.dropped);
    (b.items.drain(..).collect(), dropped)
}

/// One EMF document per timestamp: every metric of a sample shares the dimensions.
fn emf_lines(namespace: &str, dims: &[(&'static str, String)], datums: &[Datum]) -> Vec<String> {
    let mut by_ts: Vec<(u64, Vec<&Datum>)> = Vec::new();
    for d in datums {
        match by_ts.iter_mut().find(|(t, _)| *t == d.timestamp_ms) {
            Some((_, v)) => v.push(d),
            None => by_ts.push((d.timestamp_ms, vec![d])),
        }
    }
    by_ts
        .into_iter()
        .map(|(ts, ds)| {
            let mut doc = Map::new();
            let metrics: Vec<Value> = ds
                .iter()
                .map(|d| json!({"Name": d.name, "Unit": d.unit}))
                .collect();
            doc.insert(
                "_aws".into(),
                json!({
                    "Timestamp": ts,
                    "CloudWatchMetrics": [{
                        "Namespace": namespace,
                        "Dimensions": [dims.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                        "Metrics": metrics,
                    }],
                }),
            );
            for (k, v) in dims {
                doc.insert((*k).into(), Value::String(v.clone()));
            }
            for d in ds {
                doc.insert(d.name.into(), json!(d.value));
            }
            Value::Object(doc).to_string()
        })
        .collect()
}

async fn emf_loop(
    buffer: Arc<Mutex<Buffer>>,
    config: CloudWatchConfig,
    dims: Vec<(&'static str, String)>,
) {
    let mut tick = tokio::time::interval(config.interval.min(Duration::from_secs(1)));
    loop {
        tick.tick().await;
        let (datums, dropped) = take_all(&buffer);
        if dropped > 0 {
            tracing::warn!(dropped, "CloudWatch EMF buffer overflowed");
        }
        if datums.is_empty() {
            continue;
        }
        let lines = emf_lines(&config.namespace, &dims, &datums);
        // Blocking stdout writes stay off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            let _ = out.flush();
        })
        .await;
    }
}

/// PutMetricData accepts up to 1000 datums per call.
const API_BATCH: usize = 1000;

async fn api_loop(
    buffer: Arc<Mutex<Buffer>>,
    config: CloudWatchConfig,
    dims: Vec<(&'static str, String)>,
) {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &config.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(e) = &config.endpoint {
        loader = loader.endpoint_url(e.clone());
    }
    let client = aws_sdk_cloudwatch::Client::new(&loader.load().await);
    let dimensions: Vec<Dimension> = dims
        .iter()
        .map(|(k, v)| Dimension::builder().name(*k).value(v.clone()).build())
        .collect();
    let mut tick = tokio::time::interval(config.interval.min(Duration::from_secs(5)));
    let mut failures: u64 = 0;
    loop {
        tick.tick().await;
        let (datums, dropped) = take_all(&buffer);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "CloudWatch buffer overflowed while the API was unreachable"
            );
        }
        for (i, chunk) in datums.chunks(API_BATCH).enumerate() {
            let metric_data: Vec<MetricDatum> = chunk
                .iter()
                .map(|d| {
                    MetricDatum::builder()
                        .metric_name(d.name)
                        .set_dimensions(Some(dimensions.clone()))
                        .value(d.value)
                        .unit(StandardUnit::from(d.unit))
                        .timestamp(DateTime::from_millis(d.timestamp_ms as i64))
                        .build()
                })
                .collect();
            let call = client
                .put_metric_data()
                .namespace(&config.namespace)
                .set_metric_data(Some(metric_data))
                .send();
            match tokio::time::timeout(Duration::from_secs(10), call).await {
                Ok(Ok(_)) => {
                    if failures > 0 {
                        tracing::info!(after = failures, "PutMetricData works again");
                    }
                    failures = 0;
                }
                outcome => {
                    failures += 1;
                    let why = match outcome {
                        Ok(Err(e)) => aws_sdk_cloudwatch::error::DisplayErrorContext(e).to_string(),
                        _ => "timed out".into(),
                    };
                    // One line per outage, then every hundredth failure.
                    if failures == 1 || failures.is_multiple_of(100) {
                        tracing::warn!(error = %why, failures, "PutMetricData failed; keeping the datums for the next attempt");
                    }
                    let mut b = buffer.lock().unwrap_or_else(|p| p.into_inner());
                    // Requeue this chunk and the ones after it, ahead of newer samples.
                    for d in datums[i * API_BATCH..].iter().rev() {
                        if b.items.len() >= b.capacity {
                            b.dropped += 1;
                            continue;
                        }
                        b.items.push_front(d.clone());
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_keeps_the_newest() {
        let mut b = Buffer {
            items: VecDeque::new(),
            capacity: 2,
            dropped: 0,
        };
        for i in 0..5 {
            b.push(Datum {
                name: "x",
                value: i as f64,
                unit: "Count",
                timestamp_ms: i,
            });
        }
        assert_eq!(
            b.items.iter().map(|d| d.value).collect::<Vec<_>>(),
            vec![3.0, 4.0]
        );
        assert_eq!(b.dropped, 3);
    }

    #[test]
    fn emf_groups_a_sample_into_one_document() {
        let dims = vec![(cw::DIM_POOL, "g5".to_string())];
        let d = |name, ts| Datum {
            name,
            value: 1.5,
            unit: "Seconds",
            timestamp_ms: ts,
        };
        let lines = emf_lines(
            "anyaccel",
            &dims,
            &[
                d(cw::BACKLOG_SECONDS, 7),
                d(cw::QUEUE_DEPTH, 7),
                d(cw::BACKLOG_SECONDS, 8),
            ],
        );
        assert_eq!(lines.len(), 2);
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(v["Pool"], "g5");
        assert_eq!(v[cw::BACKLOG_SECONDS], 1.5);
    }
}
