//! Content Credentials end to end: what a running `serve` returns (PNG, JPEG,
//! WebP, a streamed preview, the A1111 API) and what `generate` writes is read
//! back by c2pa-python, an SDK build independent of ours; `/info` says how it
//! signs; a bad key stops `serve` before it loads the model.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use common::{repo, serve, venv_python};
use serde_json::{Value, json};

const PROMPT: &str = "a lighthouse at dusk";
const TRAINED: &str = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";

/// Runs the shared reader script on `files` (`(expect, mime, path)`); returns
/// its per-file reports after it found every file as expected.
fn c2pa_python(files: &[(&str, &str, PathBuf)]) -> Vec<Value> {
    let script = repo().join("crates/provenance/tests/verify_c2pa.py");
    let out = Command::new(venv_python())
        .arg(script)
        .args(
            files
                .iter()
                .map(|(expect, mime, path)| format!("{expect}:{mime}:{}", path.display())),
        )
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "c2pa-python disagreed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(reports.len(), files.len());
    reports
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 image")
}

fn post(url: &str, body: Value) -> Value {
    ureq::post(url)
        .send_json(body)
        .expect("request succeeds")
        .into_json()
        .expect("JSON answer")
}

#[test]
fn every_image_serve_returns_is_signed_and_verifies() {
    let s = serve(&["--c2pa-include-prompt"]);
    let dir = tempfile::tempdir().unwrap();

    let info: Value = ureq::get(&format!("{}/info", s.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let c2pa = &info["c2pa"];
    assert_eq!(c2pa["enabled"], true, "{c2pa}");
    assert_eq!(c2pa["development_certificate"], true, "{c2pa}");
    assert_eq!(c2pa["include_prompt"], true, "{c2pa}");
    assert_eq!(c2pa["algorithm"], "ES256", "{c2pa}");

    let mut files = Vec::new();
    for (format, mime) in [
        ("png", "image/png"),
        ("jpeg", "image/jpeg"),
        ("webp", "image/webp"),
    ] {
        let r = post(
            &format!("{}/v1/images/generations", s.base),
            json!({"prompt": PROMPT, "size": "64x64", "steps": 2, "seed": 7,
                   "output_format": format}),
        );
        let path = dir.path().join(format!("final.{format}"));
        std::fs::write(&path, b64(r["data"][0]["b64_json"].as_str().unwrap())).unwrap();
        files.push(("valid", mime, path));
    }

    // A streamed partial image is signed like the final one.
    let stream = ureq::post(&format!("{}/v1/images/generations", s.base))
        .send_json(
            json!({"prompt": PROMPT, "size": "64x64", "steps": 4, "seed": 8,
                          "stream": true, "partial_images": 1}),
        )
        .unwrap()
        .into_string()
        .unwrap();
    let partial = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| e["type"] == "image_generation.partial_image")
        .unwrap_or_else(|| panic!("no partial image in:\n{stream}"));
    let path = dir.path().join("partial.png");
    std::fs::write(&path, b64(partial["b64_json"].as_str().unwrap())).unwrap();
    files.push(("valid", "image/png", path));

    // The A1111 API: signed, and the `parameters` chunk its clients read survives.
    let r = post(
        &format!("{}/sdapi/v1/txt2img", s.base),
        json!({"prompt": PROMPT, "width": 64, "height": 64, "steps": 2, "seed": 9}),
    );
    let a1111 = b64(r["images"][0].as_str().unwrap());
    let params = anyaccel_pipeline::images::png_parameters(&a1111).expect("parameters chunk");
    assert!(params.starts_with(PROMPT), "{params}");
    let path = dir.path().join("a1111.png");
    std::fs::write(&path, &a1111).unwrap();
    files.push(("valid", "image/png", path));

    // The same file with one pixel changed no longer validates.
    let mut img = anyaccel_pipeline::images::decode(&a1111, 1 << 20).unwrap();
    img.put_pixel(0, 0, image::Rgb([255 - img.get_pixel(0, 0)[0], 0, 0]));
    let tampered = copy_manifest_onto(&a1111, &img);
    let path = dir.path().join("tampered.png");
    std::fs::write(&path, tampered).unwrap();
    files.push(("tampered", "image/png", path));

    let reports = c2pa_python(&files);
    let seeds = [7, 7, 7, 8, 9];
    for (r, seed) in reports.iter().zip(seeds) {
        let what = r["path"].as_str().unwrap();
        assert_eq!(
            r["created_actions"][0]["digitalSourceType"], TRAINED,
            "{what}"
        );
        assert_eq!(r["claim_generator_info"][0]["name"], "anyaccel", "{what}");
        let g = &r["generation"];
        assert_eq!(g["model_id"], info["model"], "{what}: {g}");
        assert_eq!(g["model_hash"], info["model_hash"], "{what}: {g}");
        assert_eq!(g["development_certificate"], true, "{what}");
        assert_eq!(g["prompt"], PROMPT, "{what}: {g}");
        assert_eq!(g["seed"], seed, "{what}: {g}");
    }
}

/// A PNG with `img`'s pixels and every other chunk (the manifest included) of
/// `signed`: what someone who edits a signed image without re-signing makes.
fn copy_manifest_onto(signed: &[u8], img: &image::RgbImage) -> Vec<u8> {
    let fresh = anyaccel_pipeline::images::encode(
        img,
        anyaccel_pipeline::images::OutputFormat::Png,
        None,
        "",
    )
    .unwrap();
    let chunks = |png: &[u8]| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 8;
        while i + 8 <= png.len() {
            let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
            let kind = png[i + 4..i + 8].to_vec();
            out.push((kind, png[i..i + 12 + len].to_vec()));
            i += 12 + len;
        }
        out
    };
    let mut out = signed[..8].to_vec();
    let new_data: Vec<u8> = chunks(&fresh)
        .into_iter()
        .filter(|(k, _)| k == b"IDAT")
        .flat_map(|(_, c)| c)
        .collect();
    let mut wrote_data = false;
    for (kind, chunk) in chunks(signed) {
        if kind == b"IDAT" {
            if !wrote_data {
                out.extend_from_slice(&new_data);
                wrote_data = true;
            }
        } else {
            out.extend_from_slice(&chunk);
        }
    }
    out
}

fn generate(out: &Path, extra: &[&str]) -> Vec<PathBuf> {
    let o = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args(["generate", "--model", "fixtures/models/tiny-sd15"])
        .args(["--prompt", PROMPT, "--steps", "2", "--size", "64x64"])
        .args(["--device", "cpu", "--out", out.to_str().unwrap()])
        .args(extra)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .output()
        .expect("binary runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

#[test]
fn generate_signs_its_files_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let signed = generate(&dir.path().join("on"), &["--format", "jpeg"]);
    let unsigned = generate(&dir.path().join("off"), &["--c2pa", "off"]);
    let reports = c2pa_python(&[
        ("valid", "image/jpeg", signed[0].clone()),
        ("unsigned", "image/png", unsigned[0].clone()),
    ]);
    // Prompts stay out unless the operator opts in.
    assert_eq!(reports[0]["generation"]["prompt_included"], false);
    assert!(reports[0]["generation"].get("prompt").is_none());
}

#[test]
fn serve_with_an_unusable_certificate_stops_before_loading_the_model() {
    // Every way a certificate or key can be wrong is covered in
    // crates/provenance/tests/config.rs; this checks that `serve` acts on it.
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("chain.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, "not a certificate\n").unwrap();
    std::fs::write(&key_path, "not a key\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args([
            "serve",
            "--model",
            "fixtures/models/no-such-model",
            "--port",
            "0",
        ])
        .arg("--c2pa-cert")
        .arg(&cert_path)
        .arg("--c2pa-key")
        .arg(&key_path)
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .expect("binary runs");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    // The C2PA error, not the missing model: signing is checked first.
    assert!(
        err.contains("C2PA certificate") && err.contains("chain.pem"),
        "{err}"
    );
}
