//! `anyaccel serve` with the tiny SD 3.5 and FLUX.1 fixtures: every API a
//! client uses, with a real server process and real clients (the official
//! openai SDK, HTTP, SSE), the family's guidance and refusals, the memory
//! preflight at load, and the bench.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{repo, serve_model, venv_python};
use serde_json::{Value, json};

const SD3: &str = "fixtures/models/tiny-sd3";
const FLUX: &str = "fixtures/models/tiny-flux";
const SCHNELL: &str = "fixtures/models/tiny-flux-schnell";
// Keeps T5's sequence (and so each test) short on the tiny models.
const T5_LEN: [&str; 2] = ["--max-sequence-length", "32"];

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

fn openai_sdk(base: &str, flag: &str) {
    let out = Command::new(venv_python())
        .arg(repo().join("crates/anyaccel/tests/python/openai_sdk.py"))
        .args([base, "none"])
        .arg(repo().join("fixtures/reference/init_64.png"))
        .arg(flag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openai SDK ({flag}) failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Step events of one native job, to its end.
fn job_events(base: &str, body: Value) -> Vec<String> {
    let resp = ureq::post(&format!("{base}/v1/jobs"))
        .send_json(body)
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: Value = resp.into_json().unwrap();
    let id = job["id"].as_str().unwrap();
    let events = ureq::get(&format!("{base}/v1/jobs/{id}/events"))
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
    names
}

#[test]
fn sd3_is_served_on_every_api() {
    let s = serve_model(SD3, &T5_LEN, &[], Stdio::null());
    openai_sdk(&s.base, "--sd3");

    let info = get(&s.base, "/info");
    assert_eq!(info["family"], "sd3", "{info}");
    assert_eq!(info["pipeline_class"], "StableDiffusion3Pipeline");
    assert_eq!(info["guidance"], "classifier", "{info}");
    assert_eq!(info["defaults"]["max_sequence_length"], 32, "{info}");
    let schedulers: Vec<&str> = info["schedulers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(schedulers.contains(&"flow_match_euler"), "{schedulers:?}");
    assert!(!schedulers.contains(&"ddim"), "{schedulers:?}");

    // A UNet scheduler is a 400 naming the field and what is allowed.
    let (code, body) = post(
        &s.base,
        "/v1/images/generations",
        &json!({"prompt": "x", "size": "64x64", "scheduler": "ddim"}),
    );
    assert_eq!(code, 400, "{body}");
    let msg = body.to_string();
    assert!(
        msg.contains("scheduler") && msg.contains("flow_match_euler"),
        "{msg}"
    );
    // Sides must suit the 2×2 patches.
    let (code, body) = post(
        &s.base,
        "/v1/images/generations",
        &json!({"prompt": "x", "size": "72x72"}),
    );
    assert_eq!(code, 400, "{body}");

    // A1111: the Euler sampler means flow-match Euler here.
    let (code, body) = post(
        &s.base,
        "/sdapi/v1/txt2img",
        &json!({"prompt": "a lighthouse", "negative_prompt": "fog", "steps": 2, "width": 64,
                "height": 64, "seed": 5, "cfg_scale": 5, "sampler_name": "Euler"}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["images"].as_array().unwrap().len(), 1);

    let names = job_events(
        &s.base,
        json!({"prompt": "a lighthouse", "steps": 3, "size": "64x64", "seed": 9}),
    );
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
fn flux_dev_and_schnell_are_served_with_their_guidance() {
    let s = serve_model(FLUX, &T5_LEN, &[], Stdio::null());
    openai_sdk(&s.base, "--flux");
    let info = get(&s.base, "/info");
    assert_eq!(info["family"], "flux", "{info}");
    assert_eq!(info["pipeline_class"], "FluxPipeline");
    assert_eq!(info["guidance"], "distilled", "{info}");
    // The family's defaults: FLUX.1-dev's 28 steps at guidance 3.5.
    assert_eq!(info["defaults"]["steps"], 28, "{info}");
    assert_eq!(info["defaults"]["guidance_scale"], 3.5, "{info}");
    let (code, body) = post(
        &s.base,
        "/sdapi/v1/txt2img",
        &json!({"prompt": "a fox", "negative_prompt": "fog", "steps": 2, "width": 64, "height": 64}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("negative_prompt"), "{body}");
    let names = job_events(
        &s.base,
        json!({"prompt": "a fox", "steps": 2, "size": "64x64", "guidance_scale": 4.0}),
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("completed"),
        "{names:?}"
    );
    drop(s);

    let s = serve_model(SCHNELL, &T5_LEN, &[], Stdio::null());
    let info = get(&s.base, "/info");
    assert_eq!(info["guidance"], "none", "{info}");
    assert_eq!(info["defaults"]["steps"], 4, "{info}");
    let (code, body) = post(
        &s.base,
        "/v1/images/generations",
        &json!({"prompt": "a fox", "size": "64x64", "response_format": "b64_json"}),
    );
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_model_past_the_memory_limit_is_refused_at_load_with_both_numbers() {
    let out = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args(["serve", "--model", FLUX, "--port", "0", "--device", "cpu"])
        .args(["--sizes", "64x64", "--memory-limit", "1MiB"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs") && err.contains("of weights") && err.contains("1.0 MiB"),
        "{err}"
    );
    assert!(err.contains("fp16") || err.contains("int8"), "{err}");
}

#[test]
fn bench_drives_a_flux_server() {
    let s = serve_model(SCHNELL, &T5_LEN, &[], Stdio::null());
    let out = std::env::temp_dir().join(format!("anyaccel-bench-flux-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args([
            "bench",
            "--url",
            &s.base,
            "--concurrency",
            "1",
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
    }
    let _ = std::fs::remove_dir_all(&out);
}
