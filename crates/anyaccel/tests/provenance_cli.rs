//! Content Credentials end to end: what a running `serve` returns (PNG, JPEG,
//! WebP, a streamed preview, a job's result, the A1111 API) and what
//! `generate` writes (PNG, JPEG, WebP) is read back by c2pa-python, an SDK
//! build independent of ours; `/info` says how it signs; `--c2pa off` signs
//! nothing; a bad, mismatched or expired certificate stops `serve` before it
//! loads the model.

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

    // A job's result, fetched after it completed.
    let job = post(
        &format!("{}/v1/jobs", s.base),
        json!({"prompt": PROMPT, "size": "64x64", "steps": 2, "seed": 10,
               "output_format": "webp"}),
    );
    let id = job["id"].as_str().expect("a job id");
    // The events stream ends with the job's last event: wait for it, not a timer.
    let events = ureq::get(&format!("{}/v1/jobs/{id}/events", s.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(events.contains("event: completed"), "{events}");
    let done: Value = ureq::get(&format!("{}/v1/jobs/{id}", s.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(done["result"]["output_format"], "webp", "{done}");
    let path = dir.path().join("job.webp");
    std::fs::write(
        &path,
        b64(done["result"]["images"][0]["b64_json"].as_str().unwrap()),
    )
    .unwrap();
    files.push(("valid", "image/webp", path));

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
    let seeds = [7, 7, 7, 8, 10, 9];
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
    let mut files = Vec::new();
    for (format, mime) in [
        ("jpeg", "image/jpeg"),
        ("webp", "image/webp"),
        ("png", "image/png"),
    ] {
        let written = generate(&dir.path().join(format), &["--format", format]);
        assert_eq!(written.len(), 1, "{written:?}");
        files.push(("valid", mime, written[0].clone()));
    }
    let unsigned = generate(&dir.path().join("off"), &["--c2pa", "off"]);
    files.push(("unsigned", "image/png", unsigned[0].clone()));
    let reports = c2pa_python(&files);
    for r in &reports[..3] {
        let what = r["path"].as_str().unwrap();
        assert_eq!(
            r["created_actions"][0]["digitalSourceType"], TRAINED,
            "{what}"
        );
        // Prompts stay out unless the operator opts in.
        assert_eq!(r["generation"]["prompt_included"], false, "{what}");
        assert!(r["generation"].get("prompt").is_none(), "{what}");
    }
}

#[test]
fn serve_with_c2pa_off_returns_unsigned_images() {
    let s = serve(&["--c2pa", "off"]);
    let info: Value = ureq::get(&format!("{}/info", s.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(info["c2pa"], json!({"enabled": false}), "{}", info["c2pa"]);
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (format, mime) in [("png", "image/png"), ("jpeg", "image/jpeg")] {
        let r = post(
            &format!("{}/v1/images/generations", s.base),
            json!({"prompt": PROMPT, "size": "64x64", "steps": 2, "seed": 7,
                   "output_format": format}),
        );
        let path = dir.path().join(format!("off.{format}"));
        std::fs::write(&path, b64(r["data"][0]["b64_json"].as_str().unwrap())).unwrap();
        files.push(("unsigned", mime, path));
    }
    c2pa_python(&files);
}

/// Writes, with Python's `cryptography`, a C2PA-acceptable chain (`chain.pem`:
/// an ES256 signing certificate under a CA) and its key (`key.pem`), another
/// key (`other-key.pem`), and the same kind of chain expired yesterday
/// (`expired.pem`, for `key.pem` too).
fn write_credentials(dir: &Path) {
    const SCRIPT: &str = r#"
import datetime, sys
from pathlib import Path
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

out = Path(sys.argv[1])
now = datetime.datetime.now(datetime.timezone.utc)
day = datetime.timedelta(days=1)
def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "anyaccel tests")])
def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)
def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
def usage(**on):
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]
    return x509.KeyUsage(**{n: on.get(n, False) for n in names})
ca_key = ec.generate_private_key(ec.SECP256R1())
ca = (x509.CertificateBuilder().subject_name(name("anyaccel test CA")).issuer_name(name("anyaccel test CA"))
      .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
      .not_valid_before(now - 30 * day).not_valid_after(now + 30 * day)
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
      .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
      .sign(ca_key, hashes.SHA256()))
key = ec.generate_private_key(ec.SECP256R1())
def leaf(not_before, not_after):
    return (x509.CertificateBuilder().subject_name(name("anyaccel test signer")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
(out / "chain.pem").write_bytes(pem(leaf(now - day, now + 10 * day)) + pem(ca))
(out / "expired.pem").write_bytes(pem(leaf(now - 20 * day, now - day)) + pem(ca))
(out / "key.pem").write_bytes(key_pem(key))
(out / "other-key.pem").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
"#;
    let o = Command::new(venv_python())
        .args(["-c", SCRIPT])
        .arg(dir)
        .output()
        .expect("python runs");
    assert!(
        o.status.success(),
        "writing test credentials failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `serve` with these files, of a model that does not exist: it must fail on
/// the certificate first. Returns stderr.
fn serve_fails_with(cert_path: &Path, key_path: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args([
            "serve",
            "--model",
            "fixtures/models/no-such-model",
            "--port",
            "0",
        ])
        .arg("--c2pa-cert")
        .arg(cert_path)
        .arg("--c2pa-key")
        .arg(key_path)
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .expect("binary runs");
    assert!(!o.status.success());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn serve_with_a_mismatched_key_or_an_expired_certificate_stops_before_loading_the_model() {
    let dir = tempfile::tempdir().unwrap();
    write_credentials(dir.path());
    let err = serve_fails_with(
        &dir.path().join("chain.pem"),
        &dir.path().join("other-key.pem"),
    );
    assert!(
        err.contains("other-key.pem")
            && err.contains("key does not match the certificate in")
            && err.contains("chain.pem"),
        "{err}"
    );
    let err = serve_fails_with(&dir.path().join("expired.pem"), &dir.path().join("key.pem"));
    assert!(
        err.contains("C2PA certificate")
            && err.contains("expired.pem")
            && err.contains("expired on"),
        "{err}"
    );
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
    let err = serve_fails_with(&cert_path, &key_path);
    // The C2PA error, not the missing model: signing is checked first.
    assert!(
        err.contains("C2PA certificate") && err.contains("chain.pem"),
        "{err}"
    );
}
