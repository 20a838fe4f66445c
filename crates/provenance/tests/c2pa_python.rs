//! An independent reader: the official c2pa Python package (c2pa-python, with
//! its own build of the C2PA SDK) must find and validate what this crate
//! writes, and must notice when the pixels are changed afterwards.
//!
//! Trust is not integrity: the development certificate is in no trust list, so
//! c2pa-python reports `signingCredential.untrusted`; that is expected and
//! checked separately from signature and hash (integrity) failures, of which
//! there must be none.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyaccel_provenance::{C2paArgs, ImageFormat, Signer, TRAINED_ALGORITHMIC_MEDIA};
use serde_json::Value;

fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh (it creates .venv and installs \
         scripts/requirements-test.txt, which pins c2pa-python)",
        python.display()
    );
    python
}

fn ext(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpg",
        ImageFormat::Webp => "webp",
    }
}

#[test]
fn c2pa_python_validates_signed_png_jpeg_webp_and_catches_tampering() {
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verify_c2pa.py");
    let signer = Signer::from_args(&C2paArgs::default()).unwrap().unwrap();
    assert!(signer.is_development());
    let dir = tempfile::tempdir().unwrap();

    let mut args = Vec::new();
    for format in ImageFormat::ALL {
        let signed = signer
            .sign(&common::image(format, 64), format, &common::facts())
            .unwrap();
        let good = dir.path().join(format!("signed.{}", ext(format)));
        std::fs::write(&good, &signed).unwrap();
        let bad = dir.path().join(format!("tampered.{}", ext(format)));
        std::fs::write(&bad, common::tamper(&signed, format)).unwrap();
        args.push(format!("valid:{}:{}", format.mime(), good.display()));
        args.push(format!("tampered:{}:{}", format.mime(), bad.display()));
    }

    let out = Command::new(&python)
        .arg(&script)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "c2pa-python is not installed in .venv: run scripts/setup-test-env.sh\n{stderr}"
    );
    assert!(
        out.status.success(),
        "verify_c2pa.py failed ({}):\n{stderr}\n{stdout}",
        out.status
    );

    // The script checked its expectations; check the report here as well.
    let reports: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("unreadable report ({e}):\n{stdout}\n{stderr}"));
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 6);
    for r in reports {
        let what = format!("{} ({})", r["path"], r["expect"]);
        if r["expect"] == "valid" {
            assert_eq!(r["has_manifest"], true, "{what}: {r:#}");
            assert_eq!(
                r["created_trained_algorithmic_media"], true,
                "{what}: {r:#}"
            );
            assert_eq!(
                r["created_actions"][0]["digitalSourceType"],
                TRAINED_ALGORITHMIC_MEDIA
            );
            assert_eq!(
                r["integrity_failures"],
                serde_json::json!([]),
                "{what}: {r:#}"
            );
            // Untrusted (development CA), but intact: that is what "Valid" means.
            assert_eq!(
                r["trust_failures"],
                serde_json::json!(["signingCredential.untrusted"]),
                "{what}: {r:#}"
            );
            assert_eq!(r["validation_state"], "Valid", "{what}: {r:#}");
            assert_eq!(r["generation"]["development_certificate"], true, "{what}");
            assert_eq!(r["generation"]["model_id"], "fixtures/models/tiny-sd15");
            assert!(
                r["generation"].get("prompt").is_none(),
                "{what}: prompt leaked"
            );
            assert_eq!(r["claim_generator_info"][0]["name"], "anyaccel");
        } else {
            let failures: Vec<&str> = r["integrity_failures"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: {r:#}"))
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                failures.contains(&"assertion.dataHash.mismatch"),
                "{what}: expected a data-hash mismatch, got {failures:?}"
            );
            assert_eq!(r["validation_state"], "Invalid", "{what}: {r:#}");
        }
    }
    eprintln!(
        "c2pa-python (SDK {}) read {} files",
        reports[0]["sdk_version"],
        reports.len()
    );
}
