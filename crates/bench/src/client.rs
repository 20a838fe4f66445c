//! The HTTP side: one generation request, `/metrics` scrapes and `/info`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

/// Largest response body read (base64 images are big; this bounds memory).
const MAX_BODY_BYTES: u64 = 512 * 1024 * 1024;

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// An HTTP response with this status code.
    Http(u16),
    /// No HTTP response: connection refused, reset, DNS, TLS…
    Transport,
    /// No response within the request timeout.
    Timeout,
    /// Not sent: the client's in-flight cap was reached (open loop only).
    ClientOverflow,
}

impl Status {
    /// The key used in `errors_by_status`: the code, or a word.
    pub fn key(&self) -> String {
        match self {
            Status::Http(c) => c.to_string(),
            Status::Transport => "transport".into(),
            Status::Timeout => "timeout".into(),
            Status::ClientOverflow => "client_overflow".into(),
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Status::Http(200..=299))
    }
}

/// One request as measured by the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Seconds from the level's start at which the request was due.
    pub intended: f64,
    /// Seconds from the level's start at which it was sent.
    pub sent: f64,
    /// Seconds from the level's start at which its body was fully read.
    pub done: f64,
    pub status: Status,
    /// Images asked for.
    pub requested_images: u32,
    /// Images in a successful response's `data`.
    pub images: u32,
    pub queue_time: Option<f64>,
    pub inference_time: Option<f64>,
    pub total_time: Option<f64>,
    /// `Retry-After` of a 429/503, seconds.
    pub retry_after: Option<f64>,
    /// `error.code` of an error body, when it has one.
    pub error_code: Option<String>,
    /// Index into the mix.
    pub mix_index: usize,
}

impl Outcome {
    /// Latency from when the request was due, so a client that falls behind
    /// does not hide queueing (coordinated omission).
    pub fn latency(&self) -> f64 {
        self.done - self.intended
    }
}

/// A blocking HTTP client shared by all load threads.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    pub fn new(base_url: &str, timeout: Duration, max_connections: usize) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .timeout_connect(timeout.min(Duration::from_secs(10)))
            .max_idle_connections(max_connections.max(8))
            .max_idle_connections_per_host(max_connections.max(8))
            .build();
        Self {
            agent,
            base: base_url.trim_end_matches('/').to_string(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends one `POST /v1/images/generations` and reads the whole answer.
    /// `clock` is the level's start; the outcome's times are offsets from it.
    pub fn generate(
        &self,
        body: &serde_json::Value,
        requested_images: u32,
        mix_index: usize,
        intended: f64,
        clock: Instant,
    ) -> Outcome {
        let sent = clock.elapsed().as_secs_f64();
        let text = body.to_string();
        let res = self
            .agent
            .post(&self.url("/v1/images/generations"))
            .set("content-type", "application/json")
            .set("accept", "application/json")
            .send_string(&text);
        let mut out = Outcome {
            intended,
            sent,
            done: sent,
            status: Status::Transport,
            requested_images,
            images: 0,
            queue_time: None,
            inference_time: None,
            total_time: None,
            retry_after: None,
            error_code: None,
            mix_index,
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                out.status = if is_timeout(&t) {
                    Status::Timeout
                } else {
                    Status::Transport
                };
                out.done = clock.elapsed().as_secs_f64();
                return out;
            }
        };
        let code = resp.status();
        out.queue_time = header_secs(&resp, "x-queue-time");
        out.inference_time = header_secs(&resp, "x-inference-time");
        out.total_time = header_secs(&resp, "x-total-time");
        out.retry_after = header_secs(&resp, "retry-after");
        let mut buf = Vec::new();
        let read = resp
            .into_reader()
            .take(MAX_BODY_BYTES)
            .read_to_end(&mut buf);
        out.done = clock.elapsed().as_secs_f64();
        if let Err(e) = read {
            out.status = if e.kind() == std::io::ErrorKind::TimedOut
                || e.kind() == std::io::ErrorKind::WouldBlock
            {
                Status::Timeout
            } else {
                Status::Transport
            };
            return out;
        }
        out.status = Status::Http(code);
        if (200..300).contains(&code) {
            out.images = count_images(&buf);
        } else {
            out.error_code = error_code(&buf);
        }
        out
    }

    /// `GET /metrics` and sum the counters a run is checked against.
    pub fn scrape(
        &self,
        metrics_url: Option<&str>,
        endpoint_filter: Option<&str>,
    ) -> Result<ServerCounters, String> {
        let url = metrics_url.map_or_else(|| self.url("/metrics"), str::to_string);
        let text = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?
            .into_string()
            .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
        Ok(ServerCounters::from_exposition(&text, endpoint_filter))
    }

    /// `GET /info` as JSON, if the server answers it.
    pub fn info(&self) -> Result<serde_json::Value, String> {
        let url = self.url("/info");
        let text = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?
            .into_string()
            .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("GET {url}: not JSON: {e}"))
    }
}

fn is_timeout(t: &ureq::Transport) -> bool {
    use std::error::Error;
    let mut src: Option<&(dyn Error + 'static)> = t.source();
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            )
        {
            return true;
        }
        src = e.source();
    }
    t.to_string().contains("timed out")
}

fn header_secs(resp: &ureq::Response, name: &str) -> Option<f64> {
    resp.header(name)
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// Images in an OpenAI-style response: entries of `data` that carry an image.
fn count_images(body: &[u8]) -> u32 {
    #[derive(Deserialize)]
    struct Resp {
        #[serde(default)]
        data: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        #[serde(default)]
        b64_json: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        url: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Resp>(body) {
        Ok(r) => r
            .data
            .iter()
            .filter(|i| i.b64_json.is_some() || i.url.is_some())
            .count() as u32,
        Err(_) => 0,
    }
}

fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("error")?.get("code")?.as_str().map(str::to_string)
}

/// Server-side counters from one `/metrics` scrape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerCounters {
    /// Sum of `anyaccel_requests_total` over the matching series.
    pub requests: f64,
    /// The same, by the `status` label.
    pub requests_by_status: BTreeMap<String, f64>,
    /// Sum of `anyaccel_images_generated_total`.
    pub images: f64,
    /// Whether the exposition had the request counter at all.
    pub has_requests_metric: bool,
    pub has_images_metric: bool,
}

impl ServerCounters {
    /// Reads the Prometheus text exposition. With `endpoint_filter`, only
    /// request series whose `endpoint` label contains it are summed.
    pub fn from_exposition(text: &str, endpoint_filter: Option<&str>) -> Self {
        let mut c = ServerCounters::default();
        for s in parse_exposition(text) {
            if s.name == anyaccel_metrics::REQUESTS_TOTAL {
                c.has_requests_metric = true;
                if let Some(f) = endpoint_filter
                    && !s
                        .label(anyaccel_metrics::labels::ENDPOINT)
                        .is_some_and(|e| e.contains(f))
                {
                    continue;
                }
                c.requests += s.value;
                let status = s
                    .label(anyaccel_metrics::labels::STATUS)
                    .unwrap_or("unknown")
                    .to_string();
                *c.requests_by_status.entry(status).or_insert(0.0) += s.value;
            } else if s.name == anyaccel_metrics::IMAGES_TOTAL {
                c.has_images_metric = true;
                c.images += s.value;
            }
        }
        c
    }

    /// `after - self`, counter by counter.
    pub fn delta_to(&self, after: &ServerCounters) -> ServerDelta {
        let mut by_status = BTreeMap::new();
        for (k, v) in &after.requests_by_status {
            let before = self.requests_by_status.get(k).copied().unwrap_or(0.0);
            let d = v - before;
            if d != 0.0 {
                by_status.insert(k.clone(), d);
            }
        }
        ServerDelta {
            requests: after.requests - self.requests,
            images: after.images - self.images,
            requests_by_status: by_status,
        }
    }
}

/// What the server counted during one level.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerDelta {
    pub requests: f64,
    pub images: f64,
    pub requests_by_status: BTreeMap<String, f64>,
}

/// One sample line of the text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text format (0.0.4) sample lines; comments, blank
/// and malformed lines are skipped.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample_line).collect()
}

fn parse_sample_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(r)?;
        labels = parsed;
        rest = after;
    }
    let value_str = rest.split_whitespace().next()?;
    let value = match value_str {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows `}`.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        // Skip separators.
        while let Some(&(_, c)) = chars.peek() {
            if c == ',' || c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let &(start, c) = chars.peek()?;
        if c == '}' {
            return Some((labels, &s[start + 1..]));
        }
        let mut key = String::new();
        for (_, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        let (_, q) = chars.next()?;
        if q != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '"' => break,
                '\\' => {
                    let (_, e) = chars.next()?;
                    value.push(match e {
                        'n' => '\n',
                        other => other,
                    });
                }
                other => value.push(other),
            }
        }
        labels.push((key.trim().to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPO: &str = r#"# HELP anyaccel_requests_total Requests by endpoint and status.
# TYPE anyaccel_requests_total counter
anyaccel_requests_total{endpoint="/v1/images/generations",status="200",pool="g5"} 7
anyaccel_requests_total{endpoint="/v1/images/generations",status="429",pool="g5"} 2
anyaccel_requests_total{endpoint="/health/ready",status="200",pool="g5"} 40
anyaccel_images_generated_total{model="tiny",accelerator="cpu"} 9
anyaccel_request_duration_seconds_bucket{endpoint="/v1/images/generations",le="+Inf"} 9
anyaccel_request_duration_seconds_count{endpoint="/v1/images/generations"} 9
odd_metric{msg="a \"quoted\", comma\\ and } brace"} 1.5e3 1700000000000
"#;

    #[test]
    fn parses_labels_escapes_and_timestamps() {
        let s = parse_exposition(EXPO);
        assert_eq!(s.len(), 7);
        let odd = s.iter().find(|x| x.name == "odd_metric").unwrap();
        assert_eq!(odd.value, 1500.0);
        assert_eq!(odd.label("msg"), Some("a \"quoted\", comma\\ and } brace"));
        let inf = s.iter().find(|x| x.name.ends_with("_bucket")).unwrap();
        assert_eq!(inf.label("le"), Some("+Inf"));
    }

    #[test]
    fn sums_requests_and_images() {
        let all = ServerCounters::from_exposition(EXPO, None);
        assert_eq!(all.requests, 49.0);
        assert_eq!(all.images, 9.0);
        let gen_only = ServerCounters::from_exposition(EXPO, Some("images/generations"));
        assert_eq!(gen_only.requests, 9.0);
        assert_eq!(gen_only.requests_by_status.get("429"), Some(&2.0));
        assert!(gen_only.has_requests_metric && gen_only.has_images_metric);
        let before = ServerCounters::default();
        let d = before.delta_to(&gen_only);
        assert_eq!(d.requests, 9.0);
        assert_eq!(d.requests_by_status.get("200"), Some(&7.0));
    }

    #[test]
    fn counts_images_and_error_codes() {
        assert_eq!(
            count_images(br#"{"created":1,"data":[{"b64_json":"AAAA","seed":1},{"b64_json":"BB","seed":2}]}"#),
            2
        );
        assert_eq!(count_images(b"not json"), 0);
        assert_eq!(
            error_code(br#"{"error":{"code":"queue_full","message":"busy","param":null,"type":"overloaded"}}"#),
            Some("queue_full".into())
        );
    }

    #[test]
    fn status_keys() {
        assert_eq!(Status::Http(429).key(), "429");
        assert_eq!(Status::Timeout.key(), "timeout");
        assert!(Status::Http(200).is_success());
        assert!(!Status::Http(503).is_success());
    }
}
