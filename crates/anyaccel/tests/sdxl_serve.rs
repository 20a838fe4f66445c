//! `anyaccel serve` with the tiny SDXL fixture: every API a client uses, with a
//! real server process and real clients (the official openai SDK, HTTP, SSE).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{repo, serve_model, venv_python};
use serde_json::{Value, json};

const SDXL: &str = "fixtures/models/tiny-sdxl";

fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    match ureq::post(&format!("{base}{path}")).send_json(body.clone()) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn get(base: &str, path: &str) -> Value {
    ureq::get(&format!("{base}{path}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap()
}

#[test]
fn sdxl_model_is_served_on_every_api() {
    let s = serve_model(SDXL, &["--api-key", "k"], &[], Stdio::null());
    let auth = |r: ureq::Request| r.set("authorization", "Bearer k");

    // The official SDK: generations and edits with micro-conditioning, typed errors.
    let out = Command::new(venv_python())
        .arg(repo().join("crates/anyaccel/tests/python/openai_sdk.py"))
        .args([s.base.as_str(), "k"])
        .arg(repo().join("fixtures/reference/init_64.png"))
        .arg("--sdxl")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openai SDK against SDXL failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let info: Value = auth(ureq::get(&format!("{}/info", s.base)))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(info["family"], "sdxl", "{info}");
    assert_eq!(info["pipeline_class"], "StableDiffusionXLPipeline");
    let costs = info["size_costs"].as_array().expect("size_costs");
    assert_eq!(costs.len(), info["sizes"].as_array().unwrap().len());
    // Warm-up measured the speed, so every size has an estimate, larger ones costing more.
    let secs: Vec<f64> = costs
        .iter()
        .map(|c| c["estimated_seconds"].as_f64().expect("estimate"))
        .collect();
    assert!(secs[0] < secs[1], "{costs:?}");

    // A1111: txt2img and the model list.
    let a1111 = |path: &str, body: Value| -> (u16, Value) {
        match auth(ureq::post(&format!("{}{path}", s.base))).send_json(body) {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap_or(Value::Null)),
            Err(e) => panic!("{e}"),
        }
    };
    let (code, body) = a1111(
        "/sdapi/v1/txt2img",
        json!({"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 5, "sampler_name": "DPM++ 2M Karras"}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["images"].as_array().unwrap().len(), 1);
    let models: Value = auth(ureq::get(&format!("{}/sdapi/v1/sd-models", s.base)))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models[0]["model_name"], SDXL);

    // Native jobs with SSE progress to the end.
    let resp = auth(ureq::post(&format!("{}/v1/jobs", s.base)))
        .send_json(
            json!({"prompt": "a lighthouse", "steps": 3, "size": "64x64", "seed": 9,
                          "original_size": "64x64", "crop_top_left": [0, 0]}),
        )
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: Value = resp.into_json().unwrap();
    let id = job["id"].as_str().unwrap();
    let events = auth(ureq::get(&format!("{}/v1/jobs/{id}/events", s.base)))
        .call()
        .unwrap();
    let mut names = Vec::new();
    for line in BufReader::new(events.into_reader()).lines() {
        let line = line.unwrap();
        if let Some(name) = line.strip_prefix("event: ") {
            names.push(name.to_string());
            if matches!(name, "completed" | "failed" | "cancelled") {
                break;
            }
        }
    }
    assert_eq!(
        names.last().map(String::as_str),
        Some("completed"),
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| *n == "step").count(),
        3,
        "{names:?}"
    );
}

#[test]
fn micro_conditioning_is_refused_for_sd_models() {
    let s = common::serve(&[]);
    let (code, body) = post(
        &s.base,
        "/v1/images/generations",
        &json!({"prompt": "x", "size": "64x64", "original_size": "1024x1024"}),
    );
    assert_eq!(code, 400, "{body}");
    let msg = body.to_string();
    assert!(
        msg.contains("original_size") && msg.contains("SDXL"),
        "{msg}"
    );
    assert_eq!(get(&s.base, "/info")["family"], "sd");
}

#[test]
fn unsupported_pipelines_fail_at_load_with_the_class_and_the_list() {
    let dir = std::env::temp_dir().join(format!("anyaccel-unsupported-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("model_index.json"),
        r#"{"_class_name": "FluxFillPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args(["generate", "--model"])
        .arg(&dir)
        .args(["--prompt", "x", "--out"])
        .arg(dir.join("out.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("FluxFillPipeline is not a pipeline anyaccel serves")
            && err.contains("StableDiffusionXLPipeline")
            && err.contains("FluxPipeline"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_drives_an_sdxl_server() {
    let s = serve_model(SDXL, &[], &[], Stdio::null());
    let out = std::env::temp_dir().join(format!("anyaccel-bench-sdxl-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args([
            "bench",
            "--url",
            &s.base,
            "--concurrency",
            "1,2",
            "--duration",
            "2",
        ])
        .args([
            "--size",
            "64x64",
            "--steps",
            "2",
            "--slo",
            "5",
            "--no-progress",
            "--quiet",
        ])
        .args(["--pool", "local", "--instance-type", "test.cpu", "--out"])
        .arg(&out)
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(status.success());
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    for l in result["levels"].as_array().unwrap() {
        assert!(l["ok"].as_u64().unwrap() > 0, "{l}");
        assert_eq!(l["errors"].as_u64().unwrap_or(0), 0, "{l}");
    }
    std::fs::remove_dir_all(out).ok();
}
