//! Every endpoint over real HTTP against the tiny model.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use anyaccel_pipeline::images;
use common::{TestServer, config, decode_b64_png, multipart, start};
use serde_json::{Value, json};

#[test]
fn openai_generations_b64_url_and_formats() {
    let s = start(config());
    let (status, _, body) = s.post_json(
        "/v1/images/generations",
        &json!({"prompt": "a red fox", "n": 2, "size": "64x64", "steps": 3, "seed": 10, "scheduler": "ddim"}),
    );
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["seed"], 11);
    assert_eq!(
        decode_b64_png(data[0]["b64_json"].as_str().unwrap()).dimensions(),
        (64, 64)
    );
    assert_eq!(body["anyaccel"]["scheduler"], "ddim");
    assert_eq!(body["anyaccel"]["model"], "tiny-sd15");
    assert!(body["anyaccel"]["model_hash"].as_str().unwrap().len() == 10);
    assert_eq!(body["anyaccel"]["accelerator"], "cpu");

    // url: served by this server.
    let (status, _, body) = s.post_json(
        "/v1/images/generations",
        &json!({"prompt": "a red fox", "size": "128x128", "steps": 2, "response_format": "url", "output_format": "jpeg"}),
    );
    assert_eq!(status, 200, "{body}");
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&s.base), "{url}");
    let resp = TestServer::agent().get(url).call().unwrap();
    assert_eq!(resp.header("content-type"), Some("image/jpeg"));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
    assert_eq!(
        images::decode(&bytes, 1 << 20).unwrap().dimensions(),
        (128, 128)
    );

    // Timing headers.
    let resp = TestServer::agent()
        .post(&s.url("/v1/images/generations"))
        .send_json(json!({"prompt": "x", "steps": 1, "output_format": "webp"}))
        .unwrap();
    let secs = |h: &str| -> f64 { resp.header(h).unwrap().parse().unwrap() };
    let (queue, inference, total) = (
        secs("x-queue-time"),
        secs("x-inference-time"),
        secs("x-total-time"),
    );
    assert!(inference > 0.0, "inference {inference}");
    // Queueing and inference happen within the request; headers round to 0.1 ms.
    assert!(
        total + 0.0002 >= queue + inference,
        "total {total} < queue {queue} + inference {inference}"
    );
}

#[test]
fn openai_edits_multipart_img2img() {
    let s = start(config());
    let init = std::fs::read(common::repo().join("fixtures/reference/init_64.png")).unwrap();
    let (ct, body) = multipart(
        &[
            ("prompt", "a red fox"),
            ("strength", "0.5"),
            ("steps", "4"),
            ("seed", "3"),
            ("n", "1"),
        ],
        Some(("image", &init)),
    );
    let (status, _, json) = s.send(
        TestServer::agent().post(&s.url("/v1/images/edits")),
        &body,
        &ct,
    );
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["anyaccel"]["strength"], 0.5);
    assert_eq!(
        decode_b64_png(json["data"][0]["b64_json"].as_str().unwrap()).dimensions(),
        (64, 64)
    );

    let (ct, body) = multipart(&[("prompt", "x")], None);
    let (status, _, json) = s.send(
        TestServer::agent().post(&s.url("/v1/images/edits")),
        &body,
        &ct,
    );
    assert_eq!(status, 400);
    assert_eq!(json["error"]["param"], "image");
}

fn sse_events(
    s: &TestServer,
    id: &str,
    mut on_event: impl FnMut(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let resp = TestServer::agent()
        .get(&s.url(&format!("/v1/jobs/{id}/events")))
        .call()
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut out = Vec::new();
    let mut event = String::new();
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.unwrap();
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(d).unwrap();
            let keep_going = on_event(&event, &v);
            out.push((event.clone(), v));
            if !keep_going {
                break;
            }
        }
    }
    out
}

#[test]
fn jobs_lifecycle_with_events_idempotency_and_results() {
    let s = start(config());
    let resp = TestServer::agent()
        .post(&s.url("/v1/jobs"))
        .set("Idempotency-Key", "abc-123")
        .send_json(json!({"prompt": "a lighthouse", "steps": 6, "seed": 5, "size": "64x64"}))
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.header("location").unwrap().to_string();
    let job: Value = resp.into_json().unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["events_url"], format!("/v1/jobs/{id}/events"));
    assert!(job["queue_position"].is_u64() || job["status"] != "queued");

    // A retried POST with the same key is the same job.
    let again: Value = TestServer::agent()
        .post(&s.url("/v1/jobs"))
        .set("Idempotency-Key", "abc-123")
        .send_json(json!({"prompt": "a lighthouse", "steps": 6, "seed": 5, "size": "64x64"}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(again["id"], job["id"]);

    let events = sse_events(&s, &id, |_, _| true);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    // Steps arrive in order, ending at the total.
    let steps: Vec<u64> = events
        .iter()
        .filter(|(e, _)| e == "step")
        .map(|(_, v)| v["step"].as_u64().unwrap())
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert_eq!(steps.last(), Some(&6));

    let (status, done) = s.get(&format!("/v1/jobs/{id}"));
    assert_eq!(status, 200);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["progress"]["step"], 6);
    let img = decode_b64_png(done["result"]["images"][0]["b64_json"].as_str().unwrap());
    assert_eq!(img.dimensions(), (64, 64));
    assert_eq!(done["result"]["images"][0]["seed"], 5);

    let (status, body) = s.get("/v1/jobs/job-doesnotexist");
    assert_eq!(status, 404, "{body}");
}

#[test]
fn cancel_mid_run_via_delete() {
    let s = start(config());
    let (status, _, job) = s.post_json(
        "/v1/jobs",
        &json!({"prompt": "slow", "steps": 150, "n": 4, "size": "128x128", "seed": 1}),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let del_url = s.url(&format!("/v1/jobs/{id}"));
    let mut cancelled_at = None;
    let events = sse_events(&s, &id, |event, v| {
        if event == "step" && cancelled_at.is_none() && v["step"].as_u64() >= Some(2) {
            cancelled_at = v["step"].as_u64();
            let deleted: Value = TestServer::agent()
                .delete(&del_url)
                .call()
                .unwrap()
                .into_json()
                .unwrap();
            assert_eq!(deleted["status"], "cancelled", "{deleted}");
        }
        true
    });
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.last(), Some(&"cancelled"), "{names:?}");
    let last_step = events
        .iter()
        .filter(|(e, _)| e == "step")
        .map(|(_, v)| v["step"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(last_step < 150, "stopped at step {last_step}");
    let (_, view) = s.get(&format!("/v1/jobs/{id}"));
    assert_eq!(view["status"], "cancelled");
    assert!(view.get("result").is_none());
}

#[test]
fn expired_results_answer_410() {
    let mut c = config();
    c.batcher.result_ttl = Duration::from_millis(300);
    let s = start(c);
    let (_, _, job) = s.post_json("/v1/jobs", &json!({"prompt": "x", "steps": 1}));
    let id = job["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let (status, body) = s.get(&format!("/v1/jobs/{id}"));
        if status == 410 {
            assert_eq!(body["error"]["code"], "expired");
            break;
        }
        assert_eq!(status, 200);
        assert!(started.elapsed() < Duration::from_secs(20), "never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a1111_subset() {
    let s = start(config());
    let (status, _, body) = s.post_json(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "a cat", "negative_prompt": "dog", "steps": 3, "cfg_scale": 6, "width": 64, "height": 64,
                "sampler_name": "DPM++ 2M", "scheduler": "Karras", "seed": 77, "batch_size": 2, "restore_faces": false}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["images"].as_array().unwrap().len(), 2);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([77, 78]));
    assert_eq!(info["sampler_name"], "DPM++ 2M Karras");
    assert!(
        info["infotexts"][0]
            .as_str()
            .unwrap()
            .contains("Negative prompt: dog")
    );
    assert_eq!(body["parameters"]["prompt"], "a cat");

    let init = common::decode_b64_png(body["images"][0].as_str().unwrap());
    let bytes = images::encode(&init, images::OutputFormat::Png, None, "").unwrap();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let (status, _, body) = s.post_json(
        "/sdapi/v1/img2img",
        &json!({"prompt": "a cat", "init_images": [b64], "denoising_strength": 0.4, "steps": 5, "seed": 1}),
    );
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(
        info["denoising_strength"]
            .as_f64()
            .map(|v| (v * 10.0).round()),
        Some(4.0)
    );

    let (status, samplers) = s.get("/sdapi/v1/samplers");
    assert_eq!(status, 200);
    assert!(
        samplers
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "Euler a")
    );
    let (_, models) = s.get("/sdapi/v1/sd-models");
    assert_eq!(models[0]["model_name"], "tiny-sd15");
    let (status, progress) = s.get("/sdapi/v1/progress");
    assert_eq!(status, 200);
    assert!(progress["progress"].as_f64().is_some());
    let (status, _, _) = s.post_json("/sdapi/v1/interrupt", &json!({}));
    assert_eq!(status, 200);
}

#[test]
fn health_info_metrics_and_docs() {
    let s = start(config());
    for path in [
        "/health/live",
        "/health/ready",
        "/v2/health/live",
        "/v2/health/ready",
    ] {
        assert_eq!(s.get(path).0, 200, "{path}");
    }
    let (_, info) = s.get("/info");
    assert_eq!(info["sizes"], json!(["64x64", "128x128"]));
    assert_eq!(info["executor"], "onnx");
    assert_eq!(
        info["runtime"], "onnxruntime on cpu; conditioning bound once per batch",
        "the default binding, as /info tells operators"
    );
    assert_eq!(info["dtype"], "fp32");
    assert_eq!(info["limits"]["max_batch_images"], 4);
    s.post_json(
        "/v1/images/generations",
        &json!({"prompt": "x", "steps": 2}),
    );
    let (_, metrics) = s.get("/metrics");
    let text = metrics.as_str().unwrap();
    for name in [
        "anyaccel_requests_total{",
        "anyaccel_images_generated_total{",
        "anyaccel_backlog_seconds{",
        "anyaccel_queue_depth{",
        "anyaccel_denoise_step_duration_seconds_bucket{",
        "anyaccel_stage_duration_seconds_count{",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert!(text.contains("pool=\"test\"") && text.contains("model=\"tiny-sd15\""));
    let (status, doc) = s.get("/openapi.json");
    assert_eq!(status, 200);
    for p in [
        "/v1/images/generations",
        "/v1/jobs/{id}/events",
        "/sdapi/v1/txt2img",
        "/health/ready",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from OpenAPI");
    }
    let (status, page) = s.get("/docs");
    assert_eq!(status, 200);
    assert!(page.as_str().unwrap().contains("/openapi.json"));
}

#[test]
fn batched_and_solo_results_are_the_same_images() {
    let s = start(config());
    let solo: Vec<Value> = (0..3u64)
        .map(|i| {
            let (st, _, b) = s.post_json(
                "/v1/images/generations",
                &json!({"prompt": format!("p{i}"), "steps": 3, "seed": 100 + i}),
            );
            assert_eq!(st, 200);
            assert_eq!(b["timings"]["batch_images"], 1);
            b
        })
        .collect();
    // Same requests concurrently: they share UNet calls.
    let handles: Vec<_> = (0..3u64)
        .map(|i| {
            let url = s.url("/v1/images/generations");
            std::thread::spawn(move || {
                TestServer::agent()
                    .post(&url)
                    .send_json(json!({"prompt": format!("p{i}"), "steps": 3, "seed": 100 + i}))
                    .unwrap()
                    .into_json::<Value>()
                    .unwrap()
            })
        })
        .collect();
    let batched: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        batched
            .iter()
            .any(|b| b["timings"]["batch_images"].as_u64() > Some(1)),
        "no request was batched: {:?}",
        batched
            .iter()
            .map(|b| &b["timings"]["batch_images"])
            .collect::<Vec<_>>()
    );
    for (a, b) in solo.iter().zip(&batched) {
        let ia = decode_b64_png(a["data"][0]["b64_json"].as_str().unwrap());
        let ib = decode_b64_png(b["data"][0]["b64_json"].as_str().unwrap());
        let max = ia
            .as_raw()
            .iter()
            .zip(ib.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap();
        assert!(max <= 1, "batched image differs from solo by {max}");
    }
}

#[test]
fn client_disconnect_cancels_a_synchronous_request() {
    let s = start(config());
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(400))
        .build();
    let url = s.url("/v1/images/generations");
    let r = agent
        .post(&url)
        .send_json(json!({"prompt": "slow", "steps": 150, "n": 8, "size": "128x128"}));
    assert!(r.is_err(), "the request should have timed out client-side");
    let job = s.state.batcher().current();
    let started = Instant::now();
    // The job stops within a few steps of the disconnect, not after all 150.
    loop {
        let stats = s.state.batcher().stats();
        if stats.running == 0 && stats.queued == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "job kept running after the client left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(j) = job {
        assert_eq!(j.state().status, anyaccel_batcher::JobStatus::Cancelled);
        assert!(j.state().step < 150);
    }
}

#[test]
fn request_ids_are_echoed_generated_and_recorded_on_jobs() {
    let s = start(config());
    let body = json!({"prompt": "x", "steps": 1, "size": "64x64"});
    let resp = TestServer::agent()
        .post(&s.url("/v1/images/generations"))
        .set("x-request-id", "client-42")
        .send_json(body.clone())
        .unwrap();
    assert_eq!(resp.header("x-request-id"), Some("client-42"));
    // No id, or one unfit for logs, gets a fresh one.
    for sent in [None, Some("has spaces")] {
        let mut req = TestServer::agent().post(&s.url("/v1/images/generations"));
        if let Some(v) = sent {
            req = req.set("x-request-id", v);
        }
        let resp = req.send_json(body.clone()).unwrap();
        let id = resp.header("x-request-id").unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    let job: Value = TestServer::agent()
        .post(&s.url("/v1/jobs"))
        .set("x-request-id", "submit-7")
        .send_json(body)
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(job["request_id"], "submit-7");
}

#[test]
fn synchronous_results_are_released_and_retained_ones_are_counted() {
    let s = start(config());
    for _ in 0..3 {
        let (status, _, _) = s.post_json(
            "/v1/images/generations",
            &json!({"prompt": "x", "steps": 1, "size": "64x64", "n": 2}),
        );
        assert_eq!(status, 200);
    }
    let stats = s.state.batcher().stats();
    assert_eq!((stats.results_held, stats.result_bytes), (0, 0));
    // A url response keeps its encoded images until the TTL or the budget.
    let (status, _, body) = s.post_json(
        "/v1/images/generations",
        &json!({"prompt": "x", "steps": 1, "size": "64x64", "n": 2, "response_format": "url"}),
    );
    assert_eq!(status, 200, "{body}");
    let stats = s.state.batcher().stats();
    assert_eq!(stats.results_held, 2);
    assert!(stats.result_bytes > 0);
    let metrics = s.metrics();
    let held = metrics
        .lines()
        .find(|l| l.starts_with("anyaccel_result_memory_bytes{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(held, Some(stats.result_bytes), "{metrics}");
}
