//! `anyaccel serve` as a process: real clients, and SIGTERM while working.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{repo, serve, venv_python};
use serde_json::{Value, json};

#[test]
fn official_openai_sdk_generates_and_edits() {
    let s = serve(&["--api-key", "test-key"]);
    let out = Command::new(venv_python())
        .arg(repo().join("crates/anyaccel/tests/python/openai_sdk.py"))
        .args([s.base.as_str(), "test-key"])
        .arg(repo().join("fixtures/reference/init_64.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openai SDK test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_finishes_running_work_refuses_new_work_and_exits_zero() {
    let mut s = serve(&["--drain-timeout-secs", "60"]);
    let url = format!("{}/v1/images/generations", s.base);
    let slow = std::thread::spawn(move || {
        ureq::post(&url)
            .send_json(
                json!({"prompt": "slow", "steps": 150, "n": 8, "size": "128x128", "seed": 3}),
            )
            .map(|r| (r.status(), r.into_json::<Value>().ok()))
            .map_err(|e| e.to_string())
    });
    // Wait until it is running.
    let started = Instant::now();
    loop {
        let p: Value = ureq::get(&format!("{}/sdapi/v1/progress", s.base))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        if p["state"]["sampling_step"].as_u64() > Some(0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "generation never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    // Readiness drops at once and new work is refused with 503 + Retry-After.
    let t = Instant::now();
    loop {
        match ureq::get(&format!("{}/health/ready", s.base)).call() {
            Err(ureq::Error::Status(503, _)) => break,
            _ => assert!(
                t.elapsed() < Duration::from_secs(5),
                "readiness did not drop"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match ureq::post(&format!("{}/v1/images/generations", s.base))
        .send_json(json!({"prompt": "late", "steps": 1}))
    {
        Err(ureq::Error::Status(503, r)) => {
            assert!(r.header("retry-after").is_some());
            let body: Value = r.into_json().unwrap();
            assert_eq!(body["error"]["code"], "draining");
        }
        other => panic!(
            "expected 503 while draining, got {:?}",
            other.map(|r| r.status())
        ),
    }

    // The running generation completes, then the process exits 0.
    let (status, body) = slow.join().unwrap().expect("in-flight request completes");
    assert_eq!(status, 200);
    assert_eq!(body.unwrap()["data"].as_array().unwrap().len(), 8);
    let t = Instant::now();
    let code = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit status {code}");
}

#[test]
fn a_preview_decoder_makes_full_size_partial_images() {
    // The tiny model's VAE decoder stands in for a TAESD (same interface).
    let s = serve(&[
        "--preview-decoder",
        "fixtures/models/tiny-sd15/vae_decoder",
        "--c2pa",
        "off",
    ]);
    let info: Value = ureq::get(&format!("{}/info", s.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(info["preview"], "decoder");
    let stream = ureq::post(&format!("{}/v1/images/generations", s.base))
        .send_json(
            json!({"prompt": "a fox", "size": "64x64", "steps": 4, "seed": 2,
                          "stream": true, "partial_images": 2}),
        )
        .unwrap()
        .into_string()
        .unwrap();
    let partials: Vec<Value> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|e| e["type"] == "image_generation.partial_image")
        .collect();
    assert_eq!(partials.len(), 2, "{stream}");
    for p in partials {
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(p["b64_json"].as_str().unwrap())
            .unwrap();
        let img = anyaccel_pipeline::images::decode(&png, 1 << 20).unwrap();
        assert_eq!(img.dimensions(), (64, 64));
    }
}

#[test]
fn a_preview_decoder_needs_the_onnx_executor() {
    let o = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args([
            "serve",
            "--model",
            "fixtures/models/tiny-sd15",
            "--executor",
            "remote",
        ])
        .args(["--preview-decoder", "fixtures/models/tiny-sd15/vae_decoder"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--preview-decoder needs --executor onnx"),
        "{err}"
    );
}
