//! Previews while an image forms: the jobs API's SSE `preview` events,
//! OpenAI's streamed partial images, and A1111's `current_image`.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyaccel_executor::{
    Capabilities, Component, Conditioning, DenoiseSession, Executor, ExecutorError, HiddenLayer,
    Tensor, TextEncoding, TokenIds,
};
use anyaccel_pipeline::{Defaults, Limits, Model, Pipeline};
use common::{TestServer, config, decode_b64_png, multipart, start, start_with};
use serde_json::{Value, json};

/// Denoiser steps wait for permits while the gate is closed, so a test
/// decides when each step runs.
#[derive(Default)]
struct Gate {
    permits: Mutex<Option<u32>>,
    changed: Condvar,
}

impl Gate {
    fn close(&self) {
        *self.permits.lock().unwrap() = Some(0);
    }
    fn release(&self, n: u32) {
        let mut p = self.permits.lock().unwrap();
        if let Some(k) = p.as_mut() {
            *k += n;
        }
        self.changed.notify_all();
    }
    fn open(&self) {
        *self.permits.lock().unwrap() = None;
        self.changed.notify_all();
    }
    fn pass(&self) {
        let mut p = self.permits.lock().unwrap();
        loop {
            match p.as_mut() {
                None => return,
                Some(k) if *k > 0 => {
                    *k -= 1;
                    return;
                }
                Some(_) => p = self.changed.wait(p).unwrap(),
            }
        }
    }
}

struct Gated {
    inner: Arc<dyn Executor>,
    gate: Arc<Gate>,
}

struct GatedSession<'a> {
    inner: Box<dyn DenoiseSession + 'a>,
    gate: Arc<Gate>,
}

impl DenoiseSession for GatedSession<'_> {
    fn rows(&self) -> usize {
        self.inner.rows()
    }
    fn select(&mut self, rows: &[usize]) -> Result<(), ExecutorError> {
        self.inner.select(rows)
    }
    fn step(&mut self, sample: &Tensor, timesteps: &[f32]) -> Result<Tensor, ExecutorError> {
        self.gate.pass();
        self.inner.step(sample, timesteps)
    }
}

impl Executor for Gated {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn encode_text(
        &self,
        encoder: Component,
        ids: &TokenIds,
        layer: HiddenLayer,
    ) -> Result<TextEncoding, ExecutorError> {
        self.inner.encode_text(encoder, ids, layer)
    }
    fn denoise<'a>(
        &'a self,
        conditioning: Conditioning,
    ) -> Result<Box<dyn DenoiseSession + 'a>, ExecutorError> {
        Ok(Box::new(GatedSession {
            inner: self.inner.denoise(conditioning)?,
            gate: self.gate.clone(),
        }))
    }
    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor, ExecutorError> {
        self.inner.vae_decode(latents)
    }
    fn vae_encode(&self, image: &Tensor) -> Result<Tensor, ExecutorError> {
        self.inner.vae_encode(image)
    }
}

fn gated_server() -> (TestServer, Arc<Gate>) {
    let base = common::pipeline();
    let gate = Arc::new(Gate::default());
    let exec = Arc::new(Gated {
        inner: base.executor().clone(),
        gate: gate.clone(),
    });
    let model = Model::load_dir(
        "tiny-sd15",
        &common::repo().join("fixtures/models/tiny-sd15"),
    )
    .unwrap();
    let p = Pipeline::new(exec, model, Limits::default(), Defaults::default());
    // Warm-up runs with the gate open.
    (start_with(p, config()), gate)
}

/// Reads `event:`/`data:` pairs until `on_event` says stop or the stream ends.
fn read_sse(
    resp: ureq::Response,
    mut on_event: impl FnMut(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut out = Vec::new();
    let mut event = String::new();
    for line in BufReader::new(resp.into_reader()).lines() {
        let Ok(line) = line else { break };
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(d).unwrap();
            let go_on = on_event(&event, &v);
            out.push((event.clone(), v));
            if !go_on {
                break;
            }
        }
    }
    out
}

/// The format an encoded image's first bytes say it is.
fn sniff(b64: &str) -> &'static str {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "png"
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        "jpeg"
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "webp"
    } else {
        "unknown"
    }
}

#[test]
fn job_events_carry_previews_in_step_order() {
    let (s, gate) = gated_server();
    gate.close();
    let (status, _, job) = s.post_json(
        "/v1/jobs",
        &json!({"prompt": "a lighthouse", "steps": 6, "size": "64x64", "seed": 4, "preview_every": 2}),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let resp = TestServer::agent()
        .get(&s.url(&format!("/v1/jobs/{id}/events")))
        .call()
        .unwrap();
    let mut released = false;
    let events = read_sse(resp, |name, _| {
        // The first event is the catch-up: the subscription exists, so
        // every later event reaches us. Now let the steps run.
        if !released {
            released = true;
            gate.release(6);
        }
        !matches!(name, "completed" | "failed" | "cancelled")
    });
    let seen: Vec<(String, u64)> = events
        .iter()
        .skip(1)
        .filter(|(e, _)| e == "step" || e == "preview")
        .map(|(e, v)| (e.clone(), v["step"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> = [
        ("step", 1),
        ("preview", 2),
        ("step", 2),
        ("step", 3),
        ("preview", 4),
        ("step", 4),
        ("step", 5),
        ("step", 6),
    ]
    .iter()
    .map(|(e, n)| (e.to_string(), *n))
    .collect();
    assert_eq!(seen, want, "{events:?}");
    assert_eq!(events.last().unwrap().0, "completed");
    let previews: Vec<&Value> = events
        .iter()
        .filter(|(e, _)| e == "preview")
        .map(|(_, v)| v)
        .collect();
    for p in &previews {
        assert_eq!(p["total"], 6);
        assert_eq!(p["image"], 0);
        assert_eq!(p["output_format"], "png");
        let img = decode_b64_png(p["b64_json"].as_str().unwrap());
        assert_eq!(img.dimensions(), (64, 64));
    }
    // The image changes as it forms.
    assert_ne!(previews[0]["b64_json"], previews[1]["b64_json"]);

    let (status, _, bad) = s.post_json(
        "/v1/jobs",
        &json!({"prompt": "x", "steps": 2, "preview_every": 0}),
    );
    assert_eq!(status, 400);
    assert_eq!(bad["error"]["param"], "preview_every");
}

#[test]
fn job_previews_are_encoded_in_the_jobs_output_format() {
    let (s, gate) = gated_server();
    for format in ["jpeg", "webp"] {
        gate.close();
        let (status, _, job) = s.post_json(
            "/v1/jobs",
            &json!({"prompt": "a lighthouse", "steps": 5, "size": "64x64", "seed": 4,
                    "preview_every": 2, "output_format": format}),
        );
        assert_eq!(status, 202, "{job}");
        let id = job["id"].as_str().unwrap();
        let resp = TestServer::agent()
            .get(&s.url(&format!("/v1/jobs/{id}/events")))
            .call()
            .unwrap();
        let mut released = false;
        let events = read_sse(resp, |name, _| {
            if !released {
                released = true;
                gate.release(5);
            }
            !matches!(name, "completed" | "failed" | "cancelled")
        });
        assert_eq!(events.last().unwrap().0, "completed", "{events:?}");
        let previews: Vec<&Value> = events
            .iter()
            .filter(|(e, _)| e == "preview")
            .map(|(_, v)| v)
            .collect();
        // Steps 2 and 4 of 5.
        assert_eq!(previews.len(), 2, "{format}: {events:?}");
        for p in previews {
            assert_eq!(p["output_format"], format);
            let b64 = p["b64_json"].as_str().unwrap();
            assert_eq!(sniff(b64), format, "preview at step {}", p["step"]);
            assert_eq!(decode_b64_png(b64).dimensions(), (64, 64));
        }
        // The final image is in that format too.
        let (status, done) = s.get(&format!("/v1/jobs/{id}"));
        assert_eq!(status, 200, "{done}");
        assert_eq!(done["result"]["output_format"], format, "{done}");
        let image = done["result"]["images"][0]["b64_json"].as_str().unwrap();
        assert_eq!(sniff(image), format);
    }
}

#[test]
fn a1111_progress_shows_the_forming_image() {
    let (s, gate) = gated_server();
    gate.close();
    let base = s.base.clone();
    let client = std::thread::spawn(move || {
        TestServer::agent()
            .post(&format!("{base}/sdapi/v1/txt2img"))
            .send_json(json!({"prompt": "a harbour", "steps": 8, "width": 64, "height": 64}))
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    });
    // Steps 1..=5 run: a preview exists after step 5 (every 5 by default).
    gate.release(5);
    let started = Instant::now();
    let progress = loop {
        let (status, p) = s.get("/sdapi/v1/progress");
        assert_eq!(status, 200);
        if p["state"]["sampling_step"] == 5 && p["current_image"].is_string() {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no preview in progress: {p}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let img = decode_b64_png(progress["current_image"].as_str().unwrap());
    assert_eq!(img.dimensions(), (64, 64));
    let (_, skipped) = s.get("/sdapi/v1/progress?skip_current_image=true");
    assert!(skipped["current_image"].is_null(), "{skipped}");
    gate.open();
    assert_eq!(client.join().unwrap().unwrap(), 200);
    let (_, idle) = s.get("/sdapi/v1/progress");
    assert!(idle["current_image"].is_null());
}

fn stream_generation(s: &TestServer, body: Value) -> ureq::Response {
    TestServer::agent()
        .post(&s.url("/v1/images/generations"))
        .send_json(body)
        .unwrap()
}

#[test]
fn openai_streams_partial_images_then_the_image() {
    let s = start(config());
    let resp = stream_generation(
        &s,
        json!({"prompt": "a fox", "steps": 6, "size": "64x64", "seed": 9, "stream": true,
               "partial_images": 2, "output_format": "png"}),
    );
    let events = read_sse(resp, |_, _| true);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed"
        ]
    );
    for (i, (_, v)) in events.iter().enumerate() {
        assert_eq!(v["type"], names[i]);
        assert_eq!(v["size"], "64x64");
        assert_eq!(v["output_format"], "png");
        let img = decode_b64_png(v["b64_json"].as_str().unwrap());
        assert_eq!(img.dimensions(), (64, 64));
        if i < 2 {
            assert_eq!(v["partial_image_index"], i);
        }
    }
    let done = &events[2].1;
    assert_eq!(done["seed"], 9);
    assert_eq!(done["usage"]["total_tokens"], 0);
    // The streamed image is the image a plain request gives.
    let (_, _, plain) = s.post_json(
        "/v1/images/generations",
        &json!({"prompt": "a fox", "steps": 6, "size": "64x64", "seed": 9}),
    );
    assert_eq!(
        decode_b64_png(plain["data"][0]["b64_json"].as_str().unwrap()),
        decode_b64_png(done["b64_json"].as_str().unwrap())
    );

    // partial_images 0: just the image.
    let events = read_sse(
        stream_generation(
            &s,
            json!({"prompt": "x", "steps": 3, "size": "64x64", "stream": true}),
        ),
        |_, _| true,
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "image_generation.completed");
}

#[test]
fn openai_edits_stream_too() {
    let s = start(config());
    let init = std::fs::read(common::repo().join("fixtures/reference/init_64.png")).unwrap();
    let (ct, body) = multipart(
        &[
            ("prompt", "a red fox"),
            ("strength", "0.8"),
            ("steps", "10"),
            ("size", "64x64"),
            ("stream", "true"),
            ("partial_images", "2"),
            ("output_format", "jpeg"),
        ],
        Some(("image", &init)),
    );
    let resp = TestServer::agent()
        .post(&s.url("/v1/images/edits"))
        .set("content-type", &ct)
        .send_bytes(&body)
        .unwrap();
    let events = read_sse(resp, |_, _| true);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "image_edit.partial_image",
            "image_edit.partial_image",
            "image_edit.completed"
        ]
    );
    for (i, (name, v)) in events.iter().enumerate() {
        assert_eq!(v["type"], *name);
        assert_eq!(v["output_format"], "jpeg", "{name}");
        let b64 = v["b64_json"].as_str().unwrap();
        assert_eq!(sniff(b64), "jpeg", "{name} {i}");
        assert_eq!(decode_b64_png(b64).dimensions(), (64, 64), "{name} {i}");
        if i < 2 {
            assert_eq!(v["partial_image_index"], i, "{v}");
        } else {
            assert!(v.get("partial_image_index").is_none(), "{v}");
        }
    }
    // Each partial image is a different state of the forming image.
    assert_ne!(events[0].1["b64_json"], events[1].1["b64_json"]);
}

#[test]
fn streaming_options_that_cannot_work_are_refused() {
    let s = start(config());
    for (body, param) in [
        (json!({"prompt": "x", "stream": true, "n": 2}), "n"),
        (
            json!({"prompt": "x", "stream": true, "partial_images": 4}),
            "partial_images",
        ),
        (
            json!({"prompt": "x", "partial_images": 2}),
            "partial_images",
        ),
        (
            json!({"prompt": "x", "stream": true, "response_format": "url"}),
            "response_format",
        ),
    ] {
        let (status, _, err) = s.post_json("/v1/images/generations", &body);
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["param"], param, "{body}");
    }
    // Edits take the same rules: one image per stream.
    let init = std::fs::read(common::repo().join("fixtures/reference/init_64.png")).unwrap();
    let (ct, body) = multipart(
        &[("prompt", "x"), ("stream", "true"), ("n", "2")],
        Some(("image", &init)),
    );
    let (status, _, err) = s.send(
        TestServer::agent().post(&s.url("/v1/images/edits")),
        &body,
        &ct,
    );
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "n", "{err}");
}

#[test]
fn a_client_that_leaves_a_stream_cancels_its_job() {
    let s = start(config());
    let resp = stream_generation(
        &s,
        json!({"prompt": "slow", "steps": 150, "size": "128x128", "stream": true, "partial_images": 3}),
    );
    // Read the first partial image (the job is running by then), then hang up.
    let first = read_sse(resp, |_, _| false);
    let job = s.state.batcher().current().expect("the job runs");
    assert_eq!(first[0].0, "image_generation.partial_image");
    let started = Instant::now();
    while !job.state().status.is_terminal() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "job kept running after the client left (step {})",
            job.state().step
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(job.state().status, anyaccel_batcher::JobStatus::Cancelled);
    assert!(job.state().step < 150);
    // /metrics counts it as cancelled (what clients outside the process see).
    let finished = |status: &str| -> f64 {
        s.metrics()
            .lines()
            .filter(|l| {
                l.starts_with("anyaccel_jobs_finished_total{")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(finished("cancelled"), 1.0, "{}", s.metrics());
    assert_eq!(finished("failed"), 0.0, "{}", s.metrics());
}
