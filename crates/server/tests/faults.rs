//! Bad input, authentication and overload: every refusal is a 4xx (or 429)
//! JSON error naming what is wrong, and the server stays healthy.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyaccel_executor::{
    Capabilities, Component, Conditioning, DenoiseSession, Executor, ExecutorError, HiddenLayer,
    Tensor, TextEncoding, TokenIds,
};
use anyaccel_pipeline::{Defaults, Limits, Model, Pipeline};
use common::{TestServer, config, multipart, start, start_with};
use serde_json::{Value, json};

#[test]
fn bad_inputs_get_4xx_errors_that_name_the_field() {
    let s = start(config());
    let generations = "/v1/images/generations";
    let huge_prompt = "a".repeat(5000);
    let cases: Vec<(&str, &str, String, u16, Option<&str>)> = vec![
        (
            "malformed JSON",
            generations,
            "{\"prompt\": ".into(),
            400,
            None,
        ),
        (
            "wrong type",
            generations,
            json!({"prompt": "x", "n": "two"}).to_string(),
            400,
            Some("n"),
        ),
        (
            "wrong type nested",
            generations,
            json!({"prompt": 5}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            "missing prompt",
            generations,
            json!({"n": 1}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            "empty prompt",
            generations,
            json!({"prompt": "  "}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            "size not allowed",
            generations,
            json!({"prompt": "x", "size": "512x512"}).to_string(),
            400,
            Some("size"),
        ),
        (
            "size garbage",
            generations,
            json!({"prompt": "x", "size": "big"}).to_string(),
            400,
            Some("size"),
        ),
        (
            "n too large",
            generations,
            json!({"prompt": "x", "n": 50}).to_string(),
            400,
            Some("n"),
        ),
        (
            "n zero",
            generations,
            json!({"prompt": "x", "n": 0}).to_string(),
            400,
            Some("n"),
        ),
        (
            "steps zero",
            generations,
            json!({"prompt": "x", "steps": 0}).to_string(),
            400,
            Some("steps"),
        ),
        (
            "too many steps",
            generations,
            json!({"prompt": "x", "steps": 5000}).to_string(),
            400,
            Some("steps"),
        ),
        (
            "huge prompt",
            generations,
            json!({"prompt": huge_prompt}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            "unknown scheduler",
            generations,
            json!({"prompt": "x", "scheduler": "heun"}).to_string(),
            400,
            Some("scheduler"),
        ),
        (
            "negative guidance",
            generations,
            json!({"prompt": "x", "guidance_scale": -1}).to_string(),
            400,
            Some("guidance_scale"),
        ),
        (
            "unknown field",
            generations,
            json!({"prompt": "x", "stepz": 3}).to_string(),
            400,
            Some("stepz"),
        ),
        (
            "bad response_format",
            generations,
            json!({"prompt": "x", "response_format": "gif"}).to_string(),
            400,
            Some("response_format"),
        ),
        (
            "invalid base64",
            "/v1/jobs",
            json!({"prompt": "x", "image": "!!!not base64"}).to_string(),
            400,
            Some("image"),
        ),
        (
            "invalid image bytes",
            "/v1/jobs",
            json!({"prompt": "x", "image": "aGVsbG8gd29ybGQ="}).to_string(),
            400,
            Some("image"),
        ),
        (
            "strength without image",
            "/v1/jobs",
            json!({"prompt": "x", "strength": 0.5}).to_string(),
            400,
            Some("strength"),
        ),
        (
            "a1111 no init image",
            "/sdapi/v1/img2img",
            json!({"prompt": "x"}).to_string(),
            400,
            Some("init_images"),
        ),
        (
            "a1111 bad sampler",
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "sampler_name": "Foo"}).to_string(),
            400,
            Some("sampler_name"),
        ),
    ];
    for (name, path, body, want, field) in &cases {
        let (status, _, json) = s.send(
            TestServer::agent().post(&s.url(path)),
            body.as_bytes(),
            "application/json",
        );
        assert_eq!(status, *want, "{name}: {json}");
        let err = &json["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: no message in {json}"
        );
        assert!(err["code"].is_string(), "{name}: no code");
        if let Some(f) = field {
            assert_eq!(err["param"], *f, "{name}: {json}");
        }
    }
    // An oversized body is refused from its Content-Length with 413. The server
    // answers without reading the body, so read the reply while still writing.
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let body_len = 3 * 1024 * 1024;
    let sender = std::thread::spawn(move || {
        let head = format!(
            "POST /v1/images/generations HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
        );
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&vec![b' '; body_len]);
    });
    let mut reply = [0u8; 1024];
    let n = stream.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 413"), "oversized body: {reply}");
    drop(stream);
    let _ = sender.join();

    // An image over the pixel limit is refused before decoding its pixels.
    let big = anyaccel_pipeline::images::encode(
        &image::RgbImage::new(1024, 1024),
        anyaccel_pipeline::images::OutputFormat::Png,
        None,
        "",
    )
    .unwrap();
    let (ct, body) = multipart(&[("prompt", "x")], Some(("image", &big)));
    let (status, _, json) = s.send(
        TestServer::agent().post(&s.url("/v1/images/edits")),
        &body,
        &ct,
    );
    assert_eq!(status, 400, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pixels"),
        "{json}"
    );

    // Still healthy, still generating.
    assert_eq!(s.get("/health/ready").0, 200);
    let (status, _, _) = s.post_json(generations, &json!({"prompt": "x", "steps": 1}));
    assert_eq!(status, 200);
}

#[test]
fn api_keys_are_required_when_configured() {
    let mut c = config();
    c.api_keys = vec!["sekret-1".into(), "sekret-2".into()];
    let s = start(c);
    let body = json!({"prompt": "x", "steps": 1}).to_string();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("sekret-1"),
        Some("Bearer sekret-"),
    ] {
        let mut req = TestServer::agent().post(&s.url("/v1/images/generations"));
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        let (status, _, json) = s.send(req, body.as_bytes(), "application/json");
        assert_eq!(status, 401, "{auth:?}: {json}");
        assert_eq!(json["error"]["code"], "invalid_api_key");
    }
    let req = TestServer::agent()
        .post(&s.url("/v1/images/generations"))
        .set("Authorization", "Bearer sekret-2");
    assert_eq!(s.send(req, body.as_bytes(), "application/json").0, 200);
    // Probes stay open for the kubelet.
    assert_eq!(s.get("/health/ready").0, 200);
    assert_eq!(s.get("/metrics").0, 200);
}

#[test]
fn overload_gets_429_with_retry_after_and_every_accepted_request_completes() {
    let mut c = config();
    c.batcher.max_queue = 3;
    c.batcher.max_batch_images = 1;
    let s = start(c);
    let url = s.url("/v1/images/generations");
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(120))
                    .build();
                match agent.post(&url).send_json(
                    json!({"prompt": format!("load {i}"), "steps": 20, "size": "128x128", "n": 2}),
                ) {
                    Ok(r) => (r.status(), None, r.into_json::<Value>().ok()),
                    Err(ureq::Error::Status(code, r)) => (
                        code,
                        r.header("retry-after").map(str::to_string),
                        r.into_json::<Value>().ok(),
                    ),
                    Err(e) => panic!("transport error {e}"),
                }
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let limited: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(
        results.iter().all(|r| r.0 == 200 || r.0 == 429),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(!limited.is_empty(), "nothing was refused");
    assert!(ok >= 3, "only {ok} accepted");
    for (_, retry, body) in &limited {
        let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
        assert!((1..=600).contains(&secs));
        assert_eq!(body.as_ref().unwrap()["error"]["code"], "queue_full");
    }
    // Every accepted request came back with its images.
    for (_, _, body) in results.iter().filter(|r| r.0 == 200) {
        assert_eq!(body.as_ref().unwrap()["data"].as_array().unwrap().len(), 2);
    }
    let stats = s.state.batcher().stats();
    assert_eq!((stats.queued, stats.running), (0, 0));
}

/// The tiny model's executor, with a switch that makes the denoiser panic
/// (as a bug inside ONNX Runtime's bindings would).
struct Panicky {
    inner: Arc<dyn Executor>,
    armed: AtomicBool,
}

impl Executor for Panicky {
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
        assert!(
            !self.armed.load(Ordering::SeqCst),
            "denoiser panics on purpose"
        );
        self.inner.denoise(conditioning)
    }
    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor, ExecutorError> {
        self.inner.vae_decode(latents)
    }
    fn vae_encode(&self, image: &Tensor) -> Result<Tensor, ExecutorError> {
        self.inner.vae_encode(image)
    }
}

#[test]
fn a_panic_in_the_executor_turns_readiness_off() {
    let base = common::pipeline();
    let exec = Arc::new(Panicky {
        inner: base.executor().clone(),
        armed: AtomicBool::new(false),
    });
    let model = Model::load_dir(
        "tiny-sd15",
        &common::repo().join("fixtures/models/tiny-sd15"),
    )
    .unwrap();
    let p = Pipeline::new(exec.clone(), model, Limits::default(), Defaults::default());
    let s = start_with(p, config());
    assert_eq!(s.get("/health/ready").0, 200);
    exec.armed.store(true, Ordering::SeqCst);
    let (status, _, body) = s.post_json(
        "/v1/images/generations",
        &json!({"prompt": "x", "steps": 2, "size": "64x64"}),
    );
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal");
    // Kubernetes must see it: not ready, with the reason.
    let (status, ready) = s.get("/health/ready");
    assert_eq!(status, 503);
    assert_eq!(ready["status"], "broken");
    let reason = ready["reason"].as_str().unwrap();
    assert!(reason.contains("panics on purpose"), "{reason}");
    assert_eq!(s.get("/health/live").0, 200, "alive, so logs can be read");
    let metrics = s.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("anyaccel_pipeline_panics_total{") && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[test]
fn unknown_routes_and_methods_answer_the_json_error_shape() {
    let s = start(config());
    let resp = match TestServer::agent().get(&s.url("/v1/nope")).call() {
        Err(ureq::Error::Status(404, r)) => r,
        other => panic!("expected 404, got {other:?}"),
    };
    assert!(resp.header("x-request-id").is_some());
    let body: Value = resp.into_json().unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET /v1/nope")
    );
    let resp = match TestServer::agent()
        .delete(&s.url("/v1/images/generations"))
        .call()
    {
        Err(ureq::Error::Status(405, r)) => r,
        other => panic!("expected 405, got {other:?}"),
    };
    let body: Value = resp.into_json().unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
