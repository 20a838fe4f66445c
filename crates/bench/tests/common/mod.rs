//! Test helpers: a scratch folder and a small HTTP server on 127.0.0.1 that
//! answers like the anyaccel API (`/v1/images/generations`, `/metrics`,
//! `/info`), built on std::net only.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fresh, empty folder under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "anyaccel-bench-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The repository's `bench/` folder (fixtures).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench")
}

/// How the fake server behaves.
#[derive(Clone)]
pub struct Behaviour {
    /// Simulated inference time per request.
    pub service: Duration,
    /// Every `reject_every`-th generation request (1-based) gets 429.
    pub reject_every: Option<u64>,
    /// Handle one generation at a time (latency grows with concurrency).
    pub serialize: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            service: Duration::from_millis(20),
            reject_every: None,
            serialize: false,
        }
    }
}

#[derive(Default)]
struct Counters {
    /// (endpoint, status) -> count
    requests: BTreeMap<(String, u16), u64>,
    images: u64,
    generations_seen: u64,
}

pub struct FakeServer {
    pub url: String,
    counters: Arc<Mutex<Counters>>,
}

impl FakeServer {
    pub fn start(b: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counters = Arc::new(Mutex::new(Counters::default()));
        let c = counters.clone();
        let gate = Arc::new(Mutex::new(()));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let c = c.clone();
                let b = b.clone();
                let gate = gate.clone();
                std::thread::spawn(move || {
                    let _ = handle(stream, &b, &c, &gate);
                });
            }
        });
        Self { url, counters }
    }

    /// Generation requests the server has answered, by status.
    pub fn generations_by_status(&self) -> BTreeMap<u16, u64> {
        let g = self.counters.lock().unwrap();
        let mut out = BTreeMap::new();
        for ((ep, st), n) in &g.requests {
            if ep == "/v1/images/generations" {
                *out.entry(*st).or_insert(0) += n;
            }
        }
        out
    }

    pub fn images(&self) -> u64 {
        self.counters.lock().unwrap().images
    }
}

fn handle(
    stream: TcpStream,
    b: &Behaviour,
    c: &Mutex<Counters>,
    gate: &Mutex<()>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let mut out = stream;

    match (method.as_str(), path.as_str()) {
        ("POST", "/v1/images/generations") => {
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let n = req.get("n").and_then(|v| v.as_u64()).unwrap_or(1);
            let seq = {
                let mut g = c.lock().unwrap();
                g.generations_seen += 1;
                g.generations_seen
            };
            if b.reject_every.is_some_and(|k| seq % k == 0) {
                let body = r#"{"error":{"code":"queue_full","message":"The queue is full; retry after the time in Retry-After.","param":null,"type":"overloaded"}}"#;
                count(c, "/v1/images/generations", 429, 0);
                return respond(
                    &mut out,
                    "429 Too Many Requests",
                    &[("Retry-After", "1")],
                    body,
                );
            }
            let start = std::time::Instant::now();
            {
                let _g = if b.serialize {
                    Some(gate.lock().unwrap())
                } else {
                    None
                };
                std::thread::sleep(b.service);
            }
            let seed = req.get("seed").and_then(|v| v.as_u64()).unwrap_or(0);
            let data: Vec<serde_json::Value> = (0..n)
                .map(|i| serde_json::json!({"b64_json": "iVBORw0KGgo=", "seed": seed + i}))
                .collect();
            let body = serde_json::json!({"created": 1_700_000_000u64, "data": data}).to_string();
            let total = start.elapsed().as_secs_f64();
            let inference = b.service.as_secs_f64();
            let queue = (total - inference).max(0.0);
            count(c, "/v1/images/generations", 200, n);
            respond(
                &mut out,
                "200 OK",
                &[
                    ("x-queue-time", &format!("{queue:.4}")),
                    ("x-inference-time", &format!("{inference:.4}")),
                    ("x-total-time", &format!("{total:.4}")),
                ],
                &body,
            )
        }
        ("GET", "/metrics") => {
            let g = c.lock().unwrap();
            let mut text = String::from(
                "# HELP anyaccel_requests_total Requests.\n# TYPE anyaccel_requests_total counter\n",
            );
            for ((ep, st), n) in &g.requests {
                text.push_str(&format!(
                    "anyaccel_requests_total{{endpoint=\"{ep}\",status=\"{st}\",pool=\"test\"}} {n}\n"
                ));
            }
            text.push_str("# TYPE anyaccel_images_generated_total counter\n");
            text.push_str(&format!(
                "anyaccel_images_generated_total{{model=\"tiny\",accelerator=\"cpu\"}} {}\n",
                g.images
            ));
            drop(g);
            respond(
                &mut out,
                "200 OK",
                &[("content-type", "text/plain; version=0.0.4")],
                &text,
            )
        }
        ("GET", "/info") => {
            count(c, "/info", 200, 0);
            respond(
                &mut out,
                "200 OK",
                &[("content-type", "application/json")],
                r#"{"model":{"id":"tiny-sd","hash":"abc"},"accelerator":"cpu"}"#,
            )
        }
        _ => respond(
            &mut out,
            "404 Not Found",
            &[],
            r#"{"error":{"code":"not_found","message":"no such route","param":null,"type":"invalid_request_error"}}"#,
        ),
    }
}

fn count(c: &Mutex<Counters>, endpoint: &str, status: u16, images: u64) {
    let mut g = c.lock().unwrap();
    *g.requests
        .entry((endpoint.to_string(), status))
        .or_insert(0) += 1;
    g.images += images;
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("content-type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()
}
